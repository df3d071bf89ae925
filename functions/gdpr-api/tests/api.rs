//! The GDPR API on the embedded backend: the data map for platform admins only, and the directory's routes: who may
//! do what, another organization's answers (404), last-admin protection (409), bad input (422 with pointers, 413);
//! exports; erasures (confirmation, dry run, blockers, another user's erasure 404, the receipt), suppression and its
//! lifting; the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::http::Method;
use keel::resources::StaticResources;
use keel_embedded::EmbeddedDb;
use keel_tests::*;
use serde_json::{Value, json};
use std::sync::Arc;

struct Api {
    _dir: tempfile::TempDir,
    db: EmbeddedDb,
    clock: Arc<ManualClock>,
    api: gdpr_api::GdprApi,
    /// The jobs API over the same tables, as a client of both would see them.
    jobs: jobs_api::JobsApi,
    /// The worker's side of an erasure, run by hand.
    erase: keel_gdpr::erasure::EraseTask,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let resources = StaticResources::new(dyn_clock.clone())
        .with_table("DIRECTORY_TABLE", Arc::new(db.table("DirectoryTable", dyn_clock.clone())))
        .with_table(keel::idempotency::TABLE_VAR, Arc::new(db.table("IdempotencyTable", dyn_clock.clone())))
        .with_table(keel::ratelimit::TABLE_VAR, Arc::new(db.table("RateLimitsTable", dyn_clock.clone())))
        .with_table("JOBS_TABLE", Arc::new(db.table("JobsTable", dyn_clock.clone())))
        .with_table("FLAGS_TABLE", Arc::new(db.table("FlagsTable", dyn_clock.clone())))
        .with_table("WEBHOOKS_TABLE", Arc::new(db.table("WebhooksTable", dyn_clock.clone())))
        .with_queue("JOB_QUEUE_URL", Arc::new(db.queue(keel_embedded::QueueSpec::new("JobQueue"), dyn_clock.clone())))
        .with_bus("EVENT_BUS_NAME", Arc::new(db.bus("EventBus")))
        .with_objects("EXPORT_BUCKET", Arc::new(db.objects("ExportBucket", "http://127.0.0.1:9", dyn_clock).unwrap()));
    let env = Env::from_pairs([
        ("RATE_LIMIT_ORG", "off"),
        ("RATE_LIMIT_IP", "off"),
        ("KEEL_STAGE", "dev"),
        (keel::suppression::KEY_VAR, keel::testing::GDPR_HASH_KEY),
    ]);
    let jobs = jobs_api::build(&env, &resources).unwrap();
    let registry = keel_jobs::Registry::sample(&env).unwrap();
    let erase = keel_gdpr::erasure::EraseTask(
        keel_gdpr::erasure::Erasures::from_resources(&env, &resources, registry).unwrap(),
    );
    Api { _dir: dir, db, clock, api: gdpr_api::build(&env, &resources).unwrap(), jobs, erase }
}

struct Caller<'a> {
    user: &'a str,
    org: &'a str,
    roles: &'a [&'a str],
}

const ANN: Caller = Caller { user: "ann", org: "acme", roles: &["admin"] };
const BOB: Caller = Caller { user: "bob", org: "acme", roles: &["member"] };
const EVE: Caller = Caller { user: "eve", org: "globex", roles: &["admin"] };
const OPERATOR: Caller = Caller { user: "op", org: "ops", roles: &["platform-admin"] };

