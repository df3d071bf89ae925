//! Keel's own evaluation API: `GET /v1/flags?keys=a,b` and `POST /v1/flags/evaluate`.
//!
//! ```json
//! {"flags": {"<key>": {"value": "#00f", "value_type": "string", "enabled": true, "variant": "blue",
//!                      "payload": {"type": "string", "value": "#00f"}, "reason": "rule",
//!                      "open_feature_reason": "TARGETING_MATCH", "rule_id": "r1", "version": 3,
//!                      "error_code": null, "stale": false}},
//!  "snapshot": {"loaded_at": "2026-01-01T00:00:00.000Z", "stale": false}}
//! ```
//!
//! `value` is of the flag's `value_type` on every path (a boolean flag's on/off, else the served variant's payload:
//! the chosen variant, or the default variant when none was chosen); `enabled` says whether the flag is on for the
//! context; `variant` names the served variant, else `on` or `off`, and is null only for an error.
//!
//! Every requested key gets an answer: an unknown flag fails closed (`false`, reason `flag_not_found`, error code
//! `FLAG_NOT_FOUND`), and with no snapshot at all every requested flag fails closed with reason `error` and error
//! code `GENERAL`. A flag's `stale` is its snapshot's: the answer may be out of date because the store could not be
//! read.

use crate::context::{self, Dialect};
use crate::{FlagsEval, MAX_BODY_BYTES, MAX_KEYS, rfc3339};
use chrono::{DateTime, Utc};
use keel::http;
use keel::http::{RequestExt, Response};
use keel::problem::Problem;
use keel::route::Call;
use keel_flags::{self as flags, Context, ErrorCode, Evaluation, Payload, Reason};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One flag's answer on the wire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FlagAnswer)]
pub(crate) struct Answer<'s> {
    value: Value,
    value_type: &'static str,
    enabled: bool,
    variant: Option<&'s str>,
    payload: Option<&'s Payload>,
    reason: &'static str,
    open_feature_reason: &'static str,
    rule_id: Option<&'s str>,
    version: u64,
    error_code: Option<&'static str>,
    stale: bool,
}

impl<'s> Answer<'s> {
    fn from_evaluation(evaluation: &Evaluation<'s>, stale: bool) -> Self {
        let reason = evaluation.reason;
        Self {
            value: evaluation.typed_value().unwrap_or(Value::Bool(false)),
            value_type: evaluation.value_type.as_str(),
            enabled: evaluation.value,
            variant: evaluation.error.is_none().then(|| evaluation.served_name()),
            payload: evaluation.served_variant().and_then(|v| v.payload.as_ref()),
            reason: reason.as_str(),
            open_feature_reason: reason.open_feature(),
            rule_id: evaluation.rule_id,
            version: evaluation.version,
            error_code: evaluation.error.map(|(code, _)| code.as_str()),
            stale,
        }
    }

