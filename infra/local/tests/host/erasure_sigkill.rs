//! An erasure killed with SIGKILL midway (while it cancels and deletes the user's jobs), then the host restarted:
//! the erasure completes from its checkpoint, every job of the user is gone, another user's job is untouched, the
//! processor got its signed request and its answer is in the receipt, and a new export of the user is empty.

use crate::common::{free_port, wait_live};
use keel_local::DevKey;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keel-local");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Jobs of the user: enough that the kill lands while the erasure works through them.
const JOBS: usize = 400;

/// The notifications service: records each request's signature header and body, answers what it erased.
fn serve_processor(requests: Arc<Mutex<Vec<(bool, Value)>>>) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut signed) = (0usize, false);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_ascii_lowercase();
                if line.is_empty() {
                    break;
                }
                if let Some(value) = line.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                signed |= line.starts_with("webhook-signature: v1,");
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).ok();
            requests.lock().unwrap().push((signed, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            let reply = r#"{"erased":{"addresses":1}}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
            stream.write_all(response.as_bytes()).ok();
        }
    });
    port
}

fn spawn(data: &Path, port: u16, service: u16) -> Child {
    let template = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    Command::new(BIN)
        .args(["serve", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data)
        .arg("--template")
        .arg(template)
        .env("JOB_URL_NOTIFY", format!("http://127.0.0.1:{service}/notify"))
        .env("JOB_SECRET_NOTIFY", SECRET)
        .env("JOB_LEASE_SECONDS", "2")
        .env("RATE_LIMIT_ORG", "off")
        .env("RATE_LIMIT_IP", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

struct Client {
    http: reqwest::Client,
    port: u16,
}

impl Client {
    async fn send(&self, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("http://127.0.0.1:{}{path}", self.port)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Polls `path` until `done` holds of its answer, or panics after `within`.
    async fn until(&self, token: &str, path: &str, within: Duration, done: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.send(token, reqwest::Method::GET, path, None).await;
            if done(status, &body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} never got there: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erasure_killed_midway_completes_after_the_restart() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let service = serve_processor(requests.clone());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let port = free_port();
    let mut host = spawn(&data, port, service);
    wait_live(&http, port).await;
    let key = DevKey::load_or_create(&data).unwrap();
    let token = |user: &str, roles: &[&str]| key.issue("acme", user, roles, chrono::Duration::hours(1)).unwrap();
    let (ann, bob, op) = (token("ann", &["member"]), token("bob", &["member"]), token("op", &["platform-admin"]));
    let mut client = Client { http, port };

    // Ann's jobs wait for next year, so none runs; bob has one too.
    let later = json!({"type": "notify.email", "input": {"to": "a@example.com", "template": "t"},
        "run_at": "2027-06-01T00:00:00Z"});
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let (status, job) = client.send(&ann, Method::POST, "/v1/jobs", Some(later.clone())).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let (_, bobs) = client.send(&bob, Method::POST, "/v1/jobs", Some(later.clone())).await;
    let bobs = bobs["id"].as_str().unwrap().to_string();

    let (status, erasure) =
        client.send(&ann, Method::DELETE, "/v1/user/account", Some(json!({"confirm": "ann"}))).await;
    assert_eq!(status, 202, "{erasure}");
    let id = erasure["id"].as_str().unwrap().to_string();
    // The jobs are erased newest first: once the newest is gone, the kill lands among the rest.
    let newest = format!("/v1/jobs/{}", ids.last().unwrap());
    client.until(&ann, &newest, Duration::from_secs(60), |status, _| status == 404).await;
    host.kill().unwrap();
    host.wait().unwrap();
    let oldest = format!("/v1/jobs/{}", ids[0]);

    client.port = free_port();
    let mut host = spawn(&data, client.port, service);
    wait_live(&client.http, client.port).await;
    let (status, _) = client.send(&ann, Method::GET, &oldest, None).await;
    assert_eq!(status, 200, "the kill landed before the erasure was done with the jobs");
    // The killed attempt's message comes back after its visibility timeout or the sweeper's resend.
    let resend = keel_jobs::store::RESEND_AFTER.to_std().unwrap() + Duration::from_secs(90);
    let mine = format!("/v1/user/erasures/{id}");
    let done = client.until(&ann, &mine, resend, |_, body| body["status"] == "completed").await;
    let receipt = &done["receipt"];
    for job in &ids {
        assert_eq!(client.send(&op, Method::GET, &format!("/v1/jobs/{job}"), None).await.0, 404, "{job}");
    }
    assert_eq!(client.send(&bob, Method::GET, &format!("/v1/jobs/{bobs}"), None).await.0, 200, "bob's stays");
    // Jobs counted before the kill are lost with that attempt; every one is counted at most once.
    let counted = receipt["items"]["jobs.job"].as_u64().unwrap_or(0);
    assert!(counted > 0 && counted < JOBS as u64 + 1, "{receipt}");

    let requests = requests.lock().unwrap().clone();
    let [(signed, request)] = &requests[..] else { panic!("one processor request: {requests:?}") };
    assert!(*signed, "signed as every job call");
    assert_eq!(*request, json!({"erasure_id": id, "user_id": "ann"}), "the job's input is the request");
    let confirmation = &receipt["processors"][0];
    assert_eq!(
        (confirmation["status"].as_str(), confirmation["answer"].clone()),
        (Some("confirmed"), json!({"erased": {"addresses": 1}}))
    );

    // Asked again, Keel holds nothing about her.
    let (status, export) = client.send(&ann, Method::POST, "/v1/user/data-exports", None).await;
    assert_eq!(status, 202, "{export}");
    let path = format!("/v1/user/data-exports/{}", export["id"].as_str().unwrap());
    let export = client.until(&ann, &path, Duration::from_secs(60), |_, body| body["status"] == "completed").await;
    // All it holds is the export itself: its job, the job's creation in the audit trail, and its feed events.
    let items = export["bundle"]["items"].as_object().unwrap();
    let about_the_export = ["jobs.job", "jobs.audit", "jobs.feed_event"];
    let held: u64 =
        items.iter().filter(|(k, _)| !about_the_export.contains(&k.as_str())).filter_map(|(_, n)| n.as_u64()).sum();
    assert_eq!((held, items["jobs.job"].as_u64()), (0, Some(1)), "{export}");
    assert_eq!(client.send(&ann, Method::POST, "/v1/jobs", Some(later)).await.0, 409, "suppressed");
    Command::new("kill").args(["-TERM", &host.id().to_string()]).status().unwrap();
    host.wait().unwrap();
}
