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

// ------------------------------------------------------------------------------------------------------------------
// The Unleash client specification through HTTP
// ------------------------------------------------------------------------------------------------------------------

/// The user a case without one is evaluated as: the token always names a user.
const SPEC_USER: &str = "spec-user";
/// The stage a case without an environment is evaluated in: Unleash's own default environment.
const SPEC_STAGE: &str = "default";

struct Case {
    file: String,
    description: String,
    toggle: String,
    context: Value,
    /// `expectedResult`: a boolean (an enabled-check) or a variant.
    expected: Value,
}

impl Case {
    fn user(&self) -> Option<&str> {
        self.context["userId"].as_str()
    }

    fn environment(&self) -> &str {
        self.context["environment"].as_str().unwrap_or(SPEC_STAGE)
    }

    /// The OFREP context: every field of the case but the user and the environment, which the token and the
    /// deployment give; properties become attributes.
    fn ofrep_context(&self) -> Value {
        let mut context = serde_json::Map::new();
        for field in ["sessionId", "remoteAddress", "appName", "currentTime"] {
            if let Some(value) = self.context.get(field) {
                context.insert(field.into(), value.clone());
            }
        }
        for (name, value) in self.context["properties"].as_object().into_iter().flatten() {
            context.insert(name.clone(), value.clone());
        }
        json!({ "context": context })
    }

    /// The case as keel-local sees it: the token's user (the case's, else SPEC_USER) and the stage's environment.
    fn as_served(&self) -> Value {
        let mut context = self.context.clone();
        context["userId"] = json!(self.user().unwrap_or(SPEC_USER));
        context["environment"] = json!(self.environment());
        context
    }

    /// Whether an answer (enabled, the variant's name or None when none was chosen, its payload as a value) is the
    /// expected one.
    fn holds(&self, enabled: bool, variant: Option<&str>, value: &Value) -> bool {
        let Some(expected) = self.expected.as_object() else { return self.expected == json!(enabled) };
        let chosen = expected["enabled"] == true;
        if expected.get("feature_enabled").is_some_and(|f| *f != json!(enabled)) || chosen != variant.is_some() {
            return false;
        }
        if !chosen {
            return expected["name"] == "disabled";
        }
        if expected["name"] != json!(variant) {
            return false;
        }
        match expected.get("payload") {
            None => true,
            Some(payload) => {
                let payload: keel::flags::Payload = serde_json::from_value(payload.clone()).unwrap();
                keel::flags::payload_value(&payload).as_ref() == Some(value)
            }
        }
    }
}

fn spec_cases() -> Vec<(String, Value, Vec<Case>)> {
    let dir = fixtures_dir().join("unleash-client-specification/specifications");
    let index: Vec<String> = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index
        .into_iter()
        .map(|file| {
            let spec: Value = serde_json::from_slice(&std::fs::read(dir.join(&file)).unwrap()).unwrap();
            let mut cases = Vec::new();
            for list in ["tests", "variantTests"] {
                for test in spec[list].as_array().into_iter().flatten() {
                    cases.push(Case {
                        file: file.clone(),
                        description: test["description"].as_str().unwrap().to_string(),
                        toggle: test["toggleName"].as_str().unwrap().to_string(),
                        context: test["context"].clone(),
                        expected: test["expectedResult"].clone(),
                    });
                }
            }
            (file, spec["state"].clone(), cases)
        })
        .collect()
}

