//! The webhook pipeline's records, shared by the ingest, the worker and the operator API.
//!
//! Two items per accepted event, written together in one transaction by the ingest:
//! - the idempotency record `WHIDEM#{provider}#{event id}`, whose `Expect::Absent` put is what rejects duplicates;
//! - the delivery record `WHLOG#{provider}` / `{delivery id}`, the delivery log entry the worker drives through
//!   its states. Delivery ids are ULIDs, so a provider's log sorts by arrival and a date range is a key range.
//!
//! The queue carries only `{provider, delivery_id}`; the body stays in the table (bodies may exceed what SQS takes
//! once encoded, and replay needs them anyway).

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use keel::port::PortError;
use keel::queue::{MessageAttrs, Queue};
use keel::table::{Attrs, Item, Key};
use serde::{Deserialize, Serialize};

/// How long an event id is remembered: longer than any supported provider retries (Stripe: 3 days).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::days(7);
/// How long the delivery log keeps an entry.
pub const DELIVERY_RETENTION: Duration = Duration::days(7);
/// Largest webhook body accepted (bytes); larger gets 413. Fits a DynamoDB item with room for the record.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest provider name, event id and event type accepted.
pub const MAX_PROVIDER_LEN: usize = 64;
pub const MAX_EVENT_ID_LEN: usize = 256;
pub const MAX_EVENT_TYPE_LEN: usize = 128;
/// The EventBridge source of forwarded webhook events.
pub const BUS_SOURCE: &str = "keel.webhooks";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
    DeadLetter,
}

impl Status {
    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(raw.to_string())).ok()
    }
}

/// A provider name is lowercase `[a-z0-9_-]`; its configuration lives in `WEBHOOK_*_<NAME>` with `-` as `_`.
pub fn valid_provider(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROVIDER_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn provider_env_suffix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The table the pipeline's records live in, as the template wires it.
pub const TABLE_VAR: &str = "WEBHOOKS_TABLE";

/// The webhooks table's entries of the data map. Payloads come from providers and may name the provider's own
/// customers; nothing in them is linked to a Keel user, so exports leave them out and they go by their retention.
/// The operators' audit entries are about the operators.
pub const DATA_MAP: &[keel::datamap::Entry] = &[
    keel::datamap::Entry {
        name: "webhooks.audit",
        table: TABLE_VAR,
        pk: "AUDIT",
        sk: "{id}",
        description: "The audit trail of operators' replays and redrives: who asked for which, when.",
        subject: keel::datamap::Subject::User,
        personal_data: &["actor"],
        purpose: "Accountability for operators' actions on the pipeline (GDPR Art. 5(2)).",
        recipients: &[],
        retention: keel::datamap::Retention::WhileInUse,
        export: keel::datamap::Export::Include,
        erasure: keel::datamap::Erasure::Pseudonymize,
    },
    keel::datamap::Entry {
        name: "webhooks.audit_index",
        table: TABLE_VAR,
        pk: "AUDIT#{index}",
        sk: "{id}",
        description: "The same audit entries, by actor.",
        subject: keel::datamap::Subject::User,
        personal_data: &["actor"],
        purpose: "Accountability for operators' actions on the pipeline (GDPR Art. 5(2)).",
        recipients: &[],
        retention: keel::datamap::Retention::WhileInUse,
        export: keel::datamap::Export::Exclude { reason: "copies of webhooks.audit, which the bundle includes" },
        erasure: keel::datamap::Erasure::Pseudonymize,
    },
    keel::datamap::Entry {
        name: "webhooks.event_id",
        table: TABLE_VAR,
        pk: "WHIDEM#{provider}#{event}",
        sk: "#",
        description: "A provider's event id, remembered to refuse its duplicates.",
        subject: keel::datamap::Subject::Nobody,
        personal_data: &[],
        purpose: "Processing each provider event once.",
        recipients: &[],
        retention: keel::datamap::Retention::Expires { seconds: 7 * 24 * 3600 },
        export: keel::datamap::Export::Exclude { reason: "holds nothing about a person" },
        erasure: keel::datamap::Erasure::Keep { exemption: "holds nothing about a person" },
    },
    keel::datamap::Entry {
        name: "webhooks.delivery",
        table: TABLE_VAR,
        pk: "WHLOG#{provider}",
        sk: "{delivery}",
        description: "A received webhook: its payload, states and attempts (the delivery log).",
        subject: keel::datamap::Subject::Organization,
        personal_data: &["body_base64 (the provider's payload)"],
        purpose: "Processing provider events, and replaying them after a failure.",
        recipients: &["the event bus's subscribers (the customer's own services)"],
        retention: keel::datamap::Retention::Expires { seconds: 7 * 24 * 3600 },
        export: keel::datamap::Export::Exclude { reason: "provider payloads are linked to no Keel user" },
        erasure: keel::datamap::Erasure::Keep { exemption: "linked to no Keel user; gone after its 7-day retention" },
    },
];

pub fn idempotency_key(provider: &str, event_id: &str) -> Key {
    Key::new(format!("WHIDEM#{provider}#{event_id}"), "#")
}

pub fn log_partition(provider: &str) -> String {
    format!("WHLOG#{provider}")
}

pub fn delivery_key(provider: &str, delivery_id: &str) -> Key {
    Key::new(log_partition(provider), delivery_id)
}

/// The queue message: a pointer to the delivery record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueMessage {
    pub provider: String,
    pub delivery_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub provider: String,
    pub delivery_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: Status,
    /// Worker attempts so far.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Time spent in the last attempt, in milliseconds.
    pub duration_ms: Option<i64>,
    /// Until when the worker that claimed it holds it; the item's version is the fencing token.
    pub lease_until: Option<DateTime<Utc>>,
    /// How many times an operator replayed it.
    pub replays: u32,
    /// The raw body, base64 (bodies need not be UTF-8).
    pub body_base64: String,
    pub content_type: Option<String>,
    pub trace_header: Option<String>,
    /// When the payload was removed, past [`PAYLOAD_RETENTION`] (the body is then empty; the record stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_removed_at: Option<DateTime<Utc>>,
}

