//! The queue port over SQS. Visibility timeout, receive count and redrive to a dead-letter queue are SQS's own
//! (configured on the queue: its `VisibilityTimeout` and `RedrivePolicy`); this adapter only translates.

use crate::sdk_error;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    Message, MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends,
    MessageSystemAttributeValue, QueueAttributeName,
};
use base64::Engine;
use chrono::{DateTime, Utc};
use keel::port::PortError;
use keel::queue::{MAX_RECEIVE, MessageAttrs, Queue, Received};
use std::collections::HashMap;
use std::time::Duration;

/// SQS's longest long poll.
const MAX_WAIT_SECS: u64 = 20;
/// SQS's longest visibility timeout (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// The attribute name Keel carries the X-Ray trace header under. SQS has a system attribute of this name, which
/// Lambda and X-Ray read: a well-formed header is sent as that system attribute and comes back under this name, so
/// callers see one plain attribute on every backend.
pub use keel::queue::TRACE_HEADER_ATTRIBUTE;
/// The data type every attribute is sent with; it counts towards the message size.
use keel::queue::{STRING_TYPE, check_message};

/// A [`Queue`] backed by one SQS queue, addressed by its URL.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    name: String,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue").field("queue_url", &self.queue_url).finish_non_exhaustive()
    }
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        let queue_url = queue_url.into();
        let name = queue_url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
        Self { client, queue_url, name }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    fn decode(message: Message) -> Result<Received, PortError> {
        let malformed = |what: &str| PortError::Unavailable(format!("SQS ReceiveMessage returned no {what}"));
        let system = message.attributes.unwrap_or_default();
        let receive_count = system
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| malformed("ApproximateReceiveCount"))?;
        let sent_at = system
            .get(&MessageSystemAttributeName::SentTimestamp)
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .ok_or_else(|| malformed("SentTimestamp"))?;
        let mut attributes: MessageAttrs = message
            .message_attributes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| attribute_string(value).map(|v| (name, v)))
            .collect();
        if let Some(trace) = system.get(&MessageSystemAttributeName::AwsTraceHeader) {
            attributes.entry(TRACE_HEADER_ATTRIBUTE.to_string()).or_insert_with(|| trace.clone());
        }
        Ok(Received {
            message_id: message.message_id.ok_or_else(|| malformed("MessageId"))?,
            receipt: message.receipt_handle.ok_or_else(|| malformed("ReceiptHandle"))?,
            body: message.body.unwrap_or_default(),
            attributes,
            receive_count,
            sent_at,
        })
    }
}

/// The string form of a message attribute: String and Number values as sent, Binary ones base64-encoded
/// (this adapter only sends strings, but another producer may not).
fn attribute_string(value: MessageAttributeValue) -> Option<String> {
    match (value.string_value, value.binary_value) {
        (Some(s), _) => Some(s),
        (None, Some(blob)) => Some(base64::engine::general_purpose::STANDARD.encode(blob.as_ref())),
        (None, None) => None,
    }
}

/// Maps the SQS errors that say a receipt handle is no longer (or never was) good.
fn receipt_error<E: ProvideErrorMetadata>(operation: &str, err: &SdkError<E>) -> PortError {
    match err.code() {
        Some(code) if code.contains("ReceiptHandleIsInvalid") || code.contains("MessageNotInflight") => {
            PortError::Invalid(format!("{operation}: the receipt is not valid ({code})"))
        }
        _ => sdk_error(operation, err),
    }
}

#[async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str, attributes: &MessageAttrs) -> Result<String, PortError> {
        check_message(body, attributes)?;
        let mut message_attributes = HashMap::with_capacity(attributes.len());
        let mut trace_header = None;
        for (name, value) in attributes {
            // SQS accepts only a correctly formatted X-Ray header as the system attribute; anything else travels
            // as an ordinary attribute of the same name.
            if name == TRACE_HEADER_ATTRIBUTE && value.starts_with("Root=") {
                let system = MessageSystemAttributeValue::builder()
                    .data_type(STRING_TYPE)
                    .string_value(value)
                    .build()
                    .map_err(|_| PortError::Invalid("the trace header cannot be sent".into()))?;
                trace_header = Some(system);
                continue;
            }
            let value = MessageAttributeValue::builder()
                .data_type(STRING_TYPE)
                .string_value(value)
                .build()
                .map_err(|_| PortError::Invalid(format!("message attribute `{name}` cannot be sent")))?;
            message_attributes.insert(name.clone(), value);
        }
        let output = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .set_message_attributes((!message_attributes.is_empty()).then_some(message_attributes))
            .set_message_system_attributes(
                trace_header.map(|value| HashMap::from([(MessageSystemAttributeNameForSends::AwsTraceHeader, value)])),
            )
            .send()
            .await
            .map_err(|e| sdk_error("SQS SendMessage", &e))?;
        output.message_id.ok_or_else(|| PortError::Unavailable("SQS SendMessage returned no MessageId".into()))
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, PortError> {
        let max = i32::try_from(max.clamp(1, MAX_RECEIVE)).unwrap_or(1);
        let wait = i32::try_from(wait.as_secs().min(MAX_WAIT_SECS)).unwrap_or(0);
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sdk_error("SQS ReceiveMessage", &e))?;
        output.messages.unwrap_or_default().into_iter().map(Self::decode).collect()
    }

    async fn delete(&self, receipt: &str) -> Result<(), PortError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| receipt_error("SQS DeleteMessage", &e))
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), PortError> {
        let secs = i32::try_from(timeout.as_secs().min(MAX_VISIBILITY_SECS)).unwrap_or(0);
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| receipt_error("SQS ChangeMessageVisibility", &e))
    }

    async fn depth(&self) -> Result<u64, PortError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| sdk_error("SQS GetQueueAttributes", &e))?;
        let attributes = output.attributes.unwrap_or_default();
        let count = |name: QueueAttributeName| -> u64 {
            attributes.get(&name).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
        };
        Ok(count(QueueAttributeName::ApproximateNumberOfMessages)
            + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("SQS GetQueueAttributes", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::from_conf(aws_sdk_sqs::Config::builder().behavior_version_latest().build())
    }

    #[test]
    fn name_is_the_last_url_segment() {
        let queue = SqsQueue::new(client(), "https://sqs.eu-west-1.amazonaws.com/123456789012/keel-webhooks");
        assert_eq!(queue.name(), "keel-webhooks");
        let local = SqsQueue::new(client(), "http://127.0.0.1:5000/123456789012/jobs-dlq/");
        assert_eq!(local.name(), "jobs-dlq");
    }
}
