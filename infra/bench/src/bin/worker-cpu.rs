//! Worker CPU per job, the downstream call excluded. The job worker (`functions/job-worker`) runs in this process on
//! the embedded backend, against a stub service in another process (`load --mode stub`, every POST answered
//! `200 {}`), so the stub's CPU is not counted and everything the worker does is: the claim, the signed call's
//! client side, the outcome, the events and their publishes, the store's writes. Jobs are created first (that CPU
//! is reported apart: it is the API's), then handed to the worker ten at a time through the Lambda entry point,
//! as SQS would hand them. CPU is this process's user + system time from `/proc/self/stat`.
//!
//! The embedded store costs far more CPU per write than a DynamoDB request does from a Lambda (a redb commit, and a
//! hand-off to a blocking thread for every call), so the same run also measures the store's share alone: the same
//! jobs' messages received and deleted, and their records read, claimed and ended through `keel_jobs::Jobs`, with no
//! worker and no call. The worker's own CPU is the difference.
//!
//! ```text
//! target/release/load --url http://127.0.0.1:9911 --mode stub &
//! target/release/worker-cpu --stub http://127.0.0.1:9911 --jobs 5000 --data-dir "$(mktemp -d -p /dev/shm)" > /dev/null
//! ```
//!
//! The worker's metrics go to stdout (EMF, as on Lambda); the results go to stderr.

use clap::Parser;
use keel::bus::EventBus;
use keel::clock::{Clock, SystemClock};
use keel::config::Env;
use keel::function::Invocation;
use keel::queue::Queue;
use keel::resources::StaticResources;
use keel::table::Table;
use keel_bench::cpu_time;
use keel_embedded::{EmbeddedDb, QueueSpec};
use keel_jobs::{Created, Jobs, NewJob, Registry, Status};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A Standard Webhooks secret made for the benchmark (the stub does not verify).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Parser)]
struct Args {
    /// The stub service's base URL (`load --mode stub`).
    #[arg(long)]
    stub: String,
    /// Jobs measured.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Jobs run first and not measured.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Where the embedded store lives (a tmpfs directory keeps fsync out of the measurement's wall time).
    #[arg(long)]
    data_dir: PathBuf,
}

struct Bench {
    jobs: Jobs,
    queue: Arc<dyn Queue>,
    registry: Registry,
    worker: job_worker::Worker,
}

struct Round {
    /// The store's share alone (the store-only round), else the worker's whole.
    store_only: bool,
    create_cpu: Duration,
    worker_cpu: Duration,
    worker_wall: Duration,
    completed: usize,
}

impl Bench {
    async fn round(&self, name: &str, count: usize, store_only: bool) -> Result<Round, String> {
        let email = self.registry.get("notify.email").ok_or("the sample registry has no notify.email")?;
        let pid = std::process::id();
        let started = cpu_time(pid).ok_or("no CPU time")?;
        let mut ids = Vec::with_capacity(count);
        for n in 0..count {
            // Ten jobs per organization: the type's concurrency, so every job is queued at once.
            let org = format!("{name}-{}", n / 10);
            let input = serde_json::json!({"to": "bench@example.com", "template": "noop"});
            let new = NewJob { input, ..NewJob::default() };
            match self.jobs.create(&org, "bench", email, new, None).await.map_err(|e| e.to_string())? {
                Created::New(job) => ids.push((org, job.id)),
                Created::Existing(_) => return Err("a job was deduplicated".into()),
            }
        }
        let created = cpu_time(pid).ok_or("no CPU time")?;
        let wall = Instant::now();
        loop {
            let batch = self.queue.receive(10, Duration::ZERO).await.map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            let invocation = Invocation {
                request_id: ulid::Ulid::new().to_string(),
                deadline: chrono::Utc::now() + chrono::Duration::seconds(60),
                trace_header: None,
                stop: Default::default(),
            };
            let answer = if store_only {
                self.store_only(&batch, email).await?
            } else {
                let event = keel_tests::sqs_event(&batch);
                keel::lambda::invoke_queue("job-worker", &self.worker, event, invocation).await
            };
            for message in &batch {
                if !answer.batch_item_failures.iter().any(|f| f.item_identifier == message.message_id) {
                    self.queue.delete(&message.receipt).await.map_err(|e| e.to_string())?;
                }
            }
        }
        let worker_wall = wall.elapsed();
        let done = cpu_time(pid).ok_or("no CPU time")?;
        let mut completed = 0;
        for (org, id) in &ids {
            let job = self.jobs.get(org, id).await.map_err(|e| e.to_string())?;
            completed += usize::from(job.is_some_and(|found| found.job.status == Status::Completed));
        }
        Ok(Round { store_only, create_cpu: created - started, worker_cpu: done - created, worker_wall, completed })
    }

