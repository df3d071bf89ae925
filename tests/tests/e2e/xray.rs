//! X-Ray tracing end to end: a UDP socket stands in for the Lambda X-Ray daemon, keel-local runs the webhook
//! pipeline, and the segments that arrive must form one trace with an unbroken parent chain from the caller's
//! trace header through ingest, its queue send, the worker's message and its bus put, to the forwarded event's
//! own `TraceHeader`.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::{keel_headers, repo_root};
use serde_json::Value;
use std::net::UdpSocket;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SECRET: &str = "xray-secret";
const CALLER: &str = "53995c3f42cd8ad8";

/// The stand-in daemon: tracing is installed once per process, so the tests of one process share it, one at a
/// time, each reading the segments of its own trace.
static DAEMON: OnceLock<UdpSocket> = OnceLock::new();
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn daemon() -> &'static UdpSocket {
    DAEMON.get_or_init(|| {
        let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
        daemon.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        keel::trace::install(daemon.local_addr().unwrap()).unwrap();
        daemon
    })
}

/// Every segment document of the trace `root` the daemon received (each datagram: a JSON header line, then the
/// document).
fn segments(root: &str, until: Instant) -> Vec<Value> {
    let mut found = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    while Instant::now() < until {
        let Ok(n) = daemon().recv(&mut buffer) else { continue };
        let datagram = String::from_utf8_lossy(&buffer[..n]).to_string();
        let (header, document) = datagram.split_once('\n').expect("a header line, then the document");
        assert_eq!(serde_json::from_str::<Value>(header).unwrap(), serde_json::json!({"format": "json", "version": 1}));
        let document: Value = serde_json::from_str(document).unwrap();
        if document["trace_id"] == root {
            found.push(document);
        }
    }
    found
}

async fn start_host(dir: &std::path::Path) -> Host {
    Host::start(HostOptions {
        port: 0,
        data_dir: dir.to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env: Env::from_pairs([("KEEL_STAGE", "dev"), ("WEBHOOK_SECRET_ACME", SECRET)]),
    })
    .await
    .unwrap()
}

/// POSTs a signed webhook with the trace header given (if any); the response.
async fn post_webhook(host: &Host, id: &str, trace_header: Option<&str>) -> reqwest::Response {
    let body = format!(r#"{{"type":"order.created","id":"{id}"}}"#);
    let mut request = reqwest::Client::new().post(format!("http://{}/webhooks/acme", host.addr()));
    if let Some(header) = trace_header {
        request = request.header("x-amzn-trace-id", header);
    }
    for (name, value) in keel_headers(SECRET, id, chrono::Utc::now(), body.as_bytes()) {
        request = request.header(name, value);
    }
    request.body(body).send().await.unwrap()
}

/// The first event the host's bus recorded, waiting for the worker to forward it.
async fn forwarded(host: &Host) -> keel::bus::BusEvent {
    let started = Instant::now();
    loop {
        if let Some(recorded) = host.bus_recorded().unwrap().into_iter().next() {
            return recorded.event;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the event was never forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn named<'a>(segments: &'a [Value], name: &str, parent: &str) -> &'a Value {
    segments
        .iter()
        .find(|s| s["name"] == name && s["parent_id"] == parent)
        .unwrap_or_else(|| panic!("no `{name}` with parent {parent} among {segments:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_webhook_post_through_the_worker_to_the_forwarded_event() {
    let _alone = ONE_AT_A_TIME.lock().await;
    daemon();
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;

    // X-Ray refuses a trace whose id is more than 30 days old: the root carries this second.
    let root = format!("1-{:08x}-bd862e3fe1be46a994272793", chrono::Utc::now().timestamp());
    let root = root.as_str();
    let response = post_webhook(&host, "evt-traced", Some(&format!("Root={root};Parent={CALLER};Sampled=1"))).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-trace-id"], root);

    let event = forwarded(&host).await;
    let segments = segments(root, Instant::now() + Duration::from_millis(500));
    host.shutdown().await;

    assert!(segments.iter().all(|s| s["trace_id"] == root), "one trace: {segments:#?}");
    let ingest = named(&segments, "webhook-ingest", CALLER);
    assert!(ingest.get("type").is_none(), "an invocation is a segment: {ingest}");
    let ingest_id = ingest["id"].as_str().unwrap();
    let transact = named(&segments, "table.transact", ingest_id);
    assert_eq!(transact["type"], "subsegment");
    let send = named(&segments, "queue.send", ingest_id);
    // The message's segment (the batch's own invocation may hang off the same send on keel-local).
    let put = segments.iter().find(|s| s["name"] == "bus.put").expect("a bus.put subsegment");
    let worker_id = put["parent_id"].as_str().unwrap();
    let worker = segments.iter().find(|s| s["id"] == worker_id).expect("the bus.put's parent");
    assert_eq!((&worker["name"], &worker["parent_id"]), (&Value::from("webhook-worker"), &send["id"]));
    named(&segments, "table.get", worker_id);
    let put_id = put["id"].as_str().unwrap();
    let header = event.trace_header.expect("the forwarded event carries a trace header");
    assert!(header.contains(&format!("Root={root}")) && header.contains(&format!("Parent={put_id}")), "{header}");
}

/// A request without a trace header (keel-local makes one up, naming only its root, as a client may send one),
/// and one whose header defers the sampling decision (`Sampled=?`): both are traced, in the trace the caller's
/// `X-Trace-Id` names, and the decision handed on is "sampled".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_without_parent_or_sampling_decision_still_traces_the_callers_trace() {
    let _alone = ONE_AT_A_TIME.lock().await;
    daemon();
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;

    let response = post_webhook(&host, "evt-untraced", None).await;
    assert_eq!(response.status(), 202);
    let root = response.headers()["x-trace-id"].to_str().unwrap().to_string();
    let event = forwarded(&host).await;
    let found = segments(&root, Instant::now() + Duration::from_millis(500));
    let ingest = found.iter().find(|s| s["name"] == "webhook-ingest").unwrap_or_else(|| panic!("{found:#?}"));
    assert!(ingest.get("parent_id").is_none(), "the root segment of the caller's trace: {ingest}");
    assert!(found.iter().any(|s| s["name"] == "webhook-worker"), "{found:#?}");
    let header = event.trace_header.expect("a trace header");
    assert!(header.contains(&format!("Root={root}")) && header.ends_with("Sampled=1"), "{header}");

    let deferred = format!("1-{:08x}-0123456789abcdef01234567", chrono::Utc::now().timestamp());
    let header = format!("Root={deferred};Parent={CALLER};Sampled=?");
    assert_eq!(post_webhook(&host, "evt-deferred", Some(&header)).await.status(), 202);
    let found = segments(&deferred, Instant::now() + Duration::from_secs(2));
    host.shutdown().await;
    assert!(found.iter().any(|s| s["name"] == "webhook-ingest" && s["parent_id"] == CALLER), "{found:#?}");
}
