//! The job sweeper, every minute (EventBridge Scheduler): no job waits past its time or stays `processing`
//! forever. It admits waiting jobs whose `run_at` has come while their organization has a slot free, sends again
//! the message of a queued job left unclaimed (a crash between commit and send), sends a running job whose lease
//! ran out back to a worker (which records the attempt as lost, then runs it again or fails it as the type
//! says), and drops index entries of finished jobs. The one gap: a job starts up to a minute after its `run_at`.

use async_trait::async_trait;
use keel::config::{ConfigError, Env};
use keel::function::{Invocation, ScheduledFunction};
use keel::resources::Resources;
use keel_jobs::breaker::Breakers;
use keel_jobs::gate::Gates;
use keel_jobs::{Jobs, Registry};

pub const TABLE_VAR: &str = "JOBS_TABLE";
pub use keel_jobs::{BUS_VAR, QUEUE_VAR};

pub struct Sweeper {
    jobs: Jobs,
    breakers: Breakers,
    gates: Gates,
    registry: Registry,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<Sweeper, ConfigError> {
    let table = resources.table(TABLE_VAR)?;
    Ok(Sweeper {
        jobs: Jobs::new(table.clone(), resources.queue(QUEUE_VAR)?, resources.bus(BUS_VAR)?, resources.clock()),
        breakers: Breakers::new(table, resources.clock()),
        gates: Gates::from_resources(env, resources)?,
        registry: Registry::sample_unsigned(env)?,
    })
}

#[async_trait]
impl ScheduledFunction for Sweeper {
    async fn call(&self, _event: serde_json::Value, _invocation: Invocation) -> Result<(), String> {
        let swept =
            self.jobs.sweep(&self.registry, &self.breakers, &self.gates).await.map_err(|error| error.to_string())?;
        keel::metrics::count("JobsOpen", &[], swept.open as f64);
        tracing::info!(
            open = swept.open,
            admitted = swept.admitted,
            resent = swept.resent,
            removed = swept.removed,
            "jobs swept"
        );
        Ok(())
    }
}
