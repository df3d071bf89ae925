//! The host against the repository's own template.yaml and Keel's functions: it serves exactly what the template
//! declares, every declared route reaches its function, and a webhook goes all the way through (ingest, queue,
//! worker, bus) and is still there after a restart.

use hmac::{Hmac, Mac};
use keel::config::Env;
use keel_local::{Backend, Host, HostError, HostOptions, QueueMapping, declared, served};
use serde_json::{Value, json};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SECRET: &str = "template-test-secret";

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml")
}

fn options(data_dir: &Path) -> HostOptions {
    HostOptions {
        port: 0,
        data_dir: data_dir.to_path_buf(),
        backend: Backend::Embedded,
        template: template(),
        env: Env::from_pairs([("WEBHOOK_SECRET_ACME", SECRET), ("WEBHOOK_RETRY_BASE_SECONDS", "0")]),
    }
}

fn signed(body: &str, event_id: &str) -> Vec<(&'static str, String)> {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    vec![
        ("x-webhook-event-id", event_id.to_string()),
        ("x-webhook-timestamp", timestamp),
        ("x-webhook-signature", hex::encode(mac.finalize().into_bytes())),
        ("content-type", "application/json".to_string()),
    ]
}

async fn post_webhook(client: &reqwest::Client, host: &Host, event_id: &str) -> reqwest::StatusCode {
    let body = format!(r#"{{"type":"order.created","id":"{event_id}"}}"#);
    let mut request = client.post(format!("http://{}/webhooks/acme", host.addr())).body(body.clone());
    for (name, value) in signed(&body, event_id) {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn serves_exactly_what_the_template_declares() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(options(dir.path())).await.unwrap();
    let declared = declared(&template()).unwrap();
    assert_eq!(served(&host), declared);
    assert!(declared.routes.contains(&("POST".to_string(), "/webhooks/{provider}".to_string())));
    let mapping = |queue: &str, function: &str| QueueMapping {
        queue: queue.into(),
        function: function.into(),
        batch_size: 10,
        report_batch_item_failures: true,
    };
    assert_eq!(declared.queues, vec![mapping("JobQueue", "job-worker"), mapping("WebhookQueue", "webhook-worker")]);

    // Every declared route reaches a function: whatever it answers, it is not the host's own 404 or 401.
    let client = reqwest::Client::new();
    let token = host.token("org-1", "operator", &["platform-admin"]);
    for (method, path) in &declared.routes {
        let concrete = path
            .replace("{provider}", "acme")
            .replace("{deliveryId}", "01HZZZZZZZZZZZZZZZZZZZZZZZ")
            .replace("{key}", "a-flag")
            .replace("{orgId}", "org-1")
            .replace("{userId}", "a-user")
            .replace("{name}", "a-segment")
            .replace("{file}", "no-such-asset.js")
            .replace("{id}", "01HZZZZZZZZZZZZZZZZZZZZZZZ");
        assert!(!concrete.contains('{'), "a path parameter this test does not know: {path}");
        let response = client
            .request(method.parse().unwrap(), format!("http://{}{concrete}", host.addr()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            parsed != json!({"message": "Not Found"}) && parsed != json!({"message": "Unauthorized"}),
            "{method} {path} did not reach its function: {status} {body}"
        );
    }
    host.shutdown().await;
}

#[tokio::test]
async fn operator_routes_sit_behind_the_jwt_authorizer_and_webhooks_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(options(dir.path())).await.unwrap();
    let client = reqwest::Client::new();
    let deliveries = format!("http://{}/v1/webhooks/acme/deliveries", host.addr());
    let response = client.get(&deliveries).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"message": "Unauthorized"}));
    let member = host.token("org-1", "someone", &["member"]);
    let response = client.get(&deliveries).bearer_auth(member).send().await.unwrap();
    assert_eq!(response.status(), 403, "the token is verified; the function decides on the role");
    let unsigned = client.post(format!("http://{}/webhooks/acme", host.addr())).body("{}").send().await.unwrap();
    assert!(unsigned.status().is_client_error(), "the function rejects the missing signature");
    assert_ne!(unsigned.json::<Value>().await.unwrap(), json!({"message": "Unauthorized"}), "not the authorizer's 401");
    host.shutdown().await;
}

#[tokio::test]
async fn a_webhook_goes_through_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let host = Host::start(options(dir.path())).await.unwrap();
    assert_eq!(post_webhook(&client, &host, "evt_restart_1").await, 202);
    let started = Instant::now();
    while host.bus_recorded().unwrap().is_empty() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded = host.bus_recorded().unwrap();
    assert_eq!(recorded.len(), 1, "the worker forwarded the event to the bus");
    assert_eq!(recorded[0].event.source, "keel.webhooks");
    host.shutdown().await;

    let host = Host::start(options(dir.path())).await.unwrap();
    assert_eq!(host.bus_recorded().unwrap().len(), 1);
    let token = host.token("org-1", "operator", &["platform-admin"]);
    let list = client
        .get(format!("http://{}/v1/webhooks/acme/deliveries", host.addr()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let list = list.text().await.unwrap();
    assert!(list.contains("evt_restart_1") && list.contains("completed"), "{list}");
    assert_eq!(post_webhook(&client, &host, "evt_restart_1").await, 200, "still a duplicate after the restart");
    host.shutdown().await;
}

#[tokio::test]
async fn a_template_function_without_a_constructor_fails_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(template()).unwrap();
    let renamed = text.replace("Binary: webhook-ops", "Binary: webhook-unknown");
    let path = dir.path().join("template.yaml");
    std::fs::write(&path, renamed).unwrap();
    let mut options = options(&dir.path().join("data"));
    options.template = path;
    let error = Host::start(options).await.unwrap_err();
    assert!(matches!(&error, HostError::Registry(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("webhook-unknown") && message.contains("webhook-ops"), "{message}");
}
