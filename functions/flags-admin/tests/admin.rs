//! The feature-flag admin API on the embedded backend: every route, access control, optimistic concurrency,
//! concurrent writers, bad input (422 at the offending field, nothing written), the audit trail, Unleash import,
//! archive, explain and stale flags.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use flags_admin::FlagsAdmin;
use http::Method;
use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::resources::StaticResources;
use keel::route::Api;
use keel::table::Table;
use keel_embedded::EmbeddedDb;
use keel_flags::store::{AuditEntry, FlagStore, flag_subject};
use keel_tests::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

const ADMIN: &str = "operator-1";

struct Admin {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: FlagStore,
    function: Arc<FlagsAdmin>,
    suppressions: keel::suppression::Suppressions,
}

/// One answer: status, JSON body, ETag and the raw response headers.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    etag: Option<String>,
    headers: http::HeaderMap,
}

impl Answer {
    fn pointer(&self) -> &str {
        self.body["pointer"].as_str().unwrap_or("<none>")
    }
}

struct Req {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    roles: Vec<String>,
    claims: bool,
}

fn req(method: Method, path: &str) -> Req {
    Req {
        method,
        path: path.into(),
        query: vec![],
        headers: vec![],
        body: None,
        roles: vec!["platform-admin".into()],
        claims: true,
    }
}

impl Req {
    fn query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn if_match(self, version: u64) -> Self {
        self.header("if-match", &format!("\"{version}\""))
    }
    fn json(mut self, body: Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self
    }
    fn raw(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }
    fn roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|r| r.to_string()).collect();
        self
    }
    fn anonymous(mut self) -> Self {
        self.claims = false;
        self
    }
}

/// The declared route a path takes, as API Gateway picks it (literal segments beat parameters), and its
/// parameters.
type Params = Vec<(String, String)>;

fn resolve(method: &Method, path: &str) -> (String, Params) {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, String, Params)> = None;
    for route in FlagsAdmin::ROUTES.iter().map(|route| route.route_key()) {
        let (m, pattern) = route.split_once(' ').unwrap();
        let parts: Vec<&str> = pattern.split('/').collect();
        if m != method.as_str() || parts.len() != segments.len() {
            continue;
        }
        let mut params = vec![];
        let mut literal = 0;
        let matched = parts.iter().zip(&segments).all(|(p, s)| {
            if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                params.push((name.to_string(), s.to_string()));
                !s.is_empty()
            } else {
                literal += 1;
                p == s
            }
        });
        if matched && best.as_ref().is_none_or(|(l, _, _)| literal > *l) {
            best = Some((literal, route.clone(), params));
        }
    }
    match best {
        Some((_, route, params)) => (route.to_string(), params),
        None => ("$default".into(), vec![]),
    }
}

