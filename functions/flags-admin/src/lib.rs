//! The feature-flag admin API (role `platform-admin`): list, create, read and replace flags (optimistic
//! concurrency with `ETag`/`If-Match`), add and reorder rules, set and clear per-organization overrides, archive,
//! import Unleash documents, explain an evaluation, the audit trail, and segments.
//!
//! Every change goes through [`FlagStore`], which validates the whole flag among all flags and writes the change,
//! its audit entry (who, when, action, before, after) and a new revision in one transaction: bad input is a 422 that
//! locates the offending field and nothing is written.
//!
//! Decisions worth knowing:
//! - `ETag` is the flag's (or segment's) version as a strong entity tag, `"3"`. `If-Match` takes exactly one such
//!   tag (anything else is 400); it is required on `PUT /v1/admin/flags/{key}` (428 without) and honoured when
//!   given on every other change. A stale tag is 412 with the current version in `detail`.
//! - 422 problems carry `pointer` (the first problem) and `errors: [{pointer, message}]` (all of them). Pointers
//!   locate the field in the request body: for the rule and override routes, a problem inside the submitted rule or
//!   override points into that body (`/constraints/0/operator`), anything else into the flag (`/variants`). A
//!   query parameter is named bare (`limit`, `position`). Import problems point into the Unleash document
//!   (`/features/0/strategies/1/name`) or, for a converted flag, at `/flags/{i}/...` of the converted flags (the
//!   same index as the feature).
//! - Imports are lenient unless `?mode=strict`: every flag that can be stored is, with its warnings on it, and the
//!   answer is a report (200) whose `refused` lists the flags that could not be. Strict refuses the document with
//!   422 when there is any warning. `?dry_run=true` answers the same report and writes nothing.
//! - A flag is stale when it is not permanent, not archived, and either past its `lifecycle.stale_after`
//!   (`stale_reason: "past_stale_after"`) or not evaluated for [`UNUSED_DAYS`] days (`"not_evaluated"`): its last
//!   evaluation (as flushed by the evaluation caches) or, never evaluated, its last change is that old.
//! - Changes without `If-Match` are re-read and re-applied when a concurrent writer got there first, so
//!   independent changes (overrides for different organizations) all land; one that keeps losing answers 409
//!   `concurrent_update` (retry), never 412, since the client set no precondition.
//! - Adding a rule answers 201; setting an override 201 when the organization had none, 200 when it replaced one;
//!   creating a segment 201, replacing it 200. Every answer that carries a flag or segment carries its `ETag`.
//! - Explain loads a fresh snapshot from the store (no cache). An archived flag is explained as evaluation sees it
//!   (not found, fails closed); a flag that never existed is 404.
//! - Overrides on a missing flag answer 422 `unknown_flag` at `/key` (the path names a flag that does not exist);
//!   every other route answers 404 for a missing flag.
//! - Archiving is refused (409) while a live flag lists the flag as a prerequisite. The check reads all flags
//!   just before the write, so a prerequisite added in the same instant can slip past it; evaluation then treats
//!   the archived prerequisite as missing, which fails closed.

