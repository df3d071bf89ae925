//! Rate limits on the embedded table (real storage), two limiter instances standing in for two Lambda instances:
//! the shared quota holds across them, refusals and most admissions cost no backend call, windows reset, the IETF
//! fields are written, per-address and per-organization quotas are separate, local counting never touches a
//! table, and an unreachable counter admits.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use keel::clock::ManualClock;
use keel::config::Env;
use keel::ratelimit::{Counting, Decision, Quota, RateLimits};
use keel::table::Table;
use keel::testing::SwitchableTable;
use keel_embedded::EmbeddedDb;
use std::sync::Arc;

fn start() -> DateTime<Utc> {
    // A multiple of 900 s (and so of 60 s): on a window boundary of both test windows.
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    table: Arc<SwitchableTable>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let inner: Arc<dyn Table> = Arc::new(db.table("RateLimitsTable", clock.clone()));
    World { _dir: dir, clock, table: Arc::new(SwitchableTable::new(inner)) }
}

fn limits(world: &World, org: Option<Quota>, ip: Option<Quota>) -> RateLimits {
    RateLimits::new(org, ip, Counting::Shared(world.table.clone()), world.clock.clone())
}

fn quota(requests: u64, window_seconds: i64) -> Option<Quota> {
    Some(Quota { requests, window_seconds })
}

fn header<'a>(decision: &'a Decision, name: &str) -> &'a str {
    decision.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap()).unwrap_or("")
}

fn calls(world: &World) -> usize {
    world.table.gets() + world.table.puts()
}

