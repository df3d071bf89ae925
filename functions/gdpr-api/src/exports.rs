//! A user's exports of their own data: each runs as a `gdpr.export` job (status, retries and events as any job);
//! a finished one answers a download link valid 15 minutes, made fresh on every read.

use crate::{GdprApi, directory_problem, port_problem};
use chrono::{DateTime, Duration, Utc};
use keel::audit::AuditEntry;
use keel::http::{self, Response};
use keel::identity::Identity;
use keel::openapi::Content;
use keel::openapi::{Doc, Param, Reply, schema};
use keel::problem::FieldError;
use keel::problem::Problem;
use keel::route::Call;
use keel_gdpr::export::{ADMIN_EXPORTS_ORG, LINK_VALIDITY, Output, TASK};
use keel_jobs::{Created, Filter, Job, JobsError, NewJob, Status};
use serde::Deserialize;
use serde::Serialize;

/// How far back `GET /v1/user/data-export` looks for an export before starting one.
const RECENT: Duration = Duration::hours(24);

#[derive(Serialize, utoipa::ToSchema)]
pub struct DataExport {
    /// The export's id (its job's).
    pub id: String,
    /// Whose data it is.
    pub user_id: String,
    /// `pending` or `processing` while it runs; `completed` with a download; `failed` with the error.
    pub status: Status,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<Download>,
    /// What the bundle holds, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Output>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Download {
    /// A zip: `manifest.json` and one JSON Lines file per data-map entry.
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

const ID: Param = Param::path("id", "The export's id.");
const NO_EXPORT: Reply = Reply::problem(404, "No export of the caller's has this id.");

pub const START: Doc = Doc {
    summary: "Export my data",
    description: "Starts an export of everything Keel holds about the caller (GDPR Art. 15 and 20). An export of \
        theirs still running is returned instead (200).",
    replies: &[
        Reply::json(202, "The export, started.", schema::<DataExport>),
        Reply::json(200, "The caller's export that is still running.", schema::<DataExport>),
    ],
    ..Doc::NONE
};
pub const SHOW: Doc = Doc {
    summary: "An export of my data",
    description: "Its status and, once completed, a download link valid 15 minutes (a new one on every read).",
    params: &[ID],
    replies: &[Reply::json(200, "The export.", schema::<DataExport>), NO_EXPORT],
    ..Doc::NONE
};
pub const LATEST: Doc = Doc {
    summary: "My latest data export",
    description: "The caller's latest export from the last 24 hours, or a new one started when there is none.",
    replies: &[
        Reply::json(200, "The latest export.", schema::<DataExport>),
        Reply::json(202, "None in the last 24 hours: one has started.", schema::<DataExport>),
    ],
    ..Doc::NONE
};

fn is_export_of(job: &Job, subject: &str) -> bool {
    job.job_type == TASK && job.input["user_id"].as_str() == Some(subject)
}

fn jobs_problem(error: JobsError) -> Problem {
    match error {
        JobsError::NotFound => Problem::not_found("no such export"),
        JobsError::Conflict(detail) => Problem::new(409, "conflict", detail),
        JobsError::Contended => Problem::new(409, "contended", "too many concurrent changes; retry"),
        JobsError::Backend(error) => port_problem(error),
    }
}

impl GdprApi {
    /// Starts an export of `subject` (in `org_ids` and the organizations the directory lists for them) as a job of
    /// the caller's organization and the caller's, or returns the subject's export still running there.
    async fn start_export(
        &self,
        caller: &Identity,
        call: &Call,
        org: &str,
        subject: &str,
        org_ids: &[String],
    ) -> Result<(Job, bool), Problem> {
        let job_type = self.registry.get(TASK).ok_or_else(|| {
            tracing::error!("the registry has no {TASK} type");
            Problem::unavailable()
        })?;
        let new = NewJob {
            job_type: TASK.to_string(),
            input: serde_json::json!({"user_id": subject, "org_ids": org_ids}),
            // One running export per user: asking again while it runs returns it.
            dedup_key: Some(format!("{}{TASK}:{subject}", keel_jobs::RESERVED_DEDUP_PREFIX)),
            trace_header: call.invocation.trace_header.clone(),
            trace_id: call.invocation.trace_id().map(str::to_string),
            ..NewJob::default()
        };
        match self.jobs.create(org, &caller.user_id, job_type, new, None).await.map_err(jobs_problem)? {
            Created::New(job) => Ok((job, true)),
            // The key is reserved to this route, so its holder is an export of the subject; checked all the same.
            Created::Existing(job) if is_export_of(&job, subject) => Ok((job, false)),
            Created::Existing(job) => {
                tracing::error!(job_id = %job.id, "a reserved export key is held by another job");
                Err(Problem::new(409, "conflict", "an export cannot start now; retry later"))
            }
        }
    }

