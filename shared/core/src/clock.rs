//! The injected clock: every time-dependent decision (expiry, timestamp windows, leases) reads it, so tests can
//! move time instead of waiting or widening tolerances.

use chrono::{DateTime, Duration, Utc};
use std::sync::Mutex;

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A ULID for `at`. Within one millisecond each is larger than the one before (its random part counts up), so
/// records keyed by it sort in the order they were made even when the clock stands still; across milliseconds
/// it carries `at`, even when another clock of the process (a test's) is ahead.
pub fn ulid_at(at: DateTime<Utc>) -> ulid::Ulid {
    // The last ULID of each of the latest milliseconds: two clocks (a test's and the system's) interleave.
    static LAST: Mutex<std::collections::BTreeMap<u64, ulid::Ulid>> = Mutex::new(std::collections::BTreeMap::new());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let id = last.get(&millis).and_then(ulid::Ulid::increment).unwrap_or_else(|| ulid::Ulid::from_datetime(at.into()));
    last.insert(millis, id);
    while last.len() > 64 {
        last.pop_first();
    }
    id
}

/// The smallest ULID of `at`'s millisecond: a key range's lower bound (before 1970: of 1970's first).
pub fn first_ulid_at(at: DateTime<Utc>) -> ulid::Ulid {
    ulid::Ulid::from_parts(u64::try_from(at.timestamp_millis()).unwrap_or(0), 0)
}

/// The largest ULID of `at`'s millisecond: a key range's upper bound.
pub fn last_ulid_at(at: DateTime<Utc>) -> ulid::Ulid {
    ulid::Ulid::from_parts(u64::try_from(at.timestamp_millis()).unwrap_or(0), u128::MAX >> 48)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_of_one_instant_sort_in_the_order_they_were_made() {
        let at = Utc::now();
        let ids: Vec<ulid::Ulid> = (0..100).map(|_| ulid_at(at)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ids[0].timestamp_ms(), u64::try_from(at.timestamp_millis()).unwrap());
        let earlier = at - Duration::hours(1);
        let (first, _, second) = (ulid_at(earlier), ulid_at(at), ulid_at(earlier));
        assert_eq!(first.timestamp_ms(), u64::try_from(earlier.timestamp_millis()).unwrap());
        assert!(first < second, "another clock's ULIDs between them do not break the order");
    }
}
