//! The table port over DynamoDB.
//!
//! Item layout: `pk` (S) and `sk` (S) are the table's keys, `version` (N) the item's version, `expires_at` (N, epoch
//! seconds, the table's TTL attribute) its expiry if any, and every entry of `attrs` a native attribute converted
//! by serde_dynamo. Reads are strongly consistent. DynamoDB's TTL deletes lazily (and emulators never do), so
//! expiry is enforced here against the injected clock: an expired item is filtered out of every read, and the
//! conditions that say "absent" or "this version" treat it as gone.

use crate::sdk_error;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};
use chrono::{DateTime, Utc};
use keel::clock::Clock;
use keel::port::PortError;
use keel::table::{
    Attrs, Expect, Item, Key, MAX_QUERY_LIMIT, Page, Query, Table, Write, check_attrs, check_transaction,
};
use std::collections::HashMap;
use std::sync::Arc;

const PK: &str = "pk";
const SK: &str = "sk";
const VERSION: &str = "version";
const EXPIRES_AT: &str = "expires_at";

/// DynamoDB's key size limits (UTF-8 bytes); an empty key attribute is refused as well.
const MAX_PK_BYTES: usize = 2048;
const MAX_SK_BYTES: usize = 1024;

type AttrMap = HashMap<String, AttributeValue>;

/// Rejects keys DynamoDB would refuse, before sending, with the same error the embedded adapter gives.
fn check_key(key: &Key) -> Result<(), PortError> {
    check_pk(&key.pk)?;
    if key.sk.is_empty() || key.sk.len() > MAX_SK_BYTES {
        return Err(PortError::Invalid(format!("a sort key holds 1 to {MAX_SK_BYTES} bytes")));
    }
    Ok(())
}

fn check_pk(pk: &str) -> Result<(), PortError> {
    if pk.is_empty() || pk.len() > MAX_PK_BYTES {
        return Err(PortError::Invalid(format!("a partition key holds 1 to {MAX_PK_BYTES} bytes")));
    }
    Ok(())
}

/// A [`Table`] backed by one DynamoDB table whose key schema is `pk` (hash, S) and `sk` (range, S).
#[derive(Clone)]
pub struct DynamoTable {
    client: Client,
    table_name: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DynamoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoTable").field("table_name", &self.table_name).finish_non_exhaustive()
    }
}

impl DynamoTable {
    pub fn new(client: Client, table_name: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self { client, table_name: table_name.into(), clock }
    }

    pub fn table_name(&self) -> &str {
        &self.table_name
    }

    fn now_secs(&self) -> i64 {
        self.clock.now().timestamp()
    }

    fn key_map(key: &Key) -> AttrMap {
        HashMap::from([
            (PK.to_string(), AttributeValue::S(key.pk.clone())),
            (SK.to_string(), AttributeValue::S(key.sk.clone())),
        ])
    }

    fn no_item_error(&self, what: &str) -> PortError {
        PortError::Unavailable(format!("table {} holds an item with a malformed `{what}`", self.table_name))
    }

    /// The condition for a write under `expect`, if any. Expiry is judged by the injected clock.
    fn condition(&self, expect: Expect) -> Option<Condition> {
        let now = AttributeValue::N(self.now_secs().to_string());
        match expect {
            Expect::Any => None,
            Expect::Absent => Some(Condition {
                expression: "attribute_not_exists(#pk) OR #exp <= :now".into(),
                names: HashMap::from([("#pk".into(), PK.into()), ("#exp".into(), EXPIRES_AT.into())]),
                values: HashMap::from([(":now".into(), now)]),
            }),
            Expect::Version(version) => Some(Condition {
                expression: "attribute_exists(#pk) AND #ver = :ver AND (attribute_not_exists(#exp) OR #exp > :now)"
                    .into(),
                names: HashMap::from([
                    ("#pk".into(), PK.into()),
                    ("#ver".into(), VERSION.into()),
                    ("#exp".into(), EXPIRES_AT.into()),
                ]),
                values: HashMap::from([(":ver".into(), AttributeValue::N(version.to_string())), (":now".into(), now)]),
            }),
        }
    }

