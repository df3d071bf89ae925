//! Erasure of a user (GDPR Art. 17), run as the built-in job `gdpr.erase`.
//!
//! Guarantee: an erasure that has started goes on until it completes, through retries, crashes and SIGKILL: the
//! user is suppressed first (no new personal data about them is accepted), then each domain's holder erases its
//! items in the data map's order (the directory first, so a last-admin blocker refuses before anything is erased;
//! export bundles before the jobs whose outputs name them), with a checkpoint after each holder, so an attempt
//! resumes at the holder the last one stopped in; holders are idempotent, so a second run changes nothing more.
//! Every processor type is then sent a signed erasure request through the job system, and their answers go into
//! the receipt: the counts per data-map entry, the confirmations, the suppression's hash and a SHA-256 digest of
//! the rest. Once it completes, no record of an erasure of the user names them (the pseudonym only).
//!
//! The gaps: an erasure whose job runs out of attempts (25, about two hours of retries: a backend down that long,
//! a processor that never answers) or meets a refusal (the user became a last admin since the request) fails, the
//! user suppressed and partly erased; asking again starts a new erasure that finishes the work. A holder killed
//! midway counts, on its rerun, only what it still finds, so the receipt's count for that entry can be lower than
//! what was erased (a holder that fails without being killed keeps its count, saved with the checkpoint).
//!
//! Items (`DIRECTORY_TABLE`): `ERASURE#{pseudonym}` / `{id}`, the request and, when done, its receipt (every
//! erasure of one user in one partition, so the last one to complete scrubs the others); `ERASUREID#{id}` /
//! `ERASURE`, which partition an erasure is in.

use crate::directory::{Directory, Standing};
use chrono::{DateTime, Utc};
use keel::config::{ConfigError, Env};
use keel::datamap::{DataSubject, ERASER, Erasure, ErasureSubject, Holder, Tally};
use keel::port::PortError;
use keel::resources::Resources;
use keel::suppression::Suppressions;
use keel::table::{Expect, Item, Key, Table, Write, item_of};
use keel_jobs::builtin::{Checkpoints, Task, TaskFailure};
use keel_jobs::registry::ErasureRequest;
use keel_jobs::{Created, Jobs, NewJob, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The built-in job type (and task) that erases a user.
pub const TASK: &str = "gdpr.erase";
/// The organization erasures and the processors' requests are filed under: nobody's, so no member sees them
/// through the jobs API and no erasure finds its own job among the user's.
pub const ERASURES_ORG: &str = "keel:gdpr-erasures";
const RECORD_SK: &str = "ERASURE";

fn record_partition(pseudonym: &str) -> String {
    format!("ERASURE#{pseudonym}")
}

fn pointer_key(id: &str) -> Key {
    Key::new(format!("ERASUREID#{id}"), RECORD_SK)
}

/// An erasure: the request while it runs, the receipt once it is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErasureRecord {
    pub id: String,
    /// The job carrying it out.
    pub job_id: String,
    /// The user, while the erasure runs; removed when it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// What stands for the user afterwards.
    pub pseudonym: String,
    /// Who asked: the user themselves (then, once done, their pseudonym) or a platform admin.
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub requested_at: DateTime<Utc>,
    /// The organizations the erasure looks in: the user's memberships and the request's.
    pub org_ids: Vec<String>,
    /// The organizations erased with the user, who was their only member.
    pub orgs_alone: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// The proof of an erasure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    pub erasure_id: String,
    /// The user's pseudonym.
    pub subject: String,
    pub requested_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    /// Items deleted or pseudonymized, per data-map entry.
    pub items: BTreeMap<String, u64>,
    pub orgs_erased: Vec<String>,
    pub processors: Vec<Confirmation>,
    /// The suppression's keyed hash of the user id.
    pub suppression: String,
    /// SHA-256 of this receipt's JSON without the digest, keys sorted.
    pub digest: String,
}

/// A processor's answer to an erasure request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Confirmation {
    pub job_type: String,
    pub status: ConfirmationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// The processor's answer (the job's output), with the user's id replaced by the pseudonym.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmationStatus {
    /// The processor answered that it erased.
    Confirmed,
    /// Every attempt failed, or the request was cancelled: the receipt says so, for an operator to follow up.
    Failed,
    /// The deployment has no URL for the processor: no request was sent.
    NotConfigured,
}

/// What an erasure would do, per data-map entry.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PlannedEntry {
    pub name: String,
    pub action: Erasure,
    pub items: u64,
}

