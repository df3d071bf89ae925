//! Keel's GDPR domain: the directory of organizations and memberships (who administers what, which last-admin
//! protection is decided on), the data map that assembles every domain's declaration of what it keeps, the export
//! of a user's data (the bundle and the `gdpr.export` task), and their erasure (the `gdpr.erase` task, its
//! receipt, and the suppression that keeps them erased); the export bundles' cleanup.

pub mod datamap;
pub mod directory;
pub mod erasure;
pub mod export;

use keel::config::ConfigError;
use keel::datamap::Holder;
use keel::resources::Resources;
use std::sync::Arc;

/// The scheduled cleanups' names, as their schedules' inputs give them (the maintenance function has one of each).
pub const CLEANUPS: &[&str] = &[
    "webhooks.payloads",
    "webhooks.deliveries",
    "jobs.finished",
    "jobs.feed",
    "api.idempotency_records",
    "flags.overrides",
    "gdpr.export_bundles",
];

/// The jobs store, from the resources the template wires.
pub fn jobs(resources: &dyn Resources) -> Result<keel_jobs::Jobs, ConfigError> {
    Ok(keel_jobs::Jobs::new(
        resources.table(keel_jobs::datamap::TABLE_VAR)?,
        resources.queue(keel_jobs::QUEUE_VAR)?,
        resources.bus(keel_jobs::BUS_VAR)?,
        resources.clock(),
    ))
}

/// Every domain's holder, in the order an erasure walks them: the directory first (a last-admin blocker refuses
/// before anything is erased; the memberships it removes are kept in the erasure's record), export bundles
/// before the jobs whose outputs name them, then the other domains.
pub fn holders(resources: &dyn Resources) -> Result<Vec<Arc<dyn Holder>>, ConfigError> {
    let clock = resources.clock();
    Ok(vec![
        Arc::new(directory::Directory::new(resources.table(directory::TABLE_VAR)?, clock.clone())),
        Arc::new(export::BundlesHolder { jobs: jobs(resources)?, objects: resources.objects(export::BUCKET_VAR)? }),
        Arc::new(jobs(resources)?),
        Arc::new(keel_webhooks::WebhooksHolder(resources.table(keel_webhooks::TABLE_VAR)?)),
        Arc::new(keel_flags::store::FlagStore::new(resources.table(keel_flags::datamap::TABLE_VAR)?, clock)),
        Arc::new(keel::idempotency::Idempotency::from_resources(resources)?),
    ])
}
