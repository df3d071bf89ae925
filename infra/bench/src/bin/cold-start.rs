//! Cold start of a Lambda binary: the time from just before `spawn` to the first
//! `GET /2018-06-01/runtime/invocation/next` it sends to the Runtime API, which is the moment Lambda's init phase
//! ends and the function can take its first event.
//!
//! A stub Runtime API listens on a fresh 127.0.0.1 port for every run and never answers the poll; the child is
//! killed once it has polled. The binaries given are run round-robin (one run of each per round) so that whatever
//! else the machine is doing weighs on all of them alike. The environment is cleared and set the way Lambda sets it
//! (plus the variables Keel's webhook functions read), with dummy static credentials, so nothing is looked up on the
//! network.
//!
//! ```text
//! cargo build --release -p webhook-ingest -p webhook-worker -p webhook-ops -p keel-bench
//! target/release/cold-start --runs 50 --peer target/release/hello \
//!     target/release/webhook-ingest target/release/webhook-worker target/release/webhook-ops
//! ```

use clap::Parser;
use keel_bench::{Summary, ms};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const NEXT: &str = "GET /2018-06-01/runtime/invocation/next ";

/// What Lambda sets (those a Rust function may read) and what Keel's webhook functions need.
const LAMBDA_ENV: &[(&str, &str)] = &[
    ("AWS_LAMBDA_FUNCTION_NAME", "bench-function"),
    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
    ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
    ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/01/01/[$LATEST]00000000000000000000000000000000"),
    ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench-function"),
    ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_ACCESS_KEY_ID", "AKIDBENCHBENCHBENCH0"),
    ("AWS_SECRET_ACCESS_KEY", "bench-secret-access-key"),
    ("AWS_SESSION_TOKEN", "bench-session-token"),
    ("LAMBDA_TASK_ROOT", "/var/task"),
    ("TZ", ":UTC"),
    ("WEBHOOKS_TABLE", "t"),
    ("WEBHOOK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/q"),
    ("WEBHOOK_DLQ_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/q-dlq"),
    ("EVENT_BUS_NAME", "bench-bus"),
    ("WEBHOOK_SECRET_ACME", "x"),
];

#[derive(Parser)]
#[command(about = "Time from spawn to the first Runtime API poll, for each Lambda binary given")]
struct Args {
    /// Measured runs per binary.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Runs per binary before measuring (page cache, first-exec effects); not reported.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// A run whose binary has not polled by then fails the whole measurement.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// The reference binary (e.g. the trivial `hello` Lambda); medians are also given relative to it.
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Extra `NAME=VALUE` variables for every child.
    #[arg(long = "env", value_parser = parse_pair)]
    extra_env: Vec<(String, String)>,
    /// The Lambda binaries to measure.
    #[arg(required = true)]
    binaries: Vec<PathBuf>,
}

fn parse_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {raw}"))
}

/// What the stub saw on the first request it read.
enum Seen {
    Poll(Instant, TcpStream),
    Other(String),
    Nothing,
}

/// Accepts connections until one carries a request line; returns when it saw one (or the listener was woken by the
/// harness with an empty connection). The polling connection is handed back so it stays open until the child dies.
fn serve(listener: TcpListener, seen: mpsc::Sender<Seen>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        let line = loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => {
                    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                        break Some(String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned());
                    }
                }
            }
        };
        let at = Instant::now();
        let report = match line {
            Some(line) if format!("{line} ").starts_with(NEXT) => Seen::Poll(at, stream),
            Some(line) => Seen::Other(line),
            None => Seen::Nothing,
        };
        let _ = seen.send(report);
        return;
    }
}

fn run_once(binary: &PathBuf, args: &Args) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?.port();
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn(move || serve(listener, tx));

    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(LAMBDA_ENV.iter().copied())
        .envs(args.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());

    let start = Instant::now();
    let mut child = command.spawn().map_err(|e| format!("spawn {}: {e}", binary.display()))?;
    let seen = rx.recv_timeout(Duration::from_millis(args.timeout_ms));
    let _ = child.kill();
    let output = child.wait_with_output().map_err(|e| format!("wait: {e}"))?;
    // Wake the stub if it is still waiting for a connection, then let it (and any open poll) go.
    drop(TcpStream::connect(("127.0.0.1", port)));
    let _ = server.join();

    let stderr = || String::from_utf8_lossy(&output.stderr).chars().take(2000).collect::<String>();
    match seen {
        Ok(Seen::Poll(at, _stream)) => Ok(at.duration_since(start)),
        Ok(Seen::Other(line)) => {
            Err(format!("{} sent `{line}` before polling; stderr: {}", binary.display(), stderr()))
        }
        Ok(Seen::Nothing) | Err(_) => {
            Err(format!("{} did not poll within {} ms; stderr: {}", binary.display(), args.timeout_ms, stderr()))
        }
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let binaries: Vec<PathBuf> = args.peer.iter().chain(args.binaries.iter()).cloned().collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(args.runs); binaries.len()];
    for round in 0..args.warmup + args.runs {
        for (binary, samples) in binaries.iter().zip(samples.iter_mut()) {
            let elapsed = run_once(binary, &args)?;
            if round >= args.warmup {
                samples.push(elapsed);
            }
        }
    }

    println!(
        "cold start: spawn -> first GET /2018-06-01/runtime/invocation/next; {} runs each, round-robin, {} warm-up round(s) discarded",
        args.runs, args.warmup
    );
    println!("{:<34} {:>8} {:>8} {:>8} {:>8}  {:>10}", "binary (ms)", "min", "median", "p90", "max", "median/peer");
    let peer_median = args.peer.as_ref().and_then(|_| Summary::of(samples.first()?)).map(|s| s.p50);
    for (binary, samples) in binaries.iter().zip(&samples) {
        let Some(s) = Summary::of(samples) else { continue };
        let ratio = peer_median
            .filter(|p| !p.is_zero())
            .map(|p| format!("{:.2}x", s.p50.as_secs_f64() / p.as_secs_f64()))
            .unwrap_or_default();
        let name = binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!("{:<34} {:>8} {:>8} {:>8} {:>8}  {:>10}", name, ms(s.min), ms(s.p50), ms(s.p90), ms(s.max), ratio);
    }
    Ok(())
}
