//! Runs a Keel function under the Lambda runtime. `main.rs` of each function builds its clients once and calls one
//! of the `run_*` functions; everything per-invocation happens inside the function.
//!
//! HTTP functions run on `lambda_http`: its adapter turns the API Gateway event into an `http::Request` and the
//! answer back into the API Gateway response. [`invoke_http`] applies that same adapter to an event built
//! elsewhere (the local host, tests), so the local and the AWS paths are one code path.

use crate::function::{
    ByteStream, HttpFunction, Invocation, QueueFunction, ScheduledFunction, StreamFunction, TokenRefused, TokenVerifier,
};
use crate::http::{Request, Response};
use crate::identity::Identity;
use crate::problem::Problem;
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

/// How long before the invocation's deadline a stream ends, so it closes cleanly (the client reconnects with
/// `Last-Event-ID`) instead of being cut by the runtime.
pub const STREAM_MARGIN: chrono::Duration = chrono::Duration::seconds(10);

/// One request to a streaming function, as Lambda's runner and the local host both answer it: `GET` on the
/// function's path, a bearer token `verifier` accepts, then the function's stream, to end by `until`. Everything
/// refused is answered as problem+json (401 with a `WWW-Authenticate` challenge for a missing or refused token).
pub async fn open_stream(
    name: &str,
    function: &dyn StreamFunction,
    verifier: &dyn TokenVerifier,
    request: Request,
    until: chrono::DateTime<chrono::Utc>,
) -> http::Response<ByteStream> {
    let context = Invocation::of(&request);
    invocation(name, &context, async {
        let opened = async {
            if request.uri().path() != function.path() {
                return Err(Problem::not_found("no such path"));
            }
            if request.method() != http::Method::GET {
                return Err(Problem::new(405, "method_not_allowed", "the stream is read with GET"));
            }
            let token = crate::http::bearer(request.headers()).ok_or_else(unauthorized)?;
            let claims = verifier.verify(token).await.map_err(|refused| match refused {
                TokenRefused::Invalid(reason) => {
                    tracing::info!(reason, "the bearer token was refused");
                    unauthorized()
                }
                TokenRefused::Unavailable(reason) => {
                    tracing::warn!(reason, "the bearer token could not be checked");
                    Problem::unavailable()
                }
            })?;
            let caller = Identity::from_claims(&claims).ok_or_else(|| {
                tracing::info!("the token names no `sub` or no `org_id`");
                unauthorized()
            })?;
            function.open(caller, &request, until).await
        };
        let response = match opened.await {
            Ok(body) => http::Response::builder()
                .status(200)
                .header(http::header::CONTENT_TYPE, function.content_type())
                .header(http::header::CACHE_CONTROL, "no-cache")
                .body(body),
            Err(problem) => {
                let status = problem.status;
                let challenge = (status == 401).then_some("Bearer");
                let body = serde_json::to_vec(&problem).unwrap_or_default();
                let mut builder = http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/problem+json");
                if let Some(challenge) = challenge {
                    builder = builder.header(http::header::WWW_AUTHENTICATE, challenge);
                }
                let once: ByteStream = Box::pin(futures::stream::once(async move { bytes::Bytes::from(body) }));
                builder.body(once)
            }
        };
        let response = response.unwrap_or_else(|_| {
            let mut empty = http::Response::new(Box::pin(futures::stream::empty()) as ByteStream);
            *empty.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            empty
        });
        trace::record_status(response.status().as_u16());
        response
    })
    .await
}

fn unauthorized() -> Problem {
    Problem::new(401, "unauthorized", "a valid bearer token is required")
}

/// A streaming function behind a Lambda Function URL (`InvokeMode: RESPONSE_STREAM`). Each stream ends
/// [`STREAM_MARGIN`] before the invocation's deadline.
pub async fn run_stream(
    name: &'static str,
    function: Arc<dyn StreamFunction>,
    verifier: Arc<dyn TokenVerifier>,
) -> Result<(), lambda_runtime::Error> {
    use futures::StreamExt;
    lambda_http::run_with_streaming_response(service_fn(move |request: Request| {
        let (function, verifier) = (function.clone(), verifier.clone());
        async move {
            let until = Invocation::of(&request).deadline - STREAM_MARGIN;
            let response = open_stream(name, function.as_ref(), verifier.as_ref(), request, until).await;
            Ok::<_, Infallible>(response.map(|body| {
                http_body_util::StreamBody::new(body.map(|chunk| Ok::<_, Infallible>(http_body::Frame::data(chunk))))
            }))
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
            stop: Default::default(),
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
            stop: Default::default(),
        };
        assert_eq!(Invocation::from_context(&invocation.to_context()), invocation);
        assert_eq!(invocation.trace_id(), Some("1-abc"));
        let untraced = Invocation { trace_header: Some("Sampled=0".into()), ..invocation };
        assert_eq!(untraced.trace_id(), None);
    }
}
