use keel::config::Env;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel::telemetry::init();
    let env = Env::from_process();
    let resources = keel_aws::AwsResources::load(&env).await?;
    let function = flags_eval::build(&env, &resources)?;
    keel::lambda::run_http("flags-eval", Arc::new(function)).await
}
