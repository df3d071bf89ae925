//! The scheduled cleanups on the embedded backend: each removes exactly what has expired (and what it goes with),
//! a second run finds nothing, a run cut short resumes where it stopped without removing anything twice, a failing
//! backend is recorded and the next run finishes, and a schedule naming no cleanup fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use keel::cleanup::{Cleanup, Runs};
use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::object::ObjectStore;
use keel::resources::{Resources, StaticResources};
use keel::table::{Expect, Item, Query, Table, Write};
use keel::testing::SwitchableTable;
use keel_embedded::EmbeddedDb;
use keel_webhooks::{Delivery, Status};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    webhooks: Arc<SwitchableTable>,
    directory: Arc<dyn Table>,
    flags: keel_flags::store::FlagStore,
    objects: Arc<dyn ObjectStore>,
    maintenance: maintenance::Maintenance,
    env: Env,
    resources: StaticResources,
}

fn now() -> DateTime<Utc> {
    "2026-12-03T12:00:00Z".parse().unwrap()
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(now()));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let webhooks = Arc::new(SwitchableTable::new(Arc::new(db.table("WebhooksTable", dyn_clock.clone()))));
    let directory: Arc<dyn Table> = Arc::new(db.table("DirectoryTable", dyn_clock.clone()));
    let flags_table: Arc<dyn Table> = Arc::new(db.table("FlagsTable", dyn_clock.clone()));
    let objects: Arc<dyn ObjectStore> =
        Arc::new(db.objects("ExportBucket", "http://127.0.0.1:9", dyn_clock.clone()).unwrap());
    let jobs_table: Arc<dyn Table> = Arc::new(db.table("JobsTable", dyn_clock.clone()));
    let resources = StaticResources::new(dyn_clock.clone())
        .with_table("JOBS_TABLE", jobs_table.clone())
        .with_table("IDEMPOTENCY_TABLE", Arc::new(db.table("IdempotencyTable", dyn_clock.clone())))
        .with_queue("JOB_QUEUE_URL", Arc::new(db.queue(keel_embedded::QueueSpec::new("JobQueue"), dyn_clock.clone())))
        .with_bus("EVENT_BUS_NAME", Arc::new(db.bus("EventBus")))
        .with_table("WEBHOOKS_TABLE", webhooks.clone())
        .with_table("DIRECTORY_TABLE", directory.clone())
        .with_table("FLAGS_TABLE", flags_table.clone())
        .with_objects("EXPORT_BUCKET", objects.clone());
    let env = Env::from_pairs([("WEBHOOK_PROVIDERS", "acme, beta")]);
    let maintenance = maintenance::build(&env, &resources).unwrap();
    World {
        _dir: dir,
        flags: keel_flags::store::FlagStore::new(flags_table, dyn_clock),
        clock,
        webhooks,
        directory,
        objects,
        maintenance,
        env,
        resources,
    }
}

impl World {
    /// A delivery received at `at`, with its idempotency record, as ingest writes them.
    async fn delivery(&self, provider: &str, at: DateTime<Utc>, n: usize) -> Delivery {
        let delivery = Delivery {
            provider: provider.into(),
            delivery_id: keel::clock::ulid_at(at).to_string(),
            event_id: format!("evt_{n}"),
            event_type: "invoice.paid".into(),
            status: Status::Completed,
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
            content_type: None,
            trace_header: None,
            payload_removed_at: None,
        };
        let mut idempotency =
            Item::new(keel_webhooks::idempotency_key(provider, &delivery.event_id), Default::default());
        // As ingest writes it: naming its delivery.
        idempotency.attrs.insert("delivery_id".into(), delivery.delivery_id.clone().into());
        idempotency.expires_at = Some(at + keel_webhooks::IDEMPOTENCY_WINDOW);
        let writes = vec![
            Write::Put { item: delivery.to_item(1), expect: Expect::Absent },
            Write::Put { item: idempotency, expect: Expect::Absent },
        ];
        self.webhooks.transact(writes).await.unwrap();
        delivery
    }

