//! The event bus port (EventBridge). The embedded bus records every event and routes matching ones to queues.

use crate::port::PortError;
use async_trait::async_trait;

/// EventBridge's per-entry size limit.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct BusEvent {
    pub source: String,
    pub detail_type: String,
    /// A JSON object.
    pub detail: serde_json::Value,
    /// X-Ray trace header to propagate, if any.
    pub trace_header: Option<String>,
}

/// Which events a rule matches: an event matches when its source is listed (or the list is empty) and its
/// detail-type is listed or starts with a listed prefix ending in `*` (or the list is empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventPattern {
    pub sources: Vec<String>,
    pub detail_types: Vec<String>,
}

impl EventPattern {
    pub fn matches(&self, event: &BusEvent) -> bool {
        let source_ok = self.sources.is_empty() || self.sources.contains(&event.source);
        let type_ok = self.detail_types.is_empty()
            || self.detail_types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => event.detail_type.starts_with(prefix),
                None => *t == event.detail_type,
            });
        source_ok && type_ok
    }
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes the events; an error means none may be assumed published (the caller retries the batch).
    async fn put(&self, events: &[BusEvent]) -> Result<(), PortError>;
    async fn ping(&self) -> Result<(), PortError>;
}

/// Rejects what EventBridge's PutEvents would, before publishing; returns the serialised detail. Both adapters call
/// it, so they refuse the same events alike.
pub fn check_event(event: &BusEvent) -> Result<String, PortError> {
    if event.source.is_empty() || event.detail_type.is_empty() {
        return Err(PortError::Invalid("an event needs a source and a detail-type".into()));
    }
    if !event.detail.is_object() {
        return Err(PortError::Invalid("an event's detail must be a JSON object".into()));
    }
    let detail = serde_json::to_string(&event.detail)
        .map_err(|_| PortError::Invalid("an event's detail could not be serialised".into()))?;
    // EventBridge's entry size: source, detail-type and detail in UTF-8.
    let size = event.source.len() + event.detail_type.len() + detail.len();
    if size > MAX_EVENT_BYTES {
        return Err(PortError::Invalid(format!("event is {size} bytes; the limit is {MAX_EVENT_BYTES}")));
    }
    Ok(detail)
}
