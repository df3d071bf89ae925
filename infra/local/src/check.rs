//! `keel-local check --url URL`: a production-readiness suite against a running Keel stack, deployed or local,
//! through its public HTTP API only, with the tokens and the webhook secret the operator gives it.
//!
//! Each check prints one line: `pass`, `warn` with the reason (something the check could not do, or a sign worth a
//! look), or `fail` with the reason; any `fail` makes the command exit non-zero. What it writes, and nothing else:
//! the flag `keel.check` (created once: permanent, on by default, audited like any flag), jobs of the built-in type
//! `keel.check` (which only answer their nonce), one export of the member's own data, and webhook events of type
//! `keel.check` (ids `keel-check-{ulid}`) to the provider it is given, which reach the event bus as any event does.
//! With `--stack` and AWS credentials, the last lines read back from AWS what the template promises about the
//! stack's alarms, dead-letter queues, encryption and retention ([`aws`]); without them, one line says why not.

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::{Duration, Instant};

pub mod aws;

/// The flag the suite evaluates, created by its first run.
pub const FLAG_KEY: &str = "keel.check";
/// The built-in job type the suite runs (`functions/job-worker/src/tasks.rs`).
pub const JOB_TYPE: &str = "keel.check";
/// Where the tokens and the webhook secret come from: the environment, never the command line (which `ps` shows).
pub const ADMIN_TOKEN_VAR: &str = "KEEL_CHECK_ADMIN_TOKEN";
pub const MEMBER_TOKEN_VAR: &str = "KEEL_CHECK_MEMBER_TOKEN";
pub const WEBHOOK_SECRET_VAR: &str = "KEEL_CHECK_WEBHOOK_SECRET";
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a round trip is looked at while it runs.
const POLL: Duration = Duration::from_millis(200);

pub struct Options {
    /// The API's base URL, for example `http://127.0.0.1:3000` or the stack's `ApiUrl` output.
    pub url: String,
    /// A token with the `platform-admin` role.
    pub admin_token: Option<String>,
    /// A token with the `member` role only, of an organization.
    pub member_token: Option<String>,
    /// A provider configured with Keel's own signature scheme, and one of its secrets.
    pub webhook: Option<WebhookTarget>,
    /// How long each round trip (webhook, flag, job, export) may take to complete.
    pub wait: Duration,
    /// Where the stack's resources are listed, and the template that promises things about them.
    pub stack: Option<(aws::Listing, std::path::PathBuf)>,
}

pub struct WebhookTarget {
    pub provider: String,
    pub secret: String,
}

impl fmt::Debug for WebhookTarget {
    /// The secret is left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget").field("provider", &self.provider).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        };
        write!(f, "{verdict}  {:<14} {}", self.check, self.detail)
    }
}

/// Whether any line failed: the command's exit status.
pub fn failed(lines: &[Line]) -> bool {
    lines.iter().any(|line| line.verdict == Verdict::Fail)
}

/// What a check found when it did not fail (`Err` carries the failure's reason).
enum Found {
    Pass(String),
    Warn(String),
}

type Checked = Result<Found, String>;

fn pass(detail: impl Into<String>) -> Checked {
    Ok(Found::Pass(detail.into()))
}

fn warn(reason: impl Into<String>) -> Checked {
    Ok(Found::Warn(reason.into()))
}

