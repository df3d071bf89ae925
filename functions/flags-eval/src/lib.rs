//! Flag evaluation for the caller's organization (any member): Keel's own API and the OpenFeature Remote Evaluation
//! Protocol (OFREP), both answering from one in-memory snapshot of every flag.
//!
//! - `GET /v1/flags?keys=a,b` and `POST /v1/flags/evaluate`: Keel's answers (value, variant, payload, Keel's reason
//!   and OpenFeature's, rule, version, error code), keyed by flag, with the snapshot's age and staleness.
//! - `POST /ofrep/v1/evaluate/flags/{key}` and `POST /ofrep/v1/evaluate/flags`: OFREP as its OpenAPI document
//!   specifies, the bulk form with a strong `ETag` and `If-None-Match` → 304.
//!
//! The organization and user come from the token, the environment from the deployment (`KEEL_STAGE`); a request
//! can add attributes but never name another organization, user or environment. The snapshot is built once per
//! process (`build`) and refreshed at most every `FLAGS_REFRESH_SECONDS`; when the store cannot be read the last good
//! snapshot keeps answering, marked stale. Before any snapshot exists, Keel's API fails every flag closed and OFREP
//! answers its general error (500), so SDKs fall back to the code's defaults.

mod context;
mod keel_api;
mod ofrep;

pub use context::{MAX_ATTRIBUTES, MAX_NAME_BYTES, MAX_VALUE_BYTES, RESERVED};

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use http::HeaderValue;
use keel::config::{ConfigError, Env};
use keel::function::{HttpFunction, Invocation};
use keel::identity::Identity;
use keel::problem::Problem;
use keel::resources::Resources;
use keel_flags::store::{FlagCache, FlagStore, Served};
use keel_flags::{ErrorCode, Evaluation};
use std::sync::Arc;

pub const TABLE_VAR: &str = "FLAGS_TABLE";
pub const REFRESH_VAR: &str = "FLAGS_REFRESH_SECONDS";
/// The deployment's environment (dev, staging, prod): the `environment` every flag is evaluated in.
pub const STAGE_VAR: &str = "KEEL_STAGE";
pub const DEFAULT_REFRESH_SECONDS: i64 = 10;
pub const MAX_REFRESH_SECONDS: i64 = 30;

/// Most flag keys one request may name.
pub const MAX_KEYS: usize = 100;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct FlagsEval {
    cache: Arc<FlagCache>,
    environment: String,
}

/// Reads the configuration and builds the snapshot cache once, for every invocation of this process.
pub fn build(env: &Env, resources: &dyn Resources) -> Result<FlagsEval, ConfigError> {
    let environment = env.required(STAGE_VAR)?.to_string();
    let expected = format!("a whole number of seconds from 1 to {MAX_REFRESH_SECONDS}");
    let refresh: i64 = env.parse_or(REFRESH_VAR, &expected, DEFAULT_REFRESH_SECONDS)?;
    if !(1..=MAX_REFRESH_SECONDS).contains(&refresh) {
        return Err(ConfigError::Malformed { name: REFRESH_VAR.into(), reason: format!("expected {expected}") });
    }
    let store = FlagStore::new(resources.table(TABLE_VAR)?, resources.clock());
    let cache = Arc::new(FlagCache::new(store, Duration::seconds(refresh)));
    Ok(FlagsEval { cache, environment })
}

/// The routes this function serves, by path template, with the one method each accepts.
const ROUTES: [(&str, &str); 4] = [
    ("/v1/flags", "GET"),
    ("/v1/flags/evaluate", "POST"),
    ("/ofrep/v1/evaluate/flags/{key}", "POST"),
    ("/ofrep/v1/evaluate/flags", "POST"),
];

