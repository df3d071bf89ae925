//! One audit trail for every capability, in one shape under one key layout. Each domain writes its entries into its
//! own table in the same transaction as the change they record, so an entry exists exactly when its change landed
//! (a trail in a table of its own could not promise that: the table port's transactions span one table). Every
//! entry is written under three partitions, each listing in time order (ids are ULIDs, so a date range is a
//! sort-key range):
//! - `AUDIT` / `{id}`: everything, which platform admins read;
//! - `AUDIT#ORG#{org}` / `{id}`: one organization's (an entry about no organization has none), for its admins;
//! - `AUDIT#ACTOR#{actor}` / `{id}`: one actor's own, which every member may read;
//! - `AUDIT#SUBJECT#{user}` / `{id}`: entries about a user other than the actor (a membership an admin set), so an
//!   erasure finds every entry that names the user.
//!
//! Erasure ([`pseudonymize`]) rewrites an entry in place with the user replaced by a pseudonym and moves its
//! per-user copies to the pseudonym's partitions, in one transaction: the trail keeps every entry, id and order.
//!
//! Reading: each domain's table is a [`Trail`]; [`read`] merges them into one page, newest first. A domain whose
//! entries predate this shape (the flags' trail) implements [`Trail`] over its own layout.
//!
//! The gap: the trail is append-only by convention (entries are only ever put with `Expect::Absent`), not by a
//! hash chain an auditor could verify.

use crate::port::PortError;
use crate::table::{Expect, Item, Key, Query, Table, Write, item_of, value_of};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The partition of every entry.
pub const ALL: &str = "AUDIT";

/// The attribute an entry is stored under.
const ATTR: &str = "entry";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AuditLogEntry)]
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
    /// The user the change is about, when that is not the actor (a membership an admin set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
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
            id: new_id(at),
            at,
            actor: actor.to_string(),
            org_id: org_id.map(str::to_string),
            action: action.to_string(),
            resource,
            subject: None,
            reason: None,
            before: None,
            after: None,
        }
    }

    /// The user the change is about, when another acts.
    pub fn about(mut self, user: &str) -> Self {
        self.subject = (user != self.actor).then(|| user.to_string());
        self
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
        partitions.extend(self.subject.as_deref().filter(|s| *s != self.actor).map(subject_partition));
        partitions
    }

    /// This entry with `user` replaced by `pseudonym` wherever it names them: actor, subject, the `kind:id` pieces
    /// of the resource, the reason's text, and the strings of the change.
    pub fn pseudonymized(&self, user: &str, pseudonym: &str) -> Self {
        let swap = |text: &str| if text == user { pseudonym.to_string() } else { text.to_string() };
        let resource = self
            .resource
            .split('/')
            .map(|piece| match piece.split_once(':') {
                Some((kind, id)) if id == user => format!("{kind}:{pseudonym}"),
                _ => swap(piece),
            })
            .collect::<Vec<_>>()
            .join("/");
        let mut entry = Self {
            actor: swap(&self.actor),
            subject: self.subject.as_deref().map(swap),
            resource,
            reason: self.reason.as_ref().map(|r| crate::datamap::pseudonymize_text(r, user, pseudonym)),
            ..self.clone()
        };
        for change in [&mut entry.before, &mut entry.after].into_iter().flatten() {
            crate::datamap::pseudonymize(change, user, pseudonym);
        }
        entry
    }

    /// The puts that record this entry, for the transaction of the change it records. Each expects its key
    /// absent: an entry is never overwritten.
    pub fn writes(&self) -> Result<Vec<Write>, PortError> {
        self.partitions()
            .into_iter()
            .map(|pk| Ok(Write::Put { item: item_of(Key::new(pk, &self.id), ATTR, self, 1)?, expect: Expect::Absent }))
            .collect()
    }

    /// Writes this entry on its own, for an operation that changes nothing in `table` (a request recorded before
    /// it is carried out).
    pub async fn append(&self, table: &dyn Table) -> Result<(), PortError> {
        table.transact(self.writes()?).await
    }

    pub fn from_item(item: &Item) -> Result<Self, PortError> {
        value_of(item, ATTR)
    }
}

