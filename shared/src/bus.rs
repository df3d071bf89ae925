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
