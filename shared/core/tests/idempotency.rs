//! `Idempotency-Key` as the router applies it, on the embedded table (real storage): replay, mismatch, concurrent
//! duplicates, a request that died between claiming the key and storing its answer, expiry without deletion,
//! answers that are not stored, malformed keys, and keys that belong to one caller.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use chrono::{DateTime, Duration, Utc};
use keel::clock::ManualClock;
use keel::http::{self, Response};
use keel::idempotency::Idempotency;
use keel::openapi::Doc;
use keel::problem::Problem;
use keel::route::{Access, Api, Call, Route, serve};
use keel::table::Table;
use keel_embedded::EmbeddedDb;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

struct Counter {
    runs: AtomicUsize,
    /// When set, each run waits for a permit: a request held in flight.
    gate: Option<Semaphore>,
    idempotency: Idempotency,
}

impl Counter {
    async fn create(&self, call: &Call) -> Result<Response, Problem> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let body: Value = http::json_body(&call.request)?;
        if body["fail"] == true {
            return Err(Problem::unavailable());
        }
        let mut response = http::json(201, &json!({"run": run, "echo": body}));
        response.headers_mut().insert("location", http::HeaderValue::from_static("/things/1"));
        response.headers_mut().append("link", http::HeaderValue::from_static("</a>; rel=\"a\""));
        response.headers_mut().append("link", http::HeaderValue::from_static("</b>; rel=\"b\""));
        Ok(response)
    }

    async fn refuse(&self, _call: &Call) -> Result<Response, Problem> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Err(Problem::unprocessable("invalid", "no"))
    }

    async fn read(&self, _call: &Call) -> Result<Response, Problem> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(http::json(200, &json!({})))
    }
}

impl Api for Counter {
    const ROUTES: &'static [Route<Self>] = &[
        Route::post("/things", Access::Member, Doc::NONE, |c, call| Box::pin(c.create(call))),
        Route::post("/refused", Access::Member, Doc::NONE, |c, call| Box::pin(c.refuse(call))),
        Route::get("/things", Access::Member, Doc::NONE, |c, call| Box::pin(c.read(call))),
    ];

    fn idempotency(&self) -> Option<&Idempotency> {
        Some(&self.idempotency)
    }
}

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    counter: Arc<Counter>,
    table: Arc<dyn Table>,
}

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn world(gated: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let table: Arc<dyn Table> = Arc::new(db.table("IdempotencyTable", clock.clone()));
    let idempotency = Idempotency::new(table.clone(), clock.clone());
    let gate = gated.then(|| Semaphore::new(0));
    World { _dir: dir, clock, counter: Arc::new(Counter { runs: AtomicUsize::new(0), gate, idempotency }), table }
}

fn request(method: &str, path: &str, body: &str, key: Option<&str>, user: &str) -> http::Request {
    request_in("org-1", method, path, body, key, user)
}

fn request_in(org: &str, method: &str, path: &str, body: &str, key: Option<&str>, user: &str) -> http::Request {
    let mut event: ApiGatewayV2httpRequest = serde_json::from_value(json!({
        "routeKey": format!("{method} {path}"), "rawPath": path, "body": body,
        "requestContext": {"routeKey": format!("{method} {path}"), "http": {"method": method},
            "authorizer": {"jwt": {"claims": {"sub": user, "org_id": org, "roles": "[member]"}}}},
    }))
    .unwrap();
    if let Some(key) = key {
        event.headers.insert("idempotency-key", http::HeaderValue::from_str(key).unwrap());
    }
    keel::lambda::request_of(event)
}

async fn send(world: &World, request: http::Request) -> (u16, Value, Response) {
    let response = serve(world.counter.as_ref(), request).await;
    let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (response.status().as_u16(), body, response)
}

fn runs(world: &World) -> usize {
    world.counter.runs.load(Ordering::SeqCst)
}

fn replayed(response: &Response) -> bool {
    response.headers().get("idempotent-replayed").is_some_and(|v| v == "true")
}

