//! Rate limits per organization and per client IP, applied by the router to every authenticated route, answered
//! with 429, `Retry-After` and the IETF draft's `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-10: `"org";q=1000;w=3600` and `"org";r=998;t=1800`).
//!
//! Windows are fixed (aligned to multiples of the window since the epoch). Two ways to count, per function:
//! - **Shared**: one counter per scope and window in a table (`RATE_LIMITS_TABLE`), so every Lambda instance counts
//!   against the same quota. An instance reserves a share of the quota at a time (a read and a conditional write)
//!   and admits from memory until the share is spent, so a limit costs about 2 backend calls per share, not per
//!   request; once the window's quota is gone, the instance refuses from memory until the window ends. The gap:
//!   shares an instance reserved and did not use are lost for that window, so under many instances fewer than
//!   `quota` requests may be admitted (never more).
//! - **Local**: counted in the instance's memory only, no backend call at all; each instance enforces the quota on
//!   its own. Flag evaluation uses this, so it keeps serving from memory.
//!
//! A shared counter that cannot be reached admits the request (and logs it): a limit never takes the API down. A
//! counter so contended that ten conditional writes in a row lose refuses the one request instead: contention is
//! not an outage, and admitting then could pass the quota.
//!
//! Configuration: `RATE_LIMIT_ORG` and `RATE_LIMIT_IP` on the function, each `<requests>/<seconds>` (for example
//! `1000/3600`) or `off`.

use crate::clock::Clock;
use crate::config::{ConfigError, Env};
use crate::http::{HeaderValue, Response, header};
use crate::port::PortError;
use crate::problem::Problem;
use crate::resources::Resources;
use crate::table::{Attrs, Expect, Item, Key, Table};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const ORG_VAR: &str = "RATE_LIMIT_ORG";
pub const IP_VAR: &str = "RATE_LIMIT_IP";
pub const TABLE_VAR: &str = "RATE_LIMITS_TABLE";

/// The rate limit table's entry of the data map.
pub const DATA_MAP: &[crate::datamap::Entry] = &[crate::datamap::Entry {
    name: "api.rate_limit_counter",
    table: TABLE_VAR,
    pk: "RL#{scope}",
    sk: "{quota}@{window}",
    description: "Requests counted per organization or client IP address in one window.",
    subject: crate::datamap::Subject::Nobody,
    personal_data: &["the client's IP address (in the key of an IP counter)"],
    purpose: "Protecting the API from floods (legitimate interest, GDPR Art. 6(1)(f)).",
    recipients: &[],
    retention: crate::datamap::Retention::Expires { seconds: 3600 },
    export: crate::datamap::Export::Exclude { reason: "an IP address with a count, linked to no user" },
    erasure: crate::datamap::Erasure::Keep { exemption: "linked to no user, and gone an hour after its window ends" },
}];
/// The seed systems' defaults: 1,000 requests an hour per organization, 100 per 15 minutes per client IP.
pub const ORG_DEFAULT: Quota = Quota { requests: 1000, window_seconds: 3600 };
pub const IP_DEFAULT: Quota = Quota { requests: 100, window_seconds: 900 };
/// Shares reserved at a time: a twentieth of the quota (at least one request), so a limit costs about 2 backend
/// calls per 20th of the quota.
const SHARES: u64 = 20;
/// Scopes remembered in memory before windows that ended are dropped.
const MAX_REMEMBERED: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub requests: u64,
    pub window_seconds: i64,
}

impl Quota {
    /// `<requests>/<seconds>`, or `off`.
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        if raw.trim() == "off" {
            return Ok(None);
        }
        let (requests, seconds) = raw.trim().split_once('/').ok_or("expected <requests>/<seconds> or off")?;
        let requests: u64 = requests.trim().parse().map_err(|_| "the request count is not a whole number")?;
        let window_seconds: i64 = seconds.trim().parse().map_err(|_| "the window is not a whole number of seconds")?;
        if requests == 0 || !(1..=86_400).contains(&window_seconds) {
            return Err("expected at least one request in a window of 1 to 86400 seconds".into());
        }
        Ok(Some(Self { requests, window_seconds }))
    }

    fn share(self) -> u64 {
        (self.requests / SHARES).max(1)
    }
}

/// How a function counts (see the module comment).
pub enum Counting {
    Shared(Arc<dyn Table>),
    Local,
}

