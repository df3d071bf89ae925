//! The maintenance function: Keel's scheduled cleanups, one EventBridge Scheduler schedule each, whose input names
//! the cleanup (`{"cleanup": "webhooks.deliveries"}`). Each run resumes from the cursor the last one left, stops
//! [`MARGIN`] before the invocation's deadline, and is recorded (`keel::cleanup`), logged and counted
//! (`CleanupRemoved`, by cleanup).
//!
//! Guarantee: a cleanup removes only what has expired, and what a run cut short left is removed by the next. The
//! gap: a schedule fires at most as often as its expression says, so anything expired waits up to one period (and
//! reads hide expired items meanwhile).

use async_trait::async_trait;
use keel::cleanup::{Cleanup, Runs};
use keel::clock::Clock;
use keel::config::{ConfigError, Env};
use keel::function::{Invocation, ScheduledFunction};
use keel::resources::Resources;
use std::sync::Arc;

/// How long before the invocation's deadline a cleanup stops: a page's work and the run's record fit in it.
pub const MARGIN: chrono::Duration = chrono::Duration::seconds(10);

pub struct Maintenance {
    cleanups: Vec<Box<dyn Cleanup>>,
    runs: Runs,
    clock: Arc<dyn Clock>,
}

/// Why a scheduled invocation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("the schedule's input names no cleanup (expected {{\"cleanup\": \"<name>\"}}): {0}")]
    NoCleanup(serde_json::Value),
    #[error("no cleanup is named `{0}`")]
    Unknown(String),
    #[error("the run could not be recorded: {0}")]
    Record(keel::port::PortError),
}

/// Every cleanup, by name.
pub fn cleanups(env: &Env, resources: &dyn Resources) -> Result<Vec<Box<dyn Cleanup>>, ConfigError> {
    let flags = keel_flags::store::FlagStore::new(resources.table(keel_flags::datamap::TABLE_VAR)?, resources.clock());
    let deliveries = || keel_webhooks::DeliveriesCleanup::from_env(env, resources.table(keel_webhooks::TABLE_VAR)?);
    Ok(vec![
        Box::new(keel_webhooks::PayloadsCleanup(deliveries()?)),
        Box::new(deliveries()?),
        Box::new(keel_jobs::retention::FinishedCleanup(resources.table(keel_jobs::datamap::TABLE_VAR)?)),
        Box::new(keel_jobs::retention::FeedCleanup(resources.table(keel_jobs::datamap::TABLE_VAR)?)),
        Box::new(keel::idempotency::RecordsCleanup(resources.table(keel::idempotency::TABLE_VAR)?)),
        Box::new(keel_flags::store::OverridesCleanup(flags)),
        Box::new(keel_gdpr::export::BundlesCleanup(resources.objects(keel_gdpr::export::BUCKET_VAR)?)),
    ])
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<Maintenance, ConfigError> {
    Ok(Maintenance {
        cleanups: cleanups(env, resources)?,
        runs: Runs(resources.table(keel::cleanup::TABLE_VAR)?),
        clock: resources.clock(),
    })
}

impl Maintenance {
    /// Runs the cleanup the schedule's input names, until it is done or the deadline nears.
    pub async fn run(
        &self,
        input: &serde_json::Value,
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> Result<keel::cleanup::CleanupRun, MaintenanceError> {
        let name = input["cleanup"].as_str().ok_or_else(|| MaintenanceError::NoCleanup(input.clone()))?;
        let cleanup = self
            .cleanups
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| MaintenanceError::Unknown(name.to_string()))?;
        let clock = self.clock.clone();
        let stop = move || clock.now() + MARGIN >= deadline;
        let run = self.runs.run(cleanup.as_ref(), self.clock.now(), &stop, self.clock.as_ref()).await;
        let run = run.map_err(MaintenanceError::Record)?;
        keel::metrics::count("CleanupRemoved", &[("Cleanup", name)], run.removed as f64);
        match &run.error {
            None => tracing::info!(cleanup = name, removed = run.removed, complete = run.complete, "cleanup ran"),
            Some(error) => tracing::warn!(cleanup = name, removed = run.removed, %error, "cleanup failed"),
        }
        Ok(run)
    }
}

#[async_trait]
impl ScheduledFunction for Maintenance {
    async fn call(&self, event: serde_json::Value, invocation: Invocation) -> Result<(), String> {
        let run = self.run(&event, invocation.deadline).await.map_err(|error| error.to_string())?;
        // A failed cleanup fails the invocation, so the function's error alarm sees it; its run is recorded.
        match run.error {
            Some(error) => Err(format!("cleanup {} failed: {error}", run.cleanup)),
            None => Ok(()),
        }
    }
}