impl Api {
    /// `route` is the template's path; the path parameters are read off `path` by position.
    async fn send(
        &self,
        who: &Caller<'_>,
        method: Method,
        route: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut request = route_request(method, route, path);
        if let Some(body) = body {
            set_body(&mut request, body.as_bytes());
        }
        let request = with_claims(request, who.user, who.org, who.roles);
        let response = self.api.call(request, invocation(self.clock.as_ref())).await;
        let text = body_text(&response);
        (response.status_code as u16, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn put_org(&self, who: &Caller<'_>, org: &str, body: &str) -> (u16, Value) {
        self.send(who, Method::PUT, "/v1/orgs/{orgId}", &format!("/v1/orgs/{org}"), Some(body)).await
    }

    async fn set_member(&self, who: &Caller<'_>, org: &str, user: &str, role: &str) -> (u16, Value) {
        let body = json!({ "role": role }).to_string();
        let path = format!("/v1/orgs/{org}/members/{user}");
        self.send(who, Method::PUT, "/v1/orgs/{orgId}/members/{userId}", &path, Some(&body)).await
    }

    async fn remove_member(&self, who: &Caller<'_>, org: &str, user: &str) -> (u16, Value) {
        let path = format!("/v1/orgs/{org}/members/{user}");
        self.send(who, Method::DELETE, "/v1/orgs/{orgId}/members/{userId}", &path, None).await
    }

    async fn jobs_call(
        &self,
        who: &Caller<'_>,
        method: Method,
        route: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = route_request(method, route, path);
        if let Some(body) = body {
            set_body(&mut request, body.to_string().as_bytes());
        }
        let request = with_claims(request, who.user, who.org, who.roles);
        let response = self.jobs.call(request, invocation(self.clock.as_ref())).await;
        (response.status_code as u16, serde_json::from_str(&body_text(&response)).unwrap_or(Value::Null))
    }

    async fn audit(&self, who: &Caller<'_>, query: &str) -> (u16, Value) {
        self.get(who, "/v1/audit-logs", &format!("/v1/audit-logs{query}")).await
    }

    /// Runs an erasure's task to its end, as the worker would.
    async fn run_erasure(&self, id: &str) {
        use keel_jobs::builtin::Task;
        struct Discard;
        #[async_trait::async_trait]
        impl keel_jobs::builtin::Checkpoints for Discard {
            async fn save(&self, _: &Value) -> Result<bool, keel::port::PortError> {
                Ok(true)
            }
        }
        self.erase.run(&json!({"erasure_id": id}), None, &Discard).await.unwrap();
    }

    async fn erase_me(&self, who: &Caller<'_>, query: &str, body: Option<&str>) -> (u16, Value) {
        let path = format!("/v1/user/account{query}");
        self.send(who, Method::DELETE, "/v1/user/account", &path, body).await
    }

    async fn get(&self, who: &Caller<'_>, route: &str, path: &str) -> (u16, Value) {
        self.send(who, Method::GET, route, path, None).await
    }

    /// `acme` with ann (admin) and bob (member); `globex` with eve (admin).
    async fn seed(&self) {
        assert_eq!(self.put_org(&OPERATOR, "acme", r#"{"name": "Acme"}"#).await.0, 201);
        assert_eq!(self.put_org(&OPERATOR, "globex", r#"{"name": "Globex"}"#).await.0, 201);
        assert_eq!(self.set_member(&OPERATOR, "acme", "ann", "admin").await.0, 201);
        assert_eq!(self.set_member(&ANN, "acme", "bob", "member").await.0, 201);
        assert_eq!(self.set_member(&OPERATOR, "globex", "eve", "admin").await.0, 201);
    }
}

#[tokio::test]
async fn the_data_map_is_served_to_platform_admins_only() {
    let a = api();
    let (status, map) = a.get(&OPERATOR, "/v1/admin/gdpr/data-map", "/v1/admin/gdpr/data-map").await;
    assert_eq!(status, 200);
    let entries = map["entries"].as_array().unwrap();
    assert_eq!(entries.len(), keel_gdpr::datamap::data_map().len());
    let membership = entries.iter().find(|e| e["name"] == "directory.membership").unwrap();
    assert_eq!(membership["table"], "DIRECTORY_TABLE");
    assert_eq!(membership["subject"], "user");
    assert_eq!(membership["erasure"], json!({"kind": "delete"}));
    assert!(entries.iter().any(|e| e["name"] == "jobs.job"), "every domain's entries");
    for who in [&ANN, &BOB] {
        assert_eq!(a.get(who, "/v1/admin/gdpr/data-map", "/v1/admin/gdpr/data-map").await.0, 403);
    }
}

#[tokio::test]
async fn platform_admins_create_and_rename_organizations_and_nobody_else_does() {
    let a = api();
    let (status, org) = a.put_org(&OPERATOR, "acme", r#"{"name": "Acme"}"#).await;
    assert_eq!((status, org["name"].as_str(), org["members"].as_u64()), (201, Some("Acme"), Some(0)));
    assert_eq!(a.put_org(&OPERATOR, "acme", r#"{"name": "Acme"}"#).await.0, 200);
    let (status, org) = a.put_org(&OPERATOR, "acme", r#"{"name": "Acme Corp"}"#).await;
    assert_eq!((status, org["name"].as_str()), (200, Some("Acme Corp")));
    assert_eq!(a.put_org(&ANN, "acme", r#"{"name": "Mine"}"#).await.0, 403, "an org admin cannot rename");
}

#[tokio::test]
async fn bad_organization_bodies_are_refused_with_pointers() {
    let a = api();
    for (body, status, pointer) in [
        ("", 400, None),
        ("{", 400, None),
        (r#"{"name": ""}"#, 422, Some("/name")),
        (r#"{"name": 7}"#, 422, Some("/name")),
        (r#"{}"#, 422, Some("/name")),
        (r#"{"name": "Acme", "extra": 1}"#, 422, Some("/extra")),
    ] {
        let (got, problem) = a.put_org(&OPERATOR, "acme", body).await;
        assert_eq!(got, status, "{body}: {problem}");
        if let Some(pointer) = pointer {
            assert_eq!(problem["errors"][0]["pointer"], pointer, "{body}: {problem}");
        }
    }
    let big = json!({ "name": "x".repeat(5000) }).to_string();
    assert_eq!(a.put_org(&OPERATOR, "acme", &big).await.0, 413);
    let (status, problem) = a.put_org(&OPERATOR, "a b", r#"{"name": "Acme"}"#).await;
    assert_eq!((status, problem["errors"][0]["pointer"].as_str()), (422, Some("/id")));
    let (status, problem) = a.set_member(&OPERATOR, "acme", "ann", "admin").await;
    assert_eq!(status, 404, "no such organization yet: {problem}");
    a.put_org(&OPERATOR, "acme", r#"{"name": "Acme"}"#).await;
    let (status, problem) = a.set_member(&OPERATOR, "acme", "ann", "owner").await;
    assert_eq!((status, problem["errors"][0]["pointer"].as_str()), (422, Some("/role")), "{problem}");
}

#[tokio::test]
async fn members_read_their_organization_and_another_organization_answers_404() {
    let a = api();
    a.seed().await;
    let (status, org) = a.get(&BOB, "/v1/orgs/{orgId}", "/v1/orgs/acme").await;
    assert_eq!((status, org["members"].as_u64(), org["admins"].as_u64()), (200, Some(2), Some(1)));
    let (status, page) = a.get(&BOB, "/v1/orgs/{orgId}/members", "/v1/orgs/acme/members?limit=1").await;
    assert_eq!((status, page["members"][0]["user_id"].as_str()), (200, Some("ann")));
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let path = format!("/v1/orgs/acme/members?cursor={cursor}");
    let (_, rest) = a.get(&BOB, "/v1/orgs/{orgId}/members", &path).await;
    assert_eq!(rest["members"][0]["user_id"], "bob");
    assert!(rest.get("next_cursor").is_none());

    for (route, path) in [("/v1/orgs/{orgId}", "/v1/orgs/acme"), ("/v1/orgs/{orgId}/members", "/v1/orgs/acme/members")]
    {
        let (status, problem) = a.get(&EVE, route, path).await;
        assert_eq!(status, 404, "{path}: {problem}");
        assert_eq!(
            a.get(&EVE, route, &path.replace("acme", "nowhere")).await.0,
            404,
            "the same answer as a missing one"
        );
    }
    assert_eq!(a.set_member(&EVE, "acme", "eve", "admin").await.0, 404, "no way in to another organization");
    assert_eq!(a.remove_member(&EVE, "acme", "bob").await.0, 404);
    assert_eq!(a.get(&OPERATOR, "/v1/orgs/{orgId}", "/v1/orgs/acme").await.0, 200, "platform admins see all");

    let (_, mine) = a.get(&BOB, "/v1/user/orgs", "/v1/user/orgs").await;
    assert_eq!(mine["memberships"].as_array().unwrap().len(), 1);
    assert_eq!(
        (mine["memberships"][0]["org_id"].as_str(), mine["memberships"][0]["role"].as_str()),
        (Some("acme"), Some("member"))
    );

    let (status, _) = a.get(&BOB, "/v1/orgs/{orgId}/members", "/v1/orgs/acme/members?cursor=%%%").await;
    assert_eq!(status, 422);
    assert_eq!(a.get(&BOB, "/v1/orgs/{orgId}/members", "/v1/orgs/acme/members?limit=0").await.0, 422);
}

#[tokio::test]
async fn org_admins_manage_members_members_may_only_leave_and_the_last_admin_stays() {
    let a = api();
    a.seed().await;
    assert_eq!(a.set_member(&BOB, "acme", "cat", "member").await.0, 403, "a member cannot add");
    assert_eq!(a.set_member(&BOB, "acme", "bob", "admin").await.0, 403, "nor promote themselves");
    assert_eq!(a.remove_member(&BOB, "acme", "ann").await.0, 403, "nor remove others");

    let (status, problem) = a.remove_member(&ANN, "acme", "ann").await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("last_admin")), "{problem}");
    let (status, problem) = a.set_member(&ANN, "acme", "ann", "member").await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("last_admin")));

    let (status, membership) = a.set_member(&ANN, "acme", "bob", "admin").await;
    assert_eq!((status, membership["role"].as_str()), (200, Some("admin")));
    assert_eq!(a.set_member(&ANN, "acme", "bob", "admin").await.0, 200, "unchanged");
    assert_eq!(a.remove_member(&ANN, "acme", "ann").await.0, 204, "handed over, ann may leave");
    assert_eq!(a.remove_member(&ANN, "acme", "ann").await.0, 404, "gone");
    assert_eq!(a.remove_member(&BOB, "acme", "nobody").await.0, 404, "bob is an admin in the directory now");
    assert_eq!(a.set_member(&ANN, "acme", "ann", "admin").await.0, 403, "ann's token still says admin; she left");
    assert_eq!(a.set_member(&BOB, "acme", "cat", "member").await.0, 201);
    let (_, org) = a.get(&OPERATOR, "/v1/orgs/{orgId}", "/v1/orgs/acme").await;
    assert_eq!((org["members"].as_u64(), org["admins"].as_u64()), (Some(2), Some(1)));
}

#[tokio::test]
async fn an_export_is_started_once_while_it_runs_and_is_nobody_elses_to_read() {
    let a = api();
    let (status, export) = a.send(&ANN, Method::POST, "/v1/user/data-exports", "/v1/user/data-exports", None).await;
    assert_eq!((status, export["status"].as_str()), (202, Some("pending")), "{export}");
    assert!(export.get("download").is_none());
    let id = export["id"].as_str().unwrap().to_string();
    let (status, again) = a.send(&ANN, Method::POST, "/v1/user/data-exports", "/v1/user/data-exports", None).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())), "the running export, not a second one");

    let route = "/v1/user/data-exports/{id}";
    let path = format!("/v1/user/data-exports/{id}");
    assert_eq!(a.get(&ANN, route, &path).await.0, 200);
    assert_eq!(a.get(&BOB, route, &path).await.0, 404, "another user of the same organization");
    assert_eq!(a.get(&EVE, route, &path).await.0, 404, "another organization");
    assert_eq!(a.get(&ANN, route, "/v1/user/data-exports/not-an-id").await.0, 404);
    assert_eq!(a.get(&ANN, route, "/v1/user/data-exports/01KBJ0000000000000000000000").await.0, 404);

    let (status, latest) = a.get(&ANN, "/v1/user/data-export", "/v1/user/data-export").await;
    assert_eq!((status, latest["id"].as_str()), (200, Some(id.as_str())));
    let (status, started) = a.get(&BOB, "/v1/user/data-export", "/v1/user/data-export").await;
    assert_eq!(status, 202, "none from bob in 24 h: one starts");
    assert_ne!(started["id"].as_str(), Some(id.as_str()));
    a.clock.advance(chrono::Duration::hours(25));
    let (_, later) = a.get(&BOB, "/v1/user/data-export", "/v1/user/data-export").await;
    assert_eq!(later["id"], started["id"], "still running: the dedup key returns it");
}

#[tokio::test]
async fn a_platform_admin_exports_any_user_with_a_reason_that_is_audited_first() {
    let a = api();
    let route = "/v1/admin/gdpr/exports";
    for (body, pointer) in [
        (json!({"user_id": "bob"}), "/reason"),
        (json!({"user_id": "bob", "reason": "  "}), "/reason"),
        (json!({"user_id": "bob", "reason": "x".repeat(501)}), "/reason"),
        (json!({"user_id": "", "reason": "ticket 7"}), "/user_id"),
        (json!({"user_id": "bob", "reason": "ticket 7", "extra": 1}), "/extra"),
        (json!({"user_id": "bob", "reason": "ticket 7", "org_ids": ["acme", "a b"]}), "/org_ids/1"),
    ] {
        let (status, problem) = a.send(&OPERATOR, Method::POST, route, route, Some(&body.to_string())).await;
        assert_eq!((status, problem["errors"][0]["pointer"].as_str()), (422, Some(pointer)), "{body}: {problem}");
    }
    let body = json!({"user_id": "bob", "reason": "DSAR ticket 7"}).to_string();
    assert_eq!(a.send(&ANN, Method::POST, route, route, Some(&body)).await.0, 403, "platform admins only");

    let (status, export) = a.send(&OPERATOR, Method::POST, route, route, Some(&body)).await;
    assert_eq!((status, export["user_id"].as_str()), (202, Some("bob")), "{export}");
    let id = export["id"].as_str().unwrap();
    let show = "/v1/admin/gdpr/exports/{id}";
    let (status, shown) = a.get(&OPERATOR, show, &format!("/v1/admin/gdpr/exports/{id}")).await;
    assert_eq!((status, shown["user_id"].as_str()), (200, Some("bob")));
    assert_eq!(a.get(&BOB, "/v1/user/data-exports/{id}", &format!("/v1/user/data-exports/{id}")).await.0, 404);
    assert_eq!(a.get(&OPERATOR, show, "/v1/admin/gdpr/exports/nope").await.0, 404);

    let table = a.db.table("DirectoryTable", a.clock.clone());
    let page = keel::table::Table::query(&table, &keel::table::Query::partition("AUDIT")).await.unwrap();
    let entries: Vec<keel::audit::AuditEntry> =
        page.items.iter().map(|item| keel::audit::AuditEntry::from_item(item).unwrap()).collect();
    assert_eq!(entries.len(), 1, "refused requests leave no entry");
    let entry = &entries[0];
    assert_eq!(
        (entry.actor.as_str(), entry.action.as_str(), entry.resource.as_str(), entry.reason.as_deref()),
        ("op", "gdpr.export.request", "user:bob", Some("DSAR ticket 7"))
    );
}

#[tokio::test]
async fn the_audit_log_merges_every_trail_and_shows_each_caller_what_their_role_allows() {
    let a = api();
    a.seed().await;
    let clock: Arc<dyn Clock> = a.clock.clone();
    let flags = keel_flags::store::FlagStore::new(Arc::new(a.db.table("FlagsTable", clock.clone())), clock);
    let flag: keel_flags::Flag = serde_json::from_value(json!({"key": "beta"})).unwrap();
    flags.create(flag, "op").await.unwrap();
    let (status, export) = a.send(&ANN, Method::POST, "/v1/user/data-exports", "/v1/user/data-exports", None).await;
    assert_eq!(status, 202);
    let export_job = format!("job:{}", export["id"].as_str().unwrap());
    assert_eq!(a.remove_member(&BOB, "acme", "bob").await.0, 204, "bob leaves: an action of his own");

    let summary = |page: &Value| -> Vec<(String, String)> {
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["action"].as_str().unwrap().to_string(), e["resource"].as_str().unwrap().to_string()))
            .collect()
    };
    let (status, all) = a.audit(&OPERATOR, "").await;
    assert_eq!(status, 200, "{all}");
    let everything = summary(&all);
    assert_eq!(everything.len(), 8, "{everything:?}");
    assert_eq!(everything[0], ("directory.member.remove".into(), "org:acme/member:bob".into()), "newest first");
    assert!(everything.contains(&("flags.create".into(), "flag:beta".into())), "the flags' trail is in it");
    assert!(everything.contains(&("jobs.job.create".into(), export_job.clone())), "and the jobs'");
    let ids: Vec<&str> = all["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(ids, sorted);

    // Pages of two read the same entries, each once.
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let (_, page) = a.audit(&OPERATOR, &query).await;
        paged.extend(summary(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, everything);

    let (_, acme) = a.audit(&ANN, "").await;
    let acme = summary(&acme);
    assert!(acme.contains(&("jobs.job.create".to_string(), export_job.clone())), "acme's job: {acme:?}");
    let acme_directory: Vec<_> = acme.iter().filter(|(action, _)| action.starts_with("directory.")).collect();
    assert!(acme_directory.iter().all(|(_, r)| r.starts_with("org:acme")), "ann: acme's only {acme:?}");
    assert!(!acme.iter().any(|(action, _)| action.starts_with("flags.")), "flags are about no organization");
    let (_, own) = a.audit(&BOB, "").await;
    assert_eq!(summary(&own), [("directory.member.remove".to_string(), "org:acme/member:bob".to_string())]);
    let (_, globex) = a.audit(&OPERATOR, "?org_id=globex").await;
    assert!(summary(&globex).iter().all(|(_, r)| r.starts_with("org:globex")) && !summary(&globex).is_empty());

    let (_, created) = a.audit(&OPERATOR, "?action=directory.org.create").await;
    assert_eq!(summary(&created).len(), 2);
    let (_, on_acme) = a.audit(&OPERATOR, "?resource=org:acme").await;
    let (_, cancels) = a.audit(&OPERATOR, "?action=jobs.job.cancel").await;
    assert!(summary(&cancels).is_empty());
    assert_eq!(summary(&on_acme).len(), 4, "org:acme and what it contains, not org:acmex");
    let (_, by_ann) = a.audit(&OPERATOR, "?actor=ann").await;
    assert_eq!(
        summary(&by_ann),
        [
            ("jobs.job.create".to_string(), export_job.clone()),
            ("directory.member.set".into(), "org:acme/member:bob".into())
        ]
    );
    let (_, future) = a.audit(&OPERATOR, "?from=2999-01-01T00:00:00Z").await;
    assert!(summary(&future).is_empty());
    let (_, past) = a.audit(&OPERATOR, "?to=2000-01-01T00:00:00Z").await;
    assert!(summary(&past).is_empty());

    for bad in ["?from=yesterday", "?to=1", "?limit=0", "?limit=101", "?cursor=nope"] {
        let (status, problem) = a.audit(&OPERATOR, bad).await;
        assert_eq!(status, 422, "{bad}: {problem}");
    }
}

#[tokio::test]
async fn exports_are_invisible_through_the_jobs_api_and_their_key_cannot_be_taken() {
    let a = api();
    // Nobody, operators included, can hold the key that would make ann's export return their job.
    let input = json!({"provider": "acme", "since": "2026-12-01T00:00:00Z"});
    let squat = json!({"type": "webhooks.replay", "input": input, "dedup_key": "keel:gdpr.export:ann"});
    let (status, problem) = a.jobs_call(&OPERATOR, Method::POST, "/v1/jobs", "/v1/jobs", Some(squat)).await;
    assert_eq!((status, problem["errors"][0]["pointer"].as_str()), (422, Some("/dedup_key")), "{problem}");

    let (_, export) = a.send(&ANN, Method::POST, "/v1/user/data-exports", "/v1/user/data-exports", None).await;
    let id = export["id"].as_str().unwrap();
    let path = format!("/v1/jobs/{id}");
    for who in [&ANN, &BOB] {
        assert_eq!(a.jobs_call(who, Method::GET, "/v1/jobs/{id}", &path, None).await.0, 404);
        let (_, listed) = a.jobs_call(who, Method::GET, "/v1/jobs", "/v1/jobs", None).await;
        assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
    }
    let cancel = format!("/v1/jobs/{id}/cancel");
    assert_eq!(a.jobs_call(&BOB, Method::POST, "/v1/jobs/{id}/cancel", &cancel, None).await.0, 404);
    assert_eq!(a.jobs_call(&OPERATOR, Method::GET, "/v1/jobs/{id}", &path, None).await.0, 200, "operators see it");

    // An operator's export of ann is filed apart: nobody in acme sees it, and ann's own routes do not answer it.
    let body = json!({"user_id": "ann", "reason": "ticket 9"}).to_string();
    let route = "/v1/admin/gdpr/exports";
    let (_, theirs) = a.send(&OPERATOR, Method::POST, route, route, Some(&body)).await;
    let theirs = theirs["id"].as_str().unwrap();
    assert_ne!(theirs, id);
    let path = format!("/v1/user/data-exports/{theirs}");
    assert_eq!(a.get(&ANN, "/v1/user/data-exports/{id}", &path).await.0, 404);
    let (_, latest) = a.get(&ANN, "/v1/user/data-export", "/v1/user/data-export").await;
    assert_eq!(latest["id"].as_str(), Some(id));
}

#[tokio::test]
async fn erasing_my_account_takes_a_confirmation_answers_a_dry_run_and_refuses_the_last_admin() {
    let a = api();
    a.seed().await;
    let confirm = |user: &str| json!({ "confirm": user }).to_string();
    assert_eq!(a.erase_me(&BOB, "", None).await.0, 400, "no body");
    let (status, problem) = a.erase_me(&BOB, "", Some(&confirm("ann"))).await;
    assert_eq!((status, problem["pointer"].as_str()), (422, Some("/confirm")), "{problem}");
    assert_eq!(a.erase_me(&BOB, "", Some(r#"{"confirm": "bob", "x": 1}"#)).await.0, 422);
    assert_eq!(a.erase_me(&BOB, "?dry_run=maybe", None).await.0, 422);

    let (status, plan) = a.erase_me(&BOB, "?dry_run=true", None).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["blockers"], json!([]));
    let membership = plan["entries"].as_array().unwrap().iter().find(|e| e["name"] == "directory.membership");
    assert_eq!(membership.unwrap()["items"], 1);
    assert_eq!(membership.unwrap()["action"], json!({"kind": "delete"}));

    // Ann is acme's last admin and bob is a member: she must hand over first.
    let (_, plan) = a.erase_me(&ANN, "?dry_run=true", None).await;
    assert_eq!(plan["blockers"], json!(["acme"]));
    let (status, problem) = a.erase_me(&ANN, "", Some(&confirm("ann"))).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("last_admin")), "{problem}");
    assert_eq!(problem["organizations"], json!(["acme"]));

    let (status, erasure) = a.erase_me(&BOB, "", Some(&confirm("bob"))).await;
    assert_eq!(status, 202, "{erasure}");
    let id = erasure["id"].as_str().unwrap().to_string();
    let (status, again) = a.erase_me(&BOB, "", Some(&confirm("bob"))).await;
    assert_eq!((status, again["id"].as_str()), (202, Some(id.as_str())), "the running one");
    let mine = format!("/v1/user/erasures/{id}");
    let route = "/v1/user/erasures/{id}";
    assert_eq!(a.get(&BOB, route, &mine).await.0, 200);
    for other in [&ANN, &EVE] {
        assert_eq!(a.get(other, route, &mine).await.0, 404, "another user's erasure");
    }
    assert_eq!(a.get(&BOB, route, "/v1/user/erasures/nope").await.0, 404);
    let admin_route = "/v1/admin/gdpr/erasures/{id}";
    let theirs = format!("/v1/admin/gdpr/erasures/{id}");
    assert_eq!(a.get(&ANN, admin_route, &theirs).await.0, 403);
    let (_, seen) = a.get(&OPERATOR, admin_route, &theirs).await;
    assert_eq!((seen["user_id"].as_str(), seen["requested_by"].as_str()), (Some("bob"), Some("bob")));

    a.run_erasure(&id).await;
    let (_, done) = a.get(&BOB, route, &mine).await;
    assert_eq!(done["status"], "completed", "{done}");
    let pseudonym = done["receipt"]["subject"].as_str().unwrap().to_string();
    assert!(pseudonym.starts_with("erased-"));
    assert_eq!(done["receipt"]["items"]["directory.membership"], 1);
    assert_eq!(done["receipt"]["processors"], json!([{"job_type": "notify.erase_user", "status": "not_configured"}]));
    let (_, seen) = a.get(&OPERATOR, admin_route, &theirs).await;
    assert_eq!((seen.get("user_id"), seen["requested_by"].as_str()), (None, Some(pseudonym.as_str())));
    let (_, members) = a.get(&ANN, "/v1/orgs/{orgId}/members", "/v1/orgs/acme/members").await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");

    // Bob is suppressed: no membership about him again; his request's audit entry names only his pseudonym.
    let (status, problem) = a.set_member(&ANN, "acme", "bob", "member").await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("erased_user")), "{problem}");
    assert!(!problem.to_string().contains("bob"));
    let (_, trail) = a.audit(&OPERATOR, "?action=gdpr.erasure.request").await;
    // Every request is recorded: ann's refused one, and bob's two (the second answered with the running erasure).
    let entries: Vec<(&str, &str)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["resource"].as_str().unwrap()))
        .collect();
    let bobs = format!("user:{pseudonym}");
    assert_eq!(
        entries,
        [(pseudonym.as_str(), bobs.as_str()), (pseudonym.as_str(), bobs.as_str()), ("ann", "user:ann")]
    );
}

#[tokio::test]
async fn platform_admins_erase_any_user_with_a_reason_and_lift_the_suppression() {
    let a = api();
    a.seed().await;
    let route = "/v1/admin/gdpr/erasures";
    let send = |who: &'static Caller<'static>, query: &'static str, body: Value| {
        let a = &a;
        async move { a.send(who, Method::POST, route, &format!("{route}{query}"), Some(&body.to_string())).await }
    };
    let good = json!({"user_id": "eve", "reason": "ticket 12", "confirm": "eve"});
    assert_eq!(send(&ANN, "", good.clone()).await.0, 403, "an org admin is not a platform admin");
    for (body, pointer) in [
        (json!({"user_id": "eve", "reason": " ", "confirm": "eve"}), "/reason"),
        (json!({"user_id": "eve", "reason": "why", "confirm": "ann"}), "/confirm"),
        (json!({"user_id": "eve", "reason": "why"}), "/confirm"),
        (json!({"user_id": "", "reason": "why", "confirm": ""}), "/user_id"),
        (json!({"user_id": "eve", "reason": "why", "confirm": "eve", "org_ids": ["a b"]}), "/org_ids/0"),
    ] {
        let (status, problem) = send(&OPERATOR, "", body.clone()).await;
        assert_eq!(status, 422, "{body}");
        assert!(problem["errors"].as_array().unwrap().iter().any(|e| e["pointer"] == pointer), "{body}: {problem}");
    }
    let (status, plan) = send(&OPERATOR, "?dry_run=true", json!({"user_id": "eve", "reason": "scoping"})).await;
    assert_eq!((status, plan["orgs_erased"].clone()), (200, json!(["globex"])), "{plan}");

    let (status, erasure) = send(&OPERATOR, "", good).await;
    assert_eq!(status, 202, "{erasure}");
    assert_eq!((erasure["user_id"].as_str(), erasure["reason"].as_str()), (Some("eve"), Some("ticket 12")));
    assert_eq!(erasure["orgs_erased"], json!(["globex"]));
    let id = erasure["id"].as_str().unwrap();
    a.run_erasure(id).await;
    let (_, done) = a.get(&OPERATOR, "/v1/admin/gdpr/erasures/{id}", &format!("{route}/{id}")).await;
    assert_eq!(
        (done["status"].as_str(), done["receipt"]["orgs_erased"].clone()),
        (Some("completed"), json!(["globex"]))
    );
    assert_eq!(a.get(&OPERATOR, "/v1/orgs/{orgId}", "/v1/orgs/globex").await.0, 404, "erased with eve");
    assert_eq!(a.set_member(&ANN, "acme", "eve", "member").await.0, 409);

    let lift = "/v1/admin/gdpr/suppressions/lift";
    let lift_body = |user: &str, reason: &str| json!({"user_id": user, "reason": reason}).to_string();
    assert_eq!(a.send(&ANN, Method::POST, lift, lift, Some(&lift_body("eve", "back"))).await.0, 403);
    assert_eq!(a.send(&OPERATOR, Method::POST, lift, lift, Some(&lift_body("eve", ""))).await.0, 422);
    assert_eq!(a.send(&OPERATOR, Method::POST, lift, lift, Some(&lift_body("bob", "never erased"))).await.0, 404);
    let (status, lifted) = a.send(&OPERATOR, Method::POST, lift, lift, Some(&lift_body("eve", "she came back"))).await;
    assert_eq!((status, lifted["erasure_id"].as_str()), (200, Some(id)), "{lifted}");
    assert_eq!(a.send(&OPERATOR, Method::POST, lift, lift, Some(&lift_body("eve", "again"))).await.0, 404);
    assert_eq!(a.set_member(&ANN, "acme", "eve", "member").await.0, 201, "welcome back");
    let (_, trail) = a.audit(&OPERATOR, "?action=gdpr.suppression.lift").await;
    let entry = &trail["entries"][0];
    assert_eq!(entry["resource"], json!(format!("suppression:{}", lifted["suppression"].as_str().unwrap())));
    assert_eq!((entry["actor"].as_str(), entry["reason"].as_str()), (Some("op"), Some("she came back")));
}

#[tokio::test]
async fn the_cleanups_and_their_runs_are_listed_to_platform_admins_only() {
    let a = api();
    let route = "/v1/admin/cleanups";
    assert_eq!(a.get(&ANN, route, route).await.0, 403);
    let (status, listed) = a.get(&OPERATOR, route, route).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["cleanups"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, keel_gdpr::CLEANUPS);
    assert!(listed["cleanups"].as_array().unwrap().iter().all(|c| c["runs"] == json!([])), "none has run: {listed}");
}
