//! `GET /v1/audit-logs`: every capability's audit trail merged into one, newest first. Platform admins read
//! everything (or one organization's, with `org_id`); an organization's admins (in the directory) read their
//! organization's; every other caller reads their own actions.

use crate::{GdprApi, port_problem};
use chrono::{DateTime, Utc};
use keel::audit::{self, AuditEntry, AuditQuery, Scope, Trail};
use keel::http::{self, Request, Response};
use keel::identity::Role;
use keel::openapi::{Doc, Param, Reply, inline, schema};
use keel::problem::Problem;
use keel::route::Call;
use keel_gdpr::directory::OrgRole;
use serde::Serialize;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditLogPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

pub const LIST: Doc = Doc {
    summary: "The audit log",
    description: "Every capability's audit entries, newest first: what the caller may see (platform admins \
        everything, an organization's admins their organization's, anyone else their own actions), filtered. A \
        page may hold fewer than `limit` entries while `next_cursor` is set.",
    params: &[
        Param::query("action", "Only this action (`directory.member.set`, `flags.update`, ...).", inline::<String>),
        Param::query("actor", "Only this actor's.", inline::<String>),
        Param::query("resource", "Only this resource and what it contains (`org:acme`).", inline::<String>),
        Param::query("from", "Only entries at or after this instant (RFC 3339).", inline::<String>),
        Param::query("to", "Only entries at or before this instant (RFC 3339).", inline::<String>),
        Param::query("org_id", "Platform admins: only this organization's entries.", inline::<String>),
        Param::query("limit", "Page size, 1 to 100 (50 when absent).", inline::<u32>),
        Param::query("cursor", "`next_cursor` of the previous page.", inline::<String>),
    ],
    replies: &[
        Reply::json(200, "A page of the audit log.", schema::<AuditLogPage>),
        Reply::problem(422, "A filter or the cursor is invalid (`pointer` names it)."),
    ],
    ..Doc::NONE
};

fn text_param(request: &Request, name: &str) -> Result<Option<String>, Problem> {
    match http::query_param(request, name) {
        None => Ok(None),
        Some(value) if !value.is_empty() && value.chars().count() <= 512 && !value.chars().any(char::is_control) => {
            Ok(Some(value.to_string()))
        }
        Some(_) => Err(Problem::invalid_param(name, format!("{name} is 1 to 512 characters"))),
    }
}

fn time_param(request: &Request, name: &str) -> Result<Option<DateTime<Utc>>, Problem> {
    let Some(raw) = http::query_param(request, name) else { return Ok(None) };
    DateTime::parse_from_rfc3339(raw)
        .map(|at| Some(at.with_timezone(&Utc)))
        .map_err(|_| Problem::invalid_param(name, format!("{name} must be an RFC 3339 timestamp")))
}

impl GdprApi {
    pub(crate) async fn audit_logs(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let request = &call.request;
        let org_filter = text_param(request, "org_id")?;
        let scope = if caller.has_role(Role::PlatformAdmin) {
            org_filter.map_or(Scope::All, Scope::Org)
        } else {
            let membership = self.directory.membership(&caller.org_id, &caller.user_id).await;
            let membership = membership.map_err(crate::directory_problem)?;
            match membership {
                Some(m) if m.role == OrgRole::Admin => Scope::Org(caller.org_id.clone()),
                _ => Scope::Actor(caller.user_id.clone()),
            }
        };
        let mut query = AuditQuery::new(scope, http::limit_param(request, DEFAULT_LIMIT, MAX_LIMIT)?);
        query.action = text_param(request, "action")?;
        query.actor = text_param(request, "actor")?;
        query.resource = text_param(request, "resource")?;
        query.from = time_param(request, "from")?;
        query.to = time_param(request, "to")?;
        query.before = http::cursor_param(request, "cursor", |id| ulid::Ulid::from_string(id).is_ok())?;
        let trails: Vec<&dyn Trail> =
            vec![&self.directory_trail, &self.jobs_trail, &self.webhooks_trail, &self.flags_trail];
        let (entries, next) = audit::read(&trails, &query).await.map_err(port_problem)?;
        Ok(http::json(200, &AuditLogPage { entries, next_cursor: next.as_deref().map(http::encode_cursor) }))
    }
}
