//! A scheduled function runs on Lambda's Runtime API (`keel::lambda::run_scheduled`): this test serves the Runtime
//! API itself, on a local port, to a child copy of this test binary that runs the function as a Lambda would.
//! The scheduler's payload reaches the function; success is posted as the invocation's response, failure as its
//! error (so EventBridge Scheduler retries it).

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use keel::function::{Invocation, ScheduledFunction};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const CHILD: &str = "KEEL_TEST_SCHEDULED_CHILD";

/// One HTTP/1.1 request: method, path, body.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String, String)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, String::from_utf8_lossy(&body).into_owned()))
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

#[test]
fn a_scheduled_function_answers_the_runtime_api_with_its_result_or_its_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "scheduled_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "cleanup")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "stream")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/cleanup")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let events = [r#"{"task":"sweep","fail":false}"#, r#"{"task":"sweep","fail":true}"#];
    let mut posted = Vec::new();
    let mut served = 0;
    listener.set_nonblocking(false).unwrap();
    'connections: while posted.len() < events.len() {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while let Some((method, path, body)) = read_request(&mut reader) {
            if method == "GET" && path.ends_with("/runtime/invocation/next") {
                if served == events.len() {
                    break 'connections;
                }
                let deadline = (chrono::Utc::now() + chrono::Duration::seconds(30)).timestamp_millis();
                let headers = [
                    ("lambda-runtime-aws-request-id", format!("req-{served}")),
                    ("lambda-runtime-deadline-ms", deadline.to_string()),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:cleanup".into(),
                    ),
                    ("lambda-runtime-trace-id", "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into()),
                ];
                respond(&mut writer, &headers, events[served]);
                served += 1;
            } else {
                posted.push((path, body));
                respond(&mut writer, &[], "{}");
                if posted.len() == events.len() {
                    break 'connections;
                }
            }
        }
    }
    child.kill().ok();
    child.wait().ok();
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_eq!(posted[0].0, "/2018-06-01/runtime/invocation/req-0/response");
    assert_eq!(posted[0].1, "null", "the unit result");
    assert_eq!(posted[1].0, "/2018-06-01/runtime/invocation/req-1/error");
    assert!(posted[1].1.contains("the sweep failed on purpose"), "{}", posted[1].1);
}

struct Sweep;

#[async_trait]
impl ScheduledFunction for Sweep {
    async fn call(&self, event: serde_json::Value, invocation: Invocation) -> Result<(), String> {
        assert!(invocation.request_id.starts_with("req-"));
        assert_eq!(event["task"], "sweep", "the scheduler's payload");
        if event["fail"] == true { Err("the sweep failed on purpose".into()) } else { Ok(()) }
    }
}

#[test]
#[ignore = "run by a_scheduled_function_answers_the_runtime_api_with_its_result_or_its_error in a child process"]
fn scheduled_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _ = runtime.block_on(keel::lambda::run_scheduled("cleanup", Arc::new(Sweep)));
}