/// An audit entry's id: a ULID of `at`, increasing within one millisecond in this process, so entries written in
/// the same millisecond (a fixed test clock, a burst) still list in the order they were made.
pub fn new_id(at: DateTime<Utc>) -> String {
    // The last id made, to follow within its millisecond. An entry of an earlier or later millisecond takes a fresh
    // id of its own time (a generator that always increments would stamp it with the later time of the last one).
    static LAST: std::sync::Mutex<Option<ulid::Ulid>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let id = match *last {
        Some(previous) if previous.timestamp_ms() == millis => {
            previous.increment().unwrap_or_else(|| ulid::Ulid::from_datetime(at.into()))
        }
        _ => ulid::Ulid::from_datetime(at.into()),
    };
    *last = Some(id);
    id.to_string()
}

pub fn org_partition(org: &str) -> String {
    format!("{ALL}#ORG#{org}")
}

pub fn actor_partition(actor: &str) -> String {
    format!("{ALL}#ACTOR#{actor}")
}

pub fn subject_partition(user: &str) -> String {
    format!("{ALL}#SUBJECT#{user}")
}

/// Pseudonymizes every entry in `table` (this module's layout) that `user` made or that is about them: each
/// entry's copies rewritten, its copies under the user's partitions moved to the pseudonym's, one transaction per
/// entry, so a crash leaves each entry either done or untouched and a second run finds nothing. Entries are found
/// under the user's actor and subject partitions, and in each of `also` (read whole: for entries that name the user
/// without being filed under them, such as those written before the subject partition existed). Counts the
/// entries under `names.0` and their other copies under `names.1`; `dry_run` only counts.
pub async fn pseudonymize(
    table: &dyn Table,
    names: (&str, &str),
    user: &str,
    pseudonym: &str,
    also: &[String],
    dry_run: bool,
    tally: &mut crate::datamap::Tally,
) -> Result<(), PortError> {
    let mut done = std::collections::BTreeSet::new();
    let mut partitions = vec![actor_partition(user), subject_partition(user)];
    partitions.extend(also.iter().cloned());
    for partition in partitions {
        let mut query = Query::partition(&partition);
        query.limit = crate::table::MAX_QUERY_LIMIT;
        loop {
            let page = table.query(&query).await?;
            for item in &page.items {
                let entry = AuditEntry::from_item(item)?;
                // An entry the user both made and is about sits in both partitions: handled once.
                if !done.insert(entry.id.clone()) {
                    continue;
                }
                let next = entry.pseudonymized(user, pseudonym);
                if next == entry {
                    continue;
                }
                let (old, new) = (entry.partitions(), next.partitions());
                if !dry_run {
                    let mut writes = Vec::new();
                    for pk in &new {
                        let item = item_of(Key::new(pk, &next.id), ATTR, &next, 2)?;
                        writes.push(Write::Put { item, expect: Expect::Any });
                    }
                    for pk in old.iter().filter(|pk| !new.contains(pk)) {
                        writes.push(Write::Delete { key: Key::new(pk, &entry.id), expect: Expect::Any });
                    }
                    table.transact(writes).await?;
                }
                crate::datamap::count(tally, names.0, 1);
                crate::datamap::count(tally, names.1, (old.len() - 1) as u64);
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
    }
    Ok(())
}

/// Whose entries a reader may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Entries about one organization.
    Org(String),
    /// One actor's own entries.
    Actor(String),
}

/// One page's worth of the trail: the scope, filters, and where the previous page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub scope: Scope,
    /// Entries strictly older than this id (the previous page's last).
    pub before: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Exact action.
    pub action: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// The resource or its prefix (`org:acme` matches `org:acme/member:u1`).
    pub resource: Option<String>,
    pub limit: usize,
}

impl AuditQuery {
    pub fn new(scope: Scope, limit: usize) -> Self {
        Self { scope, before: None, from: None, to: None, action: None, actor: None, resource: None, limit }
    }

