//! Flag evaluation (`flags-eval`) on the embedded backend: Keel's API and OFREP, every reason, tenant isolation,
//! bad input, refresh timing, stale serving and fail-closed answers. OFREP answers are validated against the
//! protocol's OpenAPI document (`$KEEL_FIXTURES_DIR/ofrep/openapi.yaml`).

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use chrono::{DateTime, Duration, TimeZone, Utc};
use flags_eval::FlagsEval;
use http::Method;
use keel::clock::{Clock, ManualClock};
use keel::config::{ConfigError, Env};
use keel::faults::Faults;
use keel::resources::StaticResources;
use keel::table::{Expect, Item, Key, Table};
use keel::testing::SwitchableTable;
use keel_embedded::EmbeddedDb;
use keel_flags::store::FlagStore;
use keel_flags::{Flag, hash};
use keel_tests::{CallHttp, api_request, body_json, body_text, invocation, set_body, with_claims};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

const ORG_A: &str = "org-a";
const ORG_B: &str = "org-b";
const USER: &str = "user-1";
const STAGE: &str = "prod";
const REFRESH_SECONDS: i64 = 10;

const SINGLE: &str = "/ofrep/v1/evaluate/flags/{key}";
const BULK: &str = "/ofrep/v1/evaluate/flags";

// ------------------------------------------------------------------------------------------------------------------
// The OFREP document, as JSON Schema
// ------------------------------------------------------------------------------------------------------------------

fn load_openapi() -> Value {
    let path = keel_tests::fixtures_dir().join("ofrep/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("the OFREP OpenAPI document is not readable at {} ({e}); set KEEL_FIXTURES_DIR", path.display())
    });
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// The document's response schema for `path` and `status` as a standalone JSON Schema (2020-12, which OpenAPI 3.1
/// schemas are): `$ref: '#/components/schemas/..'` resolves because `components` is embedded in the root.
fn response_schema(doc: &Value, path: &str, status: u16) -> Option<Value> {
    let responses = &doc["paths"][path]["post"]["responses"];
    let response = responses.get(status.to_string()).unwrap_or_else(|| {
        panic!("the document declares no {status} response for POST {path}; it declares {:?}", keys_of(responses))
    });
    let schema = response.get("content")?.get("application/json")?.get("schema")?.clone();
    let mut root = Map::new();
    root.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    root.insert("components".into(), doc["components"].clone());
    root.insert("allOf".into(), json!([schema]));
    Some(Value::Object(root))
}

fn keys_of(value: &Value) -> Vec<String> {
    value.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Two amendments, each stated in the document's own words, without which no success with a value validates
/// (see `the_documents_value_alternatives_overlap_without_the_amendments`): `codeDefaultFlag` "has no `value`
/// property" but, as written, matches every object, so it overlaps each typed alternative of a `oneOf`; and an
/// integral number is both an `integerFlag` and a `floatFlag`. Amended: `codeDefaultFlag` forbids `value`, and a
/// `floatFlag` value is not an integer.
fn amend(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    let code_default = &mut schemas["codeDefaultFlag"];
    assert_eq!(code_default["properties"], json!({}), "codeDefaultFlag changed upstream: revisit the amendment");
    code_default["not"] = json!({"required": ["value"]});
    let float = &mut schemas["floatFlag"]["properties"]["value"];
    assert_eq!(float["type"], json!("number"), "floatFlag changed upstream: revisit the amendment");
    float["not"] = json!({"type": "integer"});
}

struct Ofrep {
    doc: Value,
}

fn ofrep() -> &'static Ofrep {
    static DOC: OnceLock<Ofrep> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = load_openapi();
        amend(&mut doc);
        Ofrep { doc }
    })
}

impl Ofrep {
    /// Asserts that `response` is what the document allows for POST `path` with its status: a declared status,
    /// and a body valid against that status's schema, or no body where the document declares none.
    fn check(&self, path: &str, response: &ApiGatewayV2httpResponse) -> Value {
        let status = u16::try_from(response.status_code).unwrap();
        let text = body_text(response);
        match response_schema(&self.doc, path, status) {
            None => {
                assert!(text.is_empty(), "{status} for {path} has no body in the document, got {text}");
                Value::Null
            }
            Some(schema) => {
                assert_eq!(response.headers["content-type"], "application/json", "{status} {text}");
                let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
                let validator = jsonschema::validator_for(&schema).unwrap();
                let errors: Vec<String> = validator.iter_errors(&body).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{status} for {path} does not match the document: {errors:?}\n{body:#}");
                body
            }
        }
    }
}

#[test]
fn the_documents_value_alternatives_overlap_without_the_amendments() {
    let raw = load_openapi();
    let mut amended = raw.clone();
    amend(&mut amended);
    // The document's own example of a 200 for one flag, and an integral number.
    let example = raw["paths"][SINGLE]["post"]["responses"]["200"]["content"]["application/json"]["example"].clone();
    assert_eq!(example["value"], json!(true));
    let integral = json!({"key": "k", "reason": "STATIC", "value": 3});
    let fractional = json!({"key": "k", "reason": "STATIC", "value": 2.5});
    let deferring = json!({"key": "k", "reason": "STATIC"});
    let valid = |doc: &Value, instance: &Value| {
        jsonschema::validator_for(&response_schema(doc, SINGLE, 200).unwrap()).unwrap().is_valid(instance)
    };
    assert!(!valid(&raw, &example), "the document's example now validates as written: drop the amendments");
    assert!(!valid(&raw, &integral));
    for instance in [&example, &integral, &fractional, &deferring] {
        assert!(valid(&amended, instance), "{instance}");
    }
    // The amendments still refuse what the document refuses.
    assert!(!valid(&amended, &json!({"key": "k", "reason": "DEFAULT", "value": true})));
    assert!(!valid(&amended, &json!({"key": "k", "reason": "STATIC", "value": [1]})));
    assert!(!valid(&amended, &json!({"reason": "STATIC", "value": true})));
}

// ------------------------------------------------------------------------------------------------------------------
// The world: an embedded flags table, a manual clock, the function, and a store for seeding
// ------------------------------------------------------------------------------------------------------------------

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
}

fn env() -> Env {
    Env::from_pairs([("KEEL_STAGE", STAGE), ("FLAGS_REFRESH_SECONDS", "10")])
}

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    /// The flags table itself, for raw writes.
    table: Arc<dyn Table>,
    /// The store on the table itself (seeding never fails).
    store: FlagStore,
    /// Between the function and the table.
    switch: Arc<SwitchableTable>,
    function: FlagsEval,
}

