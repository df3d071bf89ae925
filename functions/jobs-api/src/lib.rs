//! The jobs API: create a typed job (validated against its type's schema, deduplicated by `dedup_key`, honouring
//! `Idempotency-Key`), list and read an organization's jobs with every attempt, cancel, and retry as a new job;
//! publish domain events; read the organization's event feed; and, for platform admins, the circuit breakers.
//!
//! Members create and read their organization's jobs only; a job of another organization answers 404, never 403,
//! so ids do not leak. Cancel and retry are the creator's or an org admin's. Platform admins read any
//! organization's jobs (`org_id` on the list; any id on the others).

use chrono::{DateTime, Duration, Utc};
use keel::config::{ConfigError, Env};
use keel::http::{self, Request, Response};
use keel::idempotency::Idempotency;
use keel::identity::{Identity, Role};
use keel::openapi::{Content, Doc, Param, Reply, inline, schema};
use keel::problem::{FieldError, Problem};
use keel::ratelimit::RateLimits;
use keel::resources::Resources;
use keel::route::{Access, Api, Call, Route};
use keel_jobs::breaker::{Breaker, Breakers};
use keel_jobs::events::{self, FeedEvent};
use keel_jobs::gate::Gates;
use keel_jobs::job::{MAX_PAYLOAD_BYTES, valid_org};
use keel_jobs::registry::Creators;
use keel_jobs::{AttemptEnd, Created, Filter, Job, Jobs, JobsError, NewJob, Outcome, Registry, Status, Versioned};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const TABLE_VAR: &str = "JOBS_TABLE";
pub use keel_jobs::{BUS_VAR, QUEUE_VAR};

/// The farthest ahead a job may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::days(366);
/// A create body: the input's cap and room for the rest.
const MAX_BODY_BYTES: usize = MAX_PAYLOAD_BYTES + 16 * 1024;
const MAX_METADATA_BYTES: usize = 8 * 1024;
const MAX_SKILLS: usize = 20;
const MAX_SHORT_TEXT: usize = 128;
const MAX_DEDUP_KEY: usize = 256;
const DEFAULT_LIMIT: usize = 50;

pub struct JobsApi {
    jobs: Jobs,
    breakers: Breakers,
    gates: Gates,
    registry: Registry,
    suppressions: keel::suppression::Suppressions,
    idempotency: Idempotency,
    rate_limits: RateLimits,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<JobsApi, ConfigError> {
    let table = resources.table(TABLE_VAR)?;
    Ok(JobsApi {
        jobs: Jobs::new(table.clone(), resources.queue(QUEUE_VAR)?, resources.bus(BUS_VAR)?, resources.clock()),
        breakers: Breakers::new(table, resources.clock()),
        gates: Gates::from_resources(env, resources)?,
        registry: Registry::sample_unsigned(env)?,
        suppressions: keel::suppression::Suppressions::from_env(env, resources)?,
        idempotency: Idempotency::from_resources(resources)?,
        rate_limits: RateLimits::shared(env, resources)?,
    })
}

impl Api for JobsApi {
    fn idempotency(&self) -> Option<&Idempotency> {
        Some(&self.idempotency)
    }

    fn rate_limits(&self) -> Option<&RateLimits> {
        Some(&self.rate_limits)
    }

    const ROUTES: &'static [Route<Self>] = &[
        Route::post("/v1/jobs", Access::Member, CREATE, |api, call| Box::pin(api.create(call))),
        Route::get("/v1/jobs", Access::Member, LIST, |api, call| Box::pin(api.list(call))),
        Route::get("/v1/jobs/{id}", Access::Member, SHOW, |api, call| Box::pin(api.show(call))),
        Route::post("/v1/jobs/{id}/cancel", Access::Member, CANCEL, |api, call| Box::pin(api.cancel(call))),
        Route::post("/v1/jobs/{id}/retry", Access::Member, RETRY, |api, call| Box::pin(api.retry(call))),
        Route::post("/v1/jobs/callbacks", Access::Public, CALLBACK, |api, call| Box::pin(api.callback(call))),
        Route::post("/v1/events", Access::Member, PUBLISH, |api, call| Box::pin(api.publish(call))),
        Route::get("/v1/events/feed", Access::Member, FEED, |api, call| Box::pin(api.feed(call))),
        Route::get("/v1/admin/jobs/breakers", Access::PlatformAdmin, BREAKERS, |api, _| Box::pin(api.breakers())),
    ];
}

