//! The webhook pipeline on the AWS adapters against the emulator (moto): DynamoDB, SQS and EventBridge through the
//! official SDK. A rule routes `keel.webhooks` events to an observer queue, which is how forwarded events are
//! counted. The same guarantees as on the embedded backend: a duplicate storm and injected faults with a retrying
//! sender end with every event forwarded exactly once.
//!
//! Sends are sequential here (copies interleaved across events): when a transaction fails, moto restores a deep
//! copy of the whole table taken before it (`transact_write_items` in moto/dynamodb/models), silently undoing
//! writes other requests made meanwhile. DynamoDB isolates transactions; the concurrent duplicate storm runs on the
//! embedded backend (tests/e2e/local_host.rs).

use keel::bus::EventPattern;
use keel::config::Env;
use keel::function::QueueFunction;
use keel::queue::Queue;
use keel_aws::testing::{Emulator, unique_name};
use keel_aws::{AwsResources, SqsQueue, provision};
use keel_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SECRET: &str = "aws-pipeline-secret";

struct Stack {
    env: Env,
    queue: SqsQueue,
    observer: SqsQueue,
}

async fn stack(faults: &str) -> Stack {
    let config = Emulator::shared().sdk_config();
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);
    let table = unique_name("webhooks");
    provision::ensure_table(&dynamodb, &table).await.unwrap();
    let idempotency = unique_name("idempotency");
    provision::ensure_table(&dynamodb, &idempotency).await.unwrap();
    let (dlq_url, dlq_arn) = provision::ensure_queue(&sqs, &unique_name("dlq"), 30, None).await.unwrap();
    let (queue_url, _) = provision::ensure_queue(&sqs, &unique_name("queue"), 30, Some((&dlq_arn, 5))).await.unwrap();
    let (observer_url, observer_arn) = provision::ensure_queue(&sqs, &unique_name("observer"), 30, None).await.unwrap();
    let bus = unique_name("bus");
    provision::ensure_bus(&eventbridge, &bus).await.unwrap();
    let pattern =
        provision::event_pattern_json(&EventPattern { sources: vec!["keel.webhooks".into()], detail_types: vec![] });
    let rule = unique_name("forwarded");
    provision::ensure_rule_to_queue(&eventbridge, &sqs, &bus, &rule, &pattern, &observer_url, &observer_arn)
        .await
        .unwrap();
    let env = Env::from_pairs([
        ("WEBHOOKS_TABLE", table),
        ("IDEMPOTENCY_TABLE", idempotency.clone()),
        ("RATE_LIMITS_TABLE", idempotency),
        ("WEBHOOK_QUEUE_URL", queue_url.clone()),
        ("WEBHOOK_DLQ_URL", dlq_url),
        ("EVENT_BUS_NAME", bus),
        ("WEBHOOK_SECRET_ACME", SECRET.into()),
        ("WEBHOOK_RETRY_BASE_SECONDS", "0".into()),
        ("WEBHOOK_LEASE_SECONDS", "2".into()),
        ("KEEL_FAULTS", faults.into()),
    ]);
    Stack { env, queue: SqsQueue::new(sqs.clone(), queue_url), observer: SqsQueue::new(sqs, observer_url) }
}

