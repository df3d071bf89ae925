//! The queue port, with SQS semantics: at-least-once delivery, a visibility timeout after which an undeleted message
//! is delivered again, a receive count, and redrive to a dead-letter queue once the count passes maxReceiveCount
//! (configured on the queue: in AWS by its RedrivePolicy, embedded by its `QueueSpec`).

use crate::port::PortError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

/// SQS's message size limit; the embedded queue enforces the same.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Largest batch one receive returns (SQS's limit).
pub const MAX_RECEIVE: usize = 10;

/// String attributes carried beside the body (SQS message attributes), e.g. the trace header.
pub type MessageAttrs = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub message_id: String,
    /// Handle for `delete` and `change_visibility`; valid for this delivery only.
    pub receipt: String,
    pub body: String,
    pub attributes: MessageAttrs,
    /// 1 on first delivery.
    pub receive_count: u32,
    pub sent_at: DateTime<Utc>,
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// The queue's name (the last segment of its URL in AWS).
    fn name(&self) -> &str;
    /// Durably enqueues one message; returns its id.
    async fn send(&self, body: &str, attributes: &MessageAttrs) -> Result<String, PortError>;
    /// Up to `max` (capped at `MAX_RECEIVE`) visible messages, waiting up to `wait` for the first. Each received
    /// message stays invisible for the queue's visibility timeout unless deleted.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, PortError>;
    async fn delete(&self, receipt: &str) -> Result<(), PortError>;
    /// Makes a received message visible again after `timeout` (zero: at once).
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), PortError>;
    /// Approximate number of messages waiting or in flight.
    async fn depth(&self) -> Result<u64, PortError>;
    async fn ping(&self) -> Result<(), PortError>;
}
