//! A GDPR export or erasure of one user with many items, on the embedded backend: the `gdpr.export` or `gdpr.erase`
//! task as the job worker runs it, timed, with this process's peak resident memory (`VmHWM`). Seeding, exporting and
//! erasing are separate runs, so each peak is its own:
//!
//! ```text
//! dir=$(mktemp -d -p /dev/shm)
//! target/release/export-user --data-dir "$dir" seed --jobs 5000 --others 1000
//! target/release/export-user --data-dir "$dir" export
//! target/release/export-user --data-dir "$dir" erase
//! target/release/export-user --data-dir "$dir" seed-deliveries --expired 10000 --fresh 1000
//! target/release/export-user --data-dir "$dir" clean
//! ```
//!
//! Each of the user's jobs is two exported items (the job and its `job.created` event); the other user's jobs share
//! the organization, so the export reads past them. Results go to stdout as one JSON line.

use chrono::{TimeZone, Utc};
use clap::{Parser, Subcommand};
use keel::clock::{Clock, SystemClock};
use keel::config::Env;
use keel::resources::{Resources, StaticResources};
use keel_embedded::{EmbeddedDb, QueueSpec};
use keel_jobs::builtin::{Checkpoints, Task};
use keel_jobs::{Jobs, NewJob, Registry};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const USER: &str = "bench-user";
const ORG: &str = "bench-org";

#[derive(Parser)]
struct Args {
    /// Where the embedded store lives (a tmpfs directory keeps fsync out of the seeding's time).
    #[arg(long)]
    data_dir: PathBuf,
    #[command(subcommand)]
    phase: Phase,
}

#[derive(Subcommand)]
enum Phase {
    /// Creates the user's jobs and another user's in the same organization.
    Seed {
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
        #[arg(long, default_value_t = 1000)]
        others: usize,
    },
    /// Exports the user once.
    Export,
    /// Erases the user (no processor is configured, so none is waited for).
    Erase,
    /// Writes webhook deliveries (with their idempotency records) past their retention, and fresh ones.
    SeedDeliveries {
        #[arg(long, default_value_t = 10_000)]
        expired: usize,
        #[arg(long, default_value_t = 1000)]
        fresh: usize,
    },
    /// Runs the `webhooks.deliveries` cleanup once, to its end.
    Clean,
}

struct Discard;

#[async_trait::async_trait]
impl Checkpoints for Discard {
    async fn save(&self, _: &Value) -> Result<bool, keel::port::PortError> {
        Ok(true)
    }
}

fn resources(db: &EmbeddedDb, clock: Arc<dyn Clock>) -> Result<StaticResources, String> {
    let objects =
        db.objects("ExportBucket", "http://127.0.0.1:9/local/objects", clock.clone()).map_err(|e| e.to_string())?;
    Ok(StaticResources::new(clock.clone())
        .with_table("JOBS_TABLE", Arc::new(db.table("JobsTable", clock.clone())))
        .with_table("FLAGS_TABLE", Arc::new(db.table("FlagsTable", clock.clone())))
        .with_table("WEBHOOKS_TABLE", Arc::new(db.table("WebhooksTable", clock.clone())))
        .with_table("IDEMPOTENCY_TABLE", Arc::new(db.table("IdempotencyTable", clock.clone())))
        .with_table("DIRECTORY_TABLE", Arc::new(db.table("DirectoryTable", clock.clone())))
        .with_queue("JOB_QUEUE_URL", Arc::new(db.queue(QueueSpec::new("JobQueue"), clock.clone())))
        .with_bus("EVENT_BUS_NAME", Arc::new(db.bus("EventBus")))
        .with_objects("EXPORT_BUCKET", Arc::new(objects)))
}