use chrono::{DateTime, Duration, Utc};
use keel::config::{ConfigError, Env};
use keel::http::{self, HeaderValue, Request, Response};
use keel::idempotency::Idempotency;
use keel::openapi::{Content, Doc, Param, Reply, inline, schema};
use keel::problem::{FieldError, Problem};
use keel::ratelimit::RateLimits;
use keel::resources::Resources;
use keel::route::{Access, Api, Call, Route};
use keel_flags::store::{AuditEntry, FlagStore, ImportMode, ImportReport, StoreError, flag_subject};
use keel_flags::{Context, FlagType, Invalid, Override, OverrideAction, Rule, Segment, unleash};
use keel_flags::{ErrorCode, Flag, Reason, Step, ValueType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use ulid::Ulid;

pub const TABLE_VAR: &str = "FLAGS_TABLE";
/// Largest request body, except an import.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest import body (an Unleash document).
pub const MAX_IMPORT_BYTES: usize = 1024 * 1024;
/// Page size cap of the flag list and the audit trail.
pub const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 50;
/// A flag not evaluated for this many days is reported stale.
pub const UNUSED_DAYS: i64 = 30;

pub struct FlagsAdmin {
    store: FlagStore,
    suppressions: keel::suppression::Suppressions,
    idempotency: Idempotency,
    rate_limits: RateLimits,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<FlagsAdmin, ConfigError> {
    Ok(FlagsAdmin {
        store: FlagStore::new(resources.table(TABLE_VAR)?, resources.clock()),
        suppressions: keel::suppression::Suppressions::from_env(env, resources)?,
        idempotency: Idempotency::from_resources(resources)?,
        rate_limits: RateLimits::shared(env, resources)?,
    })
}

impl Api for FlagsAdmin {
    fn idempotency(&self) -> Option<&Idempotency> {
        Some(&self.idempotency)
    }

    fn rate_limits(&self) -> Option<&RateLimits> {
        Some(&self.rate_limits)
    }

    const ROUTES: &'static [Route<Self>] = &[
        Route::get("/v1/admin/flags", Access::PlatformAdmin, LIST, |admin, call| Box::pin(admin.list(&call.request))),
        Route::post("/v1/admin/flags", Access::PlatformAdmin, CREATE, |admin, call| Box::pin(admin.create(call))),
        Route::post("/v1/admin/flags/import", Access::PlatformAdmin, IMPORT, |admin, call| {
            Box::pin(admin.import(call))
        }),
        Route::get("/v1/admin/flags/{key}", Access::PlatformAdmin, SHOW, |admin, call| {
            Box::pin(admin.show(&call.request))
        }),
        Route::put("/v1/admin/flags/{key}", Access::PlatformAdmin, REPLACE, |admin, call| {
            Box::pin(admin.replace(call))
        }),
        Route::post("/v1/admin/flags/{key}/rules", Access::PlatformAdmin, ADD_RULE, |admin, call| {
            Box::pin(admin.add_rule(call))
        }),
        Route::put("/v1/admin/flags/{key}/rules/order", Access::PlatformAdmin, REORDER_RULES, |admin, call| {
            Box::pin(admin.reorder_rules(call))
        }),
        Route::put("/v1/admin/flags/{key}/overrides/{orgId}", Access::PlatformAdmin, SET_OVERRIDE, |admin, call| {
            Box::pin(admin.set_override(call))
        }),
        Route::delete(
            "/v1/admin/flags/{key}/overrides/{orgId}",
            Access::PlatformAdmin,
            CLEAR_OVERRIDE,
            |admin, call| Box::pin(admin.clear_override(call)),
        ),
        Route::post("/v1/admin/flags/{key}/archive", Access::PlatformAdmin, ARCHIVE, |admin, call| {
            Box::pin(admin.archive(call))
        }),
        // Explaining only reads.
        Route::<Self>::post("/v1/admin/flags/{key}/explain", Access::PlatformAdmin, EXPLAIN, |admin, call| {
            Box::pin(admin.explain(&call.request))
        })
        .read_only(),
        Route::get("/v1/admin/flags/{key}/audit", Access::PlatformAdmin, FLAG_AUDIT, |admin, call| {
            Box::pin(admin.audit(&call.request, true))
        }),
        Route::get("/v1/admin/flag-audit", Access::PlatformAdmin, AUDIT, |admin, call| {
            Box::pin(admin.audit(&call.request, false))
        }),
        Route::get("/v1/admin/segments", Access::PlatformAdmin, SEGMENTS, |admin, _| Box::pin(admin.segments())),
        Route::put("/v1/admin/segments/{name}", Access::PlatformAdmin, PUT_SEGMENT, |admin, call| {
            Box::pin(admin.put_segment(call))
        }),
    ];
}

// ------------------------------------------------------------------------------------------------------------------
// The OpenAPI document of each route
// ------------------------------------------------------------------------------------------------------------------

const KEY: Param = Param::path("key", "The flag's key.");
const IF_MATCH: Param = Param::header("If-Match", "The version the change applies to, as `ETag` gave it (`\"3\"`).");
const LIMIT: Param = Param::query("limit", "Page size, 1 to 100 (50 when absent).", inline::<u32>);
const CURSOR: Param = Param::query("cursor", "`next_cursor` of the previous page.", inline::<String>);
const FLAG_OUT: &str = "The flag, with its version as `ETag`.";
const NO_FLAG: Reply = Reply::problem(404, "No flag has this key.");
const BAD_BODY: Reply = Reply::problem(400, "The body is missing or not JSON, or `If-Match` is not one entity tag.");
const TOO_LARGE: Reply = Reply::problem(413, "The body is over 256 KiB.");
const INVALID: Reply = Reply::problem(422, "The change is invalid: `errors` lists each problem with its pointer.");
const STALE: Reply = Reply::problem(412, "`If-Match` names another version than the current one.");
const CONFLICT: Reply = Reply::problem(409, "The flag kept changing while the change was applied; retry.");
/// A write that names users: an erased one is refused.
const CONFLICT_OR_ERASED: Reply = Reply::problem(
    409,
    "The flag kept changing while the change was applied (retry); or, `erased_user`, it names an erased user.",
);
const BAD_PARAM: Reply = Reply::problem(422, "A query parameter is invalid (`pointer` names it).");

const LIST: Doc = Doc {
    summary: "List flags",
    description: "Flags in key order, each with whether it is stale and when it was last evaluated.",
    params: &[
        Param::query("archived", "Archived flags instead of live ones.", inline::<bool>),
        Param::query("type", "Only flags of this lifecycle type.", schema::<FlagType>),
        Param::query("stale", "Only stale (true) or only fresh (false) flags.", inline::<bool>),
        Param::query("prefix", "Only keys starting with this.", inline::<String>),
        LIMIT,
        CURSOR,
    ],
    replies: &[Reply::json(200, "A page of flags.", schema::<FlagPage>), BAD_PARAM],
    ..Doc::NONE
};
const CREATE: Doc = Doc {
    summary: "Create a flag",
    body: Some(Content::Json(schema::<Flag>)),
    replies: &[
        Reply::json(201, "The flag as stored (version 1), with `ETag` and `Location`.", schema::<Flag>),
        Reply::problem(
            409,
            "A flag with this key exists (it may be archived), or (`erased_user`) it names an erased user.",
        ),
        BAD_BODY,
        TOO_LARGE,
        INVALID,
    ],
    ..Doc::NONE
};
const IMPORT: Doc = Doc {
    summary: "Import an Unleash document",
    description: "An Unleash client features document (`features`, `segments`) or an export of events. Lenient by \
        default: every flag that can be stored is, with warnings on it; strict refuses the whole document.",
    params: &[
        Param::query("mode", "`lenient` (the default) or `strict`.", schema::<ImportMode>),
        Param::query("dry_run", "Answer the report and write nothing.", inline::<bool>),
    ],
    body: Some(Content::Json(inline::<Value>)),
    replies: &[
        Reply::json(
            200,
            "What was (or would be) created, updated, left unchanged and refused.",
            schema::<ImportReport>,
        ),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(413, "The body is over 1 MiB."),
        Reply::problem(422, "The document is not an Unleash document, or strict mode refused it."),
    ],
    ..Doc::NONE
};
const SHOW: Doc = Doc {
    summary: "Read a flag",
    params: &[KEY],
    replies: &[Reply::json(200, FLAG_OUT, schema::<Flag>), NO_FLAG],
    ..Doc::NONE
};
const REPLACE: Doc = Doc {
    summary: "Replace a flag",
    params: &[KEY, IF_MATCH],
    body: Some(Content::Json(schema::<Flag>)),
    replies: &[
        Reply::json(200, FLAG_OUT, schema::<Flag>),
        Reply::problem(428, "`If-Match` is required."),
        NO_FLAG,
        BAD_BODY,
        TOO_LARGE,
        INVALID,
        STALE,
        Reply::problem(409, "`erased_user`: the flag names an erased user."),
    ],
    ..Doc::NONE
};
const ADD_RULE: Doc = Doc {
    summary: "Add a rule to a flag",
    params: &[
        KEY,
        IF_MATCH,
        Param::query("position", "The 0-based index the rule takes (last when absent).", inline::<u32>),
    ],
    body: Some(Content::Json(schema::<Rule>)),
    replies: &[
        Reply::json(201, FLAG_OUT, schema::<Flag>),
        NO_FLAG,
        BAD_BODY,
        TOO_LARGE,
        INVALID,
        STALE,
        CONFLICT_OR_ERASED,
    ],
    ..Doc::NONE
};
const REORDER_RULES: Doc = Doc {
    summary: "Reorder a flag's rules",
    params: &[KEY, IF_MATCH],
    body: Some(Content::Json(schema::<RuleOrder>)),
    replies: &[Reply::json(200, FLAG_OUT, schema::<Flag>), NO_FLAG, BAD_BODY, TOO_LARGE, INVALID, STALE, CONFLICT],
    ..Doc::NONE
};
const SET_OVERRIDE: Doc = Doc {
    summary: "Set an organization's override",
    params: &[KEY, Param::path("orgId", "The organization."), IF_MATCH],
    body: Some(Content::Json(schema::<OverrideBody>)),
    replies: &[
        Reply::json(200, "The override replaced the organization's previous one.", schema::<Flag>),
        Reply::json(201, "The organization had no override.", schema::<Flag>),
        BAD_BODY,
        TOO_LARGE,
        Reply::problem(422, "The override is invalid, or no flag has this key (`unknown_flag`)."),
        STALE,
        CONFLICT,
    ],
    ..Doc::NONE
};
const CLEAR_OVERRIDE: Doc = Doc {
    summary: "Clear an organization's override",
    params: &[KEY, Param::path("orgId", "The organization."), IF_MATCH],
    replies: &[
        Reply::json(200, FLAG_OUT, schema::<Flag>),
        Reply::problem(404, "The organization has no override on this flag."),
        Reply::problem(400, "`If-Match` is not one entity tag."),
        Reply::problem(422, "No flag has this key (`unknown_flag`)."),
        STALE,
        CONFLICT,
    ],
    ..Doc::NONE
};
const ARCHIVE: Doc = Doc {
    summary: "Archive a flag",
    params: &[KEY, IF_MATCH],
    replies: &[
        Reply::json(200, "The archived flag (archiving an archived flag changes nothing).", schema::<Flag>),
        NO_FLAG,
        Reply::problem(400, "`If-Match` is not one entity tag."),
        Reply::problem(409, "Live flags list this flag as a prerequisite, or it kept changing; retry."),
        STALE,
    ],
    ..Doc::NONE
};
const EXPLAIN: Doc = Doc {
    summary: "Explain an evaluation",
    description: "Evaluates the flag for a context, as evaluation would from a fresh snapshot, step by step.",
    params: &[KEY],
    body: Some(Content::Json(schema::<ExplainBody>)),
    body_optional: true,
    replies: &[
        Reply::json(200, "The answer and every step that led to it.", schema::<Explanation>),
        NO_FLAG,
        Reply::problem(400, "The body is not JSON."),
        TOO_LARGE,
        INVALID,
    ],
};
const FLAG_AUDIT: Doc = Doc {
    summary: "A flag's audit trail",
    params: &[KEY, LIMIT, CURSOR],
    replies: &[Reply::json(200, "Changes of the flag, oldest first.", schema::<AuditPage>), NO_FLAG, BAD_PARAM],
    ..Doc::NONE
};
const AUDIT: Doc = Doc {
    summary: "The audit trail of every flag and segment",
    params: &[LIMIT, CURSOR],
    replies: &[Reply::json(200, "Changes, oldest first.", schema::<AuditPage>), BAD_PARAM],
    ..Doc::NONE
};
const SEGMENTS: Doc = Doc {
    summary: "List segments",
    replies: &[Reply::json(200, "Every segment.", schema::<SegmentList>)],
    ..Doc::NONE
};
const PUT_SEGMENT: Doc = Doc {
    summary: "Create or replace a segment",
    params: &[Param::path("name", "The segment's name."), IF_MATCH],
    body: Some(Content::Json(schema::<Segment>)),
    replies: &[
        Reply::json(200, "The segment replaced, with its version as `ETag`.", schema::<Segment>),
        Reply::json(201, "The segment created (version 1).", schema::<Segment>),
        BAD_BODY,
        TOO_LARGE,
        INVALID,
        Reply::problem(
            409,
            "The segment was created concurrently (retry), or (`erased_user`) it names an erased user.",
        ),
        STALE,
    ],
    ..Doc::NONE
};

// ------------------------------------------------------------------------------------------------------------------
// Requests: bodies, parameters, If-Match, cursors
// ------------------------------------------------------------------------------------------------------------------

fn parse_body<T: DeserializeOwned>(request: &Request) -> Result<T, Problem> {
    http::from_json(http::body_value(request, MAX_BODY_BYTES)?, "invalid_body")
}

fn field_error(pointer: &str, message: impl Into<String>) -> FieldError {
    FieldError { pointer: pointer.to_string(), message: message.into() }
}

fn path_param<'r>(request: &'r Request, name: &str, what: &str) -> Result<&'r str, Problem> {
    http::path_param(request, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Problem::not_found(format!("no such {what}")))
}

