//! The worker on the embedded backend: forwarding, exactly-once under redelivery, failures, leases, poison.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Duration;
use keel::bus::EventBus;
use keel::clock::Clock;
use keel::config::Env;
use keel::function::QueueFunction;
use keel::queue::{MessageAttrs, Queue};
use keel_tests::*;
use keel_webhooks::{self as webhooks, Delivery, Status};
use std::sync::Arc;

const SECRET: &str = "worker-test-secret";

fn env() -> Env {
    Env::from_pairs([("WEBHOOK_SECRET_ACME", SECRET), ("WEBHOOK_MAX_RECEIVE_COUNT", "3")])
}

async fn ingest_one(world: &World, event_id: &str, body: &[u8]) -> String {
    let ingest = webhook_ingest::build(&env(), &world.resources()).unwrap();
    let headers = keel_headers(SECRET, event_id, world.clock.now(), body);
    let response = ingest.call(webhook_request("acme", &headers, body), invocation(world.clock.as_ref())).await;
    assert_eq!(response.status_code, 202);
    body_json(&response)["delivery_id"].as_str().unwrap().to_string()
}

async fn delivery(world: &World, id: &str) -> Delivery {
    let item = world.table.get(&webhooks::delivery_key("acme", id)).await.unwrap().unwrap();
    Delivery::from_item(&item).unwrap()
}

fn worker(world: &World) -> webhook_worker::Worker {
    webhook_worker::build(&env(), &world.resources()).unwrap()
}

#[tokio::test]
async fn forwards_each_event_to_the_bus_and_records_completion() {
    let world = World::new();
    let id = ingest_one(&world, "evt_w1", br#"{"type":"invoice.paid","amount":5}"#).await;
    let messages = drain(world.queue.as_ref()).await;
    let response = worker(&world).call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
    assert!(response.batch_item_failures.is_empty());

    let recorded = world.bus.recorded().unwrap();
    assert_eq!(recorded.len(), 1);
    let event = &recorded[0].event;
    assert_eq!(event.source, "keel.webhooks");
    assert_eq!(event.detail_type, "acme.invoice.paid");
    assert_eq!(event.detail["delivery_id"], id.as_str());
    assert_eq!(event.detail["payload"]["amount"], 5);
    assert!(event.trace_header.is_some(), "the trace context travels from the ingest to the bus");
    let done = delivery(&world, &id).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.attempts, 1);
    assert!(done.completed_at.is_some() && done.duration_ms.is_some() && done.lease_until.is_none());
}

#[tokio::test]
async fn a_redelivered_or_duplicated_pointer_is_not_forwarded_twice() {
    let world = World::new();
    ingest_one(&world, "evt_w2", b"{}").await;
    let messages = drain(world.queue.as_ref()).await;
    let worker = worker(&world);
    let event = sqs_event(&messages);
    worker.call(event.clone(), invocation(world.clock.as_ref())).await;
    let again = worker.call(event, invocation(world.clock.as_ref())).await;
    assert!(again.batch_item_failures.is_empty(), "a completed delivery is acknowledged");
    assert_eq!(world.bus.recorded().unwrap().len(), 1);
}

#[tokio::test]
async fn non_json_bodies_are_forwarded_base64() {
    let world = World::new();
    ingest_one(&world, "evt_bin", &[0xff, 0x01]).await;
    let messages = drain(world.queue.as_ref()).await;
    worker(&world).call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
    let event = &world.bus.recorded().unwrap()[0].event;
    assert_eq!(event.detail["payload_base64"], "/wE=");
    assert_eq!(event.detail_type, "acme.unknown");
}