    /// Every delivery record of `provider`, expired ones included.
    async fn log(&self, provider: &str) -> Vec<String> {
        let mut query =
            Query { expired: true, limit: 1000, ..Query::partition(keel_webhooks::log_partition(provider)) };
        let mut all = Vec::new();
        loop {
            let page = self.webhooks.query(&query).await.unwrap();
            all.extend(page.items.into_iter().map(|i| i.key.sk));
            match page.next {
                Some(next) => query.after = Some(next),
                None => return all,
            }
        }
    }

    async fn idempotency_left(&self, provider: &str, event: &str) -> bool {
        let key = keel_webhooks::idempotency_key(provider, event);
        let query = Query { expired: true, ..Query::partition(key.pk) };
        !self.webhooks.query(&query).await.unwrap().items.is_empty()
    }

    async fn run(&self, cleanup: &str) -> keel::cleanup::CleanupRun {
        self.maintenance.run(&json!({ "cleanup": cleanup }), now() + Duration::minutes(5)).await.unwrap()
    }

    async fn bundle(&self, at: DateTime<Utc>) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"zip").unwrap();
        let key = format!("exports/{}.zip", keel::clock::ulid_at(at));
        self.objects.put_file(&key, file.path(), "application/zip").await.unwrap();
        key
    }
}

