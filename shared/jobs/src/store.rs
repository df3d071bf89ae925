//! Where jobs live and how they move: every transition is one transaction on the jobs table that writes the record,
//! its lifecycle event (to the feed, and to the record's outbox) and the indexes the transition changes. After a
//! transaction the writer publishes the outbox and, when the job is queued, sends its message.
//!
//! Items (see `job` for the key formats): the record, its output, its owner pointer, its entry in the open-jobs
//! index (until it finishes), its wait entry (while it waits for a slot or its time), the organization's slot count
//! per type, the deduplication key it holds (until it finishes), its feed events, and once it finishes its entry in
//! the finished-jobs index (`retention` reads it to remove the job after its retention).
//!
//! Fairness: an organization holds at most `concurrency` slots per type, each slot a job that is queued (has a
//! message) or running. A job created beyond that waits in the organization's wait index and no message is sent;
//! a job that finishes hands its slot to the oldest due waiting job of its organization and type. So the queue
//! never holds more than `concurrency` messages of one organization and type, and another organization's jobs
//! are never behind a flood. The slot count is read and written with a version check in the same transaction as
//! the job that changes it, so concurrent creators and finishers cannot lose a slot or a waiter; a waiter left
//! behind by a crash between commit and send is admitted or re-sent by the sweeper.

use crate::breaker::{Breakers, target_of};
use crate::events::{self, FeedEvent};
use crate::gate::Gates;
use crate::job::{
    self, Attempt, CancelRequest, Job, JobError, Message, Outcome, Status, Waiting, dedup_key, job_key, open_key,
    output_key, owner_key, slots_key, wait_key, wait_partition, wait_sort_key,
};
use crate::registry::{Delivery, Executor, JobType, Registry};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Duration, Utc};
use keel::bus::EventBus;
use keel::clock::Clock;
use keel::port::PortError;
use keel::queue::{MessageAttrs, Queue, TRACE_HEADER_ATTRIBUTE};
use keel::table::{Expect, Item, Key, Query, Table, Write};
use serde_json::{Value, json};
use std::sync::Arc;
use ulid::Ulid;

/// Tries of a transition that keeps losing to concurrent writers of the same slot count or record; between
/// tries, a pause with full jitter up to `CONTENTION_PAUSE_MAX`, so a burst of creators spreads out. 50 tries of
/// 50 ms at most still lost, once, to sixteen creators and a worker on one slot count of a loaded machine: a client
/// then gets 409 for a create it did nothing wrong in, so the budget is about five seconds.
const MAX_CONTENTION: usize = 100;
const CONTENTION_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(100);

async fn pause(retry: usize) {
    let retry = u32::try_from(retry).unwrap_or(u32::MAX);
    let delay =
        crate::backoff::full_jitter(std::time::Duration::from_millis(1), CONTENTION_PAUSE_MAX, retry, &mut rand::rng());
    tokio::time::sleep(delay).await;
}
/// Largest page of `list`, and the backend pages one call may scan while filtering.
pub const MAX_LIST_LIMIT: usize = 100;
const MAX_SCAN_PAGES: usize = 10;
/// How long past its time a queued job, or past its lease a running one, may go unclaimed before the sweeper sends
/// its message again (the first may be lost: a crash between commit and send).
pub const RESEND_AFTER: Duration = Duration::minutes(2);
/// Tries of a transaction whose failure was transient (see `commit`).
const COMMIT_TRIES: usize = 4;
/// How old an event must be before the feed serves it (see `feed`).
pub const FEED_SETTLE: Duration = Duration::seconds(1);

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("no such job")]
    NotFound,
    /// The job is not in a state that allows this (`detail` says why).
    #[error("{0}")]
    Conflict(String),
    #[error("too many concurrent changes to the same job or slot count; retry")]
    Contended,
    #[error(transparent)]
    Backend(#[from] PortError),
}

/// For callers that speak the port's errors (an erasure): contention is worth a retry, a refusal is not.
impl From<JobsError> for PortError {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::Backend(error) => error,
            JobsError::Contended => PortError::Unavailable(JobsError::Contended.to_string()),
            other => PortError::Invalid(other.to_string()),
        }
    }
}

/// What `POST /v1/jobs` asks for, validated by the caller against the type.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub job_type: String,
    pub input: Value,
    pub run_at: Option<DateTime<Utc>>,
    pub dedup_key: Option<String>,
    pub session_id: Option<String>,
    pub skills: Vec<String>,
    pub metadata: serde_json::Map<String, Value>,
    pub trace_header: Option<String>,
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(Job),
    /// A pending or running job of the organization already holds the deduplication key.
    Existing(Job),
}

/// What a worker learns at a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum Beat {
    /// Keep going; the record is at this version, and the lease runs until then.
    Continue { version: u64, lease_until: DateTime<Utc> },
    /// Someone asked to cancel: stop, and record the attempt as cancelled (on the record as just read).
    Cancel(Box<Versioned>),
    /// Another attempt holds the job now: stop, and write nothing.
    Lost,
}

/// A job with the version of its record, as read or as just written.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub job: Job,
    pub version: u64,
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub outcome: Outcome,
    pub downstream_status: Option<u16>,
    pub error: Option<String>,
    pub output: Option<Value>,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub job_type: Option<String>,
    pub category: Option<String>,
    pub user_id: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
}

impl Filter {
    fn admits(&self, job: &Job) -> bool {
        self.status.is_none_or(|s| s == job.status)
            && self.job_type.as_ref().is_none_or(|t| *t == job.job_type)
            && self.category.as_ref().is_none_or(|c| *c == job.category)
            && self.user_id.as_ref().is_none_or(|u| *u == job.user_id)
    }
}

pub struct JobPage {
    pub jobs: Vec<Job>,
    /// The sort key to continue after.
    pub next: Option<String>,
}

