//! The feed as Server-Sent Events on the embedded table: where a stream starts and resumes, that each event comes
//! once and in order with its position as `id`, another organization's events never, heartbeats, the end of a
//! stream, a feed that cannot be read, a client that leaves, and a position that is not one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use events_stream::{EventsStream, Settings};
use futures::StreamExt;
use keel::bus::EventBus;
use keel::clock::{Clock, SystemClock};
use keel::function::{ByteStream, StreamFunction};
use keel::identity::{Identity, Role};
use keel::table::Table;
use keel::testing::SwitchableTable;
use keel_embedded::{EmbeddedDb, QueueSpec};
use keel_jobs::Jobs;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

struct World {
    _dir: tempfile::TempDir,
    table: Arc<SwitchableTable>,
    jobs: Jobs,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let table = Arc::new(SwitchableTable::new(Arc::new(db.table("JobsTable", clock.clone()))));
    let queue = Arc::new(db.queue(QueueSpec::new("JobQueue"), clock.clone()));
    let bus: Arc<dyn EventBus> = Arc::new(db.bus("EventBus"));
    let jobs = Jobs::new(table.clone(), queue, bus, clock);
    World { _dir: dir, table, jobs }
}

const FAST: Settings =
    Settings { poll: Duration::from_millis(50), heartbeat: Duration::from_secs(60), longest: Duration::from_secs(60) };

impl World {
    fn stream(&self, settings: Settings) -> EventsStream {
        let table: Arc<dyn Table> = self.table.clone();
        EventsStream::new(table, Arc::new(SystemClock), settings)
    }

    async fn publish(&self, org: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let (event, _) = self.jobs.domain_event(org, None, "order.placed", json!({ "n": i })).await.unwrap();
            ids.push(event.id);
        }
        ids
    }
}

fn caller(org: &str) -> Identity {
    Identity { user_id: "ada".into(), org_id: org.into(), roles: vec![Role::Member] }
}

fn request(last_event_id: Option<&str>, query: Option<&str>) -> keel::http::Request {
    let mut event = keel_tests_request();
    if let Some(id) = last_event_id {
        event.headers.insert("last-event-id", id.parse().unwrap());
    }
    if let Some(query) = query {
        let (name, value) = query.split_once('=').unwrap();
        event.raw_query_string = Some(query.to_string());
        event.query_string_parameters =
            [(name.to_string(), value.to_string())].into_iter().collect::<std::collections::HashMap<_, _>>().into();
    }
    keel::lambda::request_of(event)
}

fn keel_tests_request() -> aws_lambda_events::apigw::ApiGatewayV2httpRequest {
    serde_json::from_value(json!({
        "rawPath": events_stream::PATH, "requestContext": {"http": {"method": "GET", "path": events_stream::PATH}}
    }))
    .unwrap()
}

/// One frame of the stream: its `id` and data, or a comment, or a field alone (`retry`).
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Event { id: String, data: Value },
    Comment(String),
    Field(String),
}

/// Reads frames until `want` of them are events or `wait` passes (then `None` marks "still open").
async fn read(stream: &mut ByteStream, buffer: &mut String, want: usize, wait: Duration) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let text: String = buffer.drain(..end + 2).collect();
            let text = text.trim_end();
            let frame = if let Some(comment) = text.strip_prefix(": ") {
                Frame::Comment(comment.to_string())
            } else if text.starts_with("id: ") {
                let mut lines = text.lines();
                let id = lines.next().unwrap().strip_prefix("id: ").unwrap().to_string();
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                Frame::Event { id, data: serde_json::from_str(data).unwrap() }
            } else {
                Frame::Field(text.to_string())
            };
            frames.push(frame);
        }
        if frames.iter().filter(|f| matches!(f, Frame::Event { .. })).count() >= want && want > 0 {
            return (frames, true);
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
            Ok(None) => return (frames, false),
            Err(_) => return (frames, true),
        }
    }
}

fn events(frames: &[Frame]) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Event { id, data } => Some((id.clone(), data.clone())),
            _ => None,
        })
        .collect()
}

fn far() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::hours(1)
}