impl World {
    fn new() -> Self {
        Self::wrapped(|table| table)
    }

    /// The function sees the table through `wrap` (and through the switch).
    fn wrapped(wrap: impl FnOnce(Arc<dyn Table>) -> Arc<dyn Table>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::new(start()));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let table: Arc<dyn Table> = Arc::new(db.table("FlagsTable", dyn_clock.clone()));
        let switch = Arc::new(SwitchableTable::new(wrap(table.clone())));
        let resources = StaticResources::new(dyn_clock.clone()).with_table("FLAGS_TABLE", switch.clone());
        let function = flags_eval::build(&env(), &resources).unwrap();
        let store = FlagStore::new(table.clone(), dyn_clock);
        Self { _dir: dir, clock, table, store, switch, function }
    }

    async fn create(&self, flag: Value) {
        let flag: Flag = serde_json::from_value(flag).unwrap();
        self.store.create(flag, "test-admin").await.unwrap();
    }

    /// Writes a flag document as it is, bypassing validation (an older or newer Keel, or a hand edit), and moves
    /// the revision so caches reload.
    async fn put_raw(&self, flag: Value) {
        let key = flag["key"].as_str().unwrap().to_string();
        let mut attrs = Map::new();
        attrs.insert("flag".into(), flag);
        self.table.put(Item::new(Key::new("FLAG", &key), attrs), Expect::Any).await.unwrap();
        let mut meta = Map::new();
        meta.insert("revision".into(), json!(ulid::Ulid::new().to_string()));
        self.table.put(Item::new(Key::new("FLAGMETA", "revision"), meta), Expect::Any).await.unwrap();
    }

    fn advance(&self, seconds: i64) {
        self.clock.advance(Duration::seconds(seconds));
    }

    fn fail_store(&self, failing: bool) {
        self.switch.set_down(failing);
    }

    async fn call(&self, request: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        self.function.call(request, invocation(self.clock.as_ref())).await
    }

    /// `GET /v1/flags` as a member of `org`.
    async fn get(&self, org: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let mut request = api_request(Method::GET, "GET /v1/flags", "/v1/flags");
        let params: HashMap<String, String> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        request.query_string_parameters = params.into();
        let response = self.call(with_claims(request, USER, org, &["member"])).await;
        (status(&response), body_json(&response))
    }

    /// `POST /v1/flags/evaluate` as a member of `org`.
    async fn evaluate(&self, org: &str, body: &str) -> (u16, Value) {
        let mut request = api_request(Method::POST, "POST /v1/flags/evaluate", "/v1/flags/evaluate");
        set_body(&mut request, body.as_bytes());
        let response = self.call(with_claims(request, USER, org, &["member"])).await;
        (status(&response), body_json(&response))
    }

    /// `POST /ofrep/v1/evaluate/flags/{key}` as a member of `org`, checked against the document.
    async fn ofrep_one(&self, org: &str, key: &str, body: &str) -> (u16, Value) {
        let mut request = api_request(Method::POST, &format!("POST {SINGLE}"), &format!("{BULK}/{key}"));
        request.path_parameters.insert("key".into(), key.into());
        set_body(&mut request, body.as_bytes());
        let response = self.call(with_claims(request, USER, org, &["member"])).await;
        let body = ofrep().check(SINGLE, &response);
        (status(&response), body)
    }

    /// `POST /ofrep/v1/evaluate/flags` as a member of `org`, checked against the document.
    async fn ofrep_bulk(&self, org: &str, body: &str, if_none_match: Option<&str>) -> ApiGatewayV2httpResponse {
        let mut request = api_request(Method::POST, &format!("POST {BULK}"), BULK);
        set_body(&mut request, body.as_bytes());
        if let Some(tag) = if_none_match {
            request.headers.insert("if-none-match", tag.parse().unwrap());
        }
        let response = self.call(with_claims(request, USER, org, &["member"])).await;
        ofrep().check(BULK, &response);
        response
    }
}

fn status(response: &ApiGatewayV2httpResponse) -> u16 {
    u16::try_from(response.status_code).unwrap()
}

fn etag_of(response: &ApiGatewayV2httpResponse) -> String {
    response.headers.get("etag").expect("an ETag").to_str().unwrap().to_string()
}

const NO_CONTEXT: &str = r#"{"context": {}}"#;

/// A group id under which `org` falls in a rollout below 100 %, and the smallest percentage that includes it.
fn rollout_including(org: &str) -> (String, f64) {
    (0..)
        .map(|i| format!("group-{i}"))
        .map(|group| {
            let bucket = hash::rollout_bucket(&group, org);
            (group, bucket)
        })
        .find(|(_, bucket)| *bucket < 9_000)
        .map(|(group, bucket)| (group, f64::from(bucket + 1) / 100.0))
        .unwrap()
}

/// One flag per Keel reason, for `ORG_A`, `USER` in `STAGE`; the `rule` flag needs `plan=pro` in the context.
async fn seed_reasons(world: &World) {
    let (group, percentage) = rollout_including(ORG_A);
    for flag in [
        json!({"key": "static-on", "default_value": true}),
        json!({"key": "killed", "enabled": false, "default_value": true}),
        json!({"key": "env-off", "environments": ["staging"], "default_value": true}),
        json!({"key": "prereq", "prerequisites": [{"flag": "killed"}], "default_value": true}),
        json!({"key": "override", "overrides": [
            {"org_id": ORG_A, "action": {"type": "forced_on"}, "reason": "pilot customer, contract 1234"}]}),
        json!({"key": "blocked", "block_orgs": [ORG_A], "default_value": true}),
        json!({"key": "target-user", "target_users": [USER]}),
        json!({"key": "allow-list", "allow_orgs": [ORG_A]}),
        json!({"key": "rule", "rules": [{"id": "r-pro", "constraints": [
            {"field": "plan", "operator": "IN", "values": ["pro"]}]}]}),
        json!({"key": "rollout", "rules": [{"id": "r-part", "rollout": {"percentage": percentage, "group_id": group}}]}),
        json!({"key": "default", "rules": [{"id": "r-never", "constraints": [
            {"field": "plan", "operator": "IN", "values": ["enterprise"]}]}]}),
    ] {
        world.create(flag).await;
    }
    // Stored documents that do not compile: a number constraint on a non-number, and a rule whose segment is gone.
    world
        .put_raw(json!({"key": "unparsable", "rules": [{"id": "r-bad", "constraints": [
            {"field": "seats", "operator": "NUM_GT", "values": ["many"]}]}]}))
        .await;
    world.put_raw(json!({"key": "broken-rule", "rules": [{"id": "r-ghost", "segments": ["deleted-segment"]}]})).await;
}

