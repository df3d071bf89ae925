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

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use keel::config::{ConfigError, Env};
use keel::openapi::{Content, Doc, Param, Reply, inline, schema};
use keel::ratelimit::{Counting, Quota, RateLimits};
use keel::resources::Resources;
use keel::route::{Access, Api, Route};
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
    rate_limits: RateLimits,
}

/// Evaluation's own defaults, above the seed systems' 1,000 an hour (an SDK polling bulk OFREP every 30 s from 10
/// servers is 1,200 an hour): 100,000 an hour per organization and 10,000 per 15 minutes per address, counted in
/// each instance's memory so evaluation never waits on a backend.
pub const EVALUATION_ORG_DEFAULT: Quota = Quota { requests: 100_000, window_seconds: 3600 };
pub const EVALUATION_IP_DEFAULT: Quota = Quota { requests: 10_000, window_seconds: 900 };

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
    let limits = (Some(EVALUATION_ORG_DEFAULT), Some(EVALUATION_IP_DEFAULT));
    let rate_limits = RateLimits::from_env(env, limits, Counting::Local, resources.clock())?;
    Ok(FlagsEval { cache, environment, rate_limits })
}

impl Api for FlagsEval {
    fn rate_limits(&self) -> Option<&RateLimits> {
        Some(&self.rate_limits)
    }

    const ROUTES: &'static [Route<Self>] = &[
        Route::get("/v1/flags", Access::Member, GET, |eval, call| Box::pin(keel_api::get(eval, call))),
        // Evaluations are POSTs with a body (OFREP's, and Keel's for a context): they only read.
        Route::post("/v1/flags/evaluate", Access::Member, EVALUATE, |eval, call| {
            Box::pin(keel_api::evaluate(eval, call))
        })
        .read_only(),
        Route::post("/ofrep/v1/evaluate/flags/{key}", Access::Member, OFREP_SINGLE, |eval, call| {
            Box::pin(ofrep::single(eval, call))
        })
        .read_only(),
        Route::post("/ofrep/v1/evaluate/flags", Access::Member, OFREP_BULK, |eval, call| {
            Box::pin(ofrep::bulk(eval, call))
        })
        .read_only(),
    ];
}

const TOO_LARGE: Reply = Reply::problem(413, "The body is over 64 KiB.");
const NOT_LOADED: &str = "No flag configuration has loaded since this instance started: use the code's defaults.";

const GET: Doc = Doc {
    summary: "Evaluate flags for the caller",
    description: "The caller's organization and user come from the token, the environment from the deployment.",
    params: &[Param::query(
        "keys",
        "Comma-separated flag keys (at most 100); every live flag when absent.",
        inline::<String>,
    )],
    replies: &[
        Reply::json(200, "Every requested flag's answer, and the snapshot's age.", schema::<keel_api::Answers>),
        Reply::problem(422, "An unknown query parameter, or an invalid key (`pointer` names it)."),
    ],
    ..Doc::NONE
};
const EVALUATE: Doc = Doc {
    summary: "Evaluate flags for the caller with extra attributes",
    body: Some(Content::Json(schema::<keel_api::EvaluateBody>)),
    body_optional: true,
    replies: &[
        Reply::json(200, "Every requested flag's answer, and the snapshot's age.", schema::<keel_api::Answers>),
        TOO_LARGE,
        Reply::problem(422, "The body or its context is invalid (`pointer` says where)."),
    ],
    ..Doc::NONE
};
const OFREP_SINGLE: Doc = Doc {
    summary: "OFREP: evaluate one flag",
    description: "The OpenFeature Remote Evaluation Protocol's single evaluation.",
    params: &[Param::path("key", "The flag's key.")],
    body: Some(Content::Json(schema::<ofrep::EvaluationRequest>)),
    body_optional: true,
    replies: &[
        Reply::json(200, "The flag's value, variant and reason.", schema::<ofrep::Success>),
        Reply::json(400, "The context is invalid, or the flag cannot be evaluated.", schema::<ofrep::Failure>),
        Reply::json(404, "No live flag has this key (`FLAG_NOT_FOUND`).", schema::<ofrep::Failure>),
        Reply::json(500, NOT_LOADED, schema::<ofrep::GeneralError>),
    ],
};
const OFREP_BULK: Doc = Doc {
    summary: "OFREP: evaluate every flag",
    description: "The OpenFeature Remote Evaluation Protocol's bulk evaluation, with a strong `ETag`.",
    params: &[Param::header("If-None-Match", "The `ETag` of an earlier answer: 304 while it still holds.")],
    body: Some(Content::Json(schema::<ofrep::EvaluationRequest>)),
    body_optional: true,
    replies: &[
        Reply::json(200, "Every live flag's evaluation.", schema::<ofrep::Bulk>),
        Reply::empty(304, "The answer `If-None-Match` names still holds."),
        Reply::json(400, "The context is invalid.", schema::<ofrep::BulkFailure>),
        Reply::json(500, NOT_LOADED, schema::<ofrep::GeneralError>),
    ],
};

impl FlagsEval {
    pub(crate) fn now(&self) -> DateTime<Utc> {
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
