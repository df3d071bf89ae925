use keel::config::Env;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel::telemetry::init();
    let env = Env::from_process();
    let resources = keel_aws::AwsResources::load(&env).await?;
    let function = events_stream::build(&env, &resources)?;
    let verifier = keel_aws::jwks::JwksVerifier::from_env(&env)?;
    keel::lambda::run_stream("events-stream", Arc::new(function), Arc::new(verifier)).await
}
