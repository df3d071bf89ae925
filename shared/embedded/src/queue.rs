//! The queue port over redb, with SQS semantics: a visibility timeout measured on the injected clock, a receive
//! count, a fresh receipt per delivery, redrive to a dead-letter queue after `max_receive_count` receives, and
//! retention.
//!
//! Each queue is two redb tables: its messages by sequence number (send order), and an index of
//! `(visible_at, sequence)` so a receive reads only the messages visible now, oldest first.

use super::{EmbeddedDb, malformed, read_table, unavailable};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keel::clock::Clock;
use keel::port::PortError;
use keel::queue::{MAX_RECEIVE, MessageAttrs, Queue, Received, check_message};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

type Messages<'a> = TableDefinition<'a, u64, &'static [u8]>;
type Visible<'a> = TableDefinition<'a, (i64, u64), ()>;

/// SQS's longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's longest visibility timeout (12 hours).
const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// SQS's limit on message attributes per message.
/// How often a long poll looks again: messages also become visible by the clock, which wakes nobody.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// An embedded queue's configuration: what SQS keeps in the queue's attributes and redrive policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub visibility_timeout: Duration,
    /// After this many receives, the next receive attempt moves the message to `dead_letter_queue`.
    pub max_receive_count: Option<u32>,
    /// The name of another queue in the same database.
    pub dead_letter_queue: Option<String>,
    pub retention: Duration,
}

impl QueueSpec {
    /// SQS's defaults: 30 s visibility, 4 days retention, no redrive.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: None,
            dead_letter_queue: None,
            retention: Duration::from_secs(4 * 86_400),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    body: String,
    attributes: MessageAttrs,
    sent_at_ms: i64,
    receive_count: u32,
    visible_at_ms: i64,
    /// The receipt of the latest delivery; only it may delete or change the message.
    receipt: Option<String>,
}

impl Stored {
    fn decode(bytes: &[u8]) -> Result<Self, PortError> {
        serde_json::from_slice(bytes).map_err(|_| malformed("queue message"))
    }

    fn encode(&self) -> Result<Vec<u8>, PortError> {
        serde_json::to_vec(self).map_err(|_| PortError::Invalid("message could not be serialised".into()))
    }
}

/// Just the send time, for counting without keeping bodies.
#[derive(Deserialize)]
struct SentAt {
    sent_at_ms: i64,
}

/// The redb table names of one queue.
#[derive(Clone)]
struct Names {
    messages: Arc<str>,
    visible: Arc<str>,
}

