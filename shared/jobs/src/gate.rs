//! Operational flags gate Keel's own jobs: the feature flag `keel.jobs.<type>`, evaluated from the in-memory
//! snapshot of the flags table for the job's organization and Keel's environment, pauses the type when it is off
//! (killed: everywhere; an organization's override off: for that organization; the environment off: in this
//! stage), without a deploy. No such flag: the type runs. Paused jobs wait, queued, and resume when the flag is on.
//! With no snapshot at all (the flags table never read), nothing is paused: a flags outage must not stop the work.

use keel::config::{ConfigError, Env};
use keel::resources::Resources;
use keel_flags::store::{FlagCache, FlagStore};
use keel_flags::{Context, Reason};
use std::sync::Arc;

/// The key of a type's operational flag is this and the type's name.
pub const FLAG_PREFIX: &str = "keel.jobs.";
/// The flags table, and the stage that is the flags' environment (as for flags-eval).
pub const FLAGS_TABLE_VAR: &str = "FLAGS_TABLE";
pub const STAGE_VAR: &str = "KEEL_STAGE";
/// How stale the snapshot may get: a pause reaches every worker within this.
pub const REFRESH: chrono::Duration = chrono::Duration::seconds(5);

pub struct Gates {
    cache: Arc<FlagCache>,
    environment: String,
}

impl Gates {
    pub fn new(cache: Arc<FlagCache>, environment: impl Into<String>) -> Self {
        Self { cache, environment: environment.into() }
    }

    /// The gates of a function wired with `FLAGS_TABLE` and `KEEL_STAGE`.
    pub fn from_resources(env: &Env, resources: &dyn Resources) -> Result<Self, ConfigError> {
        let store = FlagStore::new(resources.table(FLAGS_TABLE_VAR)?, resources.clock());
        Ok(Self::new(Arc::new(FlagCache::new(store, REFRESH)), env.required(STAGE_VAR)?))
    }

    pub fn flag_key(job_type: &str) -> String {
        format!("{FLAG_PREFIX}{job_type}")
    }

    /// Whether the organization's jobs of the type are paused now.
    pub async fn paused(&self, org: &str, job_type: &str) -> bool {
        let served = self.cache.current().await;
        let Some(snapshot) = served.snapshot else { return false };
        let context = Context {
            organization_id: Some(org.to_string()),
            environment: Some(self.environment.clone()),
            ..Context::default()
        };
        let now = self.cache.store().clock().now();
        let evaluation = snapshot.evaluate(&Self::flag_key(job_type), &context, now);
        evaluation.reason != Reason::FlagNotFound && !evaluation.value
    }
}
