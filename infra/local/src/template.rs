//! Reads `template.yaml` (SAM), the source of truth for what the host serves: functions keyed by their
//! `Metadata.BuildProperties.Binary`, their HttpApi, SQS and schedule events and environment, the queues (with their
//! redrive policies), tables, event buses and bus rules.
//!
//! CloudFormation's short tags (`!Ref`, `!GetAtt`, `!Sub`, ...) arrive from serde_yaml as tagged values; the long
//! forms (`{Ref: X}`, `{"Fn::GetAtt": [X, Arn]}`) are read the same way. Anything the host would have to guess at
//! (an intrinsic it cannot resolve, an event type or resource type it does not emulate, a schedule expression it
//! cannot fire) fails start-up with an error that names where it is, rather than being silently skipped.

use crate::schedule::Schedule;
use keel::bus::EventPattern;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// The account and region the host stands in for (also used in the ARNs it makes up).
pub const LOCAL_ACCOUNT: &str = "000000000000";
pub const LOCAL_REGION: &str = "local";

/// SAM's default function timeout when neither the function nor `Globals.Function` sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// SQS defaults (CloudFormation's when the property is absent).
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
const DEFAULT_RETENTION: Duration = Duration::from_secs(345_600);
/// Lambda's default and largest batch for a standard queue event source.
const DEFAULT_BATCH_SIZE: usize = 10;
const MAX_BATCH_SIZE: usize = 10_000;

const HTTP_METHODS: [&str; 8] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the template {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the template is not valid YAML: {0}")]
    Yaml(String),
    #[error("template {at}: {reason}")]
    Invalid { at: String, reason: String },
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> TemplateError {
    TemplateError::Invalid { at: at.into(), reason: reason.into() }
}

/// Everything the host wires, as the template declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub parameters: BTreeMap<String, Parameter>,
    pub functions: Vec<FunctionDecl>,
    pub tables: Vec<String>,
    pub queues: Vec<QueueDecl>,
    pub buses: Vec<String>,
    pub rules: Vec<RuleDecl>,
    /// `AWS::S3::Bucket`s, by logical id: object stores beside the embedded database.
    pub buckets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDecl {
    pub logical_id: String,
    /// `Metadata.BuildProperties.Binary`: the name the registry knows the function by.
    pub binary: String,
    pub timeout: Duration,
    /// `Globals.Function.Environment.Variables` merged under the function's own.
    pub variables: BTreeMap<String, VarValue>,
    pub routes: Vec<RouteDecl>,
    pub sqs: Vec<SqsDecl>,
    pub schedules: Vec<ScheduleDecl>,
    /// `FunctionUrlConfig`: served beside the routes, at the path the function answers.
    pub url: Option<FunctionUrlDecl>,
}

/// A Function URL keel-local serves: response streaming, no IAM auth (the function checks tokens itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionUrlDecl {
    pub invoke_mode: String,
}

/// What one environment variable is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarValue {
    /// A literal (or a `!Sub` resolved from parameter defaults and pseudo parameters).
    Literal(String),
    /// `!Ref Param`: the host takes the process variable of the same name as the function's variable if set, else
    /// the parameter's default (none: the variable stays unset).
    Parameter {
        name: String,
        default: Option<String>,
    },
    /// `!Ref` of a table, queue, bus or bucket, by logical id.
    Table(String),
    Queue(String),
    Bus(String),
    Bucket(String),
    /// `!GetAtt <Function>Url.FunctionUrl`: the base URL of that function's Function URL, which keel-local serves
    /// beside the routes, on its own address.
    FunctionUrl(String),
    /// `!Ref AWS::NoValue`: the variable is not set.
    NoValue,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Auth {
    /// `Auth.Authorizer: NONE`, or an API without a default authorizer.
    None,
    /// A JWT authorizer (by name): the host verifies its development token.
    Jwt(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecl {
    pub event: String,
    /// Upper case, or `ANY`.
    pub method: String,
    /// `/a/{b}/{proxy+}`, or `$default` for the catch-all route.
    pub path: String,
    pub auth: Auth,
}

impl RouteDecl {
    /// API Gateway's route key: `METHOD /path`, or `$default`.
    pub fn route_key(&self) -> String {
        if self.path == "$default" { "$default".to_string() } else { format!("{} {}", self.method, self.path) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsDecl {
    pub event: String,
    /// The queue's logical id.
    pub queue: String,
    pub batch_size: usize,
    /// `FunctionResponseTypes: [ReportBatchItemFailures]`.
    pub report_batch_item_failures: bool,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDecl {
    pub event: String,
    /// As written, e.g. `rate(5 minutes)`.
    pub expression: String,
    pub schedule: Schedule,
    /// `Input`: the JSON the target receives instead of the scheduled-event payload.
    pub input: Option<serde_json::Value>,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDecl {
    pub logical_id: String,
    pub visibility_timeout: Duration,
    pub retention: Duration,
    pub redrive: Option<Redrive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// The dead-letter queue's logical id.
    pub dead_letter_queue: String,
    pub max_receive_count: u32,
}

/// An `AWS::Events::Rule` routing a bus's events to queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecl {
    pub logical_id: String,
    /// The bus's logical id.
    pub bus: String,
    pub pattern: EventPattern,
    /// Target queues' logical ids.
    pub targets: Vec<String>,
}

/// A CloudFormation intrinsic function, short or long form.
#[derive(Debug, Clone, PartialEq)]
enum Intrinsic {
    Ref(String),
    GetAtt(String, String),
    Sub(Value),
    /// Any other function, by name (`If`, `Join`, ...).
    Other(String),
}

fn intrinsic(value: &Value) -> Option<Intrinsic> {
    let (name, arg) = match value {
        Value::Tagged(tagged) => (tagged.tag.to_string().trim_start_matches('!').to_string(), &tagged.value),
        Value::Mapping(map) if map.len() == 1 => {
            let (key, arg) = map.iter().next()?;
            let key = key.as_str()?;
            if key == "Ref" { ("Ref".to_string(), arg) } else { (key.strip_prefix("Fn::")?.to_string(), arg) }
        }
        _ => return None,
    };
    Some(match name.as_str() {
        "Ref" => match arg.as_str() {
            Some(target) => Intrinsic::Ref(target.to_string()),
            None => Intrinsic::Other("Ref".into()),
        },
        "GetAtt" => match arg {
            Value::String(s) => match s.split_once('.') {
                Some((resource, attribute)) => Intrinsic::GetAtt(resource.to_string(), attribute.to_string()),
                None => Intrinsic::Other("GetAtt".into()),
            },
            Value::Sequence(parts) if parts.len() == 2 => match (parts[0].as_str(), parts[1].as_str()) {
                (Some(resource), Some(attribute)) => Intrinsic::GetAtt(resource.to_string(), attribute.to_string()),
                _ => Intrinsic::Other("GetAtt".into()),
            },
            _ => Intrinsic::Other("GetAtt".into()),
        },
        "Sub" => Intrinsic::Sub(arg.clone()),
        other => Intrinsic::Other(other.to_string()),
    })
}

/// A scalar as CloudFormation reads it (numbers and booleans as their text).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.as_mapping()?.get(key)
}

fn path<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |v, key| get(v, key))
}

fn string_at(value: &Value, key: &str, at: &str) -> Result<Option<String>, TemplateError> {
    match get(value, key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => scalar(v).map(Some).ok_or_else(|| invalid(format!("{at}.{key}"), "expected a literal value")),
    }
}

fn number_at(value: &Value, key: &str, at: &str) -> Result<Option<u64>, TemplateError> {
    match string_at(value, key, at)? {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("{at}.{key}"), format!("expected a non-negative integer, found `{raw}`"))),
    }
}

fn bool_at(value: &Value, key: &str, at: &str) -> Result<Option<bool>, TemplateError> {
    match string_at(value, key, at)? {
        None => Ok(None),
        Some(raw) => match raw.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(invalid(format!("{at}.{key}"), format!("expected true or false, found `{raw}`"))),
        },
    }
}