/// A dry run's answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Plan {
    pub entries: Vec<PlannedEntry>,
    /// Organizations the user is the last admin of while others are members: the erasure is refused until
    /// another member is made admin.
    pub blockers: Vec<String>,
    /// Organizations erased with the user, who is their only member.
    pub orgs_erased: Vec<String>,
    /// The processor types an erasure asks to erase.
    pub processors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The user is the last admin of these organizations, which have other members.
    #[error("the user is the last admin of organizations with other members")]
    LastAdmin(Vec<String>),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The checkpoint: where the erasure is, and what it has counted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// Holders done.
    holders_done: usize,
    tally: Tally,
    /// Processor type → its request's job id (`None`: not configured).
    processors: BTreeMap<String, Option<String>>,
}

/// The erasure's job budget is spent or its input cannot be carried out: it fails (see the module's gaps).
fn failed(reason: impl Into<String>) -> TaskFailure {
    TaskFailure::Failed(reason.into())
}

/// Erasures: planning, starting, reading, and carrying them out.
pub struct Erasures {
    holders: Vec<Arc<dyn Holder>>,
    directory: Directory,
    table: Arc<dyn Table>,
    suppressions: Suppressions,
    jobs: Jobs,
    registry: Registry,
    clock: Arc<dyn keel::clock::Clock>,
}

impl Erasures {
    pub fn from_resources(env: &Env, resources: &dyn Resources, registry: Registry) -> Result<Self, ConfigError> {
        Ok(Self {
            holders: crate::holders(resources)?,
            directory: Directory::new(resources.table(crate::directory::TABLE_VAR)?, resources.clock()),
            table: resources.table(crate::directory::TABLE_VAR)?,
            suppressions: Suppressions::from_env(env, resources)?,
            jobs: crate::jobs(resources)?,
            registry,
            clock: resources.clock(),
        })
    }

    pub fn suppressions(&self) -> &Suppressions {
        &self.suppressions
    }

    async fn subject(&self, user: &str, request_orgs: &[String]) -> Result<(ErasureSubject, Standing), PortError> {
        let standing = self.directory.standing(user).await.map_err(PortError::from)?;
        let mut org_ids: BTreeSet<String> = request_orgs.iter().cloned().collect();
        org_ids.extend(standing.member_of.iter().cloned());
        // Where platform admins' exports of a user are filed.
        org_ids.insert(crate::export::ADMIN_EXPORTS_ORG.to_string());
        let subject = ErasureSubject {
            subject: DataSubject { user_id: user.to_string(), org_ids },
            pseudonym: self.suppressions.pseudonym(user),
            orgs_alone: standing.alone_in.iter().cloned().collect(),
        };
        Ok((subject, standing))
    }

    fn processors(&self) -> impl Iterator<Item = &keel_jobs::JobType> {
        self.registry.types().filter(|t| t.processor)
    }

    /// What erasing `user` would do, changing nothing.
    pub async fn plan(&self, user: &str, request_orgs: &[String]) -> Result<Plan, PortError> {
        let (subject, standing) = self.subject(user, request_orgs).await?;
        let mut tally = Tally::new();
        for holder in &self.holders {
            holder.erase(&subject, true, &mut tally).await?;
        }
        let entries = crate::datamap::data_map()
            .into_iter()
            .filter_map(|entry| {
                let items = tally.get(entry.name).copied()?;
                Some(PlannedEntry { name: entry.name.to_string(), action: entry.erasure, items })
            })
            .collect();
        Ok(Plan {
            entries,
            blockers: standing.last_admin_of,
            orgs_erased: standing.alone_in,
            processors: self.processors().map(|t| t.name.clone()).collect(),
        })
    }