/// This process's peak resident set, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir).map_err(|e| e.to_string())?;
    let db = EmbeddedDb::open(&args.data_dir).map_err(|e| e.to_string())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resources = resources(&db, clock.clone())?;
    match args.phase {
        Phase::Seed { jobs, others } => {
            let env = Env::from_pairs([("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify"), ("KEEL_STAGE", "bench")]);
            let registry = Registry::sample_unsigned(&env).map_err(|e| e.to_string())?;
            let job_type = registry.get("notify.email").ok_or("no notify.email type")?;
            let store = Jobs::new(
                Arc::new(db.table("JobsTable", clock.clone())),
                Arc::new(db.queue(QueueSpec::new("JobQueue"), clock.clone())),
                Arc::new(db.bus("EventBus")),
                clock,
            );
            let later = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).single();
            let started = Instant::now();
            for (user, count) in [(USER, jobs), ("bench-other", others)] {
                for n in 0..count {
                    let input = json!({"to": format!("{user}-{n}@example.com"), "template": "welcome"});
                    let new = NewJob { job_type: job_type.name.clone(), input, run_at: later, ..NewJob::default() };
                    store.create(ORG, user, job_type, new, None).await.map_err(|e| e.to_string())?;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            println!("{}", json!({"phase": "seed", "jobs": jobs, "others": others, "seconds": seconds}));
        }
        Phase::Export => {
            let task = keel_gdpr::export::ExportTask::from_resources(&resources).map_err(|e| e.to_string())?;
            let before = peak_rss_mib();
            let started = Instant::now();
            let output = task
                .run(&json!({"user_id": USER, "org_ids": [ORG]}), None, &Discard)
                .await
                .map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            let items = total(&output["items"]);
            println!(
                "{}",
                json!({
                    "phase": "export",
                    "items": items,
                    "seconds": seconds,
                    "items_per_second": items as f64 / seconds,
                    "bundle_bytes": output["bytes"],
                    "peak_rss_mib_before": before,
                    "peak_rss_mib": peak_rss_mib(),
                })
            );
        }
        Phase::SeedDeliveries { expired, fresh } => {
            let table = resources.table(keel_webhooks::TABLE_VAR).map_err(|e| e.to_string())?;
            let now = Utc::now();
            let started = Instant::now();
            for n in 0..expired + fresh {
                let age = if n < expired { chrono::Duration::days(8) } else { chrono::Duration::days(1) };
                let at = now - age + chrono::Duration::milliseconds(n as i64);
                table.transact(delivery_writes(at, n)).await.map_err(|e| e.to_string())?;
            }
            let seconds = started.elapsed().as_secs_f64();
            println!("{}", json!({"phase": "seed-deliveries", "expired": expired, "fresh": fresh, "seconds": seconds}));
        }
        Phase::Clean => {
            let env = Env::from_pairs([(keel_webhooks::PROVIDERS_VAR, PROVIDER)]);
            let table = resources.table(keel_webhooks::TABLE_VAR).map_err(|e| e.to_string())?;
            let cleanup = keel_webhooks::DeliveriesCleanup::from_env(&env, table).map_err(|e| e.to_string())?;
            let runs = keel::cleanup::Runs(resources.table(keel::cleanup::TABLE_VAR).map_err(|e| e.to_string())?);
            let clock = SystemClock;
            let before = peak_rss_mib();
            let started = Instant::now();
            let run = runs.run(&cleanup, Utc::now(), &|| false, &clock).await.map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({
                    "phase": "clean",
                    "removed": run.removed,
                    "complete": run.complete,
                    "seconds": seconds,
                    "deliveries_per_second": run.removed as f64 / seconds,
                    "peak_rss_mib_before": before,
                    "peak_rss_mib": peak_rss_mib(),
                })
            );
        }
        Phase::Erase => {
            // A bench-only key: pseudonyms and suppression need one.
            let env = Env::from_pairs([(keel::suppression::KEY_VAR, "bench-only-gdpr-hash-key-of-32-bytes-or-more")]);
            let registry = Registry::sample_unsigned(&env).map_err(|e| e.to_string())?;
            let erasures = keel_gdpr::erasure::Erasures::from_resources(&env, &resources, registry.clone())
                .map_err(|e| e.to_string())?;
            let before = peak_rss_mib();
            let started = Instant::now();
            let (record, _) =
                erasures.start(USER, USER, None, &[ORG.to_string()], None).await.map_err(|e| e.to_string())?;
            let task = keel_gdpr::erasure::EraseTask(erasures);
            let receipt =
                task.run(&json!({"erasure_id": record.id}), None, &Discard).await.map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            let items = total(&receipt["items"]);
            println!(
                "{}",
                json!({
                    "phase": "erase",
                    "items": items,
                    "jobs": receipt["items"]["jobs.job"],
                    "seconds": seconds,
                    "items_per_second": items as f64 / seconds,
                    "peak_rss_mib_before": before,
                    "peak_rss_mib": peak_rss_mib(),
                })
            );
        }
    }
    Ok(())
}

const PROVIDER: &str = "bench";

/// A delivery received at `at`, and its idempotency record, as ingest writes them.
fn delivery_writes(at: chrono::DateTime<Utc>, n: usize) -> Vec<keel::table::Write> {
    use keel::table::{Expect, Item, Write};
    let delivery = keel_webhooks::Delivery {
        provider: PROVIDER.into(),
        delivery_id: keel::clock::ulid_at(at).to_string(),
        event_id: format!("evt_{n}"),
        event_type: "invoice.paid".into(),
        status: keel_webhooks::Status::Completed,
        attempts: 1,
        last_error: None,
        received_at: at,
        updated_at: at,
        started_at: None,
        completed_at: None,
        duration_ms: None,
        lease_until: None,
        replays: 0,
        body_base64: keel_webhooks::encode_body(br#"{"id":"evt","object":"event","data":{"amount":1200}}"#),
        content_type: Some("application/json".into()),
        trace_header: None,
        payload_removed_at: None,
    };
    let mut idempotency = Item::new(keel_webhooks::idempotency_key(PROVIDER, &delivery.event_id), Default::default());
    idempotency.attrs.insert("delivery_id".into(), delivery.delivery_id.clone().into());
    idempotency.expires_at = Some(at + keel_webhooks::IDEMPOTENCY_WINDOW);
    vec![
        Write::Put { item: delivery.to_item(1), expect: Expect::Absent },
        Write::Put { item: idempotency, expect: Expect::Absent },
    ]
}

/// The items of a per-entry count.
fn total(items: &Value) -> u64 {
    items.as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}