/// The two policies of one function, and its counts.
pub struct RateLimits {
    org: Option<Quota>,
    ip: Option<Quota>,
    counting: Counting,
    clock: Arc<dyn Clock>,
    /// Per scope and window: what this instance may still admit.
    grants: Mutex<HashMap<Slot, Grant>>,
}

/// A scope, its policy and its window's start (epoch seconds).
type Slot = (String, Quota, i64);

#[derive(Debug, Clone, Copy, Default)]
struct Grant {
    /// Requests this instance may still admit in the window.
    left: u64,
    /// The window's count across instances when last read, plus what this instance admitted since.
    used: u64,
    /// The shared quota is spent: refuse until the window ends.
    exhausted: bool,
}

impl Grant {
    /// Admits one request from what this instance holds: the remaining count, or `None` when it holds nothing.
    /// Local counting holds the whole quota.
    fn take(&mut self, quota: Quota) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.used += 1;
        Some(quota.requests.saturating_sub(self.used))
    }
}

/// What the router does with a request.
pub struct Decision {
    /// `Some` when refused: the 429 to answer.
    pub refusal: Option<Response>,
    /// The `RateLimit-Policy` and `RateLimit` values for the response.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl RateLimits {
    pub fn new(org: Option<Quota>, ip: Option<Quota>, counting: Counting, clock: Arc<dyn Clock>) -> Self {
        Self { org, ip, counting, clock, grants: Mutex::new(HashMap::new()) }
    }

    /// The function's policies from `RATE_LIMIT_ORG` and `RATE_LIMIT_IP`, with `defaults` where unset.
    pub fn from_env(
        env: &Env,
        defaults: (Option<Quota>, Option<Quota>),
        counting: Counting,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let read = |var: &str, default: Option<Quota>| match env.get(var) {
            None => Ok(default),
            Some(raw) => Quota::parse(raw).map_err(|reason| ConfigError::Malformed { name: var.to_string(), reason }),
        };
        Ok(Self::new(read(ORG_VAR, defaults.0)?, read(IP_VAR, defaults.1)?, counting, clock))
    }

    /// The operator and admin APIs' limits: the seed defaults unless configured, counted in the function's
    /// `RATE_LIMITS_TABLE`, shared by every instance.
    pub fn shared(env: &Env, resources: &dyn Resources) -> Result<Self, ConfigError> {
        let counting = Counting::Shared(resources.table(TABLE_VAR)?);
        Self::from_env(env, (Some(ORG_DEFAULT), Some(IP_DEFAULT)), counting, resources.clock())
    }