const ID: Param = Param::path("id", "The job's id (a ULID).");
const NO_JOB: Reply = Reply::problem(404, "No job of the caller's organization has this id.");
const NOT_YOURS: Reply = Reply::problem(403, "Only the job's creator or an org admin may do this.");

const CREATE: Doc = Doc {
    summary: "Create a job",
    description: "Validates the input against the type's schema and queues the job, or holds it until `run_at` or \
        until the organization has a slot of the type free. A `dedup_key` held by a pending or running job of the \
        organization returns that job (200) instead of creating one.",
    body: Some(Content::Json(schema::<CreateBody>)),
    replies: &[
        Reply::json(202, "The job, created.", schema::<CreatedJob>),
        Reply::json(200, "The pending or running job that holds `dedup_key`.", schema::<CreatedJob>),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(409, "`erased_user`: the caller, or the user the input names, was erased."),
        Reply::problem(413, "The body, or the input, is over 256 KB."),
        Reply::problem(422, "Unknown or unavailable type, an input that breaks its schema, or a bad field (`errors`)."),
    ],
    ..Doc::NONE
};
const LIST: Doc = Doc {
    summary: "List jobs",
    description: "The organization's jobs, newest first, without outputs.",
    params: &[
        Param::query("status", "Only jobs in this status.", schema::<Status>),
        Param::query("type", "Only jobs of this type.", inline::<String>),
        Param::query("category", "Only jobs of this category.", inline::<String>),
        Param::query("user_id", "Only jobs this user created.", inline::<String>),
        Param::query("created_from", "Only jobs created at or after this instant (RFC 3339).", inline::<String>),
        Param::query("created_to", "Only jobs created before this instant (RFC 3339).", inline::<String>),
        Param::query(
            "org_id",
            "Platform admins: the organization to list (the caller's own by default).",
            inline::<String>,
        ),
        Param::query("limit", "Page size, 1 to 100 (50 when absent).", inline::<u32>),
        Param::query("cursor", "`next_cursor` of the previous page.", inline::<String>),
    ],
    replies: &[
        Reply::json(200, "A page of jobs.", schema::<JobPage>),
        Reply::problem(422, "A filter or the cursor is invalid (`pointer` names it)."),
    ],
    ..Doc::NONE
};
const SHOW: Doc = Doc {
    summary: "Read a job",
    description: "The execution record with every attempt, and the output once completed.",
    params: &[ID],
    replies: &[Reply::json(200, "The job.", schema::<JobDetail>), NO_JOB],
    ..Doc::NONE
};
const CANCEL: Doc = Doc {
    summary: "Cancel a job",
    description: "A pending job ends `cancelled` at once; a running one's worker sees the request at its next \
        heartbeat (5 s or less), abandons the downstream call and ends it `cancelled`.",
    params: &[ID],
    replies: &[
        Reply::json(202, "The job: cancelled, or asked to stop.", schema::<Job>),
        NO_JOB,
        NOT_YOURS,
        Reply::problem(409, "The job has already finished."),
    ],
    ..Doc::NONE
};
const RETRY: Doc = Doc {
    summary: "Retry a job",
    description: "Creates a new job of the same type and input, linked to this failed or cancelled one.",
    params: &[ID],
    replies: &[
        Reply::json(202, "The new job (its `retry_of` is this one).", schema::<Job>),
        NO_JOB,
        NOT_YOURS,
        Reply::problem(
            409,
            "The job has not failed or been cancelled, or was retried already; or (`erased_user`) it is about an \
             erased user.",
        ),
        Reply::problem(422, "The job's type no longer exists or is unavailable."),
    ],
    ..Doc::NONE
};

