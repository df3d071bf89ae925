//! The port contracts, written once and run against both adapters: each case below is a generic async function
//! over `Arc<dyn Table>` / `Arc<dyn Queue>` / `Arc<dyn EventBus>` / `Arc<dyn ObjectStore>`, and `against_both!` runs it twice, against the
//! AWS adapter on the moto emulator (`table::aws::...`) and against the embedded adapter (`table::embedded::...`).
//!
//! Needs the emulator once: `bash infra/bootstrap.sh`. Then `cargo nextest run -p keel-aws --test contract`.
//! Every test makes its own resources (unique names, or its own database directory), so they run in parallel.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration as TimeDelta, Utc};
use keel::bus::{BusEvent, EventBus, EventPattern};
use keel::clock::{Clock, ManualClock, SystemClock};
use keel::object::{MAX_LINK_VALIDITY, ObjectStore, check_key};
use keel::port::PortError;
use keel::queue::{MAX_MESSAGE_BYTES, MessageAttrs, Queue, Received};
use keel::table::{
    Attrs, Expect, Item, Key, MAX_TRANSACTION_WRITES, Page, Query, Table, Write, check_attrs, check_transaction,
};
use keel_aws::provision::{
    ensure_bucket, ensure_bus, ensure_queue, ensure_rule_to_queue, ensure_table, event_pattern_json,
};
use keel_aws::testing::{Emulator, unique_name};
use keel_aws::{DynamoTable, EventBridgeBus, S3Objects, SqsQueue};
use keel_embedded::{EmbeddedDb, QueueSpec};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// Runs each listed case against both adapters, as `$suite::aws::$case` and `$suite::embedded::$case`.
macro_rules! against_both {
    ($suite:ident, $aws:ident, $embedded:ident: $($case:ident),+ $(,)?) => {
        mod $suite {
            mod aws {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        crate::$case(crate::$aws().await).await;
                    }
                )+
            }
            mod embedded {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        crate::$case(crate::$embedded().await).await;
                    }
                )+
            }
        }
    };
}

against_both!(table, aws_table, embedded_table:
    conditional_writes,
    attributes_round_trip,
    delete_with_expectations,
    query_ranges,
    pagination_visits_every_item_once,
    transactions_are_all_or_nothing,
    invalid_input_is_rejected_identically,
    expired_items_are_invisible_and_absent,
);

against_both!(queue, aws_queue, embedded_queue:
    send_receive_delete,
    redelivery_after_the_visibility_timeout,
    change_visibility_makes_a_message_visible_again,
    dead_letter_after_max_receive_count,
    message_attributes_round_trip,
    oversize_and_malformed_messages_are_rejected,
);

against_both!(bus, aws_bus, embedded_bus:
    matching_events_are_routed_and_others_not,
    large_batches_are_published_whole,
    invalid_events_publish_nothing,
);

against_both!(objects, aws_objects, embedded_objects:
    objects_round_trip_and_replace,
    absent_objects_read_as_none_and_delete_twice,
    listings_follow_key_order_and_cursors,
    links_serve_the_object,
    large_files_stream_through,
    invalid_keys_and_arguments_are_rejected_identically,
);

// ---------------------------------------------------------------------------------------------------------------
// Fixtures

/// A table whose expiry is judged by a clock the test moves.
struct TableFixture {
    table: Arc<dyn Table>,
    clock: Arc<ManualClock>,
    _dir: Option<TempDir>,
}

fn manual_clock() -> Arc<ManualClock> {
    // Whole seconds, like the stored expiry.
    let now = DateTime::<Utc>::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    Arc::new(ManualClock::new(now))
}

async fn aws_table() -> TableFixture {
    let config = Emulator::shared().sdk_config();
    let client = aws_sdk_dynamodb::Client::new(&config);
    let name = unique_name("contract");
    ensure_table(&client, &name).await.unwrap();
    // Idempotent: a second call reuses the table.
    ensure_table(&client, &name).await.unwrap();
    let clock = manual_clock();
    let table = DynamoTable::new(client, name, clock.clone() as Arc<dyn Clock>);
    TableFixture { table: Arc::new(table), clock, _dir: None }
}

async fn embedded_table() -> TableFixture {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock = manual_clock();
    let table = db.table("contract", clock.clone() as Arc<dyn Clock>);
    TableFixture { table: Arc::new(table), clock, _dir: Some(dir) }
}

/// A queue with a 1 s visibility timeout that redrives to `dlq` after 2 receives; the DLQ's visibility is 30 s.
struct QueueFixture {
    queue: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    name: String,
    _dir: Option<TempDir>,
}

const VISIBILITY: Duration = Duration::from_secs(1);
const MAX_RECEIVES: u32 = 2;

async fn aws_queue() -> QueueFixture {
    let config = Emulator::shared().sdk_config();
    let client = aws_sdk_sqs::Client::new(&config);
    let name = unique_name("contract");
    let dlq_name = format!("{name}-dlq");
    let (dlq_url, dlq_arn) = ensure_queue(&client, &dlq_name, 30, None).await.unwrap();
    let redrive = Some((dlq_arn.as_str(), MAX_RECEIVES));
    let (url, _) = ensure_queue(&client, &name, 1, redrive).await.unwrap();
    // Idempotent, also when the attributes change back and forth.
    let (again, _) = ensure_queue(&client, &name, 5, redrive).await.unwrap();
    assert_eq!(again, url);
    ensure_queue(&client, &name, 1, redrive).await.unwrap();
    QueueFixture {
        queue: Arc::new(SqsQueue::new(client.clone(), url)),
        dlq: Arc::new(SqsQueue::new(client, dlq_url)),
        name,
        _dir: None,
    }
}

async fn embedded_queue() -> QueueFixture {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let name = "contract".to_string();
    let dlq_name = format!("{name}-dlq");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut dlq_spec = QueueSpec::new(&dlq_name);
    dlq_spec.visibility_timeout = Duration::from_secs(30);
    let mut spec = QueueSpec::new(&name);
    spec.visibility_timeout = VISIBILITY;
    spec.max_receive_count = Some(MAX_RECEIVES);
    spec.dead_letter_queue = Some(dlq_name);
    QueueFixture {
        queue: Arc::new(db.queue(spec, clock.clone())),
        dlq: Arc::new(db.queue(dlq_spec, clock)),
        name,
        _dir: Some(dir),
    }
}

