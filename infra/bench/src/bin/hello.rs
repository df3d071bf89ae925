//! The peer for cold-start measurements: the smallest Lambda a Rust function can be. Same runtime crate, same
//! `#[tokio::main]` (multi-threaded) and the same release profile as Keel's functions, but no telemetry, no
//! configuration and no SDK clients, so the gap between it and a function is what that function's start-up costs.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move { Ok::<_, Error>(event.payload) })).await
}
