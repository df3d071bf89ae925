//! The jobs table's entries of the data map: a job is about the user who created it (its input, output and
//! checkpoint); the indexes around it point at it and go with it.

use keel::datamap::{Entry, Erasure, Export, Retention, Subject};

/// The table jobs live in, as the template wires it.
pub const TABLE_VAR: &str = "JOBS_TABLE";

const AUDIT_PURPOSE: &str = "Accountability for who created, retried and cancelled which job (GDPR Art. 5(2)).";

pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "jobs.audit",
        table: TABLE_VAR,
        pk: "AUDIT",
        sk: "{id}",
        description: "The audit trail of job creations, retries and cancellations: who, which job, when.",
        subject: Subject::User,
        personal_data: &["actor"],
        purpose: AUDIT_PURPOSE,
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Include,
        erasure: Erasure::Pseudonymize,
    },
    Entry {
        name: "jobs.audit_index",
        table: TABLE_VAR,
        pk: "AUDIT#{index}",
        sk: "{id}",
        description: "The same audit entries, by organization and by actor.",
        subject: Subject::User,
        personal_data: &["actor"],
        purpose: AUDIT_PURPOSE,
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "copies of jobs.audit, which the bundle includes" },
        erasure: Erasure::Pseudonymize,
    },
    Entry {
        name: "jobs.job",
        table: TABLE_VAR,
        pk: "JOB#{org}",
        sk: "{id}",
        description: "A job: its type, input, state, attempts, checkpoint and outbox; who created it.",
        subject: Subject::User,
        personal_data: &["user_id", "input", "checkpoint", "attempts[].error"],
        purpose: "Running the work the customer asked for, and keeping its history.",
        recipients: &["the job type's service (the input, in each attempt)"],
        retention: Retention::Expires { seconds: 30 * 24 * 3600 },
        export: Export::Include,
        erasure: Erasure::Delete,
    },
    Entry {
        name: "jobs.feed_org",
        table: TABLE_VAR,
        pk: "FEEDORG#{shard}",
        sk: "{org}",
        description: "An organization that has an event feed: what the feed's cleanup reads.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Removing feed events after their 24 hours.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "holds nothing about a person" },
        erasure: Erasure::Keep { exemption: "holds nothing about a person" },
    },
    Entry {
        name: "jobs.done",
        table: TABLE_VAR,
        pk: "JOBDONE#{day}",
        sk: "{id}",
        description: "Which jobs finished on a day (and their organization): what the finished jobs' cleanup reads.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Removing finished jobs after their retention.",
        recipients: &[],
        retention: Retention::Cleanup { days: 30 },
        export: Export::Exclude { reason: "holds nothing about a person" },
        erasure: Erasure::Keep { exemption: "holds nothing about a person; the cleanup removes it with its job" },
    },
    Entry {
        name: "jobs.output",
        table: TABLE_VAR,
        pk: "JOBOUT#{org}",
        sk: "{id}",
        description: "A finished job's output.",
        subject: Subject::User,
        personal_data: &["output"],
        purpose: "Giving the job's creator its result.",
        recipients: &[],
        retention: Retention::Expires { seconds: 30 * 24 * 3600 },
        export: Export::Include,
        erasure: Erasure::Delete,
    },
    Entry {
        name: "jobs.owner",
        table: TABLE_VAR,
        pk: "JOBID#{id}",
        sk: "#",
        description: "Which organization a job id belongs to (for callbacks and the sweeper).",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Finding a job from its id alone.",
        recipients: &[],
        retention: Retention::Expires { seconds: 30 * 24 * 3600 },
        export: Export::Exclude { reason: "a pointer to jobs.job, which the bundle includes" },
        erasure: Erasure::Delete,
    },
    Entry {
        name: "jobs.open",
        table: TABLE_VAR,
        pk: "JOBOPEN#{shard}",
        sk: "{id}",
        description: "A job that has not finished, for the sweeper.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Recovering jobs whose worker died.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "a pointer to jobs.job" },
        erasure: Erasure::Delete,
    },
    Entry {
        name: "jobs.slots",
        table: TABLE_VAR,
        pk: "JOBSLOTS#{org}",
        sk: "{type}",
        description: "An organization's running and queued jobs of one type, counted.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Fairness between organizations.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "holds nothing about a person" },
        erasure: Erasure::Keep { exemption: "holds nothing about a person" },
    },
    Entry {
        name: "jobs.wait",
        table: TABLE_VAR,
        pk: "JOBWAIT#{org}#{type}",
        sk: "{at}#{id}",
        description: "A job waiting for a slot or its start time.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Fairness between organizations, and jobs that start later.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "a pointer to jobs.job" },
        erasure: Erasure::Delete,
    },
    Entry {
        name: "jobs.dedup",
        table: TABLE_VAR,
        pk: "JOBDEDUP#{org}",
        sk: "{key}",
        description: "A deduplication key, held by the open job that took it.",
        subject: Subject::User,
        personal_data: &["the deduplication key the caller chose"],
        purpose: "Creating a job once per key while it runs.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "a copy of jobs.job's deduplication key" },
        erasure: Erasure::Delete,
    },
    Entry {
        name: "jobs.feed_event",
        table: TABLE_VAR,
        pk: "FEED#{org}",
        sk: "{position}",
        description: "An organization's lifecycle and domain events, the feed and stream serve.",
        subject: Subject::User,
        personal_data: &["actor and job ids in the event"],
        purpose: "Telling the organization's services what happened.",
        recipients: &["the event bus's subscribers and the feed's readers (the customer's own services)"],
        retention: Retention::Expires { seconds: 24 * 3600 },
        export: Export::Include,
        erasure: Erasure::Delete,
    },
    Entry {
        name: "jobs.domain_event_id",
        table: TABLE_VAR,
        pk: "EVENTID#{org}",
        sk: "{id}",
        description: "A domain event's id, remembered to publish it once.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Publishing each domain event once.",
        recipients: &[],
        retention: Retention::Expires { seconds: 24 * 3600 },
        export: Export::Exclude { reason: "holds nothing about a person" },
        erasure: Erasure::Keep { exemption: "holds nothing about a person" },
    },
    Entry {
        name: "jobs.breaker",
        table: TABLE_VAR,
        pk: "BREAKER",
        sk: "{target}",
        description: "A downstream service's circuit breaker, shared by every worker.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Protecting a failing service from retries.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "holds nothing about a person" },
        erasure: Erasure::Keep { exemption: "holds nothing about a person" },
    },
];