    /// No snapshot has ever loaded: off, as an error.
    fn unavailable() -> Self {
        Self {
            value: Value::Bool(false),
            value_type: keel_flags::ValueType::Boolean.as_str(),
            enabled: false,
            variant: None,
            payload: None,
            reason: Reason::Error.as_str(),
            open_feature_reason: Reason::Error.open_feature(),
            rule_id: None,
            version: 0,
            error_code: Some(ErrorCode::General.as_str()),
            stale: true,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SnapshotState {
    loaded_at: Option<String>,
    stale: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FlagAnswers)]
pub(crate) struct Answers<'s> {
    flags: BTreeMap<String, Answer<'s>>,
    snapshot: SnapshotState,
}

/// `GET /v1/flags?keys=a,b,c`: those flags, or every live flag without `keys`. Only `keys` is accepted: the
/// organization, user and environment never come from the query.
pub(crate) async fn get(eval: &FlagsEval, call: &Call) -> Result<Response, Problem> {
    let query = call.request.query_string_parameters();
    if let Some((name, _)) = query.iter().find(|(name, _)| *name != "keys") {
        return Err(Problem::unprocessable(
            "invalid_parameter",
            format!("unknown parameter `{name}`: the only parameter is `keys` (the organization, user and environment come from the token and the deployment)"),
        )
        .at(name));
    }
    let keys = match query.all("keys") {
        None => None,
        Some(values) => {
            let keys: Vec<String> = values
                .iter()
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(str::to_string)
                .collect();
            check_keys(&keys, "keys")?;
            // `keys=` with nothing in it names no flag: all of them, as without the parameter.
            (!keys.is_empty()).then_some(keys)
        }
    };
    let context = context::build(call.identity()?, eval.environment(), None, Dialect::Keel).map_err(invalid)?;
    Ok(answer(eval, eval.now(), keys, &context).await)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvaluateBody {
    /// The flags to evaluate; every live flag when absent.
    keys: Option<Vec<String>>,
    /// Extra attributes: strings, numbers or booleans.
    context: Option<Map<String, Value>>,
}

/// `POST /v1/flags/evaluate` with `{"keys": [..], "context": {..}}` (both optional; an empty body evaluates every
/// flag with no extra attributes).
pub(crate) async fn evaluate(eval: &FlagsEval, call: &Call) -> Result<Response, Problem> {
    let raw = http::raw_body(&call.request);
    if raw.len() > MAX_BODY_BYTES {
        return Err(Problem::new(413, "payload_too_large", format!("the body holds at most {MAX_BODY_BYTES} bytes")));
    }
    let body: EvaluateBody = if raw.iter().all(u8::is_ascii_whitespace) {
        EvaluateBody::default()
    } else {
        let invalid = |e: serde_json::Error| Problem::unprocessable("invalid_body", format!("invalid JSON body: {e}"));
        match serde_json::from_slice(raw).map_err(invalid)? {
            object @ Value::Object(_) => serde_json::from_value(object).map_err(invalid)?,
            _ => return Err(Problem::unprocessable("invalid_body", "the body must be a JSON object")),
        }
    };
    if let Some(keys) = &body.keys {
        check_keys(keys, "/keys")?;
    }
    let context =
        context::build(call.identity()?, eval.environment(), body.context.as_ref(), Dialect::Keel).map_err(invalid)?;
    Ok(answer(eval, eval.now(), body.keys, &context).await)
}

fn invalid(error: context::Invalid) -> Problem {
    Problem::unprocessable("invalid_context", error.message).at(error.pointer)
}

/// At most `MAX_KEYS` keys, each 1 to `MAX_KEY_LEN` bytes. `at` locates the list: a query parameter's name, or a
/// JSON pointer whose entries are located by index.
fn check_keys(keys: &[String], at: &str) -> Result<(), Problem> {
    if keys.len() > MAX_KEYS {
        return Err(Problem::unprocessable(
            "too_many_keys",
            format!("at most {MAX_KEYS} flag keys per request, not {}", keys.len()),
        )
        .at(at));
    }
    if let Some(i) = keys.iter().position(|key| key.is_empty() || key.len() > flags::MAX_KEY_LEN) {
        let pointer = if at.starts_with('/') { format!("{at}/{i}") } else { at.to_string() };
        return Err(Problem::unprocessable("invalid_key", format!("a flag key has 1 to {} bytes", flags::MAX_KEY_LEN))
            .at(pointer));
    }
    Ok(())
}

async fn answer(eval: &FlagsEval, now: DateTime<Utc>, keys: Option<Vec<String>>, context: &Context) -> Response {
    let served = eval.served().await;
    let stale = served.stale || served.snapshot.is_none();
    let mut flags = BTreeMap::new();
    match served.snapshot.as_deref() {
        None => {
            for key in keys.unwrap_or_default() {
                flags.insert(key, Answer::unavailable());
            }
        }
        Some(snapshot) => {
            let keys = keys.unwrap_or_else(|| snapshot.keys().into_iter().map(str::to_string).collect());
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                let evaluation = snapshot.evaluate(&key, context, now);
                crate::log_failure(&key, &evaluation);
                if !matches!(evaluation.error, Some((ErrorCode::FlagNotFound, _))) {
                    found.push(key.clone());
                }
                flags.insert(key, Answer::from_evaluation(&evaluation, stale));
            }
            eval.note(found.iter().map(String::as_str));
        }
    }
    let snapshot = SnapshotState { loaded_at: served.loaded_at.map(rfc3339), stale };
    http::json(200, &Answers { flags, snapshot })
}