/// A bus with one rule routing `pattern()` to `target`.
struct BusFixture {
    bus: Arc<dyn EventBus>,
    target: Arc<dyn Queue>,
    _dir: Option<TempDir>,
}

const SOURCE: &str = "keel.contract";

fn pattern() -> EventPattern {
    EventPattern { sources: vec![SOURCE.into()], detail_types: vec!["job.completed".into(), "audit.*".into()] }
}

async fn aws_bus() -> BusFixture {
    let config = Emulator::shared().sdk_config();
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let name = unique_name("contract");
    ensure_bus(&eventbridge, &name).await.unwrap();
    ensure_bus(&eventbridge, &name).await.unwrap();
    let (url, arn) = ensure_queue(&sqs, &format!("{name}-target"), 30, None).await.unwrap();
    let rule = format!("{name}-rule");
    let pattern = event_pattern_json(&pattern());
    ensure_rule_to_queue(&eventbridge, &sqs, &name, &rule, &pattern, &url, &arn).await.unwrap();
    ensure_rule_to_queue(&eventbridge, &sqs, &name, &rule, &pattern, &url, &arn).await.unwrap();
    BusFixture {
        bus: Arc::new(EventBridgeBus::new(eventbridge, name)),
        target: Arc::new(SqsQueue::new(sqs, url)),
        _dir: None,
    }
}

async fn embedded_bus() -> BusFixture {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let target: Arc<dyn Queue> = Arc::new(db.queue(QueueSpec::new("contract-target"), Arc::new(SystemClock)));
    let bus = db.bus("contract");
    bus.add_rule(pattern(), target.clone());
    BusFixture { bus: Arc::new(bus), target, _dir: Some(dir) }
}

/// An object store, and a scratch directory for the files the test uploads.
struct ObjectsFixture {
    store: Arc<dyn ObjectStore>,
    scratch: TempDir,
    /// The embedded store's link server, stopped when the fixture is dropped.
    _server: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<TempDir>,
}

