//! Test support (cargo feature `testing`): the repository root and a table that can be switched off.
//! The AWS emulator harness is `keel_aws::testing`.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// A `GDPR_HASH_KEY` for tests (`keel::suppression`).
pub const GDPR_HASH_KEY: &str = "test-only-gdpr-hash-key-of-32-bytes-or-more";

/// The repository root: the nearest ancestor of the crate under test that holds `.venv`, else the nearest one
/// whose `Cargo.toml` declares the workspace.
pub fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Some(with_venv) = start.ancestors().find(|dir| dir.join(".venv").is_dir()) {
        return with_venv.to_path_buf();
    }
    let is_workspace =
        |dir: &Path| std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|text| text.contains("[workspace]"));
    start.ancestors().find(|dir| is_workspace(dir)).unwrap_or(&start).to_path_buf()
}

/// A table that counts reads and writes and, while switched off, fails every call as an unreachable store would.
pub struct SwitchableTable {
    inner: std::sync::Arc<dyn crate::table::Table>,
    down: std::sync::atomic::AtomicBool,
    gets: std::sync::atomic::AtomicUsize,
    queries: std::sync::atomic::AtomicUsize,
    puts: std::sync::atomic::AtomicUsize,
    /// Write requests (put, delete, transaction) and the items they wrote or deleted.
    write_requests: std::sync::atomic::AtomicUsize,
    items_written: std::sync::atomic::AtomicUsize,
}

impl SwitchableTable {
    pub fn new(inner: std::sync::Arc<dyn crate::table::Table>) -> Self {
        Self {
            inner,
            down: Default::default(),
            gets: Default::default(),
            queries: Default::default(),
            puts: Default::default(),
            write_requests: Default::default(),
            items_written: Default::default(),
        }
    }

    /// Write requests so far: each put, delete or transaction is one, as DynamoDB bills round trips.
    pub fn write_requests(&self) -> usize {
        self.write_requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Items written or deleted so far (a transaction's condition checks are not writes).
    pub fn items_written(&self) -> usize {
        self.items_written.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wrote(&self, items: usize) {
        self.write_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.items_written.fetch_add(items, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn gets(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn puts(&self) -> usize {
        self.puts.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check(&self, counter: Option<&std::sync::atomic::AtomicUsize>) -> Result<(), crate::port::PortError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::port::PortError::Unavailable("switched off by the test".into()));
        }
        if let Some(counter) = counter {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::table::Table for SwitchableTable {
    async fn get(&self, key: &crate::table::Key) -> Result<Option<crate::table::Item>, crate::port::PortError> {
        self.check(Some(&self.gets))?;
        self.inner.get(key).await
    }
    async fn put(&self, item: crate::table::Item, expect: crate::table::Expect) -> Result<(), crate::port::PortError> {
        self.check(Some(&self.puts))?;
        self.wrote(1);
        self.inner.put(item, expect).await
    }
    async fn delete(
        &self,
        key: &crate::table::Key,
        expect: crate::table::Expect,
    ) -> Result<(), crate::port::PortError> {
        self.check(None)?;
        self.wrote(1);
        self.inner.delete(key, expect).await
    }
    async fn query(&self, query: &crate::table::Query) -> Result<crate::table::Page, crate::port::PortError> {
        self.check(Some(&self.queries))?;
        self.inner.query(query).await
    }
    async fn transact(&self, writes: Vec<crate::table::Write>) -> Result<(), crate::port::PortError> {
        self.check(None)?;
        self.wrote(writes.iter().filter(|write| !matches!(write, crate::table::Write::Check { .. })).count());
        self.inner.transact(writes).await
    }
    async fn ping(&self) -> Result<(), crate::port::PortError> {
        self.check(None)?;
        self.inner.ping().await
    }
}

/// A stand-in for Lambda's Runtime API on a local port, for tests of the `keel::lambda::run_*` runners: a child
/// copy of the test binary runs the ignored test `child_test` (with `child_var` set, so it knows it is the child),
/// which should run a function under the runner; it is handed `events` in turn, and whatever it posts back (the
/// response or the error of each, streamed in chunks or not) is returned once every event has had its answer.
pub mod runtime_api {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// One request the function posted: its path, headers (lower-case names) and body (chunks joined).
    #[derive(Debug)]
    pub struct Posted {
        pub path: String,
        pub headers: HashMap<String, String>,
        pub body: Vec<u8>,
    }

    impl Posted {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    pub fn serve(
        child_test: &str,
        child_var: &str,
        function: &str,
        events: &[String],
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Posted> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", child_test, "--ignored", "--nocapture", "--test-threads=1"])
            .env(child_var, "1")
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", function)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "stream")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{function}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut posted = Vec::new();
        let mut served = 0;
        'connections: while posted.len() < events.len() {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            while let Some(request) = read_request(&mut reader) {
                if request.path.ends_with("/runtime/invocation/next") {
                    if served == events.len() {
                        break 'connections;
                    }
                    let headers = [
                        ("lambda-runtime-aws-request-id", format!("req-{served}")),
                        ("lambda-runtime-deadline-ms", deadline.timestamp_millis().to_string()),
                        (
                            "lambda-runtime-invoked-function-arn",
                            format!("arn:aws:lambda:us-east-1:123456789012:function:{function}"),
                        ),
                        ("lambda-runtime-trace-id", "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into()),
                    ];
                    respond(&mut writer, &headers, &events[served]);
                    served += 1;
                } else {
                    respond(&mut writer, &[], "{}");
                    posted.push(request);
                    if posted.len() == events.len() {
                        break 'connections;
                    }
                }
            }
        }
        child.kill().ok();
        child.wait().ok();
        posted
    }

    /// One HTTP/1.1 request, its body read by length or in chunks.
    fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Posted> {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let path = line.split_whitespace().nth(1)?.to_string();
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).ok()?;
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let mut body = Vec::new();
        if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).ok()?;
                let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        let mut trailer = String::new();
                        reader.read_line(&mut trailer).ok()?;
                        if trailer.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).ok()?;
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let length = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            body.resize(length, 0);
            reader.read_exact(&mut body).ok()?;
        }
        Some(Posted { path, headers, body })
    }

    fn respond(stream: &mut TcpStream, headers: &[(&str, String)], body: &str) {
        let mut text =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n", body.len());
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text.push_str(body);
        stream.write_all(text.as_bytes()).unwrap();
    }
}
