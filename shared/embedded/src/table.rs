//! The table port over redb. Each logical table is one redb table whose key is the partition key, length-prefixed,
//! followed by the sort key's bytes: the keys of one partition are contiguous and ordered by sort key as byte
//! strings, as in DynamoDB. The value is the item's JSON (attributes, version, expiry in epoch seconds).

use super::{EmbeddedDb, malformed, read_table, unavailable};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keel::clock::Clock;
use keel::port::PortError;
use keel::table::{
    Attrs, Expect, Item, Key, MAX_QUERY_LIMIT, Page, Query, Table, Write, check_attrs, check_transaction,
};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::ops::Bound;
use std::sync::Arc;

type Def<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// DynamoDB's key size limits (bytes); larger keys are rejected alike.
const MAX_PK_BYTES: usize = 2048;
const MAX_SK_BYTES: usize = 1024;

/// DynamoDB's item size limit (400 KB), measured its way by [`item_size`].
const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Lower and upper bounds on encoded keys.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    attrs: Attrs,
}

impl Stored {
    fn from_item(item: &Item) -> Self {
        Self { version: item.version, expires_at: item.expires_at.map(|at| at.timestamp()), attrs: item.attrs.clone() }
    }

    fn decode(bytes: &[u8]) -> Result<Self, PortError> {
        serde_json::from_slice(bytes).map_err(|_| malformed("table item"))
    }

    fn expires_at(&self) -> Result<Option<DateTime<Utc>>, PortError> {
        self.expires_at
            .map(|secs| DateTime::<Utc>::from_timestamp(secs, 0).ok_or_else(|| malformed("table item expiry")))
            .transpose()
    }

    fn into_item(self, key: Key) -> Result<Item, PortError> {
        let expires_at = self.expires_at()?;
        Ok(Item { key, attrs: self.attrs, version: self.version, expires_at })
    }

    fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|secs| secs > now.timestamp())
    }
}

/// A [`Table`] stored in an [`EmbeddedDb`].
#[derive(Clone)]
pub struct EmbeddedTable {
    db: EmbeddedDb,
    name: String,
    /// The redb table's name: prefixed so that logical tables, queues and buses never collide.
    redb_name: Arc<str>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for EmbeddedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedTable").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Rejects keys DynamoDB would: empty or too long.
fn check_key(key: &Key) -> Result<(), PortError> {
    check_pk(&key.pk)?;
    if key.sk.is_empty() || key.sk.len() > MAX_SK_BYTES {
        return Err(PortError::Invalid(format!("a sort key holds 1 to {MAX_SK_BYTES} bytes")));
    }
    Ok(())
}

/// An item's size as DynamoDB counts it: each attribute's name plus its value (strings in UTF-8 bytes, numbers
/// about one byte per two significant digits, containers 3 bytes plus 1 per element). Approximate only for numbers.
fn item_size(item: &Item) -> usize {
    fn number_size(n: &serde_json::Number) -> usize {
        let digits = n.to_string().trim_start_matches('-').chars().filter(char::is_ascii_digit).count();
        digits.div_ceil(2) + 1
    }
    fn value_size(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Null | serde_json::Value::Bool(_) => 1,
            serde_json::Value::Number(n) => number_size(n),
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(values) => 3 + values.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
            serde_json::Value::Object(map) => {
                3 + map.iter().map(|(name, v)| 1 + name.len() + value_size(v)).sum::<usize>()
            }
        }
    }
    let keys = "pk".len() + item.key.pk.len() + "sk".len() + item.key.sk.len();
    let version = "version".len() + number_size(&item.version.into());
    let expiry = item.expires_at.map_or(0, |at| "expires_at".len() + number_size(&at.timestamp().into()));
    let attrs = item.attrs.iter().map(|(name, value)| name.len() + value_size(value)).sum::<usize>();
    keys + version + expiry + attrs
}

fn check_pk(pk: &str) -> Result<(), PortError> {
    if pk.is_empty() || pk.len() > MAX_PK_BYTES {
        return Err(PortError::Invalid(format!("a partition key holds 1 to {MAX_PK_BYTES} bytes")));
    }
    Ok(())
}