/// A flag of `seed_reasons`: Keel's reason, OpenFeature's, the value, the rule and the error code it answers with.
type Expected = (&'static str, &'static str, &'static str, bool, Option<&'static str>, Option<&'static str>);

fn expected_reasons() -> Vec<Expected> {
    vec![
        ("static-on", "static", "STATIC", true, None, None),
        ("killed", "killed", "DISABLED", false, None, None),
        ("env-off", "environment_off", "DISABLED", false, None, None),
        ("prereq", "prerequisite_failed", "DISABLED", false, None, None),
        ("override", "override", "TARGETING_MATCH", true, None, None),
        ("blocked", "blocked", "TARGETING_MATCH", false, None, None),
        ("target-user", "target_user", "TARGETING_MATCH", true, None, None),
        ("allow-list", "allow_list", "TARGETING_MATCH", true, None, None),
        ("rule", "rule", "TARGETING_MATCH", true, Some("r-pro"), None),
        ("rollout", "rollout", "SPLIT", true, Some("r-part"), None),
        ("default", "default", "DEFAULT", false, None, None),
        ("unparsable", "error", "ERROR", false, None, Some("PARSE_ERROR")),
        ("broken-rule", "error", "ERROR", false, Some("r-ghost"), Some("GENERAL")),
        ("missing", "flag_not_found", "ERROR", false, None, Some("FLAG_NOT_FOUND")),
    ]
}

// ------------------------------------------------------------------------------------------------------------------
// Keel's API
// ------------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_answers_the_named_flags_with_the_full_shape() {
    let world = World::new();
    world
        .create(json!({"key": "color", "default_value": true,
            "variants": [{"name": "blue", "payload": {"type": "string", "value": "#00f"}}]}))
        .await;
    world.create(json!({"key": "plain"})).await;
    let (code, body) = world.get(ORG_A, &[("keys", "color, plain,missing")]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["flags"]["color"],
        json!({"value": true, "value_type": "boolean", "enabled": true, "variant": "blue",
            "payload": {"type": "string", "value": "#00f"}, "reason": "static", "open_feature_reason": "STATIC",
            "rule_id": null, "version": 1, "error_code": null, "stale": false})
    );
    assert_eq!(body["flags"]["plain"]["value"], json!(false));
    assert_eq!(body["flags"]["plain"]["variant"], "off");
    assert_eq!(body["flags"]["plain"]["payload"], Value::Null);
    // Unknown flags fail closed.
    assert_eq!(
        body["flags"]["missing"],
        json!({"value": false, "value_type": "boolean", "enabled": false, "variant": null, "payload": null,
            "reason": "flag_not_found", "open_feature_reason": "ERROR", "rule_id": null, "version": 0,
            "error_code": "FLAG_NOT_FOUND", "stale": false})
    );
    assert_eq!(keys_of(&body["flags"]), ["color", "missing", "plain"]);
    assert_eq!(body["snapshot"], json!({"loaded_at": "2026-03-02T09:00:00.000Z", "stale": false}));
}

#[tokio::test]
async fn get_without_keys_answers_every_live_flag() {
    let world = World::new();
    for key in ["a", "b", "c"] {
        world.create(json!({ "key": key })).await;
    }
    world
        .store
        .update("b", None, "test-admin", "archive", |f| {
            f.archived = true;
            Ok(())
        })
        .await
        .unwrap();
    let (code, body) = world.get(ORG_A, &[]).await;
    assert_eq!(code, 200);
    assert_eq!(keys_of(&body["flags"]), ["a", "c"]);
    // `keys=` with nothing in it is the same as no `keys`.
    assert_eq!(keys_of(&world.get(ORG_A, &[("keys", "")]).await.1["flags"]), ["a", "c"]);
}

#[tokio::test]
async fn post_evaluate_uses_the_context_and_maps_its_fields() {
    let world = World::new();
    world
        .create(json!({"key": "pro", "rules": [{"id": "r1", "constraints": [
            {"field": "plan", "operator": "IN", "values": ["pro"]},
            {"field": "seats", "operator": "NUM_GTE", "values": ["10"]},
            {"field": "beta", "operator": "IN", "values": ["true"]}]}]}))
        .await;
    world
        .create(json!({"key": "session", "rules": [{"id": "r-s", "constraints": [
            {"field": "sessionId", "operator": "IN", "values": ["s-1"]},
            {"field": "appName", "operator": "IN", "values": ["web"]},
            {"field": "remoteAddress", "operator": "IN_CIDR", "values": ["10.0.0.0/8"]},
            {"field": "currentTime", "operator": "DATE_AFTER", "values": ["2030-01-01T00:00:00Z"]}]}]}))
        .await;
    let body = json!({"keys": ["pro", "session"], "context": {"plan": "pro", "seats": 12, "beta": true,
        "sessionId": "s-1", "appName": "web", "remoteAddress": "10.1.2.3", "currentTime": "2031-05-01T00:00:00Z"}});
    let (code, answers) = world.evaluate(ORG_A, &body.to_string()).await;
    assert_eq!(code, 200, "{answers}");
    assert_eq!(answers["flags"]["pro"]["reason"], "rule");
    assert_eq!(answers["flags"]["pro"]["rule_id"], "r1");
    assert_eq!(answers["flags"]["session"]["reason"], "rule");
    // The fields are fields, not attributes: as attributes they would not satisfy these rules.
    let (_, answers) = world
        .evaluate(ORG_A, &json!({"context": {"plan": "pro", "seats": 9, "beta": true, "sessionId": "s-2"}}).to_string())
        .await;
    assert_eq!(answers["flags"]["pro"]["reason"], "default");
    assert_eq!(answers["flags"]["pro"]["value"], false);
    assert_eq!(answers["flags"]["session"]["reason"], "default");
    // Without a body: every flag, no extra attributes.
    let (code, answers) = world.evaluate(ORG_A, "").await;
    assert_eq!(code, 200);
    assert_eq!(keys_of(&answers["flags"]), ["pro", "session"]);
}

