//! One audit trail for every capability, in one shape under one key layout. Each domain writes its entries into its
//! own table in the same transaction as the change they record, so an entry exists exactly when its change landed
//! (a trail in a table of its own could not promise that: the table port's transactions span one table). Every
//! entry is written under three partitions, each listing in time order (ids are ULIDs, so a date range is a
//! sort-key range):
//! - `AUDIT` / `{id}`: everything, which platform admins read;
//! - `AUDIT#ORG#{org}` / `{id}`: one organization's (an entry about no organization has none), for its admins;
//! - `AUDIT#ACTOR#{actor}` / `{id}`: one actor's own, which every member may read.
//!
//! The gap: the trail is append-only by convention (entries are only ever put with `Expect::Absent`), not by a
//! hash chain an auditor could verify.

use crate::port::PortError;
use crate::table::{Expect, Item, Key, Write};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The partition of every entry.
pub const ALL: &str = "AUDIT";

/// The attribute an entry is stored under.
const ATTR: &str = "entry";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// A ULID: unique, and ordered by time.
    pub id: String,
    pub at: DateTime<Utc>,
    /// The user who acted.
    pub actor: String,
    /// The organization the change is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// `domain.resource.verb`, such as `directory.member.set`.
    pub action: String,
    /// What changed, as `kind:id` pieces joined by `/` (`org:acme/member:u1`).
    pub resource: String,
    /// Why, when the actor had to say (a platform admin acting on another's data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

impl AuditEntry {
    /// An entry with a fresh id at `at`.
    pub fn new(at: DateTime<Utc>, actor: &str, org_id: Option<&str>, action: &str, resource: String) -> Self {
        Self {
            id: next_id(at),
            at,
            actor: actor.to_string(),
            org_id: org_id.map(str::to_string),
            action: action.to_string(),
            resource,
            reason: None,
            before: None,
            after: None,
        }
    }

    pub fn with_change(mut self, before: Option<Value>, after: Option<Value>) -> Self {
        self.before = before;
        self.after = after;
        self
    }

    /// The partitions this entry is written under.
    pub fn partitions(&self) -> Vec<String> {
        let mut partitions = vec![ALL.to_string()];
        partitions.extend(self.org_id.as_deref().map(org_partition));
        partitions.push(actor_partition(&self.actor));
        partitions
    }

    /// The puts that record this entry, for the transaction of the change it records. Each expects its key
    /// absent: an entry is never overwritten.
    pub fn writes(&self) -> Result<Vec<Write>, PortError> {
        let value = serde_json::to_value(self).map_err(|e| PortError::Invalid(format!("audit entry: {e}")))?;
        Ok(self
            .partitions()
            .into_iter()
            .map(|pk| {
                let mut attrs = serde_json::Map::new();
                attrs.insert(ATTR.to_string(), value.clone());
                Write::Put { item: Item::new(Key::new(pk, &self.id), attrs), expect: Expect::Absent }
            })
            .collect())
    }

    pub fn from_item(item: &Item) -> Result<Self, PortError> {
        let value = item.attrs.get(ATTR).cloned().unwrap_or(Value::Null);
        serde_json::from_value(value)
            .map_err(|e| PortError::Invalid(format!("stored audit entry `{}` does not decode: {e}", item.key.sk)))
    }
}

/// A ULID for `at`, increasing within one millisecond in this process, so entries written in the same millisecond
/// (a fixed test clock, a burst) still list in the order they were made.
fn next_id(at: DateTime<Utc>) -> String {
    static IDS: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    let mut ids = IDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Overflow takes 2^80 ids in one millisecond; a random one for that instant is the fallback.
    ids.generate_from_datetime(at.into()).unwrap_or_else(|_| ulid::Ulid::from_datetime(at.into())).to_string()
}

pub fn org_partition(org: &str) -> String {
    format!("{ALL}#ORG#{org}")
}

pub fn actor_partition(actor: &str) -> String {
    format!("{ALL}#ACTOR#{actor}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_written_once_per_partition_and_reads_back_whole() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap().to_utc();
        let entry = AuditEntry::new(at, "u1", Some("acme"), "directory.member.set", "org:acme/member:u2".into())
            .with_change(None, Some(serde_json::json!({"role": "admin"})));
        let writes = entry.writes().unwrap();
        let keys: Vec<(String, String)> = writes
            .iter()
            .map(|w| match w {
                Write::Put { item, expect } => {
                    assert_eq!(*expect, Expect::Absent);
                    assert_eq!(AuditEntry::from_item(item).unwrap(), entry);
                    (item.key.pk.clone(), item.key.sk.clone())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let id = entry.id.clone();
        assert_eq!(
            keys,
            vec![
                ("AUDIT".to_string(), id.clone()),
                ("AUDIT#ORG#acme".to_string(), id.clone()),
                ("AUDIT#ACTOR#u1".to_string(), id)
            ]
        );
        assert_eq!(ulid::Ulid::from_string(&entry.id).unwrap().datetime(), std::time::SystemTime::from(at));
    }

    #[test]
    fn an_entry_about_no_organization_has_no_organization_partition() {
        let entry = AuditEntry::new(Utc::now(), "u1", None, "gdpr.export.start", "user:u1".into());
        assert_eq!(entry.partitions(), vec!["AUDIT".to_string(), "AUDIT#ACTOR#u1".to_string()]);
    }

    #[test]
    fn entries_made_in_one_millisecond_sort_in_the_order_they_were_made() {
        let at = Utc::now();
        let ids: Vec<String> = (0..100).map(|_| AuditEntry::new(at, "u1", None, "a.b.c", "x:1".into()).id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
