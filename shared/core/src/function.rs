//! The two shapes of Keel function, as AWS invokes them: an HTTP API route (payload format 2.0) and an SQS event
//! source mapping with partial batch responses. Lambda's runtime and the local host both call these.

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Utc};

/// What the invocation knows about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub request_id: String,
    /// When the runtime will stop the invocation; long work stops before this.
    pub deadline: DateTime<Utc>,
    /// The X-Ray trace header of the invocation, if any.
    pub trace_header: Option<String>,
}

#[async_trait]
pub trait HttpFunction: Send + Sync {
    /// Never fails: every error is an HTTP response (problem+json).
    async fn call(&self, request: ApiGatewayV2httpRequest, invocation: Invocation) -> ApiGatewayV2httpResponse;
}

#[async_trait]
pub trait QueueFunction: Send + Sync {
    /// Returns the ids of the messages that failed; the rest are deleted from the queue.
    async fn call(&self, event: SqsEvent, invocation: Invocation) -> SqsBatchResponse;
}
