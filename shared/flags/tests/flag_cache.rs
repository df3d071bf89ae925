//! The flag store and its cache on the embedded backend: writes are versioned and audited, the cache reloads only
//! when the revision changes, serves the last good snapshot while the store is down, fails closed without one,
//! and flushes evaluation times without a write per evaluation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{Duration, TimeZone, Utc};
use keel::clock::{Clock, ManualClock};
use keel::table::Table;
use keel::testing::SwitchableTable;
use keel_embedded::EmbeddedDb;
use keel_flags::store::{FlagCache, FlagStore, StoreError};
use keel_flags::{Context, Flag, Reason};
use std::sync::Arc;

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    table: Arc<SwitchableTable>,
    store: FlagStore,
    /// The same table through another table object, as another process (another Lambda function) writes it.
    elsewhere: FlagStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()));
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let inner: Arc<dyn Table> = Arc::new(db.table("flags", clock.clone()));
    let table = Arc::new(SwitchableTable::new(inner.clone()));
    let store = FlagStore::new(table.clone(), clock.clone());
    let elsewhere = FlagStore::new(inner, clock.clone());
    Fixture { _dir: dir, clock, table, store, elsewhere }
}

fn on_flag(key: &str) -> Flag {
    let mut flag = Flag::new(key);
    flag.default_value = true;
    flag
}

fn org(id: &str) -> Context {
    Context { organization_id: Some(id.into()), ..Context::default() }
}

#[tokio::test]
async fn writes_are_versioned_and_audited_in_the_same_transaction() {
    let f = fixture();
    let created = f.store.create(on_flag("checkout"), "alice").await.unwrap();
    assert_eq!((created.version, created.updated_by.as_str()), (1, "alice"));
    assert!(matches!(f.store.create(on_flag("checkout"), "bob").await, Err(StoreError::AlreadyExists)));

    let updated = f.store.update("checkout", Some(1), "bob", "update", |flag| {
        flag.description = "new checkout".into();
        Ok(())
    });
    assert_eq!(updated.await.unwrap().version, 2);
    let stale = f.store.update("checkout", Some(1), "carol", "update", |_| Ok(())).await;
    assert!(matches!(stale, Err(StoreError::VersionMismatch { current: 2 })));
    let invalid = f.store.update("checkout", None, "carol", "update", |flag| {
        flag.rules.push(keel_flags::Rule {
            id: "r".into(),
            constraints: vec![],
            segments: vec![],
            rollout: Some(keel_flags::Rollout { percentage: 101.0, stickiness: Default::default(), group_id: None }),
            variants: vec![],
            starts_at: None,
            ends_at: None,
            disabled: false,
        });
        Ok(())
    });
    match invalid.await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].pointer, "/rules/0/rollout/percentage"),
        other => panic!("expected Invalid, got {other:?}"),
    }

    let (all, _) = f.store.audit(None, None, 100).await.unwrap();
    let (mine, _) = f.store.audit(Some("flag:checkout"), None, 100).await.unwrap();
    assert_eq!(all.len(), 2, "one entry per change, none for refused ones");
    assert_eq!(mine, all);
    assert_eq!((all[0].actor.as_str(), all[0].action.as_str()), ("bob", "update"));
    assert_eq!(all[0].before.as_ref().unwrap()["version"], 1);
    assert_eq!(all[0].after.as_ref().unwrap()["description"], "new checkout");
    assert_eq!((all[1].action.as_str(), all[1].before.is_none()), ("create", true));
}

#[tokio::test]
async fn the_cache_reloads_only_when_the_revision_changes() {
    let f = fixture();
    f.store.create(on_flag("a"), "alice").await.unwrap();
    let cache = FlagCache::new(f.store.clone(), Duration::seconds(10));
    let served = cache.current().await;
    assert!(served.snapshot.as_ref().unwrap().evaluate("a", &org("o"), f.clock.now()).value);

    // Within the refresh interval: no reads at all.
    let (gets, queries) = (f.table.gets(), f.table.queries());
    cache.current().await;
    f.clock.advance(Duration::seconds(9));
    cache.current().await;
    assert_eq!(f.table.gets(), gets);

    // Due, unchanged: one read of the revision, no query.
    f.clock.advance(Duration::seconds(1));
    cache.current().await;
    assert_eq!(f.table.gets(), gets + 1);
    assert_eq!(f.table.queries(), queries);

    // A change made elsewhere is invisible until the next check, then visible.
    f.elsewhere
        .update("a", None, "alice", "update", |flag| {
            flag.enabled = false;
            Ok(())
        })
        .await
        .unwrap();
    let snapshot = cache.current().await.snapshot.unwrap();
    assert!(snapshot.evaluate("a", &org("o"), f.clock.now()).value);
    f.clock.advance(Duration::seconds(10));
    let snapshot = cache.current().await.snapshot.unwrap();
    let answer = snapshot.evaluate("a", &org("o"), f.clock.now());
    assert_eq!((answer.value, answer.reason, answer.version), (false, Reason::Killed, 2));
}