/// The resource a `!GetAtt X.Arn` names, which must be of one of `kinds`.
fn arn_of(value: &Value, at: &str, kinds: &BTreeMap<String, String>, expected: &str) -> Result<String, TemplateError> {
    match intrinsic(value) {
        Some(Intrinsic::GetAtt(resource, attribute)) if attribute == "Arn" => match kinds.get(&resource) {
            Some(kind) if kind == expected => Ok(resource),
            Some(kind) => Err(invalid(at, format!("`{resource}` is a {kind}, not a {expected}"))),
            None => Err(invalid(at, format!("`{resource}` is not a resource of this template"))),
        },
        _ => Err(invalid(at, format!("expected `!GetAtt <{expected} logical id>.Arn`"))),
    }
}

const FUNCTION: &str = "AWS::Serverless::Function";
const TABLE: &str = "AWS::DynamoDB::Table";
const QUEUE: &str = "AWS::SQS::Queue";
const BUS: &str = "AWS::Events::EventBus";
const RULE: &str = "AWS::Events::Rule";
const BUCKET: &str = "AWS::S3::Bucket";
const HTTP_API: &str = "AWS::Serverless::HttpApi";

/// Resource types that would change how functions are wired but that the host does not emulate: declaring one
/// fails start-up instead of running something other than what AWS would.
const UNSUPPORTED: [&str; 7] = [
    "AWS::Serverless::Api",
    "AWS::Serverless::SimpleTable",
    "AWS::Serverless::StateMachine",
    "AWS::Lambda::Function",
    "AWS::Lambda::EventSourceMapping",
    "AWS::Scheduler::Schedule",
    "AWS::ApiGatewayV2::Route",
];

/// Pseudo parameters, as the host stands in for them.
fn pseudo(name: &str) -> Option<Option<&'static str>> {
    Some(match name {
        "AWS::Region" => Some(LOCAL_REGION),
        "AWS::AccountId" => Some(LOCAL_ACCOUNT),
        "AWS::Partition" => Some("aws"),
        "AWS::StackName" => Some("keel-local"),
        "AWS::URLSuffix" => Some("amazonaws.com"),
        "AWS::NoValue" => None,
        _ => return None,
    })
}

/// An HTTP API's authorizers: which are JWT authorizers, and which one is the default.
#[derive(Debug, Default, Clone)]
struct ApiAuth {
    default: Option<String>,
    jwt: BTreeSet<String>,
    other: BTreeSet<String>,
}

fn api_auth(auth: Option<&Value>, at: &str) -> Result<ApiAuth, TemplateError> {
    let mut parsed = ApiAuth::default();
    let Some(auth) = auth else { return Ok(parsed) };
    parsed.default = string_at(auth, "DefaultAuthorizer", at)?;
    if let Some(Value::Mapping(authorizers)) = get(auth, "Authorizers") {
        for (name, config) in authorizers {
            let name = name.as_str().unwrap_or_default().to_string();
            if get(config, "JwtConfiguration").is_some() {
                parsed.jwt.insert(name);
            } else {
                parsed.other.insert(name);
            }
        }
    }
    Ok(parsed)
}

