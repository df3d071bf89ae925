//! Organizations and their members.

use crate::{GdprApi, directory_problem};
use keel::http::{self, Request, Response};
use keel::identity::{Identity, Role};
use keel::openapi::{Content, Doc, Param, Reply, inline, schema};
use keel::problem::Problem;
use keel::route::Call;
use keel_gdpr::directory::{Change, Membership, OrgRole, Organization};
use serde::{Deserialize, Serialize};

/// Largest body these routes read.
const MAX_BODY_BYTES: usize = 4 * 1024;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgBody {
    /// 1 to 200 characters.
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    pub role: OrgRole,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberPage {
    pub members: Vec<Membership>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MyOrgs {
    pub memberships: Vec<Membership>,
}

const ORG_ID: Param = Param::path("orgId", "The organization's id, as tokens name it in `org_id`.");
const NO_ORG: Reply = Reply::problem(404, "No such organization, or not the caller's.");
const ADMINS_ONLY: Reply = Reply::problem(403, "Only the organization's admins (or platform admins) may do this.");

pub const PUT: Doc = Doc {
    summary: "Create or rename an organization",
    description: "Platform admins only. Audited.",
    params: &[ORG_ID],
    body: Some(Content::Json(schema::<OrgBody>)),
    replies: &[
        Reply::json(201, "The organization, created.", schema::<Organization>),
        Reply::json(200, "The organization, renamed or unchanged.", schema::<Organization>),
        Reply::problem(400, "The body is missing or not JSON."),
        Reply::problem(413, "The body is over 4 KB."),
        Reply::problem(422, "A bad id or name (`pointer` names it)."),
    ],
    ..Doc::NONE
};
pub const SHOW: Doc = Doc {
    summary: "Read an organization",
    description: "Its name and how many members and admins it has.",
    params: &[ORG_ID],
    replies: &[Reply::json(200, "The organization.", schema::<Organization>), NO_ORG],
    ..Doc::NONE
};
pub const MEMBERS: Doc = Doc {
    summary: "List an organization's members",
    description: "By user id.",
    params: &[
        ORG_ID,
        Param::query("limit", "Page size, 1 to 100 (50 when absent).", inline::<u32>),
        Param::query("cursor", "`next_cursor` of the previous page.", inline::<String>),
    ],
    replies: &[
        Reply::json(200, "A page of members.", schema::<MemberPage>),
        NO_ORG,
        Reply::problem(422, "A bad `limit` or `cursor`."),
    ],
    ..Doc::NONE
};
pub const SET_MEMBER: Doc = Doc {
    summary: "Add a member or change their role",
    description: "The organization's admins and platform admins. Demoting the last admin is refused. Audited.",
    params: &[ORG_ID, Param::path("userId", "The user's id, as tokens name it in `sub`.")],
    body: Some(Content::Json(schema::<MemberBody>)),
    replies: &[
        Reply::json(201, "The membership, created.", schema::<Membership>),
        Reply::json(200, "The membership, changed or unchanged.", schema::<Membership>),
        Reply::problem(400, "The body is missing or not JSON."),
        ADMINS_ONLY,
        NO_ORG,
        Reply::problem(
            409,
            "`last_admin`: the user is the organization's last admin; make another member admin first. \
             `erased_user`: the user was erased, and a platform admin has not lifted the suppression.",
        ),
        Reply::problem(413, "The body is over 4 KB."),
        Reply::problem(422, "A bad user id or role (`pointer` names it)."),
    ],
    ..Doc::NONE
};
pub const REMOVE_MEMBER: Doc = Doc {
    summary: "Remove a member",
    description: "The organization's admins and platform admins, or the member themselves (leaving). The last admin \
        of an organization with other members cannot leave. Audited.",
    params: &[ORG_ID, Param::path("userId", "The user's id.")],
    replies: &[
        Reply::empty(204, "Removed."),
        ADMINS_ONLY,
        Reply::problem(404, "No such organization or member, or not the caller's organization."),
        Reply::problem(409, "`last_admin`: the user is the last admin and other members remain."),
    ],
    ..Doc::NONE
};
pub const MINE: Doc = Doc {
    summary: "The caller's organizations",
    description: "Every membership the directory holds for the caller.",
    replies: &[Reply::json(200, "The caller's memberships.", schema::<MyOrgs>)],
    ..Doc::NONE
};

/// The organization the path names, when the caller may see it; 404 otherwise (another organization's id does not
/// leak whether it exists).
fn visible_org<'a>(caller: &Identity, request: &'a Request) -> Result<&'a str, Problem> {
    let org = http::path_param(request, "orgId").unwrap_or_default();
    if caller.has_role(Role::PlatformAdmin) || caller.org_id == org {
        Ok(org)
    } else {
        Err(Problem::not_found("no such organization"))
    }
}