/// Runs every check in order, calling `each` with each line as soon as it is known.
pub async fn run(options: &Options, mut each: impl FnMut(&Line)) -> Vec<Line> {
    let suite = Suite::new(options);
    let mut lines = Vec::new();
    let mut record = |check: &'static str, checked: Checked| {
        let (verdict, detail) = match checked {
            Ok(Found::Pass(detail)) => (Verdict::Pass, detail),
            Ok(Found::Warn(reason)) => (Verdict::Warn, reason),
            Err(reason) => (Verdict::Fail, reason),
        };
        let line = Line { check, verdict, detail };
        each(&line);
        lines.push(line);
    };
    record("health", suite.health().await);
    record("openapi", suite.openapi().await);
    record("authorizer", suite.authorizer().await);
    record("roles", suite.roles().await);
    record("cleanups", suite.cleanups().await);
    record("breakers", suite.breakers().await);
    record("rate-limits", suite.rate_limits().await);
    record("webhook", suite.webhook().await);
    record("flag", suite.flag().await);
    let (job, created) = match suite.admin() {
        Ok(_) => match suite.job().await {
            Ok(created) => (job_line(&created), Some(created)),
            Err(reason) => (Err(reason), None),
        },
        Err(skipped) => (warn(skipped), None),
    };
    record("job", job);
    record("idempotency", suite.idempotency(created.as_ref()).await);
    record("export", suite.export().await);
    match &options.stack {
        None => record("aws-resources", warn("skipped: no --stack or --stack-resources (the stack to read back)")),
        Some((stack, template)) => match aws_clients().await {
            Err(reason) => record("aws-resources", warn(reason)),
            Ok(clients) => match aws::promises(template) {
                Err(reason) => record("aws-resources", Err(reason)),
                Ok(promises) => aws::lines(&clients, stack, &promises, &mut record).await,
            },
        },
    }
    lines
}

/// The AWS clients from the default configuration chain (`AWS_ENDPOINT_URL` honoured), or why there are none.
async fn aws_clients() -> Result<aws::Clients, String> {
    use aws_sdk_cloudformation::config::ProvideCredentials;
    let config = keel_aws::load_sdk_config().await;
    let Some(credentials) = config.credentials_provider() else {
        return Err("skipped: no AWS credentials".into());
    };
    if credentials.provide_credentials().await.is_err() {
        return Err("skipped: no AWS credentials (environment, profile or instance role)".into());
    }
    Ok(aws::Clients::new(&config))
}

fn job_line(run: &JobRun) -> Checked {
    pass(format!("{} completed with its nonce in {} ms", run.id, run.took.as_millis()))
}

/// A job the `job` check created and saw complete, for the Idempotency-Key check to repeat.
struct JobRun {
    id: String,
    key: String,
    body: Value,
    took: Duration,
}

/// One answer: status, headers and the body as JSON (`Null` when it is not JSON).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The problem's `code`, for messages.
    fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }

    fn describe(&self) -> String {
        match self.code() {
            "" => format!("{}", self.status),
            code => format!("{} {code}", self.status),
        }
    }
}

struct Suite<'o> {
    options: &'o Options,
    base: String,
    http: reqwest::Client,
}