impl Template {
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TemplateError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let root: Value = serde_yaml::from_str(text).map_err(|e| TemplateError::Yaml(e.to_string()))?;
        let resources = get(&root, "Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| invalid("Resources", "the template declares no resources"))?;

        let mut parameters = BTreeMap::new();
        if let Some(Value::Mapping(params)) = get(&root, "Parameters") {
            for (name, spec) in params {
                let name = name.as_str().unwrap_or_default().to_string();
                let default = string_at(spec, "Default", &format!("Parameters.{name}"))?;
                parameters.insert(name, Parameter { default });
            }
        }

        // Logical id -> what the host calls that kind of resource, for `!Ref`/`!GetAtt` checks.
        let mut kinds = BTreeMap::new();
        let mut apis = BTreeMap::new();
        let implicit_api = api_auth(path(&root, &["Globals", "HttpApi", "Auth"]), "Globals.HttpApi.Auth")?;
        for (id, resource) in resources {
            let id = id.as_str().unwrap_or_default().to_string();
            let at = format!("Resources.{id}");
            let kind = string_at(resource, "Type", &at)?.unwrap_or_default();
            if UNSUPPORTED.contains(&kind.as_str()) {
                return Err(invalid(at, format!("keel-local does not emulate resources of type {kind}")));
            }
            let name = match kind.as_str() {
                FUNCTION => "function",
                TABLE => "table",
                QUEUE => "queue",
                BUS => "event bus",
                RULE => "rule",
                BUCKET => "bucket",
                HTTP_API => {
                    let auth = get(resource, "Properties").and_then(|p| get(p, "Auth"));
                    let parsed = match auth {
                        Some(auth) => api_auth(Some(auth), &format!("{at}.Properties.Auth"))?,
                        None => implicit_api.clone(),
                    };
                    apis.insert(id.clone(), parsed);
                    "http api"
                }
                _ => "resource of another type",
            };
            kinds.insert(id, name.to_string());
        }

        let globals = path(&root, &["Globals", "Function"]);
        let global_timeout = match globals {
            Some(g) => number_at(g, "Timeout", "Globals.Function")?,
            None => None,
        };
        let global_vars = globals.and_then(|g| path(g, &["Environment", "Variables"]));

        let mut template = Template {
            parameters,
            functions: Vec::new(),
            tables: Vec::new(),
            queues: Vec::new(),
            buses: Vec::new(),
            rules: Vec::new(),
            buckets: Vec::new(),
        };
        for (id, resource) in resources {
            let id = id.as_str().unwrap_or_default().to_string();
            let at = format!("Resources.{id}");
            let empty = Value::Mapping(Default::default());
            let props = get(resource, "Properties").unwrap_or(&empty);
            match kinds.get(&id).map(String::as_str) {
                Some("function") => {
                    let function = template.function(
                        &id,
                        resource,
                        props,
                        global_timeout,
                        global_vars,
                        &kinds,
                        &apis,
                        &implicit_api,
                    )?;
                    template.functions.push(function);
                }
                Some("table") => {
                    check_key_schema(props, &at)?;
                    template.tables.push(id);
                }
                Some("queue") => template.queues.push(queue(&id, props, &kinds)?),
                Some("event bus") => template.buses.push(id),
                Some("bucket") => template.buckets.push(id),
                Some("rule") => {
                    if let Some(rule) = rule(&id, props, &kinds)? {
                        template.rules.push(rule);
                    }
                }
                _ => {}
            }
        }
        let mut binaries = BTreeSet::new();
        for function in &template.functions {
            if !binaries.insert(function.binary.clone()) {
                return Err(invalid(
                    format!("Resources.{}", function.logical_id),
                    format!("another function is also built from binary `{}`", function.binary),
                ));
            }
        }
        let mut route_keys = BTreeSet::new();
        for route in template.functions.iter().flat_map(|f| &f.routes) {
            if !route_keys.insert(route.route_key()) {
                return Err(invalid("Events", format!("the route `{}` is declared twice", route.route_key())));
            }
        }
        Ok(template)
    }

    #[allow(clippy::too_many_arguments)]
    fn function(
        &self,
        id: &str,
        resource: &Value,
        props: &Value,
        global_timeout: Option<u64>,
        global_vars: Option<&Value>,
        kinds: &BTreeMap<String, String>,
        apis: &BTreeMap<String, ApiAuth>,
        implicit_api: &ApiAuth,
    ) -> Result<FunctionDecl, TemplateError> {
        let at = format!("Resources.{id}");
        let binary = path(resource, &["Metadata", "BuildProperties", "Binary"]).and_then(scalar).ok_or_else(|| {
            invalid(&at, "the function has no Metadata.BuildProperties.Binary naming its crate's binary")
        })?;
        let timeout = number_at(props, "Timeout", &format!("{at}.Properties"))?
            .or(global_timeout)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);

        let mut variables = BTreeMap::new();
        for (source, vars) in
            [("Globals.Function", global_vars), (at.as_str(), path(props, &["Environment", "Variables"]))]
        {
            let Some(vars) = vars else { continue };
            let Some(vars) = vars.as_mapping() else {
                return Err(invalid(format!("{source}.Environment.Variables"), "expected a mapping"));
            };
            for (name, value) in vars {
                let name = name.as_str().unwrap_or_default().to_string();
                let var_at = format!("{source}.Environment.Variables.{name}");
                variables.insert(name, self.variable(value, &var_at, kinds)?);
            }
        }

