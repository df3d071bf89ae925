//! The event bus port over EventBridge `PutEvents`.

use crate::sdk_error;
use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use keel::bus::{BusEvent, EventBus, check_event};
use keel::port::PortError;

/// EventBridge's limit on entries per `PutEvents` request.
pub const MAX_ENTRIES_PER_PUT: usize = 10;

/// An [`EventBus`] that publishes to one EventBridge bus, named or addressed by ARN.
#[derive(Clone)]
pub struct EventBridgeBus {
    client: Client,
    bus_name: String,
}

impl std::fmt::Debug for EventBridgeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBridgeBus").field("bus_name", &self.bus_name).finish_non_exhaustive()
    }
}

impl EventBridgeBus {
    pub fn new(client: Client, bus_name: impl Into<String>) -> Self {
        Self { client, bus_name: bus_name.into() }
    }

    pub fn bus_name(&self) -> &str {
        &self.bus_name
    }

    fn entry(&self, event: &BusEvent) -> Result<PutEventsRequestEntry, PortError> {
        let detail = check_event(event)?;
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(&event.source)
            .detail_type(&event.detail_type)
            .detail(detail)
            .set_trace_header(event.trace_header.clone())
            .build())
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn put(&self, events: &[BusEvent]) -> Result<(), PortError> {
        // Validate every event before publishing any, so a bad event never leaves half the batch published.
        let entries = events.iter().map(|e| self.entry(e)).collect::<Result<Vec<_>, _>>()?;
        for chunk in entries.chunks(MAX_ENTRIES_PER_PUT) {
            let output = self
                .client
                .put_events()
                .set_entries(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| sdk_error("EventBridge PutEvents", &e))?;
            if output.failed_entry_count() > 0 {
                let codes: Vec<&str> = output.entries().iter().filter_map(|e| e.error_code()).collect();
                return Err(PortError::Unavailable(format!(
                    "EventBridge PutEvents failed {} of {} entries: {}",
                    output.failed_entry_count(),
                    chunk.len(),
                    codes.join(", ")
                )));
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.client
            .describe_event_bus()
            .name(&self.bus_name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("EventBridge DescribeEventBus", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::bus::MAX_EVENT_BYTES;
    use serde_json::json;

    fn bus() -> EventBridgeBus {
        let client = Client::from_conf(aws_sdk_eventbridge::Config::builder().behavior_version_latest().build());
        EventBridgeBus::new(client, "keel")
    }

    fn event(detail: serde_json::Value) -> BusEvent {
        BusEvent { source: "keel.jobs".into(), detail_type: "job.completed".into(), detail, trace_header: None }
    }

    #[test]
    fn entries_carry_bus_and_trace_header() {
        let mut traced = event(json!({"id": 1}));
        traced.trace_header = Some("Root=1-5759e988-bd862e3fe1be46a994272793".into());
        let entry = bus().entry(&traced).unwrap();
        assert_eq!(entry.event_bus_name(), Some("keel"));
        assert_eq!(entry.trace_header(), Some("Root=1-5759e988-bd862e3fe1be46a994272793"));
        assert_eq!(entry.detail(), Some(r#"{"id":1}"#));
    }

    #[test]
    fn malformed_and_oversize_events_are_invalid() {
        assert!(matches!(bus().entry(&event(json!([1]))), Err(PortError::Invalid(_))));
        let big = event(json!({"blob": "x".repeat(MAX_EVENT_BYTES)}));
        assert!(matches!(bus().entry(&big), Err(PortError::Invalid(_))));
    }
}
