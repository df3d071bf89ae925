//! Feature flags end to end through `keel-local`: real HTTP, dev tokens, the embedded backend. An admin creates and
//! changes flags; members of two organizations evaluate them through Keel's API and OFREP and see only what their
//! organization should; a change is visible to the very next request (the host runs the admin API and evaluation
//! in one process), whatever the refresh interval; flags survive a restart.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::*;
use serde_json::{Value, json};

async fn start(dir: &std::path::Path) -> Host {
    start_with(dir, &[]).await
}

/// A host with these variables besides the longest refresh interval (the host must not need it to show a change).
async fn start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Host {
    let mut pairs = vec![("FLAGS_REFRESH_SECONDS", "30")];
    pairs.extend_from_slice(env);
    Host::start(HostOptions {
        port: 0,
        data_dir: dir.to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env: Env::from_pairs(pairs),
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
                let payload: keel_flags::Payload = serde_json::from_value(payload.clone()).unwrap();
                keel_flags::payload_value(&payload).as_ref() == Some(value)
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
    use keel_flags::{Snapshot, unleash};
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
            let host = start_with(dir.path(), &[("KEEL_STAGE", stage.as_str())]).await;
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

// ------------------------------------------------------------------------------------------------------------------
// The official OpenFeature SDKs
// ------------------------------------------------------------------------------------------------------------------

/// One evaluation an SDK makes: whose token, which flag, through which typed call, with which code default.
#[derive(serde::Serialize)]
struct SdkCall {
    token: String,
    key: String,
    #[serde(rename = "type")]
    kind: &'static str,
    default: Value,
}

/// (token, key, type, code default, expected value, expected variant, expected reason, expected error code)
type SdkCase<'a> = (&'a str, &'a str, &'static str, Value, Value, Option<&'a str>, &'a str, Option<&'a str>);

/// Runs the calls through an SDK script in `tests/sdk` (installed by `infra/bootstrap.sh`) and returns its answers.
fn run_sdk(program: &std::path::Path, script: &str, base_url: &str, calls: &[SdkCall]) -> Vec<Value> {
    use std::io::Write;
    let dir = repo_root().join("tests/sdk");
    assert!(
        dir.join("node_modules").is_dir() && repo_root().join(".venv/bin/python").exists(),
        "the SDKs are not installed: run `bash infra/bootstrap.sh`"
    );
    let mut child = std::process::Command::new(program)
        .arg(dir.join(script))
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} cannot start: {e}", program.display()));
    let input = json!({"base_url": base_url, "calls": calls}).to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} wrote no answers ({e}): {stderr}"))
}

/// The official Python SDK (`openfeature-sdk` + `openfeature-provider-ofrep`) and Node SDK
/// (`@openfeature/server-sdk` + `@openfeature/ofrep-provider`) against keel-local: boolean, string, integer,
/// float and object flags, on and off for different organizations, killed, unknown, and a 50% rollout that sticks
/// to the organization. No SDK may report an error code for a flag that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openfeature_sdks_evaluate_every_type_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = Client::new(&host, "platform", "alice", &["platform-admin"]);
    let typed = |key: &str, value_type: &str, kind: &str, on: &str, off: &str| {
        json!({"key": key, "value_type": value_type, "allow_orgs": ["org-a"],
            "variants": [{"name": "on-variant", "payload": {"type": kind, "value": on}}],
            "default_variant": {"name": "off-variant", "payload": {"type": kind, "value": off}}})
    };
    let mut string_killed = typed("copy-killed", "string", "string", "Pay now", "Proceed to payment");
    string_killed["enabled"] = json!(false);
    for flag in [
        json!({"key": "beta", "allow_orgs": ["org-a"]}),
        json!({"key": "killed", "enabled": false, "default_value": true}),
        typed("copy", "string", "string", "Pay now", "Proceed to payment"),
        string_killed,
        typed("discount", "number", "number", "12.5", "0.0"),
        typed("seats", "number", "number", "25", "5"),
        typed("theme", "object", "json", r#"{"color": "blue", "dense": true}"#, "{}"),
        json!({"key": "half", "rules": [{"id": "half", "rollout": {"percentage": 50}}]}),
    ] {
        let (status, body) = admin.send(reqwest::Method::POST, "/v1/admin/flags", Some(flag)).await;
        assert_eq!(status, 201, "{body}");
    }

    let org_a = host.token("org-a", "ann", &["member"]);
    let org_b = host.token("org-b", "bob", &["member"]);
    let cases: Vec<SdkCase> = vec![
        (&org_a, "beta", "boolean", json!(false), json!(true), Some("on"), "TARGETING_MATCH", None),
        (&org_b, "beta", "boolean", json!(true), json!(false), Some("off"), "UNKNOWN", None),
        (&org_a, "killed", "boolean", json!(true), json!(false), Some("off"), "DISABLED", None),
        (&org_a, "copy", "string", json!("?"), json!("Pay now"), Some("on-variant"), "TARGETING_MATCH", None),
        (&org_b, "copy", "string", json!("?"), json!("Proceed to payment"), Some("off-variant"), "UNKNOWN", None),
        (
            &org_a,
            "copy-killed",
            "string",
            json!("?"),
            json!("Proceed to payment"),
            Some("off-variant"),
            "DISABLED",
            None,
        ),
        (&org_a, "discount", "float", json!(-1.0), json!(12.5), Some("on-variant"), "TARGETING_MATCH", None),
        (&org_b, "discount", "float", json!(-1.0), json!(0.0), Some("off-variant"), "UNKNOWN", None),
        (&org_a, "seats", "integer", json!(-1), json!(25), Some("on-variant"), "TARGETING_MATCH", None),
        (&org_b, "seats", "integer", json!(-1), json!(5), Some("off-variant"), "UNKNOWN", None),
        (
            &org_a,
            "theme",
            "object",
            json!({}),
            json!({"color": "blue", "dense": true}),
            Some("on-variant"),
            "TARGETING_MATCH",
            None,
        ),
        (&org_b, "theme", "object", json!({"x": 1}), json!({}), Some("off-variant"), "UNKNOWN", None),
        (&org_a, "missing", "boolean", json!(true), json!(true), None, "ERROR", Some("FLAG_NOT_FOUND")),
    ];
    let mut calls: Vec<SdkCall> = cases
        .iter()
        .map(|(token, key, kind, default, ..)| SdkCall {
            token: token.to_string(),
            key: key.to_string(),
            kind,
            default: default.clone(),
        })
        .collect();
    // The rollout: 40 organizations, each asking twice.
    let orgs: Vec<String> = (0..40).map(|i| format!("rollout-org-{i:02}")).collect();
    for org in orgs.iter().flat_map(|org| [org, org]) {
        let token = host.token(org, "user", &["member"]);
        calls.push(SdkCall { token, key: "half".into(), kind: "boolean", default: json!(false) });
    }
    // What Keel's own API answers each organization for the rollout.
    let mut keel_answers = Vec::new();
    for org in &orgs {
        let client = Client::new(&host, org, "user", &["member"]);
        let (_, body) = client.send(reqwest::Method::GET, "/v1/flags?keys=half", None).await;
        keel_answers.push(body["flags"]["half"]["value"].clone());
    }

    let base_url = format!("http://{}", host.addr());
    let python = repo_root().join(".venv/bin/python");
    for (sdk, answers) in [
        ("python", run_sdk(&python, "evaluate.py", &base_url, &calls)),
        ("node", run_sdk(std::path::Path::new("node"), "evaluate.mjs", &base_url, &calls)),
    ] {
        assert_eq!(answers.len(), calls.len(), "{sdk}");
        for ((token, key, kind, _, value, variant, reason, error), answer) in cases.iter().zip(&answers) {
            let who = if *token == org_a { "org-a" } else { "org-b" };
            let what = format!("{sdk}: {kind} {key} for {who}: {answer}");
            assert_eq!(answer["error_code"].as_str(), *error, "{what}");
            // JavaScript has one number type: its 0.0 is written 0.
            match (answer["value"].as_f64(), value.as_f64()) {
                (Some(got), Some(want)) if sdk == "node" => assert_eq!(got, want, "{what}"),
                _ => assert_eq!(&answer["value"], value, "{what}"),
            }
            if error.is_none() {
                assert_eq!(answer["variant"].as_str(), *variant, "{what}");
                assert_eq!(answer["reason"], *reason, "{what}");
            }
        }
        let rollout: Vec<&Value> = answers[cases.len()..].iter().collect();
        let mut on = 0;
        for (i, pair) in rollout.chunks(2).enumerate() {
            assert_eq!(pair[0]["error_code"], Value::Null, "{sdk}: {}", pair[0]);
            assert_eq!(pair[0]["value"], pair[1]["value"], "{sdk}: sticky for {}", orgs[i]);
            assert_eq!(pair[0]["value"], keel_answers[i], "{sdk}: the SDK and Keel's API agree for {}", orgs[i]);
            on += usize::from(pair[0]["value"] == true);
        }
        assert!((8..=32).contains(&on), "{sdk}: {on} of 40 organizations in a 50% rollout");
    }
    host.shutdown().await;
}

/// `Idempotency-Key` over real HTTP: the header passes the host's gateway, the repeat is answered from the stored
/// record (one flag, one audit entry), and a different request under the same key is refused.
#[tokio::test]
async fn an_idempotent_create_runs_once_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let http = reqwest::Client::new();
    let token = host.token("platform", "alice", &["platform-admin"]);
    let create = |body: Value| {
        http.post(format!("http://{}/v1/admin/flags", host.addr()))
            .bearer_auth(&token)
            .header("Idempotency-Key", "\"create-checkout-1\"")
            .json(&body)
    };
    let first = create(json!({"key": "checkout"})).send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let trace_id = first.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert!(trace_id.starts_with("1-") && trace_id.len() == 35, "{trace_id}");
    let first_body = first.text().await.unwrap();
    let again = create(json!({"key": "checkout"})).send().await.unwrap();
    assert_eq!(again.status(), 201, "the stored answer, not 409 already exists");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first_body);
    let other = create(json!({"key": "checkout-2"})).send().await.unwrap();
    assert_eq!(other.status(), 422);

    let admin = Client::new(&host, "platform", "alice", &["platform-admin"]);
    let (status, audit) = admin.send(reqwest::Method::GET, "/v1/admin/flags/checkout/audit", None).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");
    host.shutdown().await;
}

