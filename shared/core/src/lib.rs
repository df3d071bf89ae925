//! Keel's core: configuration, errors (problem+json), request identity, telemetry, the function kinds and the
//! ports (table, queue, event bus, object store, clock) every adapter implements. The adapters (`keel-aws`,
//! `keel-embedded`) and the domains (`keel-flags`, `keel-webhooks`, `keel-jobs`) are crates of their own, so domain
//! code builds without the AWS SDK.

pub mod audit;
pub mod bus;
pub mod cleanup;
pub mod clock;
pub mod config;
pub mod datamap;
pub mod faults;
pub mod function;
pub mod http;
pub mod idempotency;
pub mod identity;
pub mod lambda;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod port;
pub mod problem;
pub mod queue;
pub mod ratelimit;
pub mod resources;
pub mod route;
pub mod suppression;
pub mod table;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;
