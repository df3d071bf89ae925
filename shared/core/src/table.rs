//! The table port: items addressed by a partition key and a sort key, conditional writes, range queries with
//! cursors, all-or-nothing transactions, and expiry that every read enforces itself (DynamoDB's TTL deletes lazily
//! and the emulator never does, so an expired item must be invisible whether or not it still exists).

use crate::port::PortError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// An item's attributes besides its key, version and expiry. Stored as native DynamoDB attributes.
pub type Attrs = serde_json::Map<String, serde_json::Value>;

/// Attribute names the adapters own; an item's `attrs` may not use them.
pub const RESERVED_ATTRS: [&str; 4] = ["pk", "sk", "version", "expires_at"];

/// Largest number of writes one transaction may hold (DynamoDB's TransactWriteItems limit).
pub const MAX_TRANSACTION_WRITES: usize = 100;

/// Largest page a query returns, whatever `limit` asks for.
pub const MAX_QUERY_LIMIT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self { pk: pk.into(), sk: sk.into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: Key,
    pub attrs: Attrs,
    /// Written as given. Callers doing optimistic concurrency write `expected + 1` with `Expect::Version(expected)`.
    pub version: u64,
    /// After this instant the item is invisible to every read and counts as absent for `Expect::Absent`.
    /// Stored as epoch seconds in `expires_at`, the table's TTL attribute, so precision is one second.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Item {
    pub fn new(key: Key, attrs: Attrs) -> Self {
        Self { key, attrs, version: 1, expires_at: None }
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| at.timestamp() > now.timestamp())
    }
}

/// What must hold of the stored item for a write to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// No live item (an expired item counts as absent).
    Absent,
    /// A live item whose version is exactly this.
    Version(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Put {
        item: Item,
        expect: Expect,
    },
    Delete {
        key: Key,
        expect: Expect,
    },
    /// Writes nothing; makes the transaction fail unless the expectation holds.
    Check {
        key: Key,
        expect: Expect,
    },
}

/// A range query on one partition. Sort keys compare as byte strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub pk: String,
    /// Inclusive lower bound on the sort key.
    pub sk_from: Option<String>,
    /// Inclusive upper bound on the sort key.
    pub sk_to: Option<String>,
    /// Start strictly after this sort key (in the query's direction): the cursor a previous page returned.
    pub after: Option<String>,
    /// At most this many items (capped at `MAX_QUERY_LIMIT`).
    pub limit: usize,
    pub descending: bool,
    /// Items past their expiry too (every other read hides them): what a cleanup reads to remove them.
    pub expired: bool,
}

impl Query {
    pub fn partition(pk: impl Into<String>) -> Self {
        Self { pk: pk.into(), sk_from: None, sk_to: None, after: None, limit: 100, descending: false, expired: false }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// Live items (and expired ones, when the query asks) in sort-key order (reversed when descending). May hold fewer than `limit` items even when more
    /// exist: keep going while `next` is set.
    pub items: Vec<Item>,
    /// The sort key to pass as `after` for the next page; `None` when the range is exhausted.
    pub next: Option<String>,
}

#[async_trait]
pub trait Table: Send + Sync {
    /// Strongly consistent read of a live item.
    async fn get(&self, key: &Key) -> Result<Option<Item>, PortError>;
    async fn put(&self, item: Item, expect: Expect) -> Result<(), PortError>;
    async fn delete(&self, key: &Key, expect: Expect) -> Result<(), PortError>;
    async fn query(&self, query: &Query) -> Result<Page, PortError>;
    /// All writes happen or none does; at most `MAX_TRANSACTION_WRITES`, each on a distinct key.
    async fn transact(&self, writes: Vec<Write>) -> Result<(), PortError>;
    /// Cheap reachability check for readiness probes.
    async fn ping(&self) -> Result<(), PortError>;
}

/// An item holding `value` as JSON under the one attribute `attr`: how domains store their records.
pub fn item_of<T: serde::Serialize>(key: Key, attr: &str, value: &T, version: u64) -> Result<Item, PortError> {
    let json = serde_json::to_value(value).map_err(|e| PortError::Invalid(format!("{attr}: {e}")))?;
    let mut attrs = Attrs::new();
    attrs.insert(attr.to_string(), json);
    Ok(Item { key, attrs, version, expires_at: None })
}

/// The record [`item_of`] stored under `attr`.
pub fn value_of<T: serde::de::DeserializeOwned>(item: &Item, attr: &str) -> Result<T, PortError> {
    let value = item.attrs.get(attr).cloned().unwrap_or(serde_json::Value::Null);
    serde_json::from_value(value)
        .map_err(|e| PortError::Invalid(format!("stored {attr} `{}` does not decode: {e}", item.key.sk)))
}

/// Rejects attribute maps that use a name the adapters own. Both adapters call it so they fail alike.
pub fn check_attrs(attrs: &Attrs) -> Result<(), PortError> {
    match RESERVED_ATTRS.iter().find(|name| attrs.contains_key(**name)) {
        Some(name) => Err(PortError::Invalid(format!("attribute name `{name}` is reserved"))),
        None => Ok(()),
    }
}

/// Validates a transaction's shape. Both adapters call it so they fail alike.
pub fn check_transaction(writes: &[Write]) -> Result<(), PortError> {
    if writes.is_empty() || writes.len() > MAX_TRANSACTION_WRITES {
        return Err(PortError::Invalid(format!(
            "a transaction holds 1 to {MAX_TRANSACTION_WRITES} writes, not {}",
            writes.len()
        )));
    }
    let mut keys: Vec<&Key> = writes
        .iter()
        .map(|w| match w {
            Write::Put { item, .. } => &item.key,
            Write::Delete { key, .. } | Write::Check { key, .. } => key,
        })
        .collect();
    keys.sort();
    if keys.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(PortError::Invalid("a transaction may touch each key once".into()));
    }
    for write in writes {
        if let Write::Put { item, .. } = write {
            check_attrs(&item.attrs)?;
        }
    }
    Ok(())
}
