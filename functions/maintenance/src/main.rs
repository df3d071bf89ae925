use keel::config::Env;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel::telemetry::init();
    let env = Env::from_process();
    let resources = keel_aws::AwsResources::load(&env).await?;
    let function = maintenance::build(&env, &resources)?;
    keel::lambda::run_scheduled("maintenance", Arc::new(function)).await
}
