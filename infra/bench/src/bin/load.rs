//! A bounded HTTP load generator for the local host, loopback only: a fixed number of requests, a time cap, a fixed
//! concurrency, and per-request latency (send to last body byte) reported as throughput and p50/p90/p99/max.
//!
//! Modes:
//! - `unique`: every request is a correctly signed Keel webhook with its own event id (the accept path: verify,
//!   idempotency + delivery transaction, queue send);
//! - `duplicate`: one signed request repeated (after the first: verify, then the idempotency read of a duplicate);
//! - `get`: a plain GET of `--path` (e.g. `/health/live`, the host's own overhead);
//! - `ofrep`: the bulk OpenFeature evaluation, `POST /ofrep/v1/evaluate/flags` with a bearer `--token` and the
//!   `--context`: every flag evaluated, serialised and hashed into the ETag. `--revalidate` sends the ETag of a
//!   first response as `If-None-Match` (the 304 path: the same work, no body on the wire). `--seed-flags N` first
//!   creates N flags of a fixed mix through the admin API (`--admin-token`, role platform-admin; existing ones kept).
//! - `jobs`: `POST /v1/jobs` of a no-op job (`--job-type`, `--job-input`) with a member's `--token`, then every job
//!   read back until it has completed: create-to-completed latency (the records' `created_at` to `finished_at`) as
//!   p50/p90/p99/max and completed jobs per second, with the host's CPU per job over the whole run.
//! - `stub`: a downstream service for `jobs` on `--url` (loopback): every POST answers `200 {}` at once.
//!
//! ```text
//! target/release/load --url http://127.0.0.1:8787 --mode unique --requests 5000 --concurrency 16
//! target/release/load --url http://127.0.0.1:8787 --mode ofrep --token "$MEMBER" --seed-flags 100 \
//!     --admin-token "$ADMIN" --requests 5000 --concurrency 16
//! target/release/load --url http://127.0.0.1:9911 --mode stub &
//! JOB_URL_NOTIFY=http://127.0.0.1:9911/notify JOB_SECRET_NOTIFY=whsec_... target/release/keel-local serve ... &
//! target/release/load --url http://127.0.0.1:8787 --mode jobs --token "$MEMBER" --requests 2000 --concurrency 16
//! target/release/load --url http://127.0.0.1:8787 --mode jobs --token "$MEMBER" --requests 600 --rate 20  # paced
//! ```

use clap::{Parser, ValueEnum};
use keel_bench::{Summary, cpu_time, json_body, keel_signature, ms};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Unique,
    Duplicate,
    Get,
    Ofrep,
    Jobs,
    Stub,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Unique => "unique",
            Mode::Duplicate => "duplicate",
            Mode::Get => "get",
            Mode::Ofrep => "ofrep",
            Mode::Jobs => "jobs",
            Mode::Stub => "stub",
        }
    }

    fn default_path(self) -> &'static str {
        match self {
            Mode::Unique | Mode::Duplicate => "/webhooks/acme",
            Mode::Get => "/health/live",
            Mode::Ofrep => "/ofrep/v1/evaluate/flags",
            Mode::Jobs => "/v1/jobs",
            Mode::Stub => "/",
        }
    }
}