#[tokio::test]
async fn a_write_through_the_same_table_in_this_process_is_visible_to_the_next_request() {
    // keel-local runs the admin API and evaluation in one process on one table object.
    let f = fixture();
    let cache = FlagCache::new(f.store.clone(), Duration::seconds(30));
    assert!(cache.current().await.snapshot.unwrap().is_empty());
    let admin = FlagStore::new(f.table.clone(), f.clock.clone());
    admin.create(on_flag("fresh"), "alice").await.unwrap();
    let answer = cache.current().await.snapshot.unwrap().evaluate("fresh", &org("o"), f.clock.now()).value;
    assert!(answer, "visible without waiting for the refresh period");

    // Once seen, the interval holds again: no further reads until it passes.
    let gets = f.table.gets();
    cache.current().await;
    assert_eq!(f.table.gets(), gets);
}

#[tokio::test]
async fn a_refresh_interval_above_30_seconds_is_capped() {
    let f = fixture();
    let cache = FlagCache::new(f.store.clone(), Duration::seconds(300));
    cache.current().await;
    f.elsewhere.create(on_flag("late"), "alice").await.unwrap();
    assert!(cache.current().await.snapshot.unwrap().evaluate("late", &org("o"), f.clock.now()).error.is_some());
    f.clock.advance(Duration::seconds(30));
    let snapshot = cache.current().await.snapshot.unwrap();
    assert!(snapshot.evaluate("late", &org("o"), f.clock.now()).value, "visible within 30 s");
}

#[tokio::test]
async fn a_failing_store_keeps_the_last_good_snapshot_and_says_so() {
    let f = fixture();
    f.store.create(on_flag("a"), "alice").await.unwrap();
    let cache = FlagCache::new(f.store.clone(), Duration::seconds(5));
    assert!(!cache.current().await.stale);

    f.table.set_down(true);
    f.clock.advance(Duration::seconds(5));
    let served = cache.current().await;
    assert!(served.stale);
    assert!(served.snapshot.unwrap().evaluate("a", &org("o"), f.clock.now()).value, "last good snapshot");

    f.table.set_down(false);
    f.clock.advance(Duration::seconds(5));
    assert!(!cache.current().await.stale, "recovers on the next check");
}

#[tokio::test]
async fn without_any_snapshot_flags_fail_closed() {
    let f = fixture();
    f.store.create(on_flag("a"), "alice").await.unwrap();
    f.table.set_down(true);
    let cache = FlagCache::new(f.store.clone(), Duration::seconds(5));
    let served = cache.current().await;
    assert!(served.snapshot.is_none() && served.stale);
    // The next request tries again at once rather than waiting out the interval.
    f.table.set_down(false);
    assert!(cache.current().await.snapshot.is_some());
}

#[tokio::test]
async fn evaluation_times_are_flushed_once_per_interval_not_per_evaluation() {
    let f = fixture();
    f.store.create(on_flag("a"), "alice").await.unwrap();
    f.store.create(on_flag("b"), "alice").await.unwrap();
    let cache = FlagCache::new(f.store.clone(), Duration::seconds(10));
    cache.current().await;
    let puts = f.table.puts();
    for _ in 0..1000 {
        cache.note_evaluated(["a", "b"]);
    }
    assert_eq!(f.table.puts(), puts, "noting writes nothing");
    f.clock.advance(Duration::seconds(10));
    cache.current().await;
    assert_eq!(f.table.puts(), puts + 2, "one write per flag at the flush");
    let usage = f.store.usage().await.unwrap();
    assert_eq!(usage.keys().collect::<Vec<_>>(), ["a", "b"]);

    // Within a minute of the last flush, nothing more is written.
    cache.note_evaluated(["a"]);
    f.clock.advance(Duration::seconds(10));
    cache.current().await;
    assert_eq!(f.table.puts(), puts + 2);
    f.clock.advance(Duration::seconds(50));
    cache.current().await;
    assert_eq!(f.table.puts(), puts + 3);
}