impl<'o> Suite<'o> {
    fn new(options: &'o Options) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { options, base: options.url.trim_end_matches('/').to_string(), http }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| format!("{method} {path}: no answer ({error})"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|error| format!("{method} {path}: {error}"))?;
        Ok(Answer { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Result<Answer, String> {
        self.send(Method::GET, path, token, None, &[]).await
    }

    fn admin(&self) -> Result<&str, String> {
        self.options.admin_token.as_deref().ok_or_else(|| format!("skipped: no admin token ({ADMIN_TOKEN_VAR})"))
    }

    fn member(&self) -> Result<&str, String> {
        self.options.member_token.as_deref().ok_or_else(|| format!("skipped: no member token ({MEMBER_TOKEN_VAR})"))
    }

    /// Polls `look` until it answers `Some`, or fails once `wait` has passed.
    async fn until<T, F, Fut>(&self, what: &str, mut look: F) -> Result<(T, Duration), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, String>>,
    {
        let started = Instant::now();
        loop {
            if let Some(found) = look().await? {
                return Ok((found, started.elapsed()));
            }
            if started.elapsed() > self.options.wait {
                return Err(format!("{what} within {} s", self.options.wait.as_secs()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// keel-local's own routes; a deployed stack has none (API Gateway answers for itself), so their absence is
    /// a warning and the checks below exercise the stack instead.
    async fn health(&self) -> Checked {
        let live = self.get(crate::host::LIVE_PATH, None).await?;
        if live.status == 404 {
            return warn("no /health routes (a deployed stack has none): the checks below stand for them");
        }
        if live.status != 200 {
            return Err(format!("{} answered {}", crate::host::LIVE_PATH, live.status));
        }
        let ready = self.get(crate::host::READY_PATH, None).await?;
        let checks = ready.body.get("checks").and_then(Value::as_object).map_or(0, |checks| checks.len());
        match ready.status {
            200 => pass(format!("live, and ready: {checks} backends reachable")),
            _ => {
                let failed = ready.body.get("failed").and_then(Value::as_object);
                let names: Vec<&str> = failed.map(|f| f.keys().map(String::as_str).collect()).unwrap_or_default();
                Err(format!("not ready ({}): {}", ready.status, names.join(", ")))
            }
        }
    }

    async fn openapi(&self) -> Checked {
        let answer = self.get("/openapi.json", None).await?;
        if answer.status != 200 {
            return Err(format!("/openapi.json answered {}", answer.status));
        }
        let version = answer.body.get("openapi").and_then(Value::as_str).unwrap_or("");
        let operations: usize = answer
            .body
            .get("paths")
            .and_then(Value::as_object)
            .map_or(0, |paths| paths.values().filter_map(Value::as_object).map(|methods| methods.len()).sum());
        if !version.starts_with("3.") || operations == 0 {
            return Err("/openapi.json is not an OpenAPI 3 document with operations".into());
        }
        pass(format!("OpenAPI {version}, {operations} operations"))
    }

    /// A route behind the JWT authorizer refuses a request without a token, and one with a token it did not issue.
    async fn authorizer(&self) -> Checked {
        let without = self.get("/v1/flags", None).await?;
        let forged = self.get("/v1/flags", Some("not.a.token")).await?;
        if without.status != 401 || forged.status != 401 {
            return Err(format!(
                "GET /v1/flags answered {} without a token and {} with a forged one (expected 401 and 401)",
                without.status, forged.status
            ));
        }
        pass("401 without a token and with a forged one")
    }

    /// The admin token reaches the operator API; the member token evaluates and is refused the admin API.
    async fn roles(&self) -> Checked {
        let admin = match self.admin() {
            Ok(token) => token,
            Err(skipped) => return warn(skipped),
        };
        let answer = self.get("/v1/admin/gdpr/data-map", Some(admin)).await?;
        if answer.status != 200 {
            return Err(format!(
                "the admin token is not a platform admin's: the data map answered {}",
                answer.describe()
            ));
        }
        let member = match self.member() {
            Ok(token) => token,
            Err(skipped) => return warn(format!("admin token accepted; {skipped}")),
        };
        let evaluates = self.get("/v1/flags", Some(member)).await?;
        let refused = self.get("/v1/admin/flags", Some(member)).await?;
        if evaluates.status != 200 {
            return Err(format!("the member token cannot evaluate flags: {}", evaluates.describe()));
        }
        if refused.status != 403 {
            return Err(format!("the member token reached the flag admin API: {}", refused.describe()));
        }
        pass("the admin token reaches the operator API; the member token evaluates and gets 403 from the admin API")
    }

    /// Every scheduled cleanup's latest run.
    async fn cleanups(&self) -> Checked {
        let admin = match self.admin() {
            Ok(token) => token,
            Err(skipped) => return warn(skipped),
        };
        let answer = self.get("/v1/admin/cleanups", Some(admin)).await?;
        let Some(cleanups) = answer.body.get("cleanups").and_then(Value::as_array).filter(|_| answer.status == 200)
        else {
            return Err(format!("GET /v1/admin/cleanups answered {}", answer.describe()));
        };
        let mut failing = Vec::new();
        let mut never = Vec::new();
        for cleanup in cleanups {
            let name = cleanup.get("name").and_then(Value::as_str).unwrap_or("?");
            match cleanup.get("runs").and_then(Value::as_array).and_then(|runs| runs.first()) {
                None => never.push(name),
                Some(run) if run.get("error").is_some_and(|e| !e.is_null()) => failing.push(name),
                Some(_) => {}
            }
        }
        if !failing.is_empty() {
            return Err(format!("latest run failed: {} (GET /v1/admin/cleanups has the error)", failing.join(", ")));
        }
        if !never.is_empty() {
            return warn(format!(
                "never ran: {} (a new stack: each runs on its schedule; keel-local run-schedule fires one)",
                never.join(", ")
            ));
        }
        pass(format!("{} cleanups, each one's latest run without error", cleanups.len()))
    }

    async fn breakers(&self) -> Checked {
        let admin = match self.admin() {
            Ok(token) => token,
            Err(skipped) => return warn(skipped),
        };
        let answer = self.get("/v1/admin/jobs/breakers", Some(admin)).await?;
        let Some(breakers) = answer.body.get("items").and_then(Value::as_array).filter(|_| answer.status == 200) else {
            return Err(format!("GET /v1/admin/jobs/breakers answered {}", answer.describe()));
        };
        let open: Vec<&str> = breakers
            .iter()
            .filter(|breaker| breaker.get("state").and_then(Value::as_str).is_some_and(|state| state != "closed"))
            .filter_map(|breaker| breaker.get("target").and_then(Value::as_str))
            .collect();
        if !open.is_empty() {
            return warn(format!("not closed: {} (docs/runbooks/circuit-breaker-open.md)", open.join(", ")));
        }
        pass(format!("{} targets, every breaker closed", breakers.len()))
    }

    /// Every answer to a caller with a token carries the rate-limit fields, and a request spends the quota.
    async fn rate_limits(&self) -> Checked {
        let token = match self.admin().or_else(|_| self.member()) {
            Ok(token) => token,
            Err(_) => return warn(format!("skipped: no token ({ADMIN_TOKEN_VAR} or {MEMBER_TOKEN_VAR})")),
        };
        let path = if self.options.admin_token.is_some() { "/v1/admin/flags?limit=1" } else { "/v1/flags" };
        let first = self.get(path, Some(token)).await?;
        let second = self.get(path, Some(token)).await?;
        if first.status == 429 || second.status == 429 {
            return warn(format!("GET {path} was refused (429): this caller's quota is spent"));
        }
        let (Some(policy), Some(before), Some(after)) =
            (first.header("ratelimit-policy"), first.header("ratelimit"), second.header("ratelimit"))
        else {
            return warn(format!("GET {path} carries no RateLimit fields: limits are off for this route group"));
        };
        let remaining = |field: &str| -> Option<u64> {
            let first = field.split(',').next()?;
            first.split(';').find_map(|part| part.trim().strip_prefix("r=")).and_then(|r| r.parse().ok())
        };
        match (remaining(before), remaining(after)) {
            (Some(before), Some(after)) if after < before => pass(format!("{policy}; remaining {before} then {after}")),
            (Some(_), Some(_)) => warn(format!("{policy}; the remaining quota did not go down between two requests")),
            _ => Err(format!("unreadable RateLimit field: {before}")),
        }
    }

    /// A signed event is acknowledged, its copy is a duplicate of it, a bad signature is refused, and the delivery
    /// reaches `completed` (forwarded to the event bus).
    async fn webhook(&self) -> Checked {
        let Some(target) = &self.options.webhook else {
            return warn(format!("skipped: no --webhook-provider with its secret in {WEBHOOK_SECRET_VAR}"));
        };
        let admin = match self.admin() {
            Ok(token) => token,
            Err(skipped) => return warn(skipped),
        };
        let event_id = format!("keel-check-{}", ulid::Ulid::new());
        let body = json!({"id": event_id, "type": "keel.check", "data": {}}).to_string();
        let path = format!("/webhooks/{}", target.provider);
        let (status, accepted) = self.post_webhook(target, &event_id, &body, true).await?;
        if status == 401 {
            return Err(format!("{path} refused the signature (401): is {WEBHOOK_SECRET_VAR} one of its secrets?"));
        }
        let Some(delivery_id) = accepted.get("delivery_id").and_then(Value::as_str).filter(|_| status == 202) else {
            return Err(format!("{path} answered {status}, not 202 with a delivery id"));
        };
        let (status, copy) = self.post_webhook(target, &event_id, &body, true).await?;
        if status != 200 || copy.get("delivery_id").and_then(Value::as_str) != Some(delivery_id) {
            return Err(format!("the same event again answered {status}, not 200 as a duplicate of {delivery_id}"));
        }
        let (status, _) = self.post_webhook(target, &event_id, &body, false).await?;
        if status != 401 {
            return Err(format!("a bad signature answered {status}, not 401"));
        }
        let show = format!("/v1/webhooks/{}/deliveries/{delivery_id}", target.provider);
        let (_, took) = self
            .until("the delivery did not complete", || async {
                let answer = self.get(&show, Some(admin)).await?;
                let status = answer.body.get("status").and_then(Value::as_str).unwrap_or("");
                match (answer.status, status) {
                    (200, "completed") => Ok(Some(())),
                    (200, "failed" | "dead_letter") => {
                        let error = answer.body.get("last_error").and_then(Value::as_str).unwrap_or("");
                        Err(format!("the delivery ended {status}: {error}"))
                    }
                    (200, _) => Ok(None),
                    _ => Err(format!("GET {show} answered {}", answer.describe())),
                }
            })
            .await?;
        pass(format!(
            "{delivery_id} acknowledged, its copy a duplicate, a bad signature 401, completed in {} ms",
            took.as_millis()
        ))
    }

    /// Sends `body` as event `event_id` of the target's provider, signed with its secret (`signed`) or not.
    async fn post_webhook(
        &self,
        target: &WebhookTarget,
        event_id: &str,
        body: &str,
        signed: bool,
    ) -> Result<(u16, Value), String> {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = if signed { sign(&target.secret, &timestamp, body) } else { "0".repeat(64) };
        let path = format!("/webhooks/{}", target.provider);
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-webhook-event-id", event_id)
            .header("x-webhook-timestamp", timestamp)
            .header("x-webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|error| format!("POST {path}: no answer ({error})"))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// The check's flag, created on the first run, answers the same through Keel's API and OFREP once it is in
    /// the evaluation snapshot (on AWS, within `FLAGS_REFRESH_SECONDS` of its creation).
    async fn flag(&self) -> Checked {
        let (admin, member) = match (self.admin(), self.member()) {
            (Ok(admin), Ok(member)) => (admin, member),
            (Err(skipped), _) | (_, Err(skipped)) => return warn(skipped),
        };
        let path = format!("/v1/admin/flags/{FLAG_KEY}");
        let existing = self.get(&path, Some(admin)).await?;
        let created = match existing.status {
            200 => false,
            404 => {
                let flag = json!({
                    "key": FLAG_KEY,
                    "description": "The readiness check's flag (keel-local check): on for everyone.",
                    "default_value": true,
                    "lifecycle": {"type": "operational", "permanent": true},
                });
                let answer = self.send(Method::POST, "/v1/admin/flags", Some(admin), Some(&flag), &[]).await?;
                if answer.status != 201 {
                    return Err(format!("creating {FLAG_KEY} answered {}", answer.describe()));
                }
                true
            }
            _ => return Err(format!("GET {path} answered {}", existing.describe())),
        };
        let ofrep = format!("/ofrep/v1/evaluate/flags/{FLAG_KEY}");
        let context = json!({"context": {}});
        let ((keel, open), took) = self
            .until("the flag did not reach evaluation", || async {
                let keel = self.get(&format!("/v1/flags?keys={FLAG_KEY}"), Some(member)).await?;
                if keel.status != 200 {
                    return Err(format!("GET /v1/flags answered {}", keel.describe()));
                }
                let answer = keel.body.pointer(&format!("/flags/{FLAG_KEY}")).cloned().unwrap_or(Value::Null);
                if answer.get("reason").and_then(Value::as_str) == Some("flag_not_found") {
                    return Ok(None);
                }
                let open = self.send(Method::POST, &ofrep, Some(member), Some(&context), &[]).await?;
                if open.status != 200 {
                    return Err(format!("POST {ofrep} answered {}", open.describe()));
                }
                Ok(Some((answer, open.body)))
            })
            .await?;
        let reason = keel.get("reason").and_then(Value::as_str).unwrap_or("");
        if reason == "error" || keel.get("variant").is_none_or(Value::is_null) {
            return Err(format!(
                "{FLAG_KEY} evaluates with an error: {}",
                keel.get("error_code").unwrap_or(&Value::Null)
            ));
        }
        if keel.get("value") != open.get("value") || keel.get("variant") != open.get("variant") {
            return Err(format!(
                "Keel's API answered {} ({}) and OFREP {} ({})",
                keel["value"], keel["variant"], open["value"], open["variant"]
            ));
        }
        let how =
            if created { format!("created, and evaluated {} ms later", took.as_millis()) } else { "evaluated".into() };
        pass(format!("{FLAG_KEY} {how}: {} ({reason}), the same through OFREP", keel["value"]))
    }

    /// A `keel.check` job, created with an Idempotency-Key, completes with its nonce.
    async fn job(&self) -> Result<JobRun, String> {
        let admin = self.admin()?;
        let nonce = ulid::Ulid::new().to_string();
        let key = format!("keel-check-{nonce}");
        let body = json!({"type": JOB_TYPE, "input": {"nonce": nonce}});
        let created =
            self.send(Method::POST, "/v1/jobs", Some(admin), Some(&body), &[("idempotency-key", key.as_str())]).await?;
        let Some(id) = created.body.get("id").and_then(Value::as_str).filter(|_| created.status == 202) else {
            return Err(format!("POST /v1/jobs ({JOB_TYPE}) answered {}", created.describe()));
        };
        let show = format!("/v1/jobs/{id}");
        let (output, took) = self
            .until("the job did not complete", || async {
                let answer = self.get(&show, Some(admin)).await?;
                match (answer.status, answer.body.get("status").and_then(Value::as_str).unwrap_or("")) {
                    (200, "completed") => Ok(Some(answer.body.get("output").cloned().unwrap_or(Value::Null))),
                    (200, status @ ("failed" | "cancelled")) => Err(format!("the job ended {status}")),
                    (200, _) => Ok(None),
                    _ => Err(format!("GET {show} answered {}", answer.describe())),
                }
            })
            .await?;
        if output.get("nonce").and_then(Value::as_str) != Some(nonce.as_str()) {
            return Err(format!("the job completed with another output: {output}"));
        }
        Ok(JobRun { id: id.to_string(), key, body, took })
    }

    /// The job's request again under its key is the stored answer; the key with another request is refused.
    async fn idempotency(&self, job: Option<&JobRun>) -> Checked {
        let admin = match self.admin() {
            Ok(token) => token,
            Err(skipped) => return warn(skipped),
        };
        let Some(job) = job else { return warn("skipped: the job check did not create a job") };
        let key = [("idempotency-key", job.key.as_str())];
        let repeat = self.send(Method::POST, "/v1/jobs", Some(admin), Some(&job.body), &key).await?;
        let same = repeat.body.get("id").and_then(Value::as_str) == Some(job.id.as_str());
        if repeat.status != 202 || !same || repeat.header(keel::idempotency::REPLAYED) != Some("true") {
            return Err(format!(
                "the same request under its Idempotency-Key answered {} ({}), not the stored 202 for {}",
                repeat.describe(),
                repeat.header(keel::idempotency::REPLAYED).unwrap_or("not replayed"),
                job.id
            ));
        }
        let other = json!({"type": JOB_TYPE, "input": {"nonce": "another"}});
        let reused = self.send(Method::POST, "/v1/jobs", Some(admin), Some(&other), &key).await?;
        if (reused.status, reused.code()) != (422, "idempotency_key_reused") {
            return Err(format!(
                "the key with another request answered {}, not 422 idempotency_key_reused",
                reused.describe()
            ));
        }
        pass("a repeat is replayed (Idempotent-Replayed: true); the key with another request is 422")
    }

    /// The member's own export completes, and its link serves the bundle its record describes.
    async fn export(&self) -> Checked {
        let member = match self.member() {
            Ok(token) => token,
            Err(skipped) => return warn(skipped),
        };
        let started = self.send(Method::POST, "/v1/user/data-exports", Some(member), None, &[]).await?;
        let Some(id) = started.body.get("id").and_then(Value::as_str).filter(|_| matches!(started.status, 200 | 202))
        else {
            return Err(format!("POST /v1/user/data-exports answered {}", started.describe()));
        };
        let show = format!("/v1/user/data-exports/{id}");
        let (done, took) = self
            .until("the export did not complete", || async {
                let answer = self.get(&show, Some(member)).await?;
                match (answer.status, answer.body.get("status").and_then(Value::as_str).unwrap_or("")) {
                    (200, "completed") => Ok(Some(answer.body)),
                    (200, status @ ("failed" | "cancelled")) => Err(format!("the export ended {status}")),
                    (200, _) => Ok(None),
                    _ => Err(format!("GET {show} answered {}", answer.describe())),
                }
            })
            .await?;
        let Some(url) = done.pointer("/download/url").and_then(Value::as_str) else {
            return Err("the completed export has no download link".into());
        };
        let response = self.http.get(url).send().await.map_err(|error| format!("the download link: {error}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|error| format!("the download link: {error}"))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if status != 200 || !bytes.starts_with(b"PK") {
            return Err(format!("the download link answered {status}, not a zip"));
        }
        if Some(digest.as_str()) != done.pointer("/bundle/sha256").and_then(Value::as_str) {
            return Err("the downloaded bundle's SHA-256 differs from the export's record".into());
        }
        pass(format!("{id} completed in {} ms; its {} byte bundle matches its SHA-256", took.as_millis(), bytes.len()))
    }
}

/// Keel's own webhook scheme: hex HMAC-SHA256 of `{timestamp}.{body}` (the suite's signer; tests sign with it too).
pub fn sign(secret: &str, timestamp: &str, body: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_verdict_check_and_reason_and_any_fail_fails_the_run() {
        let line = Line { check: "webhook", verdict: Verdict::Fail, detail: "refused".into() };
        assert_eq!(line.to_string(), "fail  webhook        refused");
        let warned = Line { check: "aws-resources", verdict: Verdict::Warn, detail: String::new() };
        assert!(!failed(std::slice::from_ref(&warned)));
        assert!(failed(&[warned, line]));
    }

    #[test]
    fn the_signature_is_keels_scheme_and_the_secret_stays_out_of_debug() {
        // HMAC-SHA256("secret", "1.{}"), computed independently with openssl.
        assert_eq!(sign("secret", "1", "{}"), "1122767b193110cfec322b6f199b599edbf608ed087f2d27afb0b97d99523908");
        let target = WebhookTarget { provider: "keel-check".into(), secret: "s3cret-value".into() };
        assert!(!format!("{target:?}").contains("s3cret"));
    }
}