/// How long a delivery keeps its payload; the record itself is kept [`DELIVERY_RETENTION`].
pub const PAYLOAD_RETENTION: Duration = Duration::hours(24);

impl Delivery {
    pub fn body(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(&self.body_base64).unwrap_or_default()
    }

    pub fn key(&self) -> Key {
        delivery_key(&self.provider, &self.delivery_id)
    }

    /// The item to store, with version `version`.
    pub fn to_item(&self, version: u64) -> Item {
        let attrs = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => Attrs::new(),
        };
        Item { key: self.key(), attrs, version, expires_at: Some(self.received_at + DELIVERY_RETENTION) }
    }

    /// `None` when the item is not a delivery record (it was written by something else, or is corrupt).
    pub fn from_item(item: &Item) -> Option<Self> {
        serde_json::from_value(serde_json::Value::Object(item.attrs.clone())).ok()
    }
}

/// Sends the pointer to a delivery to the webhook queue, propagating the trace header.
pub async fn send_pointer(queue: &dyn Queue, delivery: &Delivery) -> Result<(), PortError> {
    let message = QueueMessage { provider: delivery.provider.clone(), delivery_id: delivery.delivery_id.clone() };
    let body = serde_json::to_string(&message).map_err(|e| PortError::Invalid(e.to_string()))?;
    let mut attributes = MessageAttrs::new();
    if let Some(trace) = &delivery.trace_header {
        attributes.insert(keel::queue::TRACE_HEADER_ATTRIBUTE.into(), trace.clone());
    }
    queue.send(&body, &attributes).await.map(|_| ())
}

