//! The job types, declared once (`registry.json`): name, category, input schema, executor, timeout, attempts and
//! their backoff, the per-organization concurrency limit, and whether an attempt may run at most once or at least
//! once. The API validates inputs against it; the worker runs jobs by it. Downstream URLs and signing secrets are
//! not in the document: each `http` type names the variables that carry them, so a deployment points the sample
//! types at its own services. A type whose URL variable is unset is unavailable (creating one answers 422 naming
//! the variable), not an error at start-up; a type with a URL but no secret is one, since it could not be signed.

use crate::sign::Secret;
use keel::config::{ConfigError, Env};
use keel::problem::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The registry Keel ships: the seed systems' kinds of background work as `http` types.
pub const SAMPLE: &str = include_str!("registry.json");

/// Longest type name; names are `[a-z0-9._-]`.
pub const MAX_TYPE_NAME: usize = 64;
/// Bounds on what a type may declare.
const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const MAX_ATTEMPTS: u32 = 25;
const MAX_CONCURRENCY: u32 = 1000;
/// The longest a callback type's service may go without reporting.
const MAX_REPORT_WITHIN: Duration = Duration::from_secs(86_400);

/// Whether an attempt whose outcome is unknown (its worker died mid-call) may be run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Never run again after an unknown outcome: the job fails instead (a payment, an SMS).
    AtMostOnce,
    /// Run again: the downstream service deduplicates on `webhook-id` (the job id, the same on every attempt).
    AtLeastOnce,
}

/// How an attempt is carried out: POST the input to `url`, signed with Standard Webhooks headers under `secret`; a
/// 2xx JSON answer is the output. A callback type's service may instead answer 202 and report later, on
/// `POST /v1/jobs/callbacks` with the attempt's token, within `report_within` of the call and of each progress
/// report, so a job may outlive one invocation of the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executor {
    /// `None` while the type's URL variable is unset.
    pub url: Option<String>,
    pub url_var: String,
    pub secret: Option<Secret>,
    /// Callback types only.
    pub report_within: Option<Duration>,
    /// Built-in types only: the task the worker runs in process (`keel_jobs::builtin`); no URL, no secret.
    pub task: Option<String>,
}

/// Who may create jobs of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Creators {
    /// Any member of an organization, for the organization.
    #[default]
    Member,
    /// Platform admins only (Keel's own operations, such as a bulk replay of webhook deliveries).
    PlatformAdmin,
    /// Nobody through the jobs API: only Keel's own routes create them (a GDPR export, started through
    /// `POST /v1/user/data-exports`, whose input names the user it exports).
    Keel,
}

/// What an erasure sends each processor type, signed as every call of the type is: erase what you hold about
/// `user_id`, and answer (the job's output) with what you erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    pub erasure_id: String,
    pub user_id: String,
}

/// One job type.
#[derive(Debug, Clone)]
pub struct JobType {
    pub name: String,
    pub category: String,
    pub description: String,
    pub executor: Executor,
    /// The longest one attempt may take (bounded again by the worker's remaining invocation time).
    pub timeout: Duration,
    /// Attempts before the job fails, the first included.
    pub max_attempts: u32,
    /// Delay before attempt n+1: `retry_base * 2^(n-1)`, capped at `retry_max`, with full jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Jobs of this type one organization may have queued or running at once; more wait their turn.
    pub concurrency: u32,
    pub delivery: Delivery,
    pub creators: Creators,
    /// A downstream processor of personal data (GDPR Art. 28): every erasure sends it a job whose input is
    /// [`ErasureRequest`], and the job's output is the processor's confirmation, kept in the erasure's receipt.
    pub processor: bool,
    pub input_schema: Value,
    /// Compiled at the first validation: a worker never needs it, and compiling six schemas would add milliseconds
    /// to every function's cold start. The sample registry's schemas are checked by its tests.
    validator: std::sync::Arc<std::sync::OnceLock<Result<jsonschema::Validator, String>>>,
}

/// `format` is checked too (an `email` must be one), not only annotated as draft 2020-12 allows.
fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options().should_validate_formats(true).build(schema).map_err(|error| error.to_string())
}

impl JobType {
    /// Every way `input` breaks the type's schema, each with its JSON pointer under `/input`.
    pub fn violations(&self, input: &Value) -> Vec<FieldError> {
        match self.validator.get_or_init(|| compile(&self.input_schema)) {
            Ok(validator) => validator
                .iter_errors(input)
                .map(|error| FieldError {
                    pointer: format!("/input{}", error.instance_path()),
                    message: error.masked().to_string(),
                })
                .collect(),
            Err(reason) => vec![FieldError {
                pointer: "/type".into(),
                message: format!("the type's input schema does not compile: {reason}"),
            }],
        }
    }

