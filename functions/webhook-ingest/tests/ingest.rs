//! The ingest function on the embedded backend: verification outcomes, duplicates, partial failures, limits.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Duration;
use keel::clock::Clock;
use keel::config::Env;
use keel_tests::*;
use keel_webhooks::{self as webhooks, Delivery, Status};
use std::sync::Arc;
use std::sync::atomic::Ordering;

const SECRET: &str = "whsec-test-secret-for-acme";

fn env() -> Env {
    Env::from_pairs([
        ("WEBHOOK_SECRET_ACME", format!("old-secret,{SECRET}")),
        ("WEBHOOK_SCHEME_SLACKY", "slack".into()),
        ("WEBHOOK_SECRET_SLACKY", "slack-secret".into()),
    ])
}

fn ingest(world: &World) -> webhook_ingest::Ingest {
    webhook_ingest::build(&env(), &world.resources()).unwrap()
}

async fn post(world: &World, ingest: &webhook_ingest::Ingest, event_id: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let headers = keel_headers(SECRET, event_id, world.clock.now(), body);
    let response = ingest.call(webhook_request("acme", &headers, body), invocation(world.clock.as_ref())).await;
    (response.status_code as u16, body_json(&response))
}

async fn deliveries(world: &World) -> Vec<Delivery> {
    let mut query = keel::table::Query::partition(webhooks::log_partition("acme"));
    query.limit = 1000;
    world.table.query(&query).await.unwrap().items.iter().filter_map(Delivery::from_item).collect()
}

#[tokio::test]
async fn a_verified_webhook_is_recorded_pending_and_queued_with_one_write_and_one_send() {
    let world = World::new();
    let table = CountingTable::new(world.table.clone());
    let queue = Arc::new(CountingQueue { inner: world.queue.clone(), sends: Default::default() });
    let resources = keel::resources::StaticResources::new(world.clock.clone())
        .with_table("WEBHOOKS_TABLE", table.clone())
        .with_queue("WEBHOOK_QUEUE_URL", queue.clone());
    let ingest = webhook_ingest::build(&env(), &resources).unwrap();

    let body = br#"{"type":"invoice.paid","id":"x"}"#;
    let headers = keel_headers(SECRET, "evt_1", world.clock.now(), body);
    let response = ingest.call(webhook_request("acme", &headers, body), invocation(world.clock.as_ref())).await;

    assert_eq!(response.status_code, 202, "{}", body_text(&response));
    assert_eq!(table.counts(), (0, 1), "exactly one table write and no read");
    assert_eq!(queue.sends.load(Ordering::SeqCst), 1);
    let recorded = deliveries(&world).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status, Status::Pending);
    assert_eq!(recorded[0].event_id, "evt_1");
    assert_eq!(recorded[0].event_type, "invoice.paid");
    assert_eq!(recorded[0].body(), body.to_vec());
    assert_eq!(body_json(&response)["delivery_id"], recorded[0].delivery_id.as_str());
    let messages = drain(world.queue.as_ref()).await;
    assert_eq!(messages.len(), 1);
    let pointer: webhooks::QueueMessage = serde_json::from_str(&messages[0].body).unwrap();
    assert_eq!(pointer.delivery_id, recorded[0].delivery_id);
}

#[tokio::test]
async fn the_sample_event_verifies_against_its_documented_secret() {
    let world = World::new();
    let request: aws_lambda_events::apigw::ApiGatewayV2httpRequest = sample_event("webhook-ingest.json");
    let timestamp: i64 = request.headers["x-webhook-timestamp"].to_str().unwrap().parse().unwrap();
    world.clock.set(chrono::DateTime::from_timestamp(timestamp, 0).unwrap());
    let env = Env::from_pairs([("WEBHOOK_SECRET_ACME", "sample-secret")]);
    let ingest = webhook_ingest::build(&env, &world.resources()).unwrap();
    let response = ingest.call(request, invocation(world.clock.as_ref())).await;
    assert_eq!(response.status_code, 202, "{}", body_text(&response));
}

