//! The finished jobs' cleanup: a job's record, output and owner pointer go [`RETENTION`] after it finished. Jobs
//! are filed by organization, which nothing lists, so each finish also writes an entry in a per-day index
//! (`JOBDONE#{day}#{shard}`, see `job::done_key`), and the cleanup reads the days whose jobs are all past their
//! retention, oldest first. Its cursor is the next day and shard to read, kept when it completes (a watermark),
//! so each run reads only the days that have come due since.
//!
//! The feed's cleanup: an organization's events go [`FEED_RETENTION`] after they were written. Feeds are by
//! organization too; each event's write lists its organization (`events::FEED_ORGS`), and the cleanup reads every
//! listed feed's events older than that, oldest first (`keel::cleanup::Listing::sweep`).

use crate::events::{FEED_ORGS, FEED_RETENTION, feed_partition};
use crate::job::{DONE_SHARDS, Job, RETENTION, done_partition, job_key, job_partition, output_key, owner_key};
use chrono::{DateTime, NaiveDate, Utc};
use keel::cleanup::Swept;
use keel::port::PortError;
use keel::table::{Expect, Query, Table, Write};
use std::sync::Arc;

/// The first day a finished job can have been indexed on: where the first run starts.
const FIRST_DAY: &str = "2026-01-01";

pub struct FinishedCleanup(pub Arc<dyn Table>);

fn day_of(text: &str) -> Result<NaiveDate, PortError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| PortError::Invalid(format!("`{text}` is not a day")))
}

impl FinishedCleanup {
    /// The job `id` of `org` as stored, expired or not.
    async fn job(&self, org: &str, id: &str) -> Result<Option<Job>, PortError> {
        let query = Query {
            sk_from: Some(id.to_string()),
            sk_to: Some(id.to_string()),
            expired: true,
            limit: 1,
            ..Query::partition(job_partition(org))
        };
        Ok(self.0.query(&query).await?.items.first().and_then(Job::from_item))
    }
}

#[async_trait::async_trait]
impl keel::cleanup::Cleanup for FinishedCleanup {
    fn name(&self) -> &'static str {
        "jobs.finished"
    }

    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<Swept, PortError> {
        let (mut day, mut shard) = match cursor.as_deref().and_then(|c| c.split_once('#')) {
            Some((day, shard)) => (day_of(day)?, shard.parse().unwrap_or(0)),
            None => (day_of(FIRST_DAY)?, 0),
        };
        // Every job finished on a day before this one is past its retention by now.
        let due = (now - RETENTION).date_naive();
        let at = |day: NaiveDate, shard: u32| format!("{}#{shard}", day.format("%Y-%m-%d"));
        while day < due {
            while shard < DONE_SHARDS {
                let mut query = Query::partition(done_partition(&day.format("%Y-%m-%d").to_string(), shard));
                query.limit = keel::table::MAX_QUERY_LIMIT;
                loop {
                    let page = self.0.query(&query).await?;
                    for entry in &page.items {
                        if stop() {
                            return Ok(Swept::stopped(at(day, shard)));
                        }
                        let id = entry.key.sk.as_str();
                        let org = entry.attrs.get("org_id").and_then(|o| o.as_str()).unwrap_or_default();
                        let mut writes = vec![Write::Delete { key: entry.key.clone(), expect: Expect::Any }];
                        // Gone already (an erasure deleted it): only its index entry is left to remove.
                        if self.job(org, id).await?.is_some_and(|job| job.status.is_terminal()) {
                            writes.push(Write::Delete { key: job_key(org, id), expect: Expect::Any });
                            writes.push(Write::Delete { key: output_key(org, id), expect: Expect::Any });
                            writes.push(Write::Delete { key: owner_key(id), expect: Expect::Any });
                            *removed += 1;
                        }
                        self.0.transact(writes).await?;
                    }
                    match page.next {
                        Some(next) => query.after = Some(next),
                        None => break,
                    }
                }
                shard += 1;
            }
            day = day.succ_opt().ok_or_else(|| PortError::Invalid("the end of the calendar".into()))?;
            shard = 0;
        }
        Ok(Swept { cursor: Some(at(day, 0)), complete: true })
    }
}

/// Deletes each listed organization's feed events older than [`FEED_RETENTION`].
pub struct FeedCleanup(pub Arc<dyn Table>);

#[async_trait::async_trait]
impl keel::cleanup::Cleanup for FeedCleanup {
    fn name(&self) -> &'static str {
        "jobs.feed"
    }

    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<Swept, PortError> {
        let last = keel::clock::last_ulid_at(now - FEED_RETENTION).to_string();
        // Positions are ULIDs of their writing: the old events are a key range.
        let select = |org: &str| Query {
            sk_to: Some(last.clone()),
            expired: true,
            limit: keel::table::MAX_QUERY_LIMIT,
            ..Query::partition(feed_partition(org))
        };
        FEED_ORGS.sweep(self.0.as_ref(), cursor, stop, removed, select, |_| true).await
    }
}