#[tokio::test]
async fn a_bus_failure_is_a_batch_item_failure_recorded_as_failed_then_dead_letter_on_the_last_receive() {
    let world = World::new();
    let id = ingest_one(&world, "evt_fail", b"{}").await;
    let bus: Arc<dyn EventBus> = world.bus.clone();
    let failing = keel::faults::Faults::parse("bus.put:1").unwrap();
    let resources = world.resources().with_bus("EVENT_BUS_NAME", failing.bus(bus));
    let broken = webhook_worker::build(&env(), &resources).unwrap();

    let messages = drain(world.queue.as_ref()).await;
    let response = broken.call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(response.batch_item_failures[0].item_identifier, messages[0].message_id);
    let failed = delivery(&world, &id).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.attempts, 1);
    assert!(failed.last_error.unwrap().contains("injected fault"));

    let mut last = sqs_event(&messages);
    last.records[0].attributes.insert("ApproximateReceiveCount".into(), MAX_RECEIVE_COUNT.to_string());
    broken.call(last, invocation(world.clock.as_ref())).await;
    assert_eq!(delivery(&world, &id).await.status, Status::DeadLetter);
    assert!(world.bus.recorded().unwrap().is_empty());
}

#[tokio::test]
async fn failed_messages_come_back_after_the_visibility_timeout_and_go_to_the_dlq_after_max_receives() {
    let world = World::new();
    ingest_one(&world, "evt_dlq", b"{}").await;
    let bus: Arc<dyn EventBus> = world.bus.clone();
    let failing = keel::faults::Faults::parse("bus.put:1").unwrap();
    let broken =
        webhook_worker::build(&env(), &world.resources().with_bus("EVENT_BUS_NAME", failing.bus(bus))).unwrap();
    for round in 1..=MAX_RECEIVE_COUNT {
        let messages = drain(world.queue.as_ref()).await;
        assert_eq!(messages.len(), 1, "round {round}");
        assert_eq!(messages[0].receive_count, round);
        broken.call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
        world.clock.advance(Duration::seconds(181));
    }
    assert!(drain(world.queue.as_ref()).await.is_empty());
    assert_eq!(drain(world.dead_letters.as_ref()).await.len(), 1);
}

#[tokio::test]
async fn a_delivery_leased_by_another_worker_is_retried_later_not_run_concurrently() {
    let world = World::new();
    let id = ingest_one(&world, "evt_lease", b"{}").await;
    let key = webhooks::delivery_key("acme", &id);
    let item = world.table.get(&key).await.unwrap().unwrap();
    let mut held = Delivery::from_item(&item).unwrap();
    held.status = Status::Processing;
    held.lease_until = Some(world.clock.now() + Duration::seconds(60));
    world.table.put(held.to_item(item.version + 1), keel::table::Expect::Version(item.version)).await.unwrap();

    let messages = drain(world.queue.as_ref()).await;
    let response = worker(&world).call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert!(world.bus.recorded().unwrap().is_empty());

    // The retry waits for the lease, not just the 10 s backoff, so it does not use up the message's receives.
    world.clock.advance(Duration::seconds(30));
    assert!(drain(world.queue.as_ref()).await.is_empty());
    // Once the lease lapses (the holder died), the next delivery takes over.
    world.clock.advance(Duration::seconds(31));
    let messages = drain(world.queue.as_ref()).await;
    assert_eq!(messages.len(), 1);
    let response = worker(&world).call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(world.bus.recorded().unwrap().len(), 1);
}

#[tokio::test]
async fn poison_messages_go_straight_to_the_dead_letter_queue_and_are_acknowledged() {
    let world = World::new();
    for body in
        ["not json", r#"{"provider":"acme","delivery_id":"01JDZ0000000000000000000ZZ"}"#, r#"{"unexpected":true}"#]
    {
        world.queue.send(body, &MessageAttrs::new()).await.unwrap();
    }
    let messages = drain(world.queue.as_ref()).await;
    let response = worker(&world).call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
    assert!(response.batch_item_failures.is_empty());
    let dead = drain(world.dead_letters.as_ref()).await;
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|m| m.attributes.contains_key("keel-dead-letter-reason")));
}

#[tokio::test]
async fn the_sample_sqs_event_parses_and_its_unknown_deliveries_are_dead_lettered() {
    let world = World::new();
    let event: aws_lambda_events::sqs::SqsEvent = sample_event("webhook-worker.json");
    assert_eq!(event.records.len(), 2);
    let response = worker(&world).call(event, invocation(world.clock.as_ref())).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(drain(world.dead_letters.as_ref()).await.len(), 2);
}