fn status_of(change: Change) -> u16 {
    if change == Change::Created { 201 } else { 200 }
}

impl GdprApi {
    /// Platform admins manage every organization; otherwise the directory decides: the caller must be an admin of
    /// the organization in it (a token's `admin` role alone is not enough, so an admin who left or was demoted
    /// stops managing at once).
    async fn may_manage(&self, caller: &Identity, org: &str) -> Result<bool, Problem> {
        if caller.has_role(Role::PlatformAdmin) {
            return Ok(true);
        }
        let membership = self.directory.membership(org, &caller.user_id).await.map_err(directory_problem)?;
        Ok(membership.is_some_and(|m| m.role == OrgRole::Admin))
    }

    pub(crate) async fn put_org(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let org = http::path_param(&call.request, "orgId").unwrap_or_default();
        let body: OrgBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        let (organization, change) =
            self.directory.put_org(&caller.user_id, org, &body.name).await.map_err(directory_problem)?;
        Ok(http::json(status_of(change), &organization))
    }

    pub(crate) async fn show_org(&self, call: &Call) -> Result<Response, Problem> {
        let org = visible_org(call.identity()?, &call.request)?;
        let found = self.directory.org(org).await.map_err(directory_problem)?;
        found.map(|org| http::json(200, &org)).ok_or_else(|| Problem::not_found("no such organization"))
    }

    pub(crate) async fn members(&self, call: &Call) -> Result<Response, Problem> {
        let org = visible_org(call.identity()?, &call.request)?;
        let limit = http::limit_param(&call.request, DEFAULT_LIMIT, MAX_LIMIT)?;
        let after = http::cursor_param(&call.request, "cursor", |user| !user.is_empty())?;
        if self.directory.org(org).await.map_err(directory_problem)?.is_none() {
            return Err(Problem::not_found("no such organization"));
        }
        let (members, next) = self.directory.members(org, after.as_deref(), limit).await.map_err(directory_problem)?;
        Ok(http::json(200, &MemberPage { members, next_cursor: next.as_deref().map(http::encode_cursor) }))
    }

    pub(crate) async fn set_member(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let org = visible_org(caller, &call.request)?;
        if !self.may_manage(caller, org).await? {
            return Err(Problem::forbidden("only the organization's admins may change its members"));
        }
        let user = http::path_param(&call.request, "userId").unwrap_or_default();
        let body: MemberBody = http::from_json(http::body_value(&call.request, MAX_BODY_BYTES)?, "invalid_body")?;
        let suppressions = self.erasures.suppressions();
        suppressions.refuse_any("the caller", [caller.user_id.as_str()]).await?;
        suppressions.refuse_any("the path's userId", [user]).await?;
        let (membership, change) =
            self.directory.set_member(&caller.user_id, org, user, body.role).await.map_err(directory_problem)?;
        Ok(http::json(status_of(change), &membership))
    }

    pub(crate) async fn remove_member(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let org = visible_org(caller, &call.request)?;
        let user = http::path_param(&call.request, "userId").unwrap_or_default();
        if caller.user_id != user && !self.may_manage(caller, org).await? {
            return Err(Problem::forbidden("only the organization's admins may remove other members"));
        }
        self.directory.remove_member(&caller.user_id, org, user).await.map_err(directory_problem)?;
        Ok(http::empty(204))
    }

    pub(crate) async fn my_orgs(&self, call: &Call) -> Result<Response, Problem> {
        let caller = call.identity()?;
        let memberships = self.directory.memberships(&caller.user_id).await.map_err(directory_problem)?;
        Ok(http::json(200, &MyOrgs { memberships }))
    }
}