    /// A condition that always holds, for a transaction's `Check` with `Expect::Any` (DynamoDB requires one).
    fn always() -> Condition {
        Condition {
            expression: "attribute_exists(#pk) OR attribute_not_exists(#pk)".into(),
            names: HashMap::from([("#pk".into(), PK.into())]),
            values: HashMap::new(),
        }
    }

    fn decode(&self, mut map: AttrMap) -> Result<Item, PortError> {
        let pk = take_string(&mut map, PK).ok_or_else(|| self.no_item_error(PK))?;
        let sk = take_string(&mut map, SK).ok_or_else(|| self.no_item_error(SK))?;
        let version = match map.remove(VERSION) {
            Some(AttributeValue::N(n)) => n.parse::<u64>().map_err(|_| self.no_item_error(VERSION))?,
            _ => return Err(self.no_item_error(VERSION)),
        };
        let expires_at = match map.remove(EXPIRES_AT) {
            None | Some(AttributeValue::Null(_)) => None,
            Some(AttributeValue::N(n)) => Some(
                n.parse::<i64>()
                    .ok()
                    .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0))
                    .ok_or_else(|| self.no_item_error(EXPIRES_AT))?,
            ),
            Some(_) => return Err(self.no_item_error(EXPIRES_AT)),
        };
        let mut attrs = Attrs::new();
        for (name, value) in map {
            let value: serde_json::Value = serde_dynamo::from_attribute_value(value).map_err(|_| {
                PortError::Unavailable(format!("table {} holds an attribute that is not JSON", self.table_name))
            })?;
            attrs.insert(name, value);
        }
        Ok(Item { key: Key { pk, sk }, attrs, version, expires_at })
    }

    /// The live item, if the stored one has not expired by the injected clock.
    fn decode_live(&self, map: AttrMap, now: DateTime<Utc>) -> Result<Option<Item>, PortError> {
        let item = self.decode(map)?;
        Ok(item.is_live(now).then_some(item))
    }

    fn transact_item(&self, write: Write) -> Result<TransactWriteItem, PortError> {
        let built = match write {
            Write::Put { item, expect } => {
                let mut put = Put::builder().table_name(&self.table_name).set_item(Some(encode(&item)?));
                if let Some(condition) = self.condition(expect) {
                    put = condition.apply_put(put);
                }
                TransactWriteItem::builder().put(put.build().map_err(build_error)?)
            }
            Write::Delete { key, expect } => {
                check_key(&key)?;
                let mut delete = Delete::builder().table_name(&self.table_name).set_key(Some(Self::key_map(&key)));
                if let Some(condition) = self.condition(expect) {
                    delete = condition.apply_delete(delete);
                }
                TransactWriteItem::builder().delete(delete.build().map_err(build_error)?)
            }
            Write::Check { key, expect } => {
                check_key(&key)?;
                let condition = self.condition(expect).unwrap_or_else(Self::always);
                let check = condition
                    .apply_check(
                        ConditionCheck::builder().table_name(&self.table_name).set_key(Some(Self::key_map(&key))),
                    )
                    .build()
                    .map_err(build_error)?;
                TransactWriteItem::builder().condition_check(check)
            }
        };
        Ok(built.build())
    }
}

/// A condition expression with its attribute-name and value bindings.
struct Condition {
    expression: String,
    names: HashMap<String, String>,
    values: AttrMap,
}

impl Condition {
    fn apply_put(
        self,
        builder: aws_sdk_dynamodb::types::builders::PutBuilder,
    ) -> aws_sdk_dynamodb::types::builders::PutBuilder {
        builder
            .condition_expression(self.expression)
            .set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values(non_empty(self.values))
    }

    fn apply_delete(
        self,
        builder: aws_sdk_dynamodb::types::builders::DeleteBuilder,
    ) -> aws_sdk_dynamodb::types::builders::DeleteBuilder {
        builder
            .condition_expression(self.expression)
            .set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values(non_empty(self.values))
    }

    fn apply_check(
        self,
        builder: aws_sdk_dynamodb::types::builders::ConditionCheckBuilder,
    ) -> aws_sdk_dynamodb::types::builders::ConditionCheckBuilder {
        builder
            .condition_expression(self.expression)
            .set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values(non_empty(self.values))
    }
}