/// `If-Match: "<version>"`: exactly one strong entity tag as `ETag` sends it.
fn if_match(request: &Request) -> Result<Option<u64>, Problem> {
    let Some(value) = request.headers().get("if-match") else { return Ok(None) };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|raw| raw.strip_prefix('"')?.strip_suffix('"')?.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Problem::bad_request("invalid_if_match", r#"If-Match takes one entity tag as ETag gives it, such as "3""#)
                .at("If-Match")
        })
}

// ------------------------------------------------------------------------------------------------------------------
// Responses and errors
// ------------------------------------------------------------------------------------------------------------------

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn with_etag(status: u16, value: &impl serde::Serialize, version: u64) -> Response {
    let mut response = http::json(status, value);
    set_header(&mut response, "etag", &format!("\"{version}\""));
    response
}

fn flag_response(status: u16, flag: &Flag) -> Response {
    with_etag(status, flag, flag.version)
}

/// Moves pointers that locate a problem inside the submitted sub-document (`/rules/3/...` for an added rule) to
/// the request body (`/...`); others stay pointers into the flag.
fn rebase(errors: Vec<Invalid>, prefix: Option<&str>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| {
            let pointer = match prefix {
                Some(prefix) if e.pointer == prefix => String::new(),
                Some(prefix) => match e.pointer.strip_prefix(prefix) {
                    Some(rest) if rest.starts_with('/') => rest.to_string(),
                    _ => e.pointer,
                },
                None => e.pointer,
            };
            FieldError { pointer, message: e.message }
        })
        .collect()
}

