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

/// The data type every message attribute is sent with.
pub const STRING_TYPE: &str = "String";

/// String attributes carried beside the body (SQS message attributes), e.g. the trace header.
pub type MessageAttrs = BTreeMap<String, String>;

/// The attribute that carries a message's X-Ray trace header (SQS's system attribute `AWSTraceHeader`).
pub const TRACE_HEADER_ATTRIBUTE: &str = "AWSTraceHeader";

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

/// The size SQS charges a message with: the body plus each attribute's name, data type and value.
pub fn message_size(body: &str, attributes: &MessageAttrs) -> usize {
    body.len() + attributes.iter().map(|(name, value)| name.len() + STRING_TYPE.len() + value.len()).sum::<usize>()
}

/// SQS's limit on message attributes per message.
pub const MAX_ATTRIBUTES: usize = 10;

/// Characters SQS accepts in bodies and attribute values.
fn valid_chars(text: &str) -> bool {
    text.chars().all(
        |c| matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..),
    )
}

/// Attribute names SQS accepts: 1 to 256 of `[A-Za-z0-9_.-]`, no leading, trailing or doubled `.`, and no `AWS.` or
/// `Amazon.` prefix.
fn valid_attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

/// Rejects what SQS's SendMessage would, before sending. Both adapters call it, so they refuse the same messages
/// alike (SQS and emulators differ in how much of this they check themselves).
pub fn check_message(body: &str, attributes: &MessageAttrs) -> Result<(), PortError> {
    let size = message_size(body, attributes);
    if size > MAX_MESSAGE_BYTES {
        return Err(PortError::Invalid(format!("message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")));
    }
    if body.is_empty() || !valid_chars(body) {
        return Err(PortError::Invalid("a message body must be non-empty and hold only characters SQS allows".into()));
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(PortError::Invalid(format!("a message holds at most {MAX_ATTRIBUTES} attributes")));
    }
    for (name, value) in attributes {
        if !valid_attribute_name(name) {
            return Err(PortError::Invalid(format!("`{name}` is not a valid message attribute name")));
        }
        if value.is_empty() || !valid_chars(value) {
            return Err(PortError::Invalid(format!("message attribute `{name}` must be a non-empty valid string")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_body_and_attributes() {
        let attrs = MessageAttrs::from([("trace".to_string(), "abc".to_string())]);
        assert_eq!(message_size("hello", &attrs), 5 + 5 + 6 + 3);
    }

    #[test]
    fn messages_sqs_would_refuse_are_invalid() {
        let none = MessageAttrs::new();
        let attrs = |name: &str, value: &str| MessageAttrs::from([(name.to_string(), value.to_string())]);
        assert!(check_message("ok", &attrs("trace-id.v1", "x")).is_ok());
        assert!(check_message("", &none).is_err());
        assert!(check_message("bell \u{7}", &none).is_err());
        assert!(check_message(&"x".repeat(MAX_MESSAGE_BYTES + 1), &none).is_err());
        assert!(check_message("ok", &attrs("AWS.TraceHeader", "x")).is_err());
        assert!(check_message("ok", &attrs("a..b", "x")).is_err());
        assert!(check_message("ok", &attrs("name", "")).is_err());
        let many: MessageAttrs = (0..=MAX_ATTRIBUTES).map(|i| (format!("a{i}"), "v".to_string())).collect();
        assert!(check_message("ok", &many).is_err());
    }
}