    /// Counts one request of `org` from `ip` (when known).
    pub async fn check(&self, org: &str, ip: Option<&str>) -> Decision {
        let now = self.clock.now();
        let mut scopes = Vec::new();
        if let Some(quota) = self.org {
            scopes.push(("org", format!("org#{org}"), quota));
        }
        if let (Some(quota), Some(ip)) = (self.ip, ip) {
            scopes.push(("ip", format!("ip#{ip}"), quota));
        }
        let mut headers = Vec::new();
        let mut policies = Vec::new();
        let mut states = Vec::new();
        let mut refused: Option<(&str, i64)> = None;
        for (name, scope, quota) in scopes {
            policies.push(format!("\"{name}\";q={};w={}", quota.requests, quota.window_seconds));
            // A refused request is not counted against the policies after the one that refused it.
            if refused.is_some() {
                continue;
            }
            let window = now.timestamp().div_euclid(quota.window_seconds) * quota.window_seconds;
            let reset = (window + quota.window_seconds - now.timestamp()).max(1);
            let remaining = match self.admit(&scope, window, quota, now).await {
                Ok(Some(remaining)) => remaining,
                Ok(None) => {
                    refused.get_or_insert((name, reset));
                    0
                }
                // A counter that cannot be reached does not stop the API: the request is admitted, and logged.
                Err(error) => {
                    tracing::warn!(%error, scope = name, "rate-limit counter unavailable; admitting");
                    quota.requests
                }
            };
            states.push(format!("\"{name}\";r={remaining};t={reset}"));
        }
        if !policies.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&policies.join(", ")) {
                headers.push((header::HeaderName::from_static("ratelimit-policy"), value));
            }
            if let Ok(value) = HeaderValue::from_str(&states.join(", ")) {
                headers.push((header::HeaderName::from_static("ratelimit"), value));
            }
        }
        let refusal = refused.map(|(name, reset)| {
            crate::metrics::count("RateLimited", &[("Policy", name)], 1.0);
            let mut response = Problem::new(
                429,
                "rate_limited",
                format!("the {} rate limit is reached; retry after {reset} seconds", policy_label(name)),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&reset.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        });
        Decision { refusal, headers }
    }

    /// Admits one request in `scope`'s window: `Some(remaining)`, or `None` when the quota is spent.
    async fn admit(
        &self,
        scope: &str,
        window: i64,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>, PortError> {
        let slot = (scope.to_string(), quota, window);
        {
            let mut grants = self.lock();
            if grants.len() > MAX_REMEMBERED {
                // Windows that ended are forgotten; under a flood of new addresses the map is emptied rather
                // than scanned on every request (a quota then starts again, in memory, for this instance).
                let now = now.timestamp();
                grants.retain(|(_, quota, start), _| start + quota.window_seconds > now);
                if grants.len() > MAX_REMEMBERED {
                    grants.clear();
                }
            }
            let local = matches!(self.counting, Counting::Local);
            let grant = grants
                .entry(slot.clone())
                .or_insert_with(|| Grant { left: if local { quota.requests } else { 0 }, ..Grant::default() });
            if let Some(remaining) = grant.take(quota) {
                return Ok(Some(remaining));
            }
            if grant.exhausted || matches!(self.counting, Counting::Local) {
                return Ok(None);
            }
        }
        let Counting::Shared(table) = &self.counting else { return Ok(None) };
        let reserved = reserve(table.as_ref(), scope, window, quota, now).await?;
        let mut grants = self.lock();
        let grant = grants.entry(slot).or_default();
        match reserved {
            Some((taken, used)) if taken > 0 => {
                grant.left += taken;
                grant.used = grant.used.max(used - taken);
            }
            // The window's quota is gone: refuse from memory from now on (other requests of this instance may
            // still hold shares they reserved meanwhile; those are used first).
            Some(_) => grant.exhausted = true,
            // Too contended to reserve right now: refuse this one request, never admit past the quota.
            None => {}
        }
        Ok(grant.take(quota))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, Grant>> {
        self.grants.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes a share of the window's quota from the shared counter: `Some((requests taken, the count after taking
/// them))`, or `None` when other instances kept winning the conditional write.
async fn reserve(
    table: &dyn Table,
    scope: &str,
    window: i64,
    quota: Quota,
    now: DateTime<Utc>,
) -> Result<Option<(u64, u64)>, PortError> {
    // Per policy: functions configured alike share one count (an API-wide quota), others count apart.
    let key = Key::new(format!("RL#{scope}"), format!("{}/{}@{window}", quota.requests, quota.window_seconds));
    let expires_at = DateTime::from_timestamp(window + quota.window_seconds, 0).map(|end| end + Duration::hours(1));
    for attempt in 0..10u64 {
        if attempt > 0 {
            let jitter = rand::random_range(0..=5 * attempt);
            tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
        }
        let current = table.get(&key).await?;
        let (used, expect, version) = match &current {
            Some(item) => {
                let used = item.attrs.get("used").and_then(serde_json::Value::as_u64).unwrap_or(0);
                (used, Expect::Version(item.version), item.version + 1)
            }
            None => (0, Expect::Absent, 1),
        };
        let taken = quota.share().min(quota.requests.saturating_sub(used));
        if taken == 0 {
            return Ok(Some((0, used)));
        }
        let mut attrs = Attrs::new();
        attrs.insert("used".into(), (used + taken).into());
        let item = Item { key: key.clone(), attrs, version, expires_at: expires_at.or(Some(now + Duration::days(1))) };
        match table.put(item, expect).await {
            Ok(()) => return Ok(Some((taken, used + taken))),
            Err(PortError::ConditionFailed { .. }) => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

fn policy_label(name: &str) -> &'static str {
    if name == "org" { "organization" } else { "client address" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_or_say_why_not() {
        assert_eq!(Quota::parse("1000/3600").unwrap(), Some(Quota { requests: 1000, window_seconds: 3600 }));
        assert_eq!(Quota::parse(" off ").unwrap(), None);
        for bad in ["", "1000", "0/60", "10/0", "10/86401", "x/60", "10/y", "-1/60"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ORG_DEFAULT.share(), 50);
        assert_eq!(IP_DEFAULT.share(), 5);
        assert_eq!(Quota { requests: 3, window_seconds: 60 }.share(), 1);
    }
}
