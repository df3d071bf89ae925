//! The execution record of a job and its attempts, and the keys of every item the orchestration writes.

use crate::events::FeedEvent;
use chrono::{DateTime, Duration, Utc};
use keel::table::{Attrs, Item, Key};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest input, and largest output, kept (bytes of JSON); more is refused with 413 (input) or fails the job
/// (output).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Longest error text kept on an attempt or a job.
pub const MAX_ERROR_LEN: usize = 1024;
/// How long a finished job's record is kept.
pub const RETENTION: Duration = Duration::days(30);
/// Shards of the index of open jobs the sweeper reads.
pub const OPEN_SHARDS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = JobStatus)]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(Value::String(raw.to_string())).ok()
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// Why a pending job has not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// Its `run_at` is ahead.
    Scheduled,
    /// The organization has as many jobs of the type queued or running as the type allows.
    Concurrency,
    /// Queued for a worker (or waiting out a retry's backoff).
    Queued,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = AttemptOutcome)]
pub enum Outcome {
    Succeeded,
    /// Failed in a way worth retrying (a 429, a 5xx gateway answer, the network, a timeout).
    Retriable,
    /// Failed for good (another 4xx, an answer that is not JSON, an output too large).
    Failed,
    Cancelled,
    /// Its worker stopped holding the lease (died or was cut off) before recording an outcome.
    Lost,
    /// Its worker handed the job back mid-call because its host was shutting down (a type that runs at least once):
    /// it runs again and the attempt does not count against the type's maximum.
    Released,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// 1 for the first.
    pub number: u32,
    /// The fencing token of the attempt: only the worker holding it may record its outcome.
    pub fence: u64,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<Outcome>,
    /// The downstream service's HTTP status, when it answered.
    pub downstream_status: Option<u16>,
    pub error: Option<String>,
}

/// Who asked for a cancel, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelRequest {
    pub at: DateTime<Utc>,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// The execution record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    /// A ULID: jobs list newest first by id.
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub category: String,
    pub org_id: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub skills: Vec<String>,
    pub metadata: serde_json::Map<String, Value>,
    pub status: Status,
    /// Why a pending job has not started; absent otherwise.
    pub waiting: Option<Waiting>,
    pub input: Value,
    pub error: Option<JobError>,
    pub dedup_key: Option<String>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// From the first start to the end, in milliseconds.
    pub duration_ms: Option<i64>,
    pub attempts: Vec<Attempt>,
    /// Until when the worker of the current attempt holds the job; it extends this by heartbeat.
    pub lease_until: Option<DateTime<Utc>>,
    /// The fencing token of the current (or last) attempt; every attempt gets a larger one.
    pub fence: u64,
    pub cancel_requested: Option<CancelRequest>,
    /// The job this one retries, and the job that retried this one.
    pub retry_of: Option<String>,
    pub retried_by: Option<String>,
    /// A built-in task's progress, saved as it goes: the next attempt resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Value>,
    pub trace_id: Option<String>,
    #[serde(skip)]
    pub trace_header: Option<String>,
    /// SHA-256 (hex) of the current attempt's callback token, for a callback type: the token itself is only ever
    /// in the request to the service.
    #[serde(skip)]
    pub callback: Option<String>,
    /// Lifecycle events written so far (each one's id is `{job id}.{sequence}`), and the outbox: those not yet
    /// known to be published, kept in the record so an event is written with its transition.
    #[serde(skip)]
    pub events: u32,
    #[serde(skip)]
    pub outbox: Vec<FeedEvent>,
}

/// What the record stores besides what the API shows.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    job: Job,
    trace_header: Option<String>,
    #[serde(default)]
    callback: Option<String>,
    events: u32,
    outbox: Vec<FeedEvent>,
}

impl Job {
    pub fn key(&self) -> Key {
        job_key(&self.org_id, &self.id)
    }

    pub fn is_admitted(&self) -> bool {
        self.status == Status::Processing || self.waiting == Some(Waiting::Queued)
    }

    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// Drops from this record's outbox (as just read) the events `known`, this process's copy of the same job, has
    /// published since that record was written: re-reading after a concurrent change must not publish them twice.
    pub fn forget_published(&mut self, known: &Job) {
        self.outbox.retain(|event| {
            crate::events::sequence(event) > known.events || known.outbox.iter().any(|kept| kept.id == event.id)
        });
    }

    /// A running callback job whose service accepted the attempt (202) and has not reported its end.
    pub fn awaiting_callback(&self) -> bool {
        self.status == Status::Processing
            && self.callback.is_some()
            && self.current_attempt().is_some_and(|a| a.downstream_status == Some(202) && a.outcome.is_none())
    }

    /// The item to store with version `version`. Finished jobs expire after [`RETENTION`].
    pub fn to_item(&self, version: u64) -> Item {
        let stored = Stored {
            job: self.clone(),
            trace_header: self.trace_header.clone(),
            callback: self.callback.clone(),
            events: self.events,
            outbox: self.outbox.clone(),
        };
        let attrs = match serde_json::to_value(stored) {
            Ok(Value::Object(map)) => map,
            _ => Attrs::new(),
        };
        let expires_at = self.finished_at.map(|at| at + RETENTION);
        Item { key: self.key(), attrs, version, expires_at }
    }

    pub fn from_item(item: &Item) -> Option<Self> {
        let stored: Stored = serde_json::from_value(Value::Object(item.attrs.clone())).ok()?;
        let mut job = stored.job;
        job.trace_header = stored.trace_header;
        job.callback = stored.callback;
        job.events = stored.events;
        job.outbox = stored.outbox;
        Some(job)
    }
}

