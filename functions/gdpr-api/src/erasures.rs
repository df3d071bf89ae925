//! Erasures (GDPR Art. 17): a user's of their own account, and a platform admin's of any user, with a reason. Each
//! runs as a `gdpr.erase` job (`keel_gdpr::erasure` says what it guarantees); a dry run answers what it would do
//! and what blocks it, changing nothing. The last admin of an organization with other members is refused (409
//! `last_admin`, naming the organizations) until they hand it over; an organization they are alone in goes with
//! them. Suppression, which keeps an erased user erased, is lifted by platform admins, audited.

use crate::{GdprApi, port_problem};
use chrono::{DateTime, Utc};
use keel::audit::AuditEntry;
use keel::http::{self, Response};
use keel::openapi::{Content, Doc, Param, Reply, schema};
use keel::problem::{FieldError, Problem};
use keel::route::Call;
use keel_gdpr::erasure::{ErasureRecord, Plan, Receipt, StartError};
use keel_jobs::Status;
use serde::{Deserialize, Serialize};

const MAX_BODY_BYTES: usize = 4 * 1024;
const MAX_REASON_CHARS: usize = 500;

/// An erasure as its requester sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErasureView {
    pub id: String,
    /// `pending` or `processing` while it runs; `completed` with the receipt; `failed` with the error.
    pub status: Status,
    pub requested_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Organizations erased with the user, who was their only member.
    pub orgs_erased: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// An erasure as platform admins see it: who asked and why, and whom it erases while it runs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminErasureView {
    #[serde(flatten)]
    pub erasure: ErasureView,
    /// The user, until the erasure completes (then only the pseudonym remains).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub pseudonym: String,
    pub requested_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseMeBody {
    /// The caller's own user id, typed out: the confirmation that they mean it.
    pub confirm: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminEraseBody {
    pub user_id: String,
    /// Why: kept in the audit trail with the request.
    pub reason: String,
    /// The user id again, as the confirmation (not needed for a dry run).
    #[serde(default)]
    pub confirm: Option<String>,
    /// Organizations to look in besides those the directory lists for the user (at most 100).
    #[serde(default)]
    pub org_ids: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftBody {
    pub user_id: String,
    pub reason: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Lifted {
    /// The suppression's keyed hash.
    pub suppression: String,
    /// The erasure that suppressed the user.
    pub erasure_id: String,
}

const ID: Param = Param::path("id", "The erasure's id.");
const DRY_RUN: Param = Param::query(
    "dry_run",
    "Answer what the erasure would delete and pseudonymize per data-map entry, and what blocks it; change nothing.",
    keel::openapi::inline::<bool>,
);
const LAST_ADMIN: Reply = Reply::problem(
    409,
    "`last_admin`: the user is the last admin of organizations that have other members, listed in `organizations`; \
     make another member admin first.",
);

pub const ERASE_ME: Doc = Doc {
    summary: "Erase my account",
    description: "Erases everything Keel holds about the caller (GDPR Art. 17), as the data map says for each \
        entry: deleted, or pseudonymized where a trail keeps its shape. Confirm with `{\"confirm\": \"<your user \
        id>\"}`. Runs as a job: the answer's id is read at `GET /v1/user/erasures/{id}`, which gives the receipt \
        when done. An erasure of the caller already running is answered instead. Afterwards Keel refuses new \
        data about the caller until a platform admin lifts the suppression.",
    params: &[DRY_RUN],
    body: Some(Content::Json(schema::<EraseMeBody>)),
    replies: &[
        Reply::json(202, "The erasure, started (or already running).", schema::<ErasureView>),
        Reply::json(200, "With `dry_run=true`: the plan, nothing changed.", schema::<Plan>),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(413, "The body is over 4 KB."),
        Reply::problem(422, "`confirm` is not the caller's user id."),
        LAST_ADMIN,
    ],
    ..Doc::NONE
};
pub const SHOW_MINE: Doc = Doc {
    summary: "An erasure of my account",
    description: "Its status and, once completed, the receipt. Readable by the erased user's token afterwards.",
    params: &[ID],
    replies: &[
        Reply::json(200, "The erasure.", schema::<ErasureView>),
        Reply::problem(404, "No erasure of the caller has this id."),
    ],
    ..Doc::NONE
};
pub const ADMIN_START: Doc = Doc {
    summary: "Erase a user",
    description: "Platform admins: erases any user, giving a reason and the user id again as `confirm`. The \
        request is audited (`gdpr.erasure.request`) before the erasure starts. `dry_run=true` answers the plan.",
    params: &[DRY_RUN],
    body: Some(Content::Json(schema::<AdminEraseBody>)),
    replies: &[
        Reply::json(202, "The erasure, started (or already running).", schema::<AdminErasureView>),
        Reply::json(200, "With `dry_run=true`: the plan, nothing changed.", schema::<Plan>),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(413, "The body is over 4 KB."),
        Reply::problem(422, "A bad user id, reason, organization or confirmation (`pointer` names it)."),
        LAST_ADMIN,
    ],
    ..Doc::NONE
};
pub const ADMIN_SHOW: Doc = Doc {
    summary: "An erasure",
    description: "Platform admins: any erasure, with who asked, why, and its receipt once completed.",
    params: &[ID],
    replies: &[
        Reply::json(200, "The erasure.", schema::<AdminErasureView>),
        Reply::problem(404, "No erasure has this id."),
    ],
    ..Doc::NONE
};
pub const LIFT: Doc = Doc {
    summary: "Lift a user's suppression",
    description: "Platform admins: after an erasure, Keel refuses new data about the user (409 `erased_user`); \
        this lets it in again, for a user who came back. Audited (`gdpr.suppression.lift`, with the reason, \
        naming the suppression's hash, not the user).",
    body: Some(Content::Json(schema::<LiftBody>)),
    replies: &[
        Reply::json(200, "Lifted.", schema::<Lifted>),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(404, "The user is not suppressed."),
        Reply::problem(422, "A bad user id or reason (`pointer` names it)."),
    ],
    ..Doc::NONE
};

fn check_reason(reason: &str, errors: &mut Vec<FieldError>) {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        errors.push(FieldError {
            pointer: "/reason".into(),
            message: format!("1 to {MAX_REASON_CHARS} characters, without control characters"),
        });
    }
}

fn confirmation(pointer: &str) -> FieldError {
    FieldError { pointer: pointer.into(), message: "the user id of the user to erase, typed out".into() }
}

/// 409 `last_admin`, with the organizations as a problem extension member.
fn last_admin(orgs: Vec<String>) -> Response {
    let problem = Problem::new(
        409,
        "last_admin",
        format!(
            "the user is the last admin of {} organization(s) that have other members: make another member admin, \
             then erase",
            orgs.len()
        ),
    );
    let mut body = serde_json::to_value(&problem).unwrap_or_default();
    body["organizations"] = serde_json::json!(orgs);
    http::response(409, "application/problem+json", body.to_string())
}

impl GdprApi {
    async fn view(&self, record: &ErasureRecord) -> Result<ErasureView, Problem> {
        let job = self.erasures.job(record).await.map_err(port_problem)?;
        let status = match (&record.receipt, &job) {
            (Some(_), _) => Status::Completed,
            (None, Some(job)) => job.status,
            (None, None) => Status::Pending,
        };
        Ok(ErasureView {
            id: record.id.clone(),
            status,
            requested_at: record.requested_at,
            finished_at: record.receipt.as_ref().map(|r| r.completed_at).or(job.as_ref().and_then(|j| j.finished_at)),
            error: job.and_then(|j| j.error).map(|e| e.message),
            orgs_erased: record.orgs_alone.clone(),
            receipt: record.receipt.clone(),
        })
    }

    async fn admin_view(&self, record: &ErasureRecord) -> Result<AdminErasureView, Problem> {
        Ok(AdminErasureView {
            erasure: self.view(record).await?,
            user_id: record.user_id.clone(),
            pseudonym: record.pseudonym.clone(),
            requested_by: record.requested_by.clone(),
            reason: record.reason.clone(),
        })
    }

    /// The erasure started (or already running), or the response refusing it.
    fn started(&self, outcome: Result<(ErasureRecord, bool), StartError>) -> Result<ErasureRecord, Response> {
        outcome.map(|(record, _)| record).map_err(|error| match error {
            StartError::LastAdmin(orgs) => last_admin(orgs),
            StartError::Port(error) => port_problem(error).into_response(),
        })
    }

    pub(crate) async fn erase_me(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let orgs = std::slice::from_ref(&caller.org_id);
        if http::bool_param(&call.request, "dry_run")?.unwrap_or(false) {
            let plan = self.erasures.plan(&caller.user_id, orgs).await.map_err(port_problem)?;
            return Ok(http::json(200, &plan));
        }
        let body: EraseMeBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        if body.confirm != caller.user_id {
            return Err(Problem::invalid("confirmation_required", vec![confirmation("/confirm")]));
        }
        let entry = AuditEntry::new(
            self.clock.now(),
            &caller.user_id,
            None,
            "gdpr.erasure.request",
            format!("user:{}", caller.user_id),
        );
        self.directory.record(&entry).await.map_err(crate::directory_problem)?;
        let trace = call.invocation.trace_header.clone();
        let outcome = self.erasures.start(&caller.user_id, &caller.user_id, None, orgs, trace).await;
        let record = match self.started(outcome) {
            Ok(record) => record,
            Err(response) => return Ok(response),
        };
        Ok(http::json(202, &self.view(&record).await?))
    }

    /// The erasure `id`, if it is of the caller (its pseudonym is the caller's).
    pub(crate) async fn show_mine(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let pseudonym = self.erasures.suppressions().pseudonym(&caller.user_id);
        let record = self.find(call).await?.filter(|record| record.pseudonym == pseudonym);
        let record = record.ok_or_else(|| Problem::not_found("no such erasure"))?;
        Ok(http::json(200, &self.view(&record).await?))
    }

    async fn find(&self, call: &Call) -> Result<Option<ErasureRecord>, Problem> {
        let id = http::path_param(&call.request, "id").filter(|id| ulid::Ulid::from_string(id).is_ok());
        let Some(id) = id else { return Ok(None) };
        Ok(self.erasures.get(id).await.map_err(port_problem)?.map(|(record, _)| record))
    }

    pub(crate) async fn admin_erase(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let dry_run = http::bool_param(&call.request, "dry_run")?.unwrap_or(false);
        let body: AdminEraseBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        let mut errors = Vec::new();
        if let Err(error) = keel_gdpr::directory::check_id("/user_id", &body.user_id) {
            errors.push(error);
        }
        check_reason(&body.reason, &mut errors);
        if body.org_ids.len() > 100 {
            errors.push(FieldError { pointer: "/org_ids".into(), message: "at most 100 organizations".into() });
        }
        for (i, org) in body.org_ids.iter().enumerate() {
            if let Err(error) = keel_gdpr::directory::check_org_id(&format!("/org_ids/{i}"), org) {
                errors.push(error);
            }
        }
        if !dry_run && body.confirm.as_deref() != Some(body.user_id.as_str()) {
            errors.push(confirmation("/confirm"));
        }
        if !errors.is_empty() {
            return Err(Problem::invalid("invalid_field", errors));
        }
        if dry_run {
            let plan = self.erasures.plan(&body.user_id, &body.org_ids).await.map_err(port_problem)?;
            return Ok(http::json(200, &plan));
        }
        let reason = body.reason.trim();
        let mut entry = AuditEntry::new(
            self.clock.now(),
            &caller.user_id,
            None,
            "gdpr.erasure.request",
            format!("user:{}", body.user_id),
        )
        .about(&body.user_id);
        entry.reason = Some(reason.to_string());
        self.directory.record(&entry).await.map_err(crate::directory_problem)?;
        let trace = call.invocation.trace_header.clone();
        let outcome = self.erasures.start(&body.user_id, &caller.user_id, Some(reason), &body.org_ids, trace).await;
        let record = match self.started(outcome) {
            Ok(record) => record,
            Err(response) => return Ok(response),
        };
        Ok(http::json(202, &self.admin_view(&record).await?))
    }

    pub(crate) async fn admin_show_erasure(&self, call: &Call) -> Result<Response, Problem> {
        call.identity()?;
        let record = self.find(call).await?.ok_or_else(|| Problem::not_found("no such erasure"))?;
        Ok(http::json(200, &self.admin_view(&record).await?))
    }

    pub(crate) async fn lift(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let body: LiftBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        let mut errors = Vec::new();
        if let Err(error) = keel_gdpr::directory::check_id("/user_id", &body.user_id) {
            errors.push(error);
        }
        check_reason(&body.reason, &mut errors);
        if !errors.is_empty() {
            return Err(Problem::invalid("invalid_field", errors));
        }
        let suppressions = self.erasures.suppressions();
        let hash = suppressions.hash(&body.user_id);
        let Some(suppression) = suppressions.get(&hash).await.map_err(port_problem)? else {
            return Err(Problem::not_found("the user is not suppressed"));
        };
        let mut entry = AuditEntry::new(
            self.clock.now(),
            &caller.user_id,
            None,
            "gdpr.suppression.lift",
            format!("suppression:{hash}"),
        );
        entry.reason = Some(body.reason.trim().to_string());
        let writes = entry.writes().map_err(port_problem)?;
        if !suppressions.lift(&hash, writes).await.map_err(port_problem)? {
            return Err(Problem::not_found("the user is not suppressed"));
        }
        Ok(http::json(200, &Lifted { suppression: hash, erasure_id: suppression.erasure_id }))
    }
}
