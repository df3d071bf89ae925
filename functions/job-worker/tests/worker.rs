//! The job worker on the embedded backend against a stub downstream service started by the test: signed calls,
//! outputs, in-invocation retries with `Retry-After`, permanent failures, attempts, cancel at the heartbeat, and
//! leases that keep a redelivered message from running a job twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::Utc;
use keel::bus::EventBus;
use keel::clock::{Clock, SystemClock};
use keel::config::Env;
use keel::function::{Invocation, QueueFunction};
use keel::queue::Queue;
use keel::resources::StaticResources;
use keel::table::Table;
use keel_embedded::{EmbeddedBus, EmbeddedDb, EmbeddedQueue, QueueSpec};
use keel_jobs::{Created, Jobs, NewJob, Registry, Status, Versioned};
use keel_tests::{drain, sqs_event};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the stub service saw: each call's template (the behaviour asked for), id, attempt and verdict on the
/// signature (checked by Keel's Standard Webhooks verifier of the ingest, an implementation of its own).
#[derive(Default)]
struct Stub {
    calls: Mutex<Vec<(String, String, String, bool)>>,
    flaky: AtomicUsize,
}

async fn service(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let secret = webhook_ingest::verify::Secret::new(SECRET.to_string());
    let verified = webhook_ingest::verify::verify(
        webhook_ingest::verify::Scheme::Standard,
        &[secret],
        &headers,
        &body,
        Utc::now(),
    )
    .is_ok();
    let input: Value = serde_json::from_slice(&body).unwrap_or_default();
    let template = input["template"].as_str().unwrap_or_default().to_string();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    stub.calls.lock().unwrap().push((template.clone(), header("webhook-id"), header("keel-attempt"), verified));
    match template.as_str() {
        "ok" => answer(json!({"delivered": true, "to": input["to"]})),
        "flaky" if stub.flaky.fetch_add(1, Ordering::SeqCst) < 2 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "flaky" => answer(json!({"after": "retries"})),
        "rate" if stub.flaky.fetch_add(1, Ordering::SeqCst) == 0 => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response()
        }
        "rate" => answer(json!({"rate": "ok"})),
        "bad" => (StatusCode::BAD_REQUEST, "no such template").into_response(),
        "down" => StatusCode::BAD_GATEWAY.into_response(),
        "text" => (StatusCode::OK, "not json").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            answer(json!({}))
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn answer(body: Value) -> axum::response::Response {
    ([("content-type", "application/json")], body.to_string()).into_response()
}

struct World {
    _dir: tempfile::TempDir,
    stub: Arc<Stub>,
    table: Arc<dyn Table>,
    flags: Arc<dyn Table>,
    queue: Arc<EmbeddedQueue>,
    dead_letters: Arc<EmbeddedQueue>,
    bus: Arc<EmbeddedBus>,
    webhooks: Arc<dyn Table>,
    webhook_queue: Arc<EmbeddedQueue>,
    resources: StaticResources,
    env: Env,
}

async fn world() -> World {
    let stub = Arc::new(Stub::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/notify", axum::routing::post(service)).with_state(stub.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let table: Arc<dyn Table> = Arc::new(db.table("JobsTable", clock.clone()));
    let flags: Arc<dyn Table> = Arc::new(db.table("FlagsTable", clock.clone()));
    let mut spec = QueueSpec::new("JobQueue");
    spec.visibility_timeout = Duration::from_secs(360);
    let queue = Arc::new(db.queue(spec, clock.clone()));
    let dead_letters = Arc::new(db.queue(QueueSpec::new("JobDeadLetterQueue"), clock.clone()));
    let bus = Arc::new(db.bus("EventBus"));
    let dyn_bus: Arc<dyn EventBus> = bus.clone();
    let webhooks: Arc<dyn Table> = Arc::new(db.table("WebhooksTable", clock.clone()));
    let webhook_queue = Arc::new(db.queue(QueueSpec::new("WebhookQueue"), clock.clone()));
    let resources = StaticResources::new(clock.clone())
        .with_table("WEBHOOKS_TABLE", webhooks.clone())
        .with_queue("WEBHOOK_QUEUE_URL", webhook_queue.clone())
        .with_table("JOBS_TABLE", table.clone())
        .with_table("FLAGS_TABLE", flags.clone())
        .with_queue("JOB_QUEUE_URL", queue.clone())
        .with_queue("JOB_DLQ_URL", dead_letters.clone())
        .with_bus("EVENT_BUS_NAME", dyn_bus)
        .with_table("DIRECTORY_TABLE", Arc::new(db.table("DirectoryTable", clock.clone())))
        .with_table("IDEMPOTENCY_TABLE", Arc::new(db.table("IdempotencyTable", clock.clone())))
        .with_objects("EXPORT_BUCKET", Arc::new(db.objects("ExportBucket", "http://127.0.0.1:9", clock).unwrap()));
    let env = Env::from_pairs([
        ("JOB_URL_NOTIFY", format!("http://{address}/notify")),
        ("JOB_SECRET_NOTIFY", SECRET.to_string()),
        ("JOB_HEARTBEAT_SECONDS", "0.1".to_string()),
        ("KEEL_STAGE", "dev".to_string()),
        (keel::suppression::KEY_VAR, keel::testing::GDPR_HASH_KEY.to_string()),
    ]);
    World { _dir: dir, stub, table, flags, queue, dead_letters, bus, webhooks, webhook_queue, resources, env }
}

impl World {
    fn jobs(&self) -> Jobs {
        Jobs::new(self.table.clone(), self.queue.clone(), self.bus.clone(), Arc::new(SystemClock))
    }

    async fn create(&self, template: &str) -> keel_jobs::Job {
        self.create_for("o1", template).await
    }

    async fn create_for(&self, org: &str, template: &str) -> keel_jobs::Job {
        let registry = Registry::sample(&self.env).unwrap();
        let input = json!({"to": "ada@example.com", "template": template});
        let new = NewJob { input, ..NewJob::default() };
        let Created::New(job) =
            self.jobs().create(org, "u1", registry.get("notify.email").unwrap(), new, None).await.unwrap()
        else {
            panic!("deduplicated")
        };
        job
    }

    fn worker(&self) -> job_worker::Worker {
        job_worker::build(&self.env, &self.resources).unwrap()
    }

    /// Delivers every visible message to the worker once; the batch's failures.
    async fn deliver(&self) -> usize {
        let messages = drain(self.queue.as_ref()).await;
        let invocation = Invocation {
            request_id: "r".into(),
            deadline: Utc::now() + chrono::Duration::seconds(60),
            trace_header: None,
            stop: Default::default(),
        };
        self.worker().call(sqs_event(&messages), invocation).await.batch_item_failures.len()
    }

    async fn read(&self, id: &str) -> Versioned {
        self.read_of("o1", id).await
    }

    async fn read_of(&self, org: &str, id: &str) -> Versioned {
        self.jobs().get(org, id).await.unwrap().unwrap()
    }

    fn calls(&self) -> Vec<(String, String, String, bool)> {
        self.stub.calls.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_job_is_posted_signed_and_its_json_answer_becomes_the_output() {
    let w = world().await;
    let job = w.create("ok").await;
    assert_eq!(w.deliver().await, 0);
    let done = w.read(&job.id).await.job;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        w.jobs().output("o1", &job.id).await.unwrap(),
        Some(json!({"delivered": true, "to": "ada@example.com"}))
    );
    assert_eq!(w.calls(), [("ok".to_string(), job.id.clone(), "1".to_string(), true)], "signed, verifiable, id = job");
    let attempt = &done.attempts[0];
    assert_eq!((attempt.downstream_status, attempt.outcome), (Some(200), Some(keel_jobs::Outcome::Succeeded)));
    let types: Vec<String> = w.bus.recorded().unwrap().into_iter().map(|r| r.event.detail_type).collect();
    assert_eq!(types, ["job.created", "job.started", "job.completed"]);
    assert!(drain(w.queue.as_ref()).await.is_empty(), "the message is acknowledged");
}

#[tokio::test]
async fn gateway_errors_are_retried_within_the_attempt_and_retry_after_is_honoured() {
    let w = world().await;
    let flaky = w.create("flaky").await;
    assert_eq!(w.deliver().await, 0);
    assert_eq!(w.read(&flaky.id).await.job.status, Status::Completed);
    assert_eq!(w.calls().len(), 3, "two 503s, then the answer, in one attempt");
    assert_eq!(w.read(&flaky.id).await.job.attempts.len(), 1);

    let w = world().await;
    let rate = w.create("rate").await;
    let started = Instant::now();
    assert_eq!(w.deliver().await, 0);
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After: 2 waited out");
    assert_eq!(w.read(&rate.id).await.job.status, Status::Completed);
}

#[tokio::test]
async fn other_client_errors_and_answers_that_are_not_json_fail_without_retry() {
    let w = world().await;
    let bad = w.create("bad").await;
    let text = w.create("text").await;
    assert_eq!(w.deliver().await, 0);
    for (id, expected) in [(&bad.id, "the service answered 400"), (&text.id, "the answer is not JSON")] {
        let job = w.read(id).await.job;
        assert_eq!((job.status, job.attempts.len()), (Status::Failed, 1));
        assert_eq!(job.error.unwrap().message, expected);
    }
    assert_eq!(w.calls().len(), 2, "one call each");
}

#[tokio::test]
async fn a_service_that_stays_down_costs_an_attempt_and_the_job_waits_for_the_next() {
    let w = world().await;
    let job = w.create("down").await;
    assert_eq!(w.deliver().await, 1, "the message comes back after the backoff");
    let after = w.read(&job.id).await.job;
    assert_eq!((after.status, after.attempts.len()), (Status::Pending, 1));
    assert_eq!(after.attempts[0].outcome, Some(keel_jobs::Outcome::Retriable));
    assert_eq!(after.attempts[0].downstream_status, Some(502));
    assert_eq!(w.calls().len(), 3, "three tries within the attempt");
    assert!(after.run_at >= after.attempts[0].ended_at.unwrap(), "the next attempt is not before the backoff");
}

#[tokio::test]
async fn a_cancel_reaches_a_running_call_at_the_next_heartbeat() {
    let w = world().await;
    let job = w.create("slow").await;
    let worker = tokio::spawn({
        let messages = drain(w.queue.as_ref()).await;
        let worker = w.worker();
        async move {
            let invocation = Invocation {
                request_id: "r".into(),
                deadline: Utc::now() + chrono::Duration::seconds(60),
                trace_header: None,
                stop: Default::default(),
            };
            worker.call(sqs_event(&messages), invocation).await
        }
    });
    let started = Instant::now();
    while w.read(&job.id).await.job.status != Status::Processing {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = w.jobs().cancel("o1", &job.id, "u1").await.unwrap();
    assert_eq!(asked.status, Status::Processing);
    let response = worker.await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5), "abandoned within the heartbeat, not after the 30 s call");
    let done = w.read(&job.id).await.job;
    assert_eq!(done.status, Status::Cancelled);
    assert_eq!(done.attempts[0].outcome, Some(keel_jobs::Outcome::Cancelled));
}

#[tokio::test]
async fn a_redelivered_message_finds_the_lease_held_and_never_runs_the_job_twice_at_once() {
    let w = world().await;
    let job = w.create("slow").await;
    let messages = drain(w.queue.as_ref()).await;
    let first = {
        let worker = w.worker();
        let messages = messages.clone();
        tokio::spawn(async move {
            let invocation = Invocation {
                request_id: "a".into(),
                deadline: Utc::now() + chrono::Duration::seconds(60),
                trace_header: None,
                stop: Default::default(),
            };
            worker.call(sqs_event(&messages), invocation).await
        })
    };
    while w.read(&job.id).await.job.status != Status::Processing {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same message again, as SQS may deliver it: the second worker leaves it for later.
    let invocation = Invocation {
        request_id: "b".into(),
        deadline: Utc::now() + chrono::Duration::seconds(60),
        trace_header: None,
        stop: Default::default(),
    };
    let second = w.worker().call(sqs_event(&messages), invocation).await;
    assert_eq!(second.batch_item_failures.len(), 1);
    assert_eq!(w.calls().len(), 1, "one call in flight, not two");
    w.jobs().cancel("o1", &job.id, "u1").await.unwrap();
    first.await.unwrap();
    assert_eq!(w.read(&job.id).await.job.attempts.len(), 1);
}

#[tokio::test]
async fn a_message_that_names_no_job_goes_to_the_dead_letter_queue() {
    let w = world().await;
    w.queue.send("not a job message", &Default::default()).await.unwrap();
    assert_eq!(w.deliver().await, 0);
    let dead = drain(w.dead_letters.as_ref()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "not a job message");
    assert_eq!(dead[0].attributes["keel-dead-letter-reason"], "not a job message");
}

#[tokio::test]
async fn the_breaker_opens_after_five_failed_calls_and_then_jobs_wait_without_an_attempt() {
    let w = world().await;
    let first = w.create("down").await;
    assert_eq!(w.deliver().await, 1);
    assert_eq!(w.calls().len(), 3, "the first attempt's three tries");
    let second = w.create("down").await;
    assert_eq!(w.deliver().await, 1);
    assert_eq!(w.calls().len(), 5, "two more, and the breaker is open: no third try");
    let waiting = w.create("ok").await;
    // The first job's retry may be due already too (full jitter can make its backoff short): it waits as well.
    assert!(w.deliver().await >= 1, "the job waits for the probe");
    assert_eq!(w.calls().len(), 5, "no call to an open target");
    let job = w.read(&waiting.id).await.job;
    assert_eq!((job.status, job.attempts.len()), (Status::Pending, 0), "and no attempt spent");
    assert_eq!(w.read(&first.id).await.job.attempts.len(), 1);
    assert!(w.read(&second.id).await.job.attempts[0].error.as_deref().unwrap().contains("circuit is open"));
}

#[tokio::test]
async fn an_operational_flag_pauses_a_type_for_one_organization_and_its_jobs_wait_without_an_attempt() {
    let w = world().await;
    let store = keel_flags::store::FlagStore::new(w.flags.clone(), Arc::new(SystemClock));
    let mut flag = keel_flags::Flag::new("keel.jobs.notify.email");
    flag.default_value = true;
    flag.block_orgs = vec!["o1".into()];
    store.create(flag, "operator").await.unwrap();
    let held = w.create_for("o1", "ok").await;
    let free = w.create_for("o2", "ok").await;
    assert_eq!(w.deliver().await, 1, "o1's job comes back later");
    assert_eq!(w.read_of("o2", &free.id).await.job.status, Status::Completed);
    let waiting = w.read_of("o1", &held.id).await.job;
    assert_eq!((waiting.status, waiting.attempts.len()), (Status::Pending, 0));
    assert_eq!(w.calls().len(), 1, "only o2's job reached the service");
}

/// Deliveries of `provider`: `(event type, status)` each, received a millisecond apart from `from`.
async fn seed_deliveries(
    table: &dyn Table,
    provider: &str,
    kinds: &[(&str, keel_webhooks::Status)],
    from: chrono::DateTime<Utc>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for (n, (event_type, status)) in kinds.iter().enumerate() {
        let at = from + chrono::Duration::milliseconds(n as i64);
        let id = ulid::Ulid::from_parts(at.timestamp_millis() as u64, n as u128).to_string();
        let delivery = keel_webhooks::Delivery {
            provider: provider.into(),
            delivery_id: id.clone(),
            event_id: format!("evt_{n}"),
            event_type: event_type.to_string(),
            status: *status,
            attempts: 1,
            last_error: None,
            received_at: at,
            updated_at: at,
            started_at: None,
            completed_at: None,
            duration_ms: None,
            lease_until: None,
            replays: 0,
            body_base64: keel_webhooks::encode_body(b"{}"),
            content_type: Some("application/json".into()),
            trace_header: None,
            payload_removed_at: None,
        };
        table.put(delivery.to_item(1), keel::table::Expect::Absent).await.unwrap();
        ids.push(id);
    }
    ids
}

async fn replays(table: &dyn Table, provider: &str, ids: &[String]) -> Vec<u32> {
    let mut counts = Vec::new();
    for id in ids {
        let item = table.get(&keel_webhooks::delivery_key(provider, id)).await.unwrap().unwrap();
        counts.push(keel_webhooks::Delivery::from_item(&item).unwrap().replays);
    }
    counts
}

/// Saves in memory, and stops holding the job at the save numbered `lose_at` (from 1).
struct Held {
    saves: Mutex<Vec<Value>>,
    lose_at: usize,
}

#[async_trait::async_trait]
impl keel_jobs::builtin::Checkpoints for Held {
    async fn save(&self, checkpoint: &Value) -> Result<bool, keel::port::PortError> {
        let mut saves = self.saves.lock().unwrap();
        if saves.len() + 1 == self.lose_at {
            return Ok(false);
        }
        saves.push(checkpoint.clone());
        Ok(true)
    }
}

#[tokio::test]
async fn a_bulk_replay_cut_short_resumes_from_its_last_checkpoint_and_replays_only_what_its_filter_selects() {
    use keel_jobs::builtin::{Task, TaskFailure};
    use keel_webhooks::Status as W;
    let w = world().await;
    let from = Utc::now() - chrono::Duration::hours(1);
    let kinds: Vec<(&str, W)> = (0..250)
        .map(|n| match n % 5 {
            0 => ("charge.refunded", W::Failed),
            1 => ("charge.succeeded", W::Completed),
            _ => ("charge.succeeded", W::Failed),
        })
        .collect();
    let ids = seed_deliveries(w.webhooks.as_ref(), "acme", &kinds, from).await;
    let others = seed_deliveries(w.webhooks.as_ref(), "other", &[("charge.succeeded", W::Failed)], from).await;
    let task =
        job_worker::tasks::WebhookReplay::new(w.webhooks.clone(), w.webhook_queue.clone(), Arc::new(SystemClock));
    let input =
        json!({"provider": "acme", "since": from.to_rfc3339(), "status": "failed", "event_type": "charge.succeeded"});

    // The first attempt loses the job at its second checkpoint (after two pages of 100).
    let first = Held { saves: Mutex::new(Vec::new()), lose_at: 2 };
    let cut = task.run(&input, None, &first).await;
    assert!(matches!(cut, Err(TaskFailure::Retriable(_))), "{cut:?}");
    let saved = first.saves.lock().unwrap().last().cloned().unwrap();
    assert_eq!(saved["scanned"], 100);
    let second = Held { saves: Mutex::new(Vec::new()), lose_at: 0 };
    let output = task.run(&input, Some(&saved), &second).await.unwrap();
    let selected: Vec<usize> = (0..250).filter(|n| n % 5 >= 2).collect();
    assert_eq!(output["scanned"], 250);
    // The cut attempt's second page is looked at again; its deliveries are pending now, so the status filter
    // leaves them: the count is the first page's and the third's.
    let first_and_third = selected.iter().filter(|n| !(100..200).contains(*n)).count();
    assert_eq!(output["replayed"].as_u64().unwrap() as usize, first_and_third);

    let counts = replays(w.webhooks.as_ref(), "acme", &ids).await;
    for (n, count) in counts.iter().enumerate() {
        assert_eq!(*count, u32::from(n % 5 >= 2), "delivery {n}: once if selected, else never");
    }
    assert_eq!(replays(w.webhooks.as_ref(), "other", &others).await, [0], "another provider's");
    assert_eq!(drain(w.webhook_queue.as_ref()).await.len(), counts.iter().map(|c| *c as usize).sum::<usize>());

    let bad = task.run(&json!({"provider": "Not A Provider", "since": from.to_rfc3339()}), None, &second).await;
    assert!(matches!(bad, Err(TaskFailure::Failed(_))), "{bad:?}");
}

#[tokio::test]
async fn a_built_in_job_runs_in_the_worker_keeps_its_checkpoint_and_ends_with_the_tasks_output() {
    use keel_webhooks::Status as W;
    let w = world().await;
    let from = Utc::now() - chrono::Duration::hours(1);
    let kinds: Vec<(&str, W)> = (0..150).map(|_| ("charge.succeeded", W::DeadLetter)).collect();
    let ids = seed_deliveries(w.webhooks.as_ref(), "acme", &kinds, from).await;
    let registry = Registry::sample(&w.env).unwrap();
    let input = json!({"provider": "acme", "since": from.to_rfc3339()});
    let new = NewJob { input, ..NewJob::default() };
    let Created::New(job) =
        w.jobs().create("ops", "root", registry.get("webhooks.replay").unwrap(), new, None).await.unwrap()
    else {
        panic!("deduplicated")
    };
    assert_eq!(w.deliver().await, 0);
    let done = w.read_of("ops", &job.id).await.job;
    assert_eq!(done.status, Status::Completed, "{done:?}");
    assert_eq!(done.checkpoint.as_ref().unwrap()["scanned"], 150, "the last checkpoint stays in the record");
    let output = w.jobs().output("ops", &job.id).await.unwrap().unwrap();
    assert_eq!((output["replayed"].as_u64(), output["skipped"].as_u64()), (Some(150), Some(0)));
    assert!(replays(w.webhooks.as_ref(), "acme", &ids).await.iter().all(|count| *count == 1));
    assert_eq!(drain(w.webhook_queue.as_ref()).await.len(), 150, "every delivery's pointer is queued again");
    assert!(w.calls().is_empty(), "no downstream service was called");
}
