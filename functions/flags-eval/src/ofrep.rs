//! The OpenFeature Remote Evaluation Protocol, as its OpenAPI document (0.3.0) specifies:
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}`: 200 `{key, reason, variant?, value, metadata}`; 404
//!   `{key, errorCode: FLAG_NOT_FOUND, errorDetails}`; 400 `{key, errorCode, errorDetails}` for an invalid context
//!   (`INVALID_CONTEXT`) or a flag that cannot be evaluated (`PARSE_ERROR`, `GENERAL`).
//! - `POST /ofrep/v1/evaluate/flags`: 200 `{flags: [..]}`, one entry per live flag (a success, or a failure entry
//!   for a flag that cannot be evaluated), with a strong `ETag`; `If-None-Match` naming it → 304 without a body;
//!   400 `{errorCode: INVALID_CONTEXT, errorDetails}` for an invalid context.
//! - Before any snapshot has loaded, both answer 500 `{errorDetails}` (the document's general error): the SDKs then
//!   serve the code's defaults with reason ERROR, and a client-side provider keeps no empty flag set.
//!
//! The value is of the flag's `value_type` on every path: a boolean flag's on/off, else the served variant's
//! payload (the chosen variant, or the flag's default variant when none was chosen). Every success names a
//! variant: the served one, else `on` or `off` (as flagd does), since some providers (Python's) refuse a success
//! without one. `reason` is OpenFeature's, limited to the document's list (Keel's `default` is `UNKNOWN` there);
//! `metadata` carries `enabled` (whether the flag is on for the context, Unleash's `isEnabled`), `keelReason`,
//! `ruleId`, `flagVersion`, and `stale` with `snapshotLoadedAt` when the snapshot may be out of date.

use crate::context::{self, Dialect};
use crate::{FlagsEval, MAX_BODY_BYTES, error_details, log_failure, rfc3339};
use chrono::{DateTime, Utc};
use keel::http::header::{CACHE_CONTROL, ETAG};
use keel::http::{self as kh, HeaderValue, Request, Response};
use keel::identity::Identity;
use keel::problem::Problem;
use keel::route::Call;
use keel_flags::store::Served;
use keel_flags::{Context, ErrorCode, Evaluation, Reason, Snapshot};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

const INVALID_CONTEXT: &str = "INVALID_CONTEXT";

/// The document's metadata: string, number and boolean values only.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepMetadata)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata<'s> {
    enabled: bool,
    keel_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_id: Option<&'s str>,
    flag_version: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_loaded_at: Option<String>,
}

/// `evaluationSuccess`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepEvaluationSuccess)]
pub(crate) struct Success<'s> {
    key: &'s str,
    reason: &'static str,
    variant: &'s str,
    value: Value,
    metadata: Metadata<'s>,
}

/// `evaluationFailure` and `flagNotFound`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepEvaluationFailure)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Failure<'s> {
    key: &'s str,
    error_code: &'static str,
    error_details: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'s>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepBulkEntry)]
#[serde(untagged)]
pub(crate) enum Entry<'s> {
    Success(Success<'s>),
    Failure(Failure<'s>),
}

/// `bulkEvaluationSuccess`: the document's `metadata` for the flag set says when it may be out of date.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepBulkEvaluationSuccess)]
pub(crate) struct Bulk<'s> {
    flags: Vec<Entry<'s>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<SetMetadata>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepFlagSetMetadata)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SetMetadata {
    stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_loaded_at: Option<String>,
}

/// `bulkEvaluationFailure`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepBulkEvaluationFailure)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BulkFailure {
    error_code: &'static str,
    error_details: String,
}

/// `generalErrorResponse`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OfrepGeneralError)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeneralError {
    error_details: &'static str,
}

/// `evaluationRequest` and `bulkEvaluationRequest`, as [`context_member`] reads them.
#[derive(utoipa::ToSchema)]
#[schema(as = OfrepEvaluationRequest)]
pub(crate) struct EvaluationRequest {
    /// Attributes of the evaluation context (strings, numbers, booleans). The organization, user and environment
    /// come from the token and the deployment, never from here.
    #[allow(dead_code)]
    context: Option<Map<String, Value>>,
}

/// The context of an `evaluationRequest` / `bulkEvaluationRequest`: a JSON object whose `context` is an object.
/// The document requires `context`; a request without it (or without a body) is evaluated with the token's
/// identity alone, which is all Keel needs. Other members are ignored.
fn context_member(raw: &[u8]) -> Result<Option<Map<String, Value>>, String> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: Value = serde_json::from_slice(raw).map_err(|e| format!("the request body is not valid JSON: {e}"))?;
    let Value::Object(mut body) = body else { return Err("the request body must be a JSON object".into()) };
    match body.remove("context") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(context)) => Ok(Some(context)),
        Some(_) => Err("`context` must be a JSON object (at /context)".into()),
    }
}

/// Keel's answer as OpenFeature's reason, within the document's list (STATIC, TARGETING_MATCH, SPLIT, DISABLED,
/// UNKNOWN). The list has no DEFAULT: "no targeting decided, the flag's default" is UNKNOWN there, with Keel's
/// `default` in the metadata. Errors are failure entries, never a success's reason.
fn ofrep_reason(reason: Reason) -> &'static str {
    match reason {
        Reason::Static => "STATIC",
        Reason::Override | Reason::Blocked | Reason::TargetUser | Reason::AllowList | Reason::Rule => "TARGETING_MATCH",
        Reason::Rollout => "SPLIT",
        Reason::Killed | Reason::EnvironmentOff | Reason::PrerequisiteFailed => "DISABLED",
        Reason::Default | Reason::Error | Reason::FlagNotFound => "UNKNOWN",
    }
}

fn metadata<'s>(reason: Reason, evaluation: &Evaluation<'s>, served: &Served) -> Metadata<'s> {
    Metadata {
        enabled: evaluation.value,
        keel_reason: reason.as_str(),
        rule_id: evaluation.rule_id,
        flag_version: evaluation.version,
        stale: served.stale,
        snapshot_loaded_at: served.stale.then(|| served.loaded_at.map(rfc3339)).flatten(),
    }
}

/// One flag's OFREP entry.
fn entry<'s>(key: &'s str, evaluation: &Evaluation<'s>, served: &Served) -> Entry<'s> {
    let reason = evaluation.reason;
    let metadata = metadata(reason, evaluation, served);
    if let Some((code, details)) = error_details(key, evaluation) {
        log_failure(key, evaluation);
        return Entry::Failure(Failure {
            key,
            error_code: code.as_str(),
            error_details: details,
            metadata: Some(metadata),
        });
    }
    match evaluation.typed_value() {
        Some(value) => Entry::Success(Success {
            key,
            reason: ofrep_reason(reason),
            variant: evaluation.served_name(),
            value,
            metadata,
        }),
        None => {
            // Not reached by a flag that compiled (writes and snapshots check payloads alike); should it be, an
            // error beats a value of the wrong type.
            let details = format!("flag '{key}' has no value of its type for this answer");
            tracing::warn!(flag = key, details, "flag value cannot be served over OFREP; answering PARSE_ERROR");
            Entry::Failure(Failure {
                key,
                error_code: ErrorCode::ParseError.as_str(),
                error_details: details,
                metadata: Some(metadata),
            })
        }
    }
}

/// The request's context, or why it is not acceptable (the document's INVALID_CONTEXT).
fn request_context(eval: &FlagsEval, identity: &Identity, request: &Request) -> Result<Context, String> {
    let raw = kh::raw_body(request);
    if raw.len() > MAX_BODY_BYTES {
        return Err(format!("the request body holds at most {MAX_BODY_BYTES} bytes"));
    }
    let extra = context_member(raw)?;
    context::build(identity, eval.environment(), extra.as_ref(), Dialect::Ofrep)
        .map_err(|invalid| format!("{} (at {})", invalid.message, invalid.pointer))
}

fn general_error() -> Response {
    let mut response = kh::json(
        500,
        &GeneralError {
            error_details: "no flag configuration has been loaded yet (the flag store has been unreachable since \
                            this instance started); use the code default",
        },
    );
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub(crate) async fn single(eval: &FlagsEval, call: &Call) -> Result<Response, Problem> {
    let (identity, now) = (call.identity()?, eval.now());
    let key = kh::path_param(&call.request, "key").ok_or_else(|| Problem::not_found("no such operation"))?;
    let context = match request_context(eval, identity, &call.request) {
        Ok(context) => context,
        Err(details) => {
            let failure = Failure { key, error_code: INVALID_CONTEXT, error_details: details, metadata: None };
            return Ok(kh::json(400, &failure));
        }
    };
    let served = eval.served().await;
    let Some(snapshot) = served.snapshot.as_deref() else { return Ok(general_error()) };
    let evaluation = snapshot.evaluate(key, &context, now);
    let entry = entry(key, &evaluation, &served);
    let status = match &entry {
        Entry::Success(_) => 200,
        Entry::Failure(failure) if failure.error_code == ErrorCode::FlagNotFound.as_str() => 404,
        Entry::Failure(_) => 400,
    };
    if status != 404 {
        eval.note([key]);
    }
    Ok(kh::json(status, &entry))
}

/// `POST /ofrep/v1/evaluate/flags`: every live flag, with an ETag over the body.
pub(crate) async fn bulk(eval: &FlagsEval, call: &Call) -> Result<Response, Problem> {
    let (identity, now) = (call.identity()?, eval.now());
    let context = match request_context(eval, identity, &call.request) {
        Ok(context) => context,
        Err(details) => return Ok(kh::json(400, &BulkFailure { error_code: INVALID_CONTEXT, error_details: details })),
    };
    let served = eval.served().await;
    let Some(snapshot) = served.snapshot.as_deref() else { return Ok(general_error()) };
    let keys = snapshot.keys();
    let body = bulk_body(snapshot, &keys, &context, now, &served)
        .map_err(|_| Problem::new(500, "internal", "the response could not be encoded"))?;
    eval.note(keys.iter().copied());

    let etag = etag(body.as_bytes());
    let not_modified = kh::header(&call.request, "if-none-match").is_some_and(|header| matches(header, &etag));
    let mut response = if not_modified { kh::empty(304) } else { kh::response(200, "application/json", body) };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(ETAG, value);
    }
    // Per caller: no shared cache may keep it; the client revalidates with the ETag.
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    Ok(response)
}

fn bulk_body(
    snapshot: &Snapshot,
    keys: &[&str],
    context: &Context,
    now: DateTime<Utc>,
    served: &Served,
) -> Result<String, serde_json::Error> {
    let flags = keys.iter().map(|key| entry(key, &snapshot.evaluate(key, context, now), served)).collect();
    let metadata = served.stale.then(|| SetMetadata { stale: true, snapshot_loaded_at: served.loaded_at.map(rfc3339) });
    serde_json::to_string(&Bulk { flags, metadata })
}

/// A strong validator: the first 128 bits of the body's SHA-256, hex, quoted.
fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// `If-None-Match` (a list of entity tags, weak comparison as RFC 9110 prescribes for it); an unquoted tag is
/// accepted too, as some clients strip the quotes.
fn matches(header: &str, etag: &str) -> bool {
    let opaque = etag.trim_matches('"');
    header.split(',').map(str::trim).any(|tag| tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"') == opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists() {
        let tag = "\"abc\"";
        assert!(matches("\"abc\"", tag));
        assert!(matches("W/\"abc\"", tag));
        assert!(matches("\"x\", \"abc\"", tag));
        assert!(matches("abc", tag));
        assert!(!matches("\"abd\"", tag));
        assert!(!matches("*", tag));
        assert_eq!(etag(b"{}").len(), 34);
        assert_ne!(etag(b"{}"), etag(b"{ }"));
    }

    #[test]
    fn reasons_stay_inside_the_documents_list() {
        let allowed = ["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"];
        for reason in [
            Reason::FlagNotFound,
            Reason::Error,
            Reason::Killed,
            Reason::EnvironmentOff,
            Reason::PrerequisiteFailed,
            Reason::Override,
            Reason::Blocked,
            Reason::TargetUser,
            Reason::AllowList,
            Reason::Rule,
            Reason::Rollout,
            Reason::Default,
            Reason::Static,
        ] {
            let mapped = ofrep_reason(reason);
            assert!(allowed.contains(&mapped), "{reason:?} → {mapped}");
            if mapped != "UNKNOWN" {
                assert_eq!(mapped, reason.open_feature());
            }
        }
    }
}