#[tokio::test]
async fn each_cleanup_removes_exactly_what_has_expired_and_a_second_run_finds_nothing() {
    let w = world();
    let (old, fresh) = (now() - Duration::days(8), now() - Duration::days(6));
    for n in 0..150 {
        w.delivery("acme", old + Duration::seconds(n), n as usize).await;
    }
    let kept = w.delivery("acme", fresh, 1000).await;
    w.delivery("beta", old, 2000).await;
    let unlisted = w.delivery("gamma", old, 3000).await;
    // An event that came again once its first delivery's record expired: the record is the later delivery's.
    w.delivery("beta", old - Duration::minutes(1), 4000).await;
    let again = w.delivery("beta", fresh, 4000).await;

    let run = w.run("webhooks.deliveries").await;
    assert_eq!((run.removed, run.complete, run.error.as_deref()), (152, true, None));
    assert_eq!(w.log("acme").await, [kept.delivery_id]);
    assert_eq!(w.log("beta").await, std::slice::from_ref(&again.delivery_id));
    assert!(w.idempotency_left("beta", "evt_4000").await, "the later delivery's record stays");
    assert!(!w.idempotency_left("acme", "evt_3").await, "gone with its delivery");
    assert!(w.idempotency_left("acme", "evt_1000").await, "the fresh one's stays");
    assert_eq!(w.log("gamma").await, [unlisted.delivery_id], "a provider not listed is not cleaned");
    assert_eq!(w.run("webhooks.deliveries").await.removed, 0, "idempotent");

    // Overrides past their end go, through the flag store and its audit trail.
    let flag = serde_json::from_value(json!({"key": "f", "overrides": [
        {"org_id": "o1", "action": {"type": "forced_on"}, "reason": "trial", "expires_at": now() - Duration::hours(1)},
        {"org_id": "o2", "action": {"type": "forced_off"}, "reason": "incident", "expires_at": now() + Duration::days(1)},
        {"org_id": "o3", "action": {"type": "forced_on"}, "reason": "forever"},
    ]}))
    .unwrap();
    w.flags.create(flag, "admin").await.unwrap();
    w.flags.create(serde_json::from_value(json!({"key": "g"})).unwrap(), "admin").await.unwrap();
    let run = w.run("flags.overrides").await;
    assert_eq!((run.removed, run.complete), (1, true));
    let left: Vec<String> = w.flags.get("f").await.unwrap().unwrap().overrides.into_iter().map(|o| o.org_id).collect();
    assert_eq!(left, ["o2", "o3"]);
    let (trail, _) = w.flags.audit(Some("flag:f"), None, 10).await.unwrap();
    assert_eq!((trail[0].actor.as_str(), trail[0].action.as_str()), (keel_flags::store::CLEANER, "expire_overrides"));
    assert_eq!(w.flags.get("g").await.unwrap().unwrap().version, 1, "a flag without expired overrides is untouched");
    // A flag the store would no longer accept (its prerequisite archived since) keeps its expired overrides, and
    // the run goes on to the others.
    let expiring = |org: &str| {
        json!({"org_id": org, "action": {"type": "forced_on"}, "reason": "trial",
        "expires_at": now() - Duration::minutes(1)})
    };
    w.flags.create(serde_json::from_value(json!({"key": "b"})).unwrap(), "admin").await.unwrap();
    let dependent = json!({"key": "a", "prerequisites": [{"flag": "b"}], "overrides": [expiring("o4")]});
    w.flags.create(serde_json::from_value(dependent).unwrap(), "admin").await.unwrap();
    let later = json!({"key": "z", "overrides": [expiring("o5")]});
    w.flags.create(serde_json::from_value(later).unwrap(), "admin").await.unwrap();
    w.flags
        .update("b", None, "admin", "archive", |f| {
            f.archived = true;
            Ok(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let run = w.run("flags.overrides").await;
    assert_eq!((run.removed, run.complete, run.error.as_deref()), (1, true, None), "{run:?}");
    assert!(w.flags.get("z").await.unwrap().unwrap().overrides.is_empty());
    assert_eq!(w.run("flags.overrides").await.removed, 0);

    // Bundles older than seven days go; a younger one and anything else in the bucket stay.
    let gone = w.bundle(now() - Duration::days(7) - Duration::minutes(1)).await;
    let young = w.bundle(now() - Duration::days(6)).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    w.objects.put_file("other/thing.txt", file.path(), "text/plain").await.unwrap();
    w.objects.put_file("exports/0.zip", file.path(), "application/zip").await.unwrap();
    let run = w.run("gdpr.export_bundles").await;
    assert_eq!((run.removed, run.complete), (1, true));
    assert!(w.objects.head(&gone).await.unwrap().is_none());
    assert!(w.objects.head(&young).await.unwrap().is_some());
    assert!(w.objects.head("other/thing.txt").await.unwrap().is_some());
    assert!(w.objects.head("exports/0.zip").await.unwrap().is_some(), "not a bundle's key");
    assert_eq!(w.run("gdpr.export_bundles").await.removed, 0);

    // Every run is recorded, newest first, under one data-map entry with the cursor.
    let runs = Runs(w.directory.clone());
    let recorded = runs.latest("webhooks.deliveries", 10).await.unwrap();
    assert_eq!(recorded.iter().map(|r| r.removed).collect::<Vec<_>>(), [0, 152]);
    let map = keel_gdpr::datamap::data_map();
    for sk in [recorded[0].id.as_str(), "CURSOR"] {
        let key = keel::table::Key::new("CLEANUP#webhooks.deliveries", sk);
        assert!(w.directory.get(&key).await.unwrap().is_some(), "{key:?}");
        assert_eq!(keel::datamap::classify(&map, keel::cleanup::TABLE_VAR, &key).len(), 1, "{key:?}");
    }
}

#[tokio::test]
async fn a_run_cut_short_resumes_where_it_stopped_and_removes_nothing_twice() {
    let w = world();
    let old = now() - Duration::days(8);
    for n in 0..250 {
        w.delivery(if n % 5 == 0 { "beta" } else { "acme" }, old + Duration::seconds(n), n as usize).await;
    }
    let cleanups = maintenance::cleanups(&w.env, &w.resources).unwrap();
    let deliveries: &dyn Cleanup = cleanups.iter().find(|c| c.name() == "webhooks.deliveries").unwrap().as_ref();
    let runs = Runs(w.directory.clone());
    // Asked to stop at the 101st check (one a delivery): 100 done.
    let checks = AtomicUsize::new(0);
    let stop = || checks.fetch_add(1, Ordering::SeqCst) >= 100;
    let first = runs.run(deliveries, now(), &stop, w.clock.as_ref()).await.unwrap();
    assert_eq!((first.removed, first.complete), (100, false));
    assert!(runs.cursor("webhooks.deliveries").await.unwrap().unwrap().starts_with("acme/"));
    let rest = runs.run(deliveries, now(), &|| false, w.clock.as_ref()).await.unwrap();
    assert_eq!((rest.removed, rest.complete), (150, true), "the other 100 of acme and beta's 50, once each");
    assert!(w.log("acme").await.is_empty() && w.log("beta").await.is_empty());
    assert_eq!(runs.cursor("webhooks.deliveries").await.unwrap(), None);

    // The deadline does the same through the function: with no time left, it stops before the first page.
    w.delivery("acme", old, 9999).await;
    let run = w.maintenance.run(&json!({"cleanup": "webhooks.deliveries"}), now()).await.unwrap();
    assert_eq!((run.removed, run.complete), (0, false));
    assert_eq!(w.run("webhooks.deliveries").await.removed, 1);
}

#[tokio::test]
async fn a_failing_backend_is_recorded_and_the_next_run_finishes() {
    use keel::function::ScheduledFunction;
    let w = world();
    for n in 0..3 {
        w.delivery("acme", now() - Duration::days(9), n).await;
    }
    w.webhooks.set_down(true);
    let event = json!({"cleanup": "webhooks.deliveries"});
    let invocation = keel::function::Invocation {
        request_id: "r1".into(),
        deadline: now() + Duration::minutes(5),
        trace_header: None,
        stop: Default::default(),
    };
    let failed = w.maintenance.call(event.clone(), invocation.clone()).await.unwrap_err();
    assert!(failed.contains("webhooks.deliveries"), "{failed}");
    let runs = Runs(w.directory.clone());
    let recorded = &runs.latest("webhooks.deliveries", 1).await.unwrap()[0];
    assert!(!recorded.complete && recorded.error.is_some(), "{recorded:?}");
    w.webhooks.set_down(false);
    w.maintenance.call(event, invocation).await.unwrap();
    assert!(w.log("acme").await.is_empty());
    assert_eq!(runs.latest("webhooks.deliveries", 1).await.unwrap()[0].removed, 3);
}

#[tokio::test]
async fn a_schedule_must_name_a_cleanup_and_every_cleanup_is_listed() {
    let w = world();
    for input in [json!({}), json!({"cleanup": 3}), json!("webhooks.deliveries")] {
        assert!(matches!(w.maintenance.run(&input, now()).await, Err(maintenance::MaintenanceError::NoCleanup(_))));
    }
    assert!(matches!(
        w.maintenance.run(&json!({"cleanup": "nope"}), now()).await,
        Err(maintenance::MaintenanceError::Unknown(_))
    ));
    let names: Vec<&str> = maintenance::cleanups(&w.env, &w.resources).unwrap().iter().map(|c| c.name()).collect();
    assert_eq!(names, keel_gdpr::CLEANUPS, "what GET /v1/admin/cleanups lists");
    let bad = Env::from_pairs([("WEBHOOK_PROVIDERS", "Acme!")]);
    assert!(maintenance::build(&bad, &w.resources).is_err());
}

#[tokio::test]
async fn payloads_go_after_a_day_and_the_records_stay_until_their_week_is_over() {
    let w = world();
    let day_old = w.delivery("acme", now() - Duration::hours(25), 1).await;
    let busy_at = now() - Duration::hours(26);
    let mut busy = w.delivery("beta", busy_at, 2).await;
    let fresh = w.delivery("acme", now() - Duration::hours(23), 3).await;
    // A worker holds beta's delivery right now: its pass stops there, for the next run.
    busy.status = Status::Processing;
    busy.lease_until = Some(now() + Duration::minutes(1));
    w.webhooks.put(busy.to_item(2), Expect::Version(1)).await.unwrap();

    let run = w.run("webhooks.payloads").await;
    assert_eq!((run.removed, run.complete), (1, false), "{run:?}");
    let read = |d: &Delivery| {
        let key = d.key();
        let table = w.webhooks.clone();
        async move { Delivery::from_item(&table.get(&key).await.unwrap().unwrap()).unwrap() }
    };
    let stripped = read(&day_old).await;
    assert_eq!((stripped.body_base64.as_str(), stripped.payload_removed_at), ("", Some(now())));
    assert_eq!(stripped.status, day_old.status, "the record stays as it was");
    assert!(!read(&fresh).await.body_base64.is_empty(), "under a day old");
    assert!(!read(&busy).await.body_base64.is_empty(), "held by a worker");

    // The worker let go: the next run takes it, and reads nothing before its watermarks again.
    busy.status = Status::Failed;
    busy.lease_until = None;
    w.webhooks.put(busy.to_item(3), Expect::Version(2)).await.unwrap();
    let run = w.run("webhooks.payloads").await;
    assert_eq!((run.removed, run.complete), (1, true));
    assert!(read(&busy).await.payload_removed_at.is_some());
    let cursor = Runs(w.directory.clone()).cursor("webhooks.payloads").await.unwrap().unwrap();
    let marks: serde_json::Value = serde_json::from_str(&cursor).unwrap();
    assert_eq!(
        (marks["acme"].as_str(), marks["beta"].as_str()),
        (Some(day_old.delivery_id.as_str()), Some(busy.delivery_id.as_str()))
    );
    assert_eq!(w.run("webhooks.payloads").await.removed, 0);
    // A day later the fresh one's goes too; its week later, the records.
    w.clock.advance(Duration::days(1));
    let later = now() + Duration::days(1);
    assert_eq!(
        w.maintenance
            .run(&json!({"cleanup": "webhooks.payloads"}), later + Duration::minutes(5))
            .await
            .unwrap()
            .removed,
        1
    );
    let replay = keel_webhooks::replay(w.webhooks.as_ref(), &NoQueue, later, read(&fresh).await, 2).await.unwrap();
    assert_eq!(replay, keel_webhooks::Replay::PayloadRemoved, "nothing to replay");
}

/// A queue that must not be used.
struct NoQueue;

#[async_trait::async_trait]
impl keel::queue::Queue for NoQueue {
    fn name(&self) -> &str {
        "none"
    }
    async fn send(&self, _: &str, _: &keel::queue::MessageAttrs) -> Result<String, keel::port::PortError> {
        panic!("nothing is sent")
    }
    async fn receive(
        &self,
        _: usize,
        _: std::time::Duration,
    ) -> Result<Vec<keel::queue::Received>, keel::port::PortError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &str) -> Result<(), keel::port::PortError> {
        Ok(())
    }
    async fn change_visibility(&self, _: &str, _: std::time::Duration) -> Result<(), keel::port::PortError> {
        Ok(())
    }
    async fn depth(&self) -> Result<u64, keel::port::PortError> {
        Ok(0)
    }
    async fn ping(&self) -> Result<(), keel::port::PortError> {
        Ok(())
    }
}

#[tokio::test]
async fn finished_jobs_go_a_month_after_they_finished_and_nothing_else_does() {
    let w = world();
    let jobs = keel_jobs::Jobs::new(
        w.resources.table("JOBS_TABLE").unwrap(),
        w.resources.queue("JOB_QUEUE_URL").unwrap(),
        w.resources.bus("EVENT_BUS_NAME").unwrap(),
        w.clock.clone(),
    );
    let env = Env::from_pairs([("JOB_URL_CACHE", "http://127.0.0.1:9/cache")]);
    let registry = keel_jobs::Registry::sample_unsigned(&env).unwrap();
    let job_type = registry.get("cache.warm").unwrap();
    let create = |prefix: &str| {
        let new = keel_jobs::NewJob {
            job_type: "cache.warm".into(),
            input: json!({ "prefix": prefix }),
            ..keel_jobs::NewJob::default()
        };
        let jobs = &jobs;
        async move {
            match jobs.create("o1", "ann", job_type, new, None).await.unwrap() {
                keel_jobs::Created::New(job) => job,
                other => panic!("{other:?}"),
            }
        }
    };
    let finish = |id: String| {
        let jobs = &jobs;
        async move {
            let current = jobs.get("o1", &id).await.unwrap().unwrap();
            jobs.finish(current, keel_jobs::Status::Completed, None, Some(json!({"warmed": 1}))).await.unwrap();
        }
    };
    w.clock.set(now() - Duration::days(40));
    let waiting = create("never-finished").await;
    w.clock.set(now() - Duration::days(32));
    let old = create("old").await;
    finish(old.id.clone()).await;
    w.clock.set(now() - Duration::days(29));
    let young = create("young").await;
    finish(young.id.clone()).await;
    w.clock.set(now());

    let run = w.run("jobs.finished").await;
    assert_eq!((run.removed, run.complete), (1, true), "{run:?}");
    let stored = |id: &str| {
        let table = w.resources.table("JOBS_TABLE").unwrap();
        let id = id.to_string();
        async move {
            let query = Query { expired: true, ..Query::partition(keel_jobs::job::job_partition("o1")) };
            let page = table.query(&query).await.unwrap();
            page.items.iter().any(|i| i.key.sk == id)
        }
    };
    assert!(!stored(&old.id).await, "finished 32 days ago: gone");
    assert!(jobs.output("o1", &old.id).await.unwrap().is_none() && jobs.owner(&old.id).await.unwrap().is_none());
    assert!(stored(&young.id).await, "finished 29 days ago: kept");
    assert!(stored(&waiting.id).await, "never finished: kept");
    assert_eq!(w.run("jobs.finished").await.removed, 0);
    let cursor = Runs(w.directory.clone()).cursor("jobs.finished").await.unwrap().unwrap();
    let expected = (now() - Duration::days(30)).format("%Y-%m-%d").to_string();
    assert_eq!(cursor, format!("{expected}#0"), "a watermark: the next run reads only days come due since");
    // Two days on, the young one is due.
    w.clock.set(now() + Duration::days(2));
    let input = json!({"cleanup": "jobs.finished"});
    let later = w.maintenance.run(&input, now() + Duration::days(2) + Duration::minutes(5)).await.unwrap();
    assert_eq!(later.removed, 1);
    assert!(!stored(&young.id).await);
}

#[tokio::test]
async fn feed_events_go_after_a_day_in_every_organization_that_has_a_feed() {
    let w = world();
    let jobs = keel_jobs::Jobs::new(
        w.resources.table("JOBS_TABLE").unwrap(),
        w.resources.queue("JOB_QUEUE_URL").unwrap(),
        w.resources.bus("EVENT_BUS_NAME").unwrap(),
        w.clock.clone(),
    );
    // What the feed's partition holds, expired events included (every other read hides them).
    let held = |org: &'static str| {
        let table = w.resources.table("JOBS_TABLE").unwrap();
        async move {
            let query =
                Query { expired: true, limit: 1000, ..Query::partition(keel_jobs::events::feed_partition(org)) };
            let page = table.query(&query).await.unwrap();
            page.items.iter().filter_map(keel_jobs::events::FeedEvent::from_item).map(|e| e.id).collect::<Vec<_>>()
        }
    };
    // A day and a half ago: 60 domain events in one organization, 3 in another; an hour ago, one more in each.
    w.clock.set(now() - Duration::hours(36));
    for n in 0..60 {
        jobs.domain_event("o1", Some(format!("old-{n}")), "thing.happened", json!({})).await.unwrap();
    }
    for n in 0..3 {
        jobs.domain_event("o2", Some(format!("old-{n}")), "thing.happened", json!({})).await.unwrap();
    }
    w.clock.set(now() - Duration::hours(1));
    jobs.domain_event("o1", Some("fresh".into()), "thing.happened", json!({})).await.unwrap();
    jobs.domain_event("o2", Some("fresh".into()), "thing.happened", json!({})).await.unwrap();
    w.clock.set(now());
    assert_eq!(held("o1").await.len(), 61, "expired, hidden, but there");

    let run = w.run("jobs.feed").await;
    assert_eq!((run.removed, run.complete), (63, true), "{run:?}");
    assert_eq!(held("o1").await, ["fresh"]);
    assert_eq!(held("o2").await, ["fresh"]);
    assert_eq!(w.run("jobs.feed").await.removed, 0);
    let map = keel_gdpr::datamap::data_map();
    let listed = keel_jobs::events::FEED_ORGS.key("o1");
    assert_eq!(keel::datamap::classify(&map, "JOBS_TABLE", &listed).len(), 1, "declared");
}