#[derive(Parser)]
#[command(about = "Bounded loopback load: fixed request count, time cap, fixed concurrency")]
struct Args {
    /// Base URL of the host; only loopback addresses are accepted.
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Request path; by mode `/webhooks/acme`, `/health/live` (`get`) or `/ofrep/v1/evaluate/flags` (`ofrep`).
    #[arg(long)]
    path: Option<String>,
    /// The provider's Keel-scheme secret (`WEBHOOK_SECRET_<PROVIDER>` on the host).
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// Measured requests.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Requests before measuring (connection set-up, first-touch costs); not reported.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Requests in flight at once (one connection each).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured requests per second, all workers together (the measured ones are then sent on a schedule, not as
    /// fast as the host answers): latency at a given load instead of a backlog's.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop sending after this many seconds, whatever the count.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Webhook body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Client runtime threads (the host shares the machine's cores with this generator).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The host's process id: its CPU time (user + system, all threads) over the measured requests is reported per
    /// request, which stays meaningful when other work shares the machine and skews throughput.
    #[arg(long)]
    host_pid: Option<u32>,
    /// `ofrep`: a bearer token of a member of an organization (`keel-local token --roles member`).
    #[arg(long)]
    token: Option<String>,
    /// `ofrep`: the evaluation context, a JSON object.
    #[arg(long, default_value = r#"{"targetingKey":"bench-user","plan":"pro","country":"CA"}"#)]
    context: String,
    /// `ofrep`: send the first response's ETag as `If-None-Match` (measures the 304 path).
    #[arg(long)]
    revalidate: bool,
    /// `ofrep`: create this many flags (a fixed mix) through `POST /v1/admin/flags` before the run.
    #[arg(long, default_value_t = 0)]
    seed_flags: usize,
    /// `ofrep`: a platform-admin bearer token for `--seed-flags`.
    #[arg(long)]
    admin_token: Option<String>,
    /// `jobs`: the type and input of every job.
    #[arg(long, default_value = "notify.email")]
    job_type: String,
    #[arg(long, default_value = r#"{"to":"bench@example.com","template":"noop"}"#)]
    job_input: String,
}

struct Plan {
    url: String,
    mode: Mode,
    secret: Vec<u8>,
    body: String,
    /// Distinguishes this run's event ids from any earlier run's against the same data directory.
    nonce: u128,
    duplicate_id: String,
    duplicate_ts: String,
    /// `ofrep`: `Bearer <token>`, the request body, and the `If-None-Match` to send.
    authorization: String,
    if_none_match: Option<String>,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, usize>,
    transport_errors: usize,
    /// `jobs`: the ids of the jobs created.
    ids: Vec<String>,
}

fn loopback_only(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let ok = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if ok { Ok(()) } else { Err(format!("refusing a non-loopback target: {host}")) }
}

fn unix_seconds() -> String {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default().to_string()
}

fn request(client: &reqwest::Client, plan: &Plan, index: usize) -> reqwest::RequestBuilder {
    match plan.mode {
        Mode::Get => client.get(&plan.url),
        Mode::Ofrep => {
            let builder = client
                .post(&plan.url)
                .header("content-type", "application/json")
                .header("authorization", &plan.authorization)
                .body(plan.body.clone());
            match &plan.if_none_match {
                Some(tag) => builder.header("if-none-match", tag),
                None => builder,
            }
        }
        Mode::Unique => {
            let ts = unix_seconds();
            let id = format!("bench-{:x}-{index}", plan.nonce);
            signed(client, plan, &id, &ts)
        }
        Mode::Duplicate => signed(client, plan, &plan.duplicate_id, &plan.duplicate_ts),
        Mode::Jobs | Mode::Stub => client
            .post(&plan.url)
            .header("content-type", "application/json")
            .header("authorization", &plan.authorization)
            .body(plan.body.clone()),
    }
}

fn signed(client: &reqwest::Client, plan: &Plan, id: &str, ts: &str) -> reqwest::RequestBuilder {
    client
        .post(&plan.url)
        .header("content-type", "application/json")
        .header("x-webhook-event-id", id)
        .header("x-webhook-timestamp", ts)
        .header("x-webhook-signature", keel_signature(&plan.secret, ts, plan.body.as_bytes()))
        .body(plan.body.clone())
}

async fn one(client: &reqwest::Client, plan: &Plan, index: usize, tally: &mut Tally, record: bool) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let response = request(client, plan, index).send().await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<(u16, bytes::Bytes), reqwest::Error>((status, body))
    })
    .await;
    let elapsed = started.elapsed();
    if !record {
        return;
    }
    match outcome {
        Ok(Ok((status, body))) => {
            *tally.statuses.entry(status).or_default() += 1;
            tally.latencies.push(elapsed);
            if plan.mode == Mode::Jobs
                && let Some(id) = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
            {
                tally.ids.push(id);
            }
        }
        _ => tally.transport_errors += 1,
    }
}

