//! The job worker: SQS messages naming a job in, one attempt run against the type's executor, its outcome recorded.
//!
//! At most one attempt of a job runs at a time: the worker claims the job with a lease and a new fencing token
//! (a versioned write), extends the lease by heartbeat while the attempt runs, and records the outcome only while
//! its token is the job's; a redelivered message finds the lease held and waits it out, and a worker that lost
//! its lease writes nothing. The heartbeat (every `JOB_HEARTBEAT_SECONDS`, 5 by default) also reads a cancel:
//! the downstream call is abandoned and the job ends `cancelled`. The one gap: an attempt whose worker dies
//! mid-call has an unknown outcome; a type that runs at least once runs it again after the lease, one that runs
//! at most once fails instead. When the host asks work to stop (keel-local shutting down), an attempt of a type
//! that runs at least once is handed back at once (outcome `released`, not counted, the message left to run it
//! again); one of a type that runs at most once finishes its call first.

use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, Utc};
use keel::clock::Clock;
use keel::config::{ConfigError, Env};
use keel::function::{Invocation, QueueFunction, deliver_again};
use keel::metrics;
use keel::queue::{MessageAttrs, Queue, TRACE_HEADER_ATTRIBUTE};
use keel::resources::Resources;
use keel_jobs::backoff;
use keel_jobs::breaker::{Admission, Breakers, target_of};
use keel_jobs::builtin::{Checkpoints, TaskFailure, Tasks};
use keel_jobs::gate::Gates;
use keel_jobs::job::MAX_PAYLOAD_BYTES;
use keel_jobs::sign::{self, Secret};
use keel_jobs::{
    AttemptEnd, Beat, Delivery, Executor, JobType, Jobs, JobsError, Message, Outcome, Registry, Status, Versioned,
    Waiting,
};
use std::sync::Arc;

pub mod tasks;

pub const TABLE_VAR: &str = "JOBS_TABLE";
/// The webhooks table and queue, for the built-in bulk replay.
pub const WEBHOOKS_TABLE_VAR: &str = "WEBHOOKS_TABLE";
pub const WEBHOOK_QUEUE_VAR: &str = "WEBHOOK_QUEUE_URL";
pub const DLQ_VAR: &str = "JOB_DLQ_URL";
pub use keel_jobs::{BUS_VAR, QUEUE_VAR};
pub const LEASE_VAR: &str = "JOB_LEASE_SECONDS";
pub const HEARTBEAT_VAR: &str = "JOB_HEARTBEAT_SECONDS";

/// Tries of one downstream call within an attempt, and the bounds of the backoff between them.
const CALL_TRIES: u32 = 3;
const CALL_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const CALL_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// Time kept back from the invocation's deadline to record the outcome.
const MARGIN: Duration = Duration::seconds(2);
/// How soon a paused job's message comes back to see whether the pause is over.
const PAUSED_RECHECK: Duration = Duration::seconds(30);
/// The headers a callback type's service gets: the attempt's token (to report with), and, on a cancel, the event.
pub const CALLBACK_TOKEN_HEADER: &str = "keel-callback-token";
pub const EVENT_HEADER: &str = "keel-event";
/// The header that numbers the attempt beside the Standard Webhooks headers (whose id is the job's).
pub const ATTEMPT_HEADER: &str = "keel-attempt";