    async fn describe(&self, job: Job) -> Result<DataExport, Problem> {
        let mut export = DataExport {
            id: job.id.clone(),
            user_id: job.input["user_id"].as_str().unwrap_or_default().to_string(),
            status: job.status,
            created_at: job.created_at,
            finished_at: job.finished_at,
            error: job.error.as_ref().map(|e| e.message.clone()),
            download: None,
            bundle: None,
        };
        if job.status == Status::Completed {
            let output = self.jobs.output(&job.org_id, &job.id).await.map_err(port_problem)?;
            let bundle: Option<Output> = output.and_then(|value| serde_json::from_value(value).ok());
            // A bundle past its retention is deleted (or about to be): no link to nothing.
            let kept = |bundle: &Output| bundle.created_at + keel_gdpr::export::BUNDLE_RETENTION > self.clock.now();
            if let Some(bundle) = bundle.filter(kept) {
                let url = self.objects.link(&bundle.bundle_key, LINK_VALIDITY).await.map_err(port_problem)?;
                let expires_at = self.clock.now() + Duration::seconds(LINK_VALIDITY.as_secs() as i64);
                export.download = Some(Download { url, expires_at });
                export.bundle = Some(bundle);
            }
        }
        Ok(export)
    }

    pub(crate) async fn start(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let (job, new) = self
            .start_export(caller, call, &caller.org_id, &caller.user_id, std::slice::from_ref(&caller.org_id))
            .await?;
        Ok(http::json(if new { 202 } else { 200 }, &self.describe(job).await?))
    }

    pub(crate) async fn show_export(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let id = http::path_param(&call.request, "id").filter(|id| ulid::Ulid::from_string(id).is_ok());
        let Some(id) = id else { return Err(Problem::not_found("no such export")) };
        let found = self.jobs.get(&caller.org_id, id).await.map_err(port_problem)?;
        // Another user's export, or a job that is not an export, is as absent as one that never was.
        let job = found
            .map(|versioned| versioned.job)
            .filter(|job| {
                job.job_type == TASK && job.user_id == caller.user_id && job.input["user_id"] == caller.user_id
            })
            .ok_or_else(|| Problem::not_found("no such export"))?;
        Ok(http::json(200, &self.describe(job).await?))
    }