async fn run(args: Args) -> Result<(), String> {
    loopback_only(&args.url)?;
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(args.concurrency)
        .no_proxy()
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let path = args.path.clone().unwrap_or_else(|| args.mode.default_path().to_string());
    let base = args.url.trim_end_matches('/');
    let mut plan = Plan {
        url: format!("{base}{path}"),
        mode: args.mode,
        secret: args.secret.clone().into_bytes(),
        body: json_body(args.body_bytes, "invoice.paid"),
        nonce,
        duplicate_id: format!("bench-dup-{nonce:x}"),
        duplicate_ts: unix_seconds(),
        authorization: String::new(),
        if_none_match: None,
    };
    if args.mode == Mode::Stub {
        return serve_stub(&args.url).await;
    }
    if args.mode == Mode::Ofrep {
        prepare_ofrep(&client, &args, base, &mut plan).await?;
    }
    if args.mode == Mode::Jobs {
        let token = args.token.as_deref().ok_or("--mode jobs needs --token (keel-local token --roles member)")?;
        plan.authorization = format!("Bearer {token}");
        let input: serde_json::Value =
            serde_json::from_str(&args.job_input).map_err(|e| format!("--job-input is not JSON: {e}"))?;
        plan.body = serde_json::json!({"type": args.job_type, "input": input}).to_string();
    }
    let plan = Arc::new(plan);

    // Warm-up: one request first (for `duplicate`, this is the one that gets accepted), then the rest in parallel.
    let mut scratch = Tally::default();
    one(&client, &plan, usize::MAX, &mut scratch, false).await;
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let next = Arc::new(AtomicUsize::new(0));
    // Paced: request `index` of the measured ones is due `(index - first) / rate` seconds after `first` is.
    let spawn_workers = |total: usize, record: bool, pace: Option<(usize, tokio::time::Instant, f64)>| {
        (0..args.concurrency.max(1))
            .map(|_| {
                let (client, plan, next) = (client.clone(), plan.clone(), next.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= total || Instant::now() >= deadline {
                            break;
                        }
                        if let Some((first, start, rate)) = pace {
                            let due = Duration::from_secs_f64(index.saturating_sub(first) as f64 / rate);
                            tokio::time::sleep_until(start + due).await;
                        }
                        one(&client, &plan, index, &mut tally, record).await;
                    }
                    tally
                })
            })
            .collect::<Vec<_>>()
    };
    for worker in spawn_workers(args.warmup, false, None) {
        let _ = worker.await;
    }

    next.store(args.warmup, Ordering::Relaxed);
    let host_cpu_before = args.host_pid.and_then(cpu_time);
    let started = Instant::now();
    let mut total = Tally::default();
    let pace = args.rate.filter(|rate| *rate > 0.0).map(|rate| (args.warmup, tokio::time::Instant::now(), rate));
    for worker in spawn_workers(args.warmup + args.requests, true, pace) {
        let tally = worker.await.map_err(|e| format!("worker: {e}"))?;
        total.latencies.extend(tally.latencies);
        total.ids.extend(tally.ids);
        total.transport_errors += tally.transport_errors;
        for (status, count) in tally.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
    }
    if args.mode == Mode::Jobs {
        return report_jobs(&client, &plan, base, &total.ids, deadline, args.host_pid.zip(host_cpu_before)).await;
    }
    let wall = started.elapsed();
    let host_cpu =
        host_cpu_before.zip(args.host_pid.and_then(cpu_time)).map(|(before, after)| after.saturating_sub(before));

    let mode = args.mode.name();
    let done = total.latencies.len();
    let statuses: Vec<String> = total.statuses.iter().map(|(s, n)| format!("{s}x{n}")).collect();
    println!(
        "load mode={mode} {} {} concurrency={} body={}B: {done} responses in {:.2} s ({} cut by the time cap), {} transport errors, statuses [{}]",
        if args.mode == Mode::Get { "GET" } else { "POST" },
        path,
        args.concurrency,
        if args.mode == Mode::Get { 0 } else { plan.body.len() },
        wall.as_secs_f64(),
        args.requests.saturating_sub(done + total.transport_errors),
        total.transport_errors,
        statuses.join(" ")
    );
    if let Some(s) = Summary::of(&total.latencies) {
        let cpu = host_cpu
            .map(|cpu| format!(" host_cpu_us_per_req={:.0}", cpu.as_secs_f64() * 1e6 / done as f64))
            .unwrap_or_default();
        println!(
            "RESULT mode={mode}{} path={} rps={:.0} p50_ms={} p90_ms={} p99_ms={} max_ms={}{cpu}",
            if args.revalidate { " revalidate" } else { "" },
            path,
            done as f64 / wall.as_secs_f64(),
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max)
        );
    }
    Ok(())
}