pub struct Worker {
    jobs: Jobs,
    breakers: Breakers,
    gates: Gates,
    registry: Registry,
    queue: Arc<dyn Queue>,
    dead_letters: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    heartbeat: std::time::Duration,
    http: reqwest::Client,
    tasks: Tasks,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<Worker, ConfigError> {
    let lease: i64 = env.parse_or(LEASE_VAR, "a number of seconds", 30)?;
    let heartbeat: f64 = env.parse_or(HEARTBEAT_VAR, "a number of seconds", 5.0)?;
    let queue = resources.queue(QUEUE_VAR)?;
    let table = resources.table(TABLE_VAR)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| ConfigError::Malformed { name: "HTTP client".into(), reason: error.to_string() })?;
    let replay = tasks::WebhookReplay::new(
        resources.table(WEBHOOKS_TABLE_VAR)?,
        resources.queue(WEBHOOK_QUEUE_VAR)?,
        resources.clock(),
    );
    let registry = Registry::sample(env)?;
    let erasures = keel_gdpr::erasure::Erasures::from_resources(env, resources, registry.clone())?;
    let tasks = Tasks::default()
        .with(tasks::WEBHOOK_REPLAY, replay)
        .with(tasks::READINESS_CHECK, tasks::ReadinessCheck)
        .with(keel_gdpr::export::TASK, keel_gdpr::export::ExportTask::from_resources(resources)?)
        .with(keel_gdpr::erasure::TASK, keel_gdpr::erasure::EraseTask(erasures));
    tasks.check(&registry)?;
    Ok(Worker {
        jobs: Jobs::new(table.clone(), queue.clone(), resources.bus(BUS_VAR)?, resources.clock()),
        breakers: Breakers::new(table, resources.clock()),
        gates: Gates::from_resources(env, resources)?,
        registry,
        tasks,
        queue,
        dead_letters: resources.queue(DLQ_VAR)?,
        clock: resources.clock(),
        lease: Duration::seconds(lease.max(2)),
        heartbeat: std::time::Duration::from_secs_f64(heartbeat.clamp(0.05, 5.0)),
        http,
    })
}

