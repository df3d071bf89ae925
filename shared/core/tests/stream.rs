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
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const CHILD: &str = "KEEL_TEST_STREAM_CHILD";

struct Posted {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// One HTTP/1.1 request, its body read by length or in chunks.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Posted> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut trailer = String::new();
                    reader.read_line(&mut trailer).ok()?;
                    if trailer.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    }
    Some(Posted { path, headers, body })
}

fn respond(stream: &mut TcpStream, headers: &[(&str, String)], body: &str) {
    let mut text = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n", body.len());
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).unwrap();
}

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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stream_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "events")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "stream")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/events")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(60);
    let events = [
        event("/stream", Some("good")),
        event("/stream", None),
        event("/stream", Some("down")),
        event("/elsewhere", Some("good")),
        event("/stream", Some("forged")),
    ];
    let mut posted = Vec::new();
    let mut served = 0;
    'connections: while posted.len() < events.len() {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while let Some(request) = read_request(&mut reader) {
            if request.path.ends_with("/runtime/invocation/next") {
                if served == events.len() {
                    break 'connections;
                }
                let headers = [
                    ("lambda-runtime-aws-request-id", format!("req-{served}")),
                    ("lambda-runtime-deadline-ms", deadline.timestamp_millis().to_string()),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:events".into(),
                    ),
                ];
                respond(&mut writer, &headers, &events[served]);
                served += 1;
            } else {
                respond(&mut writer, &[], "{}");
                posted.push(request);
                if posted.len() == events.len() {
                    break 'connections;
                }
            }
        }
    }
    child.kill().ok();
    child.wait().ok();
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