        let mut function = FunctionDecl {
            logical_id: id.to_string(),
            binary,
            timeout,
            variables,
            routes: Vec::new(),
            sqs: Vec::new(),
            schedules: Vec::new(),
            url: match get(props, "FunctionUrlConfig") {
                Some(config) => Some(function_url(config, &format!("{at}.Properties.FunctionUrlConfig"))?),
                None => None,
            },
        };
        if let Some(events) = get(props, "Events") {
            let events =
                events.as_mapping().ok_or_else(|| invalid(format!("{at}.Properties.Events"), "expected a mapping"))?;
            for (name, event) in events {
                let name = name.as_str().unwrap_or_default().to_string();
                let event_at = format!("{at}.Properties.Events.{name}");
                let kind = string_at(event, "Type", &event_at)?.unwrap_or_default();
                let empty = Value::Mapping(Default::default());
                let event_props = get(event, "Properties").unwrap_or(&empty);
                let props_at = format!("{event_at}.Properties");
                match kind.as_str() {
                    "HttpApi" => function.routes.push(route(&name, event_props, &props_at, apis, implicit_api)?),
                    "SQS" => function.sqs.push(sqs(&name, event_props, &props_at, kinds)?),
                    "Schedule" | "ScheduleV2" => {
                        if let Some(schedule) = schedule(&name, &kind, event_props, &props_at)? {
                            function.schedules.push(schedule);
                        }
                    }
                    other => {
                        return Err(invalid(event_at, format!("keel-local does not emulate events of type `{other}`")));
                    }
                }
            }
        }
        Ok(function)
    }

    fn variable(&self, value: &Value, at: &str, kinds: &BTreeMap<String, String>) -> Result<VarValue, TemplateError> {
        if let Some(text) = scalar(value) {
            return Ok(VarValue::Literal(text));
        }
        match intrinsic(value) {
            Some(Intrinsic::Ref(target)) => {
                if let Some(parameter) = self.parameters.get(&target) {
                    return Ok(VarValue::Parameter { name: target, default: parameter.default.clone() });
                }
                if let Some(value) = pseudo(&target) {
                    return Ok(value.map_or(VarValue::NoValue, |v| VarValue::Literal(v.to_string())));
                }
                match kinds.get(&target).map(String::as_str) {
                    Some("table") => Ok(VarValue::Table(target)),
                    Some("queue") => Ok(VarValue::Queue(target)),
                    Some("event bus") => Ok(VarValue::Bus(target)),
                    Some("bucket") => Ok(VarValue::Bucket(target)),
                    Some(kind) => Err(invalid(
                        at,
                        format!(
                            "`!Ref {target}` names a {kind}; keel-local wires only tables, queues, event buses and \
                             buckets"
                        ),
                    )),
                    None => Err(invalid(at, format!("`!Ref {target}` names nothing declared in the template"))),
                }
            }
            Some(Intrinsic::Sub(arg)) => self.sub(&arg, at).map(VarValue::Literal),
            Some(Intrinsic::GetAtt(resource, attribute))
                if attribute == "FunctionUrl"
                    && resource
                        .strip_suffix("Url")
                        .is_some_and(|f| kinds.get(f).map(String::as_str) == Some("function")) =>
            {
                Ok(VarValue::FunctionUrl(resource.trim_end_matches("Url").to_string()))
            }
            Some(Intrinsic::GetAtt(resource, attribute)) => Err(invalid(
                at,
                format!("`!GetAtt {resource}.{attribute}` in an environment variable is not supported by keel-local"),
            )),
            Some(Intrinsic::Other(name)) => {
                Err(invalid(at, format!("the intrinsic function `{name}` is not supported by keel-local here")))
            }
            None => Err(invalid(at, "expected a literal, `!Ref` or `!Sub`")),
        }
    }

    /// `!Sub` over parameter defaults and pseudo parameters (`${!Literal}` stays literal).
    fn sub(&self, arg: &Value, at: &str) -> Result<String, TemplateError> {
        let (text, vars) = match arg {
            Value::String(text) => (text.as_str(), None),
            Value::Sequence(parts) if parts.len() == 2 => {
                (parts[0].as_str().ok_or_else(|| invalid(at, "`!Sub` expects a string"))?, parts[1].as_mapping())
            }
            _ => return Err(invalid(at, "`!Sub` expects a string or [string, variables]")),
        };
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| invalid(at, "unclosed `${` in `!Sub`"))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(value) = vars.and_then(|v| v.get(name)).and_then(scalar) {
                out.push_str(&value);
            } else if let Some(parameter) = self.parameters.get(name) {
                let value = parameter
                    .default
                    .as_deref()
                    .ok_or_else(|| invalid(at, format!("`!Sub` uses parameter {name}, which has no Default")))?;
                out.push_str(value);
            } else if let Some(Some(value)) = pseudo(name) {
                out.push_str(value);
            } else {
                return Err(invalid(at, format!("`!Sub` uses `${{{name}}}`, which keel-local cannot resolve")));
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// keel-local serves a Function URL only as Keel uses one: `AuthType: NONE` (it cannot check IAM signatures; the
/// function checks the caller's token itself) and `InvokeMode: RESPONSE_STREAM` (a buffered URL would be an HTTP
/// API route by another name).
fn function_url(config: &Value, at: &str) -> Result<FunctionUrlDecl, TemplateError> {
    let auth = string_at(config, "AuthType", at)?.unwrap_or_default();
    if auth != "NONE" {
        return Err(invalid(
            format!("{at}.AuthType"),
            format!("keel-local serves Function URLs with AuthType NONE only, not `{auth}`"),
        ));
    }
    let invoke_mode = string_at(config, "InvokeMode", at)?.unwrap_or_else(|| "BUFFERED".into());
    if invoke_mode != "RESPONSE_STREAM" {
        return Err(invalid(
            format!("{at}.InvokeMode"),
            format!("keel-local serves streaming Function URLs (RESPONSE_STREAM) only, not `{invoke_mode}`"),
        ));
    }
    Ok(FunctionUrlDecl { invoke_mode })
}

fn route(
    event: &str,
    props: &Value,
    at: &str,
    apis: &BTreeMap<String, ApiAuth>,
    implicit_api: &ApiAuth,
) -> Result<RouteDecl, TemplateError> {
    let api = match get(props, "ApiId") {
        None => implicit_api,
        Some(value) => match intrinsic(value) {
            Some(Intrinsic::Ref(id)) if apis.contains_key(&id) => apis.get(&id).unwrap_or(implicit_api),
            _ => return Err(invalid(format!("{at}.ApiId"), "expected `!Ref <AWS::Serverless::HttpApi logical id>`")),
        },
    };
    let method = string_at(props, "Method", at)?;
    let path = string_at(props, "Path", at)?;
    let (method, path) = match (method, path) {
        (None, None) => ("ANY".to_string(), "$default".to_string()),
        (Some(method), Some(path)) => (method.to_ascii_uppercase(), path),
        _ => return Err(invalid(at, "an HttpApi event needs both Method and Path (or neither, for $default)")),
    };
    let method = if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" { "ANY".to_string() } else { method };
    if !HTTP_METHODS.contains(&method.as_str()) {
        return Err(invalid(format!("{at}.Method"), format!("unknown HTTP method `{method}`")));
    }
    if path != "$default" {
        check_route_path(&path).map_err(|reason| invalid(format!("{at}.Path"), reason))?;
    }
    let auth_props = get(props, "Auth");
    if let Some(scopes) = auth_props.and_then(|a| get(a, "AuthorizationScopes"))
        && scopes.as_sequence().is_some_and(|s| !s.is_empty())
    {
        return Err(invalid(
            format!("{at}.Auth.AuthorizationScopes"),
            "authorization scopes are not supported by keel-local",
        ));
    }
    let authorizer = match auth_props {
        Some(auth) => string_at(auth, "Authorizer", &format!("{at}.Auth"))?,
        None => None,
    }
    .or_else(|| api.default.clone());
    let auth = match authorizer {
        None => Auth::None,
        Some(name) if name == "NONE" => Auth::None,
        Some(name) if api.jwt.contains(&name) => Auth::Jwt(name),
        Some(name) if api.other.contains(&name) || name == "AWS_IAM" => {
            return Err(invalid(
                at,
                format!("authorizer `{name}` is not a JWT authorizer; keel-local emulates only JWT"),
            ));
        }
        Some(name) => return Err(invalid(at, format!("authorizer `{name}` is not declared on its HTTP API"))),
    };
    Ok(RouteDecl { event: event.to_string(), method, path, auth })
}

/// API Gateway's path rules: starts with `/`, segments literal or `{name}`, and `{name+}` only as the last one.
pub(crate) fn check_route_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("the path `{path}` must start with /"));
    };
    if rest.is_empty() {
        return Ok(());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return Err(format!("the path `{path}` has an empty segment"));
        }
        if let Some(inner) = segment.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(format!("the path `{path}` has a malformed parameter `{segment}`"));
            };
            let greedy = name.ends_with('+');
            let name = name.trim_end_matches('+');
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("the path `{path}` has a malformed parameter `{segment}`"));
            }
            if greedy && i + 1 != segments.len() {
                return Err(format!("the greedy parameter `{segment}` must be the last segment of `{path}`"));
            }
        } else if segment.contains(['{', '}']) {
            return Err(format!("the path `{path}` mixes text and a parameter in `{segment}`"));
        }
    }
    Ok(())
}