/// Why a message is left for SQS to deliver again.
#[derive(Debug, thiserror::Error)]
enum Again {
    /// Another attempt holds the job until then.
    #[error("another worker holds the job")]
    Leased(DateTime<Utc>),
    /// The next attempt is due then (a retry's backoff).
    #[error("the next attempt is due later")]
    Later(DateTime<Utc>),
    #[error("{0}")]
    Jobs(#[from] JobsError),
    #[error("events of the finished job are not published yet")]
    Unpublished,
}

impl From<keel::port::PortError> for Again {
    fn from(error: keel::port::PortError) -> Self {
        Again::Jobs(error.into())
    }
}

#[async_trait]
impl QueueFunction for Worker {
    async fn call(&self, event: SqsEvent, invocation: Invocation) -> SqsBatchResponse {
        let outcomes = futures::future::join_all(event.records.iter().map(|record| {
            let header = record.attributes.get(TRACE_HEADER_ATTRIBUTE).map(String::as_str);
            keel::trace::invocation("job-worker", header, self.process(record, &invocation))
        }))
        .await;
        let mut response = SqsBatchResponse::default();
        for (record, outcome) in event.records.iter().zip(outcomes) {
            let Err(reason) = outcome else { continue };
            let until = match &reason {
                Again::Leased(until) | Again::Later(until) => *until,
                _ => self.clock.now() + Duration::seconds(5),
            };
            let delay = (until - self.clock.now()).to_std().unwrap_or_default();
            let delay = deliver_again(self.queue.as_ref(), record, delay, &mut response).await;
            let message_id = record.message_id.as_deref().unwrap_or_default();
            tracing::info!(%message_id, %reason, delay_seconds = delay.as_secs(), "job message will be delivered again");
        }
        response
    }
}

impl Worker {
    async fn process(&self, record: &SqsMessage, invocation: &Invocation) -> Result<(), Again> {
        let body = record.body.as_deref().unwrap_or_default();
        let Ok(message) = serde_json::from_str::<Message>(body) else {
            let mut attributes = MessageAttrs::new();
            attributes.insert("keel-dead-letter-reason".into(), "not a job message".into());
            self.dead_letters.send(body, &attributes).await?;
            tracing::error!("poison job message moved to the dead-letter queue");
            return Ok(());
        };
        let Some(found) = self.jobs.get(&message.org, &message.job).await? else {
            tracing::warn!(job_id = %message.job, "message for a job that does not exist; dropped");
            return Ok(());
        };
        let Some(job_type) = self.registry.get(&found.job.job_type) else {
            let error = keel_jobs::job::JobError {
                code: "unknown_type".into(),
                message: format!("the registry has no type {}", found.job.job_type),
            };
            let done = if found.job.status.is_terminal() {
                found
            } else {
                self.jobs.finish(found, Status::Failed, Some(error), None).await?
            };
            return if self.jobs.flush_outbox(done).await? { Ok(()) } else { Err(Again::Unpublished) };
        };
        let now = self.clock.now();
        let job = &found.job;
        match job.status {
            status if status.is_terminal() => {
                return if self.jobs.flush_outbox(found).await? { Ok(()) } else { Err(Again::Unpublished) };
            }
            // A duplicate of a message whose job now waits for a slot: its promotion sends a new one.
            Status::Pending if job.waiting != Some(Waiting::Queued) => return Ok(()),
            Status::Pending if job.run_at > now + Duration::seconds(1) => return Err(Again::Later(job.run_at)),
            // A callback job whose service holds it: a cancel is delivered to the service; any other message for
            // it is a duplicate (the sweeper sends one when the service's report is overdue).
            Status::Processing if job.awaiting_callback() && job.lease_until.is_some_and(|until| until > now) => {
                if job.cancel_requested.is_some() {
                    self.tell_cancelled(&found.job, job_type).await;
                    let end =
                        AttemptEnd { outcome: Outcome::Cancelled, downstream_status: None, error: None, output: None };
                    let fence = found.job.fence;
                    self.jobs.end_attempt(found, fence, end, job_type, now).await?;
                }
                return Ok(());
            }
            Status::Processing => match job.lease_until {
                Some(until) if until > now => return Err(Again::Leased(until)),
                _ => {
                    let lost = AttemptEnd {
                        outcome: Outcome::Lost,
                        downstream_status: None,
                        error: Some("the attempt's worker stopped before recording an outcome".into()),
                        output: None,
                    };
                    let fence = job.fence;
                    metrics::count("JobAttemptsLost", &[("Type", &job_type.name)], 1.0);
                    match self.jobs.end_attempt(found, fence, lost, job_type, now).await? {
                        // Run again through this very path (pause and breaker included) on the next delivery.
                        Some(next) if next.job.status == Status::Pending => return Err(Again::Later(next.job.run_at)),
                        Some(done) if !done.job.outbox.is_empty() => return Err(Again::Unpublished),
                        Some(_) => return Ok(()),
                        // The record moved on meanwhile (or our own write's answer was lost): the message stays, and
                        // its next delivery decides from the record.
                        None => return Err(Again::Later(now)),
                    }
                }
            },
            _ => {}
        }
        // A paused type, or a target whose circuit is open, costs no attempt: the job waits, queued.
        if self.gates.paused(&found.job.org_id, &job_type.name).await {
            metrics::count("JobsPaused", &[("Type", &job_type.name)], 1.0);
            return Err(Again::Later(now + PAUSED_RECHECK));
        }
        if let Some(url) = &job_type.executor.url
            && let Admission::Wait(until) = self.breakers.admit(&target_of(url)).await?
        {
            metrics::count("JobsDeferredByBreaker", &[("Type", &job_type.name)], 1.0);
            return Err(Again::Later(until));
        }
        self.attempt(found, job_type, message.published, invocation).await
    }