#[tokio::test]
async fn a_failed_message_is_retried_after_an_exponential_backoff_not_the_whole_visibility_timeout() {
    let world = World::new();
    ingest_one(&world, "evt_backoff", b"{}").await;
    let bus: Arc<dyn EventBus> = world.bus.clone();
    let failing = keel::faults::Faults::parse("bus.put:1").unwrap();
    let env = Env::from_pairs([("WEBHOOK_SECRET_ACME", SECRET), ("WEBHOOK_RETRY_BASE_SECONDS", "10")]);
    let broken = webhook_worker::build(&env, &world.resources().with_bus("EVENT_BUS_NAME", failing.bus(bus))).unwrap();
    for (round, delay) in [(1, 10), (2, 20)] {
        let messages = drain(world.queue.as_ref()).await;
        assert_eq!(messages.len(), 1, "round {round}");
        broken.call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
        world.clock.advance(Duration::seconds(delay - 1));
        assert!(drain(world.queue.as_ref()).await.is_empty(), "round {round}: too early");
        world.clock.advance(Duration::seconds(2));
    }
    assert_eq!(drain(world.queue.as_ref()).await.len(), 1);
}

#[tokio::test]
async fn forwards_and_failures_are_counted_per_provider_with_the_age_at_forwarding() {
    let sink = Arc::new(keel::metrics::Prometheus::default());
    assert!(keel::metrics::install(sink.clone()), "this test process's first sink");
    let world = World::new();
    ingest_one(&world, "evt_ok", b"{}").await;
    world.clock.advance(chrono::Duration::milliseconds(1500));
    let messages = drain(world.queue.as_ref()).await;
    keel::metrics::scope("webhook-worker", worker(&world).call(sqs_event(&messages), invocation(world.clock.as_ref())))
        .await;

    ingest_one(&world, "evt_bad", b"{}").await;
    let bus: Arc<dyn EventBus> = world.bus.clone();
    let failing = keel::faults::Faults::parse("bus.put:1").unwrap();
    let broken =
        webhook_worker::build(&env(), &world.resources().with_bus("EVENT_BUS_NAME", failing.bus(bus))).unwrap();
    let messages = drain(world.queue.as_ref()).await;
    keel::metrics::scope("webhook-worker", broken.call(sqs_event(&messages), invocation(world.clock.as_ref()))).await;

    let text = sink.render();
    for line in [
        "keel_deliveries_forwarded_total{function=\"webhook-worker\",provider=\"acme\"} 1",
        "keel_delivery_age_at_forward_milliseconds_sum{function=\"webhook-worker\",provider=\"acme\"} 1500",
        "keel_deliveries_failed_total{function=\"webhook-worker\",provider=\"acme\"} 1",
        "keel_cold_start_total{function=\"webhook-worker\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
}

#[tokio::test]
async fn a_delivery_whose_payload_was_removed_is_not_forwarded_and_is_dead_lettered_for_good() {
    let world = World::new();
    let id = ingest_one(&world, "evt_gone", br#"{"a":1}"#).await;
    let messages = drain(world.queue.as_ref()).await;
    // Its payload removed by the cleanup while it waited (a redrive of a day-old dead letter).
    let key = webhooks::delivery_key("acme", &id);
    let item = world.table.get(&key).await.unwrap().unwrap();
    let mut stripped = Delivery::from_item(&item).unwrap();
    stripped.body_base64 = String::new();
    stripped.payload_removed_at = Some(world.clock.now());
    world.table.put(stripped.to_item(item.version + 1), keel::table::Expect::Version(item.version)).await.unwrap();

    let response = worker(&world).call(sqs_event(&messages), invocation(world.clock.as_ref())).await;
    assert!(response.batch_item_failures.is_empty(), "acknowledged: retrying cannot bring it back");
    assert!(world.bus.recorded().unwrap().is_empty(), "nothing forwarded");
    let recorded = delivery(&world, &id).await;
    assert_eq!(recorded.status, Status::DeadLetter);
    assert!(recorded.last_error.unwrap().contains("payload was removed"));
    assert_eq!(recorded.attempts, 0, "no attempt was made");
}
