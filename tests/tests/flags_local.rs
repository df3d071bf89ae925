//! Feature flags end to end through `keel-local`: real HTTP, dev tokens, the embedded backend. An admin creates and
//! changes flags; members of two organizations evaluate them through Keel's API and OFREP and see only what their
//! organization should; a change is visible to the very next request (the host runs the admin API and evaluation
//! in one process), whatever the refresh interval; flags survive a restart.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::*;
use serde_json::{Value, json};

async fn start(dir: &std::path::Path) -> Host {
    Host::start(HostOptions {
        port: 0,
        data_dir: dir.to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        // The longest interval: the host must not need it to show a change.
        env: Env::from_pairs([("FLAGS_REFRESH_SECONDS", "30")]),
    })
    .await
    .unwrap()
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(host: &Host, org: &str, user: &str, roles: &[&str]) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}", host.addr()),
            token: host.token(org, user, roles),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn ofrep(&self, key: &str) -> Value {
        let (status, body) = self
            .send(reqwest::Method::POST, &format!("/ofrep/v1/evaluate/flags/{key}"), Some(json!({"context": {}})))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[tokio::test]
async fn admins_change_flags_and_each_organization_sees_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = Client::new(&host, "platform", "alice", &["platform-admin"]);
    let org_a = Client::new(&host, "org-a", "ann", &["member"]);
    let org_b = Client::new(&host, "org-b", "bob", &["member"]);

    // Before the flag exists, it is not found; created, it answers at once.
    let (status, _) =
        org_a.send(reqwest::Method::POST, "/ofrep/v1/evaluate/flags/new-checkout", Some(json!({"context": {}}))).await;
    assert_eq!(status, 404);
    let flag = json!({"key": "new-checkout", "description": "the new checkout", "allow_orgs": ["org-a"]});
    let (status, created) = admin.send(reqwest::Method::POST, "/v1/admin/flags", Some(flag)).await;
    assert_eq!(status, 201, "{created}");

    assert_eq!(org_a.ofrep("new-checkout").await["value"], true);
    assert_eq!(org_a.ofrep("new-checkout").await["reason"], "TARGETING_MATCH");
    assert_eq!(org_b.ofrep("new-checkout").await["value"], false);

    // Members cannot administer flags, and cannot evaluate as another organization.
    let (status, _) = org_a.send(reqwest::Method::GET, "/v1/admin/flags", None).await;
    assert_eq!(status, 403);
    let (status, body) = org_b
        .send(
            reqwest::Method::POST,
            "/v1/flags/evaluate",
            Some(json!({"keys": ["new-checkout"], "context": {"organizationId": "org-a"}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // An override for org-b shows up at the next request, for org-b only.
    let override_ = json!({"action": {"type": "forced_on"}, "reason": "beta customer"});
    let (status, body) =
        admin.send(reqwest::Method::PUT, "/v1/admin/flags/new-checkout/overrides/org-b", Some(override_)).await;
    assert_eq!(status, 201, "{body}");
    let answer = org_b.ofrep("new-checkout").await;
    assert_eq!((&answer["value"], &answer["metadata"]["keelReason"]), (&json!(true), &json!("override")), "{answer}");
    let (status, mine) = org_a.send(reqwest::Method::GET, "/v1/flags?keys=new-checkout", None).await;
    assert_eq!(status, 200);
    assert_eq!(mine["flags"]["new-checkout"]["reason"], "allow_list");
    assert!(!mine.to_string().contains("beta customer"), "another organization's override never shows");

    // The audit trail has both changes, with who made them.
    let (status, audit) = admin.send(reqwest::Method::GET, "/v1/admin/flags/new-checkout/audit", None).await;
    assert_eq!(status, 200, "{audit}");
    let text = audit.to_string();
    assert!(text.contains("alice") && text.contains("beta customer"), "{audit}");

    // Flags survive a restart of the host.
    host.shutdown().await;
    let host = start(dir.path()).await;
    let org_b = Client::new(&host, "org-b", "bob", &["member"]);
    assert_eq!(org_b.ofrep("new-checkout").await["value"], true);
    host.shutdown().await;
}

#[tokio::test]
async fn bulk_ofrep_answers_304_while_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = Client::new(&host, "platform", "alice", &["platform-admin"]);
    for key in ["a", "b", "c"] {
        let (status, body) = admin
            .send(reqwest::Method::POST, "/v1/admin/flags", Some(json!({"key": key, "default_value": true})))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let http = reqwest::Client::new();
    let url = format!("http://{}/ofrep/v1/evaluate/flags", host.addr());
    let token = host.token("org-a", "ann", &["member"]);
    let first = http.post(&url).bearer_auth(&token).json(&json!({"context": {}})).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["flags"].as_array().unwrap().len(), 3);
    let again = http
        .post(&url)
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    host.shutdown().await;
}