fn sqs(event: &str, props: &Value, at: &str, kinds: &BTreeMap<String, String>) -> Result<SqsDecl, TemplateError> {
    let queue = arn_of(
        get(props, "Queue").ok_or_else(|| invalid(at, "an SQS event needs Queue"))?,
        &format!("{at}.Queue"),
        kinds,
        "queue",
    )?;
    let batch_size = number_at(props, "BatchSize", at)?.map_or(DEFAULT_BATCH_SIZE, |n| n as usize);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        return Err(invalid(format!("{at}.BatchSize"), format!("must be from 1 to {MAX_BATCH_SIZE}")));
    }
    let report_batch_item_failures = match get(props, "FunctionResponseTypes") {
        None => false,
        Some(Value::Sequence(types)) => {
            for t in types {
                if scalar(t).as_deref() != Some("ReportBatchItemFailures") {
                    return Err(invalid(
                        format!("{at}.FunctionResponseTypes"),
                        "the only response type is ReportBatchItemFailures",
                    ));
                }
            }
            !types.is_empty()
        }
        Some(_) => return Err(invalid(format!("{at}.FunctionResponseTypes"), "expected a list")),
    };
    if get(props, "FilterCriteria").is_some() {
        return Err(invalid(format!("{at}.FilterCriteria"), "event filtering is not supported by keel-local"));
    }
    let enabled = bool_at(props, "Enabled", at)?.unwrap_or(true);
    Ok(SqsDecl { event: event.to_string(), queue, batch_size, report_batch_item_failures, enabled })
}

fn schedule(event: &str, kind: &str, props: &Value, at: &str) -> Result<Option<ScheduleDecl>, TemplateError> {
    let key = if kind == "Schedule" { "Schedule" } else { "ScheduleExpression" };
    let expression = string_at(props, key, at)?.ok_or_else(|| invalid(at, format!("a {kind} event needs {key}")))?;
    let schedule = Schedule::parse(&expression).map_err(|reason| invalid(format!("{at}.{key}"), reason))?;
    if let Some(zone) = string_at(props, "ScheduleExpressionTimezone", at)?
        && !matches!(zone.as_str(), "UTC" | "Etc/UTC" | "GMT" | "Etc/GMT")
    {
        return Err(invalid(
            format!("{at}.ScheduleExpressionTimezone"),
            format!("keel-local fires schedules in UTC only, not `{zone}`"),
        ));
    }
    let enabled = match string_at(props, "State", at)? {
        Some(state) => match state.as_str() {
            "ENABLED" => true,
            "DISABLED" => false,
            other => {
                return Err(invalid(format!("{at}.State"), format!("expected ENABLED or DISABLED, found `{other}`")));
            }
        },
        None => bool_at(props, "Enabled", at)?.unwrap_or(true),
    };
    let input = match string_at(props, "Input", at)? {
        None => None,
        Some(raw) => Some(
            serde_json::from_str(&raw)
                .map_err(|e| invalid(format!("{at}.Input"), format!("Input must be JSON: {e}")))?,
        ),
    };
    Ok(Some(ScheduleDecl { event: event.to_string(), expression, schedule, input, enabled }))
}

