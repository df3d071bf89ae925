//! The job transitions on the embedded table, queue and bus, with a manual clock.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{Duration, TimeZone, Utc};
use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::queue::Queue;
use keel::testing::SwitchableTable;
use keel_embedded::{EmbeddedBus, EmbeddedDb, EmbeddedQueue, QueueSpec};
use keel_jobs::store::RESEND_AFTER;
use keel_jobs::{
    AttemptEnd, Beat, Created, Filter, Jobs, JobsError, NewJob, Outcome, Registry, Status, Versioned, Waiting,
};
use serde_json::json;
use std::sync::Arc;

const LEASE: Duration = Duration::seconds(30);

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    table: Arc<SwitchableTable>,
    queue: Arc<EmbeddedQueue>,
    bus: Arc<EmbeddedBus>,
    jobs: Jobs,
    breakers: keel_jobs::breaker::Breakers,
    gates: keel_jobs::gate::Gates,
    registry: Registry,
}

fn registry() -> Registry {
    let declare = |name: &str, concurrency: u32, delivery: &str| {
        json!({"name": name, "category": "tests", "executor": {"kind": "http", "url_var": "URL", "secret_var": "SECRET"},
            "timeout_seconds": 5, "max_attempts": 2, "retry_base_seconds": 1, "retry_max_seconds": 4,
            "concurrency": concurrency, "delivery": delivery,
            "input_schema": {"type": "object"}})
    };
    let document = json!({"types": [declare("t.fast", 2, "at_least_once"), declare("t.once", 5, "at_most_once")]});
    let env = Env::from_pairs([("URL", "http://127.0.0.1:9/"), ("SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]);
    Registry::from_json(&document.to_string(), &env).unwrap()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()));
    let table = Arc::new(SwitchableTable::new(Arc::new(db.table("jobs", clock.clone()))));
    let queue = Arc::new(db.queue(QueueSpec::new("jobs"), clock.clone()));
    let bus = Arc::new(db.bus("bus"));
    let jobs = Jobs::new(table.clone(), queue.clone(), bus.clone(), clock.clone());
    let breakers = keel_jobs::breaker::Breakers::new(table.clone(), clock.clone());
    let flags = keel_flags::store::FlagStore::new(Arc::new(db.table("flags", clock.clone())), clock.clone());
    let gates =
        keel_jobs::gate::Gates::new(Arc::new(keel_flags::store::FlagCache::new(flags, Duration::seconds(5))), "dev");
    Fixture { _dir: dir, clock, table, queue, bus, jobs, breakers, gates, registry: registry() }
}

impl Fixture {
    async fn create(&self, org: &str, job_type: &str) -> keel_jobs::Job {
        self.create_with(org, job_type, NewJob { input: json!({"n": 1}), ..NewJob::default() }).await
    }

    async fn create_with(&self, org: &str, job_type: &str, new: NewJob) -> keel_jobs::Job {
        let job_type = self.registry.get(job_type).unwrap();
        match self.jobs.create(org, "u1", job_type, new, None).await.unwrap() {
            Created::New(job) => job,
            Created::Existing(job) => panic!("deduplicated to {}", job.id),
        }
    }

    async fn read(&self, org: &str, id: &str) -> Versioned {
        self.jobs.get(org, id).await.unwrap().unwrap()
    }

    /// The messages waiting in the queue (received, then made visible again).
    async fn messages(&self) -> Vec<keel_jobs::Message> {
        let mut found = Vec::new();
        loop {
            let batch = self.queue.receive(10, std::time::Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for message in batch {
                found.push(serde_json::from_str(&message.body).unwrap());
                self.queue.delete(&message.receipt).await.unwrap();
            }
        }
        found
    }

    async fn run(&self, org: &str, id: &str, outcome: Outcome) -> Option<Versioned> {
        let job_type = self.registry.get(&self.read(org, id).await.job.job_type).unwrap().clone();
        let claimed = self.jobs.claim(self.read(org, id).await, LEASE, 1, None).await.unwrap();
        let fence = claimed.job.fence;
        let end = AttemptEnd { outcome, downstream_status: Some(200), error: None, output: Some(json!({"ok": true})) };
        self.jobs.end_attempt(claimed, fence, end, &job_type, self.clock.now()).await.unwrap()
    }

    fn event_types(&self) -> Vec<String> {
        self.bus.recorded().unwrap().into_iter().map(|recorded| recorded.event.detail_type).collect()
    }
}

#[tokio::test]
async fn a_job_runs_from_creation_to_completion_in_four_write_requests_with_an_event_per_transition() {
    let f = fixture();
    let job = f.create("o1", "t.fast").await;
    assert_eq!((job.status, job.waiting), (Status::Pending, Some(Waiting::Queued)));
    let messages = f.messages().await;
    assert_eq!(messages, [keel_jobs::Message { org: "o1".into(), job: job.id.clone(), published: 1 }]);

    let done = f.run("o1", &job.id, Outcome::Succeeded).await.unwrap();
    assert_eq!(done.job.status, Status::Completed);
    assert_eq!(done.job.attempts.len(), 1);
    assert_eq!(done.job.attempts[0].outcome, Some(Outcome::Succeeded));
    assert_eq!(f.jobs.output("o1", &job.id).await.unwrap(), Some(json!({"ok": true})));
    assert_eq!(f.event_types(), ["job.created", "job.started", "job.completed"]);
    let ids: Vec<String> =
        f.bus.recorded().unwrap().iter().map(|r| r.event.detail["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [format!("{}.1", job.id), format!("{}.2", job.id), format!("{}.3", job.id)]);
    // Creation, claim and completion (one transaction each), and the mark that the last event is out.
    println!("write requests {}, items written {}", f.table.write_requests(), f.table.items_written());
    assert_eq!(f.table.write_requests(), 4, "items written: {}", f.table.items_written());
    assert!(f.read("o1", &job.id).await.job.outbox.is_empty());
    assert!(f.jobs.feed("o1", None, 10).await.unwrap().0.is_empty(), "the feed serves events a second old");
    f.clock.advance(Duration::seconds(2));
    let (feed, _) = f.jobs.feed("o1", None, 10).await.unwrap();
    let feed_types: Vec<&str> = feed.iter().map(|(_, event)| event.event_type.as_str()).collect();
    assert_eq!(feed_types, ["job.created", "job.started", "job.completed"]);
    assert!(f.jobs.feed("o2", None, 10).await.unwrap().0.is_empty(), "another organization's feed is its own");
}

#[tokio::test]
async fn an_organization_beyond_its_concurrency_waits_while_another_is_queued_at_once() {
    let f = fixture();
    let mut a = Vec::new();
    for _ in 0..5 {
        a.push(f.create("a", "t.fast").await);
    }
    let b = f.create("b", "t.fast").await;
    let waiting: Vec<Option<Waiting>> = a.iter().map(|job| job.waiting).collect();
    let queued = Some(Waiting::Queued);
    let concurrency = Some(Waiting::Concurrency);
    assert_eq!(waiting, [queued, queued, concurrency, concurrency, concurrency]);
    assert_eq!(b.waiting, queued);
    let sent: Vec<String> = f.messages().await.into_iter().map(|m| m.job).collect();
    assert_eq!(sent, [a[0].id.clone(), a[1].id.clone(), b.id.clone()], "only admitted jobs have messages");

    // A finished job hands its slot to the oldest waiting one.
    f.run("a", &a[0].id, Outcome::Succeeded).await.unwrap();
    assert_eq!(f.read("a", &a[2].id).await.job.waiting, queued);
    assert_eq!(f.read("a", &a[3].id).await.job.waiting, concurrency);
    let sent: Vec<String> = f.messages().await.into_iter().map(|m| m.job).collect();
    assert_eq!(sent, [a[2].id.clone()]);
    // Cancelling a waiting job frees nothing and promotes nothing.
    f.jobs.cancel("a", &a[4].id, "u1").await.unwrap();
    assert_eq!(f.read("a", &a[4].id).await.job.status, Status::Cancelled);
    assert!(f.messages().await.is_empty());
    // Cancelling a queued one hands its slot on.
    f.jobs.cancel("a", &a[1].id, "u1").await.unwrap();
    let sent: Vec<String> = f.messages().await.into_iter().map(|m| m.job).collect();
    assert_eq!(sent, [a[3].id.clone()]);
}

#[tokio::test]
async fn a_dedup_key_held_by_an_open_job_returns_that_job_and_is_free_again_once_it_finishes() {
    let f = fixture();
    let job_type = f.registry.get("t.fast").unwrap();
    let new = || NewJob { input: json!({}), dedup_key: Some("order-7".into()), ..NewJob::default() };
    let Created::New(first) = f.jobs.create("o1", "u1", job_type, new(), None).await.unwrap() else { panic!() };
    let again = f.jobs.create("o1", "u2", job_type, new(), None).await.unwrap();
    assert!(matches!(again, Created::Existing(ref held) if held.id == first.id), "{again:?}");
    let elsewhere = f.jobs.create("o2", "u1", job_type, new(), None).await.unwrap();
    assert!(matches!(elsewhere, Created::New(_)), "keys are per organization");
    f.run("o1", &first.id, Outcome::Succeeded).await.unwrap();
    let after = f.jobs.create("o1", "u1", job_type, new(), None).await.unwrap();
    assert!(matches!(after, Created::New(ref job) if job.id != first.id), "{after:?}");
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_record_an_outcome() {
    let f = fixture();
    let job_type = f.registry.get("t.fast").unwrap().clone();
    let job = f.create("o1", "t.fast").await;
    let first = f.jobs.claim(f.read("o1", &job.id).await, LEASE, 1, None).await.unwrap();
    f.clock.advance(LEASE + Duration::seconds(1));
    // The lease ran out: the record says the attempt was lost; a second worker claims with a larger fence.
    let stale = f.read("o1", &job.id).await;
    let lost = AttemptEnd {
        outcome: Outcome::Lost,
        downstream_status: None,
        error: Some("lease expired".into()),
        output: None,
    };
    let pending =
        f.jobs.end_attempt(stale.clone(), stale.job.fence, lost, &job_type, f.clock.now()).await.unwrap().unwrap();
    assert_eq!(pending.job.status, Status::Pending, "at least once: run again");
    let second = f.jobs.claim(pending, LEASE, 1, None).await.unwrap();
    assert!(second.job.fence > first.job.fence);
    assert_eq!(f.jobs.heartbeat("o1", &job.id, first.job.fence, LEASE).await.unwrap(), Beat::Lost);
    let late = AttemptEnd { outcome: Outcome::Succeeded, downstream_status: Some(200), error: None, output: None };
    let recorded = f.jobs.end_attempt(first.clone(), first.job.fence, late, &job_type, f.clock.now()).await.unwrap();
    assert_eq!(recorded, None, "the first worker's outcome is refused");
    let now = f.read("o1", &job.id).await;
    assert_eq!((now.job.status, now.job.attempts.len()), (Status::Processing, 2));
    assert_eq!(now.job.attempts[0].outcome, Some(Outcome::Lost));
}

#[tokio::test]
async fn a_lost_attempt_of_an_at_most_once_type_fails_the_job() {
    let f = fixture();
    let job_type = f.registry.get("t.once").unwrap().clone();
    let job = f.create("o1", "t.once").await;
    let claimed = f.jobs.claim(f.read("o1", &job.id).await, LEASE, 1, None).await.unwrap();
    let lost =
        AttemptEnd { outcome: Outcome::Lost, downstream_status: None, error: Some("worker died".into()), output: None };
    let done =
        f.jobs.end_attempt(claimed.clone(), claimed.job.fence, lost, &job_type, f.clock.now()).await.unwrap().unwrap();
    assert_eq!(done.job.status, Status::Failed);
    assert_eq!(done.job.error.unwrap().code, "attempt_lost");
}

#[tokio::test]
async fn retriable_failures_go_back_to_the_queue_until_attempts_run_out() {
    let f = fixture();
    let job = f.create("o1", "t.fast").await;
    let retry = f.run("o1", &job.id, Outcome::Retriable).await.unwrap();
    assert_eq!((retry.job.status, retry.job.waiting), (Status::Pending, Some(Waiting::Queued)));
    let done = f.run("o1", &job.id, Outcome::Retriable).await.unwrap();
    assert_eq!(done.job.status, Status::Failed);
    assert_eq!(done.job.error.unwrap().code, "attempts_exhausted");
    let failed = f.create("o1", "t.fast").await;
    let done = f.run("o1", &failed.id, Outcome::Failed).await.unwrap();
    assert_eq!((done.job.status, done.job.attempts.len()), (Status::Failed, 1), "no retry of a permanent failure");
    assert_eq!(f.event_types().iter().filter(|t| *t == "job.failed").count(), 2);
}

#[tokio::test]
async fn an_attempt_handed_back_at_shutdown_runs_again_and_does_not_count_against_the_maximum() {
    let f = fixture();
    let job = f.create("o1", "t.fast").await; // two attempts at most
    for _ in 0..3 {
        let back = f.run("o1", &job.id, Outcome::Released).await.unwrap();
        assert_eq!((back.job.status, back.job.waiting), (Status::Pending, Some(Waiting::Queued)));
    }
    let retry = f.run("o1", &job.id, Outcome::Retriable).await.unwrap();
    assert_eq!(retry.job.status, Status::Pending, "three released attempts and one counted: one left");
    let done = f.run("o1", &job.id, Outcome::Retriable).await.unwrap();
    assert_eq!(done.job.status, Status::Failed);
    let outcomes: Vec<Option<Outcome>> = done.job.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes.len(), 5);
    assert_eq!(outcomes[..3], [Some(Outcome::Released); 3]);
}

#[tokio::test]
async fn cancel_ends_a_pending_job_at_once_and_reaches_a_running_one_at_its_heartbeat() {
    let f = fixture();
    let pending = f.create("o1", "t.fast").await;
    let cancelled = f.jobs.cancel("o1", &pending.id, "u9").await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(matches!(f.jobs.cancel("o1", &pending.id, "u9").await, Err(JobsError::Conflict(_))));
    assert!(matches!(f.jobs.cancel("o2", &pending.id, "u9").await, Err(JobsError::NotFound)));

    let running = f.create("o1", "t.fast").await;
    let claimed = f.jobs.claim(f.read("o1", &running.id).await, LEASE, 1, None).await.unwrap();
    let asked = f.jobs.cancel("o1", &running.id, "u9").await.unwrap();
    assert_eq!(
        (asked.status, asked.cancel_requested.as_ref().map(|c| c.by.as_str())),
        (Status::Processing, Some("u9"))
    );
    let Beat::Cancel(read) = f.jobs.heartbeat("o1", &running.id, claimed.job.fence, LEASE).await.unwrap() else {
        panic!("the heartbeat sees the cancel")
    };
    let Versioned { job, version } = *read;
    let job_type = f.registry.get("t.fast").unwrap().clone();
    let end = AttemptEnd { outcome: Outcome::Cancelled, downstream_status: None, error: None, output: None };
    let fence = job.fence;
    let done =
        f.jobs.end_attempt(Versioned { job, version }, fence, end, &job_type, f.clock.now()).await.unwrap().unwrap();
    assert_eq!(done.job.status, Status::Cancelled);
    assert_eq!(done.job.error.unwrap().message, "cancelled by u9");

    // Each creation and each cancel request is audited once, by its actor, in the organization's trail; the
    // refused cancel and the worker's own ending of the running job are not.
    let page =
        keel::table::Table::query(f.table.as_ref(), &keel::table::Query::partition("AUDIT#ORG#o1")).await.unwrap();
    let trail: Vec<(String, String, String)> = page
        .items
        .iter()
        .map(|item| keel::audit::AuditEntry::from_item(item).unwrap())
        .map(|e| (e.actor, e.action, e.resource))
        .collect();
    let job = |id: &str| format!("job:{id}");
    assert_eq!(
        trail,
        [
            ("u1".into(), "jobs.job.create".into(), job(&pending.id)),
            ("u9".into(), "jobs.job.cancel".into(), job(&pending.id)),
            ("u1".into(), "jobs.job.create".into(), job(&running.id)),
            ("u9".into(), "jobs.job.cancel".into(), job(&running.id)),
        ]
    );
}

#[tokio::test]
async fn heartbeats_extend_the_lease_only_when_half_of_it_is_gone() {
    let f = fixture();
    let job = f.create("o1", "t.fast").await;
    let claimed = f.jobs.claim(f.read("o1", &job.id).await, LEASE, 1, None).await.unwrap();
    let before = f.table.write_requests();
    assert_eq!(
        f.jobs.heartbeat("o1", &job.id, claimed.job.fence, LEASE).await.unwrap(),
        Beat::Continue { version: claimed.version, lease_until: claimed.job.lease_until.unwrap() }
    );
    assert_eq!(f.table.write_requests(), before, "a fresh lease is not rewritten");
    f.clock.advance(Duration::seconds(20));
    let Beat::Continue { version, .. } = f.jobs.heartbeat("o1", &job.id, claimed.job.fence, LEASE).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(version, claimed.version + 1);
    assert_eq!(f.read("o1", &job.id).await.job.lease_until, Some(f.clock.now() + LEASE));
}

#[tokio::test]
async fn the_sweeper_admits_scheduled_jobs_when_due_and_resends_lost_messages() {
    let f = fixture();
    let later = f.clock.now() + Duration::days(200);
    let scheduled =
        f.create_with("o1", "t.fast", NewJob { input: json!({}), run_at: Some(later), ..NewJob::default() }).await;
    assert_eq!(scheduled.waiting, Some(Waiting::Scheduled));
    let queued = f.create("o1", "t.fast").await;
    assert_eq!(f.messages().await.len(), 1, "the queued job's message, now lost");

    let swept = f.jobs.sweep(&f.registry, &f.breakers, &f.gates).await.unwrap();
    assert_eq!((swept.open, swept.admitted, swept.resent), (2, 0, 0));
    f.clock.advance(RESEND_AFTER + Duration::seconds(1));
    let swept = f.jobs.sweep(&f.registry, &f.breakers, &f.gates).await.unwrap();
    assert_eq!(swept.resent, 1);
    assert_eq!(f.messages().await.into_iter().map(|m| m.job).collect::<Vec<_>>(), [queued.id.as_str()]);

    f.clock.set(later);
    let swept = f.jobs.sweep(&f.registry, &f.breakers, &f.gates).await.unwrap();
    assert_eq!(swept.admitted, 1);
    assert_eq!(f.read("o1", &scheduled.id).await.job.waiting, Some(Waiting::Queued));
    f.run("o1", &queued.id, Outcome::Succeeded).await.unwrap();
    let swept = f.jobs.sweep(&f.registry, &f.breakers, &f.gates).await.unwrap();
    assert_eq!(swept.open, 1, "the finished job left the index in its own transaction");
}

#[tokio::test]
async fn listing_filters_and_pages_newest_first_within_the_organization() {
    let f = fixture();
    let mut ids = Vec::new();
    for i in 0..5 {
        f.clock.advance(Duration::seconds(1));
        let job_type = if i % 2 == 0 { "t.fast" } else { "t.once" };
        ids.push(f.create("o1", job_type).await.id);
    }
    f.create("o2", "t.fast").await;
    let page = f.jobs.list("o1", &Filter::default(), None, 2).await.unwrap();
    assert_eq!(page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), [ids[4].clone(), ids[3].clone()]);
    let rest = f.jobs.list("o1", &Filter::default(), page.next, 10).await.unwrap();
    assert_eq!(rest.jobs.len(), 3);
    let once = Filter { job_type: Some("t.once".into()), ..Filter::default() };
    assert_eq!(f.jobs.list("o1", &once, None, 10).await.unwrap().jobs.len(), 2);
    let start = f.read("o1", &ids[2]).await.job.created_at;
    let recent = Filter { created_from: Some(start), ..Filter::default() };
    assert_eq!(f.jobs.list("o1", &recent, None, 10).await.unwrap().jobs.len(), 3);
    assert_eq!(f.jobs.list("o2", &Filter::default(), None, 10).await.unwrap().jobs.len(), 1);
}

/// A bus that fails while switched off.
struct SwitchableBus {
    inner: Arc<EmbeddedBus>,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl keel::bus::EventBus for SwitchableBus {
    async fn put(&self, events: &[keel::bus::BusEvent]) -> Result<(), keel::port::PortError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(keel::port::PortError::Unavailable("switched off".into()));
        }
        self.inner.put(events).await
    }
    async fn ping(&self) -> Result<(), keel::port::PortError> {
        Ok(())
    }
}

#[tokio::test]
async fn an_event_whose_publish_failed_stays_in_the_outbox_and_goes_out_with_the_next_transition() {
    let f = fixture();
    let bus = Arc::new(SwitchableBus { inner: f.bus.clone(), down: true.into() });
    let jobs = Jobs::new(f.table.clone(), f.queue.clone(), bus.clone(), f.clock.clone());
    let job_type = f.registry.get("t.fast").unwrap().clone();
    let Created::New(job) =
        jobs.create("o1", "u1", &job_type, NewJob { input: json!({}), ..NewJob::default() }, None).await.unwrap()
    else {
        panic!()
    };
    let message: keel_jobs::Message = f.messages().await.pop().unwrap();
    assert_eq!(message.published, 0, "the message says the creation event is not out");
    let claimed = jobs.claim(f.read("o1", &job.id).await, LEASE, message.published, None).await.unwrap();
    let stored = f.read("o1", &job.id).await.job.outbox;
    assert_eq!(
        stored.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        [format!("{}.1", job.id), format!("{}.2", job.id)]
    );
    bus.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let end = AttemptEnd { outcome: Outcome::Succeeded, downstream_status: Some(200), error: None, output: None };
    let fence = claimed.job.fence;
    jobs.end_attempt(claimed, fence, end, &job_type, f.clock.now()).await.unwrap().unwrap();
    assert_eq!(f.event_types(), ["job.created", "job.started", "job.completed"], "each once, in order");
}

#[tokio::test]
async fn a_domain_event_is_published_once_per_id_and_joins_the_feed() {
    let f = fixture();
    let (event, new) =
        f.jobs.domain_event("o1", Some("order-9".into()), "order.placed", json!({"total": 5})).await.unwrap();
    assert!(new);
    let (again, new_again) =
        f.jobs.domain_event("o1", Some("order-9".into()), "order.placed", json!({"total": 6})).await.unwrap();
    assert_eq!((again.clone(), new_again), (event.clone(), false), "the first one, not the repeat's data");
    let recorded = f.bus.recorded().unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].event.source.as_str(), recorded[0].event.detail_type.as_str()),
        ("keel.events", "order.placed")
    );
    assert_eq!(recorded[0].event.detail["org_id"], "o1");
    let (other, new_elsewhere) =
        f.jobs.domain_event("o2", Some("order-9".into()), "order.placed", json!({})).await.unwrap();
    assert!(new_elsewhere && other.org_id == "o2", "ids are per organization");
    f.clock.advance(Duration::seconds(2));
    let feed = f.jobs.feed("o1", None, 10).await.unwrap().0;
    assert_eq!(feed.iter().map(|(_, e)| e.id.as_str()).collect::<Vec<_>>(), ["order-9"]);
}

