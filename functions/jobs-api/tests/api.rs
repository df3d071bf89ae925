//! The jobs API on the embedded backend: creation and its bad input (422 with pointers, 413), deduplication,
//! Idempotency-Key, tenant isolation (404 for another organization's job), who may cancel and retry, listing, and
//! no job for an erased user.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel::bus::EventBus;
use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::http::Method;
use keel::resources::StaticResources;
use keel::table::Table;
use keel_embedded::{EmbeddedDb, EmbeddedQueue, QueueSpec};
use keel_tests::*;
use serde_json::{Value, json};
use std::sync::Arc;

struct Api {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    queue: Arc<EmbeddedQueue>,
    api: jobs_api::JobsApi,
    suppressions: keel::suppression::Suppressions,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let table: Arc<dyn Table> = Arc::new(db.table("JobsTable", dyn_clock.clone()));
    let queue = Arc::new(db.queue(QueueSpec::new("JobQueue"), dyn_clock.clone()));
    let bus: Arc<dyn EventBus> = Arc::new(db.bus("EventBus"));
    let directory: Arc<dyn Table> = Arc::new(db.table("DirectoryTable", dyn_clock.clone()));
    let suppressions =
        keel::suppression::Suppressions::new(directory.clone(), keel::testing::GDPR_HASH_KEY.into()).unwrap();
    let resources = StaticResources::new(dyn_clock.clone())
        .with_table("JOBS_TABLE", table)
        .with_table("FLAGS_TABLE", Arc::new(db.table("FlagsTable", dyn_clock.clone())))
        .with_queue("JOB_QUEUE_URL", queue.clone())
        .with_bus("EVENT_BUS_NAME", bus)
        .with_table(keel::idempotency::TABLE_VAR, Arc::new(db.table("IdempotencyTable", dyn_clock.clone())))
        .with_table(keel::ratelimit::TABLE_VAR, Arc::new(db.table("RateLimitsTable", dyn_clock.clone())))
        .with_table(keel::suppression::TABLE_VAR, directory.clone());
    let env = Env::from_pairs([
        (keel::suppression::KEY_VAR, keel::testing::GDPR_HASH_KEY),
        ("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify"),
        ("RATE_LIMIT_ORG", "off"),
        ("RATE_LIMIT_IP", "off"),
        ("KEEL_STAGE", "dev"),
    ]);
    Api { _dir: dir, clock, queue, api: jobs_api::build(&env, &resources).unwrap(), suppressions }
}

struct Caller<'a> {
    user: &'a str,
    org: &'a str,
    roles: &'a [&'a str],
}

const ADA: Caller = Caller { user: "ada", org: "o1", roles: &["member"] };
const BOB: Caller = Caller { user: "bob", org: "o1", roles: &["member"] };
const ADMIN: Caller = Caller { user: "root", org: "o1", roles: &["admin"] };
const EVE: Caller = Caller { user: "eve", org: "o2", roles: &["member"] };
const OPERATOR: Caller = Caller { user: "op", org: "ops", roles: &["platform-admin"] };

