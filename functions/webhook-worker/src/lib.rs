//! The webhook worker: SQS batches of delivery pointers in, verified events out to EventBridge
//! (source `keel.webhooks`, detail-type `<provider>.<event type>`), every step recorded on the delivery.
//!
//! Exactly-once forwarding rests on the delivery record: a worker claims it by bumping its version (the fencing
//! token) and setting a lease; `completed` deliveries are acknowledged without forwarding again; a worker whose
//! lease was taken over cannot record completion. The one window left is a crash between a successful publish and
//! the completion write, which the worker narrows by retrying that write; past it, delivery is at-least-once and
//! consumers deduplicate on `delivery_id`.

use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Duration, Utc};
use keel::bus::{BusEvent, EventBus, MAX_EVENT_BYTES};
use keel::clock::Clock;
use keel::config::{ConfigError, Env};
use keel::function::{Invocation, QueueFunction, deliver_again};
use keel::metrics;
use keel::port::PortError;
use keel::queue::{MessageAttrs, Queue, TRACE_HEADER_ATTRIBUTE};
use keel::resources::Resources;
use keel::table::{Expect, Table};
use keel_webhooks::{self as webhooks, Delivery, QueueMessage, Status};
use serde_json::{Value, json};
use std::sync::Arc;

pub const TABLE_VAR: &str = "WEBHOOKS_TABLE";
pub const DLQ_VAR: &str = "WEBHOOK_DLQ_URL";
pub const BUS_VAR: &str = "EVENT_BUS_NAME";
pub const MAX_RECEIVE_VAR: &str = "WEBHOOK_MAX_RECEIVE_COUNT";
pub const LEASE_VAR: &str = "WEBHOOK_LEASE_SECONDS";
pub const QUEUE_VAR: &str = "WEBHOOK_QUEUE_URL";
pub const RETRY_BASE_VAR: &str = "WEBHOOK_RETRY_BASE_SECONDS";
pub const RETRY_MAX_VAR: &str = "WEBHOOK_RETRY_MAX_SECONDS";

/// Longest error text kept on a delivery record.
const MAX_ERROR_LEN: usize = 512;

pub struct Worker {
    table: Arc<dyn Table>,
    /// The source queue, to delay a failed message's next delivery (exponential backoff).
    queue: Arc<dyn Queue>,
    dead_letters: Arc<dyn Queue>,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    /// The source queue's maxReceiveCount: a failure on this receive is the last before SQS dead-letters it.
    max_receive_count: u32,
    lease: Duration,
    retry_base: std::time::Duration,
    retry_max: std::time::Duration,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<Worker, ConfigError> {
    let lease_seconds: i64 = env.parse_or(LEASE_VAR, "a number of seconds", 60)?;
    let retry_base: u64 = env.parse_or(RETRY_BASE_VAR, "a number of seconds", 10)?;
    let retry_max: u64 = env.parse_or(RETRY_MAX_VAR, "a number of seconds", 300)?;
    Ok(Worker {
        table: resources.table(TABLE_VAR)?,
        queue: resources.queue(QUEUE_VAR)?,
        dead_letters: resources.queue(DLQ_VAR)?,
        bus: resources.bus(BUS_VAR)?,
        clock: resources.clock(),
        max_receive_count: env.parse_or(MAX_RECEIVE_VAR, "a positive integer", 5)?,
        lease: Duration::seconds(lease_seconds.max(1)),
        retry_base: std::time::Duration::from_secs(retry_base),
        // SQS caps a visibility timeout at 12 hours.
        retry_max: std::time::Duration::from_secs(retry_max.min(12 * 3600)),
    })
}

/// Why one message was not processed; it is reported as a batch item failure and retried by SQS.
#[derive(Debug, thiserror::Error)]
enum Retry {
    /// Another worker holds the delivery until then (or raced us to claim it: `None`).
    #[error("another worker holds the delivery")]
    Leased(Option<DateTime<Utc>>),
    #[error("{0}")]
    Backend(#[from] PortError),
    #[error("forwarding timed out")]
    Timeout,
}

#[async_trait]
impl QueueFunction for Worker {
    async fn call(&self, event: SqsEvent, invocation: Invocation) -> SqsBatchResponse {
        // Each message continues the trace it was sent in (its `AWSTraceHeader`), whatever the batch's own.
        let outcomes = futures::future::join_all(event.records.iter().map(|record| {
            let header = record.attributes.get(TRACE_HEADER_ATTRIBUTE).map(String::as_str);
            keel::trace::invocation("webhook-worker", header, self.process(record, &invocation))
        }))
        .await;
        let mut response = SqsBatchResponse::default();
        for (record, outcome) in event.records.iter().zip(outcomes) {
            if let Err(reason) = outcome {
                let delay = self.retry_delay(record, &reason);
                let delay = deliver_again(self.queue.as_ref(), record, delay, &mut response).await;
                let message_id = record.message_id.as_deref().unwrap_or_default();
                tracing::warn!(%message_id, %reason, delay_seconds = delay.as_secs(), "message will be retried");
            }
        }
        response
    }
}

impl Worker {
    /// Delay before the next delivery of a failed message: base * 2^(receives - 1), capped; and never before a
    /// lease held by another worker ends, so waiting for it does not use up the message's receives.
    fn retry_delay(&self, record: &SqsMessage, reason: &Retry) -> std::time::Duration {
        let exponent = receive_count(record).saturating_sub(1).min(20);
        let backoff = self.retry_base.saturating_mul(1 << exponent).min(self.retry_max);
        let lease_left = match reason {
            Retry::Leased(Some(until)) => (*until - self.clock.now()).to_std().unwrap_or_default(),
            _ => std::time::Duration::ZERO,
        };
        // Whole seconds, rounded up: SQS visibility timeouts are in seconds.
        let delay = backoff.max(lease_left);
        std::time::Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
    }

