//! Scaffold: replaced by the function's implementation.

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use keel::config::{ConfigError, Env};
use keel::function::{HttpFunction, Invocation};
use keel::problem::Problem;
use keel::resources::Resources;

pub struct Scaffold;

pub fn build(_env: &Env, _resources: &dyn Resources) -> Result<Scaffold, ConfigError> {
    Ok(Scaffold)
}

#[async_trait]
impl HttpFunction for Scaffold {
    async fn call(&self, _request: ApiGatewayV2httpRequest, _invocation: Invocation) -> ApiGatewayV2httpResponse {
        Problem::not_found("not built yet").into_response()
    }
}
