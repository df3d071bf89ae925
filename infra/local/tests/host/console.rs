//! The web console in a real browser: keel-local on Keel's own template serves it at `/console`, seeded with a
//! flag, webhook deliveries, jobs and a GDPR request; `console/tests/browser.mjs` drives Debian's Chromium through
//! every page and the main actions (see that file). Its screenshots are kept in `target/console-screenshots/`.
//! The host's authorizer also accepts an issuer's tokens (`tests/sdk/oidc_login.py`, an OIDC issuer with a sign-in
//! page), so the sign-in through it (authorization code with PKCE) is driven end to end as well.
//! The console must have been built (`bash infra/bootstrap.sh` builds it): a missing build fails here, loudly.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SECRET: &str = "console-test-secret";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn call(host: &Host, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("http://{}{path}", host.addr())).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn send_webhook(host: &Host, id: &str) -> Value {
    let body = json!({"type": "invoice.paid", "id": id, "amount": 4200}).to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks/acme", host.addr()))
        .header("x-webhook-event-id", id)
        .header("x-webhook-timestamp", &timestamp)
        .header("x-webhook-signature", keel_local::check::sign(SECRET, &timestamp, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium_for_an_admin_and_keeps_a_member_out() {
    let dist = repo().join("console/dist/index.html");
    assert!(dist.exists(), "the console is not built: run `bash infra/bootstrap.sh` (it runs npm's build in console/)");
    let dir = tempfile::tempdir().unwrap();
    // The issuer needs the console's address (its redirect URI) and the host the issuer's: a port chosen first.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut issuer = tokio::process::Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/sdk/oidc_login.py"))
        .args(["keel-console", &format!("http://127.0.0.1:{port}/console"), "ines", "acme", "member"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the issuer starts (bash infra/bootstrap.sh installs joserfc into .venv)");
    let mut announced = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::io::BufReader::new(issuer.stdout.take().unwrap()).read_line(&mut announced).await.unwrap();
    let issuer_url = serde_json::from_str::<Value>(&announced).unwrap()["issuer"].as_str().unwrap().to_string();
    let host = Host::start(HostOptions {
        port,
        data_dir: dir.path().to_path_buf(),
        backend: Backend::Embedded,
        template: repo().join("template.yaml"),
        env: Env::from_pairs([
            ("KEEL_STAGE", "dev"),
            ("WEBHOOK_SECRET_ACME", SECRET),
            ("RATE_LIMIT_IP", "off"),
            ("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify"),
            ("JOB_SECRET_NOTIFY", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("JWT_ISSUER", issuer_url.as_str()),
            ("JWT_AUDIENCE", "keel-console"),
        ]),
    })
    .await
    .unwrap();
    let admin = host.token("ops", "oncall", &["platform-admin"]);
    let member = host.token("acme", "ann", &["member"]);
    use reqwest::Method;

    // A flag with a trail, deliveries forwarded, a job that completed and one that waits, a GDPR request.
    let beta = json!({"key": "beta", "description": "Beta", "target_users": ["ann"], "default_value": false});
    assert_eq!(call(&host, &admin, Method::POST, "/v1/admin/flags", Some(beta)).await.0, 201);
    let typed = json!({"key": "checkout-copy", "value_type": "string", "default_value": true,
        "default_variant": {"name": "plain", "payload": {"type": "string", "value": "Buy"}}});
    let (status, created) = call(&host, &admin, Method::POST, "/v1/admin/flags", Some(typed)).await;
    assert_eq!(status, 201, "{created}");
    let first = send_webhook(&host, "evt_console_1").await;
    send_webhook(&host, "evt_console_2").await;
    let delivery = first["delivery_id"].as_str().unwrap().to_string();
    let (status, done) = call(
        &host,
        &admin,
        Method::POST,
        "/v1/jobs",
        Some(json!({"type": "keel.check", "input": {"nonce": "console"}})),
    )
    .await;
    assert_eq!(status, 202, "{done}");
    let later = json!({"type": "notify.email", "input": {"to": "ops@example.com", "template": "welcome"},
        "run_at": "2027-06-01T00:00:00Z"});
    let (status, pending) = call(&host, &admin, Method::POST, "/v1/jobs", Some(later.clone())).await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(call(&host, &member, Method::POST, "/v1/jobs", Some(later)).await.0, 202);
    let export = json!({"user_id": "ann", "reason": "TICKET-1: the console's seed"});
    assert_eq!(call(&host, &admin, Method::POST, "/v1/admin/gdpr/exports", Some(export)).await.0, 202);
    let started = Instant::now();
    loop {
        let (_, page) = call(&host, &admin, Method::GET, "/v1/webhooks/acme/deliveries?status=completed", None).await;
        if page["items"].as_array().is_some_and(|items| items.len() == 2) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "deliveries not forwarded: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let artifacts = repo().join("target/console-screenshots");
    // This run's screenshots only.
    std::fs::remove_dir_all(&artifacts).ok();
    let output = tokio::process::Command::new("node")
        .arg(repo().join("console/tests/browser.mjs"))
        .current_dir(repo().join("console"))
        .env("CONSOLE_URL", format!("http://{}/console", host.addr()))
        .env("ADMIN_TOKEN", &admin)
        .env("MEMBER_TOKEN", &member)
        .env("PENDING_JOB", pending["id"].as_str().unwrap())
        .env("DELIVERY", &delivery)
        .env("ARTIFACTS", &artifacts)
        .env("OIDC_USER", "ines")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let shots = std::fs::read_dir(&artifacts).unwrap().count();
    assert!(shots >= 20, "a screenshot of each page: {shots}");

    // The live feed reported the cancel: the job is cancelled in the store, by the admin.
    let (_, job) =
        call(&host, &admin, Method::GET, &format!("/v1/jobs/{}", pending["id"].as_str().unwrap()), None).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    host.shutdown().await;
    issuer.kill().await.ok();
}
