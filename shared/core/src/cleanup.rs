//! Scheduled cleanups: retention that Keel enforces itself. A table's expiry hides an expired item from every read
//! but does not remove it (DynamoDB's TTL deletes within days, the embedded store and the emulator never), and some
//! retention is not an item's expiry at all (an override past its end, a bundle in a bucket). Each domain implements
//! its cleanups beside its key formats; the maintenance function runs one per schedule.
//!
//! Guarantee: a cleanup removes only what has expired at the run's time; it is idempotent (a second run finds
//! nothing), works page by page, stops when asked to (the invocation's time is running out) and leaves a cursor
//! the next run resumes from. Every run is recorded (`CLEANUP#{name}` / `{run id}`: what it removed, whether it
//! finished, its error), kept 30 days.

use crate::port::PortError;
use crate::table::{Expect, Key, Query, Table, Write, item_of, value_of};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The table run records and cursors live in: the GDPR domain's (retention is its storage-limitation principle).
pub const TABLE_VAR: &str = "DIRECTORY_TABLE";
/// The items of this module: declared once, in the GDPR domain's table.
pub const DATA_MAP: &[crate::datamap::Entry] = &[crate::datamap::Entry {
    name: "maintenance.cleanup",
    table: TABLE_VAR,
    pk: "CLEANUP#{name}",
    sk: "{id}",
    description: "A scheduled cleanup's runs (what each removed, whether it finished, its error) and its cursor.",
    subject: crate::datamap::Subject::Nobody,
    personal_data: &[],
    purpose: "Showing that retention is enforced (GDPR Art. 5(1)(e) and 5(2)).",
    recipients: &[],
    retention: crate::datamap::Retention::Expires { seconds: 30 * 24 * 3600 },
    export: crate::datamap::Export::Exclude { reason: "holds nothing about a person" },
    erasure: crate::datamap::Erasure::Keep { exemption: "holds nothing about a person" },
}];

/// How long a run record is kept.
pub const RUN_RETENTION: Duration = Duration::days(30);
const CURSOR_SK: &str = "CURSOR";

/// Where a pass of a cleanup got to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Where the next run starts (`None`: from the beginning).
    pub cursor: Option<String>,
    /// Whether nothing that had expired is left; a cleanup may still keep a cursor (a watermark below which all
    /// is done).
    pub complete: bool,
}

impl Swept {
    /// Nothing left, and the next run starts from the beginning.
    pub fn done() -> Self {
        Self { cursor: None, complete: true }
    }

    /// Stopped early (asked to, or by a busy item): the next run resumes at `cursor`.
    pub fn stopped(cursor: String) -> Self {
        Self { cursor: Some(cursor), complete: false }
    }
}

/// One kind of cleanup.
#[async_trait::async_trait]
pub trait Cleanup: Send + Sync {
    /// The schedule's name for it (`webhooks.deliveries`), unique.
    fn name(&self) -> &'static str;
    /// Removes what has expired at `now`, from `cursor` (where the last run left off), until nothing is left or
    /// `stop()` answers true (checked between items). `removed` counts what this pass removed even when it fails
    /// midway, so a failed run still reports it.
    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<Swept, PortError>;
}

/// A listing of the partitions a cleanup must visit, for items filed by something nothing else lists (an
/// organization): `{prefix}#{shard}` / `{name}`, written (`Expect::Any`) in the transaction that first fills the
/// partition, shards so one listing is not one hot partition.
#[derive(Debug, Clone, Copy)]
pub struct Listing {
    pub prefix: &'static str,
    pub shards: u32,
}

/// Deletes per transaction when a cleanup removes a batch.
pub const DELETE_BATCH: usize = 25;

impl Listing {
    fn partition(&self, shard: u32) -> String {
        format!("{}#{shard}", self.prefix)
    }

    /// The key that lists `name`.
    pub fn key(&self, name: &str) -> Key {
        let hash = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        Key::new(self.partition(hash % self.shards), name)
    }

    /// The put that lists `name`, for the transaction of the write that fills its partition.
    pub fn put(&self, name: &str) -> Write {
        Write::Put { item: crate::table::Item::new(self.key(name), Default::default()), expect: Expect::Any }
    }

