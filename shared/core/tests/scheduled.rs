//! A scheduled function runs on Lambda's Runtime API (`keel::lambda::run_scheduled`): this test serves the Runtime
//! API itself, on a local port, to a child copy of this test binary that runs the function as a Lambda would.
//! The scheduler's payload reaches the function; success is posted as the invocation's response, failure as its
//! error (so EventBridge Scheduler retries it).

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use keel::function::{Invocation, ScheduledFunction};
use keel::testing::runtime_api;
use std::sync::Arc;

const CHILD: &str = "KEEL_TEST_SCHEDULED_CHILD";

#[test]
fn a_scheduled_function_answers_the_runtime_api_with_its_result_or_its_error() {
    let events = [r#"{"task":"sweep","fail":false}"#, r#"{"task":"sweep","fail":true}"#].map(String::from);
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(30);
    let posted: Vec<(String, String)> = runtime_api::serve("scheduled_child", CHILD, "cleanup", &events, deadline)
        .into_iter()
        .map(|posted| (posted.path.clone(), posted.text()))
        .collect();
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
