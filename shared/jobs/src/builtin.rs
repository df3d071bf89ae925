//! Built-in tasks: Keel's own work (bulk replays now; exports, erasures and cleanups as they come), run in the
//! worker's process as a job's attempts, with the lease, heartbeat, cancel, retries, events and record of any job.
//!
//! A task saves checkpoints in the job's record as it goes. An attempt after a retriable, lost or released one
//! starts from the last checkpoint saved, so long work resumes instead of starting over; what a task did after its
//! last checkpoint it does again, so each task must be safe to repeat from there. A cancel drops the task's future
//! at the next heartbeat: a task keeps nothing in memory that a checkpoint does not hold.

use crate::registry::Registry;
use async_trait::async_trait;
use keel::config::ConfigError;
use keel::port::PortError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest checkpoint (bytes of JSON): it lives in the job's record.
pub const MAX_CHECKPOINT_BYTES: usize = 16 * 1024;

/// How an attempt of a built-in task failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    /// Worth another attempt (a backend that did not answer): the job is retried from its last checkpoint.
    #[error("{0}")]
    Retriable(String),
    /// For good (the input cannot be carried out): the job fails.
    #[error("{0}")]
    Failed(String),
}

impl From<PortError> for TaskFailure {
    fn from(error: PortError) -> Self {
        match error {
            PortError::Invalid(reason) => TaskFailure::Failed(reason),
            other => TaskFailure::Retriable(other.to_string()),
        }
    }
}

/// Where a task saves its progress: the job's record, while its attempt still holds the job.
#[async_trait]
pub trait Checkpoints: Send + Sync {
    /// Saves `checkpoint`; `false` when the attempt no longer holds the job (the task should stop: another attempt
    /// owns the work now).
    async fn save(&self, checkpoint: &Value) -> Result<bool, PortError>;
}

/// One kind of Keel's own work.
#[async_trait]
pub trait Task: Send + Sync {
    /// Carries out `input` from `checkpoint` (`None` on a first attempt, else the last one saved) to the end; the
    /// output on success.
    async fn run(
        &self,
        input: &Value,
        checkpoint: Option<&Value>,
        checkpoints: &dyn Checkpoints,
    ) -> Result<Value, TaskFailure>;
}

/// The tasks a worker can run, by the name a `builtin` type's executor gives.
#[derive(Clone, Default)]
pub struct Tasks(BTreeMap<String, Arc<dyn Task>>);

impl Tasks {
    pub fn with(mut self, name: &str, task: impl Task + 'static) -> Self {
        self.0.insert(name.to_string(), Arc::new(task));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Task>> {
        self.0.get(name)
    }

    /// Refuses a registry with a `builtin` type whose task this worker does not have, so that is found at start-up,
    /// not when the first job of the type fails.
    pub fn check(&self, registry: &Registry) -> Result<(), ConfigError> {
        for job_type in registry.types() {
            if let Some(task) = &job_type.executor.task
                && !self.0.contains_key(task)
            {
                return Err(ConfigError::Malformed {
                    name: format!("JOBS_REGISTRY (job type {})", job_type.name),
                    reason: format!("expected a built-in task the worker has, not `{task}`"),
                });
            }
        }
        Ok(())
    }
}