fn queue(id: &str, props: &Value, kinds: &BTreeMap<String, String>) -> Result<QueueDecl, TemplateError> {
    let at = format!("Resources.{id}.Properties");
    if bool_at(props, "FifoQueue", &at)? == Some(true) {
        return Err(invalid(at, "FIFO queues are not supported by keel-local"));
    }
    let visibility_timeout =
        number_at(props, "VisibilityTimeout", &at)?.map_or(DEFAULT_VISIBILITY, Duration::from_secs);
    let retention = number_at(props, "MessageRetentionPeriod", &at)?.map_or(DEFAULT_RETENTION, Duration::from_secs);
    let redrive = match get(props, "RedrivePolicy") {
        None => None,
        Some(policy) => {
            let policy_at = format!("{at}.RedrivePolicy");
            let target =
                get(policy, "deadLetterTargetArn").ok_or_else(|| invalid(&policy_at, "needs deadLetterTargetArn"))?;
            let dead_letter_queue = arn_of(target, &format!("{policy_at}.deadLetterTargetArn"), kinds, "queue")?;
            let max_receive_count = number_at(policy, "maxReceiveCount", &policy_at)?
                .ok_or_else(|| invalid(&policy_at, "needs maxReceiveCount"))?;
            let max_receive_count = u32::try_from(max_receive_count)
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| invalid(&policy_at, "maxReceiveCount must be from 1 to 1000"))?;
            if dead_letter_queue == id {
                return Err(invalid(policy_at, "a queue cannot be its own dead-letter queue"));
            }
            Some(Redrive { dead_letter_queue, max_receive_count })
        }
    };
    Ok(QueueDecl { logical_id: id.to_string(), visibility_timeout, retention, redrive })
}

/// Both adapters store items under string keys `pk` (hash) and `sk` (range).
fn check_key_schema(props: &Value, at: &str) -> Result<(), TemplateError> {
    let Some(Value::Sequence(schema)) = get(props, "KeySchema") else { return Ok(()) };
    let keys: Vec<(Option<String>, Option<String>)> =
        schema.iter().map(|k| (get(k, "AttributeName").and_then(scalar), get(k, "KeyType").and_then(scalar))).collect();
    let expected =
        [(Some("pk".to_string()), Some("HASH".to_string())), (Some("sk".to_string()), Some("RANGE".to_string()))];
    if keys != expected {
        return Err(invalid(
            format!("{at}.Properties.KeySchema"),
            "Keel's table adapters need keys pk (HASH) and sk (RANGE)",
        ));
    }
    Ok(())
}

/// An `AWS::Events::Rule` on one of the template's buses with queue targets. A rule with a schedule expression or
/// a target the host cannot deliver to fails start-up.
fn rule(id: &str, props: &Value, kinds: &BTreeMap<String, String>) -> Result<Option<RuleDecl>, TemplateError> {
    let at = format!("Resources.{id}.Properties");
    if get(props, "ScheduleExpression").is_some() {
        return Err(invalid(at, "scheduled rules are not supported by keel-local; use a function's Schedule event"));
    }
    if string_at(props, "State", &at)?.as_deref() == Some("DISABLED") {
        return Ok(None);
    }
    let bus = match get(props, "EventBusName") {
        Some(value) => match intrinsic(value) {
            Some(Intrinsic::Ref(bus)) if kinds.get(&bus).map(String::as_str) == Some("event bus") => bus,
            _ => {
                return Err(invalid(
                    format!("{at}.EventBusName"),
                    "expected `!Ref <AWS::Events::EventBus logical id>`",
                ));
            }
        },
        None => return Err(invalid(at, "rules on the default bus are not supported by keel-local; name the bus")),
    };
    let pattern_value = get(props, "EventPattern").ok_or_else(|| invalid(&at, "needs EventPattern"))?;
    let pattern = event_pattern(pattern_value, &format!("{at}.EventPattern"))?;
    let mut targets = Vec::new();
    if let Some(Value::Sequence(list)) = get(props, "Targets") {
        for (i, target) in list.iter().enumerate() {
            let target_at = format!("{at}.Targets[{i}]");
            for unsupported in ["Input", "InputPath", "InputTransformer"] {
                if get(target, unsupported).is_some() {
                    return Err(invalid(&target_at, format!("{unsupported} is not supported by keel-local")));
                }
            }
            let arn = get(target, "Arn").ok_or_else(|| invalid(&target_at, "needs Arn"))?;
            targets.push(arn_of(arn, &format!("{target_at}.Arn"), kinds, "queue")?);
        }
    }
    Ok(Some(RuleDecl { logical_id: id.to_string(), bus, pattern, targets }))
}

