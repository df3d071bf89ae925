//! Where flags live, and the in-memory snapshot evaluation reads.
//!
//! Items in the flags table:
//! - `FLAG` / `{key}`: one flag (`flag` attribute, the whole document); the item version is the flag's version.
//! - `SEGMENT` / `{name}`: one segment.
//! - `AUDIT` / `{ulid}` and `AUDIT#{subject}` / `{ulid}`: the audit trail, overall and per flag or segment. Written
//!   with `Expect::Absent` in the same transaction as the change it records, so it is append-only and complete.
//! - `FLAGMETA` / `revision`: a fresh id on every change, in the same transaction. Caches compare it (one read) to
//!   decide whether to reload every flag.
//! - `FLAGSEEN` / `{key}`: when a flag was last evaluated, flushed by caches at most once a minute per process.
//!
//! Flags are platform-wide configuration, not tenant data: one partition holds them all, and overrides live inside
//! their flag so that one read of the partition is a complete, consistent snapshot.

use super::compile::{Invalid, check_flag, check_neighbours, validate_flag, validate_segment};
use super::eval::{Refreshed, Snapshot, StoredFlag};
use super::model::{Flag, FlagWarning, Segment};
use super::unleash::Import;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Duration, Utc};
use keel::clock::Clock;
use keel::port::PortError;
use keel::table::{Expect, Item, Key, Page, Query, Table, Write};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

const FLAGS: &str = "FLAG";
const SEGMENTS: &str = "SEGMENT";
const AUDIT: &str = "AUDIT";
const USAGE: &str = "FLAGSEEN";
/// Largest stored flag document; with the before and after copies of an audit entry it stays inside DynamoDB's
/// 400 KB item limit.
pub const MAX_FLAG_BYTES: usize = 120_000;
/// Attempts of an update without `If-Match` that keeps losing to concurrent writers.
const MAX_UPDATE_ATTEMPTS: u64 = 25;

fn meta_key() -> Key {
    Key::new("FLAGMETA", "revision")
}

fn audit_partition(subject: &str) -> String {
    format!("{AUDIT}#{subject}")
}

/// The audit subject of a flag or a segment.
pub fn flag_subject(key: &str) -> String {
    format!("flag:{key}")
}