    /// Claims the job and runs one attempt, heartbeating, until it ends, is cancelled or the lease is lost.
    async fn attempt(
        &self,
        found: Versioned,
        job_type: &JobType,
        published: u32,
        invocation: &Invocation,
    ) -> Result<(), Again> {
        // A callback type's attempt hands its service a token of its own; the record keeps only its hash.
        let token = job_type.executor.report_within.map(|_| sign::callback_token(&found.job.id));
        let hash = token.as_deref().map(|token| sign::sha256_hex(token.as_bytes()));
        let claimed = match self.jobs.claim(found, self.lease, published, hash).await {
            Ok(claimed) => claimed,
            // Another worker claimed it first.
            Err(JobsError::Backend(error)) if error.is_condition_failed() => {
                return Err(Again::Leased(self.clock.now() + self.lease));
            }
            Err(error) => return Err(error.into()),
        };
        let fence = claimed.job.fence;
        let (org, id) = (claimed.job.org_id.clone(), claimed.job.id.clone());
        let mut current = claimed.clone();
        let started = std::time::Instant::now();
        let saver = Saver { jobs: &self.jobs, org: &org, id: &id, fence, last: std::sync::Mutex::new(None) };
        let call = self.execute(&claimed.job, job_type, invocation.deadline, token.as_deref(), &saver);
        tokio::pin!(call);
        let mut lease_until = claimed.job.lease_until.unwrap_or_else(|| self.clock.now() + self.lease);
        // A type that runs at least once hands the job back when the host stops; one that runs at most once
        // finishes its call (the service may already be acting on it).
        let releasable = job_type.delivery == Delivery::AtLeastOnce;
        let end = loop {
            tokio::select! {
                end = &mut call => break end,
                () = invocation.stop.stopped(), if releasable => {
                    tracing::info!(job_id = %id, "the host is stopping: the attempt is handed back to run again");
                    break AttemptEnd {
                        outcome: Outcome::Released,
                        downstream_status: None,
                        error: Some("the worker's host shut down mid-attempt; the job runs again".into()),
                        output: None,
                    };
                }
                () = tokio::time::sleep(self.heartbeat) => match self.jobs.heartbeat(&org, &id, fence, self.lease).await {
                    Ok(Beat::Continue { version, lease_until: until }) => {
                        current.version = version;
                        lease_until = until;
                    }
                    Ok(Beat::Cancel(read)) => {
                        let mut read = *read;
                        read.job.forget_published(&current.job);
                        current = read;
                        break AttemptEnd { outcome: Outcome::Cancelled, downstream_status: None, error: None, output: None };
                    }
                    Ok(Beat::Lost) => {
                        tracing::warn!(job_id = %id, "lease lost mid-attempt; abandoning it without recording");
                        return Ok(());
                    }
                    // A heartbeat that cannot reach the table: keep going while the lease holds, and stop before it
                    // runs out, since another worker may then take the job.
                    Err(error) => {
                        tracing::warn!(job_id = %id, %error, "heartbeat failed");
                        if self.clock.now() + Duration::from_std(self.heartbeat).unwrap_or(Duration::seconds(5)) >= lease_until {
                            tracing::warn!(job_id = %id, "lease about to run out unrenewed; abandoning the attempt");
                            return Ok(());
                        }
                    }
                },
            }
        };
        if let Some(report_within) = job_type.executor.report_within
            && end.outcome == Outcome::Succeeded
            && end.downstream_status == Some(202)
        {
            // Accepted: the service reports on the callback route; the attempt outlives this invocation.
            let report_within = Duration::from_std(report_within).unwrap_or(Duration::minutes(5));
            metrics::count("JobAttempts", &[("Type", &job_type.name), ("Outcome", "accepted")], 1.0);
            return self.await_callback(current, job_type, fence, report_within).await;
        }
        // What a built-in task saved is kept for the next attempt (the record this worker holds predates it).
        if let Some(saved) = saver.last() {
            current.job.checkpoint = Some(saved);
        }
        let outcome = end.outcome;
        metrics::count("JobAttempts", &[("Type", &job_type.name), ("Outcome", outcome_name(outcome))], 1.0);
        metrics::milliseconds(
            "JobAttemptDuration",
            &[("Type", &job_type.name)],
            started.elapsed().as_secs_f64() * 1000.0,
        );
        let attempts = u32::try_from(current.job.attempts.len()).unwrap_or(u32::MAX);
        let retry_at = match outcome {
            Outcome::Released => self.clock.now(),
            _ => self.clock.now() + jitter(job_type, attempts),
        };
        match self.jobs.end_attempt(current, fence, end, job_type, retry_at).await? {
            Some(done) if done.job.status == Status::Pending => Err(Again::Later(done.job.run_at)),
            Some(done) if !done.job.outbox.is_empty() => Err(Again::Unpublished),
            Some(_) => Ok(()),
            // The attempt lost the job meanwhile (or its own write's answer was lost): the message stays, and its
            // next delivery decides from the record.
            None => Err(Again::Later(self.clock.now())),
        }
    }

