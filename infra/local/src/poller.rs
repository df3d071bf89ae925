//! The SQS event source mapping: long-poll a queue, hand each batch to the worker as an `SqsEvent`, delete what
//! succeeded. With `ReportBatchItemFailures`, the messages listed in `batchItemFailures` stay (Lambda's rules: an
//! identifier that is empty or not in the batch fails the whole batch); without it, the batch succeeds or fails as
//! a whole. Failed messages wait out their visibility timeout; redelivery and redrive to the DLQ are the queue's.

use crate::template::{LOCAL_ACCOUNT, LOCAL_REGION};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use keel::function::{Invocation, QueueFunction};
use keel::queue::{Queue, Received};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one receive waits for a first message.
const WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed receive, so a broken backend is not hammered.
const BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Poller {
    pub function: String,
    pub handler: Arc<dyn QueueFunction>,
    pub queue: Arc<dyn Queue>,
    pub batch_size: usize,
    pub report_batch_item_failures: bool,
    pub timeout: Duration,
}

/// The queue's ARN as the host makes it up.
pub fn queue_arn(queue: &str) -> String {
    format!("arn:aws:sqs:{LOCAL_REGION}:{LOCAL_ACCOUNT}:{queue}")
}

/// The Lambda event for a batch, as JSON.
pub fn event_json(messages: &[Received], queue: &str) -> Value {
    let arn = queue_arn(queue);
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut attributes = json!({
                "ApproximateReceiveCount": m.receive_count.to_string(),
                "SentTimestamp": m.sent_at.timestamp_millis().to_string(),
            });
            let mut message_attributes = serde_json::Map::new();
            for (name, value) in &m.attributes {
                if name == keel::queue::TRACE_HEADER_ATTRIBUTE {
                    attributes[keel::queue::TRACE_HEADER_ATTRIBUTE] = Value::String(value.clone());
                } else {
                    message_attributes.insert(name.clone(), json!({"stringValue": value, "dataType": "String"}));
                }
            }
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt,
                "body": m.body,
                "attributes": attributes,
                "messageAttributes": message_attributes,
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": LOCAL_REGION,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The receipts to delete after the worker answered `response` (`None`: it failed as a whole, delete nothing).
pub fn receipts_to_delete(
    messages: &[Received],
    response: Option<&SqsBatchResponse>,
    report_batch_item_failures: bool,
) -> Vec<String> {
    let Some(response) = response else { return Vec::new() };
    let ids: HashSet<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let failed: HashSet<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    let all = || messages.iter().map(|m| m.receipt.clone()).collect();
    if !report_batch_item_failures {
        // A queue function cannot fail as a whole except by listing every message.
        return if !messages.is_empty() && ids.iter().all(|id| failed.contains(id)) { Vec::new() } else { all() };
    }
    if failed.iter().any(|id| id.is_empty() || !ids.contains(id)) {
        return Vec::new();
    }
    messages.iter().filter(|m| !failed.contains(m.message_id.as_str())).map(|m| m.receipt.clone()).collect()
}

impl Poller {
    /// Polls until `cancel` fires; a batch in flight is finished first.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(function = %self.function, queue = %self.queue.name(), "polling queue");
        // The batch in flight hears the shutdown too, so long work can hand back what it holds.
        let stop = keel::function::Stop::default();
        let asked = stop.clone();
        let watch = cancel.clone();
        tokio::spawn(async move {
            watch.cancelled().await;
            asked.stop();
        });
        while !cancel.is_cancelled() {
            // A shutdown does not wait out the long poll. A receive dropped after it took messages leaves them in
            // flight: visible again after their visibility timeout, or at once when the host next starts.
            let received = tokio::select! {
                () = cancel.cancelled() => break,
                received = self.queue.receive(self.batch_size, WAIT) => received,
            };
            let messages = match received {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(function = %self.function, queue = %self.queue.name(), %error, "receive failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(BACKOFF) => continue,
                    }
                }
            };
            if !messages.is_empty() {
                self.process(messages, &stop).await;
            }
        }
        tracing::info!(function = %self.function, queue = %self.queue.name(), "stopped polling");
    }

    async fn process(&self, messages: Vec<Received>, stop: &keel::function::Stop) {
        let request_id = ulid::Ulid::new().to_string();
        let trace_header = messages.iter().find_map(|m| m.attributes.get(keel::queue::TRACE_HEADER_ATTRIBUTE).cloned());
        let span = keel::telemetry::invocation_span(&self.function, &request_id, trace_header.as_deref());
        let started = std::time::Instant::now();
        let event: SqsEvent = match serde_json::from_value(event_json(&messages, self.queue.name())) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(function = %self.function, %error, "the SQS event does not deserialise");
                return;
            }
        };
        let deadline = Utc::now() + chrono::Duration::from_std(self.timeout).unwrap_or(chrono::Duration::MAX);
        let invocation = Invocation { request_id: request_id.clone(), deadline, trace_header, stop: stop.clone() };
        let handler = self.handler.clone();
        let name = self.function.clone();
        let mut task =
            tokio::spawn(async move { keel::lambda::invoke_queue(&name, handler.as_ref(), event, invocation).await });
        let response = match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(Ok(response)) => Some(response),
            Ok(Err(error)) => {
                tracing::error!(parent: &span, function = %self.function, %error, "the worker panicked; the batch failed");
                None
            }
            Err(_) => {
                task.abort();
                tracing::error!(parent: &span, function = %self.function, timeout_s = self.timeout.as_secs(), "the worker timed out; the batch failed");
                None
            }
        };
        if let Some(response) = &response {
            let listed = response.batch_item_failures.len();
            if !self.report_batch_item_failures && listed > 0 && listed < messages.len() {
                tracing::warn!(parent: &span, function = %self.function, listed,
                    "the worker reported item failures but the event source does not declare ReportBatchItemFailures; the whole batch counts as processed");
            }
        }
        let receipts = receipts_to_delete(&messages, response.as_ref(), self.report_batch_item_failures);
        let mut deleted = 0;
        for receipt in &receipts {
            match self.queue.delete(receipt).await {
                Ok(()) => deleted += 1,
                Err(error) => {
                    tracing::warn!(parent: &span, function = %self.function, %error, "delete failed; the message will be redelivered")
                }
            }
        }
        tracing::info!(parent: &span, function = %self.function, queue = %self.queue.name(), received = messages.len(),
            deleted, failed = messages.len() - receipts.len(), duration_ms = started.elapsed().as_millis() as u64, "batch processed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::sqs::BatchItemFailure;

    fn message(id: &str) -> Received {
        Received {
            message_id: id.into(),
            receipt: format!("r-{id}"),
            body: format!("body-{id}"),
            attributes: [
                ("AWSTraceHeader".to_string(), "Root=1-abc".to_string()),
                ("kind".to_string(), "x".to_string()),
            ]
            .into_iter()
            .collect(),
            receive_count: 2,
            sent_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        }
    }

    fn failures(ids: &[&str]) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for id in ids {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id.to_string();
            response.batch_item_failures.push(failure);
        }
        response
    }

    #[test]
    fn the_event_carries_sqs_attributes() {
        let event: SqsEvent = serde_json::from_value(event_json(&[message("m1")], "WebhookQueue")).unwrap();
        let record = &event.records[0];
        assert_eq!(record.message_id.as_deref(), Some("m1"));
        assert_eq!(record.receipt_handle.as_deref(), Some("r-m1"));
        assert_eq!(record.body.as_deref(), Some("body-m1"));
        assert_eq!(record.attributes["ApproximateReceiveCount"], "2");
        assert_eq!(record.attributes["SentTimestamp"], "1700000000123");
        assert_eq!(record.attributes["AWSTraceHeader"], "Root=1-abc");
        assert_eq!(record.message_attributes["kind"].string_value.as_deref(), Some("x"));
        assert!(!record.message_attributes.contains_key("AWSTraceHeader"));
        assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
        assert_eq!(record.event_source_arn.as_deref(), Some("arn:aws:sqs:local:000000000000:WebhookQueue"));
    }

    #[test]
    fn partial_batch_failures_follow_lambdas_rules() {
        let batch = [message("a"), message("b"), message("c")];
        assert_eq!(receipts_to_delete(&batch, Some(&failures(&[])), true), ["r-a", "r-b", "r-c"]);
        assert_eq!(receipts_to_delete(&batch, Some(&failures(&["b"])), true), ["r-a", "r-c"]);
        assert!(receipts_to_delete(&batch, Some(&failures(&["zzz"])), true).is_empty(), "unknown id fails the batch");
        assert!(receipts_to_delete(&batch, Some(&failures(&[""])), true).is_empty(), "empty id fails the batch");
        assert!(receipts_to_delete(&batch, None, true).is_empty());
        // Without ReportBatchItemFailures: all or nothing.
        assert_eq!(receipts_to_delete(&batch, Some(&failures(&["b"])), false).len(), 3);
        assert!(receipts_to_delete(&batch, Some(&failures(&["a", "b", "c"])), false).is_empty());
        assert!(receipts_to_delete(&batch, None, false).is_empty());
    }
}
