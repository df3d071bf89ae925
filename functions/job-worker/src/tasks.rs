//! The built-in tasks this worker runs in process (`keel_jobs::builtin`).
//!
//! `keel.check` is the readiness check's round trip (`keel-local check`): it answers the nonce it was given, so a
//! completed job with that output proves the API, the table, the queue, the worker and the record work together.
//!
//! `webhooks.replay` replays every delivery of a provider that a filter selects, oldest first, a page at a time,
//! saving after each page where it got to and what it did so far: an attempt cut short resumes after the last
//! saved delivery. Deliveries the cut attempt replayed after that checkpoint are looked at again: replayed again if
//! the filter still selects them (none, when it selects a status other than pending, since a replay makes them
//! pending), which the webhook worker handles as any replay. A delivery a worker holds, or one that changed since
//! it was read, is skipped and counted, as the operator API's replay skips it. The counts of the output are those
//! of the attempts that saved them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keel::clock::Clock;
use keel::queue::Queue;
use keel::table::{Query, Table};
use keel_jobs::builtin::{Checkpoints, Task, TaskFailure};
use keel_webhooks::{self as webhooks, Delivery};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub const WEBHOOK_REPLAY: &str = "webhooks.replay";
pub const READINESS_CHECK: &str = "keel.check";
/// Deliveries read per page (and per checkpoint).
const PAGE: usize = 100;

pub struct WebhookReplay {
    table: Arc<dyn Table>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
}

impl WebhookReplay {
    pub fn new(table: Arc<dyn Table>, queue: Arc<dyn Queue>, clock: Arc<dyn Clock>) -> Self {
        Self { table, queue, clock }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    provider: String,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    status: Option<webhooks::Status>,
    event_type: Option<String>,
}

/// The checkpoint, and at the end the output.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// The sort key of the last delivery looked at.
    after: Option<String>,
    scanned: u64,
    replayed: u64,
    skipped: u64,
}

#[async_trait]
impl Task for WebhookReplay {
    async fn run(
        &self,
        input: &Value,
        checkpoint: Option<&Value>,
        checkpoints: &dyn Checkpoints,
    ) -> Result<Value, TaskFailure> {
        let input: Input = serde_json::from_value(input.clone())
            .map_err(|error| TaskFailure::Failed(format!("the input is not a replay filter: {error}")))?;
        if !webhooks::valid_provider(&input.provider) {
            return Err(TaskFailure::Failed(format!("`{}` is not a provider name", input.provider)));
        }
        let mut progress: Progress =
            checkpoint.and_then(|saved| serde_json::from_value(saved.clone()).ok()).unwrap_or_default();
        loop {
            let mut query = Query::partition(webhooks::log_partition(&input.provider));
            query.limit = PAGE;
            query.sk_from = Some(keel::clock::first_ulid_at(input.since).to_string());
            query.sk_to = input.until.map(|until| keel::clock::last_ulid_at(until).to_string());
            query.after = progress.after.clone();
            let page = self.table.query(&query).await?;
            for item in &page.items {
                progress.after = Some(item.key.sk.clone());
                let Some(delivery) = Delivery::from_item(item) else { continue };
                progress.scanned += 1;
                let selected = input.status.is_none_or(|status| status == delivery.status)
                    && input.event_type.as_ref().is_none_or(|kind| *kind == delivery.event_type);
                if !selected {
                    continue;
                }
                let now = self.clock.now();
                match webhooks::replay(self.table.as_ref(), self.queue.as_ref(), now, delivery, item.version).await? {
                    webhooks::Replay::Queued => progress.replayed += 1,
                    webhooks::Replay::Busy | webhooks::Replay::Changed | webhooks::Replay::PayloadRemoved => {
                        progress.skipped += 1
                    }
                }
            }
            let saved = serde_json::to_value(&progress).unwrap_or_default();
            if !checkpoints.save(&saved).await? {
                return Err(TaskFailure::Retriable("the attempt no longer holds the job".into()));
            }
            if page.next.is_none() {
                progress.after = None;
                return Ok(serde_json::to_value(&progress).unwrap_or_default());
            }
        }
    }
}

/// `keel.check`: answers `{"nonce"}` with the input's nonce, touching nothing else.
pub struct ReadinessCheck;

#[async_trait]
impl Task for ReadinessCheck {
    async fn run(&self, input: &Value, _: Option<&Value>, _: &dyn Checkpoints) -> Result<Value, TaskFailure> {
        match input.get("nonce").and_then(Value::as_str) {
            Some(nonce) => Ok(serde_json::json!({ "nonce": nonce })),
            None => Err(TaskFailure::Failed("the input has no `nonce` string".into())),
        }
    }
}