    /// Why the type cannot run here, if it cannot: the variable a deployment must set.
    pub fn unavailable(&self) -> Option<String> {
        match &self.executor.url {
            None if self.executor.task.is_none() => Some(format!("set {} to the service's URL", self.executor.url_var)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<String, JobType>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    types: Vec<TypeDecl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeDecl {
    name: String,
    category: String,
    #[serde(default)]
    description: String,
    executor: ExecutorDecl,
    timeout_seconds: u64,
    max_attempts: u32,
    retry_base_seconds: u64,
    retry_max_seconds: u64,
    concurrency: u32,
    delivery: Delivery,
    #[serde(default)]
    creators: Creators,
    #[serde(default)]
    processor: bool,
    input_schema: Value,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ExecutorDecl {
    Http { url_var: String, secret_var: String },
    Callback { url_var: String, secret_var: String, report_within_seconds: u64 },
    Builtin { task: String },
}

fn invalid(name: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Malformed { name: format!("JOBS_REGISTRY (job type {name})"), reason: format!("expected {reason}") }
}

pub fn valid_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TYPE_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// A service's executor: its URL from `url_var` (none: the type is unavailable), its secret from `secret_var` when
/// `signing` (a URL without its secret is an error: the calls could not be signed).
fn remote(
    url_var: String,
    secret_var: String,
    report_within: Option<Duration>,
    env: &Env,
    signing: bool,
) -> Result<Executor, ConfigError> {
    let url = env.get(&url_var).map(str::to_string).filter(|url| !url.is_empty());
    if let Some(url) = &url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(ConfigError::Malformed { name: url_var, reason: "expected an http(s) URL".into() });
    }
    let secret = match (&url, env.get(&secret_var)) {
        (None, _) => None,
        (Some(_), _) if !signing => None,
        (Some(_), None) => return Err(ConfigError::Missing(secret_var)),
        (Some(_), Some(raw)) => Some(Secret::parse(raw).ok_or_else(|| ConfigError::Malformed {
            name: secret_var.clone(),
            reason: "expected a Standard Webhooks secret (whsec_ and base64)".into(),
        })?),
    };
    Ok(Executor { url, url_var, secret, report_within, task: None })
}

impl Registry {
    /// Reads a registry document, resolving URLs and secrets from `env`.
    /// Every schema is compiled now, so a declaration that does not compile is refused at once.
    pub fn from_json(document: &str, env: &Env) -> Result<Self, ConfigError> {
        Self::read(document, env, true, true)
    }

    /// The registry Keel ships, with `env`'s URLs and secrets (the worker, which signs).
    pub fn sample(env: &Env) -> Result<Self, ConfigError> {
        Self::read(SAMPLE, env, true, false)
    }

    /// The registry Keel ships with `env`'s URLs but no secrets: what the API and the sweeper need, which check and
    /// schedule jobs but never call a service.
    pub fn sample_unsigned(env: &Env) -> Result<Self, ConfigError> {
        Self::read(SAMPLE, env, false, false)
    }

    fn read(document: &str, env: &Env, signing: bool, compiled: bool) -> Result<Self, ConfigError> {
        let document: Document = serde_json::from_str(document)
            .map_err(|error| invalid("registry", format!("a registry document: {error}")))?;
        let mut types = BTreeMap::new();
        for decl in document.types {
            let name = decl.name.clone();
            if !valid_type_name(&name) {
                return Err(invalid(&name, "a name of 1 to 64 of [a-z0-9._-]"));
            }
            if decl.category.is_empty() || decl.category.len() > MAX_TYPE_NAME {
                return Err(invalid(&name, "a category of 1 to 64 characters"));
            }
            if !(1..=MAX_TIMEOUT.as_secs()).contains(&decl.timeout_seconds) {
                return Err(invalid(&name, "a timeout of 1 to 900 seconds"));
            }
            if !(1..=MAX_ATTEMPTS).contains(&decl.max_attempts) {
                return Err(invalid(&name, "1 to 25 attempts"));
            }
            if decl.retry_base_seconds > decl.retry_max_seconds || decl.retry_max_seconds > 12 * 3600 {
                return Err(invalid(&name, "a retry base no larger than its maximum, at most 12 hours"));
            }
            if !(1..=MAX_CONCURRENCY).contains(&decl.concurrency) {
                return Err(invalid(&name, "a concurrency of 1 to 1000"));
            }
            if decl.processor && decl.creators != Creators::Keel {
                return Err(invalid(&name, "\"creators\": \"keel\" for a processor (only erasures create its jobs)"));
            }
            let validator = std::sync::OnceLock::new();
            if compiled {
                let validator_now = compile(&decl.input_schema)
                    .map_err(|error| invalid(&name, format!("a valid input schema ({error})")))?;
                let _ = validator.set(Ok(validator_now));
            }
            let executor = match decl.executor {
                ExecutorDecl::Http { url_var, secret_var } => remote(url_var, secret_var, None, env, signing)?,
                ExecutorDecl::Callback { url_var, secret_var, report_within_seconds } => {
                    if !(1..=MAX_REPORT_WITHIN.as_secs()).contains(&report_within_seconds) {
                        return Err(invalid(&name, "a report_within_seconds of 1 to 86400"));
                    }
                    let report_within = Some(Duration::from_secs(report_within_seconds));
                    remote(url_var, secret_var, report_within, env, signing)?
                }
                ExecutorDecl::Builtin { task } => {
                    if !valid_type_name(&task) {
                        return Err(invalid(&name, "a task name of 1 to 64 of [a-z0-9._-]"));
                    }
                    Executor { url: None, url_var: String::new(), secret: None, report_within: None, task: Some(task) }
                }
            };
            let job_type = JobType {
                name: name.clone(),
                category: decl.category,
                description: decl.description,
                executor,
                timeout: Duration::from_secs(decl.timeout_seconds),
                max_attempts: decl.max_attempts,
                retry_base: Duration::from_secs(decl.retry_base_seconds),
                retry_max: Duration::from_secs(decl.retry_max_seconds),
                concurrency: decl.concurrency,
                delivery: decl.delivery,
                creators: decl.creators,
                processor: decl.processor,
                input_schema: decl.input_schema,
                validator: std::sync::Arc::new(validator),
            };
            if types.insert(name.clone(), job_type).is_some() {
                return Err(invalid(&name, "one declaration per name"));
            }
        }
        Ok(Self { types })
    }

    pub fn get(&self, name: &str) -> Option<&JobType> {
        self.types.get(name)
    }

    pub fn types(&self) -> impl Iterator<Item = &JobType> {
        self.types.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn the_sample_registry_loads_and_its_types_are_unavailable_until_pointed_at_a_service() {
        let registry = Registry::sample(&env(&[])).unwrap();
        let email = registry.get("notify.email").unwrap();
        assert_eq!(email.unavailable().as_deref(), Some("set JOB_URL_NOTIFY to the service's URL"));
        let configured =
            Registry::sample(&env(&[("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify"), ("JOB_SECRET_NOTIFY", SECRET)]))
                .unwrap();
        assert_eq!(configured.get("notify.email").unwrap().unavailable(), None);
        for kind in ["notify.email", "notify.sms", "analytics.aggregate", "cache.warm", "hold.expire"] {
            assert!(registry.get(kind).is_some(), "{kind}");
        }
    }

    #[test]
    fn a_built_in_type_needs_no_service_and_names_a_task_the_worker_must_have() {
        let registry = Registry::sample(&env(&[])).unwrap();
        let replay = registry.get("webhooks.replay").unwrap();
        assert_eq!(replay.unavailable(), None, "built in: nothing to configure");
        assert_eq!(replay.executor.task.as_deref(), Some("webhooks.replay"));
        assert_eq!(replay.creators, Creators::PlatformAdmin);
        assert_eq!(registry.get("gdpr.export").unwrap().creators, Creators::Keel);
        assert_eq!(registry.get("notify.email").unwrap().creators, Creators::Member, "the default");
        let tasks = crate::builtin::Tasks::default();
        let refused = tasks.check(&registry).unwrap_err();
        let builtin = ["gdpr.erase", "gdpr.export", "keel.check", "webhooks.replay"];
        assert!(builtin.iter().any(|t| refused.to_string().contains(t)), "{refused}");
        let declare = |task: &str| {
            json!({"types": [{"name": "t", "category": "c", "executor": {"kind": "builtin", "task": task},
                "timeout_seconds": 5, "max_attempts": 1, "retry_base_seconds": 1, "retry_max_seconds": 1,
                "concurrency": 1, "delivery": "at_least_once", "input_schema": {}}]})
            .to_string()
        };
        assert!(Registry::from_json(&declare("Bad Name"), &env(&[])).is_err());
        let extra = declare("t").replace(r#""task":"t""#, r#""task":"t","url_var":"U""#);
        assert!(Registry::from_json(&extra, &env(&[])).is_err(), "a built-in executor has no URL");
        assert!(Registry::from_json(&declare("t"), &env(&[])).is_ok());
    }

    #[test]
    fn processors_are_marked_and_only_keel_creates_their_jobs() {
        let registry = Registry::sample(&env(&[])).unwrap();
        let processors: Vec<&str> = registry.types().filter(|t| t.processor).map(|t| t.name.as_str()).collect();
        assert_eq!(processors, ["notify.erase_user"]);
        assert!(!registry.get("notify.email").unwrap().processor, "the default");
        let declare = |creators: &str| {
            json!({"types": [{"name": "t", "category": "c", "executor": {"kind": "builtin", "task": "t"},
                "timeout_seconds": 5, "max_attempts": 1, "retry_base_seconds": 1, "retry_max_seconds": 1,
                "concurrency": 1, "delivery": "at_least_once", "input_schema": {}, "processor": true,
                "creators": creators}]})
            .to_string()
        };
        let refused = Registry::from_json(&declare("member"), &env(&[])).unwrap_err();
        assert!(refused.to_string().contains("processor"), "{refused}");
        assert!(Registry::from_json(&declare("keel"), &env(&[])).is_ok());
    }

    #[test]
    fn every_schema_of_the_sample_registry_compiles() {
        let checked = Registry::from_json(SAMPLE, &env(&[])).unwrap();
        assert_eq!(checked.types().count(), Registry::sample(&env(&[])).unwrap().types().count());
    }

    #[test]
    fn a_url_without_its_secret_or_a_bad_secret_fails_start_up() {
        let missing = Registry::sample(&env(&[("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify")])).unwrap_err();
        assert_eq!(missing, ConfigError::Missing("JOB_SECRET_NOTIFY".into()));
        let unsigned = Registry::sample_unsigned(&env(&[("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify")])).unwrap();
        assert_eq!(unsigned.get("notify.email").unwrap().unavailable(), None, "the API needs no secret");
        let bad = Registry::sample(&env(&[("JOB_URL_NOTIFY", "http://x/"), ("JOB_SECRET_NOTIFY", "nope")]));
        assert!(bad.is_err());
        let not_http = Registry::sample(&env(&[("JOB_URL_NOTIFY", "ftp://x/"), ("JOB_SECRET_NOTIFY", SECRET)]));
        assert!(not_http.is_err());
    }

    #[test]
    fn inputs_are_checked_against_the_schema_with_a_pointer_per_violation() {
        let registry = Registry::sample(&env(&[])).unwrap();
        let email = registry.get("notify.email").unwrap();
        assert!(email.violations(&json!({"to": "a@example.com", "template": "welcome"})).is_empty());
        assert_eq!(email.violations(&json!({"to": "not an address", "template": "w"}))[0].pointer, "/input/to");
        let violations = email.violations(&json!({"to": 7, "template": "welcome", "surprise": true}));
        let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"/input/to"), "{violations:?}");
        assert!(pointers.contains(&"/input"), "the unknown property: {violations:?}");
        assert!(violations.iter().all(|v| !v.message.contains("surprise") || v.pointer == "/input"));
        assert_eq!(email.violations(&json!("text"))[0].pointer, "/input");
    }

    #[test]
    fn declarations_out_of_bounds_are_refused_naming_the_type() {
        let decl = |patch: Value| {
            let mut decl = json!({"name": "t.one", "category": "c", "executor": {"kind": "http", "url_var": "U",
                "secret_var": "S"}, "timeout_seconds": 5, "max_attempts": 3, "retry_base_seconds": 1,
                "retry_max_seconds": 10, "concurrency": 2, "delivery": "at_least_once", "input_schema": {}});
            for (key, value) in patch.as_object().unwrap() {
                decl[key] = value.clone();
            }
            Registry::from_json(&json!({"types": [decl]}).to_string(), &env(&[]))
        };
        assert!(decl(json!({})).is_ok());
        for patch in [
            json!({"name": "Upper"}),
            json!({"timeout_seconds": 0}),
            json!({"timeout_seconds": 901}),
            json!({"max_attempts": 0}),
            json!({"retry_base_seconds": 11}),
            json!({"concurrency": 0}),
            json!({"input_schema": {"type": "no such type"}}),
            json!({"delivery": "sometimes"}),
        ] {
            let error = decl(patch.clone()).unwrap_err().to_string();
            let named = ["t.one", "Upper", "registry document"].iter().any(|name| error.contains(name));
            assert!(named, "{patch}: {error}");
        }
        let twice = json!({"types": [{"name": "a", "category": "c", "executor": {"kind": "http", "url_var": "U",
            "secret_var": "S"}, "timeout_seconds": 5, "max_attempts": 3, "retry_base_seconds": 1,
            "retry_max_seconds": 10, "concurrency": 2, "delivery": "at_least_once", "input_schema": {}}]});
        let mut doubled = twice.clone();
        doubled["types"].as_array_mut().unwrap().push(twice["types"][0].clone());
        assert!(Registry::from_json(&doubled.to_string(), &env(&[])).is_err());
    }
}