    /// One attempt against the type's executor, bounded by its timeout and the invocation's remaining time.
    async fn execute(
        &self,
        job: &keel_jobs::Job,
        job_type: &JobType,
        deadline: DateTime<Utc>,
        token: Option<&str>,
        checkpoints: &dyn Checkpoints,
    ) -> AttemptEnd {
        let budget = (deadline - self.clock.now() - MARGIN).to_std().unwrap_or_default().min(job_type.timeout);
        if let Some(name) = &job_type.executor.task {
            return self.run_task(job, name, budget, checkpoints).await;
        }
        let Executor { url: Some(url), secret: Some(secret), .. } = &job_type.executor else {
            return AttemptEnd {
                outcome: Outcome::Failed,
                downstream_status: None,
                error: job_type.unavailable().or(Some("the type has no executor here".into())),
                output: None,
            };
        };
        let attempt = job.current_attempt().map_or(1, |a| a.number);
        let body = serde_json::to_vec(&job.input).unwrap_or_default();
        let until = tokio::time::Instant::now() + budget;
        let mut last = AttemptEnd { outcome: Outcome::Retriable, downstream_status: None, error: None, output: None };
        for try_number in 1..=CALL_TRIES {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                last.error.get_or_insert_with(|| "timed out".into());
                break;
            }
            let service = Service { url, secret, token };
            let (end, retry_after) = self.call_once(service, job, attempt, &body, left).await;
            // The service failed if it did not answer or answered 5xx; any other answer shows it is up.
            let failed = end.downstream_status.is_none_or(|status| status >= 500);
            let target = target_of(url);
            if let Err(error) = self.breakers.record(&target, !failed).await {
                tracing::warn!(%error, "breaker state not recorded");
            }
            if end.outcome != Outcome::Retriable || try_number == CALL_TRIES {
                return end;
            }
            if matches!(self.breakers.admit(&target).await, Ok(Admission::Wait(_))) {
                let mut end = end;
                end.error = Some(format!("{}; the target's circuit is open", end.error.unwrap_or_default()));
                return end;
            }
            // `Retry-After` is honoured up to the cap; without it, the capped exponential with full jitter.
            let wait = retry_after
                .unwrap_or_else(|| {
                    backoff::full_jitter(CALL_BACKOFF_MIN, CALL_BACKOFF_MAX, try_number, &mut rand::rng())
                })
                .min(CALL_BACKOFF_MAX);
            last = end;
            if until.saturating_duration_since(tokio::time::Instant::now()) <= wait {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        last
    }

    /// A built-in task, from the job's last checkpoint, within `budget`; a task that runs out of time is retried
    /// from where it got to.
    async fn run_task(
        &self,
        job: &keel_jobs::Job,
        name: &str,
        budget: std::time::Duration,
        checkpoints: &dyn Checkpoints,
    ) -> AttemptEnd {
        let end =
            |outcome, error: Option<String>, output| AttemptEnd { outcome, downstream_status: None, error, output };
        let Some(task) = self.tasks.get(name) else {
            return end(Outcome::Failed, Some(format!("this worker has no built-in task `{name}`")), None);
        };
        match tokio::time::timeout(budget, task.run(&job.input, job.checkpoint.as_ref(), checkpoints)).await {
            Ok(Ok(output)) if serde_json::to_vec(&output).map_or(0, |o| o.len()) > MAX_PAYLOAD_BYTES => {
                end(Outcome::Failed, Some(format!("the output is over {MAX_PAYLOAD_BYTES} bytes")), None)
            }
            Ok(Ok(output)) => end(Outcome::Succeeded, None, Some(output)),
            Ok(Err(TaskFailure::Retriable(error))) => end(Outcome::Retriable, Some(error), None),
            Ok(Err(TaskFailure::Failed(error))) => end(Outcome::Failed, Some(error), None),
            Err(_) => {
                end(Outcome::Retriable, Some("the task ran out of time; it resumes from its checkpoint".into()), None)
            }
        }
    }

    /// One signed POST; its outcome, and the `Retry-After` it asked for.
    async fn call_once(
        &self,
        service: Service<'_>,
        job: &keel_jobs::Job,
        attempt: u32,
        body: &[u8],
        timeout: std::time::Duration,
    ) -> (AttemptEnd, Option<std::time::Duration>) {
        let mut request = self.http.post(service.url).timeout(timeout).header("content-type", "application/json");
        if let Some(token) = service.token {
            request = request.header(CALLBACK_TOKEN_HEADER, token);
        }
        for (name, value) in service.secret.headers(&job.id, self.clock.now().timestamp(), body) {
            request = request.header(name, value);
        }
        request = request.header(ATTEMPT_HEADER, attempt.to_string());
        if let Some(header) = keel::trace::current_header().or_else(|| job.trace_header.clone()) {
            request = request.header("x-amzn-trace-id", header);
        }
        let fail = |outcome, status, error: String| AttemptEnd {
            outcome,
            downstream_status: status,
            error: Some(error),
            output: None,
        };
        let response = match request.body(body.to_vec()).send().await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                return (fail(Outcome::Retriable, None, "the call timed out".into()), None);
            }
            Err(_) => return (fail(Outcome::Retriable, None, "the service could not be reached".into()), None),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| retry_after(value, self.clock.now()));
        match status {
            200..=299 => {}
            429 | 502 | 503 | 504 => {
                return (fail(Outcome::Retriable, Some(status), format!("the service answered {status}")), retry_after);
            }
            400..=499 => return (fail(Outcome::Failed, Some(status), format!("the service answered {status}")), None),
            _ => return (fail(Outcome::Retriable, Some(status), format!("the service answered {status}")), None),
        }
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(_) => return (fail(Outcome::Retriable, Some(status), "the answer was cut off".into()), None),
        };
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return (
                fail(Outcome::Failed, Some(status), format!("the answer is over {MAX_PAYLOAD_BYTES} bytes")),
                None,
            );
        }
        let output = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(output) => output,
                Err(_) => return (fail(Outcome::Failed, Some(status), "the answer is not JSON".into()), None),
            }
        };
        (
            AttemptEnd {
                outcome: Outcome::Succeeded,
                downstream_status: Some(status),
                error: None,
                output: Some(output),
            },
            None,
        )
    }
}