/// An organization id as a platform admin may name one: 1 to 256 printable characters.
pub fn valid_org(org: &str) -> bool {
    (1..=256).contains(&org.chars().count()) && !org.chars().any(char::is_control)
}

/// The shard of the open-jobs index an id falls in.
pub fn open_shard(id: &str) -> u32 {
    id.bytes().fold(0u32, |hash, b| hash.wrapping_mul(31).wrapping_add(u32::from(b))) % OPEN_SHARDS
}

/// `JOB#{org}` / `{id}`: the record. One partition per organization, so its jobs list newest first.
pub fn job_partition(org: &str) -> String {
    format!("JOB#{org}")
}

pub fn job_key(org: &str, id: &str) -> Key {
    Key::new(job_partition(org), id)
}

/// `JOBOUT#{org}` / `{id}`: the output, apart from the record so input and output may both be 256 KB.
pub fn output_key(org: &str, id: &str) -> Key {
    Key::new(format!("JOBOUT#{org}"), id)
}

/// Shards of the finished-jobs index: one day's finishes spread over this many partitions.
pub const DONE_SHARDS: u32 = 8;

/// `JOBDONE#{day}#{shard}` / `{id}`: a job finished on `day` (UTC, `yyyy-mm-dd`), for the cleanup that removes
/// finished jobs past their retention (their own keys are by organization, which nothing lists).
pub fn done_key(finished: DateTime<Utc>, id: &str) -> Key {
    let shard = u32::from(id.bytes().last().unwrap_or(0)) % DONE_SHARDS;
    Key::new(done_partition(&finished.format("%Y-%m-%d").to_string(), shard), id)
}

pub fn done_partition(day: &str, shard: u32) -> String {
    format!("JOBDONE#{day}#{shard}")
}

/// `JOBID#{id}` / `#`: which organization a job belongs to, for platform admins, who read any.
pub fn owner_key(id: &str) -> Key {
    Key::new(format!("JOBID#{id}"), "#")
}

/// `JOBOPEN#{shard}` / `{id}`: every job not yet finished, for the sweeper.
pub fn open_key(id: &str) -> Key {
    Key::new(open_partition(open_shard(id)), id)
}

pub fn open_partition(shard: u32) -> String {
    format!("JOBOPEN#{shard}")
}

/// `JOBSLOTS#{org}` / `{type}`: how many of the organization's jobs of the type are queued or running.
pub fn slots_key(org: &str, job_type: &str) -> Key {
    Key::new(format!("JOBSLOTS#{org}"), job_type)
}

/// `JOBWAIT#{org}#{type}` / `{run_at}#{id}`: jobs waiting for a slot or their time, oldest first.
pub fn wait_partition(org: &str, job_type: &str) -> String {
    format!("JOBWAIT#{org}#{job_type}")
}

pub fn wait_key(job: &Job) -> Key {
    Key::new(wait_partition(&job.org_id, &job.job_type), wait_sort_key(job.run_at, &job.id))
}

/// Sorts by time as bytes: fixed-width RFC 3339 in UTC with milliseconds.
pub fn wait_sort_key(at: DateTime<Utc>, id: &str) -> String {
    format!("{}#{id}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// `JOBDEDUP#{org}` / `{dedup key}`: the job that holds a deduplication key while it is pending or running.
pub fn dedup_key(org: &str, key: &str) -> Key {
    Key::new(format!("JOBDEDUP#{org}"), key)
}

/// The queue message: which job to run, and through which event sequence the sender published its outbox (it
/// publishes before it sends, so the worker need not publish those again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub org: String,
    pub job: String,
    pub published: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> Job {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        Job {
            id: "01JOB".into(),
            job_type: "notify.email".into(),
            category: "notifications".into(),
            org_id: "o1".into(),
            user_id: "u1".into(),
            session_id: None,
            skills: vec![],
            metadata: Default::default(),
            status: Status::Pending,
            waiting: Some(Waiting::Queued),
            input: serde_json::json!({"to": "a@example.com"}),
            error: None,
            dedup_key: None,
            run_at: at,
            created_at: at,
            updated_at: at,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            attempts: vec![],
            lease_until: None,
            fence: 0,
            cancel_requested: None,
            retry_of: None,
            retried_by: None,
            checkpoint: None,
            trace_id: None,
            trace_header: Some("Root=1-5759e988-bd862e3fe1be46a994272793".into()),
            callback: None,
            events: 1,
            outbox: vec![],
        }
    }

    #[test]
    fn a_record_round_trips_with_its_outbox_and_expires_only_once_finished() {
        let job = job();
        let item = job.to_item(3);
        assert_eq!((item.key.clone(), item.version, item.expires_at), (job_key("o1", "01JOB"), 3, None));
        assert_eq!(Job::from_item(&item), Some(job.clone()));
        let mut done = job;
        done.finished_at = Some(done.created_at);
        assert_eq!(done.to_item(4).expires_at, Some(done.created_at + RETENTION));
        let shown = serde_json::to_value(&done).unwrap();
        for internal in ["events", "outbox", "trace_header", "callback"] {
            assert!(shown.get(internal).is_none(), "{internal}: {shown}");
        }
        assert_eq!(shown["type"], "notify.email");
    }

    #[test]
    fn waiting_jobs_sort_by_time_then_id_and_shards_stay_in_range() {
        let early = wait_sort_key(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(), "B");
        let late = wait_sort_key(Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap(), "A");
        assert!(early < late, "{early} {late}");
        assert_eq!(early, "2026-01-02T03:04:05.000Z#B");
        assert!((0..1000).all(|i| open_shard(&format!("id{i}")) < OPEN_SHARDS));
    }
}