    pub(crate) async fn latest(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let filter = Filter {
            job_type: Some(TASK.to_string()),
            user_id: Some(caller.user_id.clone()),
            created_from: Some(self.clock.now() - RECENT),
            ..Filter::default()
        };
        // A filtered page may come back empty with more to read: keep going until one matches or none is left.
        let mut after = None;
        let newest = loop {
            let page = self.jobs.list(&caller.org_id, &filter, after, keel_jobs::store::MAX_LIST_LIMIT);
            let page = page.await.map_err(port_problem)?;
            // The newest export the caller made of themselves (one a platform admin made of someone is not theirs).
            match (page.jobs.into_iter().find(|job| is_export_of(job, &caller.user_id)), page.next) {
                (Some(job), _) => break Some(job),
                (None, Some(next)) => after = Some(next),
                (None, None) => break None,
            }
        };
        match newest {
            Some(job) => Ok(http::json(200, &self.describe(job).await?)),
            None => {
                let (job, _) = self
                    .start_export(caller, call, &caller.org_id, &caller.user_id, std::slice::from_ref(&caller.org_id))
                    .await?;
                Ok(http::json(202, &self.describe(job).await?))
            }
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminExportBody {
    /// The user whose data to export.
    pub user_id: String,
    /// Why: kept in the audit trail with the request.
    pub reason: String,
    /// Organizations to look in besides those the directory lists for the user (at most 100).
    #[serde(default)]
    pub org_ids: Vec<String>,
}

const MAX_REASON_CHARS: usize = 500;
const MAX_BODY_BYTES: usize = 4 * 1024;

pub const ADMIN_START: Doc = Doc {
    summary: "Export a user's data",
    description: "Platform admins: starts an export of any user, giving a reason. The request is audited \
        (`gdpr.export.request`, with the reason) before the export starts. The export runs in the caller's \
        organization and is read at `GET /v1/admin/gdpr/exports/{id}`.",
    body: Some(Content::Json(schema::<AdminExportBody>)),
    replies: &[
        Reply::json(202, "The export, started.", schema::<DataExport>),
        Reply::json(
            200,
            "An export of that user still running, started from the caller's organization.",
            schema::<DataExport>,
        ),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(413, "The body is over 4 KB."),
        Reply::problem(422, "A bad user id or reason (`pointer` names it)."),
    ],
    ..Doc::NONE
};
pub const ADMIN_SHOW: Doc = Doc {
    summary: "An export of a user's data",
    description: "Platform admins: an export started from the caller's organization, with its download link.",
    params: &[ID],
    replies: &[Reply::json(200, "The export.", schema::<DataExport>), NO_EXPORT],
    ..Doc::NONE
};

impl GdprApi {
    pub(crate) async fn admin_start(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let body: AdminExportBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        let mut errors = Vec::new();
        if let Err(error) = keel_gdpr::directory::check_id("/user_id", &body.user_id) {
            errors.push(error);
        }
        if body.org_ids.len() > 100 {
            errors.push(FieldError { pointer: "/org_ids".into(), message: "at most 100 organizations".into() });
        }
        for (i, org) in body.org_ids.iter().enumerate() {
            if let Err(error) = keel_gdpr::directory::check_org_id(&format!("/org_ids/{i}"), org) {
                errors.push(error);
            }
        }
        let reason = body.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            errors.push(FieldError {
                pointer: "/reason".into(),
                message: format!("1 to {MAX_REASON_CHARS} characters, without control characters"),
            });
        }
        if !errors.is_empty() {
            return Err(Problem::invalid("invalid_field", errors));
        }
        let mut entry = AuditEntry::new(
            self.clock.now(),
            &caller.user_id,
            None,
            "gdpr.export.request",
            format!("user:{}", body.user_id),
        )
        .about(&body.user_id);
        entry.reason = Some(reason.to_string());
        self.directory.record(&entry).await.map_err(directory_problem)?;
        let (job, new) = self.start_export(caller, call, ADMIN_EXPORTS_ORG, &body.user_id, &body.org_ids).await?;
        Ok(http::json(if new { 202 } else { 200 }, &self.describe(job).await?))
    }

    pub(crate) async fn admin_show(&self, call: &Call) -> Result<Response, Problem> {
        call.identity()?;
        let id = http::path_param(&call.request, "id").filter(|id| ulid::Ulid::from_string(id).is_ok());
        let Some(id) = id else { return Err(Problem::not_found("no such export")) };
        let found = self.jobs.get(ADMIN_EXPORTS_ORG, id).await.map_err(port_problem)?;
        let job = found
            .map(|versioned| versioned.job)
            .filter(|job| job.job_type == TASK)
            .ok_or_else(|| Problem::not_found("no such export"))?;
        Ok(http::json(200, &self.describe(job).await?))
    }
}