    async fn process(&self, record: &SqsMessage, invocation: &Invocation) -> Result<(), Retry> {
        let body = record.body.as_deref().unwrap_or_default();
        let Ok(message) = serde_json::from_str::<QueueMessage>(body) else {
            return self.dead_letter_poison(body, "not a delivery pointer").await;
        };
        let key = webhooks::delivery_key(&message.provider, &message.delivery_id);
        let Some(item) = self.table.get(&key).await? else {
            return self.dead_letter_poison(body, "no such delivery").await;
        };
        let Some(mut delivery) = Delivery::from_item(&item) else {
            return self.dead_letter_poison(body, "delivery record unreadable").await;
        };
        let now = self.clock.now();
        if delivery.payload_removed_at.is_some() && delivery.status != Status::Completed {
            // Past its payload's retention there is nothing to forward (a redrive of an old dead letter).
            return self.gone(delivery, item.version, now).await;
        }
        match delivery.status {
            Status::Completed => return Ok(()),
            Status::Processing if delivery.lease_until.is_some_and(|until| until > now) => {
                return Err(Retry::Leased(delivery.lease_until));
            }
            _ => {}
        }
        // Claim: the version bump is the fencing token for every later write of this attempt.
        delivery.status = Status::Processing;
        delivery.attempts += 1;
        delivery.started_at = Some(now);
        delivery.updated_at = now;
        delivery.lease_until = Some(now + self.lease);
        let claimed = item.version + 1;
        match self.table.put(delivery.to_item(claimed), Expect::Version(item.version)).await {
            Ok(()) => {}
            Err(PortError::ConditionFailed { .. }) => return Err(Retry::Leased(None)),
            Err(error) => return Err(error.into()),
        }
        match self.forward(&delivery, invocation.deadline).await {
            Ok(()) => {
                let provider = [("Provider", delivery.provider.as_str())];
                metrics::count("DeliveriesForwarded", &provider, 1.0);
                let age = (now - delivery.received_at).num_milliseconds().max(0) as f64;
                metrics::milliseconds("DeliveryAgeAtForward", &provider, age);
                self.finish(delivery, claimed, now).await
            }
            Err(error) => {
                let last_attempt = receive_count(record) >= self.max_receive_count;
                delivery.status = if last_attempt { Status::DeadLetter } else { Status::Failed };
                let provider = [("Provider", delivery.provider.as_str())];
                if last_attempt {
                    metrics::count("DeliveriesDeadLettered", &provider, 1.0);
                } else {
                    metrics::count("DeliveriesFailed", &provider, 1.0);
                }
                delivery.last_error = Some(error.to_string().chars().take(MAX_ERROR_LEN).collect());
                self.record_outcome(&mut delivery, claimed, now).await.ok();
                Err(error)
            }
        }
    }

