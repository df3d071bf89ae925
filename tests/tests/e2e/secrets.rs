//! No secret reaches a log line or an error body: every log line the host writes while handling good, bad and
//! failing requests is captured and searched for the configured secrets.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::*;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEEL_SECRET: &str = "keel-secret-AAAA1111";
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log_line_or_error_body() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt().json().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).init();

    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_pairs([
        ("WEBHOOK_SECRET_ACME", format!("rotated-out-BBBB2222,{KEEL_SECRET}")),
        ("WEBHOOK_SECRET_STD", STANDARD_SECRET.to_string()),
        ("WEBHOOK_SCHEME_STD", "standard".to_string()),
        ("KEEL_FAULTS", "queue.send:0.5".to_string()),
        ("WEBHOOK_RETRY_BASE_SECONDS", "0".to_string()),
    ]);
    let options = HostOptions {
        port: 0,
        data_dir: dir.path().to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env,
    };
    let host = Host::start(options).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks/acme", host.addr());
    let now = chrono::Utc::now();
    let mut bodies = Vec::new();
    for n in 0..10 {
        let body = format!(r#"{{"type":"t","n":{n}}}"#);
        let good = keel_headers(KEEL_SECRET, &format!("evt_{n}"), now, body.as_bytes());
        let wrong = keel_headers("guess", &format!("evt_{n}"), now, body.as_bytes());
        for headers in [good, wrong] {
            let mut request = client.post(&url).body(body.clone());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request.send().await.unwrap();
            bodies.push(response.text().await.unwrap());
        }
    }
    let standard = client
        .post(format!("http://{}/webhooks/std", host.addr()))
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", now.timestamp().to_string())
        .header("webhook-signature", "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(standard.status(), 401);
    bodies.push(standard.text().await.unwrap());
    // An operator's request is logged with the operator; a member's evaluation is not logged at all.
    let operator = host.token("org-ops", "op-user-7", &["platform-admin"]);
    let listed = client
        .get(format!("http://{}/v1/webhooks/acme/deliveries", host.addr()))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let member = host.token("org-1", "member-user-9", &["member"]);
    let evaluated = client.get(format!("http://{}/v1/flags", host.addr())).bearer_auth(&member).send().await.unwrap();
    assert_eq!(evaluated.status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.shutdown().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().count() > 10, "the host logged: {logs}");
    let operator_lines: Vec<&str> = logs.lines().filter(|line| line.contains("operator request")).collect();
    assert_eq!(operator_lines.len(), 1, "{operator_lines:?}");
    assert!(
        operator_lines[0].contains("op-user-7") && operator_lines[0].contains("/v1/webhooks/{provider}/deliveries")
    );
    assert!(!logs.contains("member-user-9"), "a member's evaluation is not logged");
    for secret in [KEEL_SECRET, "rotated-out-BBBB2222", STANDARD_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!logs.contains(secret), "a log line contains a secret");
        assert!(bodies.iter().all(|b| !b.contains(secret)), "an error body contains a secret");
    }
}
