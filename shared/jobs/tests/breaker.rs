//! The shared circuit breaker on the embedded table, with a manual clock.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{Duration, TimeZone, Utc};
use keel::clock::{Clock, ManualClock};
use keel::testing::SwitchableTable;
use keel_embedded::EmbeddedDb;
use keel_jobs::breaker::{Admission, Breakers, FAILURES_TO_OPEN, OPEN_FOR, State};
use std::sync::Arc;

const TARGET: &str = "http://svc.example:8080";

fn breakers() -> (tempfile::TempDir, Arc<ManualClock>, Arc<SwitchableTable>, Breakers, Breakers) {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()));
    let table = Arc::new(SwitchableTable::new(Arc::new(db.table("jobs", clock.clone()))));
    // Two workers, each with its own cache, sharing the table.
    let one = Breakers::new(table.clone(), clock.clone());
    let two = Breakers::new(table.clone(), clock.clone());
    (dir, clock, table, one, two)
}

#[tokio::test]
async fn five_consecutive_failures_open_the_breaker_for_every_worker() {
    let (_dir, clock, _table, one, two) = breakers();
    for _ in 0..FAILURES_TO_OPEN - 1 {
        one.record(TARGET, false).await.unwrap();
    }
    assert_eq!(two.admit(TARGET).await.unwrap(), Admission::Call, "four failures: still closed");
    two.record(TARGET, false).await.unwrap();
    let until = clock.now() + OPEN_FOR;
    clock.advance(Duration::seconds(2));
    assert_eq!(one.admit(TARGET).await.unwrap(), Admission::Wait(until), "the other worker sees it open");
    let listed = one.list().await.unwrap();
    assert_eq!((listed.len(), listed[0].state, listed[0].failures), (1, State::Open, FAILURES_TO_OPEN));
}

#[tokio::test]
async fn after_sixty_seconds_one_worker_probes_and_its_success_closes_the_breaker() {
    let (_dir, clock, _table, one, two) = breakers();
    for _ in 0..FAILURES_TO_OPEN {
        one.record(TARGET, false).await.unwrap();
    }
    clock.advance(OPEN_FOR);
    assert_eq!(one.admit(TARGET).await.unwrap(), Admission::Probe);
    clock.advance(Duration::seconds(2));
    assert!(matches!(two.admit(TARGET).await.unwrap(), Admission::Wait(_)), "one probe at a time");
    one.record(TARGET, true).await.unwrap();
    clock.advance(Duration::seconds(2));
    assert_eq!(two.admit(TARGET).await.unwrap(), Admission::Call);
    assert_eq!(one.list().await.unwrap()[0].state, State::Closed);
}

#[tokio::test]
async fn a_failed_probe_opens_it_again_for_another_sixty_seconds() {
    let (_dir, clock, _table, one, _two) = breakers();
    for _ in 0..FAILURES_TO_OPEN {
        one.record(TARGET, false).await.unwrap();
    }
    clock.advance(OPEN_FOR);
    assert_eq!(one.admit(TARGET).await.unwrap(), Admission::Probe);
    one.record(TARGET, false).await.unwrap();
    assert_eq!(one.admit(TARGET).await.unwrap(), Admission::Wait(clock.now() + OPEN_FOR));
}

#[tokio::test]
async fn successful_calls_to_a_healthy_target_write_nothing() {
    let (_dir, clock, table, one, _two) = breakers();
    for _ in 0..100 {
        assert_eq!(one.admit(TARGET).await.unwrap(), Admission::Call);
        one.record(TARGET, true).await.unwrap();
    }
    assert_eq!(table.write_requests(), 0);
    one.record(TARGET, false).await.unwrap();
    clock.advance(Duration::seconds(2));
    one.record(TARGET, true).await.unwrap();
    assert_eq!(table.write_requests(), 2, "a failure, then the success that clears it");
    for _ in 0..100 {
        clock.advance(Duration::milliseconds(100));
        one.record(TARGET, true).await.unwrap();
    }
    assert_eq!(table.write_requests(), 2);
    assert!(table.gets() < 30, "the state is read from a short cache, not per call: {} reads", table.gets());
}