const CALLBACK: Doc = Doc {
    summary: "Report on a callback job",
    description: "For the service of a callback type, authenticated by the attempt's token (`keel-callback-token`, \
        sent with the job): `progress` keeps the attempt alive for the type's `report_within`; `completed` ends the \
        job with `output`; `failed` ends the attempt (tried again after the type's backoff when `retry` is true and \
        attempts remain). Another attempt's token, an unknown one, or a finished job: 404.",
    params: &[Param::header(CALLBACK_TOKEN_HEADER, "The token the attempt was sent with.")],
    body: Some(Content::Json(schema::<CallbackBody>)),
    replies: &[
        Reply::json(200, "The job, as the report left it.", schema::<Job>),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(404, "No attempt waits for a report with this token."),
        Reply::problem(422, "The body is not a report (`pointer` names the field)."),
    ],
    ..Doc::NONE
};
const PUBLISH: Doc = Doc {
    summary: "Publish a domain event",
    description: "Publishes the event to EventBridge (source `keel.events`, detail-type the event's type, the \
        organization in the detail) and adds it to the organization's feed. An `id` seen in the last 24 hours is \
        not published again (200 with the first event); after a 503, sending the same id again publishes it.",
    body: Some(Content::Json(schema::<EventBody>)),
    replies: &[
        Reply::json(202, "The event, published.", schema::<FeedEvent>),
        Reply::json(200, "The event first published with this id.", schema::<FeedEvent>),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(413, "`data` is over 64 KB."),
        Reply::problem(422, "A bad type (`job.` is Keel's) or id, or `data` not an object (`errors`)."),
    ],
    ..Doc::NONE
};
const FEED: Doc = Doc {
    summary: "Read the event feed",
    description: "The organization's job lifecycle events and domain events of the last 24 hours, oldest first, \
        from a second ago back.",
    params: &[
        Param::query("after", "`next_cursor` of the previous page (absent: from the oldest kept).", inline::<String>),
        Param::query("limit", "Page size, 1 to 100 (50 when absent).", inline::<u32>),
    ],
    replies: &[
        Reply::json(200, "A page of events.", schema::<FeedPage>),
        Reply::problem(422, "The cursor or the limit is invalid."),
    ],
    ..Doc::NONE
};
const BREAKERS: Doc = Doc {
    summary: "List circuit breakers",
    description: "Every downstream target's breaker that has counted a failure: closed, open or probing.",
    replies: &[Reply::json(200, "The breakers.", schema::<BreakerList>)],
    ..Doc::NONE
};

/// The header a callback type's service reports with (the worker's `keel-callback-token`).
pub const CALLBACK_TOKEN_HEADER: &str = "keel-callback-token";

/// What a callback job's service reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum ReportState {
    Progress,
    Completed,
    Failed,
}

/// `POST /v1/jobs/callbacks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CallbackBody {
    state: ReportState,
    /// The job's output (`completed`), up to 256 KB.
    output: Option<Value>,
    /// Why it failed (`failed`).
    error: Option<String>,
    /// `failed` only: try again after the type's backoff, while attempts remain.
    #[serde(default)]
    retry: bool,
}

/// `POST /v1/events`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EventBody {
    /// Yours to choose (1 to 128 of `[A-Za-z0-9._:-]`), so a retry publishes once; a ULID when absent.
    id: Option<String>,
    /// `[a-z0-9][a-z0-9._-]*`, up to 128 characters; not `job.*`.
    #[serde(rename = "type")]
    event_type: String,
    /// A JSON object, up to 64 KB.
    data: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
struct FeedItem {
    #[serde(flatten)]
    event: FeedEvent,
}

