//! Keel's common crate: configuration, errors, request identity, telemetry, and the ports (table, queue, event
//! bus, clock) with their two adapters each: AWS (official SDK) and embedded (redb, no server needed).

pub mod aws;
pub mod bus;
pub mod clock;
pub mod config;
pub mod embedded;
pub mod faults;
pub mod flags;
pub mod function;
pub mod http;
pub mod identity;
pub mod lambda;
pub mod port;
pub mod problem;
pub mod queue;
pub mod resources;
pub mod table;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod webhooks;