/// Rate limits over real HTTP: the operator API's shared counters answer 429 with `Retry-After` and the IETF
/// fields once the organization's quota is spent; evaluation counts in memory under its own, higher quota.
#[tokio::test]
async fn rate_limits_answer_429_with_the_ietf_fields() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_with(dir.path(), &[("RATE_LIMIT_ORG", "3/3600")]).await;
    let http = reqwest::Client::new();
    let admin = host.token("platform", "alice", &["platform-admin"]);
    let list = || http.get(format!("http://{}/v1/admin/flags", host.addr())).bearer_auth(&admin);
    for remaining in [2, 1, 0] {
        let response = list().send().await.unwrap();
        assert_eq!(response.status(), 200);
        let policy = response.headers()["ratelimit-policy"].to_str().unwrap();
        assert!(policy.starts_with("\"org\";q=3;w=3600, \"ip\";q=100;w=900"), "{policy}");
        let state = response.headers()["ratelimit"].to_str().unwrap().to_string();
        assert!(state.starts_with(&format!("\"org\";r={remaining};t=")), "{state}");
    }
    let refused = list().send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: i64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Another organization has its own quota.
    let other = host.token("platform-2", "bob", &["platform-admin"]);
    let response = http.get(format!("http://{}/v1/admin/flags", host.addr())).bearer_auth(&other).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // RATE_LIMIT_ORG applies to every function the host runs; evaluation keeps its own address quota.
    let member = host.token("org-a", "ann", &["member"]);
    let evaluated = http.get(format!("http://{}/v1/flags", host.addr())).bearer_auth(&member).send().await.unwrap();
    assert_eq!(evaluated.status(), 200);
    assert_eq!(evaluated.headers()["ratelimit-policy"], "\"org\";q=3;w=3600, \"ip\";q=10000;w=900");
    host.shutdown().await;
}

