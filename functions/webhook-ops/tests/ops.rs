//! The operator API on the embedded backend: access control, the delivery log, replay and redrive.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::Method;
use keel::clock::Clock;
use keel::config::Env;
use keel::function::QueueFunction;
use keel::queue::{MessageAttrs, Queue};
use keel_tests::*;
use keel_webhooks::Status;

const SECRET: &str = "ops-test-secret";

fn env() -> Env {
    Env::from_pairs([("WEBHOOK_SECRET_ACME", SECRET)])
}

async fn ingest(world: &World, event_id: &str, body: &str) -> String {
    let ingest = webhook_ingest::build(&env(), &world.resources()).unwrap();
    let headers = keel_headers(SECRET, event_id, world.clock.now(), body.as_bytes());
    let response =
        ingest.call(webhook_request("acme", &headers, body.as_bytes()), invocation(world.clock.as_ref())).await;
    body_json(&response)["delivery_id"].as_str().unwrap().to_string()
}

async fn run_worker(world: &World) {
    let worker = webhook_worker::build(&env(), &world.resources()).unwrap();
    let messages = drain(world.queue.as_ref()).await;
    worker.call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
}

struct Call {
    method: Method,
    route: &'static str,
    path: String,
    params: Vec<(&'static str, String)>,
    query: Vec<(&'static str, String)>,
    body: Option<String>,
    idempotency_key: Option<&'static str>,
}

impl Call {
    fn new(method: Method, route: &'static str, path: &str) -> Self {
        let params = vec![("provider", "acme".into())];
        Self { method, route, path: path.into(), params, query: vec![], body: None, idempotency_key: None }
    }
    fn idempotency_key(mut self, key: &'static str) -> Self {
        self.idempotency_key = Some(key);
        self
    }
    fn param(mut self, name: &'static str, value: &str) -> Self {
        self.params.push((name, value.into()));
        self
    }
    fn query(mut self, name: &'static str, value: &str) -> Self {
        self.query.push((name, value.into()));
        self
    }
    fn body(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body.to_string());
        self
    }
    async fn send_as(self, world: &World, roles: &[&str]) -> (u16, serde_json::Value) {
        let ops = webhook_ops::build(&env(), &world.resources()).unwrap();
        let mut request = api_request(
            self.method,
            &format!("{} {}", self.route.split(' ').next().unwrap(), self.route.split(' ').nth(1).unwrap()),
            &self.path,
        );
        for (name, value) in self.params {
            request.path_parameters.insert(name.into(), value);
        }
        let mut query = std::collections::HashMap::new();
        for (name, value) in self.query {
            query.insert(name.to_string(), value);
        }
        request.query_string_parameters = query.into();
        if let Some(body) = self.body {
            set_body(&mut request, body.as_bytes());
        }
        if let Some(key) = self.idempotency_key {
            request.headers.insert("idempotency-key", http::HeaderValue::from_static(key));
        }
        let request = with_claims(request, "operator-1", "org-ops", roles);
        let response = ops.call(request, invocation(world.clock.as_ref())).await;
        let mut body = body_json(&response);
        if response.headers.contains_key("idempotent-replayed") {
            body["replayed_answer"] = true.into();
        }
        (response.status_code as u16, body)
    }
    async fn send(self, world: &World) -> (u16, serde_json::Value) {
        self.send_as(world, &["platform-admin"]).await
    }
}

fn list() -> Call {
    Call::new(Method::GET, "GET /v1/webhooks/{provider}/deliveries", "/v1/webhooks/acme/deliveries")
}

#[tokio::test]
async fn only_platform_admins_reach_the_operator_api() {
    let world = World::new();
    assert_eq!(list().send_as(&world, &["admin", "member"]).await.0, 403);
    let ops = webhook_ops::build(&env(), &world.resources()).unwrap();
    let anonymous = api_request(Method::GET, "GET /v1/webhooks/{provider}/deliveries", "/v1/webhooks/acme/deliveries");
    assert_eq!(ops.call(anonymous, invocation(world.clock.as_ref())).await.status_code, 401);
    assert_eq!(list().send(&world).await.0, 200);
}

#[tokio::test]
async fn the_delivery_log_lists_newest_first_with_filters_and_a_cursor_that_visits_each_once() {
    let world = World::new();
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(ingest(&world, &format!("evt_{n}"), &format!(r#"{{"type":"t{}"}}"#, n % 2)).await);
        world.clock.advance(chrono::Duration::milliseconds(5));
    }
    run_worker(&world).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut call = list().query("limit", "3");
        if let Some(c) = &cursor {
            call = call.query("cursor", c);
        }
        let (status, page) = call.send(&world).await;
        assert_eq!(status, 200);
        for item in page["items"].as_array().unwrap() {
            assert!(item.get("body_base64").is_none(), "the list leaves bodies out");
            seen.push(item["delivery_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let (_, typed) = list().query("event_type", "t1").send(&world).await;
    assert_eq!(typed["items"].as_array().unwrap().len(), 3);
    let (_, done) = list().query("status", "completed").send(&world).await;
    assert_eq!(done["items"].as_array().unwrap().len(), 7);
    let (_, pending) = list().query("status", "pending").send(&world).await;
    assert!(pending["items"].as_array().unwrap().is_empty());
    let future = (world.clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, none) = list().query("since", &future).send(&world).await;
    assert!(none["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn bad_list_parameters_are_422_with_a_pointer() {
    let world = World::new();
    for (name, value) in [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "ten"),
        ("status", "lost"),
        ("since", "yesterday"),
        ("cursor", "!!"),
    ] {
        let (status, problem) = list().query(name, value).send(&world).await;
        assert_eq!(status, 422, "{name}={value}");
        assert_eq!(problem["pointer"], name, "{name}={value}");
    }
}

#[tokio::test]
async fn show_returns_the_delivery_with_its_payload_and_404s_otherwise() {
    let world = World::new();
    let id = ingest(&world, "evt_show", r#"{"type":"a.b","n":1}"#).await;
    let show = |id: &str| {
        Call::new(
            Method::GET,
            "GET /v1/webhooks/{provider}/deliveries/{deliveryId}",
            &format!("/v1/webhooks/acme/deliveries/{id}"),
        )
        .param("deliveryId", id)
    };
    let (status, delivery) = show(&id).send(&world).await;
    assert_eq!(status, 200);
    assert_eq!(delivery["payload"]["n"], 1);
    assert_eq!(delivery["status"], "pending");
    assert_eq!(show("01JDZ0000000000000000000ZZ").send(&world).await.0, 404);
    assert_eq!(show("not-a-ulid").send(&world).await.0, 404);
}

#[tokio::test]
async fn replaying_a_completed_delivery_forwards_it_again() {
    let world = World::new();
    let id = ingest(&world, "evt_replay", "{}").await;
    run_worker(&world).await;
    let (status, body) = Call::new(
        Method::POST,
        "POST /v1/webhooks/{provider}/deliveries/{deliveryId}/replay",
        &format!("/v1/webhooks/acme/deliveries/{id}/replay"),
    )
    .param("deliveryId", &id)
    .send(&world)
    .await;
    assert_eq!(status, 202, "{body}");
    run_worker(&world).await;
    assert_eq!(world.bus.recorded().unwrap().len(), 2);
}

#[tokio::test]
async fn a_delivery_whose_payload_was_removed_cannot_be_replayed() {
    let world = World::new();
    let id = ingest(&world, "evt_old", "{}").await;
    run_worker(&world).await;
    let key = keel_webhooks::delivery_key("acme", &id);
    let item = world.table.get(&key).await.unwrap().unwrap();
    let mut stripped = keel_webhooks::Delivery::from_item(&item).unwrap();
    stripped.body_base64 = String::new();
    stripped.payload_removed_at = Some(world.clock.now());
    world.table.put(stripped.to_item(item.version + 1), keel::table::Expect::Version(item.version)).await.unwrap();
    let (status, body) = Call::new(
        Method::POST,
        "POST /v1/webhooks/{provider}/deliveries/{deliveryId}/replay",
        &format!("/v1/webhooks/acme/deliveries/{id}/replay"),
    )
    .param("deliveryId", &id)
    .send(&world)
    .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("payload_removed")), "{body}");
    let (status, shown) = Call::new(
        Method::GET,
        "GET /v1/webhooks/{provider}/deliveries/{deliveryId}",
        &format!("/v1/webhooks/acme/deliveries/{id}"),
    )
    .param("deliveryId", &id)
    .send(&world)
    .await;
    assert_eq!(status, 200);
    assert!(shown["payload_removed_at"].is_string(), "{shown}");
    assert_eq!(world.bus.recorded().unwrap().len(), 1, "not forwarded again");

    // Past 24 hours it is not replayed even before the cleanup has removed the payload.
    let other = ingest(&world, "evt_day_old", "{}").await;
    run_worker(&world).await;
    world.clock.advance(chrono::Duration::hours(24));
    let (status, body) = Call::new(
        Method::POST,
        "POST /v1/webhooks/{provider}/deliveries/{deliveryId}/replay",
        &format!("/v1/webhooks/acme/deliveries/{other}/replay"),
    )
    .param("deliveryId", &other)
    .send(&world)
    .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("payload_removed")), "{body}");
}

#[tokio::test]
async fn a_replay_repeated_under_its_idempotency_key_forwards_once() {
    let world = World::new();
    let id = ingest(&world, "evt_once", "{}").await;
    run_worker(&world).await;
    let replay = || {
        Call::new(
            Method::POST,
            "POST /v1/webhooks/{provider}/deliveries/{deliveryId}/replay",
            &format!("/v1/webhooks/acme/deliveries/{id}/replay"),
        )
        .param("deliveryId", &id)
        .idempotency_key("replay-once")
    };
    let (status, first) = replay().send(&world).await;
    assert_eq!(status, 202, "{first}");
    run_worker(&world).await;
    let (status, again) = replay().send(&world).await;
    assert_eq!((status, again["replayed_answer"].as_bool()), (202, Some(true)), "{again}");
    assert_eq!(again["replayed"], first["replayed"]);
    run_worker(&world).await;
    assert_eq!(world.bus.recorded().unwrap().len(), 2, "forwarded once by the ingest's delivery, once by the replay");
}

#[tokio::test]
async fn a_filtered_replay_needs_since_and_replays_only_matches() {
    let world = World::new();
    let start = world.clock.now() - chrono::Duration::seconds(1);
    ingest(&world, "evt_a", r#"{"type":"keep"}"#).await;
    ingest(&world, "evt_b", r#"{"type":"other"}"#).await;
    run_worker(&world).await;
    let replay = || Call::new(Method::POST, "POST /v1/webhooks/{provider}/replay", "/v1/webhooks/acme/replay");
    let (status, problem) = replay().body(serde_json::json!({"event_type": "keep"})).send(&world).await;
    assert_eq!((status, problem["pointer"].as_str()), (422, Some("/since")));
    let (status, _) = replay().body(serde_json::json!({"since": start.to_rfc3339(), "bogus": 1})).send(&world).await;
    assert_eq!(status, 422);
    let (status, body) =
        replay().body(serde_json::json!({"since": start.to_rfc3339(), "event_type": "keep"})).send(&world).await;
    assert_eq!(status, 202);
    assert_eq!(body["replayed"].as_array().unwrap().len(), 1);
    run_worker(&world).await;
    let types: Vec<String> = world.bus.recorded().unwrap().iter().map(|r| r.event.detail_type.clone()).collect();
    assert_eq!(types.iter().filter(|t| *t == "acme.keep").count(), 2);
    assert_eq!(types.iter().filter(|t| *t == "acme.other").count(), 1);
}

#[tokio::test]
async fn redrive_moves_dead_letters_back_to_the_webhook_queue() {
    let world = World::new();
    let id = ingest(&world, "evt_dead", "{}").await;
    // Simulate SQS having dead-lettered the pointer.
    let pointer = drain(world.queue.as_ref()).await.remove(0);
    world.dead_letters.send(&pointer.body, &MessageAttrs::new()).await.unwrap();
    world.queue.delete(&pointer.receipt).await.unwrap();

    let redrive =
        || Call::new(Method::POST, "POST /v1/webhooks/dead-letters/redrive", "/v1/webhooks/dead-letters/redrive");
    assert_eq!(redrive().body(serde_json::json!({"limit": 0})).send(&world).await.0, 422);
    let (status, body) = redrive().send(&world).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redriven"], 1);
    assert_eq!(body["remaining"], 0);
    run_worker(&world).await;
    let recorded = world.bus.recorded().unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].event.detail["delivery_id"], id.as_str());
    let (_, done) = list().query("status", "completed").send(&world).await;
    assert_eq!(done["items"][0]["status"], serde_json::json!(Status::Completed));
}

#[tokio::test]
async fn the_sample_list_event_is_served() {
    let world = World::new();
    ingest(&world, "evt_sample", "{}").await;
    let request: aws_lambda_events::apigw::ApiGatewayV2httpRequest = sample_event("webhook-ops-list.json");
    let ops = webhook_ops::build(&env(), &world.resources()).unwrap();
    let response = ops.call(request, invocation(world.clock.as_ref())).await;
    assert_eq!(response.status_code, 200, "{}", body_text(&response));
    assert!(body_json(&response)["items"].as_array().unwrap().is_empty(), "the sample filters on status=failed");
}

#[tokio::test]
async fn every_replay_and_redrive_is_audited_with_its_operator_and_a_refused_one_is_not() {
    let world = World::new();
    let id = ingest(&world, "evt_audit", "{}").await;
    run_worker(&world).await;
    let one = format!("/v1/webhooks/acme/deliveries/{id}/replay");
    let (status, _) = Call::new(Method::POST, "POST /v1/webhooks/{provider}/deliveries/{deliveryId}/replay", &one)
        .param("deliveryId", &id)
        .send(&world)
        .await;
    assert_eq!(status, 202);
    let many = || Call::new(Method::POST, "POST /v1/webhooks/{provider}/replay", "/v1/webhooks/acme/replay");
    assert_eq!(many().body(serde_json::json!({"event_type": "x"})).send(&world).await.0, 422, "refused: no since");
    let since = (world.clock.now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(many().body(serde_json::json!({"since": since})).send(&world).await.0, 202);
    let redrive =
        Call::new(Method::POST, "POST /v1/webhooks/dead-letters/redrive", "/v1/webhooks/dead-letters/redrive");
    assert_eq!(redrive.send(&world).await.0, 200);

    let page = world.table.query(&keel::table::Query::partition("AUDIT#ACTOR#operator-1")).await.unwrap();
    let trail: Vec<(String, String)> = page
        .items
        .iter()
        .map(|item| keel::audit::AuditEntry::from_item(item).unwrap())
        .map(|e| (e.action, e.resource))
        .collect();
    assert_eq!(
        trail,
        [
            ("webhooks.delivery.replay".to_string(), format!("webhook:acme/delivery:{id}")),
            ("webhooks.deliveries.replay".to_string(), "webhook:acme".to_string()),
            ("webhooks.dlq.redrive".to_string(), "webhook:dead-letters".to_string()),
        ]
    );
    for item in world.table.query(&keel::table::Query::partition("AUDIT")).await.unwrap().items {
        let key = item.key;
        let entries = keel::datamap::classify(keel_webhooks::DATA_MAP, keel_webhooks::TABLE_VAR, &key);
        assert_eq!(entries.len(), 1, "{key:?}");
    }
}
