//! Erasure of a user (GDPR Art. 17), run as the built-in job `gdpr.erase`.
//!
//! Guarantee: once an erasure has started, it completes: the user is suppressed first (no new personal data about
//! them is accepted), then each domain's holder erases its items in the data map's order (the directory first, so
//! a last-admin blocker refuses before anything is erased; export bundles before the jobs whose outputs name
//! them), with a checkpoint after each holder. A retry, a crash or SIGKILL resumes at the holder it stopped in;
//! holders are idempotent, so a second run changes nothing more. Every processor type is then sent a signed
//! erasure request through the job system, and their answers go into the receipt: the counts per data-map entry,
//! the confirmations, the suppression's hash and a SHA-256 digest of the rest. The record keeps the receipt and
//! the user's pseudonym, never their id, once it completes.
//!
//! The gap: a holder killed midway counts, on its rerun, only what it still finds, so the receipt's count for that
//! entry can be lower than what was erased (the items are gone either way; a holder that fails without being
//! killed keeps its count, saved with the checkpoint).
//!
//! Items (`DIRECTORY_TABLE`): `ERASURE#{id}` / `ERASURE`, the request and, when done, its receipt.

use crate::directory::{Directory, Standing};
use chrono::{DateTime, Utc};
use keel::config::{ConfigError, Env};
use keel::datamap::{DataSubject, ERASER, Erasure, ErasureSubject, Holder, Tally};
use keel::port::PortError;
use keel::resources::Resources;
use keel::suppression::Suppressions;
use keel::table::{Expect, Key, Table, Write, item_of};
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

fn record_key(id: &str) -> Key {
    Key::new(format!("ERASURE#{id}"), RECORD_SK)
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
        self.put(&record, None).await?;
        match self.jobs.create(ERASURES_ORG, ERASER, job_type, new, None).await.map_err(PortError::from)? {
            Created::New(job) => {
                record.job_id = job.id;
                self.put(&record, Some(1)).await?;
                Ok((record, true))
            }
            Created::Existing(job) => {
                self.table.transact(vec![Write::Delete { key: record_key(&id), expect: Expect::Any }]).await?;
                let running = job.input["erasure_id"].as_str().unwrap_or_default();
                let existing = self
                    .get(running)
                    .await?
                    .ok_or_else(|| PortError::Invalid(format!("the running erasure job {} has no record", job.id)))?;
                Ok((existing.0, false))
            }
        }
    }

    async fn put(&self, record: &ErasureRecord, version: Option<u64>) -> Result<(), PortError> {
        let next = version.map_or(1, |v| v + 1);
        let item = item_of(record_key(&record.id), "erasure", record, next)?;
        let expect = version.map_or(Expect::Absent, Expect::Version);
        self.table.transact(vec![Write::Put { item, expect }]).await
    }

    /// The record and its version.
    pub async fn get(&self, id: &str) -> Result<Option<(ErasureRecord, u64)>, PortError> {
        let Some(item) = self.table.get(&record_key(id)).await? else { return Ok(None) };
        Ok(Some((keel::table::value_of(&item, "erasure")?, item.version)))
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
        let (mut record, version) =
            self.get(id).await?.ok_or_else(|| TaskFailure::Failed(format!("no erasure {id}")))?;
        if let Some(receipt) = &record.receipt {
            self.forget_requests(receipt).await?;
            return Ok(json!(receipt));
        }
        let user = record.user_id.clone().ok_or_else(|| TaskFailure::Failed("the erasure names no user".into()))?;
        let mut progress: Progress =
            checkpoint.and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
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
                return Err(TaskFailure::Failed(format!(
                    "the user is now the last admin of {}, which have other members: hand over, then erase again",
                    standing.last_admin_of.join(", ")
                )));
            }
        }
        let suppression = self.suppressions.suppress(&user, id, self.clock.now()).await?;

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

        for processor in self.processors() {
            if progress.processors.contains_key(&processor.name) {
                continue;
            }
            let job_id = match processor.unavailable() {
                Some(_) => None,
                None => {
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
                keel::datamap::pseudonymize(answer, &user, &record.pseudonym);
            }
            let confirmed = job.status == keel_jobs::Status::Completed;
            confirmations.push(Confirmation {
                job_type: job_type.clone(),
                status: if confirmed { ConfirmationStatus::Confirmed } else { ConfirmationStatus::Failed },
                job_id: Some(job.id.clone()),
                at: job.finished_at,
                answer,
                error: job.error.as_ref().map(|e| e.message.replace(&user, &record.pseudonym)),
            });
        }
        if waiting > 0 {
            return Err(TaskFailure::Retriable(format!("waiting for {waiting} processors to confirm the erasure")));
        }

        let mut receipt = Receipt {
            erasure_id: id.to_string(),
            subject: record.pseudonym.clone(),
            requested_at: record.requested_at,
            completed_at: self.clock.now(),
            items: progress.tally.clone(),
            orgs_erased: record.orgs_alone.clone(),
            processors: confirmations,
            suppression: suppression.hash,
            digest: String::new(),
        };
        receipt.digest = digest(&receipt)?;
        record.user_id = None;
        if record.requested_by == user {
            record.requested_by = record.pseudonym.clone();
        }
        record.receipt = Some(receipt.clone());
        self.put(&record, Some(version)).await?;
        self.forget_requests(&receipt).await?;
        Ok(json!(receipt))
    }

    /// Deletes the processors' request jobs once their answers are in the receipt: their input names the user.
    async fn forget_requests(&self, receipt: &Receipt) -> Result<(), PortError> {
        for job_id in receipt.processors.iter().filter_map(|c| c.job_id.as_deref()) {
            self.jobs.delete_finished(ERASURES_ORG, job_id).await?;
        }
        Ok(())
    }
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