/// What replaying a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Back to pending, its pointer on the queue.
    Queued,
    /// It is past [`PAYLOAD_RETENTION`]: its payload is removed (or about to be), there is nothing to replay.
    PayloadRemoved,
    /// A worker holds it now; nothing was changed.
    Busy,
    /// It changed since `version` was read; nothing was changed.
    Changed,
}

/// Puts a delivery (read at `version`) back to pending and its pointer on the queue, unless a worker holds it or it
/// changed meanwhile: a replay never overwrites what it did not read. The operator API and the bulk replay job both
/// replay through this.
pub async fn replay(
    table: &dyn keel::table::Table,
    queue: &dyn Queue,
    now: DateTime<Utc>,
    mut delivery: Delivery,
    version: u64,
) -> Result<Replay, PortError> {
    // Past its retention the payload is gone or about to be (the cleanup runs hourly): not replayed either way,
    // so a replay never races the cleanup.
    if delivery.payload_removed_at.is_some() || delivery.received_at + PAYLOAD_RETENTION <= now {
        return Ok(Replay::PayloadRemoved);
    }
    if delivery.status == Status::Processing && delivery.lease_until.is_some_and(|until| until > now) {
        return Ok(Replay::Busy);
    }
    delivery.status = Status::Pending;
    delivery.replays += 1;
    delivery.lease_until = None;
    delivery.updated_at = now;
    match table.put(delivery.to_item(version + 1), keel::table::Expect::Version(version)).await {
        Ok(()) => {}
        Err(PortError::ConditionFailed { .. }) => return Ok(Replay::Changed),
        Err(error) => return Err(error),
    }
    send_pointer(queue, &delivery).await?;
    Ok(Replay::Queued)
}

pub fn encode_body(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(body)
}

/// The webhooks table's holder: what an export takes from it is the user's own audit entries (replays and
/// redrives they asked for).
pub struct WebhooksHolder(pub std::sync::Arc<dyn keel::table::Table>);

#[async_trait::async_trait]
impl keel::datamap::Holder for WebhooksHolder {
    fn entries(&self) -> &'static [keel::datamap::Entry] {
        DATA_MAP
    }

    async fn export(
        &self,
        subject: &keel::datamap::DataSubject,
        sink: &mut dyn keel::datamap::ExportSink,
    ) -> Result<(), PortError> {
        keel::audit::export_actor(&self.0, "webhooks.audit", &subject.user_id, sink).await
    }

    /// The trail of replays and redrives, pseudonymized; deliveries are linked to no Keel user.
    async fn erase(
        &self,
        subject: &keel::datamap::ErasureSubject,
        dry_run: bool,
        tally: &mut keel::datamap::Tally,
    ) -> Result<(), PortError> {
        let names = ("webhooks.audit", "webhooks.audit_index");
        keel::audit::pseudonymize(
            self.0.as_ref(),
            names,
            &subject.subject.user_id,
            &subject.pseudonym,
            &[],
            dry_run,
            tally,
        )
        .await
    }
}

/// Deletes delivery records past [`DELIVERY_RETENTION`] with their idempotency records (written with them, kept
/// as long: a provider's retry a week later is a new delivery), provider by provider, oldest first (delivery ids
/// are ULIDs of their arrival). The cursor is `{provider}/{delivery id}`.
pub struct DeliveriesCleanup {
    pub table: std::sync::Arc<dyn keel::table::Table>,
    /// The providers to clean, as `WEBHOOK_PROVIDERS` names them.
    pub providers: Vec<String>,
}

/// The providers whose delivery logs the maintenance function cleans (comma-separated names).
pub const PROVIDERS_VAR: &str = "WEBHOOK_PROVIDERS";

impl DeliveriesCleanup {
    pub fn from_env(
        env: &keel::config::Env,
        table: std::sync::Arc<dyn keel::table::Table>,
    ) -> Result<Self, keel::config::ConfigError> {
        let mut providers = Vec::new();
        for name in env.get(PROVIDERS_VAR).unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !valid_provider(name) {
                return Err(keel::config::ConfigError::Malformed {
                    name: PROVIDERS_VAR.into(),
                    reason: format!("`{name}` is not a provider name ([a-z0-9_-], at most 64)"),
                });
            }
            providers.push(name.to_string());
        }
        providers.sort();
        Ok(Self { table, providers })
    }
}