#[tokio::test]
async fn a_refresh_compiles_only_what_changed() {
    let f = fixture();
    for key in ["a", "b", "c", "d"] {
        f.store.create(on_flag(key), "alice").await.unwrap();
    }
    let segment = |value: &str| keel_flags::Segment {
        name: "beta".into(),
        description: String::new(),
        constraints: vec![keel_flags::Constraint {
            field: "organizationId".into(),
            operator: keel_flags::Operator::In,
            values: vec![value.into()],
            inverted: false,
            case_insensitive: false,
        }],
    };
    f.store.put_segment(segment("o1"), None, "alice").await.unwrap();
    let mut uses_segment = Flag::new("s");
    uses_segment.rules = vec![keel_flags::Rule {
        id: "r".into(),
        constraints: vec![],
        segments: vec!["beta".into()],
        rollout: None,
        variants: vec![],
        starts_at: None,
        ends_at: None,
        disabled: false,
    }];
    f.store.create(uses_segment, "alice").await.unwrap();

    let (_, first, counts) = f.store.reload(&keel_flags::Snapshot::default()).await.unwrap();
    assert_eq!((counts.reused, counts.compiled), (0, 5));

    // One flag changes: only it is decoded and compiled; the others keep their compiled form.
    f.store
        .update("b", None, "alice", "update", |flag| {
            flag.enabled = false;
            Ok(())
        })
        .await
        .unwrap();
    let (_, second, counts) = f.store.reload(&first).await.unwrap();
    assert_eq!((counts.reused, counts.compiled), (4, 1));
    assert_eq!(second.evaluate("b", &org("o1"), f.clock.now()).reason, Reason::Killed);
    assert!(second.evaluate("a", &org("o1"), f.clock.now()).value);

    // A segment changes: the flags that use segments are compiled again, with the new segment.
    assert!(second.evaluate("s", &org("o1"), f.clock.now()).value);
    f.store.put_segment(segment("o2"), Some(1), "alice").await.unwrap();
    let (_, third, counts) = f.store.reload(&second).await.unwrap();
    assert_eq!((counts.reused, counts.compiled), (4, 1));
    assert!(!third.evaluate("s", &org("o1"), f.clock.now()).value);
    assert!(third.evaluate("s", &org("o2"), f.clock.now()).value);

    // A flag archived since leaves the snapshot; nothing else is recompiled.
    f.store
        .update("c", None, "alice", "archive", |flag| {
            flag.archived = true;
            Ok(())
        })
        .await
        .unwrap();
    let (_, fourth, counts) = f.store.reload(&third).await.unwrap();
    assert_eq!((fourth.len(), counts.reused, counts.compiled), (4, 4, 1));
    // ... and is not decoded again while it stays archived.
    let (_, fifth, counts) = f.store.reload(&fourth).await.unwrap();
    assert_eq!((fifth.len(), counts.reused, counts.compiled), (4, 5, 0));
    assert_eq!(fifth.evaluate("c", &org("o1"), f.clock.now()).reason, Reason::FlagNotFound);
}

#[tokio::test]
async fn a_refresh_drops_a_flag_removed_from_the_table_by_hand() {
    let f = fixture();
    for key in ["a", "b"] {
        f.store.create(on_flag(key), "alice").await.unwrap();
    }
    let (_, first, _) = f.store.reload(&keel_flags::Snapshot::default()).await.unwrap();
    f.table.delete(&keel::table::Key::new("FLAG", "b"), keel::table::Expect::Any).await.unwrap();
    let (_, second, counts) = f.store.reload(&first).await.unwrap();
    assert_eq!((second.keys(), counts.reused, counts.compiled), (vec!["a"], 1, 0));
}

#[tokio::test]
async fn evaluations_per_flag_are_counted_in_memory_and_written_with_the_flush() {
    let sink = Arc::new(keel::metrics::Prometheus::default());
    assert!(keel::metrics::install(sink.clone()), "this test process's first sink");
    let f = fixture();
    f.store.create(on_flag("a"), "alice").await.unwrap();
    let cache = FlagCache::new(f.store.clone(), Duration::seconds(10));
    keel::metrics::scope("flags-eval", cache.current()).await;
    for _ in 0..7 {
        cache.note_evaluated(["a", "b"]);
    }
    cache.note_evaluated(["a"]);
    assert!(!sink.render().contains("flag_evaluations"), "nothing before the flush");
    f.clock.advance(Duration::seconds(10));
    keel::metrics::scope("flags-eval", cache.current()).await;
    let text = sink.render();
    assert!(text.contains("keel_flag_evaluations_total{function=\"flags-eval\",flag=\"a\"} 8\n"), "{text}");
    assert!(text.contains("keel_flag_evaluations_total{function=\"flags-eval\",flag=\"b\"} 7\n"), "{text}");
}