/// The partition's key prefix: the partition key's length, then its bytes.
fn prefix(pk: &str) -> Vec<u8> {
    // `check_pk` bounds the length well below u16::MAX.
    let len = u16::try_from(pk.len()).unwrap_or(u16::MAX);
    let mut bytes = Vec::with_capacity(2 + pk.len());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(pk.as_bytes());
    bytes
}

fn encode_key(key: &Key) -> Vec<u8> {
    let mut bytes = prefix(&key.pk);
    bytes.extend_from_slice(key.sk.as_bytes());
    bytes
}

/// The smallest byte string greater than every string starting with `prefix`, if there is one.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = prefix.to_vec();
    while let Some(last) = bytes.pop() {
        if last < u8::MAX {
            bytes.push(last + 1);
            return Some(bytes);
        }
    }
    None
}

fn bound_key(bound: &Bound<Vec<u8>>) -> Option<&[u8]> {
    match bound {
        Bound::Included(k) | Bound::Excluded(k) => Some(k),
        Bound::Unbounded => None,
    }
}

/// The tighter of two lower bounds.
fn max_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (bound_key(&a), bound_key(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x > y => a,
        (Some(x), Some(y)) if x < y => b,
        _ => match a {
            Bound::Excluded(_) => a,
            _ => b,
        },
    }
}