/// Whether a feed event is about `user`: lifecycle events only, whose `user_id` Keel sets (the job's creator); a
/// domain event's data is whatever its publisher sent.
fn is_about(event: &crate::events::FeedEvent, user: &str) -> bool {
    event.event_type.starts_with("job.") && event.data["user_id"].as_str() == Some(user)
}

/// Whether an erasure takes `job`: one the user created or that is about them (an operator's export of them). Other
/// users' jobs stay, in an organization erased with the user too: the directory's "alone" is not the tenant's.
fn erasure_takes(job: &crate::Job, user: &str) -> bool {
    job.user_id == user || job.input.get("user_id").and_then(|u| u.as_str()) == Some(user)
}

/// The user's own audit entries (what they created, retried, cancelled), their jobs in each of their
/// organizations, the outputs of those that completed, and the feed's events about them.
#[async_trait::async_trait]
impl keel::datamap::Holder for crate::Jobs {
    fn entries(&self) -> &'static [Entry] {
        ENTRIES
    }

    async fn export(
        &self,
        subject: &keel::datamap::DataSubject,
        sink: &mut dyn keel::datamap::ExportSink,
    ) -> Result<(), keel::port::PortError> {
        keel::audit::export_actor(self.table(), "jobs.audit", &subject.user_id, sink).await?;
        let filter = crate::Filter { user_id: Some(subject.user_id.clone()), ..crate::Filter::default() };
        for org in &subject.org_ids {
            let mut after = None;
            loop {
                let page = self.list(org, &filter, after, crate::store::MAX_LIST_LIMIT).await?;
                for job in &page.jobs {
                    // A job the user made about another user (an operator's export of someone) is theirs to know
                    // of, but its input and output are about the other user.
                    let about_another =
                        job.input.get("user_id").and_then(|u| u.as_str()).is_some_and(|u| u != subject.user_id);
                    if about_another {
                        let mut job = job.clone();
                        job.input = serde_json::json!({"user_id": "(another user)"});
                        job.checkpoint = None;
                        sink.record("jobs.job", keel::datamap::to_record(&job)?)?;
                        continue;
                    }
                    sink.record("jobs.job", keel::datamap::to_record(job)?)?;
                    if job.status == crate::Status::Completed
                        && let Some(output) = self.output(org, &job.id).await?
                    {
                        sink.record("jobs.output", serde_json::json!({"job_id": job.id, "output": output}))?;
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut after = None;
            loop {
                let (events, next) = self.feed_held(org, after, keel::table::MAX_QUERY_LIMIT).await?;
                for (_, event) in &events {
                    if is_about(event, &subject.user_id) {
                        sink.record("jobs.feed_event", keel::datamap::to_record(event)?)?;
                    }
                }
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Deletes the jobs the erasure takes, with their outputs and feed events, and pseudonymizes the jobs' audit
    /// trail. A job still pending is cancelled first; one still running is asked to stop, and the erasure answers
    /// `Unavailable` until it has (its retry, from its checkpoint, then deletes it).
    async fn erase(
        &self,
        subject: &keel::datamap::ErasureSubject,
        dry_run: bool,
        tally: &mut keel::datamap::Tally,
    ) -> Result<(), keel::port::PortError> {
        use keel::datamap::count;
        let user = subject.subject.user_id.as_str();
        let mut stopping = 0;
        for org in &subject.subject.org_ids {
            let mut after = None;
            loop {
                let page = self.list(org, &crate::Filter::default(), after, crate::store::MAX_LIST_LIMIT).await?;
                for job in page.jobs.iter().filter(|job| erasure_takes(job, user)) {
                    let had_output = self.output(org, &job.id).await?.is_some();
                    let finished = if dry_run || job.status.is_terminal() {
                        true
                    } else {
                        match self.cancel(org, &job.id, keel::datamap::ERASER).await {
                            Ok(job) => job.status.is_terminal(),
                            Err(crate::JobsError::Conflict(_)) | Err(crate::JobsError::NotFound) => true,
                            Err(error) => return Err(error.into()),
                        }
                    };
                    if !finished {
                        stopping += 1;
                        continue;
                    }
                    if dry_run || self.delete_finished(org, &job.id).await? {
                        count(tally, "jobs.job", 1);
                        count(tally, "jobs.owner", 1);
                        count(tally, "jobs.output", u64::from(had_output));
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut after = None;
            loop {
                let (events, next) = self.feed_held(org, after, keel::table::MAX_QUERY_LIMIT).await?;
                for (position, event) in &events {
                    if is_about(event, user) {
                        count(tally, "jobs.feed_event", 1);
                        if !dry_run {
                            self.delete_feed_event(org, position).await?;
                        }
                    }
                }
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        let names = ("jobs.audit", "jobs.audit_index");
        keel::audit::pseudonymize(self.table().as_ref(), names, user, &subject.pseudonym, &[], dry_run, tally).await?;
        if stopping > 0 {
            return Err(keel::port::PortError::Unavailable(format!(
                "{stopping} of the user's jobs are still running after a cancel; the erasure goes on when they stop"
            )));
        }
        Ok(())
    }
}