/// What a store error means to the client. `missing` is the 404's detail.
fn store_problem(error: StoreError, missing: &str, prefix: Option<&str>) -> Problem {
    match error {
        StoreError::NotFound => Problem::not_found(missing),
        StoreError::AlreadyExists => {
            Problem::new(409, "already_exists", "a flag with this key exists (it may be archived)")
        }
        StoreError::VersionMismatch { current } => Problem::new(
            412,
            "version_mismatch",
            format!("If-Match does not name the current version; the current version is {current}"),
        ),
        StoreError::Invalid(errors) => Problem::invalid("validation_failed", rebase(errors, prefix)),
        StoreError::Port(error) => {
            tracing::warn!(%error, "flag store failed");
            Problem::unavailable()
        }
    }
}

fn flag_not_found(error: StoreError) -> Problem {
    store_problem(error, "no such flag", None)
}

/// An update without `If-Match` that lost every retry to concurrent writers: a conflict to retry, not a failed
/// precondition the client never set.
fn update_problem(error: StoreError, expected: Option<u64>, prefix: Option<&str>) -> Problem {
    match error {
        StoreError::VersionMismatch { .. } if expected.is_none() => {
            Problem::new(409, "concurrent_update", "the flag kept changing while this change was applied; retry")
        }
        other => store_problem(other, "no such flag", prefix),
    }
}