/// The tighter of two upper bounds.
fn min_upper(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (bound_key(&a), bound_key(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x < y => a,
        (Some(x), Some(y)) if x > y => b,
        _ => match a {
            Bound::Excluded(_) => a,
            _ => b,
        },
    }
}

/// The query's key range with the cursor folded in, or `None` when it holds nothing (redb must not be given an
/// inverted range).
fn key_range(query: &Query) -> Option<KeyRange> {
    let prefix = prefix(&query.pk);
    let with = |sk: &str| {
        let mut key = prefix.clone();
        key.extend_from_slice(sk.as_bytes());
        key
    };
    let mut lower = Bound::Included(prefix.clone());
    let mut upper = successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
    if let Some(from) = &query.sk_from {
        lower = max_lower(lower, Bound::Included(with(from)));
    }
    if let Some(to) = &query.sk_to {
        upper = min_upper(upper, Bound::Included(with(to)));
    }
    if let Some(after) = &query.after {
        if query.descending {
            upper = min_upper(upper, Bound::Excluded(with(after)));
        } else {
            lower = max_lower(lower, Bound::Excluded(with(after)));
        }
    }
    if let (Some(lo), Some(hi)) = (bound_key(&lower), bound_key(&upper)) {
        let both_included = matches!(lower, Bound::Included(_)) && matches!(upper, Bound::Included(_));
        if lo > hi || (lo == hi && !both_included) {
            return None;
        }
    }
    Some((lower, upper))
}

/// Whether `expect` holds of what is stored under a key.
fn holds(expect: Expect, stored: Option<&Stored>, now: DateTime<Utc>) -> bool {
    let live = stored.filter(|s| s.is_live(now));
    match expect {
        Expect::Any => true,
        Expect::Absent => live.is_none(),
        Expect::Version(version) => live.is_some_and(|s| s.version == version),
    }
}

fn to_bytes(stored: &Stored) -> Result<Vec<u8>, PortError> {
    serde_json::to_vec(stored).map_err(|_| PortError::Invalid("item could not be serialised".into()))
}

/// A write with its key encoded and its item serialised, ready for the blocking task.
enum Prepared {
    Put { key: Vec<u8>, value: Vec<u8>, expect: Expect },
    Delete { key: Vec<u8>, expect: Expect },
    Check { key: Vec<u8>, expect: Expect },
}

impl Prepared {
    fn new(write: &Write) -> Result<Self, PortError> {
        Ok(match write {
            Write::Put { item, expect } => {
                check_key(&item.key)?;
                check_attrs(&item.attrs)?;
                let size = item_size(item);
                if size > MAX_ITEM_BYTES {
                    return Err(PortError::Invalid(format!("item is {size} bytes; the limit is {MAX_ITEM_BYTES}")));
                }
                Prepared::Put {
                    key: encode_key(&item.key),
                    value: to_bytes(&Stored::from_item(item))?,
                    expect: *expect,
                }
            }
            Write::Delete { key, expect } => {
                check_key(key)?;
                Prepared::Delete { key: encode_key(key), expect: *expect }
            }
            Write::Check { key, expect } => {
                check_key(key)?;
                Prepared::Check { key: encode_key(key), expect: *expect }
            }
        })
    }

    fn key(&self) -> &[u8] {
        match self {
            Prepared::Put { key, .. } | Prepared::Delete { key, .. } | Prepared::Check { key, .. } => key,
        }
    }

    fn expect(&self) -> Expect {
        match self {
            Prepared::Put { expect, .. } | Prepared::Delete { expect, .. } | Prepared::Check { expect, .. } => *expect,
        }
    }
}

impl EmbeddedTable {
    pub(crate) fn new(db: EmbeddedDb, name: &str, clock: Arc<dyn Clock>) -> Self {
        Self { db, name: name.to_string(), redb_name: format!("table/{name}").into(), clock }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of every live item, across partitions, in key order: for the data map's completeness checks and
    /// for tools, not part of the port (DynamoDB's Scan is not something Keel's functions do).
    pub async fn keys(&self) -> Result<Vec<Key>, PortError> {
        let redb_name = self.redb_name.clone();
        let now = self.clock.now();
        self.db
            .blocking(move |db| {
                let Some(table) = read_table(db, Def::new(&redb_name))? else { return Ok(Vec::new()) };
                let mut keys = Vec::new();
                for entry in table.iter().map_err(|e| unavailable("read", e))? {
                    let (key, value) = entry.map_err(|e| unavailable("read", e))?;
                    if !Stored::decode(value.value())?.is_live(now) {
                        continue;
                    }
                    let bytes = key.value();
                    let Some(&[high, low]) = bytes.get(..2) else { return Err(malformed("table key")) };
                    let len = usize::from(u16::from_be_bytes([high, low]));
                    let text = |range: &[u8]| std::str::from_utf8(range).map(str::to_string);
                    match (bytes.get(2..2 + len).map(text), bytes.get(2 + len..).map(text)) {
                        (Some(Ok(pk)), Some(Ok(sk))) => keys.push(Key { pk, sk }),
                        _ => return Err(malformed("table key")),
                    }
                }
                Ok(keys)
            })
            .await
    }

    /// Runs the writes atomically: all conditions are checked against the state before any write, then all
    /// writes happen in the same redb transaction. `single` reports a failure without an index.
    async fn write(&self, writes: Vec<Prepared>, single: bool) -> Result<(), PortError> {
        let redb_name = self.redb_name.clone();
        let now = self.clock.now();
        self.db
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                let failed = {
                    let mut table = txn.open_table(Def::new(&redb_name)).map_err(|e| unavailable("write", e))?;
                    let mut failed = None;
                    for (index, write) in writes.iter().enumerate() {
                        if write.expect() == Expect::Any {
                            continue;
                        }
                        let stored = table
                            .get(write.key())
                            .map_err(|e| unavailable("read", e))?
                            .map(|guard| Stored::decode(guard.value()))
                            .transpose()?;
                        if !holds(write.expect(), stored.as_ref(), now) {
                            failed = Some(index);
                            break;
                        }
                    }
                    if failed.is_none() {
                        for write in &writes {
                            match write {
                                Prepared::Put { key, value, .. } => {
                                    table
                                        .insert(key.as_slice(), value.as_slice())
                                        .map_err(|e| unavailable("write", e))?;
                                }
                                Prepared::Delete { key, .. } => {
                                    table.remove(key.as_slice()).map_err(|e| unavailable("write", e))?;
                                }
                                Prepared::Check { .. } => {}
                            }
                        }
                    }
                    failed
                };
                match failed {
                    Some(index) => {
                        txn.abort().map_err(|e| unavailable("abort", e))?;
                        Err(PortError::ConditionFailed { index: (!single).then_some(index) })
                    }
                    None => txn.commit().map_err(|e| unavailable("commit", e)),
                }
            })
            .await
    }
}