    /// Starts erasing `user` (or answers the erasure of them already running): the record, then its job.
    pub async fn start(
        &self,
        user: &str,
        requested_by: &str,
        reason: Option<&str>,
        request_orgs: &[String],
        trace_header: Option<String>,
    ) -> Result<(ErasureRecord, bool), StartError> {
        let (subject, standing) = self.subject(user, request_orgs).await?;
        if !standing.last_admin_of.is_empty() {
            return Err(StartError::LastAdmin(standing.last_admin_of));
        }
        let job_type = self
            .registry
            .get(TASK)
            .ok_or_else(|| PortError::Invalid(format!("the job registry has no {TASK} type")))?;
        let id = ulid::Ulid::new().to_string();
        let new = NewJob {
            job_type: TASK.to_string(),
            input: json!({"erasure_id": id}),
            // One running erasure per user; the key names the pseudonym, not the user.
            dedup_key: Some(format!("{}{TASK}:{}", keel_jobs::RESERVED_DEDUP_PREFIX, subject.pseudonym)),
            trace_header,
            ..NewJob::default()
        };
        let mut record = ErasureRecord {
            id: id.clone(),
            job_id: String::new(),
            user_id: Some(user.to_string()),
            pseudonym: subject.pseudonym.clone(),
            requested_by: requested_by.to_string(),
            reason: reason.map(str::to_string),
            requested_at: self.clock.now(),
            org_ids: subject.subject.org_ids.iter().cloned().collect(),
            orgs_alone: standing.alone_in,
            receipt: None,
        };
        // The record first: a job never starts without one. A job id comes from the job; the record learns it
        // once the job exists (the task reads the record by the id in its input, so it does not need it).
        let pointer = Item::new(
            pointer_key(&id),
            json!({"pseudonym": record.pseudonym}).as_object().cloned().unwrap_or_default(),
        );
        self.table
            .transact(vec![
                Write::Put { item: self.record_item(&record, 1)?, expect: Expect::Absent },
                Write::Put { item: pointer, expect: Expect::Absent },
            ])
            .await?;
        match self.jobs.create(ERASURES_ORG, ERASER, job_type, new, None).await.map_err(PortError::from)? {
            Created::New(job) => {
                record.job_id = job.id.clone();
                self.learn_job_id(&id, &job.id).await?;
                Ok((record, true))
            }
            Created::Existing(job) => {
                let key = Key::new(record_partition(&record.pseudonym), &id);
                let deletes = vec![
                    Write::Delete { key, expect: Expect::Any },
                    Write::Delete { key: pointer_key(&id), expect: Expect::Any },
                ];
                self.table.transact(deletes).await?;
                let running = job.input["erasure_id"].as_str().unwrap_or_default();
                let existing = self
                    .get(running)
                    .await?
                    .ok_or_else(|| PortError::Invalid(format!("the running erasure job {} has no record", job.id)))?;
                Ok((existing.0, false))
            }
        }
    }

    fn record_item(&self, record: &ErasureRecord, version: u64) -> Result<Item, PortError> {
        item_of(Key::new(record_partition(&record.pseudonym), &record.id), "erasure", record, version)
    }

    /// Rewrites `record` over `version`.
    async fn put(&self, record: &ErasureRecord, version: u64) -> Result<(), PortError> {
        let item = self.record_item(record, version + 1)?;
        self.table.transact(vec![Write::Put { item, expect: Expect::Version(version) }]).await
    }

    /// Writes the job's id into the record, which the task may be rewriting at the same time.
    async fn learn_job_id(&self, id: &str, job_id: &str) -> Result<(), PortError> {
        for _ in 0..10 {
            let Some((mut record, version)) = self.get(id).await? else { return Ok(()) };
            if !record.job_id.is_empty() {
                return Ok(());
            }
            record.job_id = job_id.to_string();
            match self.put(&record, version).await {
                Err(error) if error.is_condition_failed() => continue,
                other => return other,
            }
        }
        Err(PortError::Unavailable("the erasure's record kept changing".into()))
    }

    /// The record and its version.
    pub async fn get(&self, id: &str) -> Result<Option<(ErasureRecord, u64)>, PortError> {
        let Some(pointer) = self.table.get(&pointer_key(id)).await? else { return Ok(None) };
        let Some(pseudonym) = pointer.attrs.get("pseudonym").and_then(Value::as_str) else { return Ok(None) };
        let Some(item) = self.table.get(&Key::new(record_partition(pseudonym), id)).await? else { return Ok(None) };
        Ok(Some((keel::table::value_of(&item, "erasure")?, item.version)))
    }