#[async_trait]
impl HttpFunction for FlagsEval {
    async fn call(&self, request: ApiGatewayV2httpRequest, _invocation: Invocation) -> ApiGatewayV2httpResponse {
        let identity = match member(&request) {
            Ok(identity) => identity,
            Err(problem) => return problem.into_response(),
        };
        let (method, path) = route_of(&request);
        let Some((template, allowed)) = template_of(path) else {
            return Problem::not_found("no such operation").into_response();
        };
        if method != allowed {
            let mut response =
                Problem::new(405, "method_not_allowed", format!("{path} accepts {allowed} only")).into_response();
            response.headers.insert(http::header::ALLOW, HeaderValue::from_static(allowed));
            return response;
        }
        let call = Call { identity: &identity, request: &request, now: self.now() };
        match template {
            "/v1/flags" => keel_api::get(self, &call).await,
            "/v1/flags/evaluate" => keel_api::evaluate(self, &call).await,
            "/ofrep/v1/evaluate/flags/{key}" => ofrep::single(self, &call).await,
            _ => ofrep::bulk(self, &call).await,
        }
        .unwrap_or_else(Problem::into_response)
    }
}

/// One authorised request.
pub(crate) struct Call<'a> {
    pub identity: &'a Identity,
    pub request: &'a ApiGatewayV2httpRequest,
    pub now: DateTime<Utc>,
}

impl FlagsEval {
    fn now(&self) -> DateTime<Utc> {
        self.cache.store().clock().now()
    }

    pub(crate) fn environment(&self) -> &str {
        &self.environment
    }

    pub(crate) async fn served(&self) -> Served {
        self.cache.current().await
    }

    /// Records that these flags were evaluated (in memory; the cache flushes it with a later refresh).
    pub(crate) fn note<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        self.cache.note_evaluated(keys);
    }
}

/// Any caller with an organization and at least one of Keel's roles (member, admin, platform-admin).
fn member(request: &ApiGatewayV2httpRequest) -> Result<Identity, Problem> {
    let identity =
        Identity::from_request(request).ok_or_else(|| Problem::unauthorized("a valid bearer token is required"))?;
    if identity.roles.is_empty() {
        return Err(Problem::forbidden("evaluating flags requires the `member` role or above"));
    }
    Ok(identity)
}

/// The route a path (template or concrete) belongs to, and the method it accepts.
fn template_of(path: &str) -> Option<(&'static str, &'static str)> {
    if let Some(&found) = ROUTES.iter().find(|(template, _)| *template == path) {
        return Some(found);
    }
    ofrep::key_of_path(path).map(|_| ROUTES[2])
}

/// The request's method and path template: the route key API Gateway matched, or the raw path without one.
fn route_of(request: &ApiGatewayV2httpRequest) -> (&str, &str) {
    let route_key = request.route_key.as_deref().or(request.request_context.route_key.as_deref());
    match route_key.and_then(|key| key.split_once(' ')) {
        Some((method, path)) => (method, path),
        None => (request.http_method.as_str(), request.raw_path.as_deref().unwrap_or_default()),
    }
}

pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Logs why a stored flag could not be evaluated. The engine's message may quote the flag's stored configuration
/// (organizations included), so it goes to the log, never to the caller.
pub(crate) fn log_failure(key: &str, evaluation: &Evaluation<'_>) {
    match evaluation.error {
        Some((ErrorCode::ParseError, reason)) => {
            tracing::warn!(flag = key, reason, "stored flag does not compile; answering PARSE_ERROR");
        }
        Some((ErrorCode::General, reason)) => tracing::warn!(flag = key, reason, "flag could not be evaluated"),
        Some((ErrorCode::FlagNotFound, _)) | None => {}
    }
}

/// The caller-facing description of a failed evaluation.
pub(crate) fn error_details(key: &str, evaluation: &Evaluation<'_>) -> Option<(ErrorCode, String)> {
    let (code, _) = evaluation.error?;
    let detail = match code {
        ErrorCode::FlagNotFound => format!("Flag '{key}' was not found"),
        ErrorCode::ParseError => {
            format!("the stored configuration of flag '{key}' cannot be parsed; an administrator must correct it")
        }
        ErrorCode::General => match evaluation.rule_id {
            Some(rule) => format!("flag '{key}' could not be evaluated: its rule '{rule}' is misconfigured"),
            None => format!("flag '{key}' could not be evaluated"),
        },
    };
    Some((code, detail))
}
