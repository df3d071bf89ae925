//! `--backend aws` against the AWS emulator (moto): the host provisions the template's table, queues (with their
//! redrive policy) and bus as `keel-local-<LogicalId>`, and a webhook goes through ingest, SQS and the worker to a
//! completed delivery, exactly as on the embedded backend.

use hmac::{Hmac, Mac};
use keel_aws::testing::Emulator;
use sha2::Sha256;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "aws-backend-secret";

#[cfg(unix)]
#[tokio::test]
async fn a_webhook_goes_through_on_the_aws_backend() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-local"))
        .args(["--port", "0", "--backend", "aws", "--template"])
        .arg(&template)
        .arg("--data-dir")
        .arg(&data)
        .envs(emulator.env_vars())
        .env("WEBHOOK_SECRET_ACME", SECRET)
        .env("WEBHOOK_RETRY_BASE_SECONDS", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("keel-local listening on http://") {
                let _ = tx.send(Ok(addr.split_whitespace().next().unwrap_or_default().to_string()));
            } else if line.starts_with("keel-local:") {
                let _ = tx.send(Err(line));
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(Ok(addr)) => addr,
        other => {
            let _ = child.kill();
            panic!("the host did not start on the aws backend: {other:?}");
        }
    };
    let client = reqwest::Client::new();
    let ready = client.get(format!("http://{addr}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    let body = r#"{"type":"order.created","id":"evt_aws_1"}"#;
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let accepted = client
        .post(format!("http://{addr}/webhooks/acme"))
        .header("x-webhook-event-id", "evt_aws_1")
        .header("x-webhook-timestamp", &timestamp)
        .header("x-webhook-signature", hex::encode(mac.finalize().into_bytes()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);

    let token = keel_local::DevKey::load_or_create(&data)
        .unwrap()
        .issue("org-1", "operator", &["platform-admin"], chrono::Duration::minutes(5))
        .unwrap();
    let started = Instant::now();
    let completed = loop {
        let list = client
            .get(format!("http://{addr}/v1/webhooks/acme/deliveries"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if list.contains("\"completed\"") || started.elapsed() > Duration::from_secs(30) {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stopped = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let status = child.wait().unwrap();
    assert!(completed.contains("evt_aws_1") && completed.contains("\"completed\""), "{completed}");
    assert!(status.success(), "graceful shutdown: {status}");
}
