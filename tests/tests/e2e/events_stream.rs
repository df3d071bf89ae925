//! The event stream on keel-local, read by the `eventsource` package (the WHATWG EventSource for Node,
//! `tests/sdk/sse_client.mjs`): streams end every two seconds here, the client reconnects on its own with
//! `Last-Event-ID`, and what it saw is exactly the feed, with no gap and no duplicate. Another organization's client
//! sees nothing, a bad token is refused, and shutting the host down ends open streams at once.

use crate::jobs_local::{Client, Service, start_with};
use keel_local::Host;
use keel_tests::repo_root;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Streams end every two seconds here, and the feed is read ten times a second.
async fn start(dir: &std::path::Path, service: &Service) -> Host {
    start_with(dir, service, &[(events_stream::LONGEST_VAR, "2"), (events_stream::POLL_VAR, "100")]).await
}

/// The Node client, its lines as they come, and its exit.
struct SseClient {
    lines: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    child: tokio::process::Child,
}

impl SseClient {
    fn start(host: &Host, token: &str, want: usize, seconds: u64) -> Self {
        let url = format!("http://{}{}", host.addr(), events_stream::PATH);
        let mut child = tokio::process::Command::new("node")
            .arg(repo_root().join("tests/sdk/sse_client.mjs"))
            .args([url, token.to_string(), want.to_string(), seconds.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (bash infra/bootstrap.sh installs the client)");
        let (sender, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let _ = sender.send(serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")));
            }
        });
        Self { lines, seen: Vec::new(), child }
    }

    /// Waits for a line `matches` accepts.
    async fn until(&mut self, matches: impl Fn(&Value) -> bool, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no such line within {within:?}; saw {:?}", self.seen))
                .unwrap_or_else(|| panic!("the client exited; saw {:?}", self.seen));
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    /// Every line, once the client has exited.
    async fn finish(mut self) -> Vec<Value> {
        self.child.wait().await.unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        self.seen
    }
}

async fn publish(host: &Host, token: &str, n: usize) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/events", host.addr()))
        .bearer_auth(token)
        .json(&json!({ "type": "order.placed", "data": { "n": n } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

async fn feed(host: &Host, token: &str) -> Vec<Value> {
    let (mut items, mut after) = (Vec::new(), None::<String>);
    loop {
        let mut url = format!("http://{}/v1/events/feed?limit=100", host.addr());
        if let Some(cursor) = &after {
            url.push_str(&format!("&after={cursor}"));
        }
        let page: Value =
            reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        let got = page["items"].as_array().unwrap().clone();
        if got.is_empty() {
            return items;
        }
        items.extend(got);
        after = page["next_cursor"].as_str().map(str::to_string);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventsource_client_that_reconnects_every_two_seconds_sees_the_whole_feed_once_in_order() {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &service).await;
    let ada = host.token("org-a", "ada", &["member"]);
    let eve = host.token("org-b", "eve", &["member"]);
    const DOMAIN: usize = 30;
    const TOTAL: usize = DOMAIN + 3; // and a job's created, started, completed

    let mut client = SseClient::start(&host, &ada, TOTAL, 60);
    client.until(|line| line["open"] == 1, Duration::from_secs(20)).await;
    let mut other = SseClient::start(&host, &eve, 1, 8);
    let refused = SseClient::start(&host, "not-a-token", 1, 8);
    other.until(|line| line["open"] == 1, Duration::from_secs(20)).await;

    let job = Client::new(&host, "org-a", "ada").create("ok").await;
    // Paced over about six seconds: three streams end (and reconnect) while events keep coming.
    for n in 0..DOMAIN {
        publish(&host, &ada, n).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lines = client.finish().await;
    let seen: Vec<&Value> = lines.iter().filter(|line| line.get("event").is_some()).collect();
    let opens = lines.iter().filter(|line| line.get("open").is_some()).count();
    println!("the client connected {opens} times for {} events", seen.len());
    assert!(opens >= 3, "the stream ended and the client reconnected by itself: {lines:?}");

    let feed = feed(&host, &ada).await;
    assert_eq!(feed.len(), TOTAL);
    let streamed: Vec<&Value> = seen.iter().map(|line| &line["event"]).collect();
    let paged: Vec<&Value> = feed.iter().collect();
    assert_eq!(streamed, paged, "the stream is the feed: every event, once, in order");
    let positions: Vec<&str> = seen.iter().map(|line| line["id"].as_str().unwrap()).collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "positions only grow: {positions:?}");
    let job_events: Vec<&str> = streamed
        .iter()
        .filter(|event| event["data"]["job_id"] == job["id"])
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert_eq!(job_events, ["job.created", "job.started", "job.completed"]);

    let other = other.finish().await;
    assert!(other.iter().all(|line| line.get("event").is_none()), "another organization's events: {other:?}");
    let refused = refused.finish().await;
    assert!(refused.iter().all(|line| line.get("open").is_none()), "{refused:?}");
    assert!(refused.iter().any(|line| line["code"] == 401), "{refused:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_host_down_ends_open_streams_at_once_and_a_stream_needs_get_on_its_path() {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    // Streams that would last their full 14 minutes.
    let host = start_with(dir.path(), &service, &[]).await;
    let token = host.token("org-a", "ada", &["member"]);
    let url = format!("http://{}{}", host.addr(), events_stream::PATH);
    let client = reqwest::Client::new();
    let response = client.post(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = client.get(&url).bearer_auth(&token).header("last-event-id", "nope").send().await.unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(response.headers()["content-type"], "application/problem+json");

    let mut open = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(open.headers()["content-type"], "text/event-stream");
    assert_eq!(open.headers()["cache-control"], "no-cache");
    assert_eq!(open.chunk().await.unwrap().unwrap(), "retry: 1000\n\n");
    let started = Instant::now();
    host.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited {:?} for the stream", started.elapsed());
    let rest = tokio::time::timeout(Duration::from_secs(5), open.chunk()).await.expect("the stream ended");
    assert!(matches!(rest, Ok(None) | Err(_)), "{rest:?}");
}