#[derive(Serialize, utoipa::ToSchema)]
struct FeedPage {
    items: Vec<FeedItem>,
    /// Pass as `after` for what follows; the same cursor again when nothing newer has settled yet.
    next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct BreakerList {
    items: Vec<Breaker>,
}

/// `POST /v1/jobs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// A type of the registry.
    #[serde(rename = "type")]
    job_type: String,
    /// Checked against the type's input schema.
    input: Value,
    /// When to start (RFC 3339, up to a year ahead); now when absent or past.
    run_at: Option<DateTime<Utc>>,
    /// While a pending or running job of the organization holds this key, creating another returns that one.
    dedup_key: Option<String>,
    session_id: Option<String>,
    #[serde(default)]
    skills: Vec<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

/// A job as creation answers it.
#[derive(Serialize, utoipa::ToSchema)]
struct CreatedJob {
    #[serde(flatten)]
    job: Job,
    /// The type is paused for the organization (its operational flag `keel.jobs.<type>` is off): the job waits,
    /// queued, until it is on again.
    paused: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct JobPage {
    items: Vec<Job>,
    next_cursor: Option<String>,
}

/// A job with its output.
#[derive(Serialize, utoipa::ToSchema)]
struct JobDetail {
    #[serde(flatten)]
    job: Job,
    /// The downstream service's answer, once completed.
    output: Option<Value>,
}

fn backend(error: JobsError) -> Problem {
    match error {
        JobsError::NotFound => Problem::not_found("no such job"),
        JobsError::Conflict(detail) => Problem::new(409, "conflict", detail),
        JobsError::Contended => Problem::new(409, "contended", "too many concurrent changes; retry"),
        JobsError::Backend(error) => {
            tracing::warn!(%error, "jobs request failed on a backend");
            Problem::unavailable()
        }
    }
}

fn port(error: keel::port::PortError) -> Problem {
    backend(error.into())
}

fn field(pointer: &str, message: impl Into<String>) -> FieldError {
    FieldError { pointer: pointer.to_string(), message: message.into() }
}

/// Text fields: non-empty, at most `max` characters.
fn check_text(errors: &mut Vec<FieldError>, pointer: &str, value: Option<&str>, max: usize) {
    if let Some(value) = value
        && (value.is_empty() || value.chars().count() > max)
    {
        errors.push(field(pointer, format!("1 to {max} characters")));
    }
}

fn may_act_on(caller: &Identity, job: &Job) -> bool {
    job.user_id == caller.user_id || caller.has_role(Role::Admin) || caller.has_role(Role::PlatformAdmin)
}

fn time_param(request: &Request, name: &str) -> Result<Option<DateTime<Utc>>, Problem> {
    let Some(raw) = http::query_param(request, name) else { return Ok(None) };
    DateTime::parse_from_rfc3339(raw)
        .map(|at| Some(at.with_timezone(&Utc)))
        .map_err(|_| Problem::invalid_param(name, format!("{name} must be an RFC 3339 timestamp")))
}

impl JobsApi {
    /// The registry's type `name`, if it can run here: 422 at `/type` (`unknown` says why when there is none), 403
    /// for a type only platform admins may create, or only Keel's own routes.
    fn runnable(&self, caller: &Identity, name: &str, unknown: &str) -> Result<&keel_jobs::JobType, Problem> {
        let job_type =
            self.registry.get(name).ok_or_else(|| Problem::invalid("unknown_type", vec![field("/type", unknown)]))?;
        match job_type.creators {
            Creators::PlatformAdmin if !caller.has_role(Role::PlatformAdmin) => {
                return Err(Problem::new(403, "forbidden", format!("only platform admins create jobs of type {name}")));
            }
            Creators::Keel => {
                return Err(Problem::new(
                    403,
                    "forbidden",
                    format!("jobs of type {name} are started by Keel's own routes"),
                ));
            }
            _ => {}
        }
        match job_type.unavailable() {
            Some(missing) => Err(Problem::invalid(
                "type_unavailable",
                vec![field("/type", format!("the type is not configured here: {missing}"))],
            )),
            None => Ok(job_type),
        }
    }