/// The subset of EventBridge patterns the ports model: `source` and `detail-type`, exact or `{prefix: ...}` for
/// detail-types.
fn event_pattern(value: &Value, at: &str) -> Result<EventPattern, TemplateError> {
    let map = value.as_mapping().ok_or_else(|| invalid(at, "expected a mapping"))?;
    let mut pattern = EventPattern::default();
    for (key, values) in map {
        let key = key.as_str().unwrap_or_default();
        let list = values.as_sequence().ok_or_else(|| invalid(format!("{at}.{key}"), "expected a list"))?;
        for entry in list {
            let text = match (scalar(entry), get(entry, "prefix").and_then(scalar)) {
                (Some(exact), _) if !exact.ends_with('*') => exact,
                (None, Some(prefix)) if key == "detail-type" => format!("{prefix}*"),
                _ => {
                    return Err(invalid(
                        format!("{at}.{key}"),
                        "keel-local matches exact values (and detail-type prefixes) only",
                    ));
                }
            };
            match key {
                "source" => pattern.sources.push(text),
                "detail-type" => pattern.detail_types.push(text),
                other => return Err(invalid(at, format!("matching on `{other}` is not supported by keel-local"))),
            }
        }
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
Parameters:
  Stage: {Type: String, Default: dev}
  Secret: {Type: String, Default: ''}
  NoDefault: {Type: String}
Globals:
  Function:
    Timeout: 7
    Environment:
      Variables:
        STAGE: !Ref Stage
        SHARED: global
        OVERRIDDEN: global
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        DefaultAuthorizer: Jwt
        Authorizers:
          Jwt: {JwtConfiguration: {issuer: x, audience: [y]}}
  Items: {Type: AWS::DynamoDB::Table}
  Work:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 60
      RedrivePolicy: {deadLetterTargetArn: !GetAtt Dead.Arn, maxReceiveCount: 3}
  Dead: {Type: AWS::SQS::Queue, Properties: {MessageRetentionPeriod: 1209600}}
  Bus: {Type: AWS::Events::EventBus, Properties: {Name: !Sub 'keel-${Stage}'}}
  ToWork:
    Type: AWS::Events::Rule
    Properties:
      EventBusName: !Ref Bus
      EventPattern: {source: [keel.jobs], detail-type: [{prefix: job.}]}
      Targets: [{Id: w, Arn: !GetAtt Work.Arn}]
  Logs: {Type: AWS::Logs::LogGroup}
  Files: {Type: AWS::S3::Bucket}
  Front:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: front}}
    Properties:
      Environment:
        Variables:
          TABLE: !Ref Items
          QUEUE: {Ref: Work}
          BUS: !Ref Bus
          FILES: !Ref Files
          SECRET: !Ref Secret
          UNSET: !Ref NoDefault
          REGION: !Ref AWS::Region
          NAME: !Sub 'keel-${Stage}-${AWS::AccountId}-${!Literal}'
          OVERRIDDEN: own
          NUMBER: 5
      Events:
        Open:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Method: post, Path: '/hooks/{name}', Auth: {Authorizer: NONE}}
        Closed:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Method: GET, Path: '/files/{proxy+}'}
  Back:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: back}}
    Properties:
      Timeout: 30
      Events:
        Q:
          Type: SQS
          Properties: {Queue: !GetAtt Work.Arn, BatchSize: 5, FunctionResponseTypes: [ReportBatchItemFailures]}
        Tick:
          Type: Schedule
          Properties: {Schedule: rate(5 minutes), Input: '{"job":"cleanup"}'}