#[async_trait]
impl Table for EmbeddedTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, PortError> {
        check_key(key)?;
        let redb_name = self.redb_name.clone();
        let encoded = encode_key(key);
        let stored = self
            .db
            .blocking(move |db| {
                let Some(table) = read_table(db, Def::new(&redb_name))? else { return Ok(None) };
                let guard = table.get(encoded.as_slice()).map_err(|e| unavailable("read", e))?;
                guard.map(|g| Stored::decode(g.value())).transpose()
            })
            .await?;
        let now = self.clock.now();
        match stored {
            Some(stored) if stored.is_live(now) => Ok(Some(stored.into_item(key.clone())?)),
            _ => Ok(None),
        }
    }

    async fn put(&self, item: Item, expect: Expect) -> Result<(), PortError> {
        let write = Prepared::new(&Write::Put { item, expect })?;
        self.write(vec![write], true).await
    }

    async fn delete(&self, key: &Key, expect: Expect) -> Result<(), PortError> {
        let write = Prepared::new(&Write::Delete { key: key.clone(), expect })?;
        self.write(vec![write], true).await
    }

    async fn query(&self, query: &Query) -> Result<Page, PortError> {
        check_pk(&query.pk)?;
        if query.limit == 0 {
            return Err(PortError::Invalid("a query's limit must be at least 1".into()));
        }
        let limit = query.limit.min(MAX_QUERY_LIMIT);
        let Some((lower, upper)) = key_range(query) else {
            return Ok(Page::default());
        };
        let redb_name = self.redb_name.clone();
        let (descending, expired) = (query.descending, query.expired);
        let pk = query.pk.clone();
        let prefix_len = prefix(&pk).len();
        let now = self.clock.now();
        self.db
            .blocking(move |db| {
                let Some(table) = read_table(db, Def::new(&redb_name))? else { return Ok(Page::default()) };
                let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
                    (lower.as_ref().map(Vec::as_slice), upper.as_ref().map(Vec::as_slice));
                let range = table.range::<&[u8]>(bounds).map_err(|e| unavailable("read", e))?;
                let mut entries: Box<dyn Iterator<Item = _>> =
                    if descending { Box::new(range.rev()) } else { Box::new(range) };
                let mut page = Page::default();
                for entry in entries.by_ref() {
                    let (key, value) = entry.map_err(|e| unavailable("read", e))?;
                    let stored = Stored::decode(value.value())?;
                    if !expired && !stored.is_live(now) {
                        continue;
                    }
                    let sk = key
                        .value()
                        .get(prefix_len..)
                        .and_then(|sk| std::str::from_utf8(sk).ok())
                        .ok_or_else(|| malformed("table key"))?
                        .to_string();
                    page.items.push(stored.into_item(Key { pk: pk.clone(), sk })?);
                    if page.items.len() == limit {
                        break;
                    }
                }
                // A cursor only when an item the query would answer remains, so the last page is never an empty one.
                if page.items.len() == limit {
                    for entry in entries {
                        let (_, value) = entry.map_err(|e| unavailable("read", e))?;
                        if expired || Stored::decode(value.value())?.is_live(now) {
                            page.next = page.items.last().map(|item| item.key.sk.clone());
                            break;
                        }
                    }
                }
                Ok(page)
            })
            .await
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), PortError> {
        check_transaction(&writes)?;
        let prepared = writes.iter().map(Prepared::new).collect::<Result<Vec<_>, _>>()?;
        self.write(prepared, false).await
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.db.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::clock::ManualClock;
    use proptest::prelude::*;
    use serde_json::json;

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn setup() -> (tempfile::TempDir, EmbeddedDb, Arc<ManualClock>, EmbeddedTable) {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::new(start()));
        let table = db.table("Things", clock.clone());
        (dir, db, clock, table)
    }

    fn item(pk: &str, sk: &str, n: i64) -> Item {
        let mut attrs = Attrs::new();
        attrs.insert("n".into(), json!(n));
        Item::new(Key::new(pk, sk), attrs)
    }

    fn sks(page: &Page) -> Vec<&str> {
        page.items.iter().map(|i| i.key.sk.as_str()).collect()
    }

    #[tokio::test]
    async fn put_then_get_round_trips_with_expiry_at_second_precision() {
        let (_dir, _db, _clock, table) = setup();
        let mut written = item("p", "s", 1);
        written.version = 7;
        written.attrs.insert("nested".into(), json!({"a": [1, "two", null, true]}));
        written.expires_at = Some(start() + chrono::Duration::milliseconds(60_900));
        table.put(written.clone(), Expect::Any).await.unwrap();
        let read = table.get(&Key::new("p", "s")).await.unwrap().unwrap();
        assert_eq!(read.expires_at, Some(start() + chrono::Duration::seconds(60)));
        assert_eq!(read.version, 7);
        assert_eq!(read.attrs, written.attrs);
        assert_eq!(table.get(&Key::new("p", "other")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn expired_items_are_invisible_and_count_as_absent() {
        let (_dir, _db, clock, table) = setup();
        let mut expiring = item("p", "a", 1);
        expiring.expires_at = Some(start() + chrono::Duration::seconds(10));
        table.put(expiring, Expect::Absent).await.unwrap();
        table.put(item("p", "b", 2), Expect::Absent).await.unwrap();
        assert!(table.get(&Key::new("p", "a")).await.unwrap().is_some());

        // Just before the second of expiry it is live; at that second it is gone.
        clock.advance(chrono::Duration::milliseconds(9_999));
        assert!(table.get(&Key::new("p", "a")).await.unwrap().is_some());
        clock.advance(chrono::Duration::milliseconds(1));
        assert_eq!(table.get(&Key::new("p", "a")).await.unwrap(), None);
        assert_eq!(sks(&table.query(&Query::partition("p")).await.unwrap()), ["b"]);

        // A version condition needs a live item; an absence condition is met by an expired one.
        let err = table.put(item("p", "a", 3), Expect::Version(1)).await.unwrap_err();
        assert_eq!(err, PortError::ConditionFailed { index: None });
        table.put(item("p", "a", 3), Expect::Absent).await.unwrap();
        assert_eq!(table.get(&Key::new("p", "a")).await.unwrap().unwrap().attrs["n"], json!(3));
    }

    #[tokio::test]
    async fn failed_conditions_write_nothing() {
        let (_dir, _db, _clock, table) = setup();
        table.put(item("p", "s", 1), Expect::Absent).await.unwrap();
        let err = table.put(item("p", "s", 2), Expect::Absent).await.unwrap_err();
        assert_eq!(err, PortError::ConditionFailed { index: None });
        let err = table.put(item("p", "s", 2), Expect::Version(2)).await.unwrap_err();
        assert!(err.is_condition_failed());
        let err = table.delete(&Key::new("p", "s"), Expect::Version(5)).await.unwrap_err();
        assert!(err.is_condition_failed());
        let err = table.delete(&Key::new("p", "missing"), Expect::Version(1)).await.unwrap_err();
        assert!(err.is_condition_failed());
        assert_eq!(table.get(&Key::new("p", "s")).await.unwrap().unwrap().attrs["n"], json!(1));

        let mut next = item("p", "s", 2);
        next.version = 2;
        table.put(next, Expect::Version(1)).await.unwrap();
        table.delete(&Key::new("p", "s"), Expect::Version(2)).await.unwrap();
        assert_eq!(table.get(&Key::new("p", "s")).await.unwrap(), None);
        // Deleting what is not there, unconditionally, is fine.
        table.delete(&Key::new("p", "s"), Expect::Any).await.unwrap();
    }

    #[tokio::test]
    async fn invalid_requests_are_rejected() {
        let (_dir, _db, _clock, table) = setup();
        let mut reserved = item("p", "s", 1);
        reserved.attrs.insert("version".into(), json!(1));
        assert!(matches!(table.put(reserved, Expect::Any).await, Err(PortError::Invalid(_))));
        assert!(matches!(table.put(item("", "s", 1), Expect::Any).await, Err(PortError::Invalid(_))));
        assert!(matches!(table.put(item("p", "", 1), Expect::Any).await, Err(PortError::Invalid(_))));
        assert!(matches!(table.get(&Key::new("p", "x".repeat(1025))).await, Err(PortError::Invalid(_))));
        let mut huge = item("p", "s", 1);
        huge.attrs.insert("blob".into(), json!("x".repeat(MAX_ITEM_BYTES)));
        assert!(matches!(table.put(huge, Expect::Any).await, Err(PortError::Invalid(_))));
        let mut large = item("p", "s", 1);
        large.attrs.insert("blob".into(), json!("x".repeat(MAX_ITEM_BYTES - 100)));
        table.put(large, Expect::Any).await.unwrap();
        let mut query = Query::partition("p");
        query.limit = 0;
        assert!(matches!(table.query(&query).await, Err(PortError::Invalid(_))));
        assert!(matches!(table.transact(vec![]).await, Err(PortError::Invalid(_))));
        let twice = vec![
            Write::Put { item: item("p", "s", 1), expect: Expect::Any },
            Write::Delete { key: Key::new("p", "s"), expect: Expect::Any },
        ];
        assert!(matches!(table.transact(twice).await, Err(PortError::Invalid(_))));
    }

    #[tokio::test]
    async fn transactions_are_all_or_nothing() {
        let (_dir, _db, _clock, table) = setup();
        table.put(item("p", "existing", 1), Expect::Any).await.unwrap();
        table.put(item("p", "doomed", 1), Expect::Any).await.unwrap();
        let failing = vec![
            Write::Put { item: item("p", "new", 1), expect: Expect::Absent },
            Write::Delete { key: Key::new("p", "doomed"), expect: Expect::Version(1) },
            Write::Check { key: Key::new("p", "existing"), expect: Expect::Version(9) },
            Write::Check { key: Key::new("p", "missing"), expect: Expect::Version(1) },
        ];
        assert_eq!(table.transact(failing).await.unwrap_err(), PortError::ConditionFailed { index: Some(2) });
        assert_eq!(table.get(&Key::new("p", "new")).await.unwrap(), None);
        assert!(table.get(&Key::new("p", "doomed")).await.unwrap().is_some());

        let passing = vec![
            Write::Put { item: item("p", "new", 1), expect: Expect::Absent },
            Write::Delete { key: Key::new("p", "doomed"), expect: Expect::Version(1) },
            Write::Check { key: Key::new("p", "existing"), expect: Expect::Version(1) },
        ];
        table.transact(passing).await.unwrap();
        assert!(table.get(&Key::new("p", "new")).await.unwrap().is_some());
        assert_eq!(table.get(&Key::new("p", "doomed")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn query_honours_bounds_cursor_and_direction() {
        let (_dir, _db, _clock, table) = setup();
        for sk in ["a", "b", "c", "d", "e"] {
            table.put(item("p", sk, 0), Expect::Any).await.unwrap();
        }
        // A partition whose key extends `p` must not leak into `p`'s range.
        table.put(item("pp", "a", 0), Expect::Any).await.unwrap();
        table.put(item("o", "z", 0), Expect::Any).await.unwrap();

        let mut query = Query::partition("p");
        assert_eq!(sks(&table.query(&query).await.unwrap()), ["a", "b", "c", "d", "e"]);
        query.sk_from = Some("b".into());
        query.sk_to = Some("d".into());
        assert_eq!(sks(&table.query(&query).await.unwrap()), ["b", "c", "d"]);
        query.descending = true;
        assert_eq!(sks(&table.query(&query).await.unwrap()), ["d", "c", "b"]);
        query.after = Some("c".into());
        assert_eq!(sks(&table.query(&query).await.unwrap()), ["b"]);
        query.descending = false;
        assert_eq!(sks(&table.query(&query).await.unwrap()), ["d"]);
        query.after = Some("d".into());
        assert_eq!(table.query(&query).await.unwrap(), Page::default());
        query.sk_from = Some("e".into());
        query.after = None;
        assert_eq!(table.query(&query).await.unwrap(), Page::default());
        assert_eq!(table.query(&Query::partition("nobody")).await.unwrap(), Page::default());
        assert!(table.query(&Query::partition("p")).await.unwrap().next.is_none());
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_both_ways() {
        let (_dir, _db, clock, table) = setup();
        for i in 0..25 {
            let mut written = item("p", &format!("k{i:02}"), i);
            if i % 5 == 0 {
                written.expires_at = Some(start() + chrono::Duration::seconds(1));
            }
            table.put(written, Expect::Any).await.unwrap();
        }
        clock.advance(chrono::Duration::seconds(1));
        let live: Vec<String> = (0..25).filter(|i| i % 5 != 0).map(|i| format!("k{i:02}")).collect();
        for descending in [false, true] {
            let mut query = Query::partition("p");
            query.limit = 4;
            query.descending = descending;
            let mut seen = Vec::new();
            let mut pages = 0;
            loop {
                let page = table.query(&query).await.unwrap();
                assert!(page.items.len() <= 4);
                pages += 1;
                seen.extend(page.items.iter().map(|i| i.key.sk.clone()));
                match page.next {
                    Some(next) => {
                        assert_eq!(Some(&next), seen.last());
                        query.after = Some(next);
                    }
                    None => break,
                }
            }
            let mut expected = live.clone();
            if descending {
                expected.reverse();
            }
            assert_eq!(seen, expected);
            assert_eq!(pages, 5);
        }
    }

    #[tokio::test]
    async fn limit_is_capped() {
        let (_dir, _db, _clock, table) = setup();
        let writes: Vec<Write> =
            (0..100).map(|i| Write::Put { item: item("p", &format!("{i:04}"), i), expect: Expect::Any }).collect();
        for batch in 0..11 {
            let writes = writes
                .iter()
                .map(|w| match w {
                    Write::Put { item, expect } => {
                        let mut item = item.clone();
                        item.key.sk = format!("{batch:02}-{}", item.key.sk);
                        Write::Put { item, expect: *expect }
                    }
                    other => other.clone(),
                })
                .collect();
            table.transact(writes).await.unwrap();
        }
        let mut query = Query::partition("p");
        query.limit = 5000;
        let page = table.query(&query).await.unwrap();
        assert_eq!(page.items.len(), MAX_QUERY_LIMIT);
        assert!(page.next.is_some());
    }

    #[tokio::test]
    async fn sort_keys_compare_as_bytes() {
        let (_dir, _db, _clock, table) = setup();
        for sk in ["b", "a", "Z", "é", "aa", "~"] {
            table.put(item("p", sk, 0), Expect::Any).await.unwrap();
        }
        let page = table.query(&Query::partition("p")).await.unwrap();
        assert_eq!(sks(&page), ["Z", "a", "aa", "b", "~", "é"]);
    }

    #[tokio::test]
    async fn tables_are_namespaced() {
        let (_dir, db, clock, table) = setup();
        let other = db.table("Others", clock);
        table.put(item("p", "s", 1), Expect::Any).await.unwrap();
        assert_eq!(other.get(&Key::new("p", "s")).await.unwrap(), None);
        other.put(item("p", "s", 2), Expect::Absent).await.unwrap();
        assert_eq!(table.get(&Key::new("p", "s")).await.unwrap().unwrap().attrs["n"], json!(1));
        table.ping().await.unwrap();
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let (dir, db, clock, table) = setup();
        table.put(item("p", "s", 1), Expect::Any).await.unwrap();
        drop((db, table));
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let table = db.table("Things", clock);
        assert_eq!(table.get(&Key::new("p", "s")).await.unwrap().unwrap().attrs["n"], json!(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_conditional_puts_have_one_winner() {
        let (_dir, _db, _clock, table) = setup();
        let table = Arc::new(table);
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let table = table.clone();
                tokio::spawn(async move { table.put(item("p", "s", i), Expect::Absent).await })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => wins += 1,
                Err(e) => assert!(e.is_condition_failed()),
            }
        }
        assert_eq!(wins, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Paging through any range in either direction yields exactly the model's items, in order.
        #[test]
        fn pagination_matches_a_model(
            keys in proptest::collection::btree_set("[a-d]{1,3}", 0..30),
            from in proptest::option::of("[a-d]{1,2}"),
            to in proptest::option::of("[a-d]{1,2}"),
            limit in 1usize..6,
            descending in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (_dir, _db, _clock, table) = setup();
                for key in &keys {
                    table.put(item("p", key, 0), Expect::Any).await.unwrap();
                }
                let mut expected: Vec<String> = keys
                    .iter()
                    .filter(|k| from.as_ref().is_none_or(|f| *k >= f) && to.as_ref().is_none_or(|t| *k <= t))
                    .cloned()
                    .collect();
                if descending {
                    expected.reverse();
                }
                let mut query = Query { pk: "p".into(), sk_from: from.clone(), sk_to: to.clone(), after: None, limit, descending, expired: false };
                let mut seen = Vec::new();
                for _ in 0..=keys.len() + 1 {
                    let page = table.query(&query).await.unwrap();
                    seen.extend(page.items.iter().map(|i| i.key.sk.clone()));
                    match page.next {
                        Some(next) => query.after = Some(next),
                        None => break,
                    }
                }
                prop_assert_eq!(seen, expected);
                Ok(())
            })?;
        }
    }
}
