//! The event bus port over redb: every event put is recorded durably (in order, with a ULID), then sent as an
//! EventBridge envelope to the queue of every rule it matches. Rules are configuration, held in memory.

use super::{EmbeddedDb, Rule, malformed, read_table, unavailable};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use keel::bus::{BusEvent, EventBus, EventPattern, check_event};
use keel::port::PortError;
use keel::queue::{MessageAttrs, Queue};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type Log<'a> = TableDefinition<'a, u64, &'static [u8]>;

/// The account EventBridge would name in the envelope; there is none locally.
const LOCAL_ACCOUNT: &str = "000000000000";

/// One event as the bus recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// A ULID, also the envelope's `id`.
    pub id: String,
    pub at: DateTime<Utc>,
    pub event: BusEvent,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    at: DateTime<Utc>,
    source: String,
    detail_type: String,
    detail: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_header: Option<String>,
}

impl Stored {
    fn into_recorded(self) -> RecordedEvent {
        RecordedEvent {
            id: self.id,
            at: self.at,
            event: BusEvent {
                source: self.source,
                detail_type: self.detail_type,
                detail: self.detail,
                trace_header: self.trace_header,
            },
        }
    }
}

/// The event as an EventBridge rule delivers it to an SQS target.
fn envelope(recorded: &RecordedEvent) -> String {
    serde_json::json!({
        "version": "0",
        "id": recorded.id,
        "detail-type": recorded.event.detail_type,
        "source": recorded.event.source,
        "account": LOCAL_ACCOUNT,
        "time": recorded.at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "region": "local",
        "resources": [],
        "detail": recorded.event.detail,
    })
    .to_string()
}

/// An [`EventBus`] stored in an [`EmbeddedDb`]. Handles of the same name share their rules.
#[derive(Clone)]
pub struct EmbeddedBus {
    db: EmbeddedDb,
    name: String,
    redb_name: Arc<str>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus").field("name", &self.name).finish_non_exhaustive()
    }
}