    async fn forward(&self, delivery: &Delivery, deadline: DateTime<Utc>) -> Result<(), Retry> {
        let event = bus_event(delivery);
        // Leave a second before the invocation's deadline to record the outcome.
        let budget = (deadline - self.clock.now() - Duration::seconds(1)).to_std().unwrap_or_default();
        let budget = budget.min(std::time::Duration::from_secs(10));
        match tokio::time::timeout(budget, self.bus.put(std::slice::from_ref(&event))).await {
            Ok(result) => result.map_err(Retry::Backend),
            Err(_) => Err(Retry::Timeout),
        }
    }

    /// Records completion, retrying transient failures: a lost completion means the event is forwarded again.
    async fn finish(&self, mut delivery: Delivery, claimed: u64, started: DateTime<Utc>) -> Result<(), Retry> {
        delivery.status = Status::Completed;
        delivery.last_error = None;
        let write = || {
            let mut attempt = delivery.clone();
            async move { self.record_outcome(&mut attempt, claimed, started).await }
        };
        let result = write
            .retry(ExponentialBuilder::default().with_min_delay(std::time::Duration::from_millis(20)).with_max_times(8))
            .when(|e: &PortError| !e.is_condition_failed())
            .await;
        match result {
            Ok(()) => {
                tracing::info!(provider = %delivery.provider, delivery_id = %delivery.delivery_id, "webhook forwarded");
                Ok(())
            }
            // The lease was taken over: the other worker owns the outcome now.
            Err(PortError::ConditionFailed { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn record_outcome(
        &self,
        delivery: &mut Delivery,
        claimed: u64,
        started: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let now = self.clock.now();
        delivery.updated_at = now;
        delivery.lease_until = None;
        delivery.duration_ms = Some((now - started).num_milliseconds());
        if delivery.status == Status::Completed {
            delivery.completed_at = Some(now);
        }
        self.table.put(delivery.to_item(claimed + 1), Expect::Version(claimed)).await
    }

    /// Records a delivery whose payload was removed as dead-lettered for good, and acknowledges its message.
    async fn gone(&self, mut delivery: Delivery, version: u64, now: DateTime<Utc>) -> Result<(), Retry> {
        if delivery.status != Status::DeadLetter {
            delivery.status = Status::DeadLetter;
            delivery.last_error = Some("its payload was removed after the 24-hour retention: not forwarded".into());
            delivery.updated_at = now;
            match self.table.put(delivery.to_item(version + 1), Expect::Version(version)).await {
                Ok(()) => {}
                Err(PortError::ConditionFailed { .. }) => return Err(Retry::Leased(None)),
                Err(error) => return Err(error.into()),
            }
        }
        tracing::warn!(delivery_id = %delivery.delivery_id, "a delivery past its payload's retention was not forwarded");
        Ok(())
    }

    /// A message that can never succeed goes straight to the dead-letter queue instead of burning retries.
    async fn dead_letter_poison(&self, body: &str, reason: &str) -> Result<(), Retry> {
        let mut attributes = MessageAttrs::new();
        attributes.insert("keel-dead-letter-reason".into(), reason.into());
        self.dead_letters.send(body, &attributes).await?;
        tracing::error!(reason, "poison message moved to the dead-letter queue");
        Ok(())
    }
}

fn receive_count(record: &SqsMessage) -> u32 {
    record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1)
}

/// The EventBridge event for a delivery: the payload as JSON when the body is JSON, else base64. A payload too
/// large for EventBridge is left out (`payload_omitted`); consumers fetch it from the operator API.
pub fn bus_event(delivery: &Delivery) -> BusEvent {
    let body = delivery.body();
    let mut detail = json!({
        "provider": delivery.provider,
        "delivery_id": delivery.delivery_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "received_at": delivery.received_at,
    });
    match serde_json::from_slice::<Value>(&body) {
        Ok(payload) => detail["payload"] = payload,
        Err(_) => detail["payload_base64"] = Value::String(delivery.body_base64.clone()),
    }
    let too_large = serde_json::to_vec(&detail).map_or(true, |encoded| encoded.len() > MAX_EVENT_BYTES - 1024);
    if too_large && let Some(map) = detail.as_object_mut() {
        map.remove("payload");
        map.remove("payload_base64");
        map.insert("payload_omitted".into(), Value::Bool(true));
    }
    BusEvent {
        source: webhooks::BUS_SOURCE.to_string(),
        detail_type: format!("{}.{}", delivery.provider, delivery.event_type),
        detail,
        trace_header: delivery.trace_header.clone(),
    }
}