#[tokio::test]
async fn a_domain_event_whose_publish_failed_is_published_by_its_repeat() {
    let f = fixture();
    let bus = Arc::new(SwitchableBus { inner: f.bus.clone(), down: true.into() });
    let jobs = Jobs::new(f.table.clone(), f.queue.clone(), bus.clone(), f.clock.clone());
    assert!(jobs.domain_event("o1", Some("e1".into()), "order.placed", json!({})).await.is_err());
    assert!(f.bus.recorded().unwrap().is_empty());
    bus.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (_, new) = jobs.domain_event("o1", Some("e1".into()), "order.placed", json!({})).await.unwrap();
    assert!(!new);
    jobs.domain_event("o1", Some("e1".into()), "order.placed", json!({})).await.unwrap();
    assert_eq!(f.bus.recorded().unwrap().len(), 1, "published by the first repeat, not again by the second");
}

/// Every item a job's creation writes (beyond its organization's concurrency, so one waits; with dedup keys; its
/// events on the feed) is declared exactly once in the data map.
#[tokio::test]
async fn every_item_a_job_writes_is_declared_once_in_the_data_map() {
    let f = fixture();
    for n in 0..3 {
        f.create_with("o1", "t.fast", NewJob { dedup_key: Some(format!("k{n}")), ..NewJob::default() }).await;
    }
    let received = f.queue.receive(10, std::time::Duration::ZERO).await.unwrap();
    assert!(!received.is_empty());
    let db = EmbeddedDb::open(f._dir.path()).unwrap();
    let keys = db.table("jobs", f.clock.clone()).keys().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for key in &keys {
        let entries = keel::datamap::classify(keel_jobs::datamap::ENTRIES, keel_jobs::datamap::TABLE_VAR, key);
        assert_eq!(entries.len(), 1, "{key:?} matches {:?}", entries.iter().map(|e| e.name).collect::<Vec<_>>());
        seen.insert(entries[0].name);
    }
    let kinds = ["jobs.job", "jobs.owner", "jobs.open", "jobs.slots", "jobs.wait", "jobs.dedup", "jobs.feed_event"];
    for kind in kinds.into_iter().chain(["jobs.audit", "jobs.audit_index"]) {
        assert!(seen.contains(kind), "{kind} not written: {seen:?}");
    }
}