    async fn create(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let body: CreateBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        let input_size = serde_json::to_vec(&body.input).map_or(0, |encoded| encoded.len());
        if input_size > MAX_PAYLOAD_BYTES {
            return Err(Problem::new(413, "input_too_large", format!("the input is over {MAX_PAYLOAD_BYTES} bytes"))
                .at("/input"));
        }
        let job_type = self.runnable(caller, &body.job_type, &format!("no job type `{}`", body.job_type))?;
        let mut errors = job_type.violations(&body.input);
        let now = self.jobs.now();
        if body.run_at.is_some_and(|at| at > now + MAX_SCHEDULE_AHEAD) {
            errors.push(field("/run_at", "at most a year ahead"));
        }
        check_text(&mut errors, "/dedup_key", body.dedup_key.as_deref(), MAX_DEDUP_KEY);
        if body.dedup_key.as_deref().is_some_and(|key| key.starts_with(keel_jobs::RESERVED_DEDUP_PREFIX)) {
            errors.push(field("/dedup_key", "keys starting `keel:` are Keel's own"));
        }
        check_text(&mut errors, "/session_id", body.session_id.as_deref(), MAX_SHORT_TEXT);
        if body.skills.len() > MAX_SKILLS {
            errors.push(field("/skills", format!("at most {MAX_SKILLS} skills")));
        }
        for (i, skill) in body.skills.iter().enumerate() {
            check_text(&mut errors, &format!("/skills/{i}"), Some(skill), MAX_SHORT_TEXT);
        }
        if serde_json::to_vec(&body.metadata).map_or(0, |m| m.len()) > MAX_METADATA_BYTES {
            errors.push(field("/metadata", format!("at most {MAX_METADATA_BYTES} bytes")));
        }
        if !errors.is_empty() {
            return Err(Problem::invalid("invalid_job", errors));
        }
        self.refuse_erased(caller, &body.input).await?;
        let new = NewJob {
            job_type: body.job_type.clone(),
            input: body.input,
            run_at: body.run_at,
            dedup_key: body.dedup_key,
            session_id: body.session_id,
            skills: body.skills,
            metadata: body.metadata,
            trace_header: call.invocation.trace_header.clone(),
            trace_id: call.invocation.trace_id().map(str::to_string),
        };
        let paused = self.gates.paused(&caller.org_id, &job_type.name).await;
        match self.jobs.create(&caller.org_id, &caller.user_id, job_type, new, None).await.map_err(backend)? {
            Created::New(job) => Ok(http::json(202, &CreatedJob { job, paused })),
            Created::Existing(job) => Ok(http::json(200, &CreatedJob { job, paused })),
        }
    }

    /// A job is about its creator and whoever its input names as `user_id`: none of them may be an erased user.
    async fn refuse_erased(&self, caller: &Identity, input: &serde_json::Value) -> Result<(), Problem> {
        self.suppressions.refuse_any("the caller", [caller.user_id.as_str()]).await?;
        let named = input.get("user_id").and_then(|u| u.as_str());
        self.suppressions.refuse_any("/input/user_id", named).await
    }

    /// The job `id` as the caller may see it: their organization's, or any for a platform admin.
    async fn find(&self, caller: &Identity, request: &Request) -> Result<Versioned, Problem> {
        let id = http::path_param(request, "id").filter(|id| ulid::Ulid::from_string(id).is_ok());
        let Some(id) = id else { return Err(Problem::not_found("no such job")) };
        let org = if caller.has_role(Role::PlatformAdmin) {
            self.jobs.owner(id).await.map_err(port)?.unwrap_or_else(|| caller.org_id.clone())
        } else {
            caller.org_id.clone()
        };
        let found = self.jobs.get(&org, id).await.map_err(port)?;
        found.filter(|found| self.visible(caller, &found.job)).ok_or_else(|| Problem::not_found("no such job"))
    }

    /// Jobs of a type only Keel's own routes start (a GDPR export, whose input names the user it is about) are
    /// platform admins' to see here; to everyone else they are as absent as a job that never was.
    fn visible(&self, caller: &Identity, job: &Job) -> bool {
        let keel_only = self.registry.get(&job.job_type).is_some_and(|t| t.creators == Creators::Keel);
        !keel_only || caller.has_role(Role::PlatformAdmin)
    }