impl Admin {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::new("2026-03-01T12:00:00Z".parse().unwrap()));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let table: Arc<dyn Table> = Arc::new(db.table("FlagsTable", dyn_clock.clone()));
        let directory: Arc<dyn Table> = Arc::new(db.table("DirectoryTable", dyn_clock.clone()));
        let resources = StaticResources::new(dyn_clock.clone())
            .with_table("FLAGS_TABLE", table.clone())
            .with_table(keel::idempotency::TABLE_VAR, Arc::new(db.table("IdempotencyTable", dyn_clock.clone())))
            .with_table(keel::ratelimit::TABLE_VAR, Arc::new(db.table("RateLimitsTable", dyn_clock.clone())))
            .with_table(keel::suppression::TABLE_VAR, directory.clone());
        let env = Env::from_pairs([(keel::suppression::KEY_VAR, keel::testing::GDPR_HASH_KEY)]);
        let function = Arc::new(flags_admin::build(&env, &resources).unwrap());
        let suppressions =
            keel::suppression::Suppressions::new(directory, keel::testing::GDPR_HASH_KEY.into()).unwrap();
        Self { _dir: dir, clock, store: FlagStore::new(table, dyn_clock), function, suppressions }
    }

    async fn send(&self, r: Req) -> Answer {
        let (route, params) = resolve(&r.method, &r.path);
        let mut request = api_request(r.method, &route, &r.path);
        for (name, value) in params {
            request.path_parameters.insert(name, value);
        }
        let query: std::collections::HashMap<String, String> = r.query.into_iter().collect();
        request.query_string_parameters = query.into();
        for (name, value) in r.headers {
            request
                .headers
                .insert(http::HeaderName::try_from(name).unwrap(), http::HeaderValue::from_str(&value).unwrap());
        }
        if let Some(body) = r.body {
            set_body(&mut request, &body);
        }
        if r.claims {
            let roles: Vec<&str> = r.roles.iter().map(String::as_str).collect();
            request = with_claims(request, ADMIN, "org-platform", &roles);
        }
        let response = self.function.call(request, invocation(self.clock.as_ref())).await;
        let etag = response.headers.get("etag").map(|v| v.to_str().unwrap().to_string());
        Answer { status: response.status_code as u16, body: body_json(&response), etag, headers: response.headers }
    }

    async fn create(&self, flag: Value) -> Answer {
        let answer = self.send(req(Method::POST, "/v1/admin/flags").json(flag)).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer
    }

    /// Every flag's version and the number of audit entries: what a refused request must leave as it was.
    async fn state(&self) -> (BTreeMap<String, u64>, usize, Option<String>) {
        let versions = self.store.flags().await.unwrap().into_iter().map(|f| (f.key, f.version)).collect();
        (versions, self.audit(None).await.len(), self.store.revision().await.unwrap())
    }

    /// The whole audit trail (or one subject's), newest first.
    async fn audit(&self, subject: Option<&str>) -> Vec<AuditEntry> {
        let mut all = vec![];
        let mut after = None;
        loop {
            let (entries, next) = self.store.audit(subject, after, 100).await.unwrap();
            all.extend(entries);
            match next {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    }
}

fn flag(key: &str) -> Value {
    json!({ "key": key, "description": format!("flag {key}") })
}

fn rule(id: &str) -> Value {
    json!({ "id": id, "constraints": [{ "field": "plan", "operator": "IN", "values": ["pro"] }] })
}

#[tokio::test]
async fn create_read_list_and_replace() {
    let admin = Admin::new();
    let created = admin.create(json!({ "key": "checkout", "version": 42, "updated_by": "forged" })).await;
    assert_eq!(created.etag.as_deref(), Some("\"1\""));
    assert_eq!(created.headers["location"], "/v1/admin/flags/checkout");
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["updated_by"], ADMIN);

    let read = admin.send(req(Method::GET, "/v1/admin/flags/checkout")).await;
    assert_eq!((read.status, read.etag.as_deref()), (200, Some("\"1\"")));
    assert_eq!(read.body["key"], "checkout");
    assert_eq!(admin.send(req(Method::GET, "/v1/admin/flags/nope")).await.status, 404);

    let duplicate = admin.send(req(Method::POST, "/v1/admin/flags").json(flag("checkout"))).await;
    assert_eq!((duplicate.status, duplicate.body["code"].as_str()), (409, Some("already_exists")));

    let mut replacement = read.body.clone();
    replacement["description"] = json!("replaced");
    replacement["default_value"] = json!(true);
    let replaced = admin.send(req(Method::PUT, "/v1/admin/flags/checkout").if_match(1).json(replacement)).await;
    assert_eq!((replaced.status, replaced.etag.as_deref()), (200, Some("\"2\"")), "{}", replaced.body);
    assert_eq!(replaced.body["description"], "replaced");

    let list = admin.send(req(Method::GET, "/v1/admin/flags")).await;
    assert_eq!(list.status, 200);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["key"], "checkout");
    assert_eq!(items[0]["version"], 2);
    assert_eq!(items[0]["stale"], false);
    assert_eq!(items[0]["stale_reason"], Value::Null);
    assert_eq!(items[0]["last_evaluated_at"], Value::Null);
    assert_eq!(list.body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn only_platform_admins_get_in() {
    let admin = Admin::new();
    admin.create(flag("f")).await;
    let before = admin.state().await;
    let calls = || {
        vec![
            req(Method::GET, "/v1/admin/flags"),
            req(Method::POST, "/v1/admin/flags").json(flag("g")),
            req(Method::GET, "/v1/admin/flags/f"),
            req(Method::PUT, "/v1/admin/flags/f").if_match(1).json(flag("f")),
            req(Method::POST, "/v1/admin/flags/f/rules").json(rule("r")),
            req(Method::PUT, "/v1/admin/flags/f/overrides/org-1")
                .json(json!({"action": {"type": "forced_on"}, "reason": "x"})),
            req(Method::DELETE, "/v1/admin/flags/f/overrides/org-1"),
            req(Method::POST, "/v1/admin/flags/f/archive"),
            req(Method::POST, "/v1/admin/flags/f/explain").json(json!({})),
            req(Method::GET, "/v1/admin/flags/f/audit"),
            req(Method::GET, "/v1/admin/flag-audit"),
            req(Method::GET, "/v1/admin/segments"),
            req(Method::POST, "/v1/admin/flags/import").json(json!({"features": []})),
        ]
    };
    for roles in [&["member"][..], &["admin"], &["member", "admin"], &[]] {
        for call in calls() {
            let path = call.path.clone();
            let answer = admin.send(call.roles(roles)).await;
            assert_eq!((answer.status, answer.body["code"].as_str()), (403, Some("forbidden")), "{roles:?} {path}");
        }
    }
    for call in calls() {
        assert_eq!(admin.send(call.anonymous()).await.status, 401);
    }
    assert_eq!(admin.state().await, before);
}

#[tokio::test]
async fn every_route_reaches_its_handler() {
    // Each one reaches its handler, never the function's own "no such operation".
    let admin = Admin::new();
    for route in FlagsAdmin::ROUTES.iter().map(|route| route.route_key()) {
        let (method, pattern) = route.split_once(' ').unwrap();
        let path = pattern.replace("{key}", "f").replace("{orgId}", "o").replace("{name}", "s");
        let answer = admin.send(req(method.parse().unwrap(), &path).json(json!({}))).await;
        assert_ne!(answer.body["detail"], "no such operation", "{route}: {}", answer.body);
        assert_ne!(answer.status, 405, "{route}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let admin = Admin::new();
    let answer = admin.send(req(Method::GET, "/v1/admin/nothing")).await;
    assert_eq!(answer.status, 404);
    let answer = admin.send(req(Method::PATCH, "/v1/admin/flags/f")).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.headers["allow"], "GET, PUT");
    let answer = admin.send(req(Method::DELETE, "/v1/admin/flags")).await;
    assert_eq!((answer.status, answer.body["code"].as_str()), (405, Some("method_not_allowed")));
}

#[tokio::test]
async fn if_match_is_required_to_replace_and_checked_everywhere() {
    let admin = Admin::new();
    admin.create(flag("f")).await;
    let body = json!({"key": "f", "description": "new"});

    let missing = admin.send(req(Method::PUT, "/v1/admin/flags/f").json(body.clone())).await;
    assert_eq!((missing.status, missing.body["code"].as_str()), (428, Some("precondition_required")));
    assert_eq!(missing.body["title"], "Precondition Required");
    let malformed = admin.send(req(Method::PUT, "/v1/admin/flags/f").header("if-match", "1").json(body.clone())).await;
    assert_eq!(malformed.status, 400);
    let stale = admin.send(req(Method::PUT, "/v1/admin/flags/f").if_match(7).json(body.clone())).await;
    assert_eq!((stale.status, stale.body["code"].as_str()), (412, Some("version_mismatch")));
    assert!(stale.body["detail"].as_str().unwrap().contains("current version is 1"), "{}", stale.body);
    let absent = admin.send(req(Method::PUT, "/v1/admin/flags/g").if_match(1).json(json!({"key": "g"}))).await;
    assert_eq!(absent.status, 404);
    assert_eq!(admin.audit(None).await.len(), 1);

    let ok = admin.send(req(Method::PUT, "/v1/admin/flags/f").if_match(1).json(body.clone())).await;
    assert_eq!((ok.status, ok.etag.as_deref()), (200, Some("\"2\"")));
    let again = admin.send(req(Method::PUT, "/v1/admin/flags/f").if_match(1).json(body)).await;
    assert_eq!(again.status, 412);
    assert!(again.body["detail"].as_str().unwrap().contains("current version is 2"));

    // Optional elsewhere, but honoured when given.
    let stale_rule = admin.send(req(Method::POST, "/v1/admin/flags/f/rules").if_match(1).json(rule("r1"))).await;
    assert_eq!(stale_rule.status, 412);
    let good_rule = admin.send(req(Method::POST, "/v1/admin/flags/f/rules").if_match(2).json(rule("r1"))).await;
    assert_eq!((good_rule.status, good_rule.etag.as_deref()), (201, Some("\"3\"")));
    let stale_override = admin
        .send(
            req(Method::PUT, "/v1/admin/flags/f/overrides/o1")
                .if_match(2)
                .json(json!({"action": {"type": "forced_on"}, "reason": "pilot"})),
        )
        .await;
    assert_eq!(stale_override.status, 412);
    let stale_archive = admin.send(req(Method::POST, "/v1/admin/flags/f/archive").if_match(1)).await;
    assert_eq!(stale_archive.status, 412);
    assert_eq!(admin.store.get("f").await.unwrap().unwrap().version, 3);
}

/// A flag of `value_type` with one variant `v` (payload `kind`/`value`) and a default variant (`default_kind`).
fn typed(value_type: &str, default_kind: &str, default: &str, kind: &str, value: &str) -> Value {
    json!({"key": "n", "value_type": value_type,
        "default_variant": {"name": "d", "payload": {"type": default_kind, "value": default}},
        "variants": [{"name": "v", "payload": {"type": kind, "value": value}}]})
}

/// Each bad input is a 422 whose pointer names the offending field, and the store is exactly as before.
#[tokio::test]
async fn bad_input_is_422_at_the_field_and_writes_nothing() {
    let admin = Admin::new();
    admin.create(json!({"key": "base", "variants": [{"name": "blue"}]})).await;
    admin.create(json!({"key": "child", "prerequisites": [{"flag": "base"}]})).await;
    admin.send(req(Method::POST, "/v1/admin/flags/base/rules").json(rule("r1"))).await;
    admin.send(req(Method::POST, "/v1/admin/flags/base/rules").json(rule("r2"))).await;
    let base = admin.send(req(Method::GET, "/v1/admin/flags/base")).await.body;
    let version = base["version"].as_u64().unwrap();

    let bad_operator = json!({"field": "plan", "operator": "SOUNDS_LIKE", "values": ["x"]});
    let bad_regex = json!({"field": "email", "operator": "REGEX", "values": ["(unclosed"]});
    let mut cycle = base.clone();
    cycle["prerequisites"] = json!([{"flag": "child"}]);
    let cases: Vec<(&str, Req, &str, &str)> = vec![
        (
            "unknown operator in a new flag",
            req(Method::POST, "/v1/admin/flags")
                .json(json!({"key": "n", "rules": [{"id": "a", "constraints": [bad_operator.clone()]}]})),
            "/rules/0/constraints/0/operator",
            "invalid_body",
        ),
        (
            "unknown field",
            req(Method::POST, "/v1/admin/flags").json(json!({"key": "n", "lifecycle": {"typo": 1}})),
            "/lifecycle/typo",
            "invalid_body",
        ),
        (
            "a typed flag without a default variant",
            req(Method::POST, "/v1/admin/flags").json(json!({"key": "n", "value_type": "string"})),
            "/default_variant",
            "validation_failed",
        ),
        (
            "an unknown value type",
            req(Method::POST, "/v1/admin/flags").json(json!({"key": "n", "value_type": "date"})),
            "/value_type",
            "invalid_body",
        ),
        (
            "a string payload on a number flag",
            req(Method::POST, "/v1/admin/flags").json(typed("number", "number", "1", "string", "x")),
            "/variants/0/payload",
            "validation_failed",
        ),
        (
            "a json array on an object flag",
            req(Method::POST, "/v1/admin/flags").json(typed("object", "json", "{}", "json", "[1]")),
            "/variants/0/payload",
            "validation_failed",
        ),
        (
            "a number payload that is not finite",
            req(Method::POST, "/v1/admin/flags").json(typed("number", "number", "0", "number", "1e999")),
            "/variants/0/payload/value",
            "validation_failed",
        ),
        (
            "a default variant of another type",
            req(Method::POST, "/v1/admin/flags").json(typed("string", "number", "0", "string", "x")),
            "/default_variant/payload",
            "validation_failed",
        ),
        (
            "a rule's variant of another type",
            req(Method::POST, "/v1/admin/flags").json({
                let mut flag = typed("string", "string", "", "string", "x");
                flag["rules"] =
                    json!([{"id": "r", "variants": [{"name": "n", "payload": {"type": "number", "value": "1"}}]}]);
                flag
            }),
            "/rules/0/variants/0/payload",
            "validation_failed",
        ),
        (
            "a default variant named like a listed variant with another payload",
            req(Method::POST, "/v1/admin/flags").json({
                let mut flag = typed("string", "string", "off", "string", "on");
                flag["default_variant"]["name"] = json!("v");
                flag
            }),
            "/default_variant/payload",
            "validation_failed",
        ),
        (
            "percentage over 100",
            req(Method::POST, "/v1/admin/flags")
                .json(json!({"key": "n", "rules": [{"id": "a", "rollout": {"percentage": 100.5}}]})),
            "/rules/0/rollout/percentage",
            "validation_failed",
        ),
        (
            "regex that does not compile",
            req(Method::POST, "/v1/admin/flags")
                .json(json!({"key": "n", "rules": [{"id": "a", "constraints": [bad_regex.clone()]}]})),
            "/rules/0/constraints/0/values/0",
            "validation_failed",
        ),
        (
            "prerequisite on a missing flag",
            req(Method::POST, "/v1/admin/flags").json(json!({"key": "n", "prerequisites": [{"flag": "ghost"}]})),
            "/prerequisites/0/flag",
            "validation_failed",
        ),
        (
            "prerequisite cycle",
            req(Method::PUT, "/v1/admin/flags/base").if_match(version).json(cycle),
            "/prerequisites/0/flag",
            "validation_failed",
        ),
        (
            "key differs from the path",
            req(Method::PUT, "/v1/admin/flags/base").if_match(version).json(flag("other")),
            "/key",
            "invalid_body",
        ),
        (
            "unknown operator in an added rule",
            req(Method::POST, "/v1/admin/flags/base/rules").json(json!({"id": "r3", "constraints": [bad_operator]})),
            "/constraints/0/operator",
            "invalid_body",
        ),
        (
            "bad regex in an added rule",
            req(Method::POST, "/v1/admin/flags/base/rules").json(json!({"id": "r3", "constraints": [bad_regex]})),
            "/constraints/0/values/0",
            "validation_failed",
        ),
        (
            "percentage over 100 in an added rule, at a position",
            req(Method::POST, "/v1/admin/flags/base/rules")
                .query("position", "0")
                .json(json!({"id": "r3", "rollout": {"percentage": 250}})),
            "/rollout/percentage",
            "validation_failed",
        ),
        (
            "rule id taken",
            req(Method::POST, "/v1/admin/flags/base/rules").query("position", "0").json(rule("r2")),
            "/id",
            "validation_failed",
        ),
        (
            "position past the end",
            req(Method::POST, "/v1/admin/flags/base/rules").query("position", "3").json(rule("r3")),
            "position",
            "validation_failed",
        ),
        (
            "order that is not a permutation",
            req(Method::PUT, "/v1/admin/flags/base/rules/order").json(json!({"rule_ids": ["r1", "r1"]})),
            "/rule_ids",
            "validation_failed",
        ),
        (
            "override for a missing flag",
            req(Method::PUT, "/v1/admin/flags/ghost/overrides/org-1")
                .json(json!({"action": {"type": "forced_on"}, "reason": "pilot"})),
            "/key",
            "unknown_flag",
        ),
        (
            "override naming a variant the flag lacks",
            req(Method::PUT, "/v1/admin/flags/base/overrides/org-1")
                .json(json!({"action": {"type": "variant", "variant": "green"}, "reason": "pilot"})),
            "/action/variant",
            "validation_failed",
        ),
        (
            "override without a reason",
            req(Method::PUT, "/v1/admin/flags/base/overrides/org-1")
                .json(json!({"action": {"type": "forced_off"}, "reason": " "})),
            "/reason",
            "validation_failed",
        ),
        (
            "override that ends before it starts",
            req(Method::PUT, "/v1/admin/flags/base/overrides/org-1").json(json!({
                "action": {"type": "forced_off"}, "reason": "x",
                "starts_at": "2026-04-01T00:00:00Z", "expires_at": "2026-03-01T00:00:00Z"})),
            "",
            "validation_failed",
        ),
        (
            "override with a timestamp that is not RFC 3339",
            req(Method::PUT, "/v1/admin/flags/base/overrides/org-1")
                .json(json!({"action": {"type": "forced_off"}, "reason": "x", "expires_at": "tomorrow"})),
            "/expires_at",
            "invalid_body",
        ),
        (
            "segment with a bad regex",
            req(Method::PUT, "/v1/admin/segments/beta").json(json!({"name": "beta", "constraints": [
                {"field": "email", "operator": "REGEX", "values": ["[a-"]}]})),
            "/constraints/0/values/0",
            "validation_failed",
        ),
        (
            "segment name differs from the path",
            req(Method::PUT, "/v1/admin/segments/beta").json(json!({"name": "alpha", "constraints": []})),
            "/name",
            "invalid_body",
        ),
        ("limit out of range", req(Method::GET, "/v1/admin/flags").query("limit", "101"), "limit", "invalid_parameter"),
        (
            "cursor not ours",
            req(Method::GET, "/v1/admin/flag-audit").query("cursor", "!!"),
            "cursor",
            "invalid_parameter",
        ),
        (
            "explain at a time that is not RFC 3339",
            req(Method::POST, "/v1/admin/flags/base/explain").json(json!({"at": "noon"})),
            "/at",
            "invalid_body",
        ),
    ];
    for (name, call, pointer, code) in cases {
        let before = admin.state().await;
        let answer = admin.send(call).await;
        assert_eq!(answer.status, 422, "{name}: {}", answer.body);
        assert_eq!(answer.pointer(), pointer, "{name}: {}", answer.body);
        assert_eq!(answer.body["code"], code, "{name}: {}", answer.body);
        assert_eq!(answer.body["errors"][0]["pointer"], pointer, "{name}: {}", answer.body);
        assert_eq!(answer.headers["content-type"], "application/problem+json");
        assert_eq!(admin.state().await, before, "{name} wrote something");
    }

    // Every problem is listed, the first in `pointer`.
    let answer = admin
        .send(req(Method::POST, "/v1/admin/flags").json(json!({"key": "n", "rules": [
            {"id": "a", "rollout": {"percentage": 101}},
            {"id": "a", "constraints": [{"field": "n", "operator": "NUM_EQ", "values": ["ten"]}]}]})))
        .await;
    assert_eq!(answer.status, 422);
    let pointers: Vec<&str> =
        answer.body["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, ["/rules/0/rollout/percentage", "/rules/1/id", "/rules/1/constraints/0/values/0"]);
    assert_eq!(answer.pointer(), "/rules/0/rollout/percentage");

    // Not JSON at all: 400.
    let answer = admin.send(req(Method::POST, "/v1/admin/flags").raw(b"{not json".to_vec())).await;
    assert_eq!((answer.status, answer.body["code"].as_str()), (400, Some("malformed_json")));
}

#[tokio::test]
async fn bodies_over_their_cap_are_413() {
    let admin = Admin::new();
    let big = format!(r#"{{"key": "k", "description": "{}"}}"#, "x".repeat(256 * 1024));
    let answer = admin.send(req(Method::POST, "/v1/admin/flags").raw(big.into_bytes())).await;
    assert_eq!((answer.status, answer.body["code"].as_str()), (413, Some("body_too_large")));
    // An import may be larger, up to 1 MiB.
    let padded = format!(r#"{{"version": 1, "features": [], "padding": "{}"}}"#, "x".repeat(512 * 1024));
    let answer = admin.send(req(Method::POST, "/v1/admin/flags/import").raw(padded.into_bytes())).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let huge = format!(r#"{{"version": 1, "features": [], "padding": "{}"}}"#, "x".repeat(1024 * 1024));
    let answer = admin.send(req(Method::POST, "/v1/admin/flags/import").raw(huge.into_bytes())).await;
    assert_eq!(answer.status, 413);
    assert_eq!(admin.state().await.1, 0);
}

#[tokio::test]
async fn rules_are_added_in_place_and_reordered() {
    let admin = Admin::new();
    admin.create(flag("f")).await;
    let add = |r: Value| req(Method::POST, "/v1/admin/flags/f/rules").json(r);
    assert_eq!(admin.send(add(rule("a"))).await.status, 201);
    assert_eq!(admin.send(add(rule("c"))).await.status, 201);
    let answer = admin.send(add(rule("b")).query("position", "1")).await;
    assert_eq!((answer.status, answer.etag.as_deref()), (201, Some("\"4\"")));
    let ids = |body: &Value| -> Vec<String> {
        body["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&answer.body), ["a", "b", "c"]);
    let answer = admin.send(add(rule("first")).query("position", "0")).await;
    assert_eq!(ids(&answer.body), ["first", "a", "b", "c"]);

    let reorder = req(Method::PUT, "/v1/admin/flags/f/rules/order").json(json!({"rule_ids": ["c", "b", "a", "first"]}));
    let answer = admin.send(reorder).await;
    assert_eq!((answer.status, answer.etag.as_deref()), (200, Some("\"6\"")));
    assert_eq!(ids(&answer.body), ["c", "b", "a", "first"]);
    let missing_one = req(Method::PUT, "/v1/admin/flags/f/rules/order").json(json!({"rule_ids": ["c", "b", "a"]}));
    assert_eq!(admin.send(missing_one).await.status, 422);
    let unknown_flag = req(Method::POST, "/v1/admin/flags/nope/rules").json(rule("x"));
    assert_eq!(admin.send(unknown_flag).await.status, 404);

    let actions: Vec<String> = admin.audit(Some(&flag_subject("f"))).await.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["reorder_rules", "add_rule", "add_rule", "add_rule", "add_rule", "create"]);
}

#[tokio::test]
async fn overrides_are_set_replaced_and_cleared() {
    let admin = Admin::new();
    admin.create(json!({"key": "f", "variants": [{"name": "blue"}, {"name": "green"}]})).await;
    let set = |body: Value| req(Method::PUT, "/v1/admin/flags/f/overrides/org-7").json(body);

    let answer = admin
        .send(set(json!({"action": {"type": "forced_on"}, "reason": "pilot", "expires_at": "2026-04-01T00:00:00Z"})))
        .await;
    assert_eq!((answer.status, answer.etag.as_deref()), (201, Some("\"2\"")), "{}", answer.body);
    assert_eq!(
        answer.body["overrides"],
        json!([{"org_id": "org-7", "action": {"type": "forced_on"}, "reason": "pilot", "starts_at": null,
            "expires_at": "2026-04-01T00:00:00Z", "created_by": ADMIN}])
    );
    let answer = admin.send(set(json!({"action": {"type": "variant", "variant": "green"}, "reason": "demo"}))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["overrides"].as_array().unwrap().len(), 1);
    assert_eq!(answer.body["overrides"][0]["action"], json!({"type": "variant", "variant": "green"}));

    let explained =
        admin.send(req(Method::POST, "/v1/admin/flags/f/explain").json(json!({"organization_id": "org-7"}))).await;
    assert_eq!(explained.body["evaluation"]["variant"], "green");
    assert_eq!(explained.body["evaluation"]["reason"], "override");

    let clear = || req(Method::DELETE, "/v1/admin/flags/f/overrides/org-7");
    let answer = admin.send(clear()).await;
    assert_eq!((answer.status, answer.etag.as_deref()), (200, Some("\"4\"")));
    assert_eq!(answer.body["overrides"], json!([]));
    let answer = admin.send(clear()).await;
    assert_eq!(answer.status, 404);
    let answer = admin.send(req(Method::DELETE, "/v1/admin/flags/ghost/overrides/org-7")).await;
    assert_eq!((answer.status, answer.pointer()), (422, "/key"));
    assert_eq!(admin.store.get("f").await.unwrap().unwrap().version, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_override_sets_without_if_match_all_land() {
    let admin = Arc::new(Admin::new());
    admin.create(flag("f")).await;
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let admin = admin.clone();
            tokio::spawn(async move {
                let body = json!({"action": {"type": "forced_on"}, "reason": format!("customer {n}")});
                admin.send(req(Method::PUT, &format!("/v1/admin/flags/f/overrides/org-{n}")).json(body)).await
            })
        })
        .collect();
    for answer in futures::future::join_all(tasks).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let stored = admin.store.get("f").await.unwrap().unwrap();
    assert_eq!(stored.version, 11);
    let mut orgs: Vec<String> = stored.overrides.iter().map(|o| o.org_id.clone()).collect();
    orgs.sort();
    assert_eq!(orgs, (0..10).map(|n| format!("org-{n}")).collect::<Vec<_>>());
    let entries = admin.audit(Some(&flag_subject("f"))).await;
    assert_eq!(entries.iter().filter(|e| e.action == "set_override").count(), 10);
    // Each entry's before is the version the one after it wrote: no lost update.
    let versions: Vec<u64> =
        entries.iter().rev().map(|e| e.after.as_ref().unwrap()["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, (1..=11).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replaces_with_one_if_match_let_exactly_one_through() {
    let admin = Arc::new(Admin::new());
    admin.create(flag("f")).await;
    let tasks: Vec<_> = (0..5)
        .map(|n| {
            let admin = admin.clone();
            tokio::spawn(async move {
                let body = json!({"key": "f", "description": format!("writer {n}")});
                admin.send(req(Method::PUT, "/v1/admin/flags/f").if_match(1).json(body)).await
            })
        })
        .collect();
    let mut statuses: Vec<u16> =
        futures::future::join_all(tasks).await.into_iter().map(|a| a.unwrap().status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 412, 412, 412, 412]);
    assert_eq!(admin.store.get("f").await.unwrap().unwrap().version, 2);
    assert_eq!(admin.audit(Some(&flag_subject("f"))).await.len(), 2);
}

#[tokio::test]
async fn every_change_is_audited_with_actor_action_before_and_after() {
    let admin = Admin::new();
    admin.create(flag("a")).await;
    admin.clock.advance(Duration::seconds(1));
    admin.send(req(Method::POST, "/v1/admin/flags/a/rules").json(rule("r"))).await;
    admin
        .send(
            req(Method::PUT, "/v1/admin/flags/a/overrides/o1")
                .json(json!({"action": {"type": "forced_off"}, "reason": "x"})),
        )
        .await;
    admin.send(req(Method::DELETE, "/v1/admin/flags/a/overrides/o1")).await;
    admin.send(req(Method::PUT, "/v1/admin/flags/a").if_match(4).json(json!({"key": "a", "enabled": false}))).await;
    admin.create(flag("b")).await;
    admin.send(req(Method::POST, "/v1/admin/flags/b/archive")).await;
    admin.send(req(Method::PUT, "/v1/admin/segments/s").json(json!({"name": "s", "constraints": []}))).await;

    let all = admin.audit(None).await;
    let actions: Vec<(&str, &str)> = all.iter().map(|e| (e.subject.as_str(), e.action.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("segment:s", "put_segment"),
            ("flag:b", "archive"),
            ("flag:b", "create"),
            ("flag:a", "update"),
            ("flag:a", "clear_override"),
            ("flag:a", "set_override"),
            ("flag:a", "add_rule"),
            ("flag:a", "create"),
        ]
    );
    assert!(all.iter().all(|e| e.actor == ADMIN));
    let create = &all[7];
    assert_eq!(create.before, None);
    assert_eq!(create.after.as_ref().unwrap()["version"], 1);
    assert_eq!(create.at, "2026-03-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap());
    let update = &all[3];
    assert_eq!(update.before.as_ref().unwrap()["enabled"], true);
    assert_eq!(update.before.as_ref().unwrap()["rules"][0]["id"], "r");
    assert_eq!(update.after.as_ref().unwrap()["enabled"], false);
    assert_eq!(update.after.as_ref().unwrap()["rules"], json!([]));
    assert_eq!(update.at, "2026-03-01T12:00:01Z".parse::<DateTime<Utc>>().unwrap());
    let archive = &all[1];
    assert_eq!(archive.before.as_ref().unwrap()["archived"], false);
    assert_eq!(archive.after.as_ref().unwrap()["archived"], true);

    // Through the API: newest first, paged with opaque cursors.
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let mut call = req(Method::GET, "/v1/admin/flag-audit").query("limit", "3");
        if let Some(cursor) = &cursor {
            call = call.query("cursor", cursor);
        }
        let page = admin.send(call).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, all.iter().map(|e| e.id.clone()).collect::<Vec<_>>());

    let per_flag = admin.send(req(Method::GET, "/v1/admin/flags/a/audit").query("limit", "2")).await;
    let items = per_flag.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["action"], "update");
    assert_eq!(items[0]["actor"], ADMIN);
    assert_eq!(items[0]["subject"], "flag:a");
    let next = per_flag.body["next_cursor"].as_str().unwrap();
    let rest = admin.send(req(Method::GET, "/v1/admin/flags/a/audit").query("cursor", next)).await;
    let actions: Vec<&str> =
        rest.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["set_override", "add_rule", "create"]);
    assert_eq!(admin.send(req(Method::GET, "/v1/admin/flags/zzz/audit")).await.status, 404);
}

fn unleash_document(rollout: u32) -> Value {
    json!({
        "version": 2,
        "features": [
            {"name": "new-checkout", "type": "release", "enabled": true, "stale": true, "strategies": [
                {"name": "flexibleRollout", "id": "s1", "parameters": {"rollout": rollout.to_string(), "stickiness": "userId", "groupId": "new-checkout"},
                 "constraints": [{"contextName": "appName", "operator": "IN", "values": ["web"]}],
                 "segments": [1]}]},
            {"name": "beta-banner", "type": "experiment", "enabled": false, "strategies": [],
             "variants": [{"name": "a", "weight": 500}, {"name": "b", "weight": 500}]},
            {"name": "needs-checkout", "enabled": true, "strategies": [{"name": "default"}],
             "dependencies": [{"feature": "new-checkout"}]}
        ],
        "segments": [{"id": 1, "name": "internal", "constraints": [
            {"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]}]}]
    })
}

#[tokio::test]
async fn unleash_documents_import_then_reimport_unchanged_then_update() {
    let admin = Admin::new();
    let import = |doc: Value| req(Method::POST, "/v1/admin/flags/import").json(doc);
    let answer = admin.send(import(unleash_document(25))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"mode": "lenient", "dry_run": false, "accepted": true,
            "created": ["new-checkout", "beta-banner", "needs-checkout"], "updated": [], "unchanged": [],
            "segments_written": ["unleash-segment-1"], "refused": [], "warnings": []})
    );
    let stored = admin.store.get("new-checkout").await.unwrap().unwrap();
    assert_eq!(stored.rules[0].rollout.as_ref().unwrap().percentage, 25.0);
    assert_eq!(stored.lifecycle.stale_after, Some(admin.clock.now()));
    assert_eq!(stored.updated_by, ADMIN);
    // Keel-side changes survive a re-import.
    admin
        .send(
            req(Method::PUT, "/v1/admin/flags/new-checkout/overrides/org-1")
                .json(json!({"action": {"type": "forced_on"}, "reason": "early access"})),
        )
        .await;

    // Later, the same document: nothing to write.
    admin.clock.advance(Duration::days(2));
    let before = admin.state().await;
    let answer = admin.send(import(unleash_document(25))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["created"], json!([]));
    assert_eq!(answer.body["updated"], json!([]));
    assert_eq!(answer.body["unchanged"], json!(["new-checkout", "beta-banner", "needs-checkout"]));
    assert_eq!(answer.body["segments_written"], json!([]));
    assert_eq!(admin.state().await, before);

    // A changed rollout updates that flag only.
    let answer = admin.send(import(unleash_document(60))).await;
    assert_eq!(answer.body["updated"], json!(["new-checkout"]));
    assert_eq!(answer.body["unchanged"], json!(["beta-banner", "needs-checkout"]));
    let stored = admin.store.get("new-checkout").await.unwrap().unwrap();
    assert_eq!(stored.rules[0].rollout.as_ref().unwrap().percentage, 60.0);
    assert_eq!(stored.overrides.len(), 1, "the import kept the override");
    let last = &admin.audit(Some(&flag_subject("new-checkout"))).await[0];
    assert_eq!((last.action.as_str(), last.actor.as_str()), ("import", ADMIN));

    // The delta format is read too.
    let delta = json!({"events": [
        {"type": "hydration", "eventId": 1, "features": [{"name": "from-delta", "enabled": true, "strategies": []}], "segments": []},
        {"type": "feature-updated", "eventId": 2, "feature": {"name": "from-delta-2", "enabled": false}}
    ]});
    let answer = admin.send(import(delta)).await;
    assert_eq!(answer.body["created"], json!(["from-delta", "from-delta-2"]), "{}", answer.body);
}

/// A document with what Keel does not support as such: a hostname strategy, an unknown operator, a dependency on a
/// missing feature and a dependency cycle.
fn messy_document() -> Value {
    let mut doc = unleash_document(25);
    doc["features"][1]["strategies"] = json!([{"name": "applicationHostname", "parameters": {"hostNames": "a"}}]);
    doc["features"][2]["strategies"][0]["constraints"] =
        json!([{"contextName": "x", "operator": "SOUNDS_LIKE", "values": ["y"]}]);
    let features = doc["features"].as_array_mut().unwrap();
    features.push(json!({"name": "orphan", "enabled": true, "strategies": [],
        "dependencies": [{"feature": "not-in-the-document"}]}));
    features.push(json!({"name": "ping", "enabled": true, "strategies": [], "dependencies": [{"feature": "pong"}]}));
    features.push(json!({"name": "pong", "enabled": true, "strategies": [], "dependencies": [{"feature": "ping"}]}));
    doc
}

const MESSY_SOURCES: [&str; 5] = [
    "/features/1/strategies/0/name",
    "/features/2/strategies/0/constraints/0/operator",
    "/features/3/dependencies/0/flag",
    "/features/4/dependencies/0/flag",
    "/features/5/dependencies/0/flag",
];

#[tokio::test]
async fn a_strict_import_with_anything_lost_is_refused_whole() {
    let admin = Admin::new();
    let strict = || req(Method::POST, "/v1/admin/flags/import").query("mode", "strict");
    let answer = admin.send(strict().json(messy_document())).await;
    assert_eq!((answer.status, answer.body["code"].as_str()), (422, Some("invalid_import")), "{}", answer.body);
    let pointers: Vec<&str> =
        answer.body["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, MESSY_SOURCES);
    assert_eq!(answer.pointer(), "/features/1/strategies/0/name");
    assert!(admin.store.flags().await.unwrap().is_empty());
    assert!(admin.store.segments().await.unwrap().is_empty());
    assert_eq!(admin.state().await.1, 0);

    // A strict dry run says the same, as a report.
    let answer = admin.send(strict().query("dry_run", "true").json(messy_document())).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!((answer.body["accepted"].as_bool(), answer.body["mode"].as_str()), (Some(false), Some("strict")));
    let refused: Vec<&str> =
        answer.body["refused"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(refused, MESSY_SOURCES);
    assert_eq!(admin.state().await.1, 0);

    let answer =
        admin.send(req(Method::POST, "/v1/admin/flags/import").json(json!({"features": [{"enabled": true}]}))).await;
    assert_eq!((answer.status, answer.pointer()), (422, "/features/0/name"), "{}", answer.body);
    for (name, value) in [("mode", "loose"), ("dry_run", "yes")] {
        let answer =
            admin.send(req(Method::POST, "/v1/admin/flags/import").query(name, value).json(unleash_document(25))).await;
        assert_eq!((answer.status, answer.pointer()), (422, name), "{}", answer.body);
    }
}

#[tokio::test]
async fn a_lenient_import_carries_everything_over_with_warnings_on_the_flags() {
    let admin = Admin::new();
    let import = || req(Method::POST, "/v1/admin/flags/import");

    // The dry run reports exactly what the import then does, and writes nothing.
    let dry = admin.send(import().query("dry_run", "true").json(messy_document())).await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(admin.state().await.1, 0, "a dry run writes nothing");
    let answer = admin.send(import().json(messy_document())).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    for field in ["created", "updated", "unchanged", "refused", "warnings", "segments_written", "accepted"] {
        assert_eq!(dry.body[field], answer.body[field], "{field}");
    }
    assert_eq!(dry.body["dry_run"], true);
    assert_eq!(answer.body["dry_run"], false);
    assert_eq!(
        answer.body["created"],
        json!(["new-checkout", "beta-banner", "needs-checkout", "orphan", "ping", "pong"])
    );
    let warnings = answer.body["warnings"].as_array().unwrap();
    let sources: Vec<&str> = warnings.iter().map(|w| w["source"].as_str().unwrap()).collect();
    assert_eq!(sources, MESSY_SOURCES);
    let flags: Vec<&str> = warnings.iter().map(|w| w["flag"].as_str().unwrap()).collect();
    assert_eq!(flags, ["beta-banner", "needs-checkout", "orphan", "ping", "pong"]);

    // Each flag keeps its warnings, pointing into the flag, and the admin API returns them.
    let flag = admin.send(req(Method::GET, "/v1/admin/flags/beta-banner")).await;
    assert_eq!(flag.body["rules"][0]["disabled"], true, "{}", flag.body);
    assert_eq!(flag.body["warnings"][0]["pointer"], "/rules/0");
    assert_eq!(flag.body["warnings"][0]["source"], "/features/1/strategies/0/name");
    assert!(flag.body["warnings"][0]["message"].as_str().unwrap().contains("applicationHostname"));
    let orphan = admin.store.get("orphan").await.unwrap().unwrap();
    assert_eq!(orphan.warnings[0].pointer, "/prerequisites/0/flag");

    // They evaluate as Unleash does: the never-matching strategy, the missing parent and the cycle leave them off.
    let explain =
        |key: &str| req(Method::POST, &format!("/v1/admin/flags/{key}/explain")).json(json!({"user_id": "u"}));
    for key in ["needs-checkout", "orphan", "ping", "pong"] {
        let answer = admin.send(explain(key)).await;
        assert_eq!(answer.body["evaluation"]["value"], false, "{key}: {}", answer.body);
    }
    let beta = admin.send(explain("beta-banner")).await;
    assert_eq!(beta.body["evaluation"]["reason"], "killed");

    // The same document again changes nothing; a strict import of it is still refused.
    let again = admin.send(import().json(messy_document())).await;
    assert_eq!(again.body["unchanged"].as_array().unwrap().len(), 6, "{}", again.body);
    assert_eq!(admin.send(import().query("mode", "strict").json(messy_document())).await.status, 422);
}

#[tokio::test]
async fn a_lenient_import_refuses_only_the_flags_that_cannot_be_stored() {
    let admin = Admin::new();
    let doc = json!({"features": [
        {"name": "fine", "enabled": true, "strategies": []},
        {"name": "has space", "enabled": true, "strategies": []},
        {"name": "heavy", "enabled": true, "strategies": [], "variants": [{"name": "a", "weight": 5000}]},
    ]});
    let answer = admin.send(req(Method::POST, "/v1/admin/flags/import").json(doc)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["created"], json!(["fine"]));
    let refused: Vec<(&str, &str)> = answer.body["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["flag"].as_str().unwrap(), e["pointer"].as_str().unwrap()))
        .collect();
    assert_eq!(refused, [("has space", "/flags/1/key"), ("heavy", "/flags/2/variants/0/weight")]);
    assert!(admin.store.get("heavy").await.unwrap().is_none());
}

#[tokio::test]
async fn archive_waits_for_dependents_and_is_idempotent() {
    let admin = Admin::new();
    admin.create(flag("parent")).await;
    admin.create(json!({"key": "child", "prerequisites": [{"flag": "parent"}]})).await;

    let refused = admin.send(req(Method::POST, "/v1/admin/flags/parent/archive")).await;
    assert_eq!((refused.status, refused.body["code"].as_str()), (409, Some("flag_has_dependents")));
    assert!(refused.body["detail"].as_str().unwrap().contains("child"));
    assert_eq!(admin.store.get("parent").await.unwrap().unwrap().version, 1);

    let child = admin.send(req(Method::POST, "/v1/admin/flags/child/archive")).await;
    assert_eq!((child.status, child.etag.as_deref()), (200, Some("\"2\"")));
    assert_eq!(child.body["archived"], true);
    let parent = admin.send(req(Method::POST, "/v1/admin/flags/parent/archive")).await;
    assert_eq!((parent.status, parent.etag.as_deref()), (200, Some("\"2\"")));
    let again = admin.send(req(Method::POST, "/v1/admin/flags/parent/archive")).await;
    assert_eq!((again.status, again.etag.as_deref()), (200, Some("\"2\"")));
    assert_eq!(admin.audit(Some(&flag_subject("parent"))).await.len(), 2);
    assert_eq!(admin.send(req(Method::POST, "/v1/admin/flags/ghost/archive")).await.status, 404);

    let live = admin.send(req(Method::GET, "/v1/admin/flags")).await;
    assert_eq!(live.body["items"], json!([]));
    let archived = admin.send(req(Method::GET, "/v1/admin/flags").query("archived", "true")).await;
    let keys: Vec<&str> =
        archived.body["items"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["child", "parent"]);
    // An archived key is still taken.
    let answer = admin.send(req(Method::POST, "/v1/admin/flags").json(flag("parent"))).await;
    assert_eq!(answer.status, 409);
}

#[tokio::test]
async fn explain_lists_the_steps_in_order() {
    let admin = Admin::new();
    admin
        .create(json!({"key": "f", "environments": ["prod"], "block_orgs": ["bad-org"], "rules": [
            {"id": "later", "starts_at": "2027-01-01T00:00:00Z", "constraints": []},
            {"id": "pro", "constraints": [{"field": "plan", "operator": "IN", "values": ["pro"]}]},
            {"id": "everyone", "constraints": [], "rollout": {"percentage": 100}}]}))
        .await;
    let explain = |body: Value| req(Method::POST, "/v1/admin/flags/f/explain").json(body);

    let answer = admin
        .send(explain(json!({"organization_id": "org-1", "environment": "prod", "attributes": {"plan": "pro"}})))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body["evaluation"],
        json!({"value": true, "value_type": "boolean", "enabled": true, "variant": "on", "reason": "rule",
            "open_feature_reason": "TARGETING_MATCH", "rule_id": "pro", "version": 1, "error_code": null})
    );
    let stages: Vec<(&str, bool)> = answer.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["decided"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [("flag", false), ("kill_switch", false), ("environment", false), ("rule", false), ("rule", true)]
    );
    assert!(answer.body["steps"][3]["detail"].as_str().unwrap().contains("not in force"));

    // At a later instant the scheduled rule decides first.
    let answer = admin.send(explain(json!({"environment": "prod", "at": "2027-06-01T00:00:00Z"}))).await;
    assert_eq!(answer.body["evaluation"]["rule_id"], "later");

    let answer = admin.send(explain(json!({"organization_id": "bad-org", "environment": "prod"}))).await;
    assert_eq!(answer.body["evaluation"]["reason"], "blocked");
    assert_eq!(answer.body["steps"].as_array().unwrap().last().unwrap()["stage"], "block_list");

    let answer = admin.send(explain(json!({"environment": "dev"}))).await;
    assert_eq!(answer.body["evaluation"]["open_feature_reason"], "DISABLED");

    // No body: an empty context.
    let answer = admin.send(req(Method::POST, "/v1/admin/flags/f/explain")).await;
    assert_eq!(answer.body["evaluation"]["reason"], "environment_off");
    let answer = admin.send(req(Method::POST, "/v1/admin/flags/ghost/explain").json(json!({}))).await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn stale_flags_are_listed_with_their_reason() {
    let admin = Admin::new();
    let now = admin.clock.now();
    let past = (now - Duration::days(1)).to_rfc3339();
    let future = (now + Duration::days(1)).to_rfc3339();
    admin.create(json!({"key": "expired", "lifecycle": {"stale_after": past}})).await;
    admin
        .create(json!({"key": "forever", "lifecycle": {"type": "permission", "stale_after": past, "permanent": true}}))
        .await;
    admin.create(json!({"key": "fresh", "lifecycle": {"stale_after": future}})).await;
    admin.create(json!({"key": "used", "lifecycle": {"type": "operational"}})).await;
    admin.create(json!({"key": "unused"})).await;

    admin.clock.advance(Duration::days(UNUSED_DAYS_PLUS));
    let seen = BTreeMap::from([("used".to_string(), admin.clock.now() - Duration::days(2))]);
    admin.store.record_usage(&seen).await.unwrap();

    let list = admin.send(req(Method::GET, "/v1/admin/flags").query("stale", "true")).await;
    let stale: Vec<(&str, &str)> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["key"].as_str().unwrap(), f["stale_reason"].as_str().unwrap()))
        .collect();
    // `fresh` passed its stale_after during the month too.
    assert_eq!(stale, [("expired", "past_stale_after"), ("fresh", "past_stale_after"), ("unused", "not_evaluated")]);

    let all = admin.send(req(Method::GET, "/v1/admin/flags")).await;
    let by_key: BTreeMap<&str, &Value> =
        all.body["items"].as_array().unwrap().iter().map(|f| (f["key"].as_str().unwrap(), f)).collect();
    assert_eq!(by_key["forever"]["stale"], false);
    assert_eq!(by_key["used"]["stale"], false);
    assert_eq!(
        by_key["used"]["last_evaluated_at"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(),
        admin.clock.now() - Duration::days(2)
    );
    let fresh = admin.send(req(Method::GET, "/v1/admin/flags").query("stale", "false")).await;
    assert_eq!(fresh.body["items"].as_array().unwrap().len(), 2);
}

const UNUSED_DAYS_PLUS: i64 = flags_admin::UNUSED_DAYS + 1;

#[tokio::test]
async fn the_list_filters_and_pages() {
    let admin = Admin::new();
    for n in 0..7 {
        admin.create(json!({"key": format!("team-a.{n}"), "lifecycle": {"type": "experiment"}})).await;
    }
    admin.create(json!({"key": "team-b.0", "lifecycle": {"type": "kill-switch"}})).await;

    let mut keys = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let mut call = req(Method::GET, "/v1/admin/flags").query("prefix", "team-a.").query("limit", "3");
        if let Some(cursor) = &cursor {
            call = call.query("cursor", cursor);
        }
        let page = admin.send(call).await;
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        keys.extend(items.iter().map(|f| f["key"].as_str().unwrap().to_string()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.into()),
            None => break,
        }
    }
    assert_eq!(keys, (0..7).map(|n| format!("team-a.{n}")).collect::<Vec<_>>());

    let kill = admin.send(req(Method::GET, "/v1/admin/flags").query("type", "kill-switch")).await;
    assert_eq!(kill.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(kill.body["items"][0]["key"], "team-b.0");
    let bad = admin.send(req(Method::GET, "/v1/admin/flags").query("type", "chore")).await;
    assert_eq!((bad.status, bad.pointer()), (422, "type"));
    let bad = admin.send(req(Method::GET, "/v1/admin/flags").query("archived", "maybe")).await;
    assert_eq!((bad.status, bad.pointer()), (422, "archived"));
}

#[tokio::test]
async fn segments_are_created_replaced_and_listed() {
    let admin = Admin::new();
    let body = |description: &str| {
        json!({"name": "internal", "description": description, "constraints": [
            {"field": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]}]})
    };
    let put = || req(Method::PUT, "/v1/admin/segments/internal");
    let created = admin.send(put().json(body("staff"))).await;
    assert_eq!((created.status, created.etag.as_deref()), (201, Some("\"1\"")), "{}", created.body);
    let replaced = admin.send(put().if_match(1).json(body("staff and contractors"))).await;
    assert_eq!((replaced.status, replaced.etag.as_deref()), (200, Some("\"2\"")));
    let stale = admin.send(put().if_match(1).json(body("lost"))).await;
    assert_eq!(stale.status, 412);
    assert!(stale.body["detail"].as_str().unwrap().contains("current version is 2"), "{}", stale.body);
    let unconditional = admin.send(put().json(body("any"))).await;
    assert_eq!((unconditional.status, unconditional.etag.as_deref()), (200, Some("\"3\"")));

    let list = admin.send(req(Method::GET, "/v1/admin/segments")).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["items"][0]["description"], "any");
    assert_eq!(list.body["items"][0]["constraints"][0]["operator"], "STR_ENDS_WITH");

    // Rules can use it.
    admin.create(json!({"key": "f", "rules": [{"id": "staff", "segments": ["internal"]}]})).await;
    let answer = admin
        .send(req(Method::POST, "/v1/admin/flags/f/explain").json(json!({"attributes": {"email": "a@example.com"}})))
        .await;
    assert_eq!(answer.body["evaluation"]["rule_id"], "staff");
    let missing = admin
        .send(req(Method::POST, "/v1/admin/flags").json(json!({"key": "g", "rules": [
        {"id": "x", "segments": ["nope"]}]})))
        .await;
    assert_eq!((missing.status, missing.pointer()), (422, "/rules/0/segments/0"));
}

#[tokio::test]
async fn an_erased_user_is_not_put_back_into_a_flag_a_rule_or_a_segment() {
    let admin = Admin::new();
    admin.create(json!({"key": "f", "target_users": ["ann"]})).await;
    admin.suppressions.suppress("zed", "01ERASURE", admin.clock.now()).await.unwrap();
    let before = admin.state().await;
    let in_rule = json!({"id": "z", "constraints": [{"field": "userId", "operator": "IN", "values": ["zed"]}]});
    let attempts = [
        req(Method::POST, "/v1/admin/flags").json(json!({"key": "g", "target_users": ["ann", "zed"]})),
        req(Method::POST, "/v1/admin/flags").json(json!({"key": "g", "rules": [in_rule.clone()]})),
        req(Method::PUT, "/v1/admin/flags/f").if_match(1).json(json!({"key": "f", "target_users": ["zed"]})),
        req(Method::POST, "/v1/admin/flags/f/rules").json(in_rule.clone()),
        req(Method::PUT, "/v1/admin/segments/s").json(json!({"name": "s", "constraints": in_rule["constraints"]})),
    ];
    for attempt in attempts {
        let answer = admin.send(attempt).await;
        assert_eq!((answer.status, answer.body["code"].as_str()), (409, Some("erased_user")), "{}", answer.body);
        assert!(!answer.body.to_string().contains("zed"));
    }
    assert_eq!(admin.state().await, before, "nothing written");
    // A userId constraint on another user, or zed as some other attribute's value, is not about zed.
    let other = json!({"id": "o", "constraints": [{"field": "plan", "operator": "IN", "values": ["zed"]}]});
    assert_eq!(admin.send(req(Method::POST, "/v1/admin/flags/f/rules").json(other)).await.status, 201);
}
