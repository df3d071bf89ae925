//! `keel-local`: every function of the Keel workspace in one process, wired as `template.yaml` wires them in AWS.
//!
//! - HTTP routes behave as API Gateway HTTP API with payload format 2.0: route selection, the JWT authorizer
//!   (verifying local development tokens, see [`token`]), the request event, and the response mapping.
//! - Each SQS event source polls its queue into its worker with partial-batch-failure semantics.
//! - Schedules fire on their `rate(...)`, `cron(...)` or `at(...)` expressions.
//! - Tables, queues and buses live in one embedded database under the data directory (default), or in AWS or an
//!   emulator through the AWS adapters (`--backend aws`, honouring `AWS_ENDPOINT_URL`).
//!
//! Tests use [`Host`]: start one on port 0 with a temporary data directory, drive it over HTTP, inspect the bus, and
//! compare [`declared`] with [`served`] to prove the host serves exactly what the template declares.

pub mod backend;
pub mod check;
pub mod cli;
pub mod docs;
pub mod gateway;
pub mod host;
pub mod poller;
pub mod registry;
pub mod schedule;
pub mod template;
pub mod token;

pub use backend::Backend;
pub use host::{Declared, Host, HostError, HostOptions, QueueMapping, ScheduleMapping, declared, served};
pub use registry::{Handler, Registry};
pub use template::{Template, TemplateError};
pub use token::DevKey;
