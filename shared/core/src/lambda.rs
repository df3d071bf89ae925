//! Runs a Keel function under the Lambda runtime. `main.rs` of each function builds its clients once and calls one
//! of the `run_*` functions; everything per-invocation happens inside the function.
//!
//! HTTP functions run on `lambda_http`: its adapter turns the API Gateway event into an `http::Request` and the
//! answer back into the API Gateway response. [`invoke_http`] applies that same adapter to an event built
//! elsewhere (the local host, tests), so the local and the AWS paths are one code path.

use crate::function::{HttpFunction, Invocation, QueueFunction, ScheduledFunction};
use crate::http::{Request, Response};
use crate::{metrics, telemetry, trace};
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::sqs::SqsEvent;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Service};
use lambda_runtime::{LambdaEvent, service_fn};
use std::convert::Infallible;
use std::sync::Arc;
use tracing::Instrument;

/// Runs one invocation's work inside its log span (request and trace ids on every line), its metrics scope and
/// its trace span: the one wrapping every function kind, on Lambda and in the local host alike.
async fn invocation<F: std::future::Future>(name: &str, invocation: &Invocation, work: F) -> F::Output {
    let header = invocation.trace_header.as_deref();
    let span = telemetry::invocation_span(name, &invocation.request_id, header);
    metrics::scope(name, trace::invocation(name, header, work).instrument(span)).await
}

/// One request through the function.
async fn handle(name: &str, function: &dyn HttpFunction, request: Request) -> Response {
    let context = Invocation::of(&request);
    invocation(name, &context, async {
        let response = function.handle(request).await;
        trace::record_status(response.status().as_u16());
        response
    })
    .await
}

/// One SQS batch through a queue function, as the Lambda runtime runs it (the local host calls this too).
pub async fn invoke_queue(
    name: &str,
    function: &dyn QueueFunction,
    event: SqsEvent,
    context: Invocation,
) -> aws_lambda_events::sqs::SqsBatchResponse {
    invocation(name, &context.clone(), function.call(event, context)).await
}

/// One schedule firing through a scheduled function, as the Lambda runtime runs it (the local host calls this too).
pub async fn invoke_scheduled(
    name: &str,
    function: &dyn ScheduledFunction,
    event: serde_json::Value,
    context: Invocation,
) -> Result<(), String> {
    invocation(name, &context.clone(), function.call(event, context)).await
}

pub async fn run_http(name: &'static str, function: Arc<dyn HttpFunction>) -> Result<(), lambda_runtime::Error> {
    lambda_http::run(service_fn(move |request: Request| {
        let function = function.clone();
        async move { Ok::<_, Infallible>(handle(name, function.as_ref(), request).await) }
    }))
    .await
}

/// One API Gateway event through `lambda_http`'s adapter and `function`, as the Lambda runtime runs it: the
/// event becomes the `http::Request`, the answer becomes the JSON the runtime hands back to API Gateway.
pub async fn invoke_http(
    name: &str,
    function: &dyn HttpFunction,
    event: ApiGatewayV2httpRequest,
    invocation: &Invocation,
) -> ApiGatewayV2httpResponse {
    let service =
        service_fn(move |request: Request| async move { Ok::<_, Infallible>(handle(name, function, request).await) });
    let mut adapter = Adapter::from(service);
    let event = LambdaEvent::new(LambdaRequest::ApiGatewayV2(event), invocation.to_context());
    let answer = match adapter.call(event).await {
        Ok(answer) => serde_json::to_value(answer).and_then(serde_json::from_value::<ApiGatewayV2httpResponse>),
        Err(never) => match never {},
    };
    match answer {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiGatewayV2httpResponse::default();
            response.status_code = 500;
            response.body = Some(Body::Text("the response could not be converted".into()));
            response
        }
    }
}

/// The `http::Request` `lambda_http` makes of an API Gateway event (for calling a function directly).
pub fn request_of(event: ApiGatewayV2httpRequest) -> Request {
    LambdaRequest::ApiGatewayV2(event).into()
}

pub async fn run_queue(name: &'static str, function: Arc<dyn QueueFunction>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let function = function.clone();
        async move {
            let invocation = Invocation::from_context(&event.context);
            Ok::<_, lambda_runtime::Error>(invoke_queue(name, function.as_ref(), event.payload, invocation).await)
        }
    }))
    .await
}

/// A scheduled function: a failure is the invocation's error, so EventBridge Scheduler retries it under the
/// schedule's retry policy (and sends it to the schedule's DLQ after the last attempt).
pub async fn run_scheduled(
    name: &'static str,
    function: Arc<dyn ScheduledFunction>,
) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let function = function.clone();
        async move {
            let invocation = Invocation::from_context(&event.context);
            invoke_scheduled(name, function.as_ref(), event.payload, invocation)
                .await
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;
    use crate::openapi::Doc;
    use crate::problem::Problem;
    use crate::route::{Access, Api, Call, Route};

    /// Answers the exact bytes it received, as binary.
    struct Mirror;

    impl Mirror {
        async fn mirror(&self, call: &Call) -> Result<Response, Problem> {
            Ok(http::response(200, "application/octet-stream", http::raw_body(&call.request).to_vec()))
        }
    }

    impl Api for Mirror {
        const ROUTES: &'static [Route<Self>] =
            &[Route::post("/mirror", Access::Public, Doc::NONE, |m, call| Box::pin(m.mirror(call)))];
    }

    fn event(body: &str, base64: bool) -> ApiGatewayV2httpRequest {
        serde_json::from_value(serde_json::json!({
            "routeKey": "POST /mirror", "rawPath": "/mirror", "body": body, "isBase64Encoded": base64,
            "requestContext": {"routeKey": "POST /mirror", "http": {"method": "POST"}, "requestId": "r1"},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn bodies_keep_their_exact_bytes_both_ways() {
        use base64::Engine;
        let bytes = [0u8, 0xff, 0x80, b'{', 0xc3];
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        let invocation = Invocation {
            request_id: "r1".into(),
            deadline: chrono::Utc::now(),
            trace_header: Some("Root=1-abc".into()),
        };
        let response = invoke_http("mirror", &Mirror, event(&encoded, true), &invocation).await;
        assert_eq!(response.status_code, 200);
        assert!(response.is_base64_encoded, "a binary answer goes back base64");
        let body = response.body.as_deref().unwrap_or_default();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap(), bytes);

        let response = invoke_http("mirror", &Mirror, event("{\"a\": 1}", false), &invocation).await;
        let body = response.body.as_deref().unwrap_or_default();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap(), b"{\"a\": 1}");
    }

    #[test]
    fn the_invocation_travels_in_the_lambda_context() {
        let invocation = Invocation {
            request_id: "req-1".into(),
            deadline: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            trace_header: Some("Root=1-abc;Sampled=1".into()),
        };
        assert_eq!(Invocation::from_context(&invocation.to_context()), invocation);
        assert_eq!(invocation.trace_id(), Some("1-abc"));
        let untraced = Invocation { trace_header: Some("Sampled=0".into()), ..invocation };
        assert_eq!(untraced.trace_id(), None);
    }
}
