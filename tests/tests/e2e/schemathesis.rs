//! Schemathesis against keel-local, from the document keel-local serves at `GET /openapi.json`: every route, with
//! a valid token of the role it needs, fails on a server error, an answer whose body or content type the document
//! does not describe, or a status code the document does not list. The store is seeded first (flags of each
//! type, a segment, an import, webhook deliveries, an organization with members) and their keys are offered to Schemathesis as path values, so
//! the answers checked include full flags and deliveries, not only 404s. Rate limits are off for the run (their
//! 429s are documented, but a fuzzer would hit nothing else).

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::{keel_headers, repo_root};
use serde_json::json;
use std::process::Command;

const SECRET: &str = "schemathesis-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_its_openapi_document_says() {
    let schemathesis = repo_root().join(".venv/bin/schemathesis");
    assert!(schemathesis.exists(), "schemathesis is not installed: run `bash infra/bootstrap.sh`");
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(HostOptions {
        port: 0,
        data_dir: dir.path().join("data"),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env: Env::from_pairs([
            ("KEEL_STAGE", "dev"),
            ("RATE_LIMIT_ORG", "off"),
            ("RATE_LIMIT_IP", "off"),
            ("WEBHOOK_SECRET_ACME", SECRET),
            // A service that is not there: jobs are created and their attempts fail, which is all this test needs.
            ("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify"),
            ("JOB_SECRET_NOTIFY", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ]),
    })
    .await
    .unwrap();
    let base = format!("http://{}", host.addr());
    let admin = host.token("org-a", "alice", &["platform-admin"]);
    let member = host.token("org-a", "bob", &["member"]);
    let deliveries = seed(&base, &admin).await;
    let jobs = seed_jobs(&base, &member).await;

    let config = dir.path().join("schemathesis.toml");
    let dictionaries = json!({
        "flags": ["plain", "colour", "limits", "checkout"],
        "segments": ["beta"],
        "organizations": ["org-a", "org-b"],
        "users": ["alice", "bob"],
        "providers": ["acme"],
        "deliveries": deliveries,
        "jobs": jobs,
    });
    let mut toml = String::new();
    for (name, values) in dictionaries.as_object().unwrap() {
        toml.push_str(&format!("[dictionaries.{name}]\nvalues = {values}\n\n"));
    }
    toml.push_str(
        "[parameters]\n\
         \"path.key\" = { dictionary = \"flags\", probability = 0.7 }\n\
         \"path.name\" = { dictionary = \"segments\", probability = 0.7 }\n\
         \"path.orgId\" = { dictionary = \"organizations\", probability = 0.7 }\n\
         \"path.userId\" = { dictionary = \"users\", probability = 0.7 }\n\
         \"path.provider\" = { dictionary = \"providers\", probability = 0.7 }\n\
         \"path.deliveryId\" = { dictionary = \"deliveries\", probability = 0.7 }\n\
         \"path.id\" = { dictionary = \"jobs\", probability = 0.7 }\n",
    );
    std::fs::write(&config, toml).unwrap();

    // Operators' routes with an operator's token; members' and public routes with a member's.
    let runs = [
        ("^/v1/admin|^/v1/webhooks/|^/v1/orgs", &admin),
        ("^/v1/flags|^/v1/jobs|^/v1/events|^/v1/user/|^/v1/audit|^/ofrep/|^/webhooks/|^/openapi|^/console", &member),
    ];
    let mut tested = 0;
    for (paths, token) in runs {
        let output = Command::new(&schemathesis)
            .current_dir(dir.path())
            .args(["--config-file", config.to_str().unwrap(), "run", &format!("{base}/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance"])
            .args(["--checks", "response_schema_conformance"])
            .args(["--include-path-regex", paths, "--max-examples", "25", "--seed", "1", "--no-color"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "schemathesis found failures on {paths}:\n{stdout}\n{}", {
            String::from_utf8_lossy(&output.stderr)
        });
        tested += stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix("Tested: "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    let operations: usize = serde_json::from_str::<serde_json::Value>(api_docs::DOCUMENT).unwrap()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(tested, operations, "every operation of the document is tested");
    host.shutdown().await;
}

/// Three jobs of the member's organization (ids returned): one queued, one scheduled, one cancelled.
async fn seed_jobs(base: &str, member: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    let bodies = [
        json!({"type": "notify.email", "input": {"to": "a@example.com", "template": "welcome"}}),
        json!({"type": "notify.sms", "input": {"to": "+15550100100", "text": "hi"}, "run_at": "2027-06-01T00:00:00Z"}),
        json!({"type": "notify.email", "input": {"to": "b@example.com", "template": "bye"}, "dedup_key": "d-1"}),
    ];
    for body in bodies {
        let answer = client.post(format!("{base}/v1/jobs")).bearer_auth(member).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 202);
        ids.push(answer.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let cancel = client.post(format!("{base}/v1/jobs/{}/cancel", ids[2])).bearer_auth(member).send().await.unwrap();
    assert_eq!(cancel.status(), 202);
    ids
}

/// Flags of each value type with rules, variants and an override, a segment, an Unleash import, and two webhook
/// deliveries (whose ids are returned).
async fn seed(base: &str, admin: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        client.post(format!("{base}{path}")).bearer_auth(admin).json(&body).send()
    };
    let put =
        |path: &str, body: serde_json::Value| client.put(format!("{base}{path}")).bearer_auth(admin).json(&body).send();
    // The directory: org-a with alice (admin) and bob (member).
    assert_eq!(put("/v1/orgs/org-a", json!({"name": "Org A"})).await.unwrap().status(), 201);
    assert_eq!(put("/v1/orgs/org-a/members/alice", json!({"role": "admin"})).await.unwrap().status(), 201);
    assert_eq!(put("/v1/orgs/org-a/members/bob", json!({"role": "member"})).await.unwrap().status(), 201);
    let segment = json!({"name": "beta", "constraints": [{"field": "plan", "operator": "IN", "values": ["pro"]}]});
    let put = client.put(format!("{base}/v1/admin/segments/beta")).bearer_auth(admin).json(&segment).send();
    assert_eq!(put.await.unwrap().status(), 201);
    let flags = [
        json!({"key": "plain", "allow_orgs": ["org-a"]}),
        json!({"key": "colour", "value_type": "string",
            "variants": [{"name": "blue", "payload": {"type": "string", "value": "#00f"}}],
            "default_variant": {"name": "grey", "payload": {"type": "string", "value": "#999"}},
            "rules": [{"id": "pro", "segments": ["beta"], "rollout": {"percentage": 50}}]}),
        json!({"key": "limits", "value_type": "object", "lifecycle": {"type": "operational", "permanent": true},
            "variants": [{"name": "big", "payload": {"type": "json", "value": "{\"max\": 10}"}}],
            "default_variant": {"name": "small", "payload": {"type": "json", "value": "{\"max\": 1}"}}}),
    ];
    for flag in flags {
        assert_eq!(post("/v1/admin/flags", flag).await.unwrap().status(), 201);
    }
    let forced = json!({"action": {"type": "forced_off"}, "reason": "fuzzing"});
    let put = client.put(format!("{base}/v1/admin/flags/plain/overrides/org-b")).bearer_auth(admin).json(&forced);
    assert_eq!(put.send().await.unwrap().status(), 201);
    let unleash = json!({"version": 2, "features": [{"name": "checkout", "enabled": true,
        "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "25", "stickiness": "default"}}]}]});
    assert_eq!(post("/v1/admin/flags/import", unleash).await.unwrap().status(), 200);

    let mut deliveries = Vec::new();
    for event_id in ["evt-1", "evt-2"] {
        let body = format!(r#"{{"type":"order.created","id":"{event_id}"}}"#);
        let mut request = client.post(format!("{base}/webhooks/acme")).body(body.clone());
        for (name, value) in keel_headers(SECRET, event_id, chrono::Utc::now(), body.as_bytes()) {
            request = request.header(name, value);
        }
        let answer: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        deliveries.push(answer["delivery_id"].as_str().unwrap().to_string());
    }
    deliveries
}