#[tokio::test]
async fn a_stream_starts_at_the_present_and_a_reconnect_resumes_after_its_last_id_with_no_gap_and_no_duplicate() {
    let world = world();
    let before = world.publish("o1", 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // settled before the stream opens
    let function = world.stream(FAST);
    let mut stream = function.open(caller("o1"), &request(None, None), far()).await.unwrap();
    let mut buffer = String::new();
    let after: Vec<String> = world.publish("o1", 4).await;
    world.publish("o2", 2).await; // another organization's: never on this stream
    let (frames, open) = read(&mut stream, &mut buffer, 4, Duration::from_secs(10)).await;
    assert!(open);
    assert_eq!(frames.first(), Some(&Frame::Field("retry: 1000".into())), "the stream asks for a quick reconnect");
    let got = events(&frames);
    let ids: Vec<&str> = got.iter().map(|(_, data)| data["id"].as_str().unwrap()).collect();
    assert_eq!(ids, after.iter().map(String::as_str).collect::<Vec<_>>(), "the present's events, in order, once");
    assert!(got.iter().all(|(_, data)| data["org_id"] == "o1" && data["type"] == "order.placed"));
    // Nothing more arrives (no duplicate, nothing of o2) while the stream stays open.
    let (more, open) = read(&mut stream, &mut buffer, 1, Duration::from_millis(1500)).await;
    assert!(open && events(&more).is_empty(), "{more:?}");

    // The client leaves after the second event and reconnects with its id: the rest, then what came meanwhile.
    drop(stream);
    let meanwhile = world.publish("o1", 2).await;
    let last_seen = got[1].0.clone();
    let mut again = function.open(caller("o1"), &request(Some(&last_seen), None), far()).await.unwrap();
    let (frames, _) = read(&mut again, &mut String::new(), 4, Duration::from_secs(10)).await;
    let resumed: Vec<String> = events(&frames).iter().map(|(_, d)| d["id"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = after[2..].iter().chain(&meanwhile).cloned().collect();
    assert_eq!(resumed, expected);

    // From the very first event's position (a JSON page's cursor, in the query): everything after it.
    let first = world.jobs.feed("o1", None, 1).await.unwrap().0[0].0.clone();
    let mut replay =
        function.open(caller("o1"), &request(None, Some(&format!("last_event_id={first}"))), far()).await.unwrap();
    let (frames, _) = read(&mut replay, &mut String::new(), 8, Duration::from_secs(10)).await;
    let replayed: Vec<String> = events(&frames).iter().map(|(_, d)| d["id"].as_str().unwrap().to_string()).collect();
    let all: Vec<String> = before[1..].iter().chain(&after).chain(&meanwhile).cloned().collect();
    assert_eq!(replayed, all);
    // The header wins over the query parameter.
    let mut both = function
        .open(caller("o1"), &request(Some(&last_seen), Some(&format!("last_event_id={first}"))), far())
        .await
        .unwrap();
    let (frames, _) = read(&mut both, &mut String::new(), 4, Duration::from_secs(10)).await;
    assert_eq!(events(&frames)[0].1["id"], json!(after[2]));
}

#[tokio::test]
async fn a_quiet_stream_sends_heartbeats_and_ends_by_its_deadline() {
    let world = world();
    let settings = Settings { heartbeat: Duration::from_millis(300), ..FAST };
    let function = world.stream(settings);
    let until = chrono::Utc::now() + chrono::Duration::milliseconds(1200);
    let started = tokio::time::Instant::now();
    let mut stream = function.open(caller("o1"), &request(None, None), until).await.unwrap();
    let (frames, open) = read(&mut stream, &mut String::new(), 0, Duration::from_secs(10)).await;
    assert!(!open, "the stream ended");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1100) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    let heartbeats = frames.iter().filter(|f| **f == Frame::Comment("heartbeat".into())).count();
    assert!((2..=5).contains(&heartbeats), "{frames:?}");

    // The longest a stream lasts bounds it too, whatever the deadline.
    let short = world.stream(Settings { longest: Duration::from_millis(500), ..FAST });
    let started = tokio::time::Instant::now();
    let mut stream = short.open(caller("o1"), &request(None, None), far()).await.unwrap();
    let (_, open) = read(&mut stream, &mut String::new(), 0, Duration::from_secs(10)).await;
    assert!(!open && started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_feed_that_cannot_be_read_ends_the_stream_and_a_client_that_leaves_stops_the_reads() {
    let world = world();
    let function = world.stream(FAST);
    world.table.set_down(true);
    let mut stream = function.open(caller("o1"), &request(None, None), far()).await.unwrap();
    let (_, open) = read(&mut stream, &mut String::new(), 0, Duration::from_secs(10)).await;
    assert!(!open, "after {} failed reads the stream ends, so the client reconnects", events_stream::FAILED_READS);
    world.table.set_down(false);

    // A failure or two in a row is ridden out.
    let mut stream = function.open(caller("o1"), &request(None, None), far()).await.unwrap();
    world.table.set_down(true);
    tokio::time::sleep(Duration::from_millis(80)).await;
    world.table.set_down(false);
    let published = world.publish("o1", 1).await;
    let (frames, open) = read(&mut stream, &mut String::new(), 1, Duration::from_secs(10)).await;
    assert!(open);
    assert_eq!(events(&frames)[0].1["id"], json!(published[0]));

    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reads = world.table.queries();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.table.queries(), reads, "nobody listens: the feed is no longer read");
}

#[tokio::test]
async fn a_last_event_id_that_is_not_a_position_is_a_422_naming_its_parameter() {
    let world = world();
    let function = world.stream(FAST);
    for bad in ["job-1.3", "0", "01ARZ3NDEKTSV4RRFFQ69G5FAVX"] {
        let problem = match function.open(caller("o1"), &request(Some(bad), None), far()).await {
            Err(problem) => problem,
            Ok(_) => panic!("{bad} was taken for a position"),
        };
        assert_eq!(problem.status, 422, "{bad}");
        let body = serde_json::to_value(&problem).unwrap();
        assert_eq!(body["errors"][0]["pointer"], "last_event_id", "{body}");
    }
}