/// Every document of the specification through `POST /v1/admin/flags/import` (lenient, the default), then every
/// case through OFREP with a token naming the case's user, on a host deployed in the case's environment. A case
/// without a user is evaluated as `spec-user` (the token always names one), and one without an environment in
/// Unleash's `default`: such a case runs unless Keel's engine, given the user or environment the host adds, no
/// longer gives the specification's answer; those cases are listed with why, and counted.
#[tokio::test]
async fn the_unleash_specification_passes_through_the_import_route_and_ofrep() {
    use keel::flags::{Snapshot, unleash};
    let now = chrono::Utc::now();
    let (mut run, mut failures, mut excluded) = (0, Vec::new(), Vec::new());
    let mut total = 0;
    for (file, state, cases) in spec_cases() {
        total += cases.len();
        // The engine's answer for a case as keel-local sees it decides whether the case can run over HTTP at all.
        let import = unleash::convert(&unleash::parse(&state).unwrap(), now);
        let segments = import.segments.iter().map(|s| (s.name.clone(), s.clone())).collect();
        let engine = Snapshot::build(import.flags, &segments);
        let mut by_stage: std::collections::BTreeMap<String, Vec<Case>> = Default::default();
        for case in cases {
            let served = engine.evaluate(&case.toggle, &unleash::context(&case.as_served()), now);
            if !case.holds(served.value, served.variant.map(|v| v.name.as_str()), &served.typed_value().unwrap()) {
                let why = match (case.user(), case.context.get("environment")) {
                    (None, _) => "has no user, and its answer depends on having none",
                    (Some(_), None) => "has no environment, and its answer depends on having none",
                    _ => "its answer changes in keel-local's context",
                };
                excluded.push(format!("{}: {} ({why})", case.file, case.description));
                continue;
            }
            by_stage.entry(case.environment().to_string()).or_default().push(case);
        }
        for (stage, cases) in by_stage {
            let dir = tempfile::tempdir().unwrap();
            let host = Host::start(HostOptions {
                port: 0,
                data_dir: dir.path().to_path_buf(),
                backend: Backend::Embedded,
                template: repo_root().join("template.yaml"),
                env: Env::from_pairs([("KEEL_STAGE", stage.as_str())]),
            })
            .await
            .unwrap();
            let admin = Client::new(&host, "platform", "importer", &["platform-admin"]);
            let (status, report) =
                admin.send(reqwest::Method::POST, "/v1/admin/flags/import", Some(state.clone())).await;
            assert_eq!(status, 200, "{file}: {report}");
            assert_eq!(report["refused"], json!([]), "{file}: every flag is imported: {report}");
            let http = reqwest::Client::new();
            for case in cases {
                run += 1;
                let token = host.token("spec-org", case.user().unwrap_or(SPEC_USER), &["member"]);
                let mut url = reqwest::Url::parse(&format!("http://{}/ofrep/v1/evaluate/flags", host.addr())).unwrap();
                url.path_segments_mut().unwrap().push(&case.toggle);
                let response = http.post(url).bearer_auth(&token).json(&case.ofrep_context()).send().await.unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                let (enabled, variant, value) = match status {
                    200 => {
                        let name = body["variant"].as_str().unwrap();
                        let chosen = !["on", "off", unleash::DISABLED_VARIANT].contains(&name);
                        (body["metadata"]["enabled"] == true, chosen.then_some(name), body["value"].clone())
                    }
                    // Unknown to Keel as to Unleash: the SDK serves the code's default.
                    404 => (false, None, json!(false)),
                    _ => panic!("{file}: {}: {status} {body}", case.description),
                };
                if !case.holds(enabled, variant, &value) {
                    failures.push(format!("{file}: {} (got {body}, want {})", case.description, case.expected));
                }
            }
            host.shutdown().await;
        }
    }
    eprintln!("{run} of {total} cases through HTTP; {} not run:\n{}", excluded.len(), excluded.join("\n"));
    // Known today: `Feature.A3 should be disabled when no user on context` (03) and `flexibleRollout.10 should be
    // enabled for sessionId=174` (10, stickiness `default` prefers the user to the session). A change shows here.
    assert_eq!(excluded.len(), 2, "{excluded:?}");
    assert!(failures.is_empty(), "{} of {run} cases fail through HTTP:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(total, 279);
    assert_eq!(run + excluded.len(), total);
}