#[tokio::test]
async fn every_keel_reason_is_surfaced() {
    let world = World::new();
    seed_reasons(&world).await;
    let keys: Vec<&str> = expected_reasons().iter().map(|e| e.0).collect();
    let request = json!({"keys": keys, "context": {"plan": "pro"}});
    let (code, body) = world.evaluate(ORG_A, &request.to_string()).await;
    assert_eq!(code, 200, "{body}");
    for (key, reason, open_feature, value, rule, error) in expected_reasons() {
        let answer = &body["flags"][key];
        assert_eq!(answer["reason"], reason, "{key}: {answer}");
        assert_eq!(answer["open_feature_reason"], open_feature, "{key}");
        assert_eq!(answer["value"], value, "{key}");
        assert_eq!(answer["rule_id"], json!(rule), "{key}");
        assert_eq!(answer["error_code"], json!(error), "{key}");
    }
    // Nothing of the stored configuration reaches the caller: no override reason, no compile message.
    let text = body.to_string();
    for secret in ["pilot customer", "contract 1234", "many", "deleted-segment"] {
        assert!(!text.contains(secret), "`{secret}` leaked: {text}");
    }
}

#[tokio::test]
async fn one_organizations_override_is_invisible_and_inapplicable_to_another() {
    let world = World::new();
    seed_reasons(&world).await;
    let (_, a) = world.get(ORG_A, &[("keys", "override")]).await;
    assert_eq!(a["flags"]["override"]["value"], true);
    assert_eq!(a["flags"]["override"]["reason"], "override");
    let (_, b) = world.get(ORG_B, &[("keys", "override,allow-list,blocked")]).await;
    assert_eq!(b["flags"]["override"]["value"], false);
    assert_eq!(b["flags"]["override"]["reason"], "default");
    assert_eq!(b["flags"]["allow-list"]["value"], false);
    assert_eq!(b["flags"]["blocked"]["value"], true);
    let text = b.to_string();
    assert!(!text.contains(ORG_A) && !text.contains("pilot"), "{text}");
    let (_, bulk) = {
        let response = world.ofrep_bulk(ORG_B, NO_CONTEXT, None).await;
        (status(&response), body_json(&response))
    };
    let text = bulk.to_string();
    assert!(!text.contains(ORG_A) && !text.contains("pilot"), "{text}");
    assert!(!text.contains(r#""keelReason":"override""#), "{text}");
    let entry = bulk["flags"].as_array().unwrap().iter().find(|e| e["key"] == "override").unwrap();
    assert_eq!(entry["value"], false);
    assert_eq!(entry["metadata"]["keelReason"], "default");
}

#[tokio::test]
async fn the_organization_user_and_environment_cannot_come_from_the_request() {
    let world = World::new();
    seed_reasons(&world).await;
    for name in ["organizationId", "userId", "environment", "orgId", "org_id", "user_id"] {
        let body = json!({"context": { name: ORG_A }});
        let (code, problem) = world.evaluate(ORG_B, &body.to_string()).await;
        assert_eq!(code, 422, "{name}: {problem}");
        assert_eq!(problem["code"], "invalid_context");
        assert_eq!(problem["pointer"], format!("/context/{name}"));
        let (code, failure) = world.ofrep_one(ORG_B, "override", &body.to_string()).await;
        assert_eq!(code, 400);
        assert_eq!(failure["errorCode"], "INVALID_CONTEXT");
        assert!(failure["errorDetails"].as_str().unwrap().contains(&format!("/context/{name}")), "{failure}");
        let response = world.ofrep_bulk(ORG_B, &body.to_string(), None).await;
        assert_eq!(status(&response), 400);
        assert_eq!(body_json(&response)["errorCode"], "INVALID_CONTEXT");
    }
    // The query has one parameter, `keys`.
    for name in ["org_id", "organizationId", "userId", "environment"] {
        let (code, problem) = world.get(ORG_B, &[("keys", "override"), (name, ORG_A)]).await;
        assert_eq!(code, 422, "{problem}");
        assert_eq!(problem["pointer"], name);
    }
    // OFREP's targetingKey is accepted and changes nothing: the user is the token's.
    let (code, answer) =
        world.ofrep_one(ORG_B, "target-user", &json!({"context": {"targetingKey": "someone"}}).to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(answer["value"], true);
    assert_eq!(answer["metadata"]["keelReason"], "target_user");
}

#[tokio::test]
async fn bad_input_gets_413_or_422_saying_what_is_wrong() {
    let world = World::new();
    world.create(json!({"key": "a"})).await;
    let big = json!({"context": {"x": "y".repeat(64 * 1024)}}).to_string();
    let (code, problem) = world.evaluate(ORG_A, &big).await;
    assert_eq!(code, 413, "{problem}");
    assert_eq!(problem["status"], 413);

    let many_keys: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let joined = many_keys.join(",");
    let (code, problem) = world.get(ORG_A, &[("keys", joined.as_str())]).await;
    assert_eq!((code, problem["pointer"].as_str()), (422, Some("keys")), "{problem}");
    let (code, problem) = world.evaluate(ORG_A, &json!({ "keys": many_keys }).to_string()).await;
    assert_eq!((code, problem["pointer"].as_str()), (422, Some("/keys")));
    let hundred: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let joined = hundred.join(",");
    assert_eq!(world.get(ORG_A, &[("keys", joined.as_str())]).await.0, 200);
    let (code, problem) = world.evaluate(ORG_A, &json!({"keys": ["a", ""]}).to_string()).await;
    assert_eq!((code, problem["pointer"].as_str()), (422, Some("/keys/1")));

    let attributes: Map<String, Value> = (0..51).map(|i| (format!("a{i}"), json!("v"))).collect();
    let (code, problem) = world.evaluate(ORG_A, &json!({ "context": attributes }).to_string()).await;
    assert_eq!((code, problem["pointer"].as_str()), (422, Some("/context")), "{problem}");
    let fifty: Map<String, Value> = (0..50).map(|i| (format!("a{i}"), json!("v"))).collect();
    assert_eq!(world.evaluate(ORG_A, &json!({ "context": fifty }).to_string()).await.0, 200);

    let long = json!({"context": {"plan": "p".repeat(1001)}});
    let (code, problem) = world.evaluate(ORG_A, &long.to_string()).await;
    assert_eq!((code, problem["pointer"].as_str()), (422, Some("/context/plan")));
    let nested = json!({"context": {"plan": {"name": "pro"}}});
    assert_eq!(world.evaluate(ORG_A, &nested.to_string()).await.1["pointer"], "/context/plan");
    let time = json!({"context": {"currentTime": "tomorrow"}});
    assert_eq!(world.evaluate(ORG_A, &time.to_string()).await.1["pointer"], "/context/currentTime");

    let (code, problem) = world.evaluate(ORG_A, "{not json").await;
    assert_eq!((code, problem["code"].as_str()), (422, Some("invalid_body")));
    let (code, problem) = world.evaluate(ORG_A, r#"{"keys": ["a"], "org": "x"}"#).await;
    assert_eq!((code, problem["code"].as_str()), (422, Some("invalid_body")), "{problem}");
    assert_eq!(world.evaluate(ORG_A, r#"{"keys": "a"}"#).await.0, 422);
    assert_eq!(world.evaluate(ORG_A, "[]").await.1["code"], "invalid_body");

    // OFREP says all of this with its own invalid-context failure.
    let (code, failure) = world.ofrep_one(ORG_A, "a", &big).await;
    assert_eq!((code, failure["errorCode"].as_str()), (400, Some("INVALID_CONTEXT")));
    let (code, failure) = world.ofrep_one(ORG_A, "a", &nested.to_string()).await;
    assert_eq!((code, failure["errorCode"].as_str()), (400, Some("INVALID_CONTEXT")));
    let (code, failure) = world.ofrep_one(ORG_A, "a", r#"{"context": "pro"}"#).await;
    assert_eq!((code, failure["key"].as_str()), (400, Some("a")));
    let response = world.ofrep_bulk(ORG_A, "[]", None).await;
    assert_eq!(status(&response), 400);
}

#[tokio::test]
async fn callers_need_an_organization_and_a_role_and_routes_are_exact() {
    let world = World::new();
    world.create(json!({"key": "a"})).await;
    let anonymous = api_request(Method::GET, "GET /v1/flags", "/v1/flags");
    assert_eq!(status(&world.call(anonymous).await), 401);
    let roleless = with_claims(api_request(Method::GET, "GET /v1/flags", "/v1/flags"), USER, ORG_A, &[]);
    assert_eq!(status(&world.call(roleless).await), 403);
    for roles in [&["admin"][..], &["platform-admin"], &["member"]] {
        let request = with_claims(api_request(Method::GET, "GET /v1/flags", "/v1/flags"), USER, ORG_A, roles);
        assert_eq!(status(&world.call(request).await), 200, "{roles:?}");
    }
    let unknown = with_claims(api_request(Method::GET, "GET /v1/other", "/v1/other"), USER, ORG_A, &["member"]);
    let response = world.call(unknown).await;
    assert_eq!(status(&response), 404);
    assert_eq!(response.headers["content-type"], "application/problem+json");
    for (method, route, allow) in [
        (Method::POST, "POST /v1/flags", "GET"),
        (Method::GET, "GET /v1/flags/evaluate", "POST"),
        (Method::GET, "GET /ofrep/v1/evaluate/flags", "POST"),
        (Method::DELETE, "DELETE /ofrep/v1/evaluate/flags/{key}", "POST"),
    ] {
        let path = route.split(' ').nth(1).unwrap().replace("{key}", "a");
        let mut request = api_request(method, route, &path);
        request.path_parameters.insert("key".into(), "a".into());
        let response = world.call(with_claims(request, USER, ORG_A, &["member"])).await;
        assert_eq!(status(&response), 405, "{route}");
        assert_eq!(response.headers["allow"], allow);
        assert_eq!(body_json(&response)["code"], "method_not_allowed");
    }
}

#[tokio::test]
async fn configuration_is_checked_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start()));
    let resources = StaticResources::new(clock.clone()).with_table("FLAGS_TABLE", Arc::new(db.table("F", clock)));
    let built = |pairs: &[(&str, &str)]| flags_eval::build(&Env::from_pairs(pairs.iter().copied()), &resources).err();
    assert_eq!(built(&[]), Some(ConfigError::Missing("KEEL_STAGE".into())));
    assert!(built(&[("KEEL_STAGE", "dev")]).is_none(), "the refresh interval defaults to 10 s");
    assert!(built(&[("KEEL_STAGE", "dev"), ("FLAGS_REFRESH_SECONDS", "30")]).is_none());
    for bad in ["0", "31", "-1", "ten", "1.5"] {
        let err = built(&[("KEEL_STAGE", "dev"), ("FLAGS_REFRESH_SECONDS", bad)]);
        assert!(matches!(&err, Some(ConfigError::Malformed { name, .. }) if name == "FLAGS_REFRESH_SECONDS"), "{bad}");
    }
    let empty = StaticResources::new(Arc::new(ManualClock::new(start())));
    assert_eq!(
        flags_eval::build(&Env::from_pairs([("KEEL_STAGE", "dev")]), &empty).err(),
        Some(ConfigError::Missing("FLAGS_TABLE".into()))
    );
}

// ------------------------------------------------------------------------------------------------------------------
// The snapshot: refresh, staleness, fail-closed, usage
// ------------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_change_is_visible_after_the_refresh_interval_and_not_before() {
    let world = World::new();
    world.create(json!({"key": "launch"})).await;
    assert_eq!(world.get(ORG_A, &[("keys", "launch")]).await.1["flags"]["launch"]["value"], false);
    world
        .store
        .update("launch", None, "test-admin", "update", |f| {
            f.default_value = true;
            Ok(())
        })
        .await
        .unwrap();
    world.create(json!({"key": "newcomer", "default_value": true})).await;
    world.advance(REFRESH_SECONDS - 1);
    let (_, body) = world.get(ORG_A, &[("keys", "launch,newcomer")]).await;
    assert_eq!(body["flags"]["launch"]["value"], false, "visible before the interval");
    assert_eq!(body["flags"]["launch"]["version"], 1);
    assert_eq!(body["flags"]["newcomer"]["error_code"], "FLAG_NOT_FOUND");
    world.advance(1);
    let (_, body) = world.get(ORG_A, &[("keys", "launch,newcomer")]).await;
    assert_eq!(body["flags"]["launch"]["value"], true);
    assert_eq!(body["flags"]["launch"]["version"], 2);
    assert_eq!(body["flags"]["newcomer"]["value"], true);
    assert_eq!(body["snapshot"]["loaded_at"], "2026-03-02T09:00:10.000Z");
}

#[tokio::test]
async fn the_last_good_snapshot_keeps_answering_marked_stale_while_the_store_fails() {
    let world = World::new();
    world.create(json!({"key": "on", "default_value": true})).await;
    let (_, fresh) = world.get(ORG_A, &[("keys", "on")]).await;
    assert_eq!(fresh["flags"]["on"]["stale"], false);

    world.fail_store(true);
    world.advance(REFRESH_SECONDS);
    let (code, body) = world.get(ORG_A, &[("keys", "on,missing")]).await;
    assert_eq!(code, 200);
    assert_eq!(body["flags"]["on"]["value"], true);
    assert_eq!(body["flags"]["on"]["reason"], "static");
    assert_eq!(body["flags"]["on"]["stale"], true);
    assert_eq!(body["flags"]["missing"]["error_code"], "FLAG_NOT_FOUND");
    assert_eq!(body["snapshot"], json!({"loaded_at": "2026-03-02T09:00:00.000Z", "stale": true}));

    let (code, answer) = world.ofrep_one(ORG_A, "on", NO_CONTEXT).await;
    assert_eq!(code, 200);
    assert_eq!(answer["value"], true);
    assert_eq!(answer["metadata"]["stale"], true);
    assert_eq!(answer["metadata"]["snapshotLoadedAt"], "2026-03-02T09:00:00.000Z");
    let response = world.ofrep_bulk(ORG_A, NO_CONTEXT, None).await;
    let bulk = body_json(&response);
    assert_eq!(status(&response), 200);
    assert_eq!(bulk["flags"][0]["metadata"]["stale"], true);
    assert_eq!(bulk["metadata"], json!({"stale": true, "snapshotLoadedAt": "2026-03-02T09:00:00.000Z"}));

    // Back: fresh again at the next check, and the stale marks are gone.
    world.fail_store(false);
    world.advance(REFRESH_SECONDS);
    let (_, body) = world.get(ORG_A, &[("keys", "on")]).await;
    assert_eq!(body["snapshot"]["stale"], false);
    assert_eq!(body["flags"]["on"]["stale"], false);
    let (_, answer) = world.ofrep_one(ORG_A, "on", NO_CONTEXT).await;
    assert!(answer["metadata"].get("stale").is_none(), "{answer}");
    assert!(answer["metadata"].get("snapshotLoadedAt").is_none());
}

#[tokio::test]
async fn with_a_store_failing_from_the_start_every_flag_fails_closed() {
    // Through `keel::faults`, as KEEL_FAULTS=table.*:1 would configure it.
    let world = World::wrapped(|table| Faults::parse("table.*:1").unwrap().table(table));
    world.create(json!({"key": "on", "default_value": true})).await;

    let (code, body) = world.get(ORG_A, &[("keys", "on,other")]).await;
    assert_eq!(code, 200);
    for key in ["on", "other"] {
        assert_eq!(
            body["flags"][key],
            json!({"value": false, "value_type": "boolean", "enabled": false, "variant": null, "payload": null,
                "reason": "error", "open_feature_reason": "ERROR", "rule_id": null, "version": 0,
                "error_code": "GENERAL", "stale": true})
        );
    }
    assert_eq!(body["snapshot"], json!({"loaded_at": null, "stale": true}));
    let (code, body) = world.get(ORG_A, &[]).await;
    assert_eq!(code, 200);
    assert_eq!(body["flags"], json!({}), "no snapshot: no flag is known");

    // OFREP: the document's general error, which SDKs turn into the code default with reason ERROR.
    let (code, body) = world.ofrep_one(ORG_A, "on", NO_CONTEXT).await;
    assert_eq!(code, 500);
    assert!(body["errorDetails"].as_str().unwrap().contains("code default"));
    let response = world.ofrep_bulk(ORG_A, NO_CONTEXT, None).await;
    assert_eq!(status(&response), 500);
    assert!(response.headers.get("etag").is_none(), "an error is never cached under an ETag");
    // Invalid input is still a 400, not a 500.
    let (code, _) = world.ofrep_one(ORG_A, "on", &json!({"context": {"userId": "x"}}).to_string()).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn evaluated_flags_are_recorded_as_used() {
    let world = World::new();
    world.create(json!({"key": "used"})).await;
    world.create(json!({"key": "idle"})).await;
    world.get(ORG_A, &[("keys", "used,missing")]).await;
    world.advance(REFRESH_SECONDS);
    // The next check flushes what was noted.
    world.ofrep_one(ORG_A, "used", NO_CONTEXT).await;
    let usage = world.store.usage().await.unwrap();
    assert_eq!(usage.keys().collect::<Vec<_>>(), ["used"]);
    assert_eq!(usage["used"], start());
}

// ------------------------------------------------------------------------------------------------------------------
// OFREP
// ------------------------------------------------------------------------------------------------------------------

async fn seed_values(world: &World) {
    let grey = json!({"name": "grey", "payload": {"type": "string", "value": "#888888"}});
    for flag in [
        json!({"key": "bool-flag", "default_value": true}),
        json!({"key": "off-flag"}),
        // A boolean flag stays boolean whatever its variants carry; the variant names the payload.
        json!({"key": "boolean-with-payload", "default_value": true,
            "variants": [{"name": "blue", "payload": {"type": "string", "value": "#0000ff"}}]}),
        json!({"key": "string-flag", "value_type": "string", "default_value": true, "default_variant": grey,
            "variants": [{"name": "blue", "payload": {"type": "string", "value": "#0000ff"}}]}),
        json!({"key": "string-flag-off", "value_type": "string", "default_variant": grey,
            "variants": [{"name": "blue", "payload": {"type": "string", "value": "#0000ff"}}]}),
        json!({"key": "object-flag", "value_type": "object", "default_value": true,
            "default_variant": {"name": "none", "payload": {"type": "json", "value": "{}"}},
            "variants": [{"name": "big", "payload": {"type": "json", "value": "{\"max\": 10, \"tags\": [\"a\"]}"}}]}),
        // Any payload on a boolean flag: its value stays the boolean.
        json!({"key": "array-on-boolean", "default_value": true,
            "variants": [{"name": "arr", "payload": {"type": "json", "value": "[1, 2]"}}]}),
        json!({"key": "number-flag", "value_type": "number", "default_value": true,
            "default_variant": {"name": "zero", "payload": {"type": "number", "value": "0.0"}},
            "variants": [{"name": "ratio", "payload": {"type": "number", "value": "2.5"}}]}),
        json!({"key": "integer-flag", "value_type": "number", "default_value": true,
            "default_variant": {"name": "zero", "payload": {"type": "number", "value": "0"}},
            "variants": [{"name": "limit", "payload": {"type": "number", "value": "1000"}}]}),
        json!({"key": "exponent-flag", "value_type": "number", "default_value": true,
            "default_variant": {"name": "zero", "payload": {"type": "number", "value": "0.0"}},
            "variants": [{"name": "limit", "payload": {"type": "number", "value": "1e3"}}]}),
        json!({"key": "csv-flag", "value_type": "string", "default_value": true, "default_variant": {"name": "none"},
            "variants": [{"name": "list", "payload": {"type": "csv", "value": "a,b,c"}}]}),
        json!({"key": "named-flag", "value_type": "string", "default_value": true,
            "default_variant": {"name": "control"}, "variants": [{"name": "treatment"}]}),
        json!({"key": "named-flag-off", "value_type": "string", "default_variant": {"name": "control"},
            "variants": [{"name": "treatment"}]}),
    ] {
        world.create(flag).await;
    }
    // Stored by hand: a number flag whose payload is not a number. The snapshot refuses it as a write would.
    world
        .put_raw(json!({"key": "nan-flag", "version": 1, "value_type": "number", "default_value": true,
            "default_variant": {"name": "zero", "payload": {"type": "number", "value": "0"}},
            "variants": [{"name": "n", "payload": {"type": "number", "value": "NaN"}}]}))
        .await;
}

#[tokio::test]
async fn ofrep_single_flag_values_by_type() {
    let world = World::new();
    seed_values(&world).await;
    for (key, reason, variant, value) in [
        ("bool-flag", "STATIC", "on", json!(true)),
        ("off-flag", "STATIC", "off", json!(false)),
        ("boolean-with-payload", "STATIC", "blue", json!(true)),
        ("string-flag", "STATIC", "blue", json!("#0000ff")),
        ("string-flag-off", "STATIC", "grey", json!("#888888")),
        ("object-flag", "STATIC", "big", json!({"max": 10, "tags": ["a"]})),
        ("array-on-boolean", "STATIC", "arr", json!(true)),
        ("number-flag", "STATIC", "ratio", json!(2.5)),
        ("integer-flag", "STATIC", "limit", json!(1000)),
        ("exponent-flag", "STATIC", "limit", json!(1000.0)),
        ("csv-flag", "STATIC", "list", json!("a,b,c")),
        ("named-flag", "STATIC", "treatment", json!("treatment")),
        ("named-flag-off", "STATIC", "control", json!("control")),
    ] {
        let (code, body) = world.ofrep_one(ORG_A, key, NO_CONTEXT).await;
        assert_eq!(code, 200, "{key}: {body}");
        let enabled = !key.ends_with("-off") && key != "off-flag";
        let metadata = json!({"enabled": enabled, "keelReason": "static", "flagVersion": 1});
        let expected = json!({"key": key, "reason": reason, "variant": variant, "value": value, "metadata": metadata});
        assert_eq!(body, expected, "{key}");
        // Keel's API answers the same value, variant and state.
        let (_, keel) = world.get(ORG_A, &[("keys", key)]).await;
        let answer = &keel["flags"][key];
        assert_eq!(
            (&answer["value"], &answer["variant"], &answer["enabled"]),
            (&value, &json!(variant), &json!(enabled))
        );
    }
    // 1000 and 1e3 are told apart on the wire: SDKs check integers and floats separately.
    let (_, body) = world.ofrep_one(ORG_A, "exponent-flag", NO_CONTEXT).await;
    assert!(body["value"].is_f64() && body.to_string().contains("1000.0"), "{body}");
    // A payload that does not parse as the flag's type is the document's PARSE_ERROR (400).
    let (code, body) = world.ofrep_one(ORG_A, "nan-flag", NO_CONTEXT).await;
    assert_eq!((code, body["errorCode"].as_str()), (400, Some("PARSE_ERROR")), "{body}");
    assert_eq!(body["key"], "nan-flag");
}

/// A typed flag answers its type on every path that turns it off, in OFREP and in Keel's API.
#[tokio::test]
async fn typed_flags_answer_their_type_on_every_path() {
    let world = World::new();
    world.create(json!({"key": "parent"})).await;
    let typed = |key: &str, extra: Value| {
        let mut flag = json!({"key": key, "value_type": "string", "default_value": true,
            "default_variant": {"name": "control", "payload": {"type": "string", "value": "old checkout"}},
            "variants": [{"name": "one-page", "payload": {"type": "string", "value": "one-page checkout"}}]});
        for (name, value) in extra.as_object().unwrap() {
            flag[name] = value.clone();
        }
        flag
    };
    for flag in [
        typed("t-on", json!({})),
        typed("t-killed", json!({"enabled": false})),
        typed("t-env", json!({"environments": ["elsewhere"]})),
        typed("t-prereq", json!({"prerequisites": [{"flag": "parent"}]})),
        typed("t-blocked", json!({"block_orgs": [ORG_A]})),
        typed(
            "t-forced-off",
            json!({"overrides": [{"org_id": ORG_A, "action": {"type": "forced_off"}, "reason": "x"}]}),
        ),
        typed(
            "t-default",
            json!({"default_value": false,
            "rules": [{"id": "r", "constraints": [{"field": "plan", "operator": "IN", "values": ["none"]}]}]}),
        ),
    ] {
        world.create(flag).await;
    }
    for (key, reason, variant, value) in [
        ("t-on", "STATIC", "one-page", "one-page checkout"),
        ("t-killed", "DISABLED", "control", "old checkout"),
        ("t-env", "DISABLED", "control", "old checkout"),
        ("t-prereq", "DISABLED", "control", "old checkout"),
        ("t-blocked", "TARGETING_MATCH", "control", "old checkout"),
        ("t-forced-off", "TARGETING_MATCH", "control", "old checkout"),
        ("t-default", "UNKNOWN", "control", "old checkout"),
    ] {
        let (code, body) = world.ofrep_one(ORG_A, key, NO_CONTEXT).await;
        assert_eq!(code, 200, "{key}: {body}");
        assert_eq!((body["reason"].as_str(), body["variant"].as_str()), (Some(reason), Some(variant)), "{key}");
        assert_eq!(body["value"], value, "{key}");
        assert_eq!(body["metadata"]["enabled"], key == "t-on", "{key}");
        let (_, keel) = world.get(ORG_A, &[("keys", key)]).await;
        assert_eq!(keel["flags"][key]["value"], value, "{key}");
        assert_eq!(keel["flags"][key]["value_type"], "string", "{key}");
    }
    // Another organization is not blocked: the same flag answers its variant.
    let (_, body) = world.ofrep_one(ORG_B, "t-blocked", NO_CONTEXT).await;
    assert_eq!(body["value"], "one-page checkout");
}

#[tokio::test]
async fn ofrep_reasons_metadata_and_failures_follow_the_document() {
    let world = World::new();
    seed_reasons(&world).await;
    let context = json!({"context": {"targetingKey": USER, "plan": "pro"}}).to_string();
    for (key, keel_reason, open_feature, value, rule, error) in expected_reasons() {
        let (code, body) = world.ofrep_one(ORG_A, key, &context).await;
        match error {
            None => {
                assert_eq!(code, 200, "{key}: {body}");
                // The document lists no DEFAULT: Keel's `default` is UNKNOWN there.
                let reason = if open_feature == "DEFAULT" { "UNKNOWN" } else { open_feature };
                assert_eq!(body["reason"], reason, "{key}");
                assert_eq!(body["value"], value, "{key}");
                assert_eq!(body["metadata"]["keelReason"], keel_reason, "{key}");
                assert_eq!(body["metadata"]["flagVersion"], 1, "{key}");
                assert_eq!(body["metadata"].get("ruleId").and_then(Value::as_str), rule, "{key}");
                let name = if value { "on" } else { "off" };
                assert_eq!(body["variant"], name, "{key}: no variants, so on or off");
                assert_eq!(body["metadata"]["enabled"], value, "{key}");
            }
            Some("FLAG_NOT_FOUND") => {
                assert_eq!(code, 404);
                assert_eq!(body["errorCode"], "FLAG_NOT_FOUND");
                assert_eq!(body["key"], key);
                assert_eq!(body["errorDetails"], "Flag 'missing' was not found");
            }
            Some(code_name) => {
                assert_eq!(code, 400, "{key}: {body}");
                assert_eq!(body["errorCode"], code_name, "{key}");
                assert_eq!(body["metadata"]["keelReason"], "error");
                assert_eq!(body["metadata"].get("ruleId").and_then(Value::as_str), rule, "{key}");
                let details = body["errorDetails"].as_str().unwrap();
                assert!(!details.contains("many") && !details.contains("deleted-segment"), "{details}");
            }
        }
    }
}

#[tokio::test]
async fn ofrep_bulk_answers_every_live_flag_with_an_etag_and_304() {
    let world = World::new();
    seed_reasons(&world).await;
    seed_values(&world).await;
    let context = json!({"context": {"targetingKey": USER, "plan": "pro"}}).to_string();
    let response = world.ofrep_bulk(ORG_A, &context, None).await;
    assert_eq!(status(&response), 200);
    assert_eq!(response.headers["cache-control"], "private, no-cache");
    let body = body_json(&response);
    assert!(body.get("metadata").is_none(), "fresh: no set metadata");
    let entries = body["flags"].as_array().unwrap();
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "in key order");
    assert_eq!(keys.len(), 13 + 14, "every live flag, none missing");
    let by_key = |key: &str| entries.iter().find(|e| e["key"] == key).unwrap().clone();
    assert_eq!(by_key("rule")["reason"], "TARGETING_MATCH");
    assert_eq!(by_key("object-flag")["value"], json!({"max": 10, "tags": ["a"]}));
    assert_eq!(by_key("unparsable")["errorCode"], "PARSE_ERROR");
    assert_eq!(by_key("broken-rule")["errorCode"], "GENERAL");
    assert_eq!(by_key("nan-flag")["errorCode"], "PARSE_ERROR");

    // The ETag is a strong, quoted validator of the body.
    let tag = etag_of(&response);
    assert!(tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"), "{tag}");
    let again = world.ofrep_bulk(ORG_A, &context, None).await;
    assert_eq!(etag_of(&again), tag, "same context, same flags: same ETag");
    assert_eq!(body_text(&again), body_text(&response));

    let not_modified = world.ofrep_bulk(ORG_A, &context, Some(&tag)).await;
    assert_eq!(status(&not_modified), 304);
    assert!(keel_tests::body_bytes(&not_modified).is_empty(), "a 304 has no body");
    assert_eq!(etag_of(&not_modified), tag);
    assert_eq!(status(&world.ofrep_bulk(ORG_A, &context, Some("\"stale-tag\"")).await), 200);

    // A different context, or another organization: another body, another ETag.
    let other_context = json!({"context": {"plan": "free"}}).to_string();
    let other = world.ofrep_bulk(ORG_A, &other_context, Some(&tag)).await;
    assert_eq!(status(&other), 200);
    assert_ne!(etag_of(&other), tag);
    assert_ne!(etag_of(&world.ofrep_bulk(ORG_B, &context, Some(&tag)).await), tag);

    // A flag change: once the snapshot refreshes, the old ETag no longer matches.
    world
        .store
        .update("static-on", None, "test-admin", "update", |f| {
            f.description = "edited".into();
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(status(&world.ofrep_bulk(ORG_A, &context, Some(&tag)).await), 304, "before the refresh");
    world.advance(REFRESH_SECONDS);
    let changed = world.ofrep_bulk(ORG_A, &context, Some(&tag)).await;
    assert_eq!(status(&changed), 200, "the version moved");
    let changed_tag = etag_of(&changed);
    assert_ne!(changed_tag, tag);
    assert_eq!(status(&world.ofrep_bulk(ORG_A, &context, Some(&changed_tag)).await), 304);
}

#[tokio::test]
async fn ofrep_accepts_requests_without_a_context() {
    let world = World::new();
    world.create(json!({"key": "a", "default_value": true})).await;
    for body in ["", "{}", r#"{"context": null}"#, r#"{"context": {}, "extra": 1}"#] {
        let (code, answer) = world.ofrep_one(ORG_A, "a", body).await;
        assert_eq!((code, &answer["value"]), (200, &json!(true)), "{body:?}");
        assert_eq!(status(&world.ofrep_bulk(ORG_A, body, None).await), 200, "{body:?}");
    }
}