impl DeliveriesCleanup {
    /// The key of `delivery`'s idempotency record, if the record there is still its own (the event may have
    /// arrived again once it expired, and the record be a later delivery's).
    async fn own_idempotency_record(&self, provider: &str, delivery: &Delivery) -> Result<Option<Key>, PortError> {
        let key = idempotency_key(provider, &delivery.event_id);
        let query = keel::table::Query { expired: true, ..keel::table::Query::partition(&key.pk) };
        let page = self.table.query(&query).await?;
        let own = page.items.iter().any(|item| {
            item.key == key && item.attrs.get("delivery_id").and_then(|d| d.as_str()) == Some(&delivery.delivery_id)
        });
        Ok(own.then_some(key))
    }
}

#[async_trait::async_trait]
impl keel::cleanup::Cleanup for DeliveriesCleanup {
    fn name(&self) -> &'static str {
        "webhooks.deliveries"
    }

    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<keel::cleanup::Swept, PortError> {
        use keel::cleanup::Swept;
        use keel::table::{Expect, Query, Write};
        let (from_provider, after) = match cursor.as_deref().and_then(|c| c.split_once('/')) {
            Some((provider, after)) => (provider.to_string(), Some(after.to_string()).filter(|a| !a.is_empty())),
            None => (String::new(), None),
        };
        let last = keel::clock::last_ulid_at(now - DELIVERY_RETENTION).to_string();
        for provider in self.providers.iter().filter(|p| **p >= from_provider) {
            let mut query = Query::partition(log_partition(provider));
            query.sk_to = Some(last.clone());
            query.after = if *provider == from_provider { after.clone() } else { None };
            query.limit = keel::table::MAX_QUERY_LIMIT;
            // Past their retention, they are expired: only a cleanup's query sees them.
            query.expired = true;
            loop {
                let page = self.table.query(&query).await?;
                for item in &page.items {
                    // Checked before each delivery: each is a transaction of its own.
                    if stop() {
                        return Ok(Swept::stopped(format!("{provider}/{}", query.after.clone().unwrap_or_default())));
                    }
                    let delivery = Write::Delete { key: item.key.clone(), expect: Expect::Any };
                    let idempotency = match Delivery::from_item(item) {
                        Some(d) => self.own_idempotency_record(provider, &d).await?,
                        None => None,
                    };
                    match idempotency {
                        // Only while expired (`Absent`: no live item): a live one is a later delivery's.
                        Some(key) => {
                            let both = vec![delivery.clone(), Write::Delete { key, expect: Expect::Absent }];
                            match self.table.transact(both).await {
                                Err(error) if error.is_condition_failed() => {
                                    self.table.transact(vec![delivery]).await?
                                }
                                other => other?,
                            }
                        }
                        None => self.table.transact(vec![delivery]).await?,
                    }
                    *removed += 1;
                    query.after = Some(item.key.sk.clone());
                }
                // A page may hold nothing the query answers (DynamoDB pages by size): go on from where it stopped.
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(Swept::done())
    }
}

/// Removes the payloads of deliveries past [`PAYLOAD_RETENTION`], keeping their records (status, attempts, times)
/// until the deliveries' cleanup. Oldest first per provider; the cursor is a watermark per provider (every
/// delivery up to it is done), kept when the run completes, so each run reads only what arrived since. A delivery a
/// worker holds right now stops its provider's pass there, for the next run.
pub struct PayloadsCleanup(pub DeliveriesCleanup);

#[async_trait::async_trait]
impl keel::cleanup::Cleanup for PayloadsCleanup {
    fn name(&self) -> &'static str {
        "webhooks.payloads"
    }

    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<keel::cleanup::Swept, PortError> {
        use keel::table::{Expect, Query};
        let mut marks: std::collections::BTreeMap<String, String> =
            cursor.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
        let last = keel::clock::last_ulid_at(now - PAYLOAD_RETENTION).to_string();
        let mut complete = true;
        let encode = |marks: &std::collections::BTreeMap<String, String>| serde_json::to_string(marks).ok();
        'providers: for provider in &self.0.providers {
            let mut query = Query::partition(log_partition(provider));
            query.sk_to = Some(last.clone());
            query.after = marks.get(provider).cloned();
            query.limit = keel::table::MAX_QUERY_LIMIT;
            loop {
                let page = self.0.table.query(&query).await?;
                for item in &page.items {
                    if stop() {
                        return Ok(keel::cleanup::Swept { cursor: encode(&marks), complete: false });
                    }
                    // A record that is not a delivery has no payload to remove: passed, as done.
                    let Some(mut delivery) = Delivery::from_item(item) else {
                        marks.insert(provider.clone(), item.key.sk.clone());
                        query.after = Some(item.key.sk.clone());
                        continue;
                    };
                    if delivery.payload_removed_at.is_none() {
                        if delivery.status == Status::Processing && delivery.lease_until.is_some_and(|u| u > now) {
                            complete = false;
                            continue 'providers;
                        }
                        delivery.body_base64 = String::new();
                        delivery.payload_removed_at = Some(now);
                        match self.0.table.put(delivery.to_item(item.version + 1), Expect::Version(item.version)).await
                        {
                            Ok(()) => *removed += 1,
                            // Changed since it was read (a worker's claim): the next run takes it.
                            Err(error) if error.is_condition_failed() => {
                                complete = false;
                                continue 'providers;
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    marks.insert(provider.clone(), item.key.sk.clone());
                    query.after = Some(item.key.sk.clone());
                }
                // A page may hold nothing the query answers (DynamoDB pages by size, then drops expired items):
                // go on from where it stopped.
                if stop() {
                    return Ok(keel::cleanup::Swept { cursor: encode(&marks), complete: false });
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(keel::cleanup::Swept { cursor: encode(&marks), complete })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_round_trips_through_an_item_with_retention_expiry() {
        let now = Utc::now();
        let delivery = Delivery {
            provider: "acme".into(),
            delivery_id: ulid::Ulid::new().to_string(),
            event_id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            status: Status::Pending,
            attempts: 0,
            last_error: None,
            received_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            duration_ms: None,
            lease_until: None,
            replays: 0,
            body_base64: encode_body(&[0xff, 0x00, b'x']),
            content_type: None,
            trace_header: None,
            payload_removed_at: None,
        };
        let item = delivery.to_item(3);
        assert_eq!(item.version, 3);
        assert_eq!(item.expires_at, Some(now + DELIVERY_RETENTION));
        assert_eq!(Delivery::from_item(&item), Some(delivery.clone()));
        assert_eq!(delivery.body(), vec![0xff, 0x00, b'x']);
    }

    #[test]
    fn provider_names_are_restricted_and_map_to_env_suffixes() {
        assert!(valid_provider("acme-pay_2"));
        for bad in ["", "Acme", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_provider(bad), "{bad}");
        }
        assert_eq!(provider_env_suffix("acme-pay"), "ACME_PAY");
        assert_eq!(Status::parse("dead_letter"), Some(Status::DeadLetter));
        assert_eq!(Status::parse("lost"), None);
    }

    #[test]
    fn every_key_the_pipeline_builds_is_declared_once_in_the_data_map() {
        let keys = [idempotency_key("stripe", "evt_1#x"), delivery_key("github", &ulid::Ulid::new().to_string())];
        for key in &keys {
            assert_eq!(keel::datamap::classify(DATA_MAP, TABLE_VAR, key).len(), 1, "{key:?}");
        }
    }
}