impl ObjectsFixture {
    /// A file holding `bytes`, to upload.
    fn file(&self, bytes: &[u8]) -> std::path::PathBuf {
        let path = self.scratch.path().join(ulid::Ulid::new().to_string());
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for ObjectsFixture {
    fn drop(&mut self) {
        if let Some(server) = &self._server {
            server.abort();
        }
    }
}

async fn aws_objects() -> ObjectsFixture {
    let client = keel_aws::s3::s3_client(&Emulator::shared().sdk_config());
    let bucket = unique_name("contract");
    ensure_bucket(&client, &bucket).await.unwrap();
    ensure_bucket(&client, &bucket).await.unwrap();
    let store = Arc::new(S3Objects::new(client, bucket));
    ObjectsFixture { store, scratch: tempfile::tempdir().unwrap(), _server: None, _dir: None }
}

/// The embedded store with a server for its links, as the local host serves them: 404 for a missing object,
/// 403 for any other refusal.
async fn embedded_objects() -> ObjectsFixture {
    use axum::extract::{Path as UrlPath, RawQuery, State};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use keel_embedded::{EmbeddedObjects, LinkRefused};
    use std::collections::HashMap;

    async fn serve(
        State(store): State<EmbeddedObjects>,
        UrlPath(key): UrlPath<String>,
        RawQuery(query): RawQuery,
    ) -> Response {
        let query: HashMap<&str, &str> =
            query.as_deref().unwrap_or("").split('&').filter_map(|pair| pair.split_once('=')).collect();
        let param = |name: &str| query.get(name).copied().unwrap_or("");
        match store.open_link(&key, param("expires"), param("signature")).await {
            Ok(file) => {
                let body = std::fs::read(&file.path).unwrap();
                ([(header::CONTENT_TYPE, file.content_type)], body).into_response()
            }
            Err(LinkRefused::Missing) => StatusCode::NOT_FOUND.into_response(),
            Err(_) => StatusCode::FORBIDDEN.into_response(),
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/objects", listener.local_addr().unwrap());
    let store = db.objects("contract", &base, Arc::new(SystemClock)).unwrap();
    let app = axum::Router::new().route("/objects/{*key}", axum::routing::get(serve)).with_state(store.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    ObjectsFixture {
        store: Arc::new(store),
        scratch: tempfile::tempdir().unwrap(),
        _server: Some(server),
        _dir: Some(dir),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn attrs(value: Value) -> Attrs {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn item(pk: &str, sk: &str, version: u64, value: Value) -> Item {
    Item { key: Key::new(pk, sk), attrs: attrs(value), version, expires_at: None }
}

fn condition_failed(result: Result<(), PortError>) -> Option<usize> {
    match result {
        Err(PortError::ConditionFailed { index }) => index,
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, PortError>) -> String {
    match result {
        Err(PortError::Invalid(message)) => message,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn sks(page: &Page) -> Vec<&str> {
    page.items.iter().map(|i| i.key.sk.as_str()).collect()
}

fn range(pk: &str, from: Option<&str>, to: Option<&str>, descending: bool) -> Query {
    Query { sk_from: from.map(Into::into), sk_to: to.map(Into::into), descending, ..Query::partition(pk) }
}

/// Follows cursors to the end, checking each page's size; returns every sort key in order.
async fn drain(table: &dyn Table, mut query: Query) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..200 {
        let page = table.query(&query).await.unwrap();
        assert!(page.items.len() <= query.limit, "a page holds at most `limit` items");
        seen.extend(page.items.iter().map(|i| i.key.sk.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return seen,
        }
    }
    panic!("pagination did not end");
}

/// Receives until `count` messages arrived (or `within` passed), deleting each.
async fn collect(queue: &dyn Queue, count: usize, within: Duration) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < count && tokio::time::Instant::now() < deadline {
        for message in queue.receive(10, Duration::from_secs(1)).await.unwrap() {
            queue.delete(&message.receipt).await.unwrap();
            got.push(message);
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------------------------
// Table

async fn conditional_writes(f: TableFixture) {
    let t = f.table;
    t.ping().await.unwrap();
    let key = Key::new("org#1", "flag#a");
    assert_eq!(t.get(&key).await.unwrap(), None);

    let first = item("org#1", "flag#a", 1, json!({"on": true}));
    t.put(first.clone(), Expect::Absent).await.unwrap();
    assert_eq!(t.get(&key).await.unwrap(), Some(first.clone()));

    // Absent on an existing item.
    let rival = item("org#1", "flag#a", 1, json!({"on": false}));
    assert_eq!(condition_failed(t.put(rival, Expect::Absent).await), None);
    // Version mismatch.
    let stale = item("org#1", "flag#a", 3, json!({"on": false}));
    assert_eq!(condition_failed(t.put(stale, Expect::Version(2)).await), None);
    assert_eq!(t.get(&key).await.unwrap(), Some(first));

    // Version match: the caller bumps the version.
    let second = item("org#1", "flag#a", 2, json!({"on": false, "note": "flipped"}));
    t.put(second.clone(), Expect::Version(1)).await.unwrap();
    assert_eq!(t.get(&key).await.unwrap(), Some(second));
    assert_eq!(condition_failed(t.put(item("org#1", "flag#a", 2, json!({})), Expect::Version(1)).await), None);

    // Any overwrites whatever is there.
    let forced = item("org#1", "flag#a", 10, json!({}));
    t.put(forced.clone(), Expect::Any).await.unwrap();
    assert_eq!(t.get(&key).await.unwrap(), Some(forced));

    // A version expectation on a missing item fails; Any creates it.
    assert_eq!(condition_failed(t.put(item("org#1", "flag#b", 2, json!({})), Expect::Version(1)).await), None);
    assert_eq!(t.get(&Key::new("org#1", "flag#b")).await.unwrap(), None);
    t.put(item("org#1", "flag#b", 1, json!({})), Expect::Any).await.unwrap();
    assert!(t.get(&Key::new("org#1", "flag#b")).await.unwrap().is_some());
}

async fn attributes_round_trip(f: TableFixture) {
    let t = f.table;
    let value = json!({
        "text": "grüß dich 🚀",
        "empty": "",
        "int": 42,
        "negative": -7,
        "big": 9_007_199_254_740_993_u64,
        "fraction": 1.5,
        "yes": true,
        "nothing": null,
        "list": [1, "two", false, null, {"three": 3}],
        "empty_list": [],
        "nested": {"deeper": {"deepest": ["x"]}, "empty": {}},
    });
    let mut stored = item("org#1", "doc#1", 4, value);
    stored.expires_at = Some(f.clock.now() + TimeDelta::days(30));
    t.put(stored.clone(), Expect::Absent).await.unwrap();
    assert_eq!(t.get(&stored.key).await.unwrap(), Some(stored.clone()));
    let page = t.query(&Query::partition("org#1")).await.unwrap();
    assert_eq!(page.items, vec![stored]);
}

async fn delete_with_expectations(f: TableFixture) {
    let t = f.table;
    let key = Key::new("org#1", "user#1");
    t.put(item("org#1", "user#1", 1, json!({"name": "Ada"})), Expect::Absent).await.unwrap();

    assert_eq!(condition_failed(t.delete(&key, Expect::Version(2)).await), None);
    assert_eq!(condition_failed(t.delete(&key, Expect::Absent).await), None);
    assert!(t.get(&key).await.unwrap().is_some(), "a failed delete removes nothing");

    t.delete(&key, Expect::Version(1)).await.unwrap();
    assert_eq!(t.get(&key).await.unwrap(), None);

    // On a missing item: Any and Absent succeed, a version fails.
    t.delete(&key, Expect::Any).await.unwrap();
    t.delete(&key, Expect::Absent).await.unwrap();
    assert_eq!(condition_failed(t.delete(&key, Expect::Version(1)).await), None);
}

async fn query_ranges(f: TableFixture) {
    let t = f.table;
    for sk in ["c", "a", "e", "b", "d"] {
        t.put(item("P", sk, 1, json!({ "name": sk })), Expect::Absent).await.unwrap();
    }
    // Neighbouring partitions, one whose key extends "P", must never leak in.
    t.put(item("PP", "a", 1, json!({})), Expect::Absent).await.unwrap();
    t.put(item("O", "z", 1, json!({})), Expect::Absent).await.unwrap();

    let all = t.query(&Query::partition("P")).await.unwrap();
    assert_eq!(sks(&all), ["a", "b", "c", "d", "e"]);
    assert_eq!(all.next, None);
    assert_eq!(all.items[2].attrs["name"], json!("c"));

    let both = t.query(&range("P", Some("b"), Some("d"), false)).await.unwrap();
    assert_eq!(sks(&both), ["b", "c", "d"], "bounds are inclusive");
    let both_desc = t.query(&range("P", Some("b"), Some("d"), true)).await.unwrap();
    assert_eq!(sks(&both_desc), ["d", "c", "b"]);
    assert_eq!(sks(&t.query(&range("P", Some("c"), None, false)).await.unwrap()), ["c", "d", "e"]);
    assert_eq!(sks(&t.query(&range("P", None, Some("b"), true)).await.unwrap()), ["b", "a"]);
    assert_eq!(sks(&t.query(&range("P", Some("bb"), Some("cc"), false)).await.unwrap()), ["c"]);
    assert!(t.query(&range("P", Some("d"), Some("b"), false)).await.unwrap().items.is_empty());
    assert!(t.query(&range("P", Some("f"), None, false)).await.unwrap().items.is_empty());
    assert!(t.query(&Query::partition("nobody")).await.unwrap().items.is_empty());

    // A cursor starts strictly after itself, in the query's direction, and stays within the bounds.
    let after = |after: &str, descending: bool| Query {
        after: Some(after.into()),
        ..range("P", Some("b"), Some("d"), descending)
    };
    assert_eq!(sks(&t.query(&after("b", false)).await.unwrap()), ["c", "d"]);
    assert_eq!(sks(&t.query(&after("a", false)).await.unwrap()), ["b", "c", "d"]);
    assert!(t.query(&after("d", false)).await.unwrap().items.is_empty());
    assert_eq!(sks(&t.query(&after("c", true)).await.unwrap()), ["b"]);
    assert_eq!(sks(&t.query(&after("z", true)).await.unwrap()), ["d", "c", "b"]);
    assert!(t.query(&after("b", true)).await.unwrap().items.is_empty());
}

async fn pagination_visits_every_item_once(f: TableFixture) {
    let t = f.table;
    let now = f.clock.now();
    let mut live = Vec::new();
    for i in 0..23 {
        let sk = format!("item#{i:02}");
        t.put(item("P", &sk, 1, json!({ "i": i })), Expect::Absent).await.unwrap();
        live.push(sk);
        if i % 5 == 2 {
            // Expired items among the live ones: skipped, without breaking the cursor.
            let mut gone = item("P", &format!("item#{i:02}~expired"), 1, json!({}));
            gone.expires_at = Some(now - TimeDelta::seconds(5));
            t.put(gone, Expect::Any).await.unwrap();
        }
    }
    let mut descending = live.clone();
    descending.reverse();
    for limit in [1, 2, 4, 7, 23, 100] {
        let query = Query { limit, ..Query::partition("P") };
        assert_eq!(drain(&*t, query.clone()).await, live, "ascending, limit {limit}");
        assert_eq!(drain(&*t, Query { descending: true, ..query }).await, descending, "descending, limit {limit}");
    }
    let bounded = Query { limit: 3, ..range("P", Some("item#05"), Some("item#15"), false) };
    let expected: Vec<String> = (5..=15).map(|i| format!("item#{i:02}")).collect();
    assert_eq!(drain(&*t, bounded.clone()).await, expected);
    let seen: HashSet<String> = drain(&*t, Query { descending: true, ..bounded }).await.into_iter().collect();
    assert_eq!(seen, expected.into_iter().collect());
}

async fn transactions_are_all_or_nothing(f: TableFixture) {
    let t = f.table;
    let x = item("T", "x", 1, json!({"n": 1}));
    let y = item("T", "y", 1, json!({"n": 1}));
    let z = item("T", "z", 1, json!({"n": 1}));
    for existing in [&x, &y, &z] {
        t.put(existing.clone(), Expect::Absent).await.unwrap();
    }
    let a = item("T", "a", 1, json!({"n": 1}));
    let b = item("T", "b", 1, json!({"n": 1}));

    // One failing check: nothing is written, and the failing write is named.
    let failing = vec![
        Write::Put { item: a.clone(), expect: Expect::Absent },
        Write::Put { item: b.clone(), expect: Expect::Any },
        Write::Check { key: x.key.clone(), expect: Expect::Version(2) },
        Write::Delete { key: y.key.clone(), expect: Expect::Any },
        Write::Put { item: item("T", "z", 2, json!({"n": 2})), expect: Expect::Version(1) },
    ];
    assert_eq!(condition_failed(t.transact(failing).await), Some(2));
    assert_eq!(t.get(&a.key).await.unwrap(), None);
    assert_eq!(t.get(&b.key).await.unwrap(), None);
    assert_eq!(t.get(&y.key).await.unwrap(), Some(y.clone()));
    assert_eq!(t.get(&z.key).await.unwrap(), Some(z.clone()));

    // Several failing: the first is named.
    let two_failing = vec![
        Write::Put { item: a.clone(), expect: Expect::Absent },
        Write::Put { item: item("T", "x", 2, json!({})), expect: Expect::Absent },
        Write::Check { key: y.key.clone(), expect: Expect::Absent },
    ];
    assert_eq!(condition_failed(t.transact(two_failing).await), Some(1));
    assert_eq!(t.get(&a.key).await.unwrap(), None);

    // All holding: everything happens.
    let x2 = item("T", "x", 2, json!({"n": 2}));
    let succeeding = vec![
        Write::Put { item: a.clone(), expect: Expect::Absent },
        Write::Put { item: x2.clone(), expect: Expect::Version(1) },
        Write::Check { key: y.key.clone(), expect: Expect::Version(1) },
        Write::Check { key: Key::new("T", "nothing"), expect: Expect::Any },
        Write::Delete { key: z.key.clone(), expect: Expect::Version(1) },
    ];
    t.transact(succeeding).await.unwrap();
    assert_eq!(t.get(&a.key).await.unwrap(), Some(a));
    assert_eq!(t.get(&x.key).await.unwrap(), Some(x2));
    assert_eq!(t.get(&y.key).await.unwrap(), Some(y));
    assert_eq!(t.get(&z.key).await.unwrap(), None);
}

async fn invalid_input_is_rejected_identically(f: TableFixture) {
    let t = f.table;
    // Reserved attribute names: the same error as the shared check, and nothing written.
    for reserved in ["pk", "sk", "version", "expires_at"] {
        let bad = item("V", "reserved", 1, json!({ reserved: "x" }));
        let expected = check_attrs(&bad.attrs).unwrap_err();
        assert_eq!(t.put(bad.clone(), Expect::Any).await.unwrap_err(), expected);
        let writes = vec![Write::Put { item: bad, expect: Expect::Any }];
        assert_eq!(t.transact(writes).await.unwrap_err(), expected);
    }
    assert_eq!(t.get(&Key::new("V", "reserved")).await.unwrap(), None);

    // Transactions: empty, too many, or touching a key twice.
    let empty: Vec<Write> = Vec::new();
    assert_eq!(t.transact(empty.clone()).await.unwrap_err(), check_transaction(&empty).unwrap_err());
    let too_many: Vec<Write> = (0..=MAX_TRANSACTION_WRITES)
        .map(|i| Write::Put { item: item("V", &format!("many#{i:03}"), 1, json!({})), expect: Expect::Any })
        .collect();
    assert_eq!(t.transact(too_many.clone()).await.unwrap_err(), check_transaction(&too_many).unwrap_err());
    let twice = vec![
        Write::Put { item: item("V", "dup", 1, json!({})), expect: Expect::Any },
        Write::Check { key: Key::new("V", "dup"), expect: Expect::Any },
    ];
    assert_eq!(t.transact(twice.clone()).await.unwrap_err(), check_transaction(&twice).unwrap_err());
    assert!(t.query(&Query::partition("V")).await.unwrap().items.is_empty(), "nothing was written");

    // Keys DynamoDB cannot store, and a query for nothing.
    assert_invalid(t.put(item("", "s", 1, json!({})), Expect::Any).await);
    assert_invalid(t.put(item("V", "", 1, json!({})), Expect::Any).await);
    assert_invalid(t.get(&Key::new("V", "")).await);
    assert_invalid(t.delete(&Key::new("", "s"), Expect::Any).await);
    assert_invalid(t.put(item("V", &"s".repeat(1025), 1, json!({})), Expect::Any).await);
    assert_invalid(t.query(&Query { limit: 0, ..Query::partition("V") }).await);
    assert_invalid(t.query(&Query::partition("")).await);
}

async fn expired_items_are_invisible_and_absent(f: TableFixture) {
    let (t, clock) = (f.table, f.clock);
    let start = clock.now();
    let mut expiring = item("E", "session", 1, json!({"who": "first"}));
    expiring.expires_at = Some(start + TimeDelta::seconds(10));
    t.put(expiring.clone(), Expect::Absent).await.unwrap();
    t.put(item("E", "setting", 1, json!({})), Expect::Absent).await.unwrap();

    clock.advance(TimeDelta::seconds(9));
    assert_eq!(t.get(&expiring.key).await.unwrap(), Some(expiring.clone()), "live until its second");
    assert_eq!(sks(&t.query(&Query::partition("E")).await.unwrap()), ["session", "setting"]);
    assert_eq!(condition_failed(t.put(expiring.clone(), Expect::Absent).await), None);

    // At its expiry instant the item is gone for every read, though nothing deleted it.
    clock.advance(TimeDelta::seconds(1));
    assert_eq!(t.get(&expiring.key).await.unwrap(), None);
    assert_eq!(sks(&t.query(&Query::partition("E")).await.unwrap()), ["setting"]);
    assert_eq!(sks(&t.query(&range("E", Some("s"), Some("t"), true)).await.unwrap()), ["setting"]);
    // A cleanup's query sees it still, with its expiry, and removes it.
    let cleanup = Query { expired: true, ..Query::partition("E") };
    let page = t.query(&cleanup).await.unwrap();
    assert_eq!(sks(&page), ["session", "setting"]);
    assert_eq!(page.items[0].expires_at, expiring.expires_at);
    // A version expectation needs a live item.
    assert_eq!(condition_failed(t.put(expiring.clone(), Expect::Version(1)).await), None);
    assert_eq!(condition_failed(t.delete(&expiring.key, Expect::Version(1)).await), None);
    assert_eq!(
        condition_failed(
            t.transact(vec![Write::Check { key: expiring.key.clone(), expect: Expect::Version(1) }]).await
        ),
        Some(0)
    );
    // It counts as absent: a check passes and a new item takes its place.
    t.transact(vec![Write::Check { key: expiring.key.clone(), expect: Expect::Absent }]).await.unwrap();
    let replacement = item("E", "session", 1, json!({"who": "second"}));
    t.put(replacement.clone(), Expect::Absent).await.unwrap();
    assert_eq!(t.get(&replacement.key).await.unwrap(), Some(replacement));
    // An expired item a cleanup deletes is gone from its queries too.
    let mut old = item("E", "stale", 1, json!({}));
    old.expires_at = Some(clock.now() - TimeDelta::seconds(1));
    t.put(old.clone(), Expect::Any).await.unwrap();
    assert!(sks(&t.query(&cleanup).await.unwrap()).contains(&"stale"));
    t.transact(vec![Write::Delete { key: old.key.clone(), expect: Expect::Any }]).await.unwrap();
    assert!(!sks(&t.query(&cleanup).await.unwrap()).contains(&"stale"));
    // Page by page, expired items only: each page but the last has a cursor.
    for i in 0..5 {
        let mut gone = item("X", &format!("old#{i}"), 1, json!({}));
        gone.expires_at = Some(clock.now() - TimeDelta::seconds(1));
        t.put(gone, Expect::Any).await.unwrap();
    }
    let mut pages = 0;
    let mut query = Query { expired: true, limit: 2, ..Query::partition("X") };
    let mut seen = Vec::new();
    loop {
        let page = t.query(&query).await.unwrap();
        pages += 1;
        seen.extend(sks(&page).into_iter().map(str::to_string));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["old#0", "old#1", "old#2", "old#3", "old#4"]);
    assert!(pages >= 3, "{pages} pages");
    assert!(t.query(&Query::partition("X")).await.unwrap().items.is_empty(), "none live");
}

// ---------------------------------------------------------------------------------------------------------------
// Queue

async fn send_receive_delete(f: QueueFixture) {
    let q = f.queue;
    q.ping().await.unwrap();
    assert_eq!(q.name(), f.name);
    assert_eq!(q.depth().await.unwrap(), 0);
    let before = Utc::now();
    let id = q.send("hello", &MessageAttrs::new()).await.unwrap();
    assert!(!id.is_empty());
    assert_eq!(q.depth().await.unwrap(), 1);

    let got = q.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    let message = &got[0];
    assert_eq!(message.message_id, id);
    assert_eq!(message.body, "hello");
    assert_eq!(message.receive_count, 1);
    assert!(message.attributes.is_empty());
    let skew = TimeDelta::seconds(5);
    assert!(message.sent_at >= before - skew && message.sent_at <= Utc::now() + skew, "sent_at is the send time");
    assert_eq!(q.depth().await.unwrap(), 1, "in flight still counts");
    // In flight: invisible to other receivers.
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());

    q.delete(&message.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
    tokio::time::sleep(VISIBILITY + Duration::from_millis(300)).await;
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty(), "a deleted message never comes back");

    // Several at once, each once.
    let mut sent = BTreeSet::new();
    for i in 0..5 {
        sent.insert(q.send(&format!("m{i}"), &MessageAttrs::new()).await.unwrap());
    }
    let got = collect(&*q, 5, Duration::from_secs(5)).await;
    let ids: BTreeSet<String> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids, sent);
    assert_eq!(got.len(), 5);

    assert_invalid(q.delete("not-a-receipt").await);
}

async fn redelivery_after_the_visibility_timeout(f: QueueFixture) {
    let q = f.queue;
    let id = q.send("retry me", &MessageAttrs::new()).await.unwrap();
    let first = q.receive(1, Duration::from_secs(2)).await.unwrap().remove(0);
    assert_eq!((first.message_id.as_str(), first.receive_count), (id.as_str(), 1));
    assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty(), "invisible while in flight");

    // Not deleted: back after the visibility timeout, counted again, with a new receipt.
    tokio::time::sleep(VISIBILITY).await;
    let second = q.receive(1, Duration::from_secs(3)).await.unwrap().remove(0);
    assert_eq!(second.message_id, id);
    assert_eq!(second.body, "retry me");
    assert_eq!(second.receive_count, 2);
    assert_ne!(second.receipt, first.receipt);
    q.delete(&second.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
}

async fn change_visibility_makes_a_message_visible_again(f: QueueFixture) {
    // The DLQ has a 30 s visibility timeout and no redrive.
    let q = f.dlq;
    let id = q.send("later", &MessageAttrs::new()).await.unwrap();
    let first = q.receive(1, Duration::from_secs(2)).await.unwrap().remove(0);
    assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty());
    q.change_visibility(&first.receipt, Duration::ZERO).await.unwrap();
    let again = q.receive(1, Duration::from_secs(2)).await.unwrap().remove(0);
    assert_eq!((again.message_id.as_str(), again.receive_count), (id.as_str(), 2));
    // Pushed out again: invisible until then.
    q.change_visibility(&again.receipt, Duration::from_secs(60)).await.unwrap();
    assert!(q.receive(1, Duration::from_secs(1)).await.unwrap().is_empty());
    q.delete(&again.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
}

async fn dead_letter_after_max_receive_count(f: QueueFixture) {
    let (q, dlq) = (f.queue, f.dlq);
    let id = q.send("poison", &MessageAttrs::new()).await.unwrap();
    for expected in 1..=MAX_RECEIVES {
        let got = q.receive(1, Duration::from_secs(3)).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {expected}");
        assert_eq!((got[0].message_id.as_str(), got[0].receive_count), (id.as_str(), expected));
        tokio::time::sleep(VISIBILITY).await;
    }
    // The next receive attempt moves it to the dead-letter queue instead of delivering it.
    assert!(q.receive(1, Duration::from_secs(1)).await.unwrap().is_empty());
    let dead = dlq.receive(1, Duration::from_secs(3)).await.unwrap();
    assert_eq!(dead.len(), 1, "the message reached the dead-letter queue");
    assert_eq!(dead[0].body, "poison");
    assert_eq!(dead[0].message_id, id);
    dlq.delete(&dead[0].receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
}

async fn message_attributes_round_trip(f: QueueFixture) {
    let q = f.queue;
    let attributes = MessageAttrs::from([
        ("AWSTraceHeader".to_string(), "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".to_string()),
        ("tenant".to_string(), "org_1".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        ("note".to_string(), "grüß 🚀 \"quoted\" <xml/>".to_string()),
    ]);
    let body = r#"{"provider":"acme","id":"évt_1"}"#;
    q.send(body, &attributes).await.unwrap();
    let got = q.receive(1, Duration::from_secs(2)).await.unwrap().remove(0);
    assert_eq!(got.body, body);
    assert_eq!(got.attributes, attributes);
    q.delete(&got.receipt).await.unwrap();
}

async fn oversize_and_malformed_messages_are_rejected(f: QueueFixture) {
    let q = f.queue;
    let none = MessageAttrs::new();
    let attr = |name: &str, value: &str| MessageAttrs::from([(name.to_string(), value.to_string())]);
    assert_invalid(q.send(&"x".repeat(MAX_MESSAGE_BYTES + 1), &none).await);
    // Attributes count towards the size.
    assert_invalid(q.send(&"x".repeat(MAX_MESSAGE_BYTES - 10), &attr("tenant", "org_1")).await);
    assert_invalid(q.send("", &none).await);
    assert_invalid(q.send("ok", &attr("AWS.reserved", "x")).await);
    assert_invalid(q.send("ok", &attr("name", "")).await);
    let eleven: MessageAttrs = (0..11).map(|i| (format!("a{i}"), "v".to_string())).collect();
    assert_invalid(q.send("ok", &eleven).await);
    assert_eq!(q.depth().await.unwrap(), 0, "nothing was enqueued");

    // Exactly at the limit is fine.
    q.send(&"x".repeat(MAX_MESSAGE_BYTES), &none).await.unwrap();
    let got = q.receive(1, Duration::from_secs(2)).await.unwrap().remove(0);
    assert_eq!(got.body.len(), MAX_MESSAGE_BYTES);
    q.delete(&got.receipt).await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Bus

fn event(detail_type: &str, source: &str, detail: Value) -> BusEvent {
    BusEvent { source: source.into(), detail_type: detail_type.into(), detail, trace_header: None }
}

/// The (source, detail-type, detail) of an EventBridge envelope delivered to a queue.
fn routed(message: &Received) -> (String, String, Value) {
    let envelope: Value = serde_json::from_str(&message.body).unwrap();
    (
        envelope["source"].as_str().unwrap().to_string(),
        envelope["detail-type"].as_str().unwrap().to_string(),
        envelope["detail"].clone(),
    )
}

async fn matching_events_are_routed_and_others_not(f: BusFixture) {
    f.bus.ping().await.unwrap();
    let mut completed = event("job.completed", SOURCE, json!({"job": 1}));
    completed.trace_header = Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into());
    let events = vec![
        completed,
        event("audit.user.created", SOURCE, json!({"user": "u1", "nested": {"list": [1, 2]}})),
        event("job.completed", "someone.else", json!({"job": 2})),
        event("job.started", SOURCE, json!({"job": 3})),
        event("audit", SOURCE, json!({"job": 4})),
    ];
    f.bus.put(&events).await.unwrap();

    let got = collect(&*f.target, 2, Duration::from_secs(10)).await;
    let mut routed: Vec<_> = got.iter().map(routed).collect();
    routed.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        routed,
        vec![
            (SOURCE.to_string(), "audit.user.created".to_string(), json!({"user": "u1", "nested": {"list": [1, 2]}})),
            (SOURCE.to_string(), "job.completed".to_string(), json!({"job": 1})),
        ]
    );
    // Nothing else arrives.
    assert!(f.target.receive(10, Duration::from_secs(1)).await.unwrap().is_empty());
}

async fn large_batches_are_published_whole(f: BusFixture) {
    let events: Vec<BusEvent> = (0..23).map(|i| event("job.completed", SOURCE, json!({ "job": i }))).collect();
    f.bus.put(&events).await.unwrap();
    let got = collect(&*f.target, 23, Duration::from_secs(15)).await;
    let jobs: BTreeSet<i64> = got.iter().map(|m| routed(m).2["job"].as_i64().unwrap()).collect();
    assert_eq!(jobs, (0..23).collect());
    assert_eq!(got.len(), 23);
}

async fn invalid_events_publish_nothing(f: BusFixture) {
    let good = event("job.completed", SOURCE, json!({"job": 1}));
    for bad in [
        event("job.completed", SOURCE, json!(["not", "an", "object"])),
        event("", SOURCE, json!({})),
        event("job.completed", "", json!({})),
        event("job.completed", SOURCE, json!({ "blob": "x".repeat(keel::bus::MAX_EVENT_BYTES) })),
    ] {
        assert_invalid(f.bus.put(&[good.clone(), bad]).await);
    }
    assert!(f.target.receive(10, Duration::from_secs(1)).await.unwrap().is_empty(), "no part of a bad batch");
    f.bus.put(&[]).await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Object store

const ZIP: &str = "application/zip";

async fn objects_round_trip_and_replace(f: ObjectsFixture) {
    let store = &f.store;
    let put = store.put_file("exports/u1/bundle.zip", &f.file(b"first"), ZIP).await.unwrap();
    assert_eq!((put.key.as_str(), put.size), ("exports/u1/bundle.zip", 5));
    let age = Utc::now() - put.modified;
    assert!(age < TimeDelta::minutes(1) && age > TimeDelta::minutes(-1), "{put:?}");
    assert_eq!(store.head("exports/u1/bundle.zip").await.unwrap(), Some(put.clone()));
    assert_eq!(store.get("exports/u1/bundle.zip").await.unwrap().as_deref(), Some(&b"first"[..]));

    // A put replaces; a key and a longer key under it are two objects.
    store.put_file("exports/u1/bundle.zip", &f.file(b"second!"), ZIP).await.unwrap();
    store.put_file("exports/u1/bundle.zip/x", &f.file(b"x"), ZIP).await.unwrap();
    assert_eq!(store.get("exports/u1/bundle.zip").await.unwrap().as_deref(), Some(&b"second!"[..]));
    assert_eq!(store.head("exports/u1/bundle.zip").await.unwrap().unwrap().size, 7);
    assert_eq!(store.get("exports/u1/bundle.zip/x").await.unwrap().as_deref(), Some(&b"x"[..]));

    // An empty file is an object too.
    assert_eq!(store.put_file("empty", &f.file(b""), "text/plain").await.unwrap().size, 0);
    assert_eq!(store.get("empty").await.unwrap(), Some(vec![]));
    store.ping().await.unwrap();
}

async fn absent_objects_read_as_none_and_delete_twice(f: ObjectsFixture) {
    let store = &f.store;
    assert_eq!(store.get("nothing/here").await.unwrap(), None);
    assert_eq!(store.head("nothing/here").await.unwrap(), None);
    store.delete("nothing/here").await.unwrap();

    store.put_file("a/b", &f.file(b"data"), ZIP).await.unwrap();
    store.delete("a/b").await.unwrap();
    store.delete("a/b").await.unwrap();
    assert_eq!(store.get("a/b").await.unwrap(), None);
    assert_eq!(store.head("a/b").await.unwrap(), None);
    assert!(store.list("a/", None, 10).await.unwrap().objects.is_empty());
}

async fn listings_follow_key_order_and_cursors(f: ObjectsFixture) {
    let store = &f.store;
    let keys = ["p/c", "p/a", "p/b/1", "p/b", "p/B", "p/a0", "p/z", "q/a", "o"];
    for key in keys {
        store.put_file(key, &f.file(key.as_bytes()), ZIP).await.unwrap();
    }
    let mut expected: Vec<&str> = keys.iter().copied().filter(|k| k.starts_with("p/")).collect();
    expected.sort_unstable();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list("p/", after.as_deref(), 3).await.unwrap();
        assert!(page.objects.len() <= 3);
        for object in &page.objects {
            assert_eq!(object.size, object.key.len() as u64);
        }
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    // A cursor in the middle, one before the prefix, and the whole store.
    let page = store.list("p/", Some("p/b"), 100).await.unwrap();
    let rest: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(rest, ["p/b/1", "p/c", "p/z"]);
    assert_eq!(page.next, None);
    let page = store.list("p/", Some("a"), 100).await.unwrap();
    assert_eq!(page.objects.len(), expected.len());
    assert_eq!(store.list("", None, 100).await.unwrap().objects.len(), keys.len());
    assert!(store.list("r/", None, 100).await.unwrap().objects.is_empty());
}

async fn links_serve_the_object(f: ObjectsFixture) {
    let store = &f.store;
    store.put_file("exports/u2/bundle.zip", &f.file(b"zip bytes"), ZIP).await.unwrap();
    let http = reqwest::Client::new();

    let link = store.link("exports/u2/bundle.zip", Duration::from_secs(900)).await.unwrap();
    let response = http.get(&link).send().await.unwrap();
    assert_eq!(response.status(), 200, "{link}");
    assert_eq!(response.headers()[reqwest::header::CONTENT_TYPE], ZIP);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"zip bytes");

    // A link to another key does not open this one, and a deleted object is gone from its link.
    let other = store.link("exports/u2/other.zip", Duration::from_secs(900)).await.unwrap();
    assert_eq!(http.get(&other).send().await.unwrap().status(), 404);
    store.put_file("gone", &f.file(b"x"), ZIP).await.unwrap();
    let gone = store.link("gone", Duration::from_secs(900)).await.unwrap();
    store.delete("gone").await.unwrap();
    assert_eq!(http.get(&gone).send().await.unwrap().status(), 404);

    // Expiry: the emulator does not enforce a presigned URL's expiry (S3 does), so each adapter's extras below
    // check it their own way.
}

async fn large_files_stream_through(f: ObjectsFixture) {
    use sha2::{Digest, Sha256};
    // 12 MiB: more than one buffer of every layer, less than a multipart threshold would matter.
    let bytes: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let info = f.store.put_file("big/one", &f.file(&bytes), "application/octet-stream").await.unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    let back = f.store.get("big/one").await.unwrap().unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&bytes));
}

async fn invalid_keys_and_arguments_are_rejected_identically(f: ObjectsFixture) {
    let store = &f.store;
    let file = f.file(b"x");
    for key in ["", "/a", "a/", "a//b", "../a", "a/./b", "a b", "a%20b", "caf\u{e9}"] {
        let expected = check_key(key).unwrap_err();
        assert_eq!(store.put_file(key, &file, ZIP).await.unwrap_err(), expected, "{key:?}");
        assert_eq!(store.get(key).await.unwrap_err(), expected, "{key:?}");
        assert_eq!(store.head(key).await.unwrap_err(), expected, "{key:?}");
        assert_eq!(store.delete(key).await.unwrap_err(), expected, "{key:?}");
        assert_eq!(store.link(key, Duration::from_secs(60)).await.unwrap_err(), expected, "{key:?}");
    }
    assert_invalid(store.list("/", None, 10).await);
    assert_invalid(store.list("a//", None, 10).await);
    assert_invalid(store.list("a/", None, 0).await);
    assert_invalid(store.link("a", Duration::ZERO).await);
    assert_invalid(store.link("a", MAX_LINK_VALIDITY + Duration::from_secs(1)).await);
    let missing = f.scratch.path().join("missing");
    let err = store.put_file("a", &missing, ZIP).await.unwrap_err();
    assert!(matches!(err, PortError::Unavailable(_)), "{err:?}");
    assert_eq!(store.head("a").await.unwrap(), None, "a failed put leaves nothing");
}

// ---------------------------------------------------------------------------------------------------------------
// Adapter-specific extras

/// An embedded link is refused once expired, or when its signature or expiry was altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_links_expire_and_cannot_be_altered() {
    let f = embedded_objects().await;
    f.store.put_file("exports/u3/bundle.zip", &f.file(b"zip"), ZIP).await.unwrap();
    let http = reqwest::Client::new();
    let link = f.store.link("exports/u3/bundle.zip", Duration::from_secs(900)).await.unwrap();
    let (base, query) = link.split_once('?').unwrap();
    let expires = query.split('&').find_map(|p| p.strip_prefix("expires=")).unwrap();
    let later = (expires.parse::<i64>().unwrap() + 3600).to_string();
    let flipped = {
        let signature = query.split('&').find_map(|p| p.strip_prefix("signature=")).unwrap();
        let first = if signature.starts_with('0') { "1" } else { "0" };
        format!("{first}{}", &signature[1..])
    };
    for altered in [
        link.replace(&format!("expires={expires}"), &format!("expires={later}")),
        link.replace(query.split('&').find(|p| p.starts_with("signature=")).unwrap(), &format!("signature={flipped}")),
        format!("{base}?expires={expires}"),
        base.to_string(),
    ] {
        assert_eq!(http.get(&altered).send().await.unwrap().status(), 403, "{altered}");
    }
    assert_eq!(http.get(&link).send().await.unwrap().status(), 200);

    let short = f.store.link("exports/u3/bundle.zip", Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(http.get(&short).send().await.unwrap().status(), 403, "an expired link is refused");
}

/// An S3 link is a SigV4 presigned GET carrying its validity, which S3 enforces (the emulator does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_links_are_presigned_with_their_validity() {
    let f = aws_objects().await;
    let link = f.store.link("exports/u4/bundle.zip", Duration::from_secs(900)).await.unwrap();
    let query = link.split_once('?').unwrap().1;
    for expected in ["X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Expires=900", "X-Amz-SignedHeaders=host"] {
        assert!(query.split('&').any(|p| p == expected), "{expected} in {link}");
    }
    assert!(query.split('&').any(|p| p.starts_with("X-Amz-Signature=")), "{link}");
}

/// The embedded bus also records every event, routed or not.
#[tokio::test]
async fn embedded_bus_records_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let bus = db.bus("recorded");
    let events = vec![event("job.completed", SOURCE, json!({"job": 1})), event("x", "y", json!({}))];
    bus.put(&events).await.unwrap();
    let recorded: Vec<BusEvent> = bus.recorded().unwrap().into_iter().map(|r| r.event).collect();
    assert_eq!(recorded, events);
}

/// The emulator answers and the configuration points at it.
#[test]
fn emulator_config_points_at_the_emulator() {
    let emulator = Emulator::shared();
    let config = emulator.sdk_config();
    assert_eq!(config.endpoint_url(), Some(emulator.endpoint()));
    assert_eq!(config.region().map(|r| r.as_ref()), Some("us-east-1"));
}

/// The provisioning helpers converge: called again with other settings they update, called again with the same
/// ones they change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_provisioning_is_idempotent_and_converges() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let config = Emulator::shared().sdk_config();
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);
    let name = unique_name("provision");

    ensure_table(&dynamodb, &name).await.unwrap();
    ensure_table(&dynamodb, &name).await.unwrap();
    let ttl = dynamodb.describe_time_to_live().table_name(&name).send().await.unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(ttl.time_to_live_status(), Some(&aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled));

    let attribute = |url: String, attribute: QueueAttributeName| {
        let sqs = sqs.clone();
        async move {
            let output = sqs.get_queue_attributes().queue_url(url).attribute_names(attribute.clone()).send().await;
            output.unwrap().attributes.unwrap_or_default().remove(&attribute).unwrap_or_default()
        }
    };
    let (dlq_url, dlq_arn) = ensure_queue(&sqs, &format!("{name}-dlq"), 30, None).await.unwrap();
    let (url, arn) = ensure_queue(&sqs, &name, 5, None).await.unwrap();
    assert_eq!(attribute(url.clone(), QueueAttributeName::VisibilityTimeout).await, "5");
    let (again, again_arn) = ensure_queue(&sqs, &name, 7, Some((&dlq_arn, 3))).await.unwrap();
    assert_eq!((again.as_str(), again_arn.as_str()), (url.as_str(), arn.as_str()));
    assert_eq!(attribute(url.clone(), QueueAttributeName::VisibilityTimeout).await, "7");
    let redrive: Value =
        serde_json::from_str(&attribute(url.clone(), QueueAttributeName::RedrivePolicy).await).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], json!(dlq_arn));
    assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "3");
    assert!(dlq_url.ends_with(&format!("{name}-dlq")));

    ensure_bus(&eventbridge, &name).await.unwrap();
    assert!(ensure_bus(&eventbridge, "default").await.unwrap().ends_with(":event-bus/default"));
    let pattern = event_pattern_json(&pattern());
    let rule = format!("{name}-rule");
    let first = ensure_rule_to_queue(&eventbridge, &sqs, &name, &rule, &pattern, &url, &arn).await.unwrap();
    let second = ensure_rule_to_queue(&eventbridge, &sqs, &name, &rule, &pattern, &url, &arn).await.unwrap();
    assert_eq!(first, second);
    let policy: Value = serde_json::from_str(&attribute(url.clone(), QueueAttributeName::Policy).await).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1, "one statement per rule, however often it is ensured: {policy}");
    assert_eq!(statements[0]["Condition"]["ArnEquals"]["aws:SourceArn"], json!(first));
}