/// The closures given to `FlagStore::update` report a condition that is not a validation problem through a flag
/// and an (ignored) error list, which stops the write.
fn abort(flag: &AtomicBool) -> Result<(), Vec<Invalid>> {
    flag.store(true, Ordering::SeqCst);
    Err(Vec::new())
}

fn invalid(pointer: &str, message: impl Into<String>) -> Vec<Invalid> {
    vec![Invalid { pointer: pointer.to_string(), message: message.into() }]
}

/// Overrides submitted without an author get the caller.
fn fill_created_by(overrides: &mut [Override], actor: &str) {
    for o in overrides.iter_mut().filter(|o| o.created_by.is_empty()) {
        o.created_by = actor.to_string();
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Stale flags
// ------------------------------------------------------------------------------------------------------------------

/// Why a flag is stale, or `None`. Archived and permanent flags never are.
pub fn stale_reason(flag: &Flag, last_evaluated: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<&'static str> {
    if flag.archived || flag.lifecycle.permanent {
        return None;
    }
    if flag.lifecycle.stale_after.is_some_and(|at| at <= now) {
        return Some("past_stale_after");
    }
    let since = last_evaluated.unwrap_or(flag.updated_at);
    (now - since >= Duration::days(UNUSED_DAYS)).then_some("not_evaluated")
}

// ------------------------------------------------------------------------------------------------------------------
// Bodies
// ------------------------------------------------------------------------------------------------------------------

/// A page of the flag list.
#[derive(Serialize, utoipa::ToSchema)]
struct FlagPage {
    items: Vec<ListedFlag>,
    next_cursor: Option<String>,
}

/// A flag as the list shows it: the flag's own fields and three more.
#[derive(Serialize)]
struct ListedFlag {
    #[serde(flatten)]
    flag: Flag,
    stale: bool,
    /// `past_stale_after` or `not_evaluated` when stale.
    stale_reason: Option<&'static str>,
    last_evaluated_at: Option<DateTime<Utc>>,
}

/// The flag's schema with the list's three fields added (a flag's schema refuses other properties, so `allOf`
/// cannot extend it).
impl utoipa::PartialSchema for ListedFlag {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{Object, Schema};
        use utoipa::openapi::{RefOr, Type};
        let mut schema = match <Flag as utoipa::PartialSchema>::schema() {
            RefOr::T(Schema::Object(object)) => object,
            _ => Object::new(),
        };
        let nullable = |kind: Type| {
            Object::builder().schema_type(utoipa::openapi::schema::SchemaType::from_iter([kind, Type::Null]))
        };
        schema.properties.insert("stale".into(), Object::with_type(Type::Boolean).into());
        schema.properties.insert("stale_reason".into(), nullable(Type::String).build().into());
        schema.properties.insert(
            "last_evaluated_at".into(),
            nullable(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
                .build()
                .into(),
        );
        schema.required.extend(["stale".to_string(), "stale_reason".into(), "last_evaluated_at".into()]);
        RefOr::T(Schema::Object(schema))
    }
}

impl utoipa::ToSchema for ListedFlag {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <Flag as utoipa::ToSchema>::schemas(schemas);
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditPage {
    items: Vec<AuditEntry>,
    next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct SegmentList {
    items: Vec<Segment>,
}

/// An evaluation explained.
#[derive(Serialize, utoipa::ToSchema)]
struct Explanation {
    evaluation: Explained,
    at: DateTime<Utc>,
    steps: Vec<Step>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Explained {
    /// The value, of the flag's type; null when the evaluation failed.
    value: Option<Value>,
    value_type: ValueType,
    enabled: bool,
    variant: Option<String>,
    reason: Reason,
    open_feature_reason: &'static str,
    rule_id: Option<String>,
    version: u64,
    error_code: Option<ErrorCode>,
}

/// The flag's rule ids, each once, in their new order.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RuleOrder {
    rule_ids: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    action: OverrideAction,
    reason: String,
    #[serde(default)]
    starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

/// The context to explain the evaluation for; every field is optional.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExplainBody {
    organization_id: Option<String>,
    user_id: Option<String>,
    environment: Option<String>,
    session_id: Option<String>,
    remote_address: Option<String>,
    app_name: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// The evaluation instant; now when absent.
    at: Option<DateTime<Utc>>,
}

// ------------------------------------------------------------------------------------------------------------------
// Handlers
// ------------------------------------------------------------------------------------------------------------------

impl FlagsAdmin {
    async fn list(&self, request: &Request) -> Result<Response, Problem> {
        let archived = http::bool_param(request, "archived")?.unwrap_or(false);
        let kind = match http::query_param(request, "type") {
            None => None,
            Some(raw) => Some(serde_json::from_value::<FlagType>(Value::String(raw.to_string())).map_err(|_| {
                Problem::invalid_param(
                    "type",
                    "type is one of release, experiment, operational, kill-switch, permission",
                )
            })?),
        };
        let stale = http::bool_param(request, "stale")?;
        let prefix = http::query_param(request, "prefix");
        let limit = http::limit_param(request, DEFAULT_LIMIT, MAX_LIMIT)?;
        let after = http::cursor_param(request, "cursor", |_| true)?;
        let now = self.store.clock().now();
        let flags = self.store.flags().await.map_err(flag_not_found)?;
        let usage = self.store.usage().await.map_err(flag_not_found)?;
        let mut items = Vec::new();
        let mut next_cursor = None;
        for flag in flags {
            let wanted = after.as_ref().is_none_or(|after| flag.key > *after)
                && flag.archived == archived
                && kind.is_none_or(|kind| flag.lifecycle.kind == kind)
                && prefix.is_none_or(|prefix| flag.key.starts_with(prefix));
            if !wanted {
                continue;
            }
            let last_evaluated = usage.get(&flag.key).copied();
            let reason = stale_reason(&flag, last_evaluated, now);
            if stale.is_some_and(|stale| stale != reason.is_some()) {
                continue;
            }
            if items.len() == limit {
                next_cursor = items.last().map(|item: &ListedFlag| http::encode_cursor(&item.flag.key));
                break;
            }
            items.push(ListedFlag {
                flag,
                stale: reason.is_some(),
                stale_reason: reason,
                last_evaluated_at: last_evaluated,
            });
        }
        Ok(http::json(200, &FlagPage { items, next_cursor }))
    }

    /// A write audited under `actor` that names `users`: neither may be an erased user.
    async fn refuse_erased<'a>(
        &self,
        actor: &str,
        what: &str,
        users: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Problem> {
        self.suppressions.refuse_any("the caller", [actor]).await?;
        self.suppressions.refuse_any(what, users).await
    }

    async fn create(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let mut flag: Flag = parse_body(request)?;
        fill_created_by(&mut flag.overrides, actor);
        self.refuse_erased(actor, "the flag", flag.named_users()).await?;
        let flag = self.store.create(flag, actor).await.map_err(flag_not_found)?;
        let mut response = flag_response(201, &flag);
        set_header(&mut response, "location", &format!("/v1/admin/flags/{}", flag.key));
        Ok(response)
    }

    async fn show(&self, request: &Request) -> Result<Response, Problem> {
        let key = path_param(request, "key", "flag")?;
        let flag =
            self.store.get(key).await.map_err(flag_not_found)?.ok_or_else(|| Problem::not_found("no such flag"))?;
        Ok(flag_response(200, &flag))
    }

    /// Full replace; `If-Match` is required.
    async fn replace(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let key = path_param(request, "key", "flag")?;
        let expected = if_match(request)?.ok_or_else(|| {
            Problem::new(
                428,
                "precondition_required",
                r#"replacing a flag requires If-Match with the version it replaces (its ETag, e.g. "3")"#,
            )
        })?;
        let mut body: Flag = parse_body(request)?;
        if body.key != key {
            return Err(Problem::invalid("invalid_body", vec![field_error("/key", "the key must be the path's key")]));
        }
        fill_created_by(&mut body.overrides, actor);
        self.refuse_erased(actor, "the flag", body.named_users()).await?;
        let flag = self
            .store
            .update(key, Some(expected), actor, "update", |flag| {
                *flag = body.clone();
                Ok(())
            })
            .await
            .map_err(flag_not_found)?;
        Ok(flag_response(200, &flag))
    }

    async fn add_rule(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let key = path_param(request, "key", "flag")?;
        let position = match http::query_param(request, "position") {
            None => None,
            Some(raw) => Some(raw.parse::<usize>().map_err(|_| {
                Problem::invalid_param("position", "position is the 0-based index the rule takes among the rules")
            })?),
        };
        let expected = if_match(request)?;
        let rule: Rule = parse_body(request)?;
        self.refuse_erased(actor, "the rule", rule.named_users()).await?;
        let placed = AtomicUsize::new(0);
        let result = self
            .store
            .update(key, expected, actor, "add_rule", |flag| {
                let at = position.unwrap_or(flag.rules.len());
                if at > flag.rules.len() {
                    return Err(invalid("position", format!("position is from 0 to {}", flag.rules.len())));
                }
                if flag.rules.iter().any(|r| r.id == rule.id) {
                    return Err(invalid("/id", format!("the flag already has a rule `{}`", rule.id)));
                }
                placed.store(at, Ordering::SeqCst);
                flag.rules.insert(at, rule.clone());
                Ok(())
            })
            .await;
        let prefix = format!("/rules/{}", placed.load(Ordering::SeqCst));
        let flag = result.map_err(|e| update_problem(e, expected, Some(&prefix)))?;
        Ok(flag_response(201, &flag))
    }

    async fn reorder_rules(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let key = path_param(request, "key", "flag")?;
        let expected = if_match(request)?;
        let order: RuleOrder = parse_body(request)?;
        let flag = self
            .store
            .update(key, expected, actor, "reorder_rules", |flag| {
                let mut current: Vec<&str> = flag.rules.iter().map(|r| r.id.as_str()).collect();
                let mut wanted: Vec<&str> = order.rule_ids.iter().map(String::as_str).collect();
                current.sort_unstable();
                wanted.sort_unstable();
                if current != wanted {
                    return Err(invalid(
                        "/rule_ids",
                        format!("rule_ids must list each of the flag's rules once: {current:?}"),
                    ));
                }
                let mut rules = std::mem::take(&mut flag.rules);
                for id in &order.rule_ids {
                    if let Some(index) = rules.iter().position(|r| &r.id == id) {
                        flag.rules.push(rules.swap_remove(index));
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| update_problem(e, expected, None))?;
        Ok(flag_response(200, &flag))
    }

    /// Sets the organization's override, replacing any it had (201 when it had none).
    async fn set_override(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let key = path_param(request, "key", "flag")?;
        let org = path_param(request, "orgId", "organization")?;
        let expected = if_match(request)?;
        let body: OverrideBody = parse_body(request)?;
        let new = Override {
            org_id: org.to_string(),
            action: body.action,
            reason: body.reason,
            starts_at: body.starts_at,
            expires_at: body.expires_at,
            created_by: actor.to_string(),
        };
        let replaced = AtomicBool::new(false);
        let placed = AtomicUsize::new(0);
        let result = self
            .store
            .update(key, expected, actor, "set_override", |flag| {
                let before = flag.overrides.len();
                flag.overrides.retain(|o| o.org_id != org);
                replaced.store(flag.overrides.len() != before, Ordering::SeqCst);
                placed.store(flag.overrides.len(), Ordering::SeqCst);
                flag.overrides.push(new.clone());
                Ok(())
            })
            .await;
        let prefix = format!("/overrides/{}", placed.load(Ordering::SeqCst));
        let flag = result.map_err(|e| match e {
            StoreError::NotFound => unknown_flag(key),
            other => update_problem(other, expected, Some(&prefix)),
        })?;
        Ok(flag_response(if replaced.load(Ordering::SeqCst) { 200 } else { 201 }, &flag))
    }

    async fn clear_override(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let key = path_param(request, "key", "flag")?;
        let org = path_param(request, "orgId", "organization")?;
        let expected = if_match(request)?;
        let none = AtomicBool::new(false);
        let result = self
            .store
            .update(key, expected, actor, "clear_override", |flag| {
                let before = flag.overrides.len();
                flag.overrides.retain(|o| o.org_id != org);
                if flag.overrides.len() == before {
                    return abort(&none);
                }
                Ok(())
            })
            .await;
        if none.load(Ordering::SeqCst) {
            return Err(Problem::not_found("the organization has no override on this flag"));
        }
        let flag = result.map_err(|e| match e {
            StoreError::NotFound => unknown_flag(key),
            other => update_problem(other, expected, None),
        })?;
        Ok(flag_response(200, &flag))
    }

    /// Archives the flag; an archived flag is answered as it is (no new version).
    async fn archive(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let key = path_param(request, "key", "flag")?;
        let expected = if_match(request)?;
        let flags = self.store.flags().await.map_err(flag_not_found)?;
        let flag = flags.iter().find(|f| f.key == key).ok_or_else(|| Problem::not_found("no such flag"))?;
        if flag.archived && expected.is_none_or(|v| v == flag.version) {
            return Ok(flag_response(200, flag));
        }
        let dependents: Vec<&str> = flags
            .iter()
            .filter(|f| !f.archived && f.prerequisites.iter().any(|p| p.flag == key))
            .map(|f| f.key.as_str())
            .collect();
        if !dependents.is_empty() {
            return Err(Problem::new(
                409,
                "flag_has_dependents",
                format!("live flags list this flag as a prerequisite: {}", dependents.join(", ")),
            ));
        }
        let already = AtomicBool::new(false);
        let result = self
            .store
            .update(key, expected, actor, "archive", |flag| {
                if flag.archived {
                    return abort(&already);
                }
                flag.archived = true;
                Ok(())
            })
            .await;
        if already.load(Ordering::SeqCst) {
            // Archived concurrently: the same answer as archiving an archived flag.
            let flag =
                self.store.get(key).await.map_err(flag_not_found)?.ok_or_else(|| Problem::not_found("no such flag"))?;
            return Ok(flag_response(200, &flag));
        }
        Ok(flag_response(200, &result.map_err(|e| update_problem(e, expected, None))?))
    }

    async fn import(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let document = http::body_value(request, MAX_IMPORT_BYTES)?;
        let features = if document.get("events").is_some() {
            unleash::parse(&document).map_err(|message| {
                Problem::invalid("invalid_import", vec![FieldError { pointer: "/events".into(), message }])
            })?
        } else {
            http::from_json::<unleash::ClientFeatures>(document, "invalid_import")?
        };
        let mode = match http::query_param(request, "mode") {
            None | Some("lenient") => ImportMode::Lenient,
            Some("strict") => ImportMode::Strict,
            Some(_) => return Err(Problem::invalid_param("mode", "mode is lenient (the default) or strict")),
        };
        let dry_run = http::bool_param(request, "dry_run")?.unwrap_or(false);
        let import = unleash::convert(&features, self.store.clock().now());
        let report = self.store.import(import, actor, mode, dry_run).await.map_err(|e| match e {
            StoreError::Invalid(errors) => Problem::invalid("invalid_import", rebase(errors, None)),
            other => flag_not_found(other),
        })?;
        Ok(http::json(200, &report))
    }

    async fn explain(&self, request: &Request) -> Result<Response, Problem> {
        let key = path_param(request, "key", "flag")?;
        let body: ExplainBody =
            if http::raw_body(request).is_empty() { ExplainBody::default() } else { parse_body(request)? };
        let at = body.at.unwrap_or_else(|| self.store.clock().now());
        let context = Context {
            organization_id: body.organization_id,
            user_id: body.user_id,
            environment: body.environment,
            session_id: body.session_id,
            remote_address: body.remote_address,
            app_name: body.app_name,
            current_time: None,
            attributes: body.attributes,
        };
        let (_, snapshot) = self.store.load().await.map_err(flag_not_found)?;
        let (evaluation, steps) = snapshot.explain(key, &context, at);
        if evaluation.error.is_some_and(|(code, _)| code == ErrorCode::FlagNotFound)
            && self.store.get(key).await.map_err(flag_not_found)?.is_none()
        {
            return Err(Problem::not_found("no such flag"));
        }
        let evaluation = Explained {
            value: evaluation.typed_value(),
            value_type: evaluation.value_type,
            enabled: evaluation.value,
            variant: evaluation.error.is_none().then(|| evaluation.served_name().to_string()),
            reason: evaluation.reason,
            open_feature_reason: evaluation.reason.open_feature(),
            rule_id: evaluation.rule_id.map(str::to_string),
            version: evaluation.version,
            error_code: evaluation.error.map(|(code, _)| code),
        };
        Ok(http::json(200, &Explanation { evaluation, at, steps }))
    }

    async fn audit(&self, request: &Request, per_flag: bool) -> Result<Response, Problem> {
        let subject = if per_flag {
            let key = path_param(request, "key", "flag")?;
            self.store.get(key).await.map_err(flag_not_found)?.ok_or_else(|| Problem::not_found("no such flag"))?;
            Some(flag_subject(key))
        } else {
            None
        };
        let limit = http::limit_param(request, DEFAULT_LIMIT, MAX_LIMIT)?;
        let after = http::cursor_param(request, "cursor", |position| Ulid::from_string(position).is_ok())?;
        let (entries, next) = self.store.audit(subject.as_deref(), after, limit).await.map_err(flag_not_found)?;
        let next_cursor = next.as_deref().map(http::encode_cursor);
        Ok(http::json(200, &AuditPage { items: entries, next_cursor }))
    }

    async fn segments(&self) -> Result<Response, Problem> {
        let segments = self.store.segments().await.map_err(flag_not_found)?;
        Ok(http::json(200, &SegmentList { items: segments }))
    }

    /// Creates (201) or replaces (200) a segment.
    async fn put_segment(&self, call: &Call) -> Result<Response, Problem> {
        let (request, actor) = (&call.request, call.identity()?.user_id.as_str());
        let name = path_param(request, "name", "segment")?;
        let expected = if_match(request)?;
        let segment: Segment = parse_body(request)?;
        if segment.name != name {
            return Err(Problem::invalid(
                "invalid_body",
                vec![field_error("/name", "the name must be the path's name")],
            ));
        }
        self.refuse_erased(actor, "the segment", segment.named_users()).await?;
        let (segment, version) = self.store.put_segment(segment, expected, actor).await.map_err(|e| match e {
            StoreError::NotFound => {
                Problem::new(412, "version_mismatch", "If-Match names a version of a segment that does not exist")
            }
            StoreError::AlreadyExists => Problem::new(409, "conflict", "the segment was created concurrently; retry"),
            other => store_problem(other, "no such segment", None),
        })?;
        Ok(with_etag(if version == 1 { 201 } else { 200 }, &segment, version))
    }
}

fn unknown_flag(key: &str) -> Problem {
    Problem::invalid("unknown_flag", vec![field_error("/key", format!("no flag `{key}`"))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_paths_become_json_pointers() {
        let value = serde_json::json!({"key": "k", "rules": [{"id": "r", "constraints": [{"field": "a/b", "operator": "NOPE"}]}]});
        let error = serde_path_to_error::deserialize::<_, Flag>(value).err();
        assert_eq!(error.map(|e| http::json_pointer(e.path())).as_deref(), Some("/rules/0/constraints/0/operator"));
    }
}