/// Sends `copies` copies of each event, one request at a time, copies interleaved across events; with `retry`,
/// each copy is resent until acknowledged.
async fn send_all(stack: &Stack, events: usize, copies: impl Fn(usize) -> usize, retry: bool) {
    let resources = AwsResources::new(&stack.env, &Emulator::shared().sdk_config()).unwrap();
    let ingest = webhook_ingest::build(&stack.env, &resources).unwrap();
    let clock = keel::clock::SystemClock;
    let copies: Vec<usize> = (0..events).map(copies).collect();
    let rounds = copies.iter().copied().max().unwrap_or(0);
    let order: Vec<usize> =
        (0..rounds).flat_map(|round| (0..events).filter(|&n| round < copies[n]).collect::<Vec<_>>()).collect();
    for n in order {
        let body = format!(r#"{{"type":"order.created","n":{n}}}"#);
        let mut acknowledged = false;
        for _ in 0..40 {
            let headers = keel_headers(SECRET, &format!("evt_{n}"), chrono::Utc::now(), body.as_bytes());
            let response = ingest.call(webhook_request("acme", &headers, body.as_bytes()), invocation(&clock)).await;
            acknowledged = (200..300).contains(&response.status_code);
            if acknowledged || !retry {
                break;
            }
        }
        assert!(acknowledged, "evt_{n} was not acknowledged");
    }
}

/// Runs the worker over the queue as Lambda's event source mapping would, until `expected` distinct events
/// reached the observer queue (or a deadline); returns how often each event id was forwarded.
async fn run_worker_until(stack: &Stack, expected: usize) -> HashMap<String, usize> {
    let resources = AwsResources::new(&stack.env, &Emulator::shared().sdk_config()).unwrap();
    let worker = webhook_worker::build(&stack.env, &resources).unwrap();
    let ops = webhook_ops::build(&stack.env, &resources).unwrap();
    let clock = keel::clock::SystemClock;
    let mut last_redrive = Instant::now();
    let mut forwarded: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        let batch = stack.queue.receive(10, Duration::from_millis(200)).await.unwrap_or_default();
        if !batch.is_empty() {
            let response = worker.call(sqs_event(&batch), invocation(&clock)).await;
            for message in &batch {
                if !response.batch_item_failures.iter().any(|f| f.item_identifier == message.message_id) {
                    let _ = stack.queue.delete(&message.receipt).await;
                }
            }
        }
        for message in stack.observer.receive(10, Duration::ZERO).await.unwrap() {
            let envelope: serde_json::Value = serde_json::from_str(&message.body).unwrap();
            *forwarded.entry(envelope["detail"]["event_id"].as_str().unwrap().to_string()).or_default() += 1;
            stack.observer.delete(&message.receipt).await.unwrap();
        }
        // An operator redrives the dead-letter queue now and then (heavy faults can exhaust maxReceiveCount).
        if last_redrive.elapsed() > Duration::from_secs(5) {
            let route = "POST /v1/webhooks/dead-letters/redrive";
            let request = api_request(http::Method::POST, route, "/v1/webhooks/dead-letters/redrive");
            ops.call(with_claims(request, "operator", "ops", &["platform-admin"]), invocation(&clock)).await;
            last_redrive = Instant::now();
        }
        // Once everything arrived, keep draining a moment so a duplicate would show itself.
        if forwarded.len() >= expected {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
    }
    forwarded
}

/// The delivery records, for a failure message: what happened to an event that did not arrive.
async fn deliveries(stack: &Stack) -> Vec<String> {
    let resources = AwsResources::new(
        &Env::from_pairs([("T", stack.env.get("WEBHOOKS_TABLE").unwrap())]),
        &Emulator::shared().sdk_config(),
    )
    .unwrap();
    let table = keel::resources::Resources::table(&resources, "T").unwrap();
    let mut query = keel::table::Query::partition(keel_webhooks::log_partition("acme"));
    query.limit = 1000;
    let page = table.query(&query).await.unwrap();
    page.items
        .iter()
        .filter_map(keel_webhooks::Delivery::from_item)
        .map(|d| {
            format!("{} {} {:?} attempts={} err={:?}", d.event_id, d.delivery_id, d.status, d.attempts, d.last_error)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_storm_on_aws_adapters_forwards_each_event_exactly_once() {
    let stack = stack("").await;
    let events = 12;
    send_all(&stack, events, |n| 1 + n % 5, false).await;
    let forwarded = run_worker_until(&stack, events).await;
    assert_eq!(forwarded.len(), events, "{forwarded:?}\n{:#?}", deliveries(&stack).await);
    assert!(forwarded.values().all(|&n| n == 1), "{forwarded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_on_aws_adapters_lose_nothing_and_double_nothing() {
    let stack =
        stack("table.transact:0.2:ambiguous,table.put:0.2:ambiguous,queue.send:0.2:ambiguous,bus.put:0.2").await;
    let events = 12;
    send_all(&stack, events, |_| 1, true).await;
    let forwarded = run_worker_until(&stack, events).await;
    assert_eq!(forwarded.len(), events, "lost: {forwarded:?}");
    assert!(forwarded.values().all(|&n| n == 1), "doubled: {forwarded:?}");
}