fn non_empty(values: AttrMap) -> Option<AttrMap> {
    (!values.is_empty()).then_some(values)
}

fn build_error(_: aws_sdk_dynamodb::error::BuildError) -> PortError {
    PortError::Invalid("DynamoDB request could not be built".into())
}

fn take_string(map: &mut AttrMap, name: &str) -> Option<String> {
    match map.remove(name) {
        Some(AttributeValue::S(s)) => Some(s),
        _ => None,
    }
}

/// The stored form of an item. Rejects reserved attribute names before anything is sent.
fn encode(item: &Item) -> Result<AttrMap, PortError> {
    check_key(&item.key)?;
    check_attrs(&item.attrs)?;
    let mut map = AttrMap::with_capacity(item.attrs.len() + 4);
    for (name, value) in &item.attrs {
        let value = serde_dynamo::to_attribute_value(value)
            .map_err(|_| PortError::Invalid(format!("attribute `{name}` cannot be stored in DynamoDB")))?;
        map.insert(name.clone(), value);
    }
    map.insert(PK.into(), AttributeValue::S(item.key.pk.clone()));
    map.insert(SK.into(), AttributeValue::S(item.key.sk.clone()));
    map.insert(VERSION.into(), AttributeValue::N(item.version.to_string()));
    if let Some(at) = item.expires_at {
        map.insert(EXPIRES_AT.into(), AttributeValue::N(at.timestamp().to_string()));
    }
    Ok(map)
}

/// What a query asks DynamoDB for once the cursor has been folded into the range.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// The range holds nothing: answer without a request.
    Empty,
    Request {
        from: Option<String>,
        to: Option<String>,
        start_after: Option<String>,
    },
}

/// Folds `after` into the range so that `ExclusiveStartKey` always lies inside the key condition (DynamoDB rejects a
/// start key outside it). Sort keys cannot be empty in DynamoDB, so an empty bound or cursor is normalised away.
fn plan(query: &Query) -> Plan {
    let from = query.sk_from.clone().filter(|s| !s.is_empty());
    let to = query.sk_to.clone();
    if to.as_deref() == Some("") {
        // Only the empty sort key could match, and DynamoDB stores none.
        return Plan::Empty;
    }
    if let (Some(from), Some(to)) = (&from, &to)
        && from > to
    {
        return Plan::Empty;
    }
    let mut start_after = None;
    if let Some(after) = query.after.clone() {
        if query.descending {
            // Continue with keys strictly below `after`.
            if after.is_empty() || from.as_ref().is_some_and(|from| after <= *from) {
                return Plan::Empty;
            }
            if to.as_ref().is_none_or(|to| after <= *to) {
                start_after = Some(after);
            }
        } else {
            // Continue with keys strictly above `after`.
            if to.as_ref().is_some_and(|to| after >= *to) {
                return Plan::Empty;
            }
            if !after.is_empty() && from.as_ref().is_none_or(|from| after >= *from) {
                start_after = Some(after);
            }
        }
    }
    Plan::Request { from, to, start_after }
}

#[async_trait]
impl Table for DynamoTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, PortError> {
        check_key(key)?;
        let output = self
            .client
            .get_item()
            .table_name(&self.table_name)
            .set_key(Some(Self::key_map(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB GetItem", &e))?;
        match output.item {
            Some(map) => self.decode_live(map, self.clock.now()),
            None => Ok(None),
        }
    }

    async fn put(&self, item: Item, expect: Expect) -> Result<(), PortError> {
        let mut request = self.client.put_item().table_name(&self.table_name).set_item(Some(encode(&item)?));
        if let Some(condition) = self.condition(expect) {
            request = request
                .condition_expression(condition.expression)
                .set_expression_attribute_names(Some(condition.names))
                .set_expression_attribute_values(non_empty(condition.values));
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(PortError::ConditionFailed { index: None })
            }
            Err(e) => Err(sdk_error("DynamoDB PutItem", &e)),
        }
    }

    async fn delete(&self, key: &Key, expect: Expect) -> Result<(), PortError> {
        check_key(key)?;
        let mut request = self.client.delete_item().table_name(&self.table_name).set_key(Some(Self::key_map(key)));
        if let Some(condition) = self.condition(expect) {
            request = request
                .condition_expression(condition.expression)
                .set_expression_attribute_names(Some(condition.names))
                .set_expression_attribute_values(non_empty(condition.values));
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(PortError::ConditionFailed { index: None })
            }
            Err(e) => Err(sdk_error("DynamoDB DeleteItem", &e)),
        }
    }

