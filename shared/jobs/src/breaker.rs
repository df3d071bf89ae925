//! A circuit breaker per downstream target (a URL's origin), shared by every worker through the jobs table: open
//! after `FAILURES_TO_OPEN` consecutive failed calls, one probe after `OPEN_FOR`, closed again on the probe's
//! success. A call to a closed target reads the state from a short in-process cache and writes nothing on
//! success; only failures, and the first success after failures, are written. A job whose target is open waits
//! (its message comes back when the probe is due) without starting an attempt.

use chrono::{DateTime, Duration, Utc};
use keel::clock::Clock;
use keel::port::PortError;
use keel::table::{Expect, Item, Key, Query, Table};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const FAILURES_TO_OPEN: u32 = 5;
pub const OPEN_FOR: Duration = Duration::seconds(60);
/// How long a worker trusts what it last read of a breaker.
const CACHE_FOR: Duration = Duration::seconds(1);
/// Attempts of a state change that keeps losing to other workers' changes.
const MAX_CONTENTION: usize = 10;
const PARTITION: &str = "BREAKER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    /// One worker is probing.
    HalfOpen,
}

/// A breaker as stored (and as platform admins read it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Breaker {
    /// The origin of the type's URL (`https://host:port`).
    pub target: String,
    pub state: State,
    /// Consecutive failed calls.
    pub failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
    /// When the probe may start (open), or until when the probe holds the breaker (half-open).
    pub until: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What a worker may do about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Call,
    /// This worker holds the probe: report its outcome.
    Probe,
    /// The target is open: come back then.
    Wait(DateTime<Utc>),
}

/// The origin of a URL: scheme, host and port, which is what a breaker guards.
pub fn target_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// The breaker after one more failed call: counting while closed, open (again) at the threshold or on a probe.
fn failed(current: Breaker, now: DateTime<Utc>) -> Breaker {
    let failures = current.failures.saturating_add(1);
    if current.state == State::Closed && failures < FAILURES_TO_OPEN {
        return Breaker { failures, updated_at: now, ..current };
    }
    Breaker {
        state: State::Open,
        failures,
        opened_at: Some(now),
        until: Some(now + OPEN_FOR),
        updated_at: now,
        ..current
    }
}

/// When a breaker was read, and what was read (with its version).
type Cached = (DateTime<Utc>, Option<(Breaker, u64)>);

pub struct Breakers {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<String, Cached>>,
}

fn key(target: &str) -> Key {
    Key::new(PARTITION, target)
}

impl Breakers {
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>) -> Self {
        Self { table, clock, cache: Mutex::new(HashMap::new()) }
    }

    async fn read(&self, target: &str) -> Result<Option<(Breaker, u64)>, PortError> {
        let item = self.table.get(&key(target)).await?;
        let found = item.and_then(|item| {
            let breaker = serde_json::from_value(serde_json::Value::Object(item.attrs)).ok()?;
            Some((breaker, item.version))
        });
        let now = self.clock.now();
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(target.to_string(), (now, found.clone()));
        Ok(found)
    }

    async fn cached(&self, target: &str) -> Result<Option<(Breaker, u64)>, PortError> {
        let now = self.clock.now();
        let hit = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(target).cloned();
        match hit {
            Some((at, found)) if now - at < CACHE_FOR => Ok(found),
            _ => self.read(target).await,
        }
    }

    async fn write(&self, breaker: &Breaker, version: Option<u64>) -> Result<(), PortError> {
        let attrs = match serde_json::to_value(breaker) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => Default::default(),
        };
        let item = Item { key: key(&breaker.target), attrs, version: version.map_or(1, |v| v + 1), expires_at: None };
        let result = self.table.put(item, version.map_or(Expect::Absent, Expect::Version)).await;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&breaker.target);
        result
    }

    /// Whether `target` is open (or probing) now, as last read.
    pub async fn is_open(&self, target: &str) -> Result<bool, PortError> {
        let now = self.clock.now();
        Ok(self.cached(target).await?.is_some_and(|(breaker, _)| {
            breaker.state != State::Closed && breaker.until.is_some_and(|until| until > now)
        }))
    }

    /// Whether a call to `target` may go now.
    pub async fn admit(&self, target: &str) -> Result<Admission, PortError> {
        for _ in 0..MAX_CONTENTION {
            let Some((breaker, version)) = self.cached(target).await? else { return Ok(Admission::Call) };
            let now = self.clock.now();
            match breaker.state {
                State::Closed => return Ok(Admission::Call),
                State::Open | State::HalfOpen if breaker.until.is_some_and(|until| until > now) => {
                    return Ok(Admission::Wait(breaker.until.unwrap_or(now)));
                }
                // Open past its time, or a probe whose worker vanished: take the probe.
                State::Open | State::HalfOpen => {
                    let (fresh, version) = match self.read(target).await? {
                        Some(found) if found.1 == version => found,
                        _ => continue,
                    };
                    let probe =
                        Breaker { state: State::HalfOpen, until: Some(now + OPEN_FOR), updated_at: now, ..fresh };
                    match self.write(&probe, Some(version)).await {
                        Ok(()) => return Ok(Admission::Probe),
                        Err(PortError::ConditionFailed { .. }) => continue,
                        Err(error) => return Err(error),
                    }
                }
            }
        }
        Ok(Admission::Wait(self.clock.now() + Duration::seconds(1)))
    }

    /// Records a call's outcome. A success writes only when it closes the breaker or clears earlier failures.
    pub async fn record(&self, target: &str, succeeded: bool) -> Result<(), PortError> {
        if succeeded {
            match self.cached(target).await? {
                None => return Ok(()),
                Some((breaker, _)) if breaker.state == State::Closed && breaker.failures == 0 => return Ok(()),
                Some(_) => {}
            }
        }
        for _ in 0..MAX_CONTENTION {
            let found = self.read(target).await?;
            let now = self.clock.now();
            let version = found.as_ref().map(|(_, version)| *version);
            let next = match (found.map(|(breaker, _)| breaker), succeeded) {
                (None, true) => return Ok(()),
                (Some(breaker), true) if breaker.state == State::Closed && breaker.failures == 0 => return Ok(()),
                (Some(breaker), true) => Breaker {
                    state: State::Closed,
                    failures: 0,
                    opened_at: None,
                    until: None,
                    updated_at: now,
                    ..breaker
                },
                (None, false) => {
                    let clean = Breaker {
                        target: target.to_string(),
                        state: State::Closed,
                        failures: 0,
                        opened_at: None,
                        until: None,
                        updated_at: now,
                    };
                    failed(clean, now)
                }
                (Some(breaker), false) => failed(breaker, now),
            };
            match self.write(&next, version).await {
                Ok(()) => return Ok(()),
                Err(PortError::ConditionFailed { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Every breaker that has ever tripped or counted a failure.
    pub async fn list(&self) -> Result<Vec<Breaker>, PortError> {
        let mut query = Query::partition(PARTITION);
        query.limit = keel::table::MAX_QUERY_LIMIT;
        let mut all = Vec::new();
        loop {
            let page = self.table.query(&query).await?;
            all.extend(
                page.items
                    .into_iter()
                    .filter_map(|item| serde_json::from_value(serde_json::Value::Object(item.attrs)).ok()),
            );
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(all),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_the_origin_of_the_url() {
        assert_eq!(target_of("https://svc.example.com:8443/notify?x=1"), "https://svc.example.com:8443");
        assert_eq!(target_of("http://127.0.0.1:9/a/b"), "http://127.0.0.1:9");
    }
}
