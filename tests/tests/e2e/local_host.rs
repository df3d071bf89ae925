//! End-to-end: real HTTP against `keel-local` on the embedded backend, the queue polled into the worker, events
//! on the bus. Each test runs its own host on a free port with its own data directory.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SECRET: &str = "e2e-secret-never-logged";

async fn start(extra: &[(&str, &str)]) -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = Env::from_pairs([
        ("WEBHOOK_SECRET_ACME", SECRET),
        ("WEBHOOK_RETRY_BASE_SECONDS", "0"),
        ("WEBHOOK_LEASE_SECONDS", "2"),
    ]);
    for (name, value) in extra {
        env.set(*name, *value);
    }
    let host = Host::start(HostOptions {
        port: 0,
        data_dir: dir.path().to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env,
    })
    .await
    .unwrap();
    (host, dir)
}

/// Sends one signed webhook; returns the status.
async fn send(client: &reqwest::Client, host: &Host, event_id: &str) -> u16 {
    let body = format!(r#"{{"type":"order.created","id":"{event_id}"}}"#);
    let mut request = client.post(format!("http://{}/webhooks/acme", host.addr())).body(body.clone());
    for (name, value) in keel_headers(SECRET, event_id, chrono::Utc::now(), body.as_bytes()) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// A sender that retries on anything but 2xx, as webhook providers do (bounded).
async fn send_until_acknowledged(client: &reqwest::Client, host: &Host, event_id: &str) {
    for _ in 0..50 {
        if (200..300).contains(&send(client, host, event_id).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{event_id} was never acknowledged");
}

/// Forwarded events per event id.
fn forwarded(host: &Host) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for recorded in host.bus_recorded().unwrap() {
        let id = recorded.event.detail["event_id"].as_str().unwrap_or_default().to_string();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Waits until `expected` distinct events are forwarded, redriving the DLQ now and then as an operator would.
async fn wait_for_forwarding(
    client: &reqwest::Client,
    host: &Host,
    expected: usize,
    deadline: Duration,
) -> HashMap<String, usize> {
    let start = Instant::now();
    let token = host.token("org-ops", "operator", &["platform-admin"]);
    let mut last_redrive = Instant::now();
    loop {
        let counts = forwarded(host);
        if counts.len() >= expected || start.elapsed() > deadline {
            // Let any straggling duplicate show itself before judging.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return forwarded(host);
        }
        if last_redrive.elapsed() > Duration::from_secs(3) {
            let _ = client
                .post(format!("http://{}/v1/webhooks/dead-letters/redrive", host.addr()))
                .bearer_auth(&token)
                .send()
                .await;
            last_redrive = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_storm_forwards_each_event_exactly_once() {
    let (host, _dir) = start(&[]).await;
    let client = reqwest::Client::new();
    let events = 40;
    let mut sends = Vec::new();
    for n in 0..events {
        for _ in 0..(1 + n % 5) {
            let (client, host, id) = (client.clone(), &host, format!("evt_storm_{n}"));
            sends.push(async move { send(&client, host, &id).await });
        }
    }
    let statuses = futures::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| (200..300).contains(s)), "{statuses:?}");
    let counts = wait_for_forwarding(&client, &host, events, Duration::from_secs(30)).await;
    assert_eq!(counts.len(), events);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    host.shutdown().await;
}

async fn faults_lose_nothing_and_double_nothing(spec: &str) {
    let (host, _dir) = start(&[("KEEL_FAULTS", spec)]).await;
    let client = reqwest::Client::new();
    let events = 20;
    let sends = (0..events).map(|n| {
        let (client, host) = (client.clone(), &host);
        async move { send_until_acknowledged(&client, host, &format!("evt_fault_{n}")).await }
    });
    futures::future::join_all(sends).await;
    let counts = wait_for_forwarding(&client, &host, events, Duration::from_secs(60)).await;
    assert_eq!(counts.len(), events, "{spec}: lost events: {counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{spec}: doubled events: {counts:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_in_table_transactions_lose_nothing() {
    faults_lose_nothing_and_double_nothing("table.transact:0.3:ambiguous").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_in_table_reads_lose_nothing() {
    faults_lose_nothing_and_double_nothing("table.get:0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_in_table_writes_lose_nothing() {
    faults_lose_nothing_and_double_nothing("table.put:0.3:ambiguous").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_in_queue_sends_lose_nothing() {
    faults_lose_nothing_and_double_nothing("queue.send:0.3:ambiguous").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_in_queue_receives_and_deletes_lose_nothing() {
    faults_lose_nothing_and_double_nothing("queue.receive:0.3,queue.delete:0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_in_bus_publishing_lose_nothing() {
    faults_lose_nothing_and_double_nothing("bus.put:0.3").await;
}

/// The template's bucket is an object store beside the embedded database: its links are served by the host
/// (403 once altered, 404 once the object is gone), it counts in readiness, and links are signed with a key that
/// survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_bucket_serves_signed_links_and_keeps_its_key_across_a_restart() {
    let (host, dir) = start(&[]).await;
    let client = reqwest::Client::new();
    let bucket = host.bucket("ExportBucket").expect("the template's bucket");
    let source = dir.path().join("source.zip");
    std::fs::write(&source, b"PK bundle").unwrap();
    bucket.put_file("exports/u1/e1.zip", &source, "application/zip").await.unwrap();

    let link = bucket.link("exports/u1/e1.zip", Duration::from_secs(900)).await.unwrap();
    assert!(
        link.starts_with(&format!("http://{}/local/objects/ExportBucket/exports/u1/e1.zip?", host.addr())),
        "{link}"
    );
    let response = client.get(&link).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"PK bundle");
    let altered = link.replace("signature=", "signature=00");
    assert_eq!(client.get(&altered).send().await.unwrap().status(), 403);
    let elsewhere = link.replace("/ExportBucket/", "/OtherBucket/");
    assert_eq!(client.get(&elsewhere).send().await.unwrap().status(), 404);

    let ready: serde_json::Value =
        client.get(format!("http://{}/health/ready", host.addr())).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["bucket ExportBucket"], "ok", "{ready}");

    let old_addr = host.addr().to_string();
    host.shutdown().await;
    let host = Host::start(HostOptions {
        port: 0,
        data_dir: dir.path().to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env: Env::from_pairs([("WEBHOOK_SECRET_ACME", SECRET)]),
    })
    .await
    .unwrap();
    let moved = link.replace(&old_addr, &host.addr().to_string());
    let response = client.get(&moved).send().await.unwrap();
    assert_eq!(response.status(), 200, "a link signed before the restart still opens");
    host.bucket("ExportBucket").unwrap().delete("exports/u1/e1.zip").await.unwrap();
    assert_eq!(client.get(&moved).send().await.unwrap().status(), 404);
    host.shutdown().await;
}