/// `jobs`: waits for the last job created, then reads every job back until it has completed (or the time cap), and
/// reports create-to-completed latency, completed jobs per second, and the host's CPU per job from the first
/// measured request to the last job's end (the API's creates and reads of the last job included).
async fn report_jobs(
    client: &reqwest::Client,
    plan: &Plan,
    base: &str,
    ids: &[String],
    deadline: Instant,
    cpu: Option<(u32, Duration)>,
) -> Result<(), String> {
    let mut spans = Vec::new();
    let parse = |raw: &serde_json::Value| raw.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    // Only the last job is watched while the host works, so the reads do not weigh on its CPU; then every job.
    let ended = |job: &serde_json::Value| matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled"));
    if let Some(last) = ids.last() {
        loop {
            let job = read_job(client, base, &plan.authorization, last).await?;
            if ended(&job) || Instant::now() > deadline + Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let host_cpu = cpu.and_then(|(pid, before)| cpu_time(pid).map(|after| after.saturating_sub(before)));
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() && Instant::now() < deadline + Duration::from_secs(60) {
        let mut still = Vec::new();
        for id in pending {
            let job = read_job(client, base, &plan.authorization, id).await?;
            match (job["status"].as_str(), parse(&job["created_at"]), parse(&job["finished_at"])) {
                (Some("completed"), Some(created), Some(finished)) => spans.push((created, finished)),
                (Some("failed" | "cancelled"), ..) => return Err(format!("job {id} ended {}", job["status"])),
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (Some(first), Some(last)) = (spans.iter().map(|s| s.0).min(), spans.iter().map(|s| s.1).max()) else {
        return Err("no job completed".into());
    };
    let latencies: Vec<Duration> =
        spans.iter().map(|(created, finished)| (*finished - *created).to_std().unwrap_or_default()).collect();
    let wall = (last - first).to_std().unwrap_or_default().as_secs_f64().max(1e-9);
    let s = Summary::of(&latencies).ok_or("no latencies")?;
    let cpu = host_cpu
        .map(|cpu| format!(" host_cpu_us_per_job={:.0}", cpu.as_secs_f64() * 1e6 / spans.len() as f64))
        .unwrap_or_default();
    println!(
        "RESULT mode=jobs completed={} of {} jobs_per_s={:.0} create_to_completed p50_ms={} p90_ms={} p99_ms={} max_ms={}{cpu}",
        spans.len(),
        ids.len(),
        spans.len() as f64 / wall,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
    Ok(())
}

/// `jobs`: one job as `GET /v1/jobs/{id}` answers it.
async fn read_job(
    client: &reqwest::Client,
    base: &str,
    authorization: &str,
    id: &str,
) -> Result<serde_json::Value, String> {
    let response = client.get(format!("{base}/v1/jobs/{id}")).header("authorization", authorization).send().await;
    let response = response.map_err(|e| format!("read back: {e}"))?;
    response.json().await.map_err(|e| format!("read back: {e}"))
}

/// `stub`: answers every request with `200 {}` at once, keeping connections open, until killed.
async fn serve_stub(url: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = url.strip_prefix("http://").unwrap_or(url).split('/').next().unwrap_or_default().to_string();
    let listener = tokio::net::TcpListener::bind(&authority).await.map_err(|e| format!("stub: {e}"))?;
    println!("stub listening on {authority}");
    loop {
        let (mut stream, _) = listener.accept().await.map_err(|e| format!("stub: {e}"))?;
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                // One request: the head up to the blank line, then content-length bytes of body.
                let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                while buffer.len() < end + 4 + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                buffer.drain(..end + 4 + length);
                let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                if stream.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One flag of the `--seed-flags` mix, by index: a fifth each of static, attribute rule, 50 % rollout, two weighted
/// variants with payloads, and an allow list of 20 organizations.
fn seed_flag(i: usize) -> serde_json::Value {
    let key = format!("bench-{i:03}");
    match i % 5 {
        0 => serde_json::json!({"key": key, "default_value": true}),
        1 => serde_json::json!({"key": key, "rules": [{"id": "plan", "constraints": [
            {"field": "plan", "operator": "IN", "values": ["pro", "enterprise"]},
            {"field": "country", "operator": "NOT_IN", "values": ["XX"]}]}]}),
        2 => serde_json::json!({"key": key, "rules": [{"id": "half", "rollout": {"percentage": 50}}]}),
        3 => serde_json::json!({"key": key, "default_value": true, "variants": [
            {"name": "blue", "weight": 1, "payload": {"type": "string", "value": "#0000ff"}},
            {"name": "wide", "weight": 1, "payload": {"type": "json", "value": "{\"columns\": 3}"}}]}),
        _ => serde_json::json!({"key": key,
            "allow_orgs": (0..20).map(|n| format!("org-{n}")).collect::<Vec<_>>()}),
    }
}

/// `ofrep`: seeds flags if asked, checks that the route answers 200, and takes the ETag for `--revalidate`.
async fn prepare_ofrep(client: &reqwest::Client, args: &Args, base: &str, plan: &mut Plan) -> Result<(), String> {
    let token = args.token.as_deref().ok_or("--mode ofrep needs --token (keel-local token --roles member)")?;
    plan.authorization = format!("Bearer {token}");
    let context: serde_json::Value =
        serde_json::from_str(&args.context).map_err(|e| format!("--context is not JSON: {e}"))?;
    plan.body = serde_json::json!({ "context": context }).to_string();
    if args.seed_flags > 0 {
        let admin = args.admin_token.as_deref().ok_or("--seed-flags needs --admin-token (role platform-admin)")?;
        let mut created = 0;
        for i in 0..args.seed_flags {
            let response = client
                .post(format!("{base}/v1/admin/flags"))
                .header("authorization", format!("Bearer {admin}"))
                .json(&seed_flag(i))
                .send()
                .await
                .map_err(|e| format!("seeding: {e}"))?;
            match response.status().as_u16() {
                201 => created += 1,
                409 => {}
                status => {
                    let text = response.text().await.unwrap_or_default();
                    return Err(format!("seeding flag {i}: {status} {text}"));
                }
            }
        }
        println!("seeded {} flags ({created} created, the rest existed)", args.seed_flags);
    }
    // The cache refreshes on its own schedule; a first request after seeding may still see the old snapshot, so
    // wait until the answer holds at least the seeded flags (bounded).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let response = request(client, plan, 0).send().await.map_err(|e| format!("probe: {e}"))?;
        let status = response.status().as_u16();
        let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.bytes().await.map_err(|e| format!("probe body: {e}"))?;
        if status != 200 {
            return Err(format!("probe: {status} {}", String::from_utf8_lossy(&body)));
        }
        let flags = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["flags"].as_array().map(Vec::len))
            .unwrap_or_default();
        if flags >= args.seed_flags || Instant::now() >= deadline {
            println!("probe: 200, {flags} flags, {} B body, ETag {}", body.len(), etag.as_deref().unwrap_or("-"));
            if args.revalidate {
                plan.if_none_match = Some(etag.ok_or("--revalidate: the probe had no ETag")?);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(run(args))
}

#[cfg(test)]
mod tests {
    use super::{cpu_time, loopback_only};

    #[test]
    fn reads_its_own_cpu_time() {
        assert!(cpu_time(std::process::id()).is_some());
        assert!(cpu_time(u32::MAX).is_none());
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in ["http://127.0.0.1:8080", "http://localhost:1/x", "http://[::1]:9", "http://127.1.2.3"] {
            assert!(loopback_only(ok).is_ok(), "{ok}");
        }
        for bad in ["http://10.0.0.1:80", "http://example.com", "https://127.0.0.1", "http://192.168.1.1:8080/"] {
            assert!(loopback_only(bad).is_err(), "{bad}");
        }
    }
}
