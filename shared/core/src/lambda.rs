//! Runs a Keel function under the Lambda runtime. `main.rs` of each function builds its clients once and calls one
//! of these; everything per-invocation happens inside the function's `call`.

use crate::function::{HttpFunction, Invocation, QueueFunction};
use crate::telemetry;
use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, Utc};
use lambda_runtime::{LambdaEvent, service_fn};
use std::sync::Arc;
use tracing::Instrument;

fn invocation(context: &lambda_runtime::Context) -> Invocation {
    let deadline_ms = i64::try_from(context.deadline).unwrap_or(i64::MAX);
    Invocation {
        request_id: context.request_id.clone(),
        deadline: DateTime::<Utc>::from_timestamp_millis(deadline_ms).unwrap_or(DateTime::<Utc>::MAX_UTC),
        trace_header: context.xray_trace_id.clone(),
    }
}

pub async fn run_http(name: &'static str, function: Arc<dyn HttpFunction>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
        let function = function.clone();
        async move {
            let invocation = invocation(&event.context);
            let span = telemetry::invocation_span(name, &invocation.request_id, invocation.trace_header.as_deref());
            Ok::<_, lambda_runtime::Error>(function.call(event.payload, invocation).instrument(span).await)
        }
    }))
    .await
}

pub async fn run_queue(name: &'static str, function: Arc<dyn QueueFunction>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let function = function.clone();
        async move {
            let invocation = invocation(&event.context);
            let span = telemetry::invocation_span(name, &invocation.request_id, invocation.trace_header.as_deref());
            Ok::<_, lambda_runtime::Error>(function.call(event.payload, invocation).instrument(span).await)
        }
    }))
    .await
}