    pub fn admits(&self, entry: &AuditEntry) -> bool {
        self.action.as_ref().is_none_or(|a| *a == entry.action)
            && self.actor.as_ref().is_none_or(|a| *a == entry.actor)
            && self.resource.as_ref().is_none_or(|r| {
                entry.resource == *r
                    || entry.resource.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with('/'))
            })
            && match &self.scope {
                Scope::All => true,
                Scope::Org(org) => entry.org_id.as_deref() == Some(org),
                Scope::Actor(actor) => entry.actor == *actor,
            }
    }

    /// The sort-key bounds of the date range, for a partition keyed by entry id.
    pub fn bounds(&self) -> (Option<String>, Option<String>) {
        (
            self.from.map(|at| crate::clock::first_ulid_at(at).to_string()),
            self.to.map(|at| crate::clock::last_ulid_at(at).to_string()),
        )
    }
}

/// Pages a reader scans in one partition for one answer before it stops and hands back a cursor.
pub const MAX_SCAN_PAGES: usize = 10;

/// What a trail found for a query: entries, newest first, and where it stopped reading (an entry id) when older
/// ones may remain.
pub type Found = (Vec<AuditEntry>, Option<String>);

/// A domain's audit trail.
#[async_trait::async_trait]
pub trait Trail: Send + Sync {
    /// Up to `query.limit` entries the query admits, newest first.
    async fn entries(&self, query: &AuditQuery) -> Result<Found, PortError>;
}

/// A table that holds its entries in this module's layout.
pub struct TableTrail(pub std::sync::Arc<dyn Table>);

#[async_trait::async_trait]
impl Trail for TableTrail {
    async fn entries(&self, query: &AuditQuery) -> Result<Found, PortError> {
        let partition = match &query.scope {
            Scope::All => ALL.to_string(),
            Scope::Org(org) => org_partition(org),
            Scope::Actor(actor) => actor_partition(actor),
        };
        scan(self.0.as_ref(), &partition, query, AuditEntry::from_item).await
    }
}

/// Reads `partition` (sort keys are entry ids) newest first, keeping what `query` admits, until `query.limit` are
/// found, the partition ends, or [`MAX_SCAN_PAGES`] pages have been read.
pub async fn scan(
    table: &dyn Table,
    partition: &str,
    query: &AuditQuery,
    decode: impl Fn(&Item) -> Result<AuditEntry, PortError> + Send + Sync,
) -> Result<Found, PortError> {
    let mut range = Query::partition(partition);
    (range.sk_from, range.sk_to) = query.bounds();
    range.descending = true;
    range.after = query.before.clone();
    range.limit = query.limit.clamp(1, crate::table::MAX_QUERY_LIMIT);
    let mut found = Vec::new();
    for _ in 0..MAX_SCAN_PAGES {
        let page = table.query(&range).await?;
        for item in &page.items {
            let entry = decode(item)?;
            if query.admits(&entry) {
                found.push(entry);
                if found.len() == query.limit {
                    return Ok((found, Some(item.key.sk.clone())));
                }
            }
        }
        match page.next {
            Some(next) => range.after = Some(next),
            None => return Ok((found, None)),
        }
    }
    Ok((found, range.after))
}

/// Writes every entry `actor` made in `table` (this module's layout) into `sink` under the data-map entry `name`,
/// another user it is about written [`crate::datamap::ANOTHER_USER`]: a domain's export of its audit trail.
pub async fn export_actor(
    table: &std::sync::Arc<dyn Table>,
    name: &'static str,
    actor: &str,
    sink: &mut dyn crate::datamap::ExportSink,
) -> Result<(), PortError> {
    let trail = TableTrail(table.clone());
    let mut query = AuditQuery::new(Scope::Actor(actor.to_string()), crate::table::MAX_QUERY_LIMIT);
    loop {
        let (entries, next) = trail.entries(&query).await?;
        for mut entry in entries {
            // The user the actor acted on is someone else: the export says so without naming them.
            if entry.subject.as_deref().is_some_and(|subject| subject != actor) {
                entry.subject = Some(crate::datamap::ANOTHER_USER.to_string());
            }
            sink.record(name, crate::datamap::to_record(&entry)?)?;
        }
        match next {
            Some(next) => query.before = Some(next),
            None => return Ok(()),
        }
    }
}

