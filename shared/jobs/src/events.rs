//! Lifecycle events: one per transition (created, started, completed, failed, cancelled), written in the same
//! transaction as the transition, to the organization's feed (`FEED#{org}`, kept 24 hours), and published to
//! EventBridge (source `keel.jobs`). An event's id, `{job id}.{sequence}`, is the same in the feed, on the bus and
//! however often it is published, so consumers deduplicate on it.

use crate::job::{Job, Status};
use chrono::{DateTime, Duration, Utc};
use keel::bus::BusEvent;
use keel::table::{Item, Key};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The EventBridge source of job lifecycle events, and of the domain events `POST /v1/events` publishes.
pub const BUS_SOURCE: &str = "keel.jobs";
pub const DOMAIN_SOURCE: &str = "keel.events";
/// Lifecycle event types start with this; a domain event's type may not.
pub const JOB_PREFIX: &str = "job.";
/// How long a domain event's id is remembered, so that publishing it again publishes nothing.
pub const DOMAIN_ID_WINDOW: Duration = Duration::hours(24);
/// Largest `data` of a domain event (bytes of JSON), and longest type and id.
pub const MAX_DOMAIN_DATA: usize = 64 * 1024;
pub const MAX_DOMAIN_TYPE: usize = 128;
pub const MAX_DOMAIN_ID: usize = 128;

/// A domain event type: `[a-z0-9]` then up to 127 of `[a-z0-9._-]`, not in the `job.` namespace.
pub fn valid_domain_type(name: &str) -> bool {
    name.len() <= MAX_DOMAIN_TYPE
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(JOB_PREFIX)
}

/// A caller's event id: 1 to 128 of `[A-Za-z0-9._:-]`.
pub fn valid_domain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DOMAIN_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub fn domain_id_key(org: &str, id: &str) -> Key {
    Key::new(format!("EVENTID#{org}"), id)
}
/// How long the feed keeps an event.
pub const FEED_RETENTION: Duration = Duration::hours(24);

/// One event of the feed: a job's transition (or, later, a domain event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedEvent {
    /// Unique and stable: deduplicate on it.
    pub id: String,
    /// `job.created`, `job.started`, `job.completed`, `job.failed`, `job.cancelled`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub org_id: String,
    pub at: DateTime<Utc>,
    pub data: Value,
}

/// Feed partitions are `FEED#{org}`.
pub const FEED_PREFIX: &str = "FEED#";

pub fn feed_partition(org: &str) -> String {
    format!("{FEED_PREFIX}{org}")
}

/// The organizations that have a feed (`FEEDORG#{shard}` / `{org}`), for the cleanup that removes old events
/// (feeds are by organization, which nothing else lists). Rewritten with every job's creation and domain event.
pub const FEED_ORGS: keel::cleanup::Listing = keel::cleanup::Listing { prefix: "FEEDORG", shards: 8 };

/// The event of the transition `job` has just made, numbered `job.events` (the caller counts it). A job back to
/// pending after a failed attempt makes none: the attempt shows in the record, and the next start is an event.
pub fn transition(job: &Job) -> Option<FeedEvent> {
    let name = match job.status {
        Status::Pending if job.attempts.is_empty() => "created",
        Status::Pending => return None,
        Status::Processing => "started",
        Status::Completed => "completed",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    };
    let attempt = job.current_attempt();
    Some(FeedEvent {
        id: format!("{}.{}", job.id, job.events),
        event_type: format!("job.{name}"),
        org_id: job.org_id.clone(),
        at: job.updated_at,
        data: json!({
            "job_id": job.id,
            "type": job.job_type,
            "category": job.category,
            "user_id": job.user_id,
            "session_id": job.session_id,
            "status": job.status,
            "waiting": job.waiting,
            "attempt": attempt.map(|a| a.number),
            "outcome": attempt.and_then(|a| a.outcome),
            "error": job.error,
            "trace_id": job.trace_id,
        }),
    })
}

/// The sequence number of an event id (`{job id}.{sequence}`).
pub fn sequence(event: &FeedEvent) -> u32 {
    event.id.rsplit_once('.').and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
}

impl FeedEvent {
    /// The feed item at `position` (a ULID, so the feed reads in order of writing).
    pub fn to_item(&self, position: &str) -> Item {
        let attrs = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Default::default(),
        };
        Item {
            key: Key::new(feed_partition(&self.org_id), position),
            attrs,
            version: 1,
            expires_at: Some(self.at + FEED_RETENTION),
        }
    }

    pub fn from_item(item: &Item) -> Option<Self> {
        serde_json::from_value(Value::Object(item.attrs.clone())).ok()
    }

    /// The EventBridge event: the feed event itself as the detail, with the organization (source `keel.jobs` for
    /// lifecycle events, `keel.events` for domain events).
    pub fn bus_event(&self, trace_header: Option<String>) -> BusEvent {
        let source = if self.event_type.starts_with(JOB_PREFIX) { BUS_SOURCE } else { DOMAIN_SOURCE };
        BusEvent {
            source: source.to_string(),
            detail_type: self.event_type.clone(),
            detail: json!({"id": self.id, "org_id": self.org_id, "at": self.at, "data": self.data}),
            trace_header,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_types_and_ids_are_bounded_and_the_job_namespace_is_keels() {
        assert!(valid_domain_type("order.placed") && valid_domain_type("a"));
        for bad in ["", "Order", ".x", "job.completed", "a b", &"x".repeat(129)] {
            assert!(!valid_domain_type(bad), "{bad}");
        }
        assert!(valid_domain_id("evt:2026-12-01.7_a-b"));
        assert!(!valid_domain_id("") && !valid_domain_id("a/b") && !valid_domain_id(&"x".repeat(129)));
    }
}