    async fn query(&self, query: &Query) -> Result<Page, PortError> {
        check_pk(&query.pk)?;
        if query.limit == 0 {
            return Err(PortError::Invalid("a query's limit must be at least 1".into()));
        }
        let (from, to, start_after) = match plan(query) {
            Plan::Empty => return Ok(Page::default()),
            Plan::Request { from, to, start_after } => (from, to, start_after),
        };
        let limit = query.limit.min(MAX_QUERY_LIMIT);
        let mut names = HashMap::from([("#pk".to_string(), PK.to_string())]);
        let mut values = HashMap::from([(":pk".to_string(), AttributeValue::S(query.pk.clone()))]);
        let mut expression = "#pk = :pk".to_string();
        let range = match (from, to) {
            (Some(from), Some(to)) => {
                values.insert(":from".into(), AttributeValue::S(from));
                values.insert(":to".into(), AttributeValue::S(to));
                Some("#sk BETWEEN :from AND :to")
            }
            (Some(from), None) => {
                values.insert(":from".into(), AttributeValue::S(from));
                Some("#sk >= :from")
            }
            (None, Some(to)) => {
                values.insert(":to".into(), AttributeValue::S(to));
                Some("#sk <= :to")
            }
            (None, None) => None,
        };
        if let Some(range) = range {
            names.insert("#sk".into(), SK.into());
            expression.push_str(" AND ");
            expression.push_str(range);
        }
        let start_key = start_after.map(|sk| Self::key_map(&Key { pk: query.pk.clone(), sk }));
        let output = self
            .client
            .query()
            .table_name(&self.table_name)
            .consistent_read(true)
            .key_condition_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .set_exclusive_start_key(start_key)
            .scan_index_forward(!query.descending)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB Query", &e))?;
        let now = self.clock.now();
        let mut items = Vec::with_capacity(output.items.as_ref().map_or(0, Vec::len));
        for map in output.items.unwrap_or_default() {
            let item = if query.expired { Some(self.decode(map)?) } else { self.decode_live(map, now)? };
            items.extend(item);
        }
        let next = match output.last_evaluated_key {
            Some(mut last) => Some(take_string(&mut last, SK).ok_or_else(|| self.no_item_error(SK))?),
            None => None,
        };
        Ok(Page { items, next })
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), PortError> {
        check_transaction(&writes)?;
        let items = writes.into_iter().map(|w| self.transact_item(w)).collect::<Result<Vec<_>, _>>()?;
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) => match e.err() {
                TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                    Err(cancellation_error(cancelled.cancellation_reasons()))
                }
                _ => Err(sdk_error("DynamoDB TransactWriteItems", &SdkError::ServiceError(e))),
            },
            Err(e) => Err(sdk_error("DynamoDB TransactWriteItems", &e)),
        }
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.client
            .describe_table()
            .table_name(&self.table_name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("DynamoDB DescribeTable", &e))
    }
}