/// One page of the trails merged, newest first, and the cursor when more may remain. A trail that stopped early
/// bounds the page: nothing older than where it stopped is answered yet (another trail's older entries come on a
/// later page), so no entry is skipped between pages.
pub async fn read(trails: &[&dyn Trail], query: &AuditQuery) -> Result<(Vec<AuditEntry>, Option<String>), PortError> {
    let mut all = Vec::new();
    let mut frontier: Option<String> = None;
    for trail in trails {
        let (entries, stopped) = trail.entries(query).await?;
        if let Some(stopped) = stopped {
            frontier = Some(frontier.map_or(stopped.clone(), |f| f.max(stopped)));
        }
        all.extend(entries);
    }
    if let Some(frontier) = &frontier {
        all.retain(|entry| entry.id >= *frontier);
    }
    all.sort_by(|a, b| b.id.cmp(&a.id));
    all.dedup_by(|a, b| a.id == b.id);
    let next = if all.len() > query.limit {
        all.truncate(query.limit);
        all.last().map(|e| e.id.clone())
    } else {
        frontier
    };
    Ok((all, next))
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

    /// A trail over a list, newest first, that stops after `reads` entries read per call, as a scan cut short does.
    struct Listed {
        entries: Vec<AuditEntry>,
        reads: usize,
    }

    #[async_trait::async_trait]
    impl Trail for Listed {
        async fn entries(&self, query: &AuditQuery) -> Result<Found, PortError> {
            let older: Vec<&AuditEntry> =
                self.entries.iter().filter(|e| query.before.as_ref().is_none_or(|b| e.id < *b)).collect();
            let mut found = Vec::new();
            for (read, entry) in older.iter().enumerate() {
                if read == self.reads {
                    return Ok((found, Some(older[read - 1].id.clone())));
                }
                if query.admits(entry) {
                    found.push((*entry).clone());
                    if found.len() == query.limit {
                        return Ok((found, Some(entry.id.clone())));
                    }
                }
            }
            Ok((found, None))
        }
    }

    #[tokio::test]
    async fn merged_pages_skip_nothing_when_a_trail_stops_early() {
        let at = Utc::now();
        let made: Vec<AuditEntry> = (0..30)
            .map(|n| AuditEntry::new(at, if n % 3 == 0 { "ann" } else { "bob" }, None, "a.b.c", format!("x:{n}")))
            .collect();
        let newest_first = |pick: &dyn Fn(usize) -> bool| {
            let mut list: Vec<AuditEntry> =
                made.iter().enumerate().filter(|(n, _)| pick(*n)).map(|(_, e)| e.clone()).collect();
            list.reverse();
            list
        };
        // One trail holds most entries, but ann's are rare in it and it gives up after 4 reads a call.
        let sparse = Listed { entries: newest_first(&|n| n % 2 == 0), reads: 4 };
        let dense = Listed { entries: newest_first(&|n| n % 2 == 1), reads: usize::MAX };
        let trails: Vec<&dyn Trail> = vec![&sparse, &dense];
        let mut query = AuditQuery::new(Scope::All, 3);
        query.actor = Some("ann".into());
        let mut seen = Vec::new();
        for _ in 0..50 {
            let (page, next) = read(&trails, &query).await.unwrap();
            seen.extend(page.into_iter().map(|e| e.resource));
            match next {
                Some(next) => query.before = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = newest_first(&|n| n % 3 == 0).into_iter().map(|e| e.resource).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn an_entry_of_an_earlier_time_has_an_id_of_its_own_time() {
        let now = Utc::now();
        let later = AuditEntry::new(now, "u1", None, "a.b.c", "x:1".into());
        let earlier = AuditEntry::new(now - chrono::Duration::hours(1), "u1", None, "a.b.c", "x:2".into());
        let stamp = |e: &AuditEntry| ulid::Ulid::from_string(&e.id).unwrap().timestamp_ms();
        assert_eq!(stamp(&earlier) as i64, (now - chrono::Duration::hours(1)).timestamp_millis());
        assert!(earlier.id < later.id);
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
