//! Test support (cargo feature `testing`): the AWS emulator harness.
//!
//! [`Emulator`] runs moto's server (`<repo>/.venv/bin/moto_server`, installed by `bash infra/bootstrap.sh`; the
//! `KEEL_MOTO_SERVER` environment variable may name another binary) on a free local port and hands out SDK
//! configuration pointing at it. A test binary normally shares one instance ([`Emulator::shared`]) and gives every
//! resource a unique name ([`unique_name`]) so its tests run in parallel. When the binary is missing the harness
//! panics, telling how to install it: tests that need the emulator fail, they never skip.
//!
//! The server is stopped when the [`Emulator`] is dropped and, for the shared instance that lives until the
//! process exits, by a watchdog that notices the test process is gone (its stdin pipe closes).

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use keel::testing::repo_root;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Environment variable naming the moto server binary to run instead of `<repo>/.venv/bin/moto_server`.
pub const MOTO_SERVER_ENV: &str = "KEEL_MOTO_SERVER";

/// The region every emulator resource lives in.
pub const REGION: &str = "us-east-1";

/// How long the server may take to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running moto server.
#[derive(Debug)]
pub struct Emulator {
    server: Child,
    watchdog: Option<Child>,
    endpoint: String,
    log: PathBuf,
}

impl Emulator {
    /// Starts a server of its own on a free port and waits until it answers. Panics if it cannot.
    pub fn start() -> Self {
        let binary = moto_server_binary();
        let mut last_failure = String::new();
        // A port found free can be taken before the server binds it; try a few.
        for _ in 0..3 {
            match Self::try_start(&binary) {
                Ok(emulator) => return emulator,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("the AWS emulator ({}) did not start: {last_failure}", binary.display());
    }

    /// The instance this test binary shares, started on first use.
    pub fn shared() -> &'static Emulator {
        static SHARED: OnceLock<Emulator> = OnceLock::new();
        SHARED.get_or_init(Emulator::start)
    }

    fn try_start(binary: &Path) -> Result<Self, String> {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("keel-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let server = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let watchdog = spawn_watchdog(server.id());
        let mut emulator = Emulator { server, watchdog, endpoint: format!("http://127.0.0.1:{port}"), log };
        emulator.wait_until_ready(port)?;
        Ok(emulator)
    }

    fn wait_until_ready(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Ok(Some(status)) = self.server.try_wait() {
                return Err(format!("it exited with {status}; see {}", self.log.display()));
            }
            if answers(address) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no answer within {READY_TIMEOUT:?}; see {}", self.log.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's base URL, e.g. `http://127.0.0.1:43117`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// SDK configuration for the emulator: its endpoint, region `us-east-1` and fixed test credentials. Build the
    /// clients inside the test's runtime (a client's connection pool belongs to the runtime that first uses it).
    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "keel-emulator",
            )))
            .build()
    }

    /// Environment for a process that should use the emulator through the SDK's default configuration chain.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ]
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A name no other test uses: `prefix` plus a lowercase ULID (valid for tables, queues, buses and rules).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The moto server binary: `KEEL_MOTO_SERVER`, else `<repo>/.venv/bin/moto_server`. Panics with the remedy when
/// it is not there.
pub fn moto_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(MOTO_SERVER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            panic!("{MOTO_SERVER_ENV}={} does not name a file", path.display());
        }
        return path;
    }
    let root = repo_root();
    let path = root.join(".venv").join("bin").join("moto_server");
    if !path.is_file() {
        panic!(
            "the AWS emulator is not installed: {} is missing. Run `bash infra/bootstrap.sh` in {} once \
             (or set {MOTO_SERVER_ENV} to a moto_server binary).",
            path.display(),
            root.display()
        );
    }
    path
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free local port for the AWS emulator")
}

/// Whether an HTTP server answers on `address`.
fn answers(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// A process that kills the server once this process is gone: it waits for end-of-file on a pipe only this
/// process holds open (pipes are close-on-exec, so no other child inherits it). Best effort: without `sh`, the
/// server is still killed on drop.
fn spawn_watchdog(server_pid: u32) -> Option<Child> {
    Command::new("sh")
        .args(["-c", "cat >/dev/null; kill \"$1\" 2>/dev/null", "keel-moto-watchdog", &server_pid.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}