impl EmbeddedBus {
    pub(crate) fn new(db: EmbeddedDb, name: &str) -> Self {
        Self { db, name: name.to_string(), redb_name: format!("bus/{name}").into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Routes every later event matching `pattern` to `target`.
    pub fn add_rule(&self, pattern: EventPattern, target: Arc<dyn Queue>) {
        self.db.add_rule(&self.name, Rule { pattern, target });
    }

    /// Every event ever put on this bus, oldest first. Blocks briefly on a read of the database.
    pub fn recorded(&self) -> Result<Vec<RecordedEvent>, PortError> {
        let Some(log) = read_table(&self.db.inner.db, Log::new(&self.redb_name))? else { return Ok(Vec::new()) };
        let mut events = Vec::new();
        for entry in log.iter().map_err(|e| unavailable("read", e))? {
            let (_, value) = entry.map_err(|e| unavailable("read", e))?;
            let stored: Stored = serde_json::from_slice(value.value()).map_err(|_| malformed("bus event"))?;
            events.push(stored.into_recorded());
        }
        Ok(events)
    }
}

#[async_trait]
impl EventBus for EmbeddedBus {
    async fn put(&self, events: &[BusEvent]) -> Result<(), PortError> {
        // Validate the whole batch before recording any of it.
        for event in events {
            check_event(event)?;
        }
        if events.is_empty() {
            return Ok(());
        }
        let at = Utc::now();
        let recorded: Vec<RecordedEvent> = events
            .iter()
            .map(|event| RecordedEvent { id: keel::clock::ulid_at(at).to_string(), at, event: event.clone() })
            .collect();
        let mut values = Vec::with_capacity(recorded.len());
        for r in &recorded {
            let stored = Stored {
                id: r.id.clone(),
                at: r.at,
                source: r.event.source.clone(),
                detail_type: r.event.detail_type.clone(),
                detail: r.event.detail.clone(),
                trace_header: r.event.trace_header.clone(),
            };
            values.push(
                serde_json::to_vec(&stored).map_err(|_| PortError::Invalid("event could not be serialised".into()))?,
            );
        }
        let redb_name = self.redb_name.clone();
        self.db
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                {
                    let mut log = txn.open_table(Log::new(&redb_name)).map_err(|e| unavailable("write", e))?;
                    let mut seq = log.last().map_err(|e| unavailable("read", e))?.map_or(0, |(k, _)| k.value());
                    for value in &values {
                        seq = seq.saturating_add(1);
                        log.insert(seq, value.as_slice()).map_err(|e| unavailable("write", e))?;
                    }
                }
                txn.commit().map_err(|e| unavailable("commit", e))
            })
            .await?;
        let rules = self.db.rules(&self.name);
        for r in &recorded {
            let mut attributes = MessageAttrs::new();
            if let Some(trace) = &r.event.trace_header {
                attributes.insert(keel::queue::TRACE_HEADER_ATTRIBUTE.into(), trace.clone());
            }
            let body = envelope(r);
            for rule in rules.iter().filter(|rule| rule.pattern.matches(&r.event)) {
                match rule.target.send(&body, &attributes).await {
                    Ok(_) => {}
                    // EventBridge accepts such an event and its delivery fails out of band; retrying cannot help.
                    Err(PortError::Invalid(reason)) => {
                        tracing::warn!(bus = %self.name, target = rule.target.name(), %reason, "event not delivered");
                    }
                    // The caller retries the batch, which may record and deliver again: at least once, as in AWS.
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.db.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueueSpec;
    use keel::bus::MAX_EVENT_BYTES;
    use keel::clock::{Clock, SystemClock};
    use serde_json::json;
    use std::time::Duration;

    fn event(source: &str, detail_type: &str, detail: serde_json::Value) -> BusEvent {
        BusEvent { source: source.into(), detail_type: detail_type.into(), detail, trace_header: None }
    }

    fn setup() -> (tempfile::TempDir, EmbeddedDb, EmbeddedBus) {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let bus = db.bus("events");
        (dir, db, bus)
    }

    fn queue(db: &EmbeddedDb, name: &str) -> Arc<crate::EmbeddedQueue> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Arc::new(db.queue(QueueSpec::new(name), clock))
    }

    #[tokio::test]
    async fn records_and_routes_matching_events() {
        let (_dir, db, bus) = setup();
        let webhooks = queue(&db, "webhooks");
        let everything = queue(&db, "everything");
        bus.add_rule(
            EventPattern { sources: vec!["keel.webhooks".into()], detail_types: vec!["webhook.*".into()] },
            webhooks.clone(),
        );
        // Another handle on the same bus shares its rules.
        db.bus("events").add_rule(EventPattern::default(), everything.clone());
        let mut traced = event("keel.webhooks", "webhook.received", json!({"id": 1}));
        traced.trace_header = Some("Root=1-abc".into());
        let other = event("keel.jobs", "job.done", json!({"id": 2}));
        bus.put(&[traced.clone(), other.clone()]).await.unwrap();

        let recorded = bus.recorded().unwrap();
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0].event, traced);
        assert_eq!(recorded[1].event, other);
        assert!(ulid::Ulid::from_string(&recorded[0].id).is_ok());
        assert_ne!(recorded[0].id, recorded[1].id);

        let got = webhooks.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attributes.get("AWSTraceHeader").map(String::as_str), Some("Root=1-abc"));
        let envelope: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
        assert_eq!(envelope["version"], "0");
        assert_eq!(envelope["id"], recorded[0].id.as_str());
        assert_eq!(envelope["source"], "keel.webhooks");
        assert_eq!(envelope["detail-type"], "webhook.received");
        assert_eq!(envelope["region"], "local");
        assert_eq!(envelope["resources"], json!([]));
        assert_eq!(envelope["detail"], json!({"id": 1}));
        let time = envelope["time"].as_str().unwrap();
        assert_eq!(DateTime::parse_from_rfc3339(time).unwrap().timestamp(), recorded[0].at.timestamp());

        let all = everything.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[1].attributes.is_empty());
        bus.ping().await.unwrap();
    }

    #[tokio::test]
    async fn invalid_events_reject_the_whole_batch() {
        let (_dir, _db, bus) = setup();
        let good = event("s", "t", json!({}));
        for bad in [
            event("s", "t", json!([1])),
            event("s", "t", json!("text")),
            event("", "t", json!({})),
            event("s", "t", json!({"blob": "x".repeat(MAX_EVENT_BYTES)})),
        ] {
            let result = bus.put(&[good.clone(), bad]).await;
            assert!(matches!(result, Err(PortError::Invalid(_))));
        }
        assert!(bus.recorded().unwrap().is_empty());
        bus.put(&[]).await.unwrap();
        assert!(bus.recorded().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_record_survives_reopening_and_keeps_its_order() {
        let (dir, db, bus) = setup();
        bus.put(&[event("s", "first", json!({}))]).await.unwrap();
        drop((db, bus));
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let bus = db.bus("events");
        bus.put(&[event("s", "second", json!({}))]).await.unwrap();
        let types: Vec<String> = bus.recorded().unwrap().into_iter().map(|r| r.event.detail_type).collect();
        assert_eq!(types, ["first", "second"]);
        assert!(db.bus("elsewhere").recorded().unwrap().is_empty());
    }
}