/// The metrics every function records (EMF on Lambda) are served by the host in Prometheus text.
#[tokio::test]
async fn the_host_serves_the_functions_metrics_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = Client::new(&host, "platform", "alice", &["platform-admin"]);
    let member = Client::new(&host, "org-a", "ann", &["member"]);
    assert_eq!(admin.send(reqwest::Method::POST, "/v1/admin/flags", Some(json!({"key": "m"}))).await.0, 201);
    assert_eq!(admin.send(reqwest::Method::POST, "/v1/admin/flags", Some(json!({"key": "m"}))).await.0, 409);
    member.ofrep("m").await;
    member.ofrep("m").await;
    let response = reqwest::get(format!("http://{}/metrics", host.addr())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    for line in [
        "keel_requests_total{function=\"flags-admin\",route=\"POST /v1/admin/flags\",status=\"2xx\"} 1",
        "keel_requests_total{function=\"flags-admin\",route=\"POST /v1/admin/flags\",status=\"4xx\"} 1",
        "keel_requests_total{function=\"flags-eval\",route=\"POST /ofrep/v1/evaluate/flags/{key}\",status=\"2xx\"} 2",
        "keel_latency_milliseconds_count{function=\"flags-eval\",route=\"POST /ofrep/v1/evaluate/flags/{key}\",status=\"2xx\"} 2",
        "keel_cold_start_total{function=\"flags-admin\"} 1",
        "keel_cold_start_total{function=\"flags-eval\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
    // Every port call is counted per operation; the 409 was a condition that did not hold, not a backend error.
    let port_calls = "keel_port_calls_total{function=\"flags-admin\",operation=\"table.transact\"} ";
    assert!(text.lines().any(|l| l.starts_with(port_calls)), "no transact calls counted:\n{text}");
    assert!(!text.contains("keel_port_errors_total{function=\"flags-admin\""), "{text}");

    // The Prometheus project's own parser reads the whole exposition, with the types and labels we meant.
    let mut parser = std::process::Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/sdk/prometheus.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut parser.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(parsed.status.success(), "prometheus_client refused the text: {}", String::from_utf8_lossy(&parsed.stderr));
    let samples: Vec<Value> =
        String::from_utf8(parsed.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let requests = samples
        .iter()
        .find(|s| {
            s["name"] == "keel_requests_total"
                && s["labels"]["route"] == "POST /ofrep/v1/evaluate/flags/{key}"
                && s["labels"]["status"] == "2xx"
        })
        .unwrap_or_else(|| panic!("{samples:?}"));
    assert_eq!((requests["type"].as_str(), requests["value"].as_f64()), (Some("counter"), Some(2.0)));
    let latency = samples.iter().find(|s| s["name"] == "keel_latency_milliseconds_count").unwrap();
    assert_eq!(latency["type"], "summary");
    host.shutdown().await;
}