pub fn segment_subject(name: &str) -> String {
    format!("segment:{name}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    /// `If-Match` named another version, or a concurrent writer got there first.
    #[error("version mismatch: the current version is {current}")]
    VersionMismatch { current: u64 },
    #[error("invalid")]
    Invalid(Vec<Invalid>),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    /// `flag:{key}` or `segment:{name}`.
    pub subject: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// How an import treats what Keel does not support as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportMode {
    /// Every flag that can be stored is imported, each unsupported element carried over as Unleash evaluates it
    /// and recorded as a warning on its flag; a flag that cannot be stored at all is refused alone.
    #[default]
    Lenient,
    /// Any warning or invalid flag refuses the whole document; nothing is written.
    Strict,
}

/// What an import did (or, in a dry run, would do), by flag key and segment name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub mode: ImportMode,
    pub dry_run: bool,
    /// Whether the document is (or would be) imported; false only in strict mode, with the reasons in `refused`.
    pub accepted: bool,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub segments_written: Vec<String>,
    /// What is not imported: whole flags in lenient mode, the document in strict mode.
    pub refused: Vec<ImportProblem>,
    /// What the imported flags carry over that Keel does not support as such (stored on each flag).
    pub warnings: Vec<ImportWarning>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ImportProblem {
    /// The flag refused, when the problem is one flag's.
    pub flag: Option<String>,
    /// Into the Unleash document, or `/flags/{i}/...` into the converted flag of feature `i`.
    pub pointer: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ImportWarning {
    /// None for a warning about a segment.
    pub flag: Option<String>,
    /// Into the flag (empty for a segment's).
    pub pointer: String,
    /// Into the Unleash document.
    pub source: String,
    pub message: String,
}

#[derive(Clone)]
pub struct FlagStore {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    /// Changes committed through this table object by this process (see `local_writes`).
    writes: Arc<AtomicU64>,
}

/// A counter of the flag changes committed through one table object in this process. The local host hands every
/// function the same table object, so a cache sees an admin write on its next request instead of after its
/// refresh period; Lambda functions never share a process, so on AWS the refresh period holds.
fn local_writes(table: &Arc<dyn Table>) -> Arc<AtomicU64> {
    type Counters = Vec<(Weak<dyn Table>, Arc<AtomicU64>)>;
    static COUNTERS: Mutex<Counters> = Mutex::new(Vec::new());
    let mut counters = lock(&COUNTERS);
    counters.retain(|(weak, _)| weak.strong_count() > 0);
    let weak = Arc::downgrade(table);
    if let Some((_, counter)) = counters.iter().find(|(other, _)| Weak::ptr_eq(other, &weak)) {
        return counter.clone();
    }
    let counter = Arc::new(AtomicU64::new(0));
    counters.push((weak, counter.clone()));
    counter
}

impl FlagStore {
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>) -> Self {
        let writes = local_writes(&table);
        Self { table, clock, writes }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub async fn get(&self, key: &str) -> Result<Option<Flag>, StoreError> {
        let item = self.table.get(&Key::new(FLAGS, key)).await?;
        item.map(|item| decode(&item, "flag")).transpose()
    }

    /// Every flag, archived ones included, in key order.
    pub async fn flags(&self) -> Result<Vec<Flag>, StoreError> {
        self.all(FLAGS, "flag").await
    }

    pub async fn segments(&self) -> Result<Vec<Segment>, StoreError> {
        self.all(SEGMENTS, "segment").await
    }

    pub async fn segment(&self, name: &str) -> Result<Option<(Segment, u64)>, StoreError> {
        let item = self.table.get(&Key::new(SEGMENTS, name)).await?;
        item.map(|item| Ok((decode(&item, "segment")?, item.version))).transpose()
    }

    async fn all<T: serde::de::DeserializeOwned>(&self, partition: &str, attr: &str) -> Result<Vec<T>, StoreError> {
        self.partition(partition).await?.iter().map(|item| decode(item, attr)).collect()
    }

    /// Every live item of a partition, page after page.
    async fn partition(&self, partition: &str) -> Result<Vec<Item>, PortError> {
        let mut query = Query::partition(partition);
        query.limit = keel::table::MAX_QUERY_LIMIT;
        let mut out = Vec::new();
        loop {
            let page = self.table.query(&query).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// The change marker caches compare; `None` before the first write.
    pub async fn revision(&self) -> Result<Option<String>, PortError> {
        let item = self.table.get(&meta_key()).await?;
        Ok(item.and_then(|item| item.attrs.get("revision").and_then(Value::as_str).map(str::to_string)))
    }

    /// The revision, then every flag and segment compiled. The revision is read first: a change landing in between
    /// is in the snapshot and makes the next check reload once more, never the reverse.
    pub async fn load(&self) -> Result<(Option<String>, Snapshot), StoreError> {
        let (revision, snapshot, _) = self.reload(&Snapshot::default()).await?;
        Ok((revision, snapshot))
    }

    /// As `load`, keeping the compiled form of every flag of `previous` whose item version did not change (Keel's
    /// writes always change it), so a one-flag change costs about one flag's decoding and compiling.
    pub async fn reload(&self, previous: &Snapshot) -> Result<(Option<String>, Snapshot, Refreshed), StoreError> {
        let revision = self.revision().await?;
        let items = self.partition(FLAGS).await?;
        let segments = self.segments().await?.into_iter().map(|s| (s.name.clone(), s)).collect();
        let stored = items.iter().map(|item| StoredFlag {
            key: &item.key.sk,
            version: item.version,
            document: item.attrs.get("flag").unwrap_or(&Value::Null),
        });
        let (snapshot, refreshed) = previous.refresh(stored, segments);
        Ok((revision, snapshot, refreshed))
    }

    pub async fn create(&self, flag: Flag, actor: &str) -> Result<Flag, StoreError> {
        let (flags, segments) = self.context().await?;
        if flags.contains_key(&flag.key) {
            return Err(StoreError::AlreadyExists);
        }
        validate_flag(&flag, &flags, &segments).map_err(StoreError::Invalid)?;
        self.write_flag(None, flag, actor, "create").await
    }

    /// Reads the flag, applies `change`, checks the result among all flags and writes it if nobody wrote in
    /// between. With `if_match`, the stored version must be that one (412 otherwise); without, a concurrent write
    /// makes it read and apply the change again (a few times), so independent changes all land.
    pub async fn update(
        &self,
        key: &str,
        if_match: Option<u64>,
        actor: &str,
        action: &str,
        change: impl Fn(&mut Flag) -> Result<(), Vec<Invalid>>,
    ) -> Result<Flag, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (flags, segments) = self.context().await?;
            let current = flags.get(key).cloned().ok_or(StoreError::NotFound)?;
            if let Some(expected) = if_match
                && expected != current.version
            {
                return Err(StoreError::VersionMismatch { current: current.version });
            }
            let mut next = current.clone();
            change(&mut next).map_err(StoreError::Invalid)?;
            if next.key != current.key {
                return Err(StoreError::Invalid(vec![Invalid {
                    pointer: "/key".into(),
                    message: "a flag's key cannot change".into(),
                }]));
            }
            validate_flag(&next, &flags, &segments).map_err(StoreError::Invalid)?;
            match self.write_flag(Some(&current), next, actor, action).await {
                // Each conflict is another writer's success, so this ends; a short random pause keeps writers that
                // read the same version from colliding again in lockstep.
                Err(StoreError::VersionMismatch { .. }) if if_match.is_none() && attempts < MAX_UPDATE_ATTEMPTS => {
                    let pause = rand::random_range(0..=attempts * 5);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Creates or replaces a segment; every flag using it must still be valid.
    pub async fn put_segment(
        &self,
        segment: Segment,
        if_match: Option<u64>,
        actor: &str,
    ) -> Result<(Segment, u64), StoreError> {
        validate_segment(&segment).map_err(StoreError::Invalid)?;
        let current = self.segment(&segment.name).await?;
        let version = match (&current, if_match) {
            (Some((_, v)), Some(expected)) if *v != expected => {
                return Err(StoreError::VersionMismatch { current: *v });
            }
            (None, Some(_)) => return Err(StoreError::NotFound),
            (Some((_, v)), _) => *v,
            (None, None) => 0,
        };
        let item = encode(Key::new(SEGMENTS, &segment.name), "segment", &segment, version + 1)?;
        let expect = if version == 0 { Expect::Absent } else { Expect::Version(version) };
        let before = current.map(|(s, _)| serde_json::to_value(s)).transpose().map_err(invalid_json)?;
        let after = Some(serde_json::to_value(&segment).map_err(invalid_json)?);
        let entry = self.entry(actor, "put_segment", segment_subject(&segment.name), before, after);
        match self.commit(Write::Put { item, expect }, entry).await {
            Ok(()) => {}
            Err(StoreError::VersionMismatch { .. }) if version == 0 => return Err(StoreError::AlreadyExists),
            Err(StoreError::VersionMismatch { .. }) => {
                let current = self.segment(&segment.name).await?.map_or(0, |(_, v)| v);
                return Err(StoreError::VersionMismatch { current });
            }
            Err(other) => return Err(other),
        }
        Ok((segment, version + 1))
    }

    /// Writes an Unleash import (or, with `dry_run`, reports what it would write). Everything is checked first. In
    /// strict mode any warning or invalid flag refuses the document and nothing is written. In lenient mode a flag
    /// that cannot be stored (it does not compile) is refused alone, and one whose prerequisites Keel would refuse
    /// (missing, a cycle, deeper than one level) is stored with a warning, since evaluation treats them as Unleash
    /// does (never satisfied). Segments and flags are written one transaction each; flags that would not change are
    /// left alone, so importing the same document twice writes nothing the second time.
    pub async fn import(
        &self,
        import: Import,
        actor: &str,
        mode: ImportMode,
        dry_run: bool,
    ) -> Result<ImportReport, StoreError> {
        let (existing, mut segments) = self.context().await?;
        let mut report = ImportReport { mode, dry_run, accepted: true, ..ImportReport::default() };
        let mut problems: Vec<Invalid> = import.warnings();
        let mut refused_segments = Vec::new();
        for (i, segment) in import.segments.iter().enumerate() {
            match validate_segment(segment) {
                Ok(()) => {
                    segments.insert(segment.name.clone(), segment.clone());
                }
                Err(found) => {
                    let found: Vec<Invalid> =
                        found.into_iter().map(|e| prefixed(&format!("/segments/{i}"), e)).collect();
                    report.refused.extend(found.iter().map(|e| ImportProblem {
                        flag: None,
                        pointer: e.pointer.clone(),
                        message: format!("segment `{}`: {}", segment.name, e.message),
                    }));
                    problems.extend(found);
                    refused_segments.push(segment.name.clone());
                }
            }
        }
        // Flags that compile, then their place among all flags (those stored and those imported).
        let mut flags = existing.clone();
        let mut accepted = Vec::new();
        for (i, flag) in import.flags.into_iter().enumerate() {
            let errors = check_flag(&flag, &segments);
            if errors.is_empty() {
                flags.insert(flag.key.clone(), flag.clone());
                accepted.push((i, flag));
                continue;
            }
            for e in errors {
                let e = prefixed(&format!("/flags/{i}"), e);
                report.refused.push(ImportProblem {
                    flag: Some(flag.key.clone()),
                    pointer: e.pointer.clone(),
                    message: e.message.clone(),
                });
                problems.push(e);
            }
        }
        for (i, flag) in &mut accepted {
            for e in check_neighbours(flag, &flags) {
                let source = format!("/features/{i}{}", e.pointer.replacen("/prerequisites", "/dependencies", 1));
                problems.push(Invalid { pointer: source.clone(), message: e.message.clone() });
                flag.warnings.push(FlagWarning {
                    pointer: e.pointer,
                    source,
                    message: format!("{}; the prerequisite is never satisfied, as in Unleash", e.message),
                });
            }
        }
        if mode == ImportMode::Strict && !problems.is_empty() {
            if !dry_run {
                return Err(StoreError::Invalid(problems));
            }
            report.accepted = false;
            report.refused = problems
                .into_iter()
                .map(|e| ImportProblem { flag: None, pointer: e.pointer, message: e.message })
                .collect();
            return Ok(report);
        }
        report.warnings.extend(import.segment_warnings.iter().map(|w| ImportWarning {
            flag: None,
            pointer: String::new(),
            source: w.pointer.clone(),
            message: w.message.clone(),
        }));
        for (_, flag) in &accepted {
            report.warnings.extend(flag.warnings.iter().map(|w| ImportWarning {
                flag: Some(flag.key.clone()),
                pointer: w.pointer.clone(),
                source: w.source.clone(),
                message: w.message.clone(),
            }));
        }

        for segment in import.segments.into_iter().filter(|s| !refused_segments.contains(&s.name)) {
            let name = segment.name.clone();
            let current = self.segment(&name).await?;
            if current.as_ref().is_some_and(|(s, _)| *s == segment) {
                continue;
            }
            if !dry_run {
                self.put_segment(segment, current.map(|(_, v)| v), actor).await?;
            }
            report.segments_written.push(name);
        }
        for (_, mut flag) in accepted {
            let key = flag.key.clone();
            match existing.get(&key) {
                None => {
                    if !dry_run {
                        self.write_flag(None, flag, actor, "import").await?;
                    }
                    report.created.push(key);
                }
                Some(current) => {
                    // Keep what the import does not carry: overrides, lists and lifecycle set in Keel. An Unleash
                    // `stale: true` becomes `stale_after: now` on the first import only, so the same document
                    // imported again is unchanged.
                    flag.overrides = current.overrides.clone();
                    flag.environments = current.environments.clone();
                    flag.allow_orgs = current.allow_orgs.clone();
                    flag.block_orgs = current.block_orgs.clone();
                    flag.target_users = current.target_users.clone();
                    flag.lifecycle.permanent = current.lifecycle.permanent;
                    flag.lifecycle.stale_after = current.lifecycle.stale_after.or(flag.lifecycle.stale_after);
                    if same_content(current, &flag) {
                        report.unchanged.push(key);
                        continue;
                    }
                    if !dry_run {
                        self.write_flag(Some(current), flag, actor, "import").await?;
                    }
                    report.updated.push(key);
                }
            }
        }
        Ok(report)
    }

    /// One page of the audit trail, newest first: overall, or for one subject.
    pub async fn audit(
        &self,
        subject: Option<&str>,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>), StoreError> {
        let mut query = Query::partition(subject.map_or_else(|| AUDIT.to_string(), audit_partition));
        query.descending = true;
        query.limit = limit;
        query.after = after;
        let Page { items, next } = self.table.query(&query).await?;
        let entries = items.iter().map(|item| decode(item, "entry")).collect::<Result<_, _>>()?;
        Ok((entries, next))
    }

    /// An erasure's part in the flag store: every flag and segment that names `user` rewritten with `pseudonym`
    /// in its place (a rule that matched them then matches nobody), each change audited without its before and
    /// after, which would name them; then every audit entry that names them rewritten in place, both copies. The
    /// trail keeps every entry and its order. `dry_run` only counts.
    pub async fn erase_user(
        &self,
        user: &str,
        pseudonym: &str,
        dry_run: bool,
        tally: &mut keel::datamap::Tally,
    ) -> Result<(), StoreError> {
        use keel::datamap::{ERASER, count};
        for flag in self.flags().await? {
            let mut next = flag.clone();
            if next.pseudonymize_user(user, pseudonym) == 0 {
                continue;
            }
            if !dry_run {
                next.version = flag.version + 1;
                next.updated_by = ERASER.to_string();
                next.updated_at = self.clock.now();
                let item = encode_flag(&next)?;
                let entry = self.entry(ERASER, "pseudonymize", flag_subject(&next.key), None, None);
                self.commit(Write::Put { item, expect: Expect::Version(flag.version) }, entry).await?;
            }
            count(tally, "flags.flag", 1);
        }
        for segment in self.segments().await? {
            let mut next = segment.clone();
            if next.pseudonymize_user(user, pseudonym) == 0 {
                continue;
            }
            if !dry_run {
                let Some((_, version)) = self.segment(&segment.name).await? else { continue };
                let item = encode(Key::new(SEGMENTS, &next.name), "segment", &next, version + 1)?;
                let entry = self.entry(ERASER, "pseudonymize", segment_subject(&next.name), None, None);
                self.commit(Write::Put { item, expect: Expect::Version(version) }, entry).await?;
            }
            count(tally, "flags.segment", 1);
        }
        let mut query = Query::partition(AUDIT);
        query.limit = keel::table::MAX_QUERY_LIMIT;
        loop {
            let Page { items, next } = self.table.query(&query).await?;
            for item in &items {
                let entry: AuditEntry = decode(item, "entry")?;
                let Some(entry) = pseudonymized_entry(&entry, user, pseudonym) else { continue };
                if !dry_run {
                    let writes = [AUDIT.to_string(), audit_partition(&entry.subject)]
                        .into_iter()
                        .map(|pk| {
                            let item = encode(Key::new(pk, &entry.id), "entry", &entry, item.version + 1)?;
                            Ok(Write::Put { item, expect: Expect::Any })
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    self.table.transact(writes).await?;
                }
                count(tally, "flags.audit", 1);
                count(tally, "flags.audit_by_subject", 1);
            }
            match next {
                Some(next) => query.after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Records when flags were last evaluated (one write per flag).
    pub async fn record_usage(&self, seen: &BTreeMap<String, DateTime<Utc>>) -> Result<(), PortError> {
        for (key, at) in seen {
            let mut attrs = serde_json::Map::new();
            attrs.insert("last_evaluated_at".into(), Value::String(at.to_rfc3339()));
            self.table.put(Item::new(Key::new(USAGE, key), attrs), Expect::Any).await?;
        }
        Ok(())
    }

    /// When each flag was last evaluated, as far as caches have flushed.
    pub async fn usage(&self) -> Result<BTreeMap<String, DateTime<Utc>>, StoreError> {
        let items = self.partition(USAGE).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let at = item.attrs.get("last_evaluated_at").and_then(Value::as_str)?;
                let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
                Some((item.key.sk, at))
            })
            .collect())
    }

    async fn context(&self) -> Result<(BTreeMap<String, Flag>, BTreeMap<String, Segment>), StoreError> {
        let flags = self.flags().await?.into_iter().map(|f| (f.key.clone(), f)).collect();
        let segments = self.segments().await?.into_iter().map(|s| (s.name.clone(), s)).collect();
        Ok((flags, segments))
    }

    async fn write_flag(
        &self,
        before: Option<&Flag>,
        mut after: Flag,
        actor: &str,
        action: &str,
    ) -> Result<Flag, StoreError> {
        let current = before.map_or(0, |b| b.version);
        after.version = current + 1;
        after.updated_by = actor.to_string();
        after.updated_at = self.clock.now();
        let item = encode_flag(&after)?;
        let expect = if current == 0 { Expect::Absent } else { Expect::Version(current) };
        let before_json = before.map(serde_json::to_value).transpose().map_err(invalid_json)?;
        let entry = self.entry(
            actor,
            action,
            flag_subject(&after.key),
            before_json,
            Some(serde_json::to_value(&after).map_err(invalid_json)?),
        );
        match self.commit(Write::Put { item, expect }, entry).await {
            Ok(()) => Ok(after),
            Err(StoreError::VersionMismatch { .. }) if current == 0 => Err(StoreError::AlreadyExists),
            Err(StoreError::VersionMismatch { .. }) => {
                let now = self.get(&after.key).await?.map_or(0, |f| f.version);
                Err(StoreError::VersionMismatch { current: now })
            }
            Err(other) => Err(other),
        }
    }

    fn entry(
        &self,
        actor: &str,
        action: &str,
        subject: String,
        before: Option<Value>,
        after: Option<Value>,
    ) -> AuditEntry {
        let at = self.clock.now();
        AuditEntry {
            // From the entry's own time, as every capability's trail, so the merged audit log orders them alike.
            id: keel::audit::new_id(at),
            at,
            actor: actor.to_string(),
            action: action.to_string(),
            subject,
            before,
            after,
        }
    }

    /// The change, its two audit entries and a new revision, all or nothing. A transient failure is retried; when
    /// a retry finds the condition failed, the audit entry tells whether the earlier attempt had in fact landed.
    async fn commit(&self, change: Write, entry: AuditEntry) -> Result<(), StoreError> {
        let own_entry = Key::new(AUDIT, &entry.id);
        let mut writes = vec![change];
        for partition in [AUDIT.to_string(), audit_partition(&entry.subject)] {
            writes.push(Write::Put {
                item: encode(Key::new(partition, &entry.id), "entry", &entry, 1)?,
                expect: Expect::Absent,
            });
        }
        let mut meta = serde_json::Map::new();
        meta.insert("revision".into(), Value::String(entry.id.clone()));
        writes.push(Write::Put { item: Item::new(meta_key(), meta), expect: Expect::Any });
        let attempt = || async { self.table.transact(writes.clone()).await };
        let mut tried = 0;
        let result = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(10))
                    .with_max_times(3)
                    .with_jitter(),
            )
            .when(|e: &PortError| matches!(e, PortError::Unavailable(_)))
            .notify(|_, _| tried += 1)
            .await;
        match result {
            Ok(()) => {}
            Err(PortError::ConditionFailed { .. }) if tried > 0 && self.table.get(&own_entry).await?.is_some() => {}
            Err(PortError::ConditionFailed { .. }) => return Err(StoreError::VersionMismatch { current: 0 }),
            Err(other) => return Err(other.into()),
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// `entry` with `user` replaced where it names them (the actor; in the flag or segment before and after, where
/// [`Flag::pseudonymize_user`] replaces), or `None` when it does not name them.
pub(crate) fn pseudonymized_entry(entry: &AuditEntry, user: &str, pseudonym: &str) -> Option<AuditEntry> {
    let mut next = entry.clone();
    let mut replaced = usize::from(next.actor == user);
    if replaced > 0 {
        next.actor = pseudonym.to_string();
    }
    for change in [&mut next.before, &mut next.after].into_iter().flatten() {
        if let Ok(mut flag) = serde_json::from_value::<Flag>(change.clone()) {
            replaced += flag.pseudonymize_user(user, pseudonym);
            *change = serde_json::to_value(flag).unwrap_or_else(|_| change.clone());
        } else if let Ok(mut segment) = serde_json::from_value::<Segment>(change.clone()) {
            replaced += segment.pseudonymize_user(user, pseudonym);
            *change = serde_json::to_value(segment).unwrap_or_else(|_| change.clone());
        }
    }
    (replaced > 0).then_some(next)
}

fn same_content(a: &Flag, b: &Flag) -> bool {
    let strip =
        |f: &Flag| Flag { version: 0, updated_by: String::new(), updated_at: DateTime::UNIX_EPOCH, ..f.clone() };
    strip(a) == strip(b)
}

fn prefixed(prefix: &str, e: Invalid) -> Invalid {
    Invalid { pointer: format!("{prefix}{}", e.pointer), message: e.message }
}

fn invalid_json(e: serde_json::Error) -> StoreError {
    StoreError::Port(PortError::Invalid(format!("cannot encode: {e}")))
}

fn encode<T: Serialize>(key: Key, attr: &str, value: &T, version: u64) -> Result<Item, StoreError> {
    Ok(item(key, attr, serde_json::to_value(value).map_err(invalid_json)?, version))
}

/// A flag's item, holding its stored document.
fn encode_flag(flag: &Flag) -> Result<Item, StoreError> {
    // The cap is on the full document, which the API and the audit entries hold, not on the smaller stored one.
    if serde_json::to_vec(flag).map_or(0, |bytes| bytes.len()) > MAX_FLAG_BYTES {
        return Err(StoreError::Invalid(vec![Invalid {
            pointer: String::new(),
            message: format!("a flag document holds at most {MAX_FLAG_BYTES} bytes"),
        }]));
    }
    let json = flag.stored_document().map_err(invalid_json)?;
    Ok(item(Key::new(FLAGS, &flag.key), "flag", json, flag.version))
}

fn item(key: Key, attr: &str, json: Value, version: u64) -> Item {
    let mut attrs = serde_json::Map::new();
    attrs.insert(attr.to_string(), json);
    Item { key, attrs, version, expires_at: None }
}

fn decode<T: serde::de::DeserializeOwned>(item: &Item, attr: &str) -> Result<T, StoreError> {
    Ok(keel::table::value_of(item, attr)?)
}

/// What a cache serves: the snapshot (none before the first successful load) and whether it may be out of date.
#[derive(Clone)]
pub struct Served {
    pub snapshot: Option<Arc<Snapshot>>,
    /// The last check or load failed; this is the last good snapshot.
    pub stale: bool,
    pub loaded_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct CacheState {
    snapshot: Option<Arc<Snapshot>>,
    revision: Option<String>,
    checked_at: Option<DateTime<Utc>>,
    loaded_at: Option<DateTime<Utc>>,
    stale: bool,
    /// The store's count of this process's writes when the last check began.
    writes_seen: u64,
}

impl CacheState {
    /// Without a snapshot every request tries (it would fail closed otherwise); with one, once per interval, or at
    /// once after a write made in this process.
    fn due(&self, now: DateTime<Utc>, refresh: Duration, writes: u64) -> bool {
        self.snapshot.is_none() || writes != self.writes_seen || self.checked_at.is_none_or(|at| now - at >= refresh)
    }
}

/// The in-memory snapshot evaluation reads. At most once per `refresh` it reads the revision (one item) and
/// reloads everything only when it changed. When the store cannot be read it keeps serving the last good snapshot
/// and says so; with no snapshot at all, every answer fails closed.
pub struct FlagCache {
    store: FlagStore,
    refresh: Duration,
    state: Mutex<CacheState>,
    /// One refresh at a time; other requests keep serving what is there.
    refreshing: tokio::sync::Mutex<()>,
    /// Flags evaluated since the last flush, and when.
    seen: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// Evaluations per flag since the last flush: the `FlagEvaluations` metric, written with the flush.
    evaluations: Mutex<BTreeMap<String, u64>>,
    flushed_at: Mutex<Option<DateTime<Utc>>>,
}

/// How often a cache flushes when flags were last evaluated.
pub const USAGE_FLUSH: Duration = Duration::seconds(60);
/// The longest a cache may go without checking the store.
pub const MAX_REFRESH: Duration = Duration::seconds(30);

impl FlagCache {
    pub fn new(store: FlagStore, refresh: Duration) -> Self {
        Self {
            store,
            refresh: refresh.min(MAX_REFRESH),
            state: Mutex::new(CacheState::default()),
            refreshing: tokio::sync::Mutex::new(()),
            seen: Mutex::new(BTreeMap::new()),
            evaluations: Mutex::new(BTreeMap::new()),
            flushed_at: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &FlagStore {
        &self.store
    }

    pub async fn current(&self) -> Served {
        let now = self.store.clock.now();
        let writes = self.store.writes.load(Ordering::SeqCst);
        let (due, must_wait) = {
            let state = lock(&self.state);
            (state.due(now, self.refresh, writes), state.snapshot.is_none() || writes != state.writes_seen)
        };
        if due {
            // Without a snapshot there is nothing to serve, and after a write of this process the caller may be the
            // writer expecting to see it: wait for the refresh in progress. Otherwise serve what is there.
            let guard = if must_wait { Some(self.refreshing.lock().await) } else { self.refreshing.try_lock().ok() };
            if let Some(_guard) = guard {
                let writes = self.store.writes.load(Ordering::SeqCst);
                let still_due = lock(&self.state).due(now, self.refresh, writes);
                if still_due {
                    self.refresh(now, writes).await;
                }
            }
        }
        let state = lock(&self.state);
        Served { snapshot: state.snapshot.clone(), stale: state.stale, loaded_at: state.loaded_at }
    }

    /// `writes`: the write count read before the revision, so a write landing during the check is checked again.
    async fn refresh(&self, now: DateTime<Utc>, writes: u64) {
        let known = lock(&self.state).revision.clone();
        let have_snapshot = lock(&self.state).snapshot.is_some();
        let outcome = match self.store.revision().await {
            Ok(revision) if have_snapshot && revision == known => Ok(None),
            Ok(_) => {
                let previous = lock(&self.state).snapshot.clone().unwrap_or_default();
                self.store.reload(&previous).await.map(|(revision, snapshot, refreshed)| {
                    tracing::debug!(reused = refreshed.reused, compiled = refreshed.compiled, "flags reloaded");
                    Some((revision, snapshot))
                })
            }
            Err(e) => Err(StoreError::Port(e)),
        };
        {
            let mut state = lock(&self.state);
            state.checked_at = Some(now);
            state.writes_seen = writes;
            match outcome {
                Ok(None) => state.stale = false,
                Ok(Some((revision, snapshot))) => {
                    state.snapshot = Some(Arc::new(snapshot));
                    state.revision = revision;
                    state.loaded_at = Some(now);
                    state.stale = false;
                }
                Err(error) => {
                    tracing::warn!(%error, "flag store unreachable; serving the last good snapshot");
                    state.stale = true;
                }
            }
        }
        self.flush_usage(now).await;
    }

    /// Notes that these flags were evaluated now. In memory only; flushed with the next refresh.
    pub fn note_evaluated<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        let now = self.store.clock.now();
        let mut seen = lock(&self.seen);
        let mut evaluations = lock(&self.evaluations);
        for key in keys {
            match seen.get_mut(key) {
                Some(at) => *at = now,
                None => {
                    seen.insert(key.to_string(), now);
                }
            }
            match evaluations.get_mut(key) {
                Some(count) => *count += 1,
                None => {
                    evaluations.insert(key.to_string(), 1);
                }
            }
        }
    }

    async fn flush_usage(&self, now: DateTime<Utc>) {
        if lock(&self.flushed_at).is_some_and(|at| now - at < USAGE_FLUSH) {
            return;
        }
        // Counted in memory, written into the invocation that flushes (at most once a minute per process).
        for (key, count) in std::mem::take(&mut *lock(&self.evaluations)) {
            keel::metrics::count("FlagEvaluations", &[("Flag", key.as_str())], count as f64);
        }
        let pending = std::mem::take(&mut *lock(&self.seen));
        if pending.is_empty() {
            return;
        }
        match self.store.record_usage(&pending).await {
            Ok(()) => *lock(&self.flushed_at) = Some(now),
            Err(error) => {
                tracing::warn!(%error, "could not record flag usage; keeping it for the next flush");
                let mut seen = lock(&self.seen);
                for (key, at) in pending {
                    seen.entry(key).or_insert(at);
                }
            }
        }
    }
}

/// A poisoned lock only means another request panicked mid-update of plain data; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The flags' trail in the shape every capability's trail reads in: `flags.{action}` on `flag:{key}` or
/// `segment:{name}`, about no organization (flags are the deployment's). Entries are kept in the flags' own layout
/// (`AUDIT`), so a query for one organization finds none and one for an actor reads the whole trail.
#[async_trait::async_trait]
impl keel::audit::Trail for FlagStore {
    async fn entries(&self, query: &keel::audit::AuditQuery) -> Result<keel::audit::Found, PortError> {
        if matches!(query.scope, keel::audit::Scope::Org(_)) {
            return Ok((Vec::new(), None));
        }
        keel::audit::scan(self.table.as_ref(), AUDIT, query, |item| {
            let entry: AuditEntry = keel::table::value_of(item, "entry")?;
            Ok(keel::audit::AuditEntry {
                id: entry.id,
                at: entry.at,
                actor: entry.actor,
                org_id: None,
                action: format!("flags.{}", entry.action),
                resource: entry.subject,
                subject: None,
                reason: None,
                before: entry.before,
                after: entry.after,
            })
        })
        .await
    }
}

/// Removes overrides past their `expires_at` from every flag, each flag's change through the store (one audited
/// `expire_overrides` by `keel:cleanup`, a new revision), flags in key order so a run cut short resumes after the
/// last flag it finished.
pub struct OverridesCleanup(pub FlagStore);

/// Who the audit trail names for a cleanup's changes.
pub const CLEANER: &str = "keel:cleanup";

#[async_trait::async_trait]
impl keel::cleanup::Cleanup for OverridesCleanup {
    fn name(&self) -> &'static str {
        "flags.overrides"
    }

    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<keel::cleanup::Swept, PortError> {
        let expired = |o: &super::model::Override| o.expires_at.is_some_and(|end| end <= now);
        let port = |error: StoreError| match error {
            StoreError::Port(error) => error,
            other => PortError::Unavailable(format!("the flag store: {other}")),
        };
        let mut flags = self.0.flags().await.map_err(port)?;
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        for flag in flags.iter().filter(|f| cursor.as_ref().is_none_or(|c| f.key > *c)) {
            if stop() {
                return Ok(keel::cleanup::Swept::stopped(cursor_before(&flags, &flag.key)));
            }
            if !flag.overrides.iter().any(&expired) {
                continue;
            }
            // Counted on the version written (another run, or an admin, may have removed some meanwhile).
            let gone = std::sync::atomic::AtomicU64::new(0);
            let change = |f: &mut Flag| {
                let before = f.overrides.len();
                f.overrides.retain(|o| !expired(o));
                gone.store((before - f.overrides.len()) as u64, Ordering::SeqCst);
                Ok(())
            };
            match self.0.update(&flag.key, None, CLEANER, "expire_overrides", change).await {
                Ok(_) => *removed += gone.load(Ordering::SeqCst),
                // Archived or deleted since it was read: nothing to do.
                Err(StoreError::NotFound) => {}
                // The flag as stored no longer passes the store's checks (a prerequisite archived since): its
                // overrides wait for an admin's fix, and the other flags are cleaned.
                Err(StoreError::Invalid(problems)) => {
                    tracing::warn!(flag = %flag.key, ?problems, "expired overrides left on a flag that no longer validates");
                }
                Err(error) => return Err(port(error)),
            }
        }
        Ok(keel::cleanup::Swept::done())
    }
}

/// The key a cut-short run resumes after: the one before `key` (or the start).
fn cursor_before(flags: &[Flag], key: &str) -> String {
    flags.iter().map(|f| f.key.as_str()).take_while(|k| *k < key).last().unwrap_or_default().to_string()
}