    async fn show(&self, call: &Call) -> Result<Response, Problem> {
        let found = self.find(call.identity()?, &call.request).await?;
        let output = match found.job.status {
            Status::Completed => self.jobs.output(&found.job.org_id, &found.job.id).await.map_err(port)?,
            _ => None,
        };
        Ok(http::json(200, &JobDetail { job: found.job, output }))
    }

    async fn list(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let request = &call.request;
        let org = match http::query_param(request, "org_id") {
            Some(org) if caller.has_role(Role::PlatformAdmin) => {
                if !valid_org(org) {
                    return Err(Problem::invalid_param("org_id", "not an organization id"));
                }
                org.to_string()
            }
            // A member naming another organization sees their own: the parameter is the operators'.
            _ => caller.org_id.clone(),
        };
        let status = match http::query_param(request, "status") {
            None => None,
            Some(raw) => Some(Status::parse(raw).ok_or_else(|| {
                Problem::invalid_param("status", "one of pending, processing, completed, failed, cancelled")
            })?),
        };
        let limit = http::limit_param(request, DEFAULT_LIMIT, keel_jobs::store::MAX_LIST_LIMIT)?;
        let after = http::cursor_param(request, "cursor", |sk| ulid::Ulid::from_string(sk).is_ok())?;
        let filter = Filter {
            status,
            job_type: http::query_param(request, "type").map(str::to_string),
            category: http::query_param(request, "category").map(str::to_string),
            user_id: http::query_param(request, "user_id").map(str::to_string),
            created_from: time_param(request, "created_from")?,
            created_to: time_param(request, "created_to")?,
        };
        let mut page = self.jobs.list(&org, &filter, after, limit).await.map_err(port)?;
        page.jobs.retain(|job| self.visible(caller, job));
        let next_cursor = page.next.as_deref().map(http::encode_cursor);
        Ok(http::json(200, &JobPage { items: page.jobs, next_cursor }))
    }

    async fn publish(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let body: EventBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        if serde_json::to_vec(&body.data).map_or(0, |data| data.len()) > events::MAX_DOMAIN_DATA {
            return Err(Problem::new(413, "data_too_large", format!("data is over {} bytes", events::MAX_DOMAIN_DATA))
                .at("/data"));
        }
        let mut errors = Vec::new();
        if !events::valid_domain_type(&body.event_type) {
            errors.push(field("/type", "1 to 128 of [a-z0-9._-], starting with a letter or digit, and not job.*"));
        }
        if body.id.as_deref().is_some_and(|id| !events::valid_domain_id(id)) {
            errors.push(field("/id", "1 to 128 of [A-Za-z0-9._:-]"));
        }
        if !body.data.is_object() {
            errors.push(field("/data", "a JSON object"));
        }
        if !errors.is_empty() {
            return Err(Problem::invalid("invalid_event", errors));
        }
        let (event, new) =
            self.jobs.domain_event(&caller.org_id, body.id, &body.event_type, body.data).await.map_err(backend)?;
        Ok(http::json(if new { 202 } else { 200 }, &event))
    }

    async fn feed(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let request = &call.request;
        let after = http::cursor_param(request, "after", |position| ulid::Ulid::from_string(position).is_ok())?;
        let limit = http::limit_param(request, DEFAULT_LIMIT, keel_jobs::store::MAX_LIST_LIMIT)?;
        let (page, _) = self.jobs.feed(&caller.org_id, after.clone(), limit).await.map_err(port)?;
        let next = page.last().map(|(position, _)| position.clone()).or(after);
        let items = page.into_iter().map(|(_, event)| FeedItem { event }).collect();
        Ok(http::json(200, &FeedPage { items, next_cursor: next.as_deref().map(http::encode_cursor) }))
    }