/// What the sweeper did in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub open: usize,
    pub admitted: usize,
    pub resent: usize,
    pub removed: usize,
}

pub struct Jobs {
    table: Arc<dyn Table>,
    queue: Arc<dyn Queue>,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
}

/// The audit entry of a user's action on `job` (`jobs.job.{create,retry,cancel}` on `job:{id}`), written in the
/// action's transaction.
fn audit_entry(at: DateTime<Utc>, actor: &str, job: &Job, action: &str) -> keel::audit::AuditEntry {
    keel::audit::AuditEntry::new(at, actor, Some(&job.org_id), action, format!("job:{}", job.id)).about(&job.user_id)
}

fn put(item: Item, expect: Expect) -> Write {
    Write::Put { item, expect }
}

fn attrs(value: Value) -> keel::table::Attrs {
    match value {
        Value::Object(map) => map,
        _ => Default::default(),
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(job::MAX_ERROR_LEN).collect()
}

impl Jobs {
    pub fn new(table: Arc<dyn Table>, queue: Arc<dyn Queue>, bus: Arc<dyn EventBus>, clock: Arc<dyn Clock>) -> Self {
        Self { table, queue, bus, clock }
    }

    /// The table jobs live in (its audit trail is read through it).
    pub fn table(&self) -> &Arc<dyn Table> {
        &self.table
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A fresh ULID at the clock's time.
    fn ulid(&self) -> String {
        keel::clock::ulid_at(self.clock.now()).to_string()
    }

    /// Counts the job's next event and adds it to the outbox; the feed item to write with the transition.
    fn record_event(&self, job: &mut Job) -> Option<Write> {
        job.events += 1;
        let Some(event) = events::transition(job) else {
            job.events -= 1;
            return None;
        };
        let item = event.to_item(&self.ulid());
        job.outbox.push(event);
        Some(put(item, Expect::Absent))
    }

    /// Runs a transition's transaction, which writes `job` at `version`. A transient failure may be ambiguous (the
    /// backend committed and the reply was lost): the record then shows whether it committed (it is, at that
    /// version, exactly the record written); if it did not, the transaction is tried again, a few times. A failed
    /// condition is returned as it is, unless an earlier try had committed.
    async fn commit(&self, writes: Vec<Write>, job: &Job, version: u64) -> Result<(), PortError> {
        let mut failure = PortError::Unavailable("not tried".into());
        for retry in 0..COMMIT_TRIES {
            if retry > 0 {
                pause(retry).await;
            }
            match self.table.transact(self.fresh_positions(&writes)).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_condition_failed() && retry == 0 => return Err(error),
                Err(error) => {
                    if self.committed(job, version).await.unwrap_or(false) {
                        return Ok(());
                    }
                    if error.is_condition_failed() {
                        return Err(error);
                    }
                    failure = error;
                }
            }
        }
        Err(failure)
    }

    /// The writes with each feed event at a position taken now: the feed serves events a second old, so an event
    /// must commit within a second of taking its place, whatever reads and retries came before.
    fn fresh_positions(&self, writes: &[Write]) -> Vec<Write> {
        writes
            .iter()
            .map(|write| match write {
                Write::Put { item, expect } if item.key.pk.starts_with(events::FEED_PREFIX) => {
                    let mut item = item.clone();
                    item.key.sk = self.ulid();
                    Write::Put { item, expect: *expect }
                }
                other => other.clone(),
            })
            .collect()
    }

    async fn committed(&self, job: &Job, version: u64) -> Result<bool, PortError> {
        let stored = self.get(&job.org_id, &job.id).await?;
        Ok(stored.is_some_and(|stored| stored.version == version && stored.job == *job))
    }

    /// The organization's slot count of a type, with the version to write it back under.
    async fn slots(&self, org: &str, job_type: &str) -> Result<(u32, Option<u64>), PortError> {
        let item = self.table.get(&slots_key(org, job_type)).await?;
        Ok(match item {
            Some(item) => {
                let held = item.attrs.get("held").and_then(Value::as_u64).unwrap_or(0);
                (u32::try_from(held).unwrap_or(u32::MAX), Some(item.version))
            }
            None => (0, None),
        })
    }

    fn slots_write(org: &str, job_type: &str, held: u32, version: Option<u64>) -> Write {
        let item = Item {
            key: slots_key(org, job_type),
            attrs: attrs(json!({"held": held})),
            version: version.map_or(1, |v| v + 1),
            expires_at: None,
        };
        put(item, version.map_or(Expect::Absent, Expect::Version))
    }

    /// Records a new job: admitted (a slot and a message) when its time has come and the organization has a slot
    /// of its type free, waiting otherwise. `retrying` is the failed or cancelled job it retries.
    pub async fn create(
        &self,
        org: &str,
        user: &str,
        job_type: &JobType,
        new: NewJob,
        retrying: Option<Versioned>,
    ) -> Result<Created, JobsError> {
        let id = self.ulid();
        for retry in 0..MAX_CONTENTION {
            if retry > 0 {
                pause(retry).await;
            }
            let now = self.clock.now();
            let run_at = new.run_at.unwrap_or(now).max(now);
            let (held, slots_version) = self.slots(org, &job_type.name).await?;
            let due = run_at <= now;
            let admit = due && held < job_type.concurrency;
            let mut job = Job {
                id: id.clone(),
                job_type: job_type.name.clone(),
                category: job_type.category.clone(),
                org_id: org.to_string(),
                user_id: user.to_string(),
                session_id: new.session_id.clone(),
                skills: new.skills.clone(),
                metadata: new.metadata.clone(),
                status: Status::Pending,
                waiting: Some(match (admit, due) {
                    (true, _) => Waiting::Queued,
                    (false, false) => Waiting::Scheduled,
                    (false, true) => Waiting::Concurrency,
                }),
                input: new.input.clone(),
                error: None,
                dedup_key: new.dedup_key.clone(),
                run_at,
                created_at: now,
                updated_at: now,
                started_at: None,
                finished_at: None,
                duration_ms: None,
                attempts: Vec::new(),
                lease_until: None,
                fence: 0,
                cancel_requested: None,
                retry_of: retrying.as_ref().map(|old| old.job.id.clone()),
                retried_by: None,
                checkpoint: None,
                trace_id: new.trace_id.clone(),
                trace_header: new.trace_header.clone(),
                callback: None,
                events: 0,
                outbox: Vec::new(),
            };
            let mut writes: Vec<Write> = self.record_event(&mut job).into_iter().collect();
            writes.push(put(job.to_item(1), Expect::Absent));
            // The organization has a feed now: listed for the feed's cleanup.
            writes.push(events::FEED_ORGS.put(org));
            let action = if retrying.is_some() { "jobs.job.retry" } else { "jobs.job.create" };
            let created = json!({"type": job.job_type, "retry_of": job.retry_of});
            writes.extend(audit_entry(now, user, &job, action).with_change(None, Some(created)).writes()?);
            writes.push(put(Item::new(owner_key(&id), attrs(json!({"org_id": org}))), Expect::Absent));
            writes.push(put(Item::new(open_key(&id), attrs(json!({"org_id": org}))), Expect::Absent));
            // A waiter rewrites the count unchanged, so a finisher that read it before cannot miss the waiter.
            writes.push(Self::slots_write(org, &job_type.name, held + u32::from(admit), slots_version));
            if !admit {
                writes.push(put(Item::new(wait_key(&job), attrs(json!({"job_id": id}))), Expect::Absent));
            }
            if let Some(key) = &new.dedup_key {
                writes.push(put(Item::new(dedup_key(org, key), attrs(json!({"job_id": id}))), Expect::Absent));
            }
            if let Some(old) = &retrying {
                let mut retried = old.job.clone();
                retried.retried_by = Some(id.clone());
                retried.updated_at = now;
                writes.push(put(retried.to_item(old.version + 1), Expect::Version(old.version)));
            }
            match self.commit(writes, &job, 1).await {
                Ok(()) => {
                    self.after_commit(&mut job).await;
                    return Ok(Created::New(job));
                }
                Err(PortError::ConditionFailed { .. }) => {
                    // An earlier try committed after all (its answer was lost, and reading it back failed).
                    if let Some(created) = self.get(org, &id).await? {
                        let mut job = created.job;
                        self.after_commit(&mut job).await;
                        return Ok(Created::New(job));
                    }
                    if let Some(key) = &new.dedup_key
                        && let Some(holder) = self.dedup_holder(org, key).await?
                    {
                        return Ok(Created::Existing(holder));
                    }
                    if let Some(old) = &retrying
                        && self.get(org, &old.job.id).await?.is_none_or(|now| now.version != old.version)
                    {
                        return Err(JobsError::Conflict("the job changed meanwhile; read it again".into()));
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(JobsError::Contended)
    }

    /// The pending or running job holding a deduplication key.
    async fn dedup_holder(&self, org: &str, key: &str) -> Result<Option<Job>, PortError> {
        let Some(item) = self.table.get(&dedup_key(org, key)).await? else { return Ok(None) };
        let Some(id) = item.attrs.get("job_id").and_then(Value::as_str) else { return Ok(None) };
        Ok(self.get(org, id).await?.map(|found| found.job).filter(|job| !job.status.is_terminal()))
    }

    /// After a transaction: publish the outbox, then send the message of a queued job (saying what was published).
    /// Failures are logged, not returned: the record is committed, and the message's redelivery or the sweeper
    /// publishes and sends what is left.
    async fn after_commit(&self, job: &mut Job) {
        let published = self.publish(job).await;
        if job.status == Status::Pending && job.waiting == Some(Waiting::Queued) {
            let send = || self.send(job, published);
            let retries =
                ExponentialBuilder::default().with_min_delay(std::time::Duration::from_millis(20)).with_max_times(5);
            if let Err(error) = send.retry(retries).await {
                tracing::warn!(job_id = %job.id, %error, "job message not sent; the sweeper will send it");
            }
        }
    }

    /// Publishes the outbox; the sequence through which it is now published (events before it were already).
    pub async fn publish(&self, job: &mut Job) -> u32 {
        let before = job.events.saturating_sub(u32::try_from(job.outbox.len()).unwrap_or(u32::MAX));
        if job.outbox.is_empty() {
            return before;
        }
        let bus_events: Vec<_> = job.outbox.iter().map(|event| event.bus_event(job.trace_header.clone())).collect();
        match self.bus.put(&bus_events).await {
            Ok(()) => {
                job.outbox.clear();
                job.events
            }
            Err(error) => {
                tracing::warn!(job_id = %job.id, %error, "job events not published yet");
                before
            }
        }
    }

    pub async fn send(&self, job: &Job, published: u32) -> Result<(), PortError> {
        let message = Message { org: job.org_id.clone(), job: job.id.clone(), published };
        let body = serde_json::to_string(&message).map_err(|e| PortError::Invalid(e.to_string()))?;
        let mut attributes = MessageAttrs::new();
        if let Some(header) = &job.trace_header {
            attributes.insert(TRACE_HEADER_ATTRIBUTE.to_string(), header.clone());
        }
        self.queue.send(&body, &attributes).await.map(|_| ())
    }

    pub async fn get(&self, org: &str, id: &str) -> Result<Option<Versioned>, PortError> {
        let item = self.table.get(&job_key(org, id)).await?;
        Ok(item.and_then(|item| Job::from_item(&item).map(|job| Versioned { job, version: item.version })))
    }

    /// The organization a job belongs to (for platform admins, who may read any).
    pub async fn owner(&self, id: &str) -> Result<Option<String>, PortError> {
        let item = self.table.get(&owner_key(id)).await?;
        Ok(item.and_then(|item| item.attrs.get("org_id").and_then(Value::as_str).map(str::to_string)))
    }

    pub async fn output(&self, org: &str, id: &str) -> Result<Option<Value>, PortError> {
        let item = self.table.get(&output_key(org, id)).await?;
        Ok(item.and_then(|item| item.attrs.get("output").cloned()))
    }

    /// The organization's jobs, newest first, after the sort key `after`.
    pub async fn list(
        &self,
        org: &str,
        filter: &Filter,
        after: Option<String>,
        limit: usize,
    ) -> Result<JobPage, PortError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        // Ids are ULIDs: a creation range is a key range.
        let bound = |at: DateTime<Utc>, fill: char| {
            let prefix = keel::clock::first_ulid_at(at).to_string();
            format!("{}{}", &prefix[..10], fill.to_string().repeat(16))
        };
        let mut query = keel::table::Query::partition(job::job_partition(org));
        query.descending = true;
        query.sk_from = filter.created_from.map(|at| bound(at, '0'));
        query.sk_to = filter.created_to.map(|at| bound(at, 'Z'));
        query.after = after;
        query.limit = limit;
        let mut jobs = Vec::new();
        for _ in 0..MAX_SCAN_PAGES {
            let page = self.table.query(&query).await?;
            for item in &page.items {
                if let Some(job) = Job::from_item(item).filter(|job| filter.admits(job)) {
                    jobs.push(job);
                    if jobs.len() == limit {
                        return Ok(JobPage { jobs, next: Some(item.key.sk.clone()) });
                    }
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(JobPage { jobs, next: None }),
            }
        }
        Ok(JobPage { next: query.after.clone(), jobs })
    }

    /// Deletes a finished job: its record, output and owner pointer, in one transaction (its open, wait and
    /// deduplication entries left with its finish). `false` when there is no such job or it has not finished.
    pub async fn delete_finished(&self, org: &str, id: &str) -> Result<bool, PortError> {
        let Some(Versioned { job, version }) = self.get(org, id).await? else { return Ok(false) };
        if !job.status.is_terminal() {
            return Ok(false);
        }
        let writes = vec![
            Write::Delete { key: job_key(org, id), expect: Expect::Version(version) },
            Write::Delete { key: output_key(org, id), expect: Expect::Any },
            Write::Delete { key: owner_key(id), expect: Expect::Any },
        ];
        self.table.transact(writes).await?;
        Ok(true)
    }

    /// Deletes one event of `org`'s feed, by its position.
    pub async fn delete_feed_event(&self, org: &str, position: &str) -> Result<(), PortError> {
        let key = Key::new(events::feed_partition(org), position);
        self.table.transact(vec![Write::Delete { key, expect: Expect::Any }]).await
    }

    /// Cancels a pending job at once; asks a running one's worker to stop (it sees it at its next heartbeat).
    pub async fn cancel(&self, org: &str, id: &str, by: &str) -> Result<Job, JobsError> {
        for retry in 0..MAX_CONTENTION {
            if retry > 0 {
                pause(retry).await;
            }
            let Some(Versioned { mut job, version }) = self.get(org, id).await? else {
                return Err(JobsError::NotFound);
            };
            if job.status.is_terminal() {
                return Err(JobsError::Conflict(format!("the job has already finished ({:?})", job.status)));
            }
            let now = self.clock.now();
            if job.status == Status::Processing {
                if job.cancel_requested.is_some() {
                    return Ok(job);
                }
                job.cancel_requested = Some(CancelRequest { at: now, by: by.to_string() });
                job.updated_at = now;
                let mut writes = vec![put(job.to_item(version + 1), Expect::Version(version))];
                writes.extend(audit_entry(now, by, &job, "jobs.job.cancel").writes()?);
                match self.table.transact(writes).await {
                    Ok(()) => return Ok(job),
                    Err(PortError::ConditionFailed { .. }) => continue,
                    Err(error) => return Err(error.into()),
                }
            }
            job.cancel_requested = Some(CancelRequest { at: now, by: by.to_string() });
            let error = JobError { code: "cancelled".into(), message: format!("cancelled by {by} before it started") };
            let audited = audit_entry(now, by, &job, "jobs.job.cancel").writes()?;
            match self.finish_with(Versioned { job, version }, Status::Cancelled, Some(error), None, audited).await {
                Ok(done) => return Ok(done.job),
                Err(JobsError::Backend(PortError::ConditionFailed { .. })) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(JobsError::Contended)
    }

    /// Ends a job (completed, failed or cancelled) in one transaction: the record, its event, its output, the
    /// indexes it leaves, and its slot, handed to the organization's oldest due waiting job of the type (or
    /// given back). A condition failure (a concurrent change) is returned for the caller to read again and retry.
    pub async fn finish(
        &self,
        current: Versioned,
        status: Status,
        error: Option<JobError>,
        output: Option<Value>,
    ) -> Result<Versioned, JobsError> {
        self.finish_with(current, status, error, output, Vec::new()).await
    }

    /// [`Jobs::finish`], with more writes in its transaction (the audit entry of a cancel).
    async fn finish_with(
        &self,
        current: Versioned,
        status: Status,
        error: Option<JobError>,
        output: Option<Value>,
        also: Vec<Write>,
    ) -> Result<Versioned, JobsError> {
        let Versioned { mut job, version } = current;
        let held_slot = job.is_admitted();
        let was_waiting = job.status == Status::Pending && !held_slot;
        let now = self.clock.now();
        job.status = status;
        job.waiting = None;
        job.error = error;
        job.lease_until = None;
        job.updated_at = now;
        job.finished_at = Some(now);
        job.duration_ms = job.started_at.map(|started| (now - started).num_milliseconds());
        let mut writes: Vec<Write> = self.record_event(&mut job).into_iter().collect();
        writes.push(put(job.to_item(version + 1), Expect::Version(version)));
        writes.extend(also);
        // The finished-jobs index, for the cleanup past the retention (no expiry: the cleanup removes it).
        writes.push(put(Item::new(job::done_key(now, &job.id), attrs(json!({"org_id": job.org_id}))), Expect::Any));
        if let Some(output) = output {
            let item = Item {
                key: output_key(&job.org_id, &job.id),
                attrs: attrs(json!({"output": output})),
                version: 1,
                expires_at: job.finished_at.map(|at| at + job::RETENTION),
            };
            writes.push(put(item, Expect::Any));
        }
        if let Some(key) = &job.dedup_key {
            writes.push(Write::Delete { key: dedup_key(&job.org_id, key), expect: Expect::Any });
        }
        if was_waiting {
            writes.push(Write::Delete { key: wait_key(&job), expect: Expect::Any });
        }
        let mut promoted = None;
        if held_slot {
            // The count first: a creator that adds a waiter after this read also rewrites the count, so this
            // transaction fails and the next try finds the waiter.
            let (held, slots_version) = self.slots(&job.org_id, &job.job_type).await?;
            match self.next_waiting(&job.org_id, &job.job_type, now).await? {
                Some((waiter, wait_item)) => {
                    let mut next = waiter.job.clone();
                    next.waiting = Some(Waiting::Queued);
                    next.updated_at = now;
                    writes.push(put(next.to_item(waiter.version + 1), Expect::Version(waiter.version)));
                    writes.push(Write::Delete { key: wait_item, expect: Expect::Any });
                    promoted = Some(next);
                    writes.push(Self::slots_write(&job.org_id, &job.job_type, held, slots_version));
                }
                None => {
                    writes.push(Self::slots_write(&job.org_id, &job.job_type, held.saturating_sub(1), slots_version));
                }
            }
        }
        self.commit(writes, &job, version + 1).await?;
        let mut version = version + 1;
        self.after_commit(&mut job).await;
        if job.outbox.is_empty() {
            // The record of a finished job says its events are out, and the job leaves the open index, so a
            // redelivered message publishes nothing again. Left undone (a failure here), the next delivery or the
            // sweeper publishes them once more.
            match self.mark_published(&job, version).await {
                Ok(()) => version += 1,
                Err(error) => tracing::warn!(job_id = %job.id, %error, "published events not marked"),
            }
        }
        if let Some(next) = promoted.as_mut() {
            self.after_commit(next).await;
        }
        Ok(Versioned { job, version })
    }

    /// Publishes what a finished job's outbox still holds and marks it published; whether nothing is left.
    pub async fn flush_outbox(&self, current: Versioned) -> Result<bool, PortError> {
        let Versioned { mut job, version } = current;
        if job.outbox.is_empty() {
            return Ok(true);
        }
        self.publish(&mut job).await;
        if !job.outbox.is_empty() {
            return Ok(false);
        }
        match self.mark_published(&job, version).await {
            Ok(()) | Err(PortError::ConditionFailed { .. }) => Ok(true),
            Err(error) => Err(error),
        }
    }

    /// The write that closes a finished job: its record with the outbox empty, and its open-index entry gone.
    async fn mark_published(&self, job: &Job, version: u64) -> Result<(), PortError> {
        let writes = vec![
            put(job.to_item(version + 1), Expect::Version(version)),
            Write::Delete { key: open_key(&job.id), expect: Expect::Any },
        ];
        self.table.transact(writes).await
    }

    /// The organization's oldest waiting job of a type whose time has come, with its wait entry's key.
    async fn next_waiting(
        &self,
        org: &str,
        job_type: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(Versioned, Key)>, PortError> {
        let mut query = Query::partition(wait_partition(org, job_type));
        query.sk_to = Some(wait_sort_key(now, "~"));
        query.limit = 10;
        for _ in 0..MAX_SCAN_PAGES {
            let page = self.table.query(&query).await?;
            for item in page.items {
                let Some(id) = item.attrs.get("job_id").and_then(Value::as_str) else { continue };
                match self.get(org, id).await? {
                    Some(found) if found.job.status == Status::Pending && !found.job.is_admitted() => {
                        return Ok(Some((found, item.key)));
                    }
                    // A wait entry whose job moved on (a crash between its transactions): remove it.
                    _ => self.table.delete(&item.key, Expect::Any).await?,
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        Ok(None)
    }

    /// Starts an attempt: a new fencing token, a lease, the attempt in the record and its `started` event. The
    /// outbox drops what the message says was published.
    /// `callback`: the SHA-256 of the token a callback type's attempt hands its service.
    pub async fn claim(
        &self,
        current: Versioned,
        lease: Duration,
        published: u32,
        callback: Option<String>,
    ) -> Result<Versioned, JobsError> {
        let Versioned { mut job, version } = current;
        let now = self.clock.now();
        job.callback = callback;
        job.outbox.retain(|event| events::sequence(event) > published);
        job.fence += 1;
        let number = u32::try_from(job.attempts.len()).unwrap_or(u32::MAX).saturating_add(1);
        job.attempts.push(Attempt {
            number,
            fence: job.fence,
            started_at: now,
            ended_at: None,
            outcome: None,
            downstream_status: None,
            error: None,
        });
        job.status = Status::Processing;
        job.waiting = None;
        job.lease_until = Some(now + lease);
        job.started_at.get_or_insert(now);
        job.updated_at = now;
        let mut writes: Vec<Write> = self.record_event(&mut job).into_iter().collect();
        writes.push(put(job.to_item(version + 1), Expect::Version(version)));
        self.commit(writes, &job, version + 1).await?;
        // What is left unpublished stays in the outbox, for the attempt's next write to carry.
        self.publish(&mut job).await;
        Ok(Versioned { job, version: version + 1 })
    }

    /// The service of a callback type accepted the attempt (202): the job stays `processing`, leased until the
    /// service's first report is due; the worker lets go of it.
    pub async fn await_callback(
        &self,
        current: Versioned,
        fence: u64,
        report_within: Duration,
    ) -> Result<Versioned, JobsError> {
        let Versioned { mut job, version } = current;
        if job.fence != fence || job.status != Status::Processing {
            return Err(JobsError::Conflict("the attempt lost the job".into()));
        }
        let now = self.clock.now();
        job.lease_until = Some(now + report_within);
        job.updated_at = now;
        if let Some(attempt) = job.attempts.last_mut() {
            attempt.downstream_status = Some(202);
        }
        self.commit(vec![put(job.to_item(version + 1), Expect::Version(version))], &job, version + 1).await?;
        Ok(Versioned { job, version: version + 1 })
    }

    /// The job a callback token belongs to, while the attempt it was made for waits for its report; `None` for
    /// anything else (an unknown job, another attempt's token, a finished job), alike.
    pub async fn by_callback_token(&self, token: &str) -> Result<Option<Versioned>, PortError> {
        let Some((id, _)) = token.split_once('.') else { return Ok(None) };
        if Ulid::from_string(id).is_err() {
            return Ok(None);
        }
        let Some(org) = self.owner(id).await? else { return Ok(None) };
        let Some(found) = self.get(&org, id).await? else { return Ok(None) };
        let presented = crate::sign::sha256_hex(token.as_bytes());
        let matches = found.job.callback.as_deref().is_some_and(|stored| crate::sign::equal(stored, &presented));
        Ok((matches && found.job.awaiting_callback()).then_some(found))
    }

    /// A progress report of a callback job's service: the next report is due `report_within` from now.
    pub async fn report_progress(&self, current: Versioned, report_within: Duration) -> Result<Versioned, JobsError> {
        let Versioned { mut job, version } = current;
        let now = self.clock.now();
        job.lease_until = Some(now + report_within);
        job.updated_at = now;
        self.commit(vec![put(job.to_item(version + 1), Expect::Version(version))], &job, version + 1).await?;
        Ok(Versioned { job, version: version + 1 })
    }

    /// Reads the record for the worker holding `fence`: lost, cancelled, or go on (extending the lease when less
    /// than half of it is left).
    pub async fn heartbeat(&self, org: &str, id: &str, fence: u64, lease: Duration) -> Result<Beat, JobsError> {
        for retry in 0..MAX_CONTENTION {
            if retry > 0 {
                pause(retry).await;
            }
            let Some(Versioned { mut job, version }) = self.get(org, id).await? else { return Ok(Beat::Lost) };
            if job.fence != fence || job.status != Status::Processing {
                return Ok(Beat::Lost);
            }
            if job.cancel_requested.is_some() {
                return Ok(Beat::Cancel(Box::new(Versioned { job, version })));
            }
            let now = self.clock.now();
            if let Some(until) = job.lease_until.filter(|until| *until - now > lease / 2) {
                return Ok(Beat::Continue { version, lease_until: until });
            }
            job.lease_until = Some(now + lease);
            match self.table.put(job.to_item(version + 1), Expect::Version(version)).await {
                Ok(()) => return Ok(Beat::Continue { version: version + 1, lease_until: now + lease }),
                Err(PortError::ConditionFailed { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(JobsError::Contended)
    }

    /// Saves a built-in task's checkpoint in the record while `fence` still holds the job; `false` once it does not.
    pub async fn save_checkpoint(
        &self,
        org: &str,
        id: &str,
        fence: u64,
        checkpoint: &Value,
    ) -> Result<bool, JobsError> {
        let size = serde_json::to_vec(checkpoint).map_or(usize::MAX, |bytes| bytes.len());
        if size > crate::builtin::MAX_CHECKPOINT_BYTES {
            let limit = crate::builtin::MAX_CHECKPOINT_BYTES;
            return Err(PortError::Invalid(format!("a checkpoint of {size} bytes is over {limit}")).into());
        }
        for retry in 0..MAX_CONTENTION {
            if retry > 0 {
                pause(retry).await;
            }
            let Some(Versioned { mut job, version }) = self.get(org, id).await? else { return Ok(false) };
            if job.fence != fence || job.status != Status::Processing {
                return Ok(false);
            }
            job.checkpoint = Some(checkpoint.clone());
            job.updated_at = self.clock.now();
            match self.table.put(job.to_item(version + 1), Expect::Version(version)).await {
                Ok(()) => return Ok(true),
                Err(PortError::ConditionFailed { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(JobsError::Contended)
    }

    /// Records the end of the attempt holding `fence` on `current` (re-read on a concurrent change while the fence
    /// holds): finished, or back to pending until `retry_at`. `None` when the attempt lost the job meanwhile.
    pub async fn end_attempt(
        &self,
        mut current: Versioned,
        fence: u64,
        end: AttemptEnd,
        job_type: &JobType,
        retry_at: DateTime<Utc>,
    ) -> Result<Option<Versioned>, JobsError> {
        for retry in 0..MAX_CONTENTION {
            if retry > 0 {
                pause(retry).await;
            }
            if current.job.fence != fence || current.job.status != Status::Processing {
                return Ok(None);
            }
            let now = self.clock.now();
            let mut job = current.job.clone();
            if let Some(attempt) = job.attempts.last_mut() {
                attempt.ended_at = Some(now);
                attempt.outcome = Some(end.outcome);
                attempt.downstream_status = end.downstream_status;
                attempt.error = end.error.as_deref().map(truncated);
            }
            let counted = job.attempts.iter().filter(|a| a.outcome != Some(Outcome::Released)).count();
            let attempts_left = end.outcome == Outcome::Released || counted < job_type.max_attempts as usize;
            // A lost attempt of a type that runs at least once is run again; of one that runs at most once, never.
            let again = matches!(end.outcome, Outcome::Retriable | Outcome::Released)
                || (end.outcome == Outcome::Lost && job_type.delivery == Delivery::AtLeastOnce);
            let result = match end.outcome {
                Outcome::Succeeded => {
                    self.finish(
                        Versioned { job, version: current.version },
                        Status::Completed,
                        None,
                        end.output.clone(),
                    )
                    .await
                }
                _ if again && attempts_left && job.cancel_requested.is_none() => {
                    job.status = Status::Pending;
                    job.waiting = Some(Waiting::Queued);
                    job.lease_until = None;
                    job.run_at = retry_at;
                    job.updated_at = now;
                    let version = current.version;
                    let write = vec![put(job.to_item(version + 1), Expect::Version(version))];
                    match self.commit(write, &job, version + 1).await {
                        Ok(()) => Ok(Versioned { job, version: version + 1 }),
                        Err(error) => Err(error.into()),
                    }
                }
                _ if end.outcome == Outcome::Cancelled || job.cancel_requested.is_some() => {
                    let by = job.cancel_requested.as_ref().map_or("a worker", |c| c.by.as_str()).to_string();
                    let error = JobError { code: "cancelled".into(), message: format!("cancelled by {by}") };
                    self.finish(Versioned { job, version: current.version }, Status::Cancelled, Some(error), None).await
                }
                outcome => {
                    let code = match outcome {
                        Outcome::Lost => "attempt_lost",
                        Outcome::Retriable => "attempts_exhausted",
                        _ => "failed",
                    };
                    let message = truncated(end.error.as_deref().unwrap_or("the attempt failed"));
                    let error = JobError { code: code.into(), message };
                    self.finish(Versioned { job, version: current.version }, Status::Failed, Some(error), None).await
                }
            };
            match result {
                Ok(done) => return Ok(Some(done)),
                Err(JobsError::Backend(PortError::ConditionFailed { .. })) => {
                    let Some(mut again) = self.get(&current.job.org_id, &current.job.id).await? else {
                        return Ok(None);
                    };
                    again.job.forget_published(&current.job);
                    current = again;
                }
                Err(error) => return Err(error),
            }
        }
        Err(JobsError::Contended)
    }

    /// One pass over the open jobs: admits waiting jobs whose time has come while their organization has a slot,
    /// sends again the message of a queued job not claimed `RESEND_AFTER` past its time or of a running job
    /// `RESEND_AFTER` past its lease (the worker that held it died), and drops index entries of finished jobs.
    /// A queued job whose target's circuit is open, or whose type is paused, is left alone: the worker brings it
    /// back for the probe, or when the pause ends.
    pub async fn sweep(&self, registry: &Registry, breakers: &Breakers, gates: &Gates) -> Result<Swept, JobsError> {
        let mut swept = Swept::default();
        for shard in 0..job::OPEN_SHARDS {
            let mut query = Query::partition(job::open_partition(shard));
            query.limit = keel::table::MAX_QUERY_LIMIT;
            loop {
                let page = self.table.query(&query).await?;
                for item in &page.items {
                    swept.open += 1;
                    let org = item.attrs.get("org_id").and_then(Value::as_str).unwrap_or_default();
                    let Some(found) = self.get(org, &item.key.sk).await? else {
                        self.table.delete(&item.key, Expect::Any).await?;
                        swept.removed += 1;
                        continue;
                    };
                    // One job's failure does not stop the pass; the next pass tries it again.
                    if let Err(error) = self.sweep_one(found, item, registry, (breakers, gates), &mut swept).await {
                        tracing::warn!(job_id = %item.key.sk, %error, "job not swept");
                    }
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(swept)
    }

    async fn sweep_one(
        &self,
        found: Versioned,
        open_item: &Item,
        registry: &Registry,
        (breakers, gates): (&Breakers, &Gates),
        swept: &mut Swept,
    ) -> Result<(), JobsError> {
        let now = self.clock.now();
        let job = &found.job;
        let held_back = match registry.get(&job.job_type).map(|job_type| &job_type.executor) {
            _ if job.status != Status::Pending => false,
            Some(Executor { url: Some(url), .. }) if breakers.is_open(&target_of(url)).await? => true,
            _ => gates.paused(&job.org_id, &job.job_type).await,
        };
        match (job.status, job.waiting) {
            // A finished job whose events did not all go out (it had no message to bring them back).
            (status, _) if status.is_terminal() => {
                if found.job.outbox.is_empty() {
                    self.table.delete(&open_item.key, Expect::Any).await?;
                } else {
                    self.flush_outbox(found.clone()).await?;
                }
                swept.removed += 1;
            }
            (Status::Pending, Some(Waiting::Queued))
                if now - job.run_at.max(job.updated_at) > RESEND_AFTER && !held_back =>
            {
                self.send(job, 0).await?;
                swept.resent += 1;
            }
            (Status::Processing, _) if job.lease_until.is_none_or(|until| now - until > RESEND_AFTER) => {
                self.send(job, 0).await?;
                swept.resent += 1;
            }
            (Status::Pending, Some(Waiting::Scheduled | Waiting::Concurrency)) if job.run_at <= now => {
                let Some(job_type) = registry.get(&job.job_type) else { return Ok(()) };
                if self.admit(found.clone(), job_type).await? {
                    swept.admitted += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Admits a waiting job if its organization has a slot of its type free; whether it did.
    async fn admit(&self, current: Versioned, job_type: &JobType) -> Result<bool, JobsError> {
        let (held, slots_version) = self.slots(&current.job.org_id, &current.job.job_type).await?;
        if held >= job_type.concurrency {
            return Ok(false);
        }
        let Versioned { mut job, version } = current;
        let wait = wait_key(&job);
        job.waiting = Some(Waiting::Queued);
        job.updated_at = self.clock.now();
        let writes = vec![
            put(job.to_item(version + 1), Expect::Version(version)),
            Self::slots_write(&job.org_id, &job.job_type, held + 1, slots_version),
            Write::Delete { key: wait, expect: Expect::Any },
        ];
        match self.commit(writes, &job, version + 1).await {
            Ok(()) => {
                self.after_commit(&mut job).await;
                Ok(true)
            }
            // Someone else moved it or took the slot: the next pass looks again.
            Err(PortError::ConditionFailed { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Records a domain event in the organization's feed and publishes it. An id seen in the last 24 hours is not
    /// recorded again; if its publish had failed, it is published now. `true` when the event is new.
    pub async fn domain_event(
        &self,
        org: &str,
        id: Option<String>,
        event_type: &str,
        data: Value,
    ) -> Result<(FeedEvent, bool), JobsError> {
        let id = id.unwrap_or_else(|| self.ulid());
        let key = events::domain_id_key(org, &id);
        for retry in 0..MAX_CONTENTION {
            if retry > 0 {
                pause(retry).await;
            }
            if let Some(item) = self.table.get(&key).await? {
                let event: FeedEvent = serde_json::from_value(item.attrs.get("event").cloned().unwrap_or_default())
                    .map_err(|_| PortError::Invalid("a stored domain event is unreadable".into()))?;
                if item.attrs.get("published") != Some(&Value::Bool(true)) {
                    self.publish_domain(&event, &key, item.version).await?;
                }
                return Ok((event, false));
            }
            let now = self.clock.now();
            let event = FeedEvent {
                id: id.clone(),
                event_type: event_type.to_string(),
                org_id: org.to_string(),
                at: now,
                data: data.clone(),
            };
            let seen = Item {
                key: key.clone(),
                attrs: attrs(json!({"event": event, "published": false})),
                version: 1,
                expires_at: Some(now + events::DOMAIN_ID_WINDOW),
            };
            match self
                .table
                .transact(vec![
                    put(seen, Expect::Absent),
                    put(event.to_item(&self.ulid()), Expect::Absent),
                    events::FEED_ORGS.put(org),
                ])
                .await
            {
                Ok(()) => {
                    self.publish_domain(&event, &key, 1).await?;
                    return Ok((event, true));
                }
                Err(PortError::ConditionFailed { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(JobsError::Contended)
    }

    /// Publishes a recorded domain event and marks its id published. A failure is the caller's to report: the
    /// event is in the feed, and sending it again with the same id publishes it.
    async fn publish_domain(&self, event: &FeedEvent, key: &Key, version: u64) -> Result<(), PortError> {
        self.bus.put(&[event.bus_event(None)]).await?;
        let item = Item {
            key: key.clone(),
            attrs: attrs(json!({"event": event, "published": true})),
            version: version + 1,
            expires_at: Some(event.at + events::DOMAIN_ID_WINDOW),
        };
        // Published either way; unmarked (or marked by another publisher first), a repeat publishes it again.
        if let Err(error) = self.table.put(item, Expect::Version(version)).await
            && !error.is_condition_failed()
        {
            tracing::warn!(event_id = %event.id, %error, "published domain event not marked");
        }
        Ok(())
    }

    /// Every event the feed holds for `org` with its position, oldest first, including those too recent for `feed`
    /// to serve yet: what an export or an erasure reads.
    pub async fn feed_held(
        &self,
        org: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<(String, FeedEvent)>, Option<String>), PortError> {
        let mut query = Query::partition(events::feed_partition(org));
        query.after = after;
        query.limit = limit.clamp(1, keel::table::MAX_QUERY_LIMIT);
        let page = self.table.query(&query).await?;
        let events =
            page.items.iter().filter_map(|item| FeedEvent::from_item(item).map(|e| (item.key.sk.clone(), e))).collect();
        Ok((events, page.next))
    }

    /// The feed after `position` (exclusive), oldest first, up to events a second old: a transition commits
    /// within that of taking its position, so a reader that has passed a position never finds an event before it
    /// appear later.
    pub async fn feed(
        &self,
        org: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<(String, FeedEvent)>, Option<String>), PortError> {
        feed_page(self.table.as_ref(), self.clock.now(), org, after, limit).await
    }
}

/// A page of `org`'s feed after the position `after` (each event with its position), only events that have
/// settled ([`FEED_SETTLE`] before `now`): an event is written with its position at commit, so one written later
/// may still take a position before a fresh one, never before a settled one. Needs only the table (the stream of
/// the feed reads it so).
pub async fn feed_page(
    table: &dyn Table,
    now: DateTime<Utc>,
    org: &str,
    after: Option<String>,
    limit: usize,
) -> Result<(Vec<(String, FeedEvent)>, Option<String>), PortError> {
    let mut query = Query::partition(events::feed_partition(org));
    query.after = after;
    query.limit = limit.clamp(1, MAX_LIST_LIMIT);
    query.sk_to = Some(settled_position(now).to_string());
    let page = table.query(&query).await?;
    let events = page
        .items
        .iter()
        .filter_map(|item| FeedEvent::from_item(item).map(|event| (item.key.sk.clone(), event)))
        .collect();
    Ok((events, page.next))
}

/// The last position that has settled at `now`: every event written from now on takes a later one.
pub fn settled_position(now: DateTime<Utc>) -> Ulid {
    keel::clock::last_ulid_at(now - FEED_SETTLE)
}