#[tokio::test]
async fn duplicates_are_acknowledged_without_a_second_delivery() {
    let world = World::new();
    let ingest = ingest(&world);
    let (status, first) = post(&world, &ingest, "evt_dup", b"{}").await;
    assert_eq!(status, 202);
    let (status, second) = post(&world, &ingest, "evt_dup", b"{}").await;
    assert_eq!(status, 200);
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["delivery_id"], first["delivery_id"]);
    assert_eq!(deliveries(&world).await.len(), 1);
}

#[tokio::test]
async fn a_duplicate_of_a_still_pending_delivery_queues_its_pointer_again_and_one_already_taken_does_not() {
    let world = World::new();
    let ingest = ingest(&world);
    post(&world, &ingest, "evt_p", b"{}").await;
    post(&world, &ingest, "evt_p", b"{}").await;
    // Pending: the first send may have been lost, so the duplicate re-sends (the worker deduplicates).
    assert_eq!(drain(world.queue.as_ref()).await.len(), 2);

    let mut delivery = deliveries(&world).await.remove(0);
    let key = delivery.key();
    let version = world.table.get(&key).await.unwrap().unwrap().version;
    delivery.status = Status::Completed;
    world.table.put(delivery.to_item(version + 1), keel::table::Expect::Version(version)).await.unwrap();
    let (status, _) = post(&world, &ingest, "evt_p", b"{}").await;
    assert_eq!(status, 200);
    assert!(drain(world.queue.as_ref()).await.is_empty());
}

#[tokio::test]
async fn a_failed_queue_send_answers_503_and_the_retry_gets_the_event_through_once() {
    let world = World::new();
    let failing = keel::faults::Faults::parse("queue.send:1").unwrap();
    let resources = keel::resources::StaticResources::new(world.clock.clone())
        .with_table("WEBHOOKS_TABLE", world.table.clone())
        .with_queue("WEBHOOK_QUEUE_URL", failing.queue(world.queue.clone()));
    let broken = webhook_ingest::build(&env(), &resources).unwrap();
    let (status, problem) = post(&world, &broken, "evt_retry", b"{}").await;
    assert_eq!(status, 503);
    assert_eq!(problem["code"], "backend_unavailable");
    assert!(drain(world.queue.as_ref()).await.is_empty());

    let (status, _) = post(&world, &ingest(&world), "evt_retry", b"{}").await;
    assert_eq!(status, 200);
    assert_eq!(drain(world.queue.as_ref()).await.len(), 1);
    assert_eq!(deliveries(&world).await.len(), 1);
}

#[tokio::test]
async fn a_failed_table_write_answers_503_and_writes_nothing() {
    let world = World::new();
    let failing = keel::faults::Faults::parse("table.transact:1").unwrap();
    let resources = keel::resources::StaticResources::new(world.clock.clone())
        .with_table("WEBHOOKS_TABLE", failing.table(world.table.clone()))
        .with_queue("WEBHOOK_QUEUE_URL", world.queue.clone());
    let broken = webhook_ingest::build(&env(), &resources).unwrap();
    assert_eq!(post(&world, &broken, "evt_t", b"{}").await.0, 503);
    assert!(deliveries(&world).await.is_empty());
    assert!(drain(world.queue.as_ref()).await.is_empty());
}

#[tokio::test]
async fn an_expired_idempotency_record_no_longer_blocks_the_event_id() {
    let world = World::new();
    let ingest = ingest(&world);
    assert_eq!(post(&world, &ingest, "evt_old", b"{}").await.0, 202);
    world.clock.advance(webhooks::IDEMPOTENCY_WINDOW + Duration::seconds(1));
    assert_eq!(post(&world, &ingest, "evt_old", b"{}").await.0, 202);
}