#[tokio::test]
async fn the_shared_quota_holds_across_instances_at_a_fraction_of_a_call_per_request() {
    let world = world();
    let (one, two) = (limits(&world, quota(200, 60), None), limits(&world, quota(200, 60), None));
    let mut admitted = 0;
    for n in 0..400 {
        let instance = if n % 3 == 0 { &two } else { &one };
        if instance.check("org-1", None).await.refusal.is_none() {
            admitted += 1;
        }
    }
    // Never more than the quota; fewer only by what one instance reserved and did not use (a share of 10).
    assert!((190..=200).contains(&admitted), "{admitted} admitted");
    let spent = calls(&world);
    assert!(spent <= admitted / 4 + 6, "{spent} backend calls for {admitted} admissions");
    // Refused from memory once the quota is known to be gone.
    for _ in 0..100 {
        assert!(one.check("org-1", None).await.refusal.is_some());
        assert!(two.check("org-1", None).await.refusal.is_some());
    }
    assert_eq!(calls(&world), spent, "refusals cost no backend call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_instances_never_admit_more_than_the_quota() {
    let world = world();
    let instances: Vec<Arc<RateLimits>> = (0..4).map(|_| Arc::new(limits(&world, quota(100, 60), None))).collect();
    let mut tasks = Vec::new();
    for n in 0..400 {
        let instance = instances[n % 4].clone();
        tasks.push(tokio::spawn(async move { instance.check("org-1", None).await.refusal.is_none() }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert!((80..=100).contains(&admitted), "{admitted} admitted");
}

#[tokio::test]
async fn policies_configured_apart_count_apart() {
    let world = world();
    let hourly = limits(&world, quota(2, 3600), None);
    let burst = limits(&world, quota(2, 60), None);
    assert_eq!(futures_count(&hourly, 5).await, 2);
    assert_eq!(futures_count(&burst, 5).await, 2, "another policy, another counter");
    let alike = limits(&world, quota(2, 3600), None);
    assert_eq!(futures_count(&alike, 5).await, 0, "the same policy shares the count");
}

#[tokio::test]
async fn refusals_are_429_with_retry_after_and_the_ietf_fields() {
    let world = world();
    let limits = limits(&world, quota(3, 60), quota(100, 900));
    world.clock.set(start() + Duration::seconds(15));
    let first = limits.check("org-1", Some("203.0.113.7")).await;
    assert!(first.refusal.is_none());
    assert_eq!(header(&first, "ratelimit-policy"), "\"org\";q=3;w=60, \"ip\";q=100;w=900");
    assert_eq!(header(&first, "ratelimit"), "\"org\";r=2;t=45, \"ip\";r=99;t=885");
    limits.check("org-1", Some("203.0.113.7")).await;
    let last = limits.check("org-1", Some("203.0.113.7")).await;
    assert!(last.refusal.is_none());
    assert_eq!(header(&last, "ratelimit"), "\"org\";r=0;t=45, \"ip\";r=97;t=885");
    let refused = limits.check("org-1", Some("203.0.113.7")).await;
    let response = refused.refusal.as_ref().unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "45");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["code"], "rate_limited");
    // The refused request was not counted against the address.
    assert_eq!(header(&refused, "ratelimit"), "\"org\";r=0;t=45");
}

#[tokio::test]
async fn a_new_window_admits_again() {
    let world = world();
    let limits = limits(&world, quota(2, 60), None);
    for _ in 0..2 {
        assert!(limits.check("org-1", None).await.refusal.is_none());
    }
    assert!(limits.check("org-1", None).await.refusal.is_some());
    world.clock.set(start() + Duration::seconds(60));
    assert!(limits.check("org-1", None).await.refusal.is_none(), "a new window");
}

#[tokio::test]
async fn organizations_and_addresses_have_quotas_of_their_own() {
    let world = world();
    let limits = limits(&world, quota(5, 60), quota(2, 60));
    assert!(limits.check("org-1", Some("198.51.100.1")).await.refusal.is_none());
    assert!(limits.check("org-1", Some("198.51.100.1")).await.refusal.is_none());
    assert!(limits.check("org-1", Some("198.51.100.1")).await.refusal.is_some(), "the address is spent");
    assert!(limits.check("org-1", Some("198.51.100.2")).await.refusal.is_none(), "another address");
    assert!(limits.check("org-2", Some("198.51.100.3")).await.refusal.is_none(), "another organization");
    let refused = limits.check("org-2", Some("198.51.100.1")).await;
    let body: serde_json::Value = serde_json::from_slice(refused.refusal.unwrap().body()).unwrap();
    assert!(body["detail"].as_str().unwrap().contains("client address"), "{body}");
}

#[tokio::test]
async fn local_counting_never_calls_a_backend() {
    let world = world();
    let limits = RateLimits::new(quota(10, 60), None, Counting::Local, world.clock.clone());
    // Local counting has no table to call, by construction; what it must do is count.
    assert_eq!(futures_count(&limits, 30).await, 10);
    world.clock.set(start() + Duration::seconds(60));
    assert_eq!(futures_count(&limits, 30).await, 10, "and reset with the window");
}

async fn futures_count(limits: &RateLimits, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        if limits.check("org-1", None).await.refusal.is_none() {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test]
async fn an_unreachable_counter_admits_and_configuration_is_checked() {
    let world = world();
    world.table.set_down(true);
    let limits = limits(&world, quota(1, 60), None);
    for _ in 0..3 {
        assert!(limits.check("org-1", None).await.refusal.is_none());
    }
    let env = Env::from_pairs([("RATE_LIMIT_ORG", "off"), ("RATE_LIMIT_IP", "7/60")]);
    let configured = RateLimits::from_env(&env, (quota(1, 1), None), Counting::Local, world.clock.clone()).unwrap();
    let decision = configured.check("org-1", Some("192.0.2.1")).await;
    assert_eq!(header(&decision, "ratelimit-policy"), "\"ip\";q=7;w=60");
    let bad = Env::from_pairs([("RATE_LIMIT_ORG", "lots")]);
    assert!(RateLimits::from_env(&bad, (None, None), Counting::Local, world.clock.clone()).is_err());
}

/// Every counter the limits write is declared once in the data map.
#[tokio::test]
async fn every_counter_is_declared_once_in_the_data_map() {
    let world = world();
    let limits = limits(&world, quota(100, 60), quota(10, 60));
    limits.check("org-1", Some("203.0.113.9")).await;
    let db = EmbeddedDb::open(world._dir.path()).unwrap();
    let keys = db.table("RateLimitsTable", world.clock.clone()).keys().await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let entries = keel::datamap::classify(keel::ratelimit::DATA_MAP, keel::ratelimit::TABLE_VAR, key);
        assert_eq!(entries.len(), 1, "{key:?}");
    }
}