impl Api {
    async fn send(
        &self,
        who: &Caller<'_>,
        method: Method,
        route: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = route_request(method, route, path);
        for (name, value) in headers {
            request
                .headers
                .insert(keel::http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        if let Some(body) = body {
            set_body(&mut request, body.to_string().as_bytes());
        }
        let request = with_claims(request, who.user, who.org, who.roles);
        let response = self.api.call(request, invocation(self.clock.as_ref())).await;
        (response.status_code as u16, body_json(&response))
    }

    async fn create(&self, who: &Caller<'_>, body: Value) -> (u16, Value) {
        self.send(who, Method::POST, "/v1/jobs", "/v1/jobs", Some(body), &[]).await
    }

    async fn show(&self, who: &Caller<'_>, id: &str) -> (u16, Value) {
        self.send(who, Method::GET, "/v1/jobs/{id}", &format!("/v1/jobs/{id}"), None, &[]).await
    }

    async fn act(&self, who: &Caller<'_>, id: &str, action: &str) -> (u16, Value) {
        let route = format!("/v1/jobs/{{id}}/{action}");
        self.send(who, Method::POST, &route, &format!("/v1/jobs/{id}/{action}"), None, &[]).await
    }
}

fn email(template: &str) -> Value {
    json!({"type": "notify.email", "input": {"to": "ada@example.com", "template": template}})
}

#[tokio::test]
async fn a_valid_job_is_accepted_with_202_and_queued() {
    let a = api();
    let (status, job) = a.create(&ADA, email("welcome")).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!((job["status"].as_str(), job["waiting"].as_str()), (Some("pending"), Some("queued")));
    assert_eq!(
        (job["org_id"].as_str(), job["user_id"].as_str(), job["category"].as_str()),
        (Some("o1"), Some("ada"), Some("notifications"))
    );
    assert_eq!(drain(a.queue.as_ref()).await.len(), 1);
    let (status, shown) = a.show(&ADA, job["id"].as_str().unwrap()).await;
    assert_eq!((status, &shown["input"]), (200, &json!({"to": "ada@example.com", "template": "welcome"})));
    assert!(shown.get("outbox").is_none() && shown.get("trace_header").is_none(), "{shown}");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_pointer_per_problem_and_nothing_is_queued() {
    let a = api();
    let cases = [
        (json!({"type": "no.such", "input": {}}), 422, "/type"),
        (json!({"type": "cache.warm", "input": {"prefix": "x"}}), 422, "/type"),
        (json!({"type": "notify.email", "input": {"to": 5, "template": "w"}}), 422, "/input/to"),
        (json!({"type": "notify.email", "input": {"to": "not an address", "template": "w"}}), 422, "/input/to"),
        (json!({"type": "notify.email"}), 422, "/input"),
        (json!({"type": "notify.email", "input": {"to": "a@b.co", "template": "w"}, "run_at": "soon"}), 422, "/run_at"),
        (
            json!({"type": "notify.email", "input": {"to": "a@b.co", "template": "w"}, "run_at": "2099-01-01T00:00:00Z"}),
            422,
            "/run_at",
        ),
        (
            json!({"type": "notify.email", "input": {"to": "a@b.co", "template": "w"}, "dedup_key": ""}),
            422,
            "/dedup_key",
        ),
        (
            json!({"type": "notify.email", "input": {"to": "a@b.co", "template": "w"}, "skills": vec!["x"; 21]}),
            422,
            "/skills",
        ),
        (json!({"type": "notify.email", "input": {"to": "a@b.co", "template": "w"}, "extra": 1}), 422, "/extra"),
    ];
    for (body, status, pointer) in cases {
        let (got, problem) = a.create(&ADA, body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(problem["pointer"].as_str().unwrap_or(""), pointer, "{body}: {problem}");
    }
    let (status, problem) = a.create(&ADA, email(&"x".repeat(300 * 1024))).await;
    assert_eq!(status, 413, "{problem}");
    let (status, _) = a.send(&ADA, Method::POST, "/v1/jobs", "/v1/jobs", None, &[]).await;
    assert_eq!(status, 400);
    assert!(drain(a.queue.as_ref()).await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn another_organizations_job_is_not_found_but_an_operator_reads_any() {
    let a = api();
    let (_, job) = a.create(&ADA, email("welcome")).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(a.show(&EVE, id).await.0, 404);
    assert_eq!(a.act(&EVE, id, "cancel").await.0, 404);
    assert_eq!(a.act(&EVE, id, "retry").await.0, 404);
    assert_eq!(a.show(&ADA, "not-a-ulid").await.0, 404);
    let (status, shown) = a.show(&OPERATOR, id).await;
    assert_eq!((status, shown["org_id"].as_str()), (200, Some("o1")));
    let (_, eves) = a.send(&EVE, Method::GET, "/v1/jobs", "/v1/jobs", None, &[]).await;
    assert_eq!(eves["items"].as_array().unwrap().len(), 0);
    let (_, smuggled) = a.send(&EVE, Method::GET, "/v1/jobs", "/v1/jobs?org_id=o1", None, &[]).await;
    assert_eq!(smuggled["items"].as_array().unwrap().len(), 0, "a member's org_id is ignored");
    let (_, operators) = a.send(&OPERATOR, Method::GET, "/v1/jobs", "/v1/jobs?org_id=o1", None, &[]).await;
    assert_eq!(operators["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn cancel_is_the_creators_or_an_admins_and_retry_makes_a_linked_job() {
    let a = api();
    let (_, job) = a.create(&ADA, email("welcome")).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(a.act(&BOB, id, "cancel").await.0, 403, "same organization, not the creator");
    assert_eq!(a.act(&ADA, id, "retry").await.0, 409, "not failed or cancelled yet");
    let (status, cancelled) = a.act(&ADMIN, id, "cancel").await;
    assert_eq!((status, cancelled["status"].as_str()), (202, Some("cancelled")));
    assert_eq!(a.act(&ADA, id, "cancel").await.0, 409, "already finished");
    let (status, retry) = a.act(&ADA, id, "retry").await;
    assert_eq!((status, retry["retry_of"].as_str()), (202, Some(id)), "{retry}");
    let (_, old) = a.show(&ADA, id).await;
    assert_eq!(old["retried_by"], retry["id"]);
    assert_eq!(a.act(&ADA, id, "retry").await.0, 409, "once");
}

#[tokio::test]
async fn a_dedup_key_returns_the_open_job_and_an_idempotency_key_replays_the_first_answer() {
    let a = api();
    let mut body = email("welcome");
    body["dedup_key"] = json!("order-1");
    let (first_status, first) = a.create(&ADA, body.clone()).await;
    let (again_status, again) = a.create(&BOB, body.clone()).await;
    assert_eq!((first_status, again_status), (202, 200));
    assert_eq!(first["id"], again["id"]);

    let headers = [("idempotency-key", "k-1")];
    let (s1, one) = a.send(&ADA, Method::POST, "/v1/jobs", "/v1/jobs", Some(email("a")), &headers).await;
    let (s2, two) = a.send(&ADA, Method::POST, "/v1/jobs", "/v1/jobs", Some(email("a")), &headers).await;
    assert_eq!((s1, s2, &one["id"]), (202, 202, &two["id"]));
    let (s3, _) = a.send(&ADA, Method::POST, "/v1/jobs", "/v1/jobs", Some(email("b")), &headers).await;
    assert_eq!(s3, 422, "the same key with another body");
}

#[tokio::test]
async fn listing_filters_by_status_and_type_and_pages_with_a_cursor() {
    let a = api();
    for i in 0..3 {
        a.clock.advance(chrono::Duration::seconds(1));
        a.create(&ADA, email(&format!("t{i}"))).await;
    }
    a.create(&ADA, json!({"type": "notify.sms", "input": {"to": "+15550100100", "text": "hi"}})).await;
    let (_, page) = a.send(&ADA, Method::GET, "/v1/jobs", "/v1/jobs?limit=2", None, &[]).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) =
        a.send(&ADA, Method::GET, "/v1/jobs", &format!("/v1/jobs?limit=10&cursor={cursor}"), None, &[]).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    let (_, sms) = a.send(&ADA, Method::GET, "/v1/jobs", "/v1/jobs?type=notify.sms", None, &[]).await;
    assert_eq!(sms["items"].as_array().unwrap().len(), 1);
    let (_, none) = a.send(&ADA, Method::GET, "/v1/jobs", "/v1/jobs?status=completed", None, &[]).await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    for bad in ["status=done", "limit=0", "cursor=zzz", "created_from=yesterday"] {
        let (status, problem) = a.send(&ADA, Method::GET, "/v1/jobs", &format!("/v1/jobs?{bad}"), None, &[]).await;
        assert_eq!(status, 422, "{bad}: {problem}");
    }
}

#[tokio::test]
async fn a_type_for_platform_admins_is_refused_to_everyone_else() {
    let a = api();
    let body = json!({"type": "webhooks.replay", "input": {"provider": "stripe", "since": "2026-12-01T00:00:00Z"}});
    for who in [&ADA, &ADMIN] {
        let (status, problem) = a.create(who, body.clone()).await;
        assert_eq!(status, 403, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains("platform admins"), "{problem}");
    }
    let (status, job) = a.create(&OPERATOR, body).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!((job["type"].as_str(), job["category"].as_str()), (Some("webhooks.replay"), Some("operations")));
    let (status, problem) =
        a.create(&OPERATOR, json!({"type": "webhooks.replay", "input": {"provider": "stripe"}})).await;
    assert_eq!(status, 422, "the input schema holds for built-in types too: {problem}");
}

#[tokio::test]
async fn a_type_only_keel_starts_is_refused_to_everyone_even_platform_admins() {
    let a = api();
    let body = json!({"type": "gdpr.export", "input": {"user_id": "bob"}});
    for who in [&ADA, &ADMIN, &OPERATOR] {
        let (status, problem) = a.create(who, body.clone()).await;
        assert_eq!(status, 403, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains("Keel's own routes"), "{problem}");
    }
}

#[tokio::test]
async fn an_erased_user_can_neither_create_nor_retry_a_job_and_others_are_unaffected() {
    let a = api();
    let (_, job) = a.create(&BOB, email("before")).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(a.act(&BOB, id, "cancel").await.0, 202);
    a.suppressions.suppress("bob", "01ERASURE", chrono::Utc::now()).await.unwrap();
    let (status, problem) = a.create(&BOB, email("after")).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("erased_user")), "{problem}");
    assert!(!problem.to_string().contains("bob"), "the problem does not name the user");
    let (status, problem) = a.act(&BOB, id, "retry").await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("erased_user")), "{problem}");
    assert_eq!(a.create(&ADA, email("after")).await.0, 202);
}
