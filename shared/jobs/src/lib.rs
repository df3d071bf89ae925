//! Orchestration's domain: typed jobs run against downstream services.
//!
//! - `registry`: the job types, declared once (input schema, executor, timeout, attempts, concurrency, delivery).
//! - `job`: the execution record and its attempts, and the keys of every item orchestration writes.
//! - `store`: the transitions, each one transaction that writes the record, its event and its indexes; fairness
//!   by per-organization slots; the sweeper's pass.
//! - `events`: lifecycle events, in the organization's feed and on EventBridge (source `keel.jobs`).
//! - `gate`: operational flags (`keel.jobs.<type>`) that pause a type everywhere or for one organization.
//! - `breaker`: a circuit breaker per downstream target, shared by every worker through the table.
//! - `sign`: Standard Webhooks signatures on downstream calls. `backoff`: capped exponential with full jitter.
//!
//! The guarantee: a job acknowledged with 202 ends completed, failed or cancelled, its record says how, and at
//! most one attempt runs at a time (a lease with a fencing token; a worker that lost its lease cannot record an
//! outcome). Each transition's event is written with it, so none is lost; it is published after the commit, so a
//! crash between the two publishes it again later under the same id, which consumers deduplicate on.

/// The queue jobs travel on and the bus their events go to, as the template wires them.
pub const QUEUE_VAR: &str = "JOB_QUEUE_URL";
pub const BUS_VAR: &str = "EVENT_BUS_NAME";
/// Deduplication keys Keel's own routes use (one running GDPR export per user); the jobs API refuses them to
/// callers, so nobody can hold another's.
pub const RESERVED_DEDUP_PREFIX: &str = "keel:";

pub mod backoff;
pub mod breaker;
pub mod builtin;
pub mod datamap;
pub mod events;
pub mod gate;
pub mod job;
pub mod registry;
pub mod retention;
pub mod sign;
pub mod store;

pub use job::{Attempt, Job, Message, Outcome, Status, Waiting};
pub use registry::{Delivery, Executor, JobType, Registry};
pub use store::{AttemptEnd, Beat, Created, Filter, Jobs, JobsError, NewJob, Versioned};