impl Worker {
    /// Records that the service accepted the attempt, reading the record again when it changed meanwhile (a cancel
    /// asked while the call was out is delivered to the service at once).
    async fn await_callback(
        &self,
        mut current: Versioned,
        job_type: &JobType,
        fence: u64,
        report_within: Duration,
    ) -> Result<(), Again> {
        for _ in 0..5 {
            if current.job.cancel_requested.is_some() {
                self.tell_cancelled(&current.job, job_type).await;
                let end =
                    AttemptEnd { outcome: Outcome::Cancelled, downstream_status: Some(202), error: None, output: None };
                self.jobs.end_attempt(current, fence, end, job_type, self.clock.now()).await?;
                return Ok(());
            }
            let known = current.job.clone();
            match self.jobs.await_callback(current, fence, report_within).await {
                Ok(_) | Err(JobsError::Conflict(_)) => return Ok(()),
                Err(JobsError::Backend(error)) if error.is_condition_failed() => {
                    match self.jobs.get(&known.org_id, &known.id).await? {
                        // Events this process published since that record was written are not published again.
                        Some(mut again) if again.job.fence == fence => {
                            again.job.forget_published(&known);
                            current = again;
                        }
                        _ => return Ok(()),
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(Again::Jobs(JobsError::Contended))
    }

    /// Tells a callback type's service that its job was cancelled: the same signed POST, with `keel-event:
    /// cancel` and `{"job_id", "cancelled": true}`. Best effort, one try: the job ends cancelled either way.
    async fn tell_cancelled(&self, job: &keel_jobs::Job, job_type: &JobType) {
        let Executor { url: Some(url), secret: Some(secret), .. } = &job_type.executor else { return };
        let body = serde_json::json!({"job_id": job.id, "cancelled": true}).to_string();
        let mut request = self.http.post(url).timeout(std::time::Duration::from_secs(5));
        request = request.header("content-type", "application/json").header(EVENT_HEADER, "cancel");
        for (name, value) in
            secret.headers(&format!("{}.cancel", job.id), self.clock.now().timestamp(), body.as_bytes())
        {
            request = request.header(name, value);
        }
        if let Err(error) = request.body(body).send().await {
            tracing::warn!(job_id = %job.id, %error, "the service was not told of the cancel");
        }
    }
}

/// Where an attempt's call goes, how it is signed, and the callback token it carries (callback types).
#[derive(Clone, Copy)]
struct Service<'a> {
    url: &'a str,
    secret: &'a Secret,
    token: Option<&'a str>,
}

/// The delay before the next attempt after `attempts` attempts: the type's backoff with full jitter, and never
/// under a second (SQS delays in whole seconds; a job is not retried the instant it failed).
/// A built-in task's checkpoints, saved in the record under the attempt's fence; the last one saved is kept.
struct Saver<'a> {
    jobs: &'a Jobs,
    org: &'a str,
    id: &'a str,
    fence: u64,
    last: std::sync::Mutex<Option<serde_json::Value>>,
}

impl Saver<'_> {
    fn last(&self) -> Option<serde_json::Value> {
        self.last.lock().ok().and_then(|last| last.clone())
    }
}

#[async_trait]
impl Checkpoints for Saver<'_> {
    async fn save(&self, checkpoint: &serde_json::Value) -> Result<bool, keel::port::PortError> {
        let held = match self.jobs.save_checkpoint(self.org, self.id, self.fence, checkpoint).await {
            Ok(held) => held,
            Err(JobsError::Backend(error)) => return Err(error),
            Err(other) => return Err(keel::port::PortError::Unavailable(other.to_string())),
        };
        if held && let Ok(mut last) = self.last.lock() {
            *last = Some(checkpoint.clone());
        }
        Ok(held)
    }
}

fn jitter(job_type: &JobType, attempts: u32) -> Duration {
    let delay = backoff::full_jitter(job_type.retry_base, job_type.retry_max, attempts.max(1), &mut rand::rng());
    Duration::from_std(delay).unwrap_or(Duration::zero()).max(Duration::seconds(1))
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<std::time::Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(std::time::Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value.trim()).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or_default())
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Retriable => "retriable",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::Lost => "lost",
        Outcome::Released => "released",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        assert_eq!(retry_after("3", now), Some(std::time::Duration::from_secs(3)));
        assert_eq!(retry_after("Tue, 01 Dec 2026 09:00:04 GMT", now), Some(std::time::Duration::from_secs(4)));
        assert_eq!(retry_after("Tue, 01 Dec 2026 08:00:00 GMT", now), Some(std::time::Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }
}
