//! GDPR exports end to end on keel-local over HTTP: a user who has used the directory, jobs (with an
//! Idempotency-Key) and been targeted by flags and segments asks for their data; the export runs as a job on the
//! host's worker; the bundle downloaded through its link holds each of their items, a manifest whose counts and
//! hashes match its files, and nothing naming another user.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::repo_root;
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn new(host: &Host, org: &str, user: &str, roles: &[&str]) -> Self {
        Self {
            base: format!("http://{}", host.addr()),
            token: host.token(org, user, roles),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn start(dir: &std::path::Path) -> Host {
    Host::start(HostOptions {
        port: 0,
        data_dir: dir.to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env: Env::from_pairs([
            ("KEEL_STAGE", "dev"),
            ("RATE_LIMIT_ORG", "off"),
            ("RATE_LIMIT_IP", "off"),
            // A service that is not there: the jobs here wait for next year and never call it.
            ("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify"),
            ("JOB_SECRET_NOTIFY", crate::jobs_local::SECRET),
        ]),
    })
    .await
    .unwrap()
}

/// A job that waits for next year, so no service is called.
fn later_job(to: &str) -> Value {
    json!({"type": "notify.email", "input": {"to": to, "template": "welcome"}, "run_at": "2027-06-01T00:00:00Z"})
}

/// The bundle's files by name.
fn unzip(bytes: &[u8]) -> BTreeMap<String, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        files.insert(file.name().unwrap().to_string(), text);
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_every_item_about_the_user_and_nothing_about_anyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let operator = Client::new(&host, "ops", "op-1", &["platform-admin"]);
    let ann = Client::new(&host, "acme", "user-ann", &["admin"]);
    let bob = Client::new(&host, "acme", "user-bob", &["member"]);
    use reqwest::Method;

    // The directory: acme with ann (admin) and bob (member), whom ann added.
    assert_eq!(operator.send(Method::PUT, "/v1/orgs/acme", Some(json!({"name": "Acme"}))).await.0, 201);
    let role = |r: &str| Some(json!({ "role": r }));
    assert_eq!(operator.send(Method::PUT, "/v1/orgs/acme/members/user-ann", role("admin")).await.0, 201);
    // With an Idempotency-Key: the stored answer names bob, and ann's export must not hand it over.
    let added = ann
        .http
        .put(format!("{}/v1/orgs/acme/members/user-bob", ann.base))
        .bearer_auth(&ann.token)
        .header("idempotency-key", "add-bob")
        .json(&json!({"role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    // Flags that name both users, and one that names neither.
    let flag = json!({"key": "beta", "target_users": ["user-bob", "user-ann"]});
    assert_eq!(operator.send(Method::POST, "/v1/admin/flags", Some(flag)).await.0, 201);
    assert_eq!(operator.send(Method::POST, "/v1/admin/flags", Some(json!({"key": "plain"}))).await.0, 201);
    let segment = json!({"name": "testers", "constraints": [
        {"field": "userId", "operator": "IN", "values": ["user-ann", "user-bob"]}]});
    assert_eq!(operator.send(Method::PUT, "/v1/admin/segments/testers", Some(segment)).await.0, 201);
    // Jobs of each, ann's with an Idempotency-Key.
    let response = ann
        .http
        .post(format!("{}/v1/jobs", ann.base))
        .bearer_auth(&ann.token)
        .header("idempotency-key", "ann-job-1")
        .json(&later_job("ann@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ann_job: Value = response.json().await.unwrap();
    let (status, bob_job) = bob.send(Method::POST, "/v1/jobs", Some(later_job("bob@example.com"))).await;
    assert_eq!(status, 202);

    let (status, export) = ann.send(Method::POST, "/v1/user/data-exports", None).await;
    assert_eq!(status, 202, "{export}");
    let id = export["id"].as_str().unwrap().to_string();
    let (status, again) = ann.send(Method::POST, "/v1/user/data-exports", None).await;
    if again["status"] != "completed" {
        assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())), "a running export is returned");
    }
    assert_eq!(bob.send(Method::GET, &format!("/v1/user/data-exports/{id}"), None).await.0, 404, "not bob's");
    let started = Instant::now();
    let done = loop {
        let (status, export) = ann.send(Method::GET, &format!("/v1/user/data-exports/{id}"), None).await;
        assert_eq!(status, 200);
        match export["status"].as_str().unwrap() {
            "completed" => break export,
            "failed" | "cancelled" => panic!("the export ended {export}"),
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still {export}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, latest) = ann.send(Method::GET, "/v1/user/data-export", None).await;
    assert_eq!((status, latest["id"].as_str()), (200, Some(id.as_str())), "the seed's route answers the latest");

    let url = done["download"]["url"].as_str().unwrap();
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, done["bundle"]["bytes"].as_u64().unwrap());
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), done["bundle"]["sha256"].as_str().unwrap());
    let files = unzip(&bytes);

    let manifest: Value = serde_json::from_str(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["format"], "keel.export.v1");
    assert_eq!(manifest["subject"]["user_id"], "user-ann");
    let mut records: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in manifest["entries"].as_array().unwrap() {
        let text = &files[entry["file"].as_str().unwrap()];
        assert_eq!(hex::encode(sha2::Sha256::digest(text.as_bytes())), entry["sha256"].as_str().unwrap());
        assert!(entry["purpose"].as_str().is_some_and(|p| !p.is_empty()) && entry["retention"].is_object());
        let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len() as u64, entry["items"].as_u64().unwrap(), "{}", entry["name"]);
        records.insert(entry["name"].as_str().unwrap().to_string(), lines);
    }
    let included: Vec<&str> = keel_gdpr::datamap::data_map()
        .iter()
        .filter(|e| e.export == keel::datamap::Export::Include)
        .map(|e| e.name)
        .collect();
    assert_eq!(records.keys().map(String::as_str).collect::<Vec<_>>().len(), included.len(), "one file per entry");

    let memberships = &records["directory.membership"];
    assert_eq!(memberships.len(), 1);
    assert_eq!((memberships[0]["org_id"].as_str(), memberships[0]["role"].as_str()), (Some("acme"), Some("admin")));
    let audit = &records["directory.audit"];
    assert_eq!(audit.len(), 2, "added ann (about her) and ann adding bob (her act): {audit:?}");
    let jobs: Vec<&str> = records["jobs.job"].iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert!(jobs.contains(&ann_job["id"].as_str().unwrap()), "{jobs:?}");
    assert!(jobs.contains(&id.as_str()), "the export itself is a job of hers");
    assert!(!jobs.contains(&bob_job["id"].as_str().unwrap()));
    let feed = ann.send(Method::GET, "/v1/events/feed", None).await.1;
    assert!(!records["jobs.feed_event"].is_empty(), "{feed}");
    let idempotency = &records["api.idempotency_record"];
    let keys: Vec<&str> = idempotency.iter().map(|r| r["idempotency_key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 2, "{idempotency:?}");
    assert!(keys.contains(&"ann-job-1") && keys.contains(&"add-bob"));
    assert_eq!(records["flags.flag"], vec![json!({"key": "beta", "names_the_user_at": ["/target_users/1"]})]);
    assert_eq!(
        records["flags.segment"],
        vec![json!({"name": "testers", "names_the_user_at": ["/constraints/0/values/0"]})]
    );

    for (name, text) in &files {
        assert!(!text.contains("user-bob"), "{name} names another user:\n{text}");
        assert!(!text.contains("bob@example.com"), "{name} holds another user's job input");
    }
    host.shutdown().await;
}