"#;

    #[test]
    fn reads_functions_events_and_resources_with_short_and_long_intrinsics() {
        let t = Template::parse(SAMPLE).unwrap();
        assert_eq!(t.tables, vec!["Items"]);
        assert_eq!(t.buses, vec!["Bus"]);
        assert_eq!(t.buckets, vec!["Files"]);
        let work = t.queues.iter().find(|q| q.logical_id == "Work").unwrap();
        assert_eq!(work.visibility_timeout, Duration::from_secs(60));
        assert_eq!(work.retention, DEFAULT_RETENTION);
        assert_eq!(work.redrive, Some(Redrive { dead_letter_queue: "Dead".into(), max_receive_count: 3 }));
        let dead = t.queues.iter().find(|q| q.logical_id == "Dead").unwrap();
        assert_eq!((dead.retention, dead.redrive.clone()), (Duration::from_secs(1_209_600), None));
        assert_eq!(t.rules.len(), 1);
        assert_eq!(t.rules[0].pattern.sources, vec!["keel.jobs"]);
        assert_eq!(t.rules[0].pattern.detail_types, vec!["job.*"]);
        assert_eq!(t.rules[0].targets, vec!["Work"]);

        let front = t.functions.iter().find(|f| f.binary == "front").unwrap();
        assert_eq!(front.timeout, Duration::from_secs(7), "Globals timeout applies");
        let v = |name: &str| front.variables[name].clone();
        assert_eq!(v("TABLE"), VarValue::Table("Items".into()));
        assert_eq!(v("QUEUE"), VarValue::Queue("Work".into()));
        assert_eq!(v("BUS"), VarValue::Bus("Bus".into()));
        assert_eq!(v("FILES"), VarValue::Bucket("Files".into()));
        assert_eq!(v("SECRET"), VarValue::Parameter { name: "Secret".into(), default: Some(String::new()) });
        assert_eq!(v("UNSET"), VarValue::Parameter { name: "NoDefault".into(), default: None });
        assert_eq!(v("STAGE"), VarValue::Parameter { name: "Stage".into(), default: Some("dev".into()) });
        assert_eq!(v("REGION"), VarValue::Literal(LOCAL_REGION.into()));
        assert_eq!(v("NAME"), VarValue::Literal("keel-dev-000000000000-${Literal}".into()));
        assert_eq!(v("SHARED"), VarValue::Literal("global".into()));
        assert_eq!(v("OVERRIDDEN"), VarValue::Literal("own".into()), "the function's own variables win over Globals");
        assert_eq!(v("NUMBER"), VarValue::Literal("5".into()));
        assert_eq!(
            front.routes,
            vec![
                RouteDecl {
                    event: "Open".into(),
                    method: "POST".into(),
                    path: "/hooks/{name}".into(),
                    auth: Auth::None
                },
                RouteDecl {
                    event: "Closed".into(),
                    method: "GET".into(),
                    path: "/files/{proxy+}".into(),
                    auth: Auth::Jwt("Jwt".into())
                },
            ]
        );

        let back = t.functions.iter().find(|f| f.binary == "back").unwrap();
        assert_eq!(back.timeout, Duration::from_secs(30));
        assert_eq!(
            back.sqs,
            vec![SqsDecl {
                event: "Q".into(),
                queue: "Work".into(),
                batch_size: 5,
                report_batch_item_failures: true,
                enabled: true
            }]
        );
        assert_eq!(back.schedules.len(), 1);
        assert_eq!(back.schedules[0].schedule, Schedule::Rate(Duration::from_secs(300)));
        assert_eq!(back.schedules[0].input, Some(serde_json::json!({"job": "cleanup"})));
        assert_eq!(back.variables["SHARED"], VarValue::Literal("global".into()));
    }

    fn with_function(events: &str, vars: &str) -> String {
        format!(
            r#"
Parameters: {{P: {{Type: String}}}}
Resources:
  Q: {{Type: AWS::SQS::Queue}}
  L: {{Type: AWS::Logs::LogGroup}}
  F:
    Type: AWS::Serverless::Function
    Metadata: {{BuildProperties: {{Binary: f}}}}
    Properties:
      Environment: {{Variables: {{{vars}}}}}
      Events: {{{events}}}
"#
        )
    }

    #[test]
    fn a_streaming_function_url_is_read_and_any_other_is_refused_naming_its_property() {
        let url = |config: &str| {
            with_function("", "").replace("      Events: {}", &format!("      FunctionUrlConfig: {{{config}}}"))
        };
        let template = Template::parse(&url("AuthType: NONE, InvokeMode: RESPONSE_STREAM")).unwrap();
        assert_eq!(template.functions[0].url, Some(FunctionUrlDecl { invoke_mode: "RESPONSE_STREAM".into() }));
        assert_eq!(Template::parse(&with_function("", "")).unwrap().functions[0].url, None);
        let e = error_of(&url("AuthType: AWS_IAM, InvokeMode: RESPONSE_STREAM"));
        assert!(e.contains("FunctionUrlConfig.AuthType") && e.contains("AWS_IAM"), "{e}");
        let e = error_of(&url("AuthType: NONE"));
        assert!(e.contains("FunctionUrlConfig.InvokeMode") && e.contains("BUFFERED"), "{e}");
    }

    fn error_of(text: &str) -> String {
        Template::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_function_url_wires_into_a_variable_and_other_attributes_do_not() {
        let template = Template::parse(&with_function("", "S: !GetAtt FUrl.FunctionUrl")).unwrap();
        assert_eq!(template.functions[0].variables["S"], VarValue::FunctionUrl("F".into()));
        let e = error_of(&with_function("", "S: !GetAtt FUrl.Arn"));
        assert!(e.contains("Variables.S") && e.contains("FUrl.Arn"), "{e}");
        let e = error_of(&with_function("", "S: !GetAtt QUrl.FunctionUrl"));
        assert!(e.contains("QUrl.FunctionUrl"), "not a function's: {e}");
    }

    #[test]
    fn unresolvable_wiring_fails_loudly_naming_the_place() {
        let e = error_of(&with_function("", "X: !Ref Nope"));
        assert!(e.contains("Resources.F.Environment.Variables.X") && e.contains("Nope"), "{e}");
        let e = error_of(&with_function("", "X: !Ref L"));
        assert!(e.contains("resource of another type"), "{e}");
        let e = error_of(&with_function("", "X: !GetAtt Q.Arn"));
        assert!(e.contains("not supported"), "{e}");
        let e = error_of(&with_function("", "X: !If [C, a, b]"));
        assert!(e.contains("`If`"), "{e}");
        let e = error_of(&with_function("", "X: !Sub '${P}'"));
        assert!(e.contains("no Default"), "{e}");
        let e = error_of(&with_function("E: {Type: S3, Properties: {}}", ""));
        assert!(e.contains("Events.E") && e.contains("`S3`"), "{e}");
        let e = error_of(&with_function("E: {Type: SQS, Properties: {Queue: !GetAtt L.Arn}}", ""));
        assert!(e.contains("not a queue"), "{e}");
        let e = error_of(&with_function("E: {Type: Schedule, Properties: {Schedule: 'every(5 minutes)'}}", ""));
        assert!(e.contains("Events.E.Properties.Schedule"), "{e}");
        let e = error_of(&with_function("E: {Type: HttpApi, Properties: {Method: GET, Path: '/a/{p+}/b'}}", ""));
        assert!(e.contains("greedy"), "{e}");
        let e = error_of(&with_function(
            "A: {Type: HttpApi, Properties: {Method: GET, Path: /a}}, B: {Type: HttpApi, Properties: {Method: get, Path: /a}}",
            "",
        ));
        assert!(e.contains("declared twice"), "{e}");
        let e = error_of("Resources: {F: {Type: AWS::Serverless::Function, Properties: {}}}");
        assert!(e.contains("BuildProperties.Binary"), "{e}");
        let e = error_of("Resources: {F: {Type: AWS::Lambda::Function, Properties: {}}}");
        assert!(e.contains("does not emulate"), "{e}");
    }

    #[test]
    fn routes_without_an_api_use_the_implicit_api_and_its_globals_auth() {
        let t = Template::parse(&with_function(
            "E: {Type: HttpApi, Properties: {Method: any, Path: /x}}, D: {Type: HttpApi}",
            "",
        ))
        .unwrap();
        let routes = &t.functions[0].routes;
        assert_eq!(routes[0].route_key(), "ANY /x");
        assert_eq!(routes[0].auth, Auth::None);
        assert_eq!(routes[1].route_key(), "$default");
    }

    #[test]
    fn the_repository_template_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
        let t = Template::load(&root).unwrap();
        assert!(t.functions.iter().any(|f| f.binary == "webhook-ingest"));
        let ingest = t.functions.iter().find(|f| f.binary == "webhook-ingest").unwrap();
        assert_eq!(ingest.routes[0].auth, Auth::None);
        assert_eq!(ingest.variables["WEBHOOKS_TABLE"], VarValue::Table("WebhooksTable".into()));
        assert_eq!(
            ingest.variables["KEEL_STAGE"],
            VarValue::Parameter { name: "Stage".into(), default: Some("dev".into()) }
        );
    }
}