    /// What the store does for each job of a batch when a worker runs it, without the worker: read, claim, end.
    async fn store_only(
        &self,
        batch: &[keel::queue::Received],
        job_type: &keel_jobs::JobType,
    ) -> Result<aws_lambda_events::sqs::SqsBatchResponse, String> {
        for message in batch {
            let message: keel_jobs::Message = serde_json::from_str(&message.body).map_err(|e| e.to_string())?;
            let found = self.jobs.get(&message.org, &message.job).await.map_err(|e| e.to_string())?;
            let found = found.ok_or("a job vanished")?;
            let lease = chrono::Duration::seconds(30);
            let claimed = self.jobs.claim(found, lease, message.published, None).await.map_err(|e| e.to_string())?;
            let fence = claimed.job.fence;
            let end = keel_jobs::AttemptEnd {
                outcome: keel_jobs::Outcome::Succeeded,
                downstream_status: Some(200),
                error: None,
                output: Some(serde_json::json!({})),
            };
            let now = chrono::Utc::now();
            self.jobs.end_attempt(claimed, fence, end, job_type, now).await.map_err(|e| e.to_string())?;
        }
        Ok(Default::default())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir).map_err(|e| e.to_string())?;
    let db = EmbeddedDb::open(&args.data_dir).map_err(|e| e.to_string())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let table: Arc<dyn Table> = Arc::new(db.table("JobsTable", clock.clone()));
    let mut spec = QueueSpec::new("JobQueue");
    spec.visibility_timeout = Duration::from_secs(360);
    let queue: Arc<dyn Queue> = Arc::new(db.queue(spec, clock.clone()));
    let bus: Arc<dyn EventBus> = Arc::new(db.bus("EventBus"));
    let resources = StaticResources::new(clock.clone())
        .with_table("JOBS_TABLE", table.clone())
        .with_table("FLAGS_TABLE", Arc::new(db.table("FlagsTable", clock.clone())))
        .with_table("WEBHOOKS_TABLE", Arc::new(db.table("WebhooksTable", clock.clone())))
        .with_queue("JOB_QUEUE_URL", queue.clone())
        .with_queue("JOB_DLQ_URL", Arc::new(db.queue(QueueSpec::new("JobDeadLetterQueue"), clock.clone())))
        .with_queue("WEBHOOK_QUEUE_URL", Arc::new(db.queue(QueueSpec::new("WebhookQueue"), clock.clone())))
        .with_bus("EVENT_BUS_NAME", bus.clone())
        .with_table("DIRECTORY_TABLE", Arc::new(db.table("DirectoryTable", clock.clone())))
        .with_table("IDEMPOTENCY_TABLE", Arc::new(db.table("IdempotencyTable", clock.clone())))
        .with_objects(
            "EXPORT_BUCKET",
            Arc::new(db.objects("ExportBucket", "http://127.0.0.1:9", clock.clone()).map_err(|e| e.to_string())?),
        );
    let env = Env::from_pairs([
        ("JOB_URL_NOTIFY", format!("{}/notify", args.stub.trim_end_matches('/'))),
        ("JOB_SECRET_NOTIFY", SECRET.to_string()),
        ("KEEL_STAGE", "bench".to_string()),
        // A bench-only key: the worker's erasure task needs one to start.
        (keel::suppression::KEY_VAR, "bench-only-gdpr-hash-key-of-32-bytes-or-more".to_string()),
    ]);
    let bench = Bench {
        jobs: Jobs::new(table, queue.clone(), bus, clock),
        queue,
        registry: Registry::sample(&env).map_err(|e| e.to_string())?,
        worker: job_worker::build(&env, &resources).map_err(|e| e.to_string())?,
    };
    bench.round("warmup", args.warmup, false).await?;
    bench.round("warmup-store", args.warmup, true).await?;
    // Alternated, so both see the store at the same sizes and the machine in the same state.
    let mut rounds = Vec::new();
    for n in 0..4 {
        rounds.push(bench.round(&format!("worker-{n}"), args.jobs / 2, false).await?);
        rounds.push(bench.round(&format!("store-{n}"), args.jobs / 2, true).await?);
    }
    let per_job = |total: Duration, jobs: usize| total.as_secs_f64() * 1e6 / jobs as f64;
    let sum = |store_only: bool| {
        let picked: Vec<&Round> = rounds.iter().filter(|r| r.store_only == store_only).collect();
        let jobs = picked.len() * (args.jobs / 2);
        let cpu = picked.iter().map(|r| r.worker_cpu).sum::<Duration>();
        let wall = picked.iter().map(|r| r.worker_wall).sum::<Duration>();
        let create = picked.iter().map(|r| r.create_cpu).sum::<Duration>();
        let completed = picked.iter().map(|r| r.completed).sum::<usize>();
        (per_job(cpu, jobs), per_job(wall, jobs), per_job(create, jobs), completed, jobs)
    };
    let (worker_cpu, worker_wall, create_cpu, worker_done, worker_jobs) = sum(false);
    let (store_cpu, store_wall, _, store_done, store_jobs) = sum(true);
    eprintln!("jobs per side {worker_jobs}, completed {worker_done} (worker) and {store_done} (store only)");
    eprintln!("worker, whole:         CPU {worker_cpu:.0} µs/job, wall {worker_wall:.0} µs/job");
    eprintln!("store alone, same ops: CPU {store_cpu:.0} µs/job, wall {store_wall:.0} µs/job");
    eprintln!("worker without the store: CPU {:.0} µs/job", worker_cpu - store_cpu);
    eprintln!("creation (the API's store work): CPU {create_cpu:.0} µs/job");
    if worker_done != worker_jobs || store_done != store_jobs {
        return Err("not every job completed".into());
    }
    Ok(())
}