    async fn callback(&self, call: &Call) -> Result<Response, Problem> {
        let no_attempt = || Problem::not_found("no attempt waits for a report with this token");
        let token = http::header(&call.request, CALLBACK_TOKEN_HEADER).ok_or_else(no_attempt)?;
        let body: CallbackBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_report")?;
        if body
            .output
            .as_ref()
            .and_then(|output| serde_json::to_vec(output).ok())
            .is_some_and(|o| o.len() > MAX_PAYLOAD_BYTES)
        {
            return Err(Problem::new(413, "output_too_large", format!("the output is over {MAX_PAYLOAD_BYTES} bytes"))
                .at("/output"));
        }
        let found = self.jobs.by_callback_token(token).await.map_err(port)?.ok_or_else(no_attempt)?;
        let job_type = self.registry.get(&found.job.job_type).ok_or_else(no_attempt)?;
        let report_within = job_type.executor.report_within.ok_or_else(no_attempt)?;
        let report_within = Duration::from_std(report_within).unwrap_or(Duration::minutes(5));
        let fence = found.job.fence;
        let (outcome, output, error) = match body.state {
            ReportState::Progress => {
                let job = self.jobs.report_progress(found, report_within).await.map_err(backend)?.job;
                return Ok(http::json(200, &job));
            }
            ReportState::Completed => (Outcome::Succeeded, body.output, None),
            ReportState::Failed if body.retry => (Outcome::Retriable, None, body.error),
            ReportState::Failed => (Outcome::Failed, None, body.error),
        };
        let end = AttemptEnd { outcome, downstream_status: Some(202), error, output };
        let retry_at = self.jobs.now() + Duration::from_std(job_type.retry_base).unwrap_or(Duration::seconds(10));
        let done = self
            .jobs
            .end_attempt(found, fence, end, job_type, retry_at)
            .await
            .map_err(backend)?
            .ok_or_else(no_attempt)?;
        if done.job.status == Status::Pending {
            // The next attempt needs a message: the worker let go of this one when the service accepted it.
            self.jobs.send(&done.job, 0).await.map_err(port)?;
        }
        Ok(http::json(200, &done.job))
    }

    async fn breakers(&self) -> Result<Response, Problem> {
        let items = self.breakers.list().await.map_err(port)?;
        Ok(http::json(200, &BreakerList { items }))
    }

    async fn cancel(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let found = self.find(caller, &call.request).await?;
        if !may_act_on(caller, &found.job) {
            return Err(Problem::forbidden("only the job's creator or an org admin may cancel it"));
        }
        // A cancel is audited under its actor: not an erased one.
        self.suppressions.refuse_any("the caller", [caller.user_id.as_str()]).await?;
        let job = self.jobs.cancel(&found.job.org_id, &found.job.id, &caller.user_id).await.map_err(backend)?;
        if job.awaiting_callback() {
            // No worker holds a callback job its service has accepted: a message brings one to tell the service.
            self.jobs.send(&job, 0).await.map_err(port)?;
        }
        Ok(http::json(202, &job))
    }

    async fn retry(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let found = self.find(caller, &call.request).await?;
        let old = &found.job;
        if !may_act_on(caller, old) {
            return Err(Problem::forbidden("only the job's creator or an org admin may retry it"));
        }
        if !matches!(old.status, Status::Failed | Status::Cancelled) {
            return Err(Problem::new(409, "not_retriable", "only a failed or cancelled job can be retried"));
        }
        if let Some(by) = &old.retried_by {
            return Err(Problem::new(409, "already_retried", format!("the job was retried already, by job {by}")));
        }
        let job_type = self.runnable(caller, &old.job_type, "the job's type no longer exists")?;
        self.refuse_erased(caller, &old.input).await?;
        let new = NewJob {
            job_type: old.job_type.clone(),
            input: old.input.clone(),
            run_at: None,
            dedup_key: None,
            session_id: old.session_id.clone(),
            skills: old.skills.clone(),
            metadata: old.metadata.clone(),
            trace_header: call.invocation.trace_header.clone(),
            trace_id: call.invocation.trace_id().map(str::to_string),
        };
        let org = old.org_id.clone();
        match self.jobs.create(&org, &caller.user_id, job_type, new, Some(found)).await.map_err(backend)? {
            Created::New(job) | Created::Existing(job) => Ok(http::json(202, &job)),
        }
    }
}
