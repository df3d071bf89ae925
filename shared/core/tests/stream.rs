//! A streaming function runs on Lambda's Runtime API in response-streaming mode (`keel::lambda::run_stream`): this
//! test serves the Runtime API itself, on a local port, to a child copy of this test binary that runs the function
//! as a Lambda behind a Function URL would. Each answer is posted as a stream (`Lambda-Runtime-Function-Response-
//! Mode: streaming`, chunked): the JSON prelude with status and headers, eight zero bytes, then the chunks. A token
//! the verifier accepts opens the stream, to end ten seconds before the deadline; no token is 401 with a challenge,
//! a verifier that cannot check tokens is 503, and another path is 404.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keel::function::{ByteStream, StreamFunction, TokenRefused, TokenVerifier};
use keel::http::Request;
use keel::identity::Identity;
use keel::problem::Problem;
use keel::testing::runtime_api;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

const CHILD: &str = "KEEL_TEST_STREAM_CHILD";

/// A Function URL's event (payload format 2.0, no authorizer).
fn event(path: &str, token: Option<&str>) -> String {
    let mut headers = json!({ "accept": "text/event-stream" });
    if let Some(token) = token {
        headers["authorization"] = json!(format!("Bearer {token}"));
    }
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers": headers,
        "requestContext": { "http": { "method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1" },
                            "requestId": "r", "routeKey": "$default", "stage": "$default" },
        "isBase64Encoded": false
    })
    .to_string()
}

/// The prelude and the streamed body of one posted response.
fn split(body: &[u8]) -> (Value, String) {
    let at = body.windows(8).position(|w| w == [0u8; 8]).expect("the prelude ends with eight zero bytes");
    (serde_json::from_slice(&body[..at]).unwrap(), String::from_utf8_lossy(&body[at + 8..]).into_owned())
}

#[test]
fn a_streaming_function_answers_the_runtime_api_in_streaming_mode_after_checking_the_token() {
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(60);
    let events = [
        event("/stream", Some("good")),
        event("/stream", None),
        event("/stream", Some("down")),
        event("/elsewhere", Some("good")),
        event("/stream", Some("forged")),
    ];
    let posted = runtime_api::serve("stream_child", CHILD, "events", &events, deadline);
    assert_eq!(posted.len(), events.len());
    for (n, request) in posted.iter().enumerate() {
        assert_eq!(request.path, format!("/2018-06-01/runtime/invocation/req-{n}/response"));
        assert_eq!(request.headers["lambda-runtime-function-response-mode"], "streaming");
        assert_eq!(request.headers["content-type"], "application/vnd.awslambda.http-integration-response");
    }

    let (prelude, body) = split(&posted[0].body);
    assert_eq!(prelude["statusCode"], 200);
    assert_eq!(prelude["headers"]["content-type"], "text/plain");
    assert_eq!(prelude["headers"]["cache-control"], "no-cache");
    let until = (deadline - keel::lambda::STREAM_MARGIN).timestamp_millis();
    assert_eq!(body, format!("org o1\ntick 1\ntick 2\ntick 3\nuntil {until}\n"), "every chunk, in order");

    let (prelude, body) = split(&posted[1].body);
    assert_eq!(prelude["statusCode"], 401);
    assert_eq!(prelude["headers"]["www-authenticate"], "Bearer");
    assert_eq!(prelude["headers"]["content-type"], "application/problem+json");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], 401);
    let (prelude, _) = split(&posted[2].body);
    assert_eq!(prelude["statusCode"], 503, "an issuer that cannot be reached is no reason to sign in again");
    let (prelude, _) = split(&posted[3].body);
    assert_eq!(prelude["statusCode"], 404);
    let (prelude, body) = split(&posted[4].body);
    assert_eq!(prelude["statusCode"], 401);
    assert!(!body.contains("forged"), "the refusal's reason stays in the log: {body}");
}

struct Ticker;

#[async_trait]
impl StreamFunction for Ticker {
    fn path(&self) -> &'static str {
        "/stream"
    }

    fn content_type(&self) -> &'static str {
        "text/plain"
    }

    async fn open(&self, caller: Identity, _request: &Request, until: DateTime<Utc>) -> Result<ByteStream, Problem> {
        let lines = [
            format!("org {}\n", caller.org_id),
            "tick 1\n".into(),
            "tick 2\n".into(),
            "tick 3\n".into(),
            format!("until {}\n", until.timestamp_millis()),
        ];
        Ok(Box::pin(futures::stream::iter(lines.map(bytes::Bytes::from))))
    }
}

struct Fixed;

#[async_trait]
impl TokenVerifier for Fixed {
    async fn verify(&self, token: &str) -> Result<HashMap<String, String>, TokenRefused> {
        match token {
            "good" => Ok([("sub", "u1"), ("org_id", "o1")].map(|(k, v)| (k.to_string(), v.to_string())).into()),
            "down" => Err(TokenRefused::Unavailable("the issuer did not answer".into())),
            other => Err(TokenRefused::Invalid(format!("{other} is forged"))),
        }
    }
}

#[test]
#[ignore = "run by a_streaming_function_answers_the_runtime_api_in_streaming_mode_after_checking_the_token in a child process"]
fn stream_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _ = runtime.block_on(keel::lambda::run_stream("events", Arc::new(Ticker), Arc::new(Fixed)));
}