impl Names {
    fn new(queue: &str) -> Self {
        Self { messages: format!("queue/{queue}").into(), visible: format!("queue-visible/{queue}").into() }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A receipt is `{sequence}.{token}`; the token changes with every delivery.
fn parse_receipt(receipt: &str) -> Result<u64, PortError> {
    receipt
        .split_once('.')
        .filter(|(_, token)| !token.is_empty())
        .and_then(|(seq, _)| seq.parse::<u64>().ok())
        .ok_or_else(|| PortError::Invalid("the receipt is not valid".into()))
}

/// Appends a message to a queue's tables in an open write transaction, visible at `visible_at_ms`.
fn append(txn: &WriteTransaction, names: &Names, message: &Stored) -> Result<(), PortError> {
    let mut messages = txn.open_table(Messages::new(&names.messages)).map_err(|e| unavailable("write", e))?;
    let mut visible = txn.open_table(Visible::new(&names.visible)).map_err(|e| unavailable("write", e))?;
    let seq = messages.last().map_err(|e| unavailable("read", e))?.map_or(1, |(k, _)| k.value().saturating_add(1));
    messages.insert(seq, message.encode()?.as_slice()).map_err(|e| unavailable("write", e))?;
    visible.insert((message.visible_at_ms, seq), ()).map_err(|e| unavailable("write", e))?;
    Ok(())
}

/// What one receive attempt did.
struct Outcome {
    received: Vec<Received>,
    /// Messages were moved to the dead-letter queue, whose waiters should look.
    redriven: bool,
}

/// A [`Queue`] stored in an [`EmbeddedDb`].
#[derive(Clone)]
pub struct EmbeddedQueue {
    db: EmbeddedDb,
    spec: QueueSpec,
    names: Names,
    clock: Arc<dyn Clock>,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl EmbeddedQueue {
    pub(crate) fn new(db: EmbeddedDb, spec: QueueSpec, clock: Arc<dyn Clock>) -> Self {
        let notify = db.notify(&spec.name);
        let names = Names::new(&spec.name);
        Self { db, spec, names, clock, notify }
    }

    pub fn spec(&self) -> &QueueSpec {
        &self.spec
    }

    /// The dead-letter queue, when redrive is configured (SQS needs both a count and a target).
    fn redrive(&self) -> Option<(u32, &str)> {
        match (self.spec.max_receive_count, self.spec.dead_letter_queue.as_deref()) {
            (Some(count), Some(dlq)) if dlq != self.spec.name => Some((count, dlq)),
            _ => None,
        }
    }

    /// One attempt: hands out up to `max` visible messages, redriving and expiring on the way.
    async fn receive_now(&self, max: usize) -> Result<Outcome, PortError> {
        let names = self.names.clone();
        let redrive = self.redrive().map(|(count, dlq)| (count, Names::new(dlq)));
        let now = self.clock.now();
        let now_ms = now.timestamp_millis();
        let visibility_ms = millis(self.spec.visibility_timeout);
        let retention_ms = millis(self.spec.retention);
        self.db
            .blocking(move |db| {
                // Look first without the writer lock: idle long polls must not serialise with senders.
                {
                    let txn = db.begin_read().map_err(|e| unavailable("read", e))?;
                    let visible = match txn.open_table(Visible::new(&names.visible)) {
                        Ok(table) => table,
                        Err(TableError::TableDoesNotExist(_)) => {
                            return Ok(Outcome { received: Vec::new(), redriven: false });
                        }
                        Err(e) => return Err(unavailable("read", e)),
                    };
                    let mut due = visible.range(..=(now_ms, u64::MAX)).map_err(|e| unavailable("read", e))?;
                    if due.next().is_none() {
                        return Ok(Outcome { received: Vec::new(), redriven: false });
                    }
                }
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                let mut outcome = Outcome { received: Vec::new(), redriven: false };
                let mut dead_letters = Vec::new();
                let mut changed = false;
                {
                    let mut messages =
                        txn.open_table(Messages::new(&names.messages)).map_err(|e| unavailable("write", e))?;
                    let mut visible =
                        txn.open_table(Visible::new(&names.visible)).map_err(|e| unavailable("write", e))?;
                    // Delivered now with a zero timeout, a message is due again: never hand it out twice at once.
                    let mut delivered = HashSet::new();
                    while outcome.received.len() < max {
                        let need = max - outcome.received.len();
                        let mut batch = Vec::with_capacity(need);
                        for entry in visible.range(..=(now_ms, u64::MAX)).map_err(|e| unavailable("read", e))? {
                            let (key, _) = entry.map_err(|e| unavailable("read", e))?;
                            let (at, seq) = key.value();
                            if !delivered.contains(&seq) {
                                batch.push((at, seq));
                                if batch.len() == need {
                                    break;
                                }
                            }
                        }
                        if batch.is_empty() {
                            break;
                        }
                        changed = true;
                        for (at, seq) in batch {
                            visible.remove((at, seq)).map_err(|e| unavailable("write", e))?;
                            let stored = messages.get(seq).map_err(|e| unavailable("read", e))?;
                            let Some(mut message) = stored.map(|guard| Stored::decode(guard.value())).transpose()?
                            else {
                                continue;
                            };
                            if message.sent_at_ms.saturating_add(retention_ms) <= now_ms {
                                messages.remove(seq).map_err(|e| unavailable("write", e))?;
                                continue;
                            }
                            if let Some((max_receives, _)) = &redrive
                                && message.receive_count >= *max_receives
                            {
                                messages.remove(seq).map_err(|e| unavailable("write", e))?;
                                message.receive_count = 0;
                                message.receipt = None;
                                message.visible_at_ms = now_ms;
                                dead_letters.push(message);
                                continue;
                            }
                            let receipt = format!("{seq}.{}", ulid::Ulid::new());
                            message.receive_count = message.receive_count.saturating_add(1);
                            message.receipt = Some(receipt.clone());
                            message.visible_at_ms = now_ms.saturating_add(visibility_ms);
                            messages.insert(seq, message.encode()?.as_slice()).map_err(|e| unavailable("write", e))?;
                            visible.insert((message.visible_at_ms, seq), ()).map_err(|e| unavailable("write", e))?;
                            delivered.insert(seq);
                            let sent_at = DateTime::<Utc>::from_timestamp_millis(message.sent_at_ms)
                                .ok_or_else(|| malformed("queue message time"))?;
                            outcome.received.push(Received {
                                message_id: message.id,
                                receipt,
                                body: message.body,
                                attributes: message.attributes,
                                receive_count: message.receive_count,
                                sent_at,
                            });
                        }
                    }
                }
                if let Some((_, dlq)) = &redrive {
                    for message in &dead_letters {
                        append(&txn, dlq, message)?;
                    }
                    outcome.redriven = !dead_letters.is_empty();
                }
                if changed {
                    txn.commit().map_err(|e| unavailable("commit", e))?;
                } else {
                    // Another receiver took them first: nothing to make durable.
                    txn.abort().map_err(|e| unavailable("abort", e))?;
                }
                Ok(outcome)
            })
            .await
    }

    /// Makes every in-flight (or delayed) message visible now; returns how many. A host that restarted calls this:
    /// whatever it had received before it stopped, no consumer holds any more, so waiting out the visibility
    /// timeout would only delay it.
    pub async fn release_in_flight(&self) -> Result<usize, PortError> {
        let names = self.names.clone();
        let now_ms = self.clock.now().timestamp_millis();
        let released = self
            .db
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                let mut released = 0;
                {
                    let mut messages =
                        txn.open_table(Messages::new(&names.messages)).map_err(|e| unavailable("write", e))?;
                    let mut visible =
                        txn.open_table(Visible::new(&names.visible)).map_err(|e| unavailable("write", e))?;
                    let mut later = Vec::new();
                    for entry in visible.range((now_ms.saturating_add(1), 0)..).map_err(|e| unavailable("read", e))? {
                        let (key, _) = entry.map_err(|e| unavailable("read", e))?;
                        later.push(key.value());
                    }
                    for (at, seq) in later {
                        visible.remove((at, seq)).map_err(|e| unavailable("write", e))?;
                        let stored = messages.get(seq).map_err(|e| unavailable("read", e))?;
                        let Some(mut message) = stored.map(|guard| Stored::decode(guard.value())).transpose()? else {
                            continue;
                        };
                        message.visible_at_ms = now_ms;
                        messages.insert(seq, message.encode()?.as_slice()).map_err(|e| unavailable("write", e))?;
                        visible.insert((now_ms, seq), ()).map_err(|e| unavailable("write", e))?;
                        released += 1;
                    }
                }
                txn.commit().map_err(|e| unavailable("commit", e))?;
                Ok(released)
            })
            .await?;
        self.notify.notify_waiters();
        Ok(released)
    }

    /// Deletes (`visible_at_ms: None`) or re-times the message of the receipt's delivery; false when the receipt
    /// is not the message's latest.
    async fn with_receipt(&self, receipt: &str, visible_at_ms: Option<i64>) -> Result<bool, PortError> {
        let seq = parse_receipt(receipt)?;
        let receipt = receipt.to_string();
        let names = self.names.clone();
        self.db
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                let found = {
                    let mut messages =
                        txn.open_table(Messages::new(&names.messages)).map_err(|e| unavailable("write", e))?;
                    let mut visible =
                        txn.open_table(Visible::new(&names.visible)).map_err(|e| unavailable("write", e))?;
                    let stored = messages.get(seq).map_err(|e| unavailable("read", e))?;
                    let message = stored.map(|guard| Stored::decode(guard.value())).transpose()?;
                    match message {
                        Some(mut message) if message.receipt.as_deref() == Some(receipt.as_str()) => {
                            visible.remove((message.visible_at_ms, seq)).map_err(|e| unavailable("write", e))?;
                            match visible_at_ms {
                                Some(at) => {
                                    message.visible_at_ms = at;
                                    messages
                                        .insert(seq, message.encode()?.as_slice())
                                        .map_err(|e| unavailable("write", e))?;
                                    visible.insert((at, seq), ()).map_err(|e| unavailable("write", e))?;
                                }
                                None => {
                                    messages.remove(seq).map_err(|e| unavailable("write", e))?;
                                }
                            }
                            true
                        }
                        _ => false,
                    }
                };
                if found {
                    txn.commit().map_err(|e| unavailable("commit", e))?;
                } else {
                    txn.abort().map_err(|e| unavailable("abort", e))?;
                }
                Ok(found)
            })
            .await
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.spec.name
    }

    async fn send(&self, body: &str, attributes: &MessageAttrs) -> Result<String, PortError> {
        check_message(body, attributes)?;
        let now_ms = self.clock.now().timestamp_millis();
        let id = ulid::Ulid::new().to_string();
        let message = Stored {
            id: id.clone(),
            body: body.to_string(),
            attributes: attributes.clone(),
            sent_at_ms: now_ms,
            receive_count: 0,
            visible_at_ms: now_ms,
            receipt: None,
        };
        let names = self.names.clone();
        self.db
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                append(&txn, &names, &message)?;
                txn.commit().map_err(|e| unavailable("commit", e))
            })
            .await?;
        self.notify.notify_waiters();
        Ok(id)
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, PortError> {
        let max = max.clamp(1, MAX_RECEIVE);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            // Registered before looking, so a send between the look and the wait still wakes this poll.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let outcome = self.receive_now(max).await?;
            if outcome.redriven
                && let Some(dlq) = &self.spec.dead_letter_queue
            {
                self.db.notify(dlq).notify_waiters();
            }
            let now = tokio::time::Instant::now();
            if !outcome.received.is_empty() || now >= deadline {
                return Ok(outcome.received);
            }
            let nap = (deadline - now).min(POLL_INTERVAL);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), PortError> {
        // A stale receipt deletes nothing and is no error, as in SQS.
        self.with_receipt(receipt, None).await.map(|_| ())
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), PortError> {
        let at = self.clock.now().timestamp_millis().saturating_add(millis(timeout.min(MAX_VISIBILITY)));
        if !self.with_receipt(receipt, Some(at)).await? {
            return Err(PortError::Invalid("the receipt is not valid for a message in flight".into()));
        }
        if timeout.is_zero() {
            self.notify.notify_waiters();
        }
        Ok(())
    }

    async fn depth(&self) -> Result<u64, PortError> {
        let names = self.names.clone();
        let now_ms = self.clock.now().timestamp_millis();
        let retention_ms = millis(self.spec.retention);
        self.db
            .blocking(move |db| {
                let Some(messages) = read_table(db, Messages::new(&names.messages))? else { return Ok(0) };
                let mut count = 0;
                for entry in messages.iter().map_err(|e| unavailable("read", e))? {
                    let (_, value) = entry.map_err(|e| unavailable("read", e))?;
                    let sent: SentAt = serde_json::from_slice(value.value()).map_err(|_| malformed("queue message"))?;
                    // Past retention: gone in SQS, dropped here at the next receive.
                    if sent.sent_at_ms.saturating_add(retention_ms) > now_ms {
                        count += 1;
                    }
                }
                Ok(count)
            })
            .await
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.db.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::clock::ManualClock;
    use keel::queue::MAX_MESSAGE_BYTES;
    use std::time::Instant;

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn spec(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: Some(2),
            dead_letter_queue: Some("dlq".into()),
            retention: Duration::from_secs(3600),
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        db: EmbeddedDb,
        clock: Arc<ManualClock>,
        queue: EmbeddedQueue,
        dlq: EmbeddedQueue,
    }

    fn setup() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::new(start()));
        let queue = db.queue(spec("work"), clock.clone());
        let dlq = db.queue(QueueSpec::new("dlq"), clock.clone());
        Fixture { dir, db, clock, queue, dlq }
    }

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    #[tokio::test]
    async fn send_then_receive() {
        let f = setup();
        let attrs = MessageAttrs::from([("AWSTraceHeader".to_string(), "Root=1-abc".to_string())]);
        let id = f.queue.send("hello", &attrs).await.unwrap();
        assert_eq!(f.queue.name(), "work");
        assert_eq!(f.queue.depth().await.unwrap(), 1);
        let got = f.queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_id, id);
        assert_eq!(got[0].body, "hello");
        assert_eq!(got[0].attributes, attrs);
        assert_eq!(got[0].receive_count, 1);
        assert_eq!(got[0].sent_at, start());
        // In flight: invisible but still counted.
        assert!(f.queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(f.queue.depth().await.unwrap(), 1);
        f.queue.delete(&got[0].receipt).await.unwrap();
        assert_eq!(f.queue.depth().await.unwrap(), 0);
        f.queue.ping().await.unwrap();
    }

    #[tokio::test]
    async fn invalid_messages_are_rejected() {
        let f = setup();
        let none = MessageAttrs::new();
        let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(matches!(f.queue.send(&big, &none).await, Err(PortError::Invalid(_))));
        assert!(matches!(f.queue.send("", &none).await, Err(PortError::Invalid(_))));
        assert!(matches!(f.queue.send("a\u{0}b", &none).await, Err(PortError::Invalid(_))));
        let bad_name = MessageAttrs::from([("AWS.thing".to_string(), "v".to_string())]);
        assert!(matches!(f.queue.send("ok", &bad_name).await, Err(PortError::Invalid(_))));
        let empty_value = MessageAttrs::from([("name".to_string(), String::new())]);
        assert!(matches!(f.queue.send("ok", &empty_value).await, Err(PortError::Invalid(_))));
        assert!(f.queue.send(&"x".repeat(MAX_MESSAGE_BYTES), &none).await.is_ok());
        assert!(matches!(f.queue.delete("garbage").await, Err(PortError::Invalid(_))));
        assert!(matches!(f.queue.change_visibility("1.", Duration::ZERO).await, Err(PortError::Invalid(_))));
    }

    #[tokio::test]
    async fn receives_in_send_order_at_most_ten_at_a_time() {
        let f = setup();
        for i in 0..15 {
            f.queue.send(&format!("m{i}"), &MessageAttrs::new()).await.unwrap();
        }
        let first = f.queue.receive(50, Duration::ZERO).await.unwrap();
        let bodies: Vec<String> = first.iter().map(|r| r.body.clone()).collect();
        assert_eq!(bodies, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
        let second = f.queue.receive(0, Duration::ZERO).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].body, "m10");
    }

    #[tokio::test]
    async fn redelivers_after_the_visibility_timeout_with_a_new_receipt() {
        let f = setup();
        f.queue.send("m", &MessageAttrs::new()).await.unwrap();
        let first = f.queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
        f.clock.advance(secs(29));
        assert!(f.queue.receive(1, Duration::ZERO).await.unwrap().is_empty());
        f.clock.advance(secs(1));
        let second = f.queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
        assert_eq!(second.message_id, first.message_id);
        assert_eq!(second.receive_count, 2);
        assert_ne!(second.receipt, first.receipt);
        // The stale receipt neither deletes nor changes the message.
        f.queue.delete(&first.receipt).await.unwrap();
        assert_eq!(f.queue.depth().await.unwrap(), 1);
        assert!(matches!(f.queue.change_visibility(&first.receipt, Duration::ZERO).await, Err(PortError::Invalid(_))));
        f.queue.delete(&second.receipt).await.unwrap();
        assert_eq!(f.queue.depth().await.unwrap(), 0);
        // Deleting twice is harmless.
        f.queue.delete(&second.receipt).await.unwrap();
    }

    #[tokio::test]
    async fn change_visibility_moves_the_next_delivery() {
        let f = setup();
        let queue = f.db.queue(QueueSpec::new("plain"), f.clock.clone());
        queue.send("m", &MessageAttrs::new()).await.unwrap();
        let first = queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
        queue.change_visibility(&first.receipt, Duration::ZERO).await.unwrap();
        let second = queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
        assert_eq!(second.receive_count, 2);
        queue.change_visibility(&second.receipt, Duration::from_secs(100)).await.unwrap();
        f.clock.advance(secs(99));
        assert!(queue.receive(1, Duration::ZERO).await.unwrap().is_empty());
        f.clock.advance(secs(1));
        assert_eq!(queue.receive(1, Duration::ZERO).await.unwrap()[0].receive_count, 3);
    }

    #[tokio::test]
    async fn zero_visibility_timeout_never_delivers_one_message_twice_in_a_batch() {
        let f = setup();
        let mut zero = QueueSpec::new("zero");
        zero.visibility_timeout = Duration::ZERO;
        let queue = f.db.queue(zero, f.clock.clone());
        queue.send("m", &MessageAttrs::new()).await.unwrap();
        assert_eq!(queue.receive(10, Duration::ZERO).await.unwrap().len(), 1);
        assert_eq!(queue.receive(10, Duration::ZERO).await.unwrap()[0].receive_count, 2);
    }

    #[tokio::test]
    async fn moves_to_the_dead_letter_queue_after_max_receives() {
        let f = setup();
        let attrs = MessageAttrs::from([("kind".to_string(), "poison".to_string())]);
        let id = f.queue.send("poison", &attrs).await.unwrap();
        for count in 1..=2 {
            let got = f.queue.receive(1, Duration::ZERO).await.unwrap();
            assert_eq!(got[0].receive_count, count);
            f.clock.advance(secs(30));
        }
        // The third attempt redrives instead of delivering.
        assert!(f.queue.receive(1, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(f.queue.depth().await.unwrap(), 0);
        assert_eq!(f.dlq.depth().await.unwrap(), 1);
        let dead = f.dlq.receive(10, Duration::ZERO).await.unwrap().remove(0);
        assert_eq!(dead.message_id, id);
        assert_eq!(dead.body, "poison");
        assert_eq!(dead.attributes, attrs);
        assert_eq!(dead.receive_count, 1);
        assert_eq!(dead.sent_at, start());
    }

    #[tokio::test]
    async fn redrive_does_not_hold_up_healthy_messages() {
        let f = setup();
        f.queue.send("poison", &MessageAttrs::new()).await.unwrap();
        for _ in 0..2 {
            f.queue.receive(1, Duration::ZERO).await.unwrap();
            f.clock.advance(secs(30));
        }
        f.queue.send("fine", &MessageAttrs::new()).await.unwrap();
        let got = f.queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "fine");
        assert_eq!(f.dlq.depth().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn messages_past_retention_are_dropped() {
        let f = setup();
        f.queue.send("old", &MessageAttrs::new()).await.unwrap();
        f.clock.advance(secs(1800));
        f.queue.send("new", &MessageAttrs::new()).await.unwrap();
        f.clock.advance(secs(1800));
        assert_eq!(f.queue.depth().await.unwrap(), 1);
        let got = f.queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "new");
    }

    #[tokio::test]
    async fn long_poll_wakes_on_send() {
        let f = setup();
        let queue = f.queue.clone();
        let started = Instant::now();
        let waiting = tokio::spawn(async move { queue.receive(1, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.queue.send("m", &MessageAttrs::new()).await.unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn long_poll_finds_messages_made_visible_by_the_clock() {
        let f = setup();
        f.queue.send("m", &MessageAttrs::new()).await.unwrap();
        f.queue.receive(1, Duration::ZERO).await.unwrap();
        let queue = f.queue.clone();
        let waiting = tokio::spawn(async move { queue.receive(1, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.clock.advance(secs(30));
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got[0].receive_count, 2);
    }

    #[tokio::test]
    async fn long_poll_gives_up_after_the_wait() {
        let f = setup();
        let started = Instant::now();
        assert!(f.queue.receive(1, Duration::from_millis(200)).await.unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_receivers_never_share_a_message() {
        let f = setup();
        for i in 0..40 {
            f.queue.send(&format!("m{i}"), &MessageAttrs::new()).await.unwrap();
        }
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let queue = f.queue.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    loop {
                        let got = queue.receive(3, Duration::ZERO).await.unwrap();
                        if got.is_empty() {
                            return ids;
                        }
                        ids.extend(got.into_iter().map(|r| r.message_id));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 40);
        assert_eq!(unique.len(), 40);
    }

    #[tokio::test]
    async fn release_in_flight_makes_received_messages_visible_at_once() {
        let f = setup();
        f.queue.send("a", &MessageAttrs::new()).await.unwrap();
        f.queue.send("b", &MessageAttrs::new()).await.unwrap();
        let first = f.queue.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(f.queue.release_in_flight().await.unwrap(), 1);
        let again = f.queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 2);
        let redelivered = again.iter().find(|m| m.message_id == first[0].message_id).unwrap();
        assert_eq!(redelivered.receive_count, 2);
        assert_eq!(f.queue.release_in_flight().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn messages_and_deliveries_survive_reopening() {
        let f = setup();
        f.queue.send("a", &MessageAttrs::new()).await.unwrap();
        f.queue.send("b", &MessageAttrs::new()).await.unwrap();
        let first = f.queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
        let Fixture { dir, db, clock, queue, dlq } = f;
        drop((db, queue, dlq));
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let queue = db.queue(spec("work"), clock.clone());
        assert_eq!(queue.depth().await.unwrap(), 2);
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "b");
        // The receipt handed out before the restart still works.
        queue.delete(&first.receipt).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 1);
    }
}