#[tokio::test]
async fn a_repeat_gets_the_first_answer_back_and_the_work_happens_once() {
    let world = world(false);
    let (status, body, first) = send(&world, request("POST", "/things", r#"{"a":1}"#, Some("\"k-1\""), "u1")).await;
    assert_eq!((status, body["run"].as_u64()), (201, Some(1)));
    assert!(!replayed(&first));
    for _ in 0..3 {
        let (status, again, response) =
            send(&world, request("POST", "/things", r#"{"a":1}"#, Some("\"k-1\""), "u1")).await;
        assert_eq!((status, &again), (201, &body), "the stored status and body");
        assert!(replayed(&response));
        assert_eq!(response.headers()["location"], "/things/1", "the stored headers");
        let links: Vec<_> = response.headers().get_all("link").iter().collect();
        assert_eq!(links.len(), 2, "a repeated header keeps every value");
        assert_eq!(response.headers()["content-type"], "application/json");
    }
    assert_eq!(runs(&world), 1);
    // Without the header, or with another key, it runs again.
    send(&world, request("POST", "/things", r#"{"a":1}"#, None, "u1")).await;
    send(&world, request("POST", "/things", r#"{"a":1}"#, Some("k-2"), "u1")).await;
    assert_eq!(runs(&world), 3);
}

#[tokio::test]
async fn the_same_key_with_another_request_is_422() {
    let world = world(false);
    send(&world, request("POST", "/things", r#"{"a":1}"#, Some("k"), "u1")).await;
    let (status, body, response) = send(&world, request("POST", "/things", r#"{"a":2}"#, Some("k"), "u1")).await;
    assert_eq!(
        (status, body["code"].as_str(), body["pointer"].as_str()),
        (422, Some("idempotency_key_reused"), Some("idempotency-key"))
    );
    assert!(!replayed(&response));
    assert_eq!(runs(&world), 1);
}

#[tokio::test]
async fn a_repeat_while_the_first_runs_is_409_and_a_replay_once_it_answered() {
    let world = world(true);
    let first = {
        let counter = world.counter.clone();
        tokio::spawn(async move { serve(counter.as_ref(), request("POST", "/things", "{}", Some("k"), "u1")).await })
    };
    // Let the first claim the key and wait at the gate.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, body, response) = send(&world, request("POST", "/things", "{}", Some("k"), "u1")).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("idempotency_in_flight")));
    assert!(response.headers().contains_key("retry-after"));
    world.counter.gate.as_ref().unwrap().add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status(), 201);
    let (status, body, response) = send(&world, request("POST", "/things", "{}", Some("k"), "u1")).await;
    assert_eq!((status, body["run"].as_u64()), (201, Some(1)));
    assert!(replayed(&response));
    assert_eq!(runs(&world), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_run_the_work_once() {
    let world = world(false);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let counter = world.counter.clone();
        tasks.push(tokio::spawn(async move {
            serve(counter.as_ref(), request("POST", "/things", "{}", Some("storm"), "u1")).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(runs(&world), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
}

#[tokio::test]
async fn a_request_that_died_holding_the_key_stops_blocking_at_its_lease() {
    let world = world(false);
    // The first request claims the key and dies before answering (the Lambda was stopped).
    let caller = keel::identity::Identity { user_id: "u1".into(), org_id: "org-1".into(), roles: vec![] };
    let raw_key = http::HeaderValue::from_static("k");
    let dying = request("POST", "/things", "{}", Some("k"), "u1");
    let deadline = start() + Duration::seconds(10);
    let claim = world.counter.idempotency.begin(&caller, "POST /things", &raw_key, &dying, deadline).await;
    assert!(matches!(claim, keel::idempotency::Begun::Run(_)));
    let (status, _, _) = send(&world, request("POST", "/things", "{}", Some("k"), "u1")).await;
    assert_eq!(status, 409, "held until the dead request's deadline");
    world.clock.set(deadline + Duration::seconds(1));
    let (status, body, response) = send(&world, request("POST", "/things", "{}", Some("k"), "u1")).await;
    assert_eq!((status, body["run"].as_u64()), (201, Some(1)), "taken over after the lease");
    assert!(!replayed(&response));
    let (_, _, response) = send(&world, request("POST", "/things", "{}", Some("k"), "u1")).await;
    assert!(replayed(&response));
    assert_eq!(runs(&world), 1);
}

#[tokio::test]
async fn records_expire_after_the_window_though_nothing_deleted_them() {
    let world = world(false);
    send(&world, request("POST", "/things", "{}", Some("k"), "u1")).await;
    world.clock.advance(Duration::hours(23));
    assert!(replayed(&send(&world, request("POST", "/things", "{}", Some("k"), "u1")).await.2));
    world.clock.set(start() + Duration::hours(24) + Duration::seconds(1));
    let (status, body, response) = send(&world, request("POST", "/things", r#"{"new":true}"#, Some("k"), "u1")).await;
    assert_eq!((status, body["run"].as_u64()), (201, Some(2)), "a new request under the old key");
    assert!(!replayed(&response));
}

#[tokio::test]
async fn refusals_are_not_stored_so_the_key_can_be_used_again() {
    let world = world(false);
    for _ in 0..2 {
        let (status, _, response) = send(&world, request("POST", "/refused", "{}", Some("k"), "u1")).await;
        assert_eq!(status, 422);
        assert!(!replayed(&response));
    }
    assert_eq!(runs(&world), 2);
    // A body the handler refuses (not JSON) is a 4xx too; the corrected request then runs under the same key.
    assert_eq!(send(&world, request("POST", "/things", "not json", Some("k2"), "u1")).await.0, 422);
    let (status, body, _) = send(&world, request("POST", "/things", "{}", Some("k2"), "u1")).await;
    assert_eq!((status, body["run"].as_u64()), (201, Some(4)), "the refused request left no record behind");
}

#[tokio::test]
async fn malformed_keys_are_400_before_any_work_and_reads_ignore_keys() {
    let world = world(false);
    for bad in ["\"\"", "two words", "\"unterminated"] {
        let (status, body, _) = send(&world, request("POST", "/things", "{}", Some(bad), "u1")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("malformed_idempotency_key")), "{bad}");
    }
    let long = "k".repeat(256);
    assert_eq!(send(&world, request("POST", "/things", "{}", Some(&long), "u1")).await.0, 400);
    assert_eq!(runs(&world), 0);
    for _ in 0..2 {
        assert!(!replayed(&send(&world, request("GET", "/things", "", Some("k"), "u1")).await.2));
    }
    assert_eq!(runs(&world), 2);
}

#[tokio::test]
async fn a_backend_failure_releases_the_key_so_the_retry_runs() {
    let world = world(false);
    let (status, _, response) = send(&world, request("POST", "/things", r#"{"fail":true}"#, Some("k"), "u1")).await;
    assert_eq!(status, 503);
    assert!(!replayed(&response));
    let (status, _, response) = send(&world, request("POST", "/things", r#"{"fail":true}"#, Some("k"), "u1")).await;
    assert_eq!(status, 503, "run again, not a replayed 503");
    assert!(!replayed(&response));
    assert_eq!(runs(&world), 2);
}

#[tokio::test]
async fn the_same_user_id_in_two_organizations_has_two_records() {
    let world = world(false);
    send(&world, request_in("org-1", "POST", "/things", "{}", Some("k"), "u1")).await;
    let (status, body, response) = send(&world, request_in("org-2", "POST", "/things", "{}", Some("k"), "u1")).await;
    assert_eq!((status, body["run"].as_u64()), (201, Some(2)));
    assert!(!replayed(&response));
}

#[tokio::test]
async fn a_key_belongs_to_its_caller() {
    let world = world(false);
    send(&world, request("POST", "/things", "{}", Some("shared"), "u1")).await;
    let (status, body, response) = send(&world, request("POST", "/things", "{}", Some("shared"), "u2")).await;
    assert_eq!((status, body["run"].as_u64()), (201, Some(2)));
    assert!(!replayed(&response));
}

/// Every record the router writes is declared once in the data map, whatever the key and route hold.
#[tokio::test]
async fn every_record_is_declared_once_in_the_data_map() {
    let world = world(false);
    send(&world, request("POST", "/things", "{}", Some("k-1"), "u1")).await;
    send(&world, request_in("org-2", "POST", "/things", "{}", Some("\"quoted key\""), "u2")).await;
    let db = EmbeddedDb::open(world._dir.path()).unwrap();
    let keys = db.table("IdempotencyTable", world.clock.clone()).keys().await.unwrap();
    assert_eq!(keys.len(), 4, "two records and their organizations' listings: {keys:?}");
    for key in &keys {
        let entries = keel::datamap::classify(keel::idempotency::DATA_MAP, keel::idempotency::TABLE_VAR, key);
        assert_eq!(entries.len(), 1, "{key:?}");
    }
}

#[tokio::test]
async fn records_past_their_day_are_cleaned_in_every_organization_that_has_any() {
    use keel::cleanup::{Cleanup, Runs};
    use keel::clock::Clock;
    let w = world(false);
    for (org, key) in [("org-1", "k1"), ("org-1", "k2"), ("org-2", "k1")] {
        let (status, _, _) = send(&w, request_in(org, "POST", "/things", "{}", Some(key), "ann")).await;
        assert_eq!(status, 201);
    }
    w.clock.advance(chrono::Duration::hours(25));
    assert_eq!(send(&w, request_in("org-1", "POST", "/things", "{}", Some("k3"), "ann")).await.0, 201);
    let listed = |org: &str| {
        let table = w.table.clone();
        let key = keel::idempotency::ORGS.key(org);
        async move { table.get(&key).await.unwrap().is_some() }
    };
    assert!(listed("org-1").await && listed("org-2").await, "each claim lists its organization");
    let cleanup = keel::idempotency::RecordsCleanup(w.table.clone());
    let runs = Runs(w.table.clone());
    let run = runs.run(&cleanup as &dyn Cleanup, w.clock.now(), &|| false, w.clock.as_ref()).await.unwrap();
    assert_eq!((run.removed, run.complete), (3, true), "{run:?}");
    let left = |org: &str| {
        let table = w.table.clone();
        let query = keel::table::Query { expired: true, ..keel::table::Query::partition(format!("IDEM#{org}")) };
        async move { table.query(&query).await.unwrap().items.len() }
    };
    assert_eq!((left("org-1").await, left("org-2").await), (1, 0), "the fresh record stays");
    assert_eq!(runs.run(&cleanup, w.clock.now(), &|| false, w.clock.as_ref()).await.unwrap().removed, 0);
    // The data map declares the listing.
    let key = keel::idempotency::ORGS.key("org-1");
    assert_eq!(keel::datamap::classify(keel::idempotency::DATA_MAP, keel::idempotency::TABLE_VAR, &key).len(), 1);
}