/// What a cancelled transaction means: the first failed condition if any, a validation failure if the request was
/// wrong, otherwise a transient failure (conflict, throttling, ...).
fn cancellation_error(reasons: &[aws_sdk_dynamodb::types::CancellationReason]) -> PortError {
    let code_at = |wanted: &str| reasons.iter().position(|r| r.code() == Some(wanted));
    if let Some(index) = code_at("ConditionalCheckFailed") {
        return PortError::ConditionFailed { index: Some(index) };
    }
    if code_at("ValidationError").is_some() {
        return PortError::Invalid("DynamoDB TransactWriteItems rejected the request: ValidationError".into());
    }
    let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).filter(|c| *c != "None").collect();
    PortError::Unavailable(format!("DynamoDB TransactWriteItems was cancelled: {}", codes.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::CancellationReason;
    use serde_json::json;

    fn query(from: Option<&str>, to: Option<&str>, after: Option<&str>, descending: bool) -> Query {
        Query {
            pk: "p".into(),
            sk_from: from.map(Into::into),
            sk_to: to.map(Into::into),
            after: after.map(Into::into),
            limit: 10,
            descending,
            expired: false,
        }
    }

    fn request(from: Option<&str>, to: Option<&str>, start_after: Option<&str>) -> Plan {
        Plan::Request { from: from.map(Into::into), to: to.map(Into::into), start_after: start_after.map(Into::into) }
    }

    #[test]
    fn cursor_is_folded_into_the_range() {
        // Ascending: a cursor below the range is ignored, inside it is the start key, at or past the end is empty.
        assert_eq!(plan(&query(Some("b"), Some("d"), Some("a"), false)), request(Some("b"), Some("d"), None));
        assert_eq!(plan(&query(Some("b"), Some("d"), Some("b"), false)), request(Some("b"), Some("d"), Some("b")));
        assert_eq!(plan(&query(Some("b"), Some("d"), Some("c"), false)), request(Some("b"), Some("d"), Some("c")));
        assert_eq!(plan(&query(Some("b"), Some("d"), Some("d"), false)), Plan::Empty);
        // Descending mirrors it.
        assert_eq!(plan(&query(Some("b"), Some("d"), Some("e"), true)), request(Some("b"), Some("d"), None));
        assert_eq!(plan(&query(Some("b"), Some("d"), Some("c"), true)), request(Some("b"), Some("d"), Some("c")));
        assert_eq!(plan(&query(Some("b"), Some("d"), Some("b"), true)), Plan::Empty);
        // Inverted and empty bounds.
        assert_eq!(plan(&query(Some("d"), Some("b"), None, false)), Plan::Empty);
        assert_eq!(plan(&query(Some(""), None, Some(""), false)), request(None, None, None));
        assert_eq!(plan(&query(None, Some(""), None, false)), Plan::Empty);
        assert_eq!(plan(&query(None, None, Some(""), true)), Plan::Empty);
    }

    #[test]
    fn items_round_trip_through_attribute_values() {
        let mut attrs = Attrs::new();
        attrs.insert("name".into(), json!("Ada"));
        attrs.insert("n".into(), json!(42));
        attrs.insert("nested".into(), json!({"list": [1, "two", null, true], "empty": ""}));
        let item = Item {
            key: Key::new("org#1", "user#2"),
            attrs,
            version: 7,
            expires_at: DateTime::<Utc>::from_timestamp(1_700_000_000, 0),
        };
        let map = encode(&item).unwrap();
        assert_eq!(map.get("expires_at"), Some(&AttributeValue::N("1700000000".into())));
        let config = aws_sdk_dynamodb::Config::builder().behavior_version_latest().build();
        let table = DynamoTable::new(Client::from_conf(config), "t", Arc::new(keel::clock::SystemClock));
        assert_eq!(table.decode(map).unwrap(), item);
    }

    #[test]
    fn reserved_attribute_names_are_rejected_before_sending() {
        let mut attrs = Attrs::new();
        attrs.insert("version".into(), json!(1));
        let item = Item::new(Key::new("p", "s"), attrs);
        assert!(matches!(encode(&item), Err(PortError::Invalid(_))));
    }

    #[test]
    fn cancellation_reasons_name_the_first_failed_condition() {
        let reason = |code: &str| CancellationReason::builder().code(code).build();
        let reasons = [reason("None"), reason("ConditionalCheckFailed"), reason("ConditionalCheckFailed")];
        assert_eq!(cancellation_error(&reasons), PortError::ConditionFailed { index: Some(1) });
        let conflict = [reason("None"), reason("TransactionConflict")];
        assert!(matches!(cancellation_error(&conflict), PortError::Unavailable(_)));
        assert!(matches!(cancellation_error(&[reason("ValidationError")]), PortError::Invalid(_)));
    }
}