/// Every item the flag store writes (a flag, its audit entries, a segment, the revision, evaluation times) is
/// declared exactly once in the flags table's entries of the data map.
#[tokio::test]
async fn every_item_the_store_writes_is_declared_once_in_the_data_map() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()));
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let table = db.table("flags", clock.clone());
    let store = FlagStore::new(Arc::new(table.clone()), clock.clone());
    let mut flag = on_flag("checkout");
    flag.target_users = vec!["u-1".into()];
    store.create(flag, "alice").await.unwrap();
    let segment = keel_flags::model::Segment { name: "beta".into(), description: String::new(), constraints: vec![] };
    store.put_segment(segment, None, "alice").await.unwrap();
    store.record_usage(&[("checkout".to_string(), clock.now())].into_iter().collect()).await.unwrap();

    let keys = table.keys().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for key in &keys {
        let entries = keel::datamap::classify(keel_flags::datamap::ENTRIES, "FLAGS_TABLE", key);
        assert_eq!(entries.len(), 1, "{key:?} matches {:?}", entries.iter().map(|e| e.name).collect::<Vec<_>>());
        seen.insert(entries[0].name);
    }
    let declared: std::collections::BTreeSet<&str> = keel_flags::datamap::ENTRIES.iter().map(|e| e.name).collect();
    assert_eq!(seen, declared, "every declared kind is written by something ({keys:?})");
}

/// The store keeps a flag's document without its empty lists and nulls; the flag reads back whole, and a document
/// written with every field (as before) reads the same.
#[tokio::test]
async fn flags_are_stored_compact_and_read_back_whole() {
    use keel::table::{Expect, Item, Key};
    let f = fixture();
    let mut flag = on_flag("checkout");
    flag.allow_orgs = vec!["org-a".into()];
    let created = f.store.create(flag, "alice").await.unwrap();
    let item = f.table.get(&Key::new("FLAG", "checkout")).await.unwrap().unwrap();
    let stored = &item.attrs["flag"];
    assert_eq!(stored["allow_orgs"], serde_json::json!(["org-a"]));
    for absent in ["rules", "variants", "block_orgs", "target_users", "overrides", "prerequisites", "environments"] {
        assert!(stored.get(absent).is_none(), "{absent} is stored: {stored}");
    }
    assert_eq!(f.store.get("checkout").await.unwrap().unwrap(), created);

    // The full form, as a flag written before stored documents were compact.
    let mut full = item.clone();
    full.attrs.insert("flag".into(), serde_json::to_value(&created).unwrap());
    f.table.put(Item { version: item.version + 1, ..full }, Expect::Version(item.version)).await.unwrap();
    assert_eq!(f.store.get("checkout").await.unwrap().unwrap(), created);
    let (_, snapshot) = f.store.load().await.unwrap();
    assert!(snapshot.evaluate("checkout", &org("org-a"), f.clock.now()).value);
}

/// The size cap is on the full document (the API's, and each audit entry's before and after), not on the smaller
/// stored one: a flag under the cap only once compacted is refused, as it was before documents were compacted.
#[tokio::test]
async fn the_size_cap_is_on_the_full_document() {
    use keel_flags::store::MAX_FLAG_BYTES;
    use keel_flags::{Rule, Variant};
    let f = fixture();
    let mut flag = on_flag("big");
    flag.rules = (0..100)
        .map(|i| Rule {
            id: format!("r{i}"),
            constraints: vec![],
            segments: vec![],
            rollout: None,
            variants: (0..30)
                .map(|j| Variant { name: format!("v{j}"), weight: 1, payload: None, overrides: vec![] })
                .collect(),
            starts_at: None,
            ends_at: None,
            disabled: false,
        })
        .collect();
    let full = serde_json::to_vec(&flag).unwrap().len();
    let stored = serde_json::to_vec(&flag.stored_document().unwrap()).unwrap().len();
    assert!(stored < MAX_FLAG_BYTES && full > MAX_FLAG_BYTES, "{stored} stored, {full} in full");
    match f.store.create(flag.clone(), "alice").await {
        Err(StoreError::Invalid(errors)) => assert!(errors[0].message.contains("at most"), "{errors:?}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    flag.rules.truncate(50);
    f.store.create(flag, "alice").await.unwrap();
}
