use keel::clock::SystemClock;
use keel::config::Env;
use keel::resources::StaticResources;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel::telemetry::init();
    let console = console::build(&Env::from_process(), &StaticResources::new(Arc::new(SystemClock)))?;
    keel::lambda::run_http("console", Arc::new(console)).await
}
