//! The GDPR API: the data map (platform admins); the directory of organizations and memberships that last-admin
//! protection is decided on; and exports, run as `gdpr.export` jobs: a user's of their own data, and a platform
//! admin's of any user's, with a reason that is audited before the export starts; and the audit log, every
//! capability's trail merged; and erasures, run as `gdpr.erase` jobs (`erasures` says who may erase whom), with
//! the suppression that keeps an erased user out of new data.
//!
//! Who may do what: platform admins create and rename organizations and manage any organization's members; an
//! admin of an organization in the directory manages its members (from a token naming that organization: the
//! directory, not the token's `admin` role, decides, so an admin who leaves or is demoted stops at once); every
//! member reads their own organization (the one the token names) and its members, and may leave it. Another organization answers 404, never
//! 403, so organization ids do not leak; a member of the organization asking for an admin's action gets 403. An
//! organization that has members always keeps an admin: removing or demoting its last admin is 409 `last_admin`.

mod audit;
mod cleanups;
mod datamap;
mod erasures;
mod exports;
mod orgs;

use keel::clock::Clock;
use keel::config::{ConfigError, Env};
use keel::idempotency::Idempotency;
use keel::object::ObjectStore;
use keel::port::PortError;
use keel::problem::Problem;
use keel::ratelimit::RateLimits;
use keel::resources::Resources;
use keel::route::{Access, Api, Route};
use keel_gdpr::directory::{Directory, DirectoryError, TABLE_VAR};
use keel_jobs::{Jobs, Registry};
use std::sync::Arc;

pub struct GdprApi {
    directory: Directory,
    runs: keel::cleanup::Runs,
    erasures: keel_gdpr::erasure::Erasures,
    directory_trail: keel::audit::TableTrail,
    jobs_trail: keel::audit::TableTrail,
    webhooks_trail: keel::audit::TableTrail,
    flags_trail: keel_flags::store::FlagStore,
    jobs: Jobs,
    registry: Registry,
    objects: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    idempotency: Idempotency,
    rate_limits: RateLimits,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<GdprApi, ConfigError> {
    let registry = Registry::sample_unsigned(env)?;
    Ok(GdprApi {
        directory: Directory::new(resources.table(TABLE_VAR)?, resources.clock()),
        runs: keel::cleanup::Runs(resources.table(keel::cleanup::TABLE_VAR)?),
        erasures: keel_gdpr::erasure::Erasures::from_resources(env, resources, registry.clone())?,
        directory_trail: keel::audit::TableTrail(resources.table(TABLE_VAR)?),
        jobs_trail: keel::audit::TableTrail(resources.table(keel_jobs::datamap::TABLE_VAR)?),
        webhooks_trail: keel::audit::TableTrail(resources.table(keel_webhooks::TABLE_VAR)?),
        flags_trail: keel_flags::store::FlagStore::new(
            resources.table(keel_flags::datamap::TABLE_VAR)?,
            resources.clock(),
        ),
        jobs: Jobs::new(
            resources.table(keel_jobs::datamap::TABLE_VAR)?,
            resources.queue(keel_jobs::QUEUE_VAR)?,
            resources.bus(keel_jobs::BUS_VAR)?,
            resources.clock(),
        ),
        registry,
        objects: resources.objects(keel_gdpr::export::BUCKET_VAR)?,
        clock: resources.clock(),
        idempotency: Idempotency::from_resources(resources)?,
        rate_limits: RateLimits::shared(env, resources)?,
    })
}

impl Api for GdprApi {
    fn idempotency(&self) -> Option<&Idempotency> {
        Some(&self.idempotency)
    }

    fn rate_limits(&self) -> Option<&RateLimits> {
        Some(&self.rate_limits)
    }

    const ROUTES: &'static [Route<Self>] = &[
        Route::get("/v1/admin/gdpr/data-map", Access::PlatformAdmin, datamap::SHOW, |_, _| Box::pin(datamap::show())),
        Route::put("/v1/orgs/{orgId}", Access::PlatformAdmin, orgs::PUT, |api, call| Box::pin(api.put_org(call))),
        Route::get("/v1/orgs/{orgId}", Access::Member, orgs::SHOW, |api, call| Box::pin(api.show_org(call))),
        Route::get("/v1/orgs/{orgId}/members", Access::Member, orgs::MEMBERS, |api, call| Box::pin(api.members(call))),
        Route::put("/v1/orgs/{orgId}/members/{userId}", Access::Member, orgs::SET_MEMBER, |api, call| {
            Box::pin(api.set_member(call))
        }),
        Route::delete("/v1/orgs/{orgId}/members/{userId}", Access::Member, orgs::REMOVE_MEMBER, |api, call| {
            Box::pin(api.remove_member(call))
        }),
        Route::get("/v1/user/orgs", Access::Member, orgs::MINE, |api, call| Box::pin(api.my_orgs(call))),
        Route::post("/v1/user/data-exports", Access::Member, exports::START, |api, call| Box::pin(api.start(call))),
        Route::get("/v1/user/data-exports/{id}", Access::Member, exports::SHOW, |api, call| {
            Box::pin(api.show_export(call))
        }),
        Route::get("/v1/user/data-export", Access::Member, exports::LATEST, |api, call| Box::pin(api.latest(call))),
        Route::post("/v1/admin/gdpr/exports", Access::PlatformAdmin, exports::ADMIN_START, |api, call| {
            Box::pin(api.admin_start(call))
        }),
        Route::get("/v1/admin/gdpr/exports/{id}", Access::PlatformAdmin, exports::ADMIN_SHOW, |api, call| {
            Box::pin(api.admin_show(call))
        }),
        Route::delete("/v1/user/account", Access::Member, erasures::ERASE_ME, |api, call| Box::pin(api.erase_me(call))),
        Route::get("/v1/user/erasures/{id}", Access::Member, erasures::SHOW_MINE, |api, call| {
            Box::pin(api.show_mine(call))
        }),
        Route::post("/v1/admin/gdpr/erasures", Access::PlatformAdmin, erasures::ADMIN_START, |api, call| {
            Box::pin(api.admin_erase(call))
        }),
        Route::get("/v1/admin/gdpr/erasures/{id}", Access::PlatformAdmin, erasures::ADMIN_SHOW, |api, call| {
            Box::pin(api.admin_show_erasure(call))
        }),
        Route::post("/v1/admin/gdpr/suppressions/lift", Access::PlatformAdmin, erasures::LIFT, |api, call| {
            Box::pin(api.lift(call))
        }),
        Route::get("/v1/admin/cleanups", Access::PlatformAdmin, cleanups::LIST, |api, _| Box::pin(api.cleanups())),
        Route::get("/v1/audit-logs", Access::Member, audit::LIST, |api, call| Box::pin(api.audit_logs(call))),
    ];
}

fn directory_problem(error: DirectoryError) -> Problem {
    match error {
        DirectoryError::Invalid(errors) => Problem::invalid("invalid_field", errors),
        DirectoryError::OrgNotFound => Problem::not_found("no such organization"),
        DirectoryError::MemberNotFound => Problem::not_found("no such member"),
        DirectoryError::LastAdmin => Problem::new(
            409,
            "last_admin",
            "an organization with members keeps an admin: its last admin cannot be removed or demoted while it has \
             members (make another member admin first), and its first member is an admin",
        ),
        DirectoryError::Contended => Problem::new(409, "contended", "too many concurrent changes; retry"),
        DirectoryError::Port(error) => port_problem(error),
    }
}

fn port_problem(error: PortError) -> Problem {
    tracing::warn!(%error, "gdpr request failed on a backend");
    Problem::unavailable()
}