    /// For every listed name from `cursor` (`{shard}/{name}`), reads the query `select(name)` gives, page by page,
    /// and deletes the items `doomed` keeps, [`DELETE_BATCH`] a transaction: the run of a cleanup of listed
    /// partitions. Stops (with the cursor of the name it was at) when `stop()` says so.
    pub async fn sweep(
        &self,
        table: &dyn Table,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
        select: impl Fn(&str) -> Query + Send + Sync,
        doomed: impl Fn(&crate::table::Item) -> bool + Send + Sync,
    ) -> Result<Swept, PortError> {
        let (from_shard, from_name) = match cursor.as_deref().and_then(|c| c.split_once('/')) {
            Some((shard, name)) => (shard.parse().unwrap_or(0), Some(name.to_string())),
            None => (0, None),
        };
        for shard in from_shard..self.shards {
            let mut names = Query::partition(self.partition(shard));
            names.limit = crate::table::MAX_QUERY_LIMIT;
            if shard == from_shard {
                // Resumes at that name (inclusive): it was not finished.
                names.sk_from = from_name.clone();
            }
            loop {
                let page = table.query(&names).await?;
                for listed in &page.items {
                    let name = listed.key.sk.as_str();
                    let mut items = select(name);
                    loop {
                        if stop() {
                            return Ok(Swept::stopped(format!("{shard}/{name}")));
                        }
                        let read = table.query(&items).await?;
                        let gone: Vec<&crate::table::Item> = read.items.iter().filter(|item| doomed(item)).collect();
                        for batch in gone.chunks(DELETE_BATCH) {
                            let deletes = batch
                                .iter()
                                .map(|item| Write::Delete { key: item.key.clone(), expect: Expect::Any })
                                .collect();
                            table.transact(deletes).await?;
                            *removed += batch.len() as u64;
                        }
                        match read.next {
                            Some(next) => items.after = Some(next),
                            None => break,
                        }
                    }
                }
                match page.next {
                    Some(next) => names.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(Swept::done())
    }
}

/// A cleanup's run, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CleanupRun {
    pub id: String,
    pub cleanup: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Items (or objects) removed.
    pub removed: u64,
    /// Whether it got to the end; `false` when it stopped for time (the next run resumes) or failed.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Run records and cursors.
#[derive(Clone)]
pub struct Runs(pub Arc<dyn Table>);

fn partition(name: &str) -> String {
    format!("CLEANUP#{name}")
}

impl Runs {
    pub async fn cursor(&self, name: &str) -> Result<Option<String>, PortError> {
        let Some(item) = self.0.get(&Key::new(partition(name), CURSOR_SK)).await? else { return Ok(None) };
        value_of(&item, "cursor")
    }

    /// Records `run` and the cursor the next run starts from, in one transaction.
    pub async fn record(&self, run: &CleanupRun, cursor: Option<&str>) -> Result<(), PortError> {
        let mut item = item_of(Key::new(partition(&run.cleanup), &run.id), "run", run, 1)?;
        item.expires_at = Some(run.finished_at + RUN_RETENTION);
        let cursor = item_of(Key::new(partition(&run.cleanup), CURSOR_SK), "cursor", &cursor, 1)?;
        let writes =
            vec![Write::Put { item, expect: Expect::Absent }, Write::Put { item: cursor, expect: Expect::Any }];
        self.0.transact(writes).await
    }

    /// The latest runs of `name`, newest first.
    pub async fn latest(&self, name: &str, limit: usize) -> Result<Vec<CleanupRun>, PortError> {
        let mut query = Query::partition(partition(name));
        query.descending = true;
        // Run ids are ULIDs; the cursor's sort key (`CURSOR`) is above the largest one.
        query.sk_to = Some("7ZZZZZZZZZZZZZZZZZZZZZZZZZ".to_string());
        query.limit = limit.clamp(1, crate::table::MAX_QUERY_LIMIT);
        let page = self.0.query(&query).await?;
        page.items.iter().map(|item| value_of(item, "run")).collect()
    }

    /// Runs `cleanup` once from its saved cursor, at `now`, until it is done or `stop()` says so, and records the
    /// run. The run's record is the answer; a failure is recorded too, and its error is the run's `error`.
    pub async fn run(
        &self,
        cleanup: &dyn Cleanup,
        now: DateTime<Utc>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        clock: &dyn crate::clock::Clock,
    ) -> Result<CleanupRun, PortError> {
        let cursor = self.cursor(cleanup.name()).await?;
        let mut removed = 0;
        let outcome = cleanup.run(now, cursor.clone(), stop, &mut removed).await;
        let finished_at = clock.now();
        let (complete, error, next) = match &outcome {
            Ok(swept) => (swept.complete, None, swept.cursor.clone()),
            // The next run starts where this one did: a cleanup is idempotent, so what it removed stays removed.
            Err(error) => (false, Some(error.to_string()), cursor),
        };
        let run = CleanupRun {
            id: crate::clock::ulid_at(now).to_string(),
            cleanup: cleanup.name().to_string(),
            started_at: now,
            finished_at,
            removed,
            complete,
            error,
        };
        self.record(&run, next.as_deref()).await?;
        Ok(run)
    }
}