    /// Every erasure of the user behind `pseudonym`, with its version.
    async fn records_of(&self, pseudonym: &str) -> Result<Vec<(ErasureRecord, u64)>, PortError> {
        let mut query = keel::table::Query::partition(record_partition(pseudonym));
        query.limit = keel::table::MAX_QUERY_LIMIT;
        let mut all = Vec::new();
        loop {
            let page = self.table.query(&query).await?;
            for item in &page.items {
                all.push((keel::table::value_of(item, "erasure")?, item.version));
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// The processors' request jobs of erasure `id`, found by their input (not only the checkpoint's, which a
    /// crash between a request's creation and the checkpoint would miss).
    async fn requests_of(&self, id: &str) -> Result<Vec<keel_jobs::Job>, PortError> {
        let mut found = Vec::new();
        let all = keel_jobs::Filter::default();
        let mut after = None;
        loop {
            let page = self.jobs.list(ERASURES_ORG, &all, after, keel_jobs::store::MAX_LIST_LIMIT).await?;
            found.extend(page.jobs.into_iter().filter(|job| job.job_type != TASK && job.input["erasure_id"] == id));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(found),
            }
        }
    }

    /// The erasure's job, for its status.
    pub async fn job(&self, record: &ErasureRecord) -> Result<Option<keel_jobs::Job>, PortError> {
        Ok(self.jobs.get(ERASURES_ORG, &record.job_id).await?.map(|v| v.job))
    }

    async fn run(
        &self,
        id: &str,
        checkpoint: Option<&Value>,
        checkpoints: &dyn Checkpoints,
    ) -> Result<Value, TaskFailure> {
        let (mut record, version) = self.get(id).await?.ok_or_else(|| failed(format!("no erasure {id}")))?;
        if let Some(receipt) = &record.receipt {
            self.forget_requests(id).await?;
            return Ok(json!(receipt));
        }
        let user = record.user_id.clone().ok_or_else(|| failed("the erasure names no user"))?;
        let mut progress: Progress = match checkpoint {
            None => Progress::default(),
            // A checkpoint this code cannot read would restart the count from nothing: refuse instead.
            Some(saved) => serde_json::from_value(saved.clone())
                .map_err(|error| failed(format!("the erasure's checkpoint cannot be read: {error}")))?,
        };
        let subject = ErasureSubject {
            subject: DataSubject { user_id: user.clone(), org_ids: record.org_ids.iter().cloned().collect() },
            pseudonym: record.pseudonym.clone(),
            orgs_alone: record.orgs_alone.iter().cloned().collect(),
        };
        if progress.holders_done == 0 {
            // Checked when the erasure was asked for; a membership may have changed since. Nothing is suppressed
            // or erased yet, so refusing now leaves the user as they were.
            let standing = self.directory.standing(&user).await.map_err(PortError::from)?;
            if !standing.last_admin_of.is_empty() {
                return Err(failed(format!(
                    "the user is now the last admin of {}, which have other members: hand over, then erase again",
                    standing.last_admin_of.join(", ")
                )));
            }
            // Suppressed before anything is erased, and only then: a platform admin's lift during the erasure
            // stands.
            self.suppressions.suppress(&user, id, self.clock.now()).await?;
        }

        let save = |progress: &Progress| {
            let progress = json!(progress);
            async move {
                match checkpoints.save(&progress).await? {
                    true => Ok(()),
                    false => Err(TaskFailure::Retriable("another attempt holds the erasure".into())),
                }
            }
        };
        while progress.holders_done < self.holders.len() {
            let holder = &self.holders[progress.holders_done];
            let erased = holder.erase(&subject, false, &mut progress.tally).await;
            if erased.is_ok() {
                progress.holders_done += 1;
            }
            save(&progress).await?;
            erased?;
        }

        let requests = self.requests_of(id).await?;
        for processor in self.processors() {
            if progress.processors.contains_key(&processor.name) {
                continue;
            }
            let job_id = match (requests.iter().find(|r| r.job_type == processor.name), processor.unavailable()) {
                // A request made by an attempt that died before its checkpoint.
                (Some(made), _) => Some(made.id.clone()),
                (None, Some(_)) => None,
                (None, None) => {
                    let request = ErasureRequest { erasure_id: id.to_string(), user_id: user.clone() };
                    let new = NewJob {
                        job_type: processor.name.clone(),
                        input: json!(request),
                        dedup_key: Some(format!("{}erasure:{id}:{}", keel_jobs::RESERVED_DEDUP_PREFIX, processor.name)),
                        ..NewJob::default()
                    };
                    let created = self.jobs.create(ERASURES_ORG, ERASER, processor, new, None).await;
                    match created.map_err(PortError::from)? {
                        Created::New(job) | Created::Existing(job) => Some(job.id),
                    }
                }
            };
            progress.processors.insert(processor.name.clone(), job_id);
            save(&progress).await?;
        }
        let mut confirmations = Vec::new();
        let mut waiting = 0;
        for (job_type, job_id) in &progress.processors {
            let Some(job_id) = job_id else {
                confirmations.push(Confirmation {
                    job_type: job_type.clone(),
                    status: ConfirmationStatus::NotConfigured,
                    job_id: None,
                    at: None,
                    answer: None,
                    error: None,
                });
                continue;
            };
            let job = self.jobs.get(ERASURES_ORG, job_id).await?.map(|v| v.job);
            let Some(job) = job.filter(|job| job.status.is_terminal()) else {
                waiting += 1;
                continue;
            };
            let mut answer = self.jobs.output(ERASURES_ORG, job_id).await?;
            if let Some(answer) = answer.as_mut() {
                keel::datamap::pseudonymize_strings(answer, &user, &record.pseudonym);
            }
            let confirmed = job.status == keel_jobs::Status::Completed;
            confirmations.push(Confirmation {
                job_type: job_type.clone(),
                status: if confirmed { ConfirmationStatus::Confirmed } else { ConfirmationStatus::Failed },
                job_id: Some(job.id.clone()),
                at: job.finished_at,
                answer,
                error: job
                    .error
                    .as_ref()
                    .map(|e| keel::datamap::pseudonymize_text(&e.message, &user, &record.pseudonym)),
            });
        }
        if waiting > 0 {
            return Err(TaskFailure::Retriable(format!("waiting for {waiting} processors to confirm the erasure")));
        }
        // Requests of the user written while the erasure ran (asking again answers this one, but records the
        // request first): the directory's trail once more, which finds nothing else by now.
        if let Some(directory) = self.holders.first() {
            directory.erase(&subject, false, &mut progress.tally).await?;
        }

        // Those the user was still alone in when the directory's holder ran, which deleted them.
        let mut orgs_erased = Vec::new();
        for org in &record.orgs_alone {
            if self.directory.org(org).await.map_err(PortError::from)?.is_none() {
                orgs_erased.push(org.clone());
            }
        }
        let mut receipt = Receipt {
            erasure_id: id.to_string(),
            subject: record.pseudonym.clone(),
            requested_at: record.requested_at,
            completed_at: self.clock.now(),
            items: progress.tally.clone(),
            orgs_erased,
            processors: confirmations,
            suppression: self.suppressions.hash(&user),
            digest: String::new(),
        };
        receipt.digest = digest(&receipt)?;
        record.receipt = Some(receipt.clone());
        self.put(&scrubbed(record, &user), version).await?;
        // Earlier erasures of the user that failed keep their request: none names the user once this one is done.
        for (other, version) in self.records_of(&receipt.subject).await? {
            if other.user_id.is_some() && other.id != id {
                self.put(&scrubbed(other, &user), version).await?;
            }
        }
        self.forget_requests(id).await?;
        Ok(json!(receipt))
    }

    /// Deletes the processors' request jobs once their answers are in the receipt: their input names the user.
    async fn forget_requests(&self, id: &str) -> Result<(), PortError> {
        for request in self.requests_of(id).await? {
            self.jobs.delete_finished(ERASURES_ORG, &request.id).await?;
        }
        Ok(())
    }
}

/// `record` naming the user no more: no id, and the pseudonym where the requester or the reason named them.
fn scrubbed(mut record: ErasureRecord, user: &str) -> ErasureRecord {
    record.user_id = None;
    if record.requested_by == user {
        record.requested_by = record.pseudonym.clone();
    }
    record.reason = record.reason.map(|reason| keel::datamap::pseudonymize_text(&reason, user, &record.pseudonym));
    record
}

/// SHA-256 of the receipt without its digest, as JSON with keys sorted (serde_json's maps are sorted).
pub fn digest(receipt: &Receipt) -> Result<String, PortError> {
    let mut value = keel::datamap::to_record(receipt)?;
    if let Some(map) = value.as_object_mut() {
        map.remove("digest");
    }
    let canonical = serde_json::to_vec(&value).map_err(|e| PortError::Invalid(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

/// The task the worker runs for `gdpr.erase` jobs.
pub struct EraseTask(pub Erasures);

#[async_trait::async_trait]
impl Task for EraseTask {
    async fn run(
        &self,
        input: &Value,
        checkpoint: Option<&Value>,
        checkpoints: &dyn Checkpoints,
    ) -> Result<Value, TaskFailure> {
        let id =
            input["erasure_id"].as_str().ok_or_else(|| TaskFailure::Failed("the input names no erasure_id".into()))?;
        self.0.run(id, checkpoint, checkpoints).await
    }
}