#[tokio::test]
async fn the_second_rotated_secret_verifies_and_a_wrong_one_does_not() {
    let world = World::new();
    let ingest = ingest(&world);
    let body = b"{}";
    let headers = keel_headers("old-secret", "evt_rot", world.clock.now(), body);
    let ok = ingest.call(webhook_request("acme", &headers, body), invocation(world.clock.as_ref())).await;
    assert_eq!(ok.status_code, 202);
    let headers = keel_headers("not-the-secret", "evt_bad", world.clock.now(), body);
    let bad = ingest.call(webhook_request("acme", &headers, body), invocation(world.clock.as_ref())).await;
    assert_eq!(bad.status_code, 401);
    assert_eq!(bad.headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_nothing_is_written() {
    let world = World::new();
    let ingest = ingest(&world);
    let now = world.clock.now();
    let body = br#"{"a":1}"#.to_vec();
    let good = keel_headers(SECRET, "evt_bad", now, &body);
    let without = |name: &str| good.iter().filter(|(n, _)| n != name).cloned().collect::<Vec<_>>();
    let replacing = |name: &str, value: &str| {
        good.iter()
            .map(|(n, v)| if n == name { (n.clone(), value.to_string()) } else { (n.clone(), v.clone()) })
            .collect::<Vec<_>>()
    };
    let stale = keel_headers(SECRET, "evt_bad", now - Duration::seconds(301), &body);
    let future = keel_headers(SECRET, "evt_bad", now + Duration::seconds(301), &body);
    type Case<'a> = (&'a str, &'a str, Vec<(String, String)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("missing signature", "acme", without("x-webhook-signature"), body.clone(), 400),
        ("missing timestamp", "acme", without("x-webhook-timestamp"), body.clone(), 400),
        ("missing event id", "acme", without("x-webhook-event-id"), body.clone(), 400),
        ("malformed timestamp", "acme", replacing("x-webhook-timestamp", "yesterday"), body.clone(), 400),
        ("wrong signature", "acme", replacing("x-webhook-signature", &"ab".repeat(32)), body.clone(), 401),
        ("signature not hex", "acme", replacing("x-webhook-signature", "zz"), body.clone(), 400),
        ("tampered body", "acme", good.clone(), br#"{"a":2}"#.to_vec(), 401),
        ("stale timestamp", "acme", stale, body.clone(), 401),
        ("future timestamp", "acme", future, body.clone(), 401),
        ("unknown provider", "nobody", good.clone(), body.clone(), 404),
        ("invalid provider name", "ACME", good.clone(), body.clone(), 404),
        ("oversized body", "acme", good.clone(), vec![b'x'; webhooks::MAX_BODY_BYTES + 1], 413),
    ];
    for (name, provider, headers, body, expected) in cases {
        let response = ingest.call(webhook_request(provider, &headers, &body), invocation(world.clock.as_ref())).await;
        assert_eq!(response.status_code as u16, expected, "{name}: {}", body_text(&response));
        let problem = body_json(&response);
        assert_eq!(problem["status"], expected, "{name}");
        assert!(problem["code"].is_string() && problem["detail"].is_string(), "{name}");
        let text = body_text(&response);
        assert!(!text.contains(SECRET) && !text.contains("old-secret"), "{name} leaked a secret");
    }
    assert!(deliveries(&world).await.is_empty());
    assert!(drain(world.queue.as_ref()).await.is_empty());
}

#[tokio::test]
async fn empty_and_non_utf8_bodies_are_verified_on_their_raw_bytes() {
    let world = World::new();
    let ingest = ingest(&world);
    let binary = [0xff, 0xfe, 0x00, 0x80, b'{'];
    let (status, _) = post(&world, &ingest, "evt_bin", &binary).await;
    assert_eq!(status, 202);
    let (status, _) = post(&world, &ingest, "evt_empty", b"").await;
    assert_eq!(status, 202);
    let stored: Vec<Vec<u8>> = deliveries(&world).await.iter().map(Delivery::body).collect();
    assert!(stored.contains(&binary.to_vec()) && stored.contains(&Vec::new()));
}

#[tokio::test]
async fn without_a_scheme_event_id_the_body_hash_deduplicates() {
    let world = World::new();
    let env = Env::from_pairs([("WEBHOOK_SECRET_SHOP", "shop-secret"), ("WEBHOOK_SCHEME_SHOP", "shopify")]);
    let ingest = webhook_ingest::build(&env, &world.resources()).unwrap();
    use base64::Engine;
    use hmac::Mac;
    let body = br#"{"order":1}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"shop-secret").unwrap();
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let headers =
        vec![("x-shopify-hmac-sha256".to_string(), signature), ("x-shopify-topic".into(), "orders/create".into())];
    let first = ingest.call(webhook_request("shop", &headers, body), invocation(world.clock.as_ref())).await;
    let second = ingest.call(webhook_request("shop", &headers, body), invocation(world.clock.as_ref())).await;
    assert_eq!((first.status_code, second.status_code), (202, 200));
}

#[tokio::test]
async fn slack_url_verification_is_answered_with_the_challenge_and_not_queued() {
    let world = World::new();
    let ingest = ingest(&world);
    use hmac::Mac;
    let body = br#"{"type":"url_verification","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","token":"t"}"#;
    let ts = world.clock.now().timestamp().to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"slack-secret").unwrap();
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    let headers = vec![("x-slack-request-timestamp".to_string(), ts), ("x-slack-signature".into(), signature)];
    let response = ingest.call(webhook_request("slacky", &headers, body), invocation(world.clock.as_ref())).await;
    assert_eq!(response.status_code, 200);
    assert_eq!(body_json(&response)["challenge"], "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P");
    assert!(drain(world.queue.as_ref()).await.is_empty());
}

#[tokio::test]
async fn an_unknown_scheme_fails_start_up_naming_the_variable_and_not_the_secret() {
    let world = World::new();
    let bad = Env::from_pairs([("WEBHOOK_SECRET_X", "s3cr3t-value"), ("WEBHOOK_SCHEME_X", "md5")]);
    let error = webhook_ingest::build(&bad, &world.resources()).err().unwrap().to_string();
    assert!(error.contains("WEBHOOK_SCHEME_X"), "{error}");
    assert!(!error.contains("s3cr3t-value"));
    let missing = webhook_ingest::build(&env(), &keel::resources::StaticResources::new(world.clock.clone()));
    assert!(missing.err().unwrap().to_string().contains("WEBHOOKS_TABLE"));
}

#[tokio::test]
async fn outcomes_are_counted_per_provider_and_refusals_by_reason() {
    let sink = std::sync::Arc::new(keel::metrics::Prometheus::default());
    assert!(keel::metrics::install(sink.clone()), "this test process's first sink");
    let world = World::new();
    let ingest = ingest(&world);
    assert_eq!(post(&world, &ingest, "evt_m1", b"{}").await.0, 202);
    assert_eq!(post(&world, &ingest, "evt_m1", b"{}").await.0, 200);
    let wrong = keel_headers("not-the-secret", "evt_m2", world.clock.now(), b"{}");
    let refused = ingest.call(webhook_request("acme", &wrong, b"{}"), invocation(world.clock.as_ref())).await;
    assert_eq!(refused.status_code, 401);
    let reason = body_json(&refused)["code"].as_str().unwrap().to_string();
    for stranger in ["nobody", "nobody-else"] {
        let response = ingest.call(webhook_request(stranger, &wrong, b"{}"), invocation(world.clock.as_ref())).await;
        assert_eq!(response.status_code, 404);
    }
    let text = sink.render();
    for line in [
        "keel_webhooks_accepted_total{function=\"test\",provider=\"acme\"} 1".to_string(),
        "keel_webhooks_duplicate_total{function=\"test\",provider=\"acme\"} 1".to_string(),
        format!("keel_webhooks_rejected_total{{function=\"test\",provider=\"acme\",reason=\"{reason}\"}} 1"),
        // Unknown providers share one label: a request cannot mint metrics.
        "keel_webhooks_rejected_total{function=\"test\",provider=\"unknown\",reason=\"not_found\"} 2".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
}
