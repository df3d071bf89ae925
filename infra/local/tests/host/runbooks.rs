//! Every runbook in `docs/runbooks/` is drilled against keel-local: the situation is staged first, then every block
//! of the runbook runs, in order, in one bash shell (as an operator pastes them), and the test then checks on its
//! own that the situation is fixed. The host keeps the default rate limits, so a runbook's waiting loops must stay
//! within an operator's quota. A `sh deploy` block changes the deployment: the test makes its keel-local
//! equivalent, restarting the host with the next configuration the drill lists. A runbook without a drill, a block
//! of another kind, or a deployment step without its configuration fails the suite, so a runbook cannot rot.

use axum::extract::State;
use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const BIN: &str = env!("CARGO_BIN_EXE_keel-local");
const RUNBOOKS: [&str; 8] = [
    "circuit-breaker-open",
    "deployment-rollback",
    "gdpr-requests",
    "job-type-failing",
    "kill-switch",
    "rate-limit-false-positives",
    "webhook-dlq-growing",
    "webhook-secret-rotation",
];
const WEBHOOK_SECRET: &str = "runbook-drill-secret";
const JOB_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long one block may run (the runbooks' own loops wait up to about three minutes).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);

fn runbooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `sh` and `sh local` (keel-local only, such as `/metrics`): run as written.
    Run,
    /// `sh deploy`: a change to the deployment, made on keel-local by the drill.
    Deploy,
}

#[derive(Debug, Clone)]
struct Block {
    kind: Kind,
    code: String,
}

/// The fenced blocks of a runbook, in order; any fence but `sh`, `sh local` or `sh deploy` is refused.
fn blocks(name: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(runbooks_dir().join(format!("{name}.md"))).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(Kind, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                let kind = match info.trim() {
                    "sh" | "sh local" => Kind::Run,
                    "sh deploy" => Kind::Deploy,
                    other => panic!("{name}.md: a block marked `{other}`, not sh, sh local or sh deploy"),
                };
                open = Some((kind, String::new()));
            }
            (Some(_), Some("")) => {
                let (kind, code) = open.take().unwrap();
                blocks.push(Block { kind, code });
            }
            (Some((_, code)), _) => {
                code.push_str(line);
                code.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{name}.md: a block is not closed");
    blocks
}

#[test]
fn every_runbook_has_a_drill_and_only_blocks_the_drills_can_run() {
    let mut found: Vec<String> = std::fs::read_dir(runbooks_dir())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".md").map(str::to_string))
        .filter(|name| name != "README")
        .collect();
    found.sort();
    assert_eq!(found, RUNBOOKS, "each runbook needs a drill in this file");
    for name in RUNBOOKS {
        let blocks = blocks(name);
        assert!(blocks.iter().filter(|b| b.kind == Kind::Run).count() >= 3, "{name}: diagnose, fix and verify");
    }
    let index = std::fs::read_to_string(runbooks_dir().join("README.md")).unwrap();
    for name in RUNBOOKS {
        assert!(index.contains(&format!("({name}.md)")), "the index links {name}.md");
    }
}

/// An operator's shell: one bash process, `set -euo pipefail`, a clean environment with keel-local on its PATH.
/// Each block is written to a file and sourced (its stdin is /dev/null), then a marker line says it finished; a
/// failing command ends the shell, and the drill fails with what the shell printed.
struct Shell {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    work: PathBuf,
    transcript: String,
    blocks_run: usize,
}

const MARKER: &str = "__runbook_block_done__";

impl Shell {
    fn start(work: &Path, vars: &[(String, String)]) -> Shell {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let stderr = std::fs::File::create(work.join("stderr.log")).unwrap();
        let mut child = tokio::process::Command::new("bash")
            .args(["--noprofile", "--norc"])
            .current_dir(work)
            .env_clear()
            .env("PATH", path)
            .env("HOME", work)
            .env("LANG", "C.UTF-8")
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Shell { _child: child, stdin, stdout, work: work.to_path_buf(), transcript: String::new(), blocks_run: 0 }
    }

    async fn run(&mut self, code: &str) {
        self.blocks_run += 1;
        let file = self.work.join(format!("block-{}.sh", self.blocks_run));
        std::fs::write(&file, code).unwrap();
        let control = format!("set -euo pipefail; source {} </dev/null; printf '\\n%s\\n' {MARKER}\n", file.display());
        self.stdin.write_all(control.as_bytes()).await.unwrap();
        self.transcript.push_str(&format!("$ {}\n", code.trim_end().replace('\n', "\n  ")));
        let finished = tokio::time::timeout(BLOCK_TIMEOUT, async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                if line == MARKER {
                    return true;
                }
                self.transcript.push_str(&line);
                self.transcript.push('\n');
            }
            false
        })
        .await;
        if finished != Ok(true) {
            let stderr = std::fs::read_to_string(self.work.join("stderr.log")).unwrap_or_default();
            let how = if finished.is_err() { "did not finish in time" } else { "failed" };
            panic!("a runbook block {how}:\n{}\n--- stderr ---\n{stderr}", self.transcript);
        }
    }
}

/// A host on a fixed port with its data directory, restartable with another configuration.
struct Stack {
    dir: tempfile::TempDir,
    port: u16,
    host: Option<Host>,
}

impl Stack {
    async fn start(env: &[(&str, &str)]) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let host = launch(dir.path(), 0, env).await;
        let port = host.addr().port();
        Stack { dir, port, host: Some(host) }
    }

    fn host(&self) -> &Host {
        self.host.as_ref().unwrap()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A deployment: the host stops and starts again, same data and port, with `env`.
    async fn redeploy(&mut self, env: &[(&str, &str)]) {
        self.host.take().unwrap().shutdown().await;
        self.host = Some(launch(self.dir.path(), self.port, env).await);
    }

    fn admin_token(&self) -> String {
        self.host().token("ops", "oncall", &["platform-admin"])
    }
}

async fn launch(dir: &Path, port: u16, env: &[(&str, &str)]) -> Host {
    let mut pairs = Env::from_pairs([("KEEL_STAGE", "dev"), ("WEBHOOK_RETRY_BASE_SECONDS", "0")]);
    for (name, value) in env {
        pairs.set(*name, *value);
    }
    Host::start(HostOptions {
        port,
        data_dir: dir.to_path_buf(),
        backend: Backend::Embedded,
        template: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml"),
        env: pairs,
    })
    .await
    .unwrap()
}

/// Runs a runbook's blocks on `stack`: each `sh deploy` block takes the next configuration of `deploys`.
struct Drill {
    blocks: VecDeque<Block>,
    shell: Shell,
    deploys: VecDeque<Vec<(&'static str, String)>>,
    _work: tempfile::TempDir,
}

impl Drill {
    fn new(name: &str, stack: &Stack, vars: &[(&str, &str)], deploys: Vec<Vec<(&'static str, String)>>) -> Drill {
        let work = tempfile::tempdir().unwrap();
        // As the stack's `ApiUrl` output gives it: with a trailing slash.
        let mut all =
            vec![("KEEL_URL".to_string(), format!("{}/", stack.url())), ("TOKEN".to_string(), stack.admin_token())];
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let shell = Shell::start(work.path(), &all);
        Drill { blocks: blocks(name).into(), shell, deploys: deploys.into(), _work: work }
    }

    /// Runs blocks until one containing `needle` has run (all of them with `None`).
    async fn run_through(&mut self, stack: &mut Stack, needle: Option<&str>) {
        while let Some(block) = self.blocks.pop_front() {
            match block.kind {
                Kind::Run => self.shell.run(&block.code).await,
                Kind::Deploy => {
                    let env = self.deploys.pop_front().expect("a configuration for each sh deploy block");
                    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    stack.redeploy(&env).await;
                }
            }
            if needle.is_some_and(|needle| block.code.contains(needle)) {
                return;
            }
        }
        assert!(needle.is_none(), "no block contains {needle:?}");
        assert!(self.deploys.is_empty(), "configurations left for deploy blocks the runbook does not have");
    }

    /// Runs the rest, and prints what the shell printed (shown with `--no-capture`).
    async fn run_all(&mut self, stack: &mut Stack) {
        self.run_through(stack, None).await;
        eprintln!("{}", self.shell.transcript);
    }
}

/// A downstream service for jobs: answers every POST with the status it is set to, and counts the calls.
#[derive(Clone, Default)]
struct Service {
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

impl Service {
    async fn start(status: u16) -> (Service, String) {
        let service = Service::default();
        service.status.store(status, Ordering::SeqCst);
        let app = axum::Router::new().fallback(answer).with_state(service.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        (service, url)
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

async fn answer(State(service): State<Service>) -> (http::StatusCode, [(http::HeaderName, &'static str); 1], String) {
    service.calls.fetch_add(1, Ordering::SeqCst);
    let status = http::StatusCode::from_u16(service.status.load(Ordering::SeqCst)).unwrap();
    let body = json!({"ok": status.is_success(), "erased": {"addresses": 0}}).to_string();
    (status, [(http::header::CONTENT_TYPE, "application/json")], body)
}

async fn call(stack: &Stack, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", stack.url())).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Polls `path` with `token` until `done` holds of its answer.
async fn until(stack: &Stack, token: &str, path: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = call(stack, token, reqwest::Method::GET, path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(started.elapsed() < within, "{path} still answers {status} {body}");
        // Slowly: the drills run with the default quota per address (100 per 15 minutes), as an operator would.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sends a signed event of `provider` with `secret`; the status.
async fn send_webhook(stack: &Stack, provider: &str, secret: &str, id: &str) -> u16 {
    let body = json!({"type": "order.created", "id": id}).to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    reqwest::Client::new()
        .post(format!("{}/webhooks/{provider}", stack.url()))
        .header("x-webhook-event-id", id)
        .header("x-webhook-timestamp", &timestamp)
        .header("x-webhook-signature", keel_local::check::sign(secret, &timestamp, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn job(to: &str) -> Value {
    json!({"type": "notify.email", "input": {"to": to, "template": "welcome"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_dlq_growing() {
    // The bus refuses everything: every delivery is tried 5 times and dead-lettered.
    let failing = [("WEBHOOK_SECRET_ACME", WEBHOOK_SECRET), ("KEEL_FAULTS", "bus.put:1")];
    let mut stack = Stack::start(&failing).await;
    for n in 0..3 {
        assert_eq!(send_webhook(&stack, "acme", WEBHOOK_SECRET, &format!("evt_dlq_{n}")).await, 202);
    }
    let admin = stack.admin_token();
    let path = "/v1/webhooks/acme/deliveries?status=dead_letter";
    until(&stack, &admin, path, Duration::from_secs(60), |page| page["items"].as_array().unwrap().len() == 3).await;
    // The bus is back.
    stack.redeploy(&[("WEBHOOK_SECRET_ACME", WEBHOOK_SECRET)]).await;

    let mut drill = Drill::new("webhook-dlq-growing", &stack, &[("PROVIDER", "acme")], vec![]);
    drill.run_all(&mut stack).await;

    let page = until(&stack, &admin, "/v1/webhooks/acme/deliveries", Duration::from_secs(10), |_| true).await;
    let statuses: Vec<&str> = page["items"].as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["completed"; 3], "{page}");
    let forwarded = stack.host().bus_recorded().unwrap();
    assert_eq!(forwarded.len(), 3, "each event reached the bus once");
    stack.host.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_type_failing() {
    // The service refuses every job (422): each fails at its first attempt.
    let (service, url) = Service::start(422).await;
    let env = [("JOB_URL_NOTIFY", url.as_str()), ("JOB_SECRET_NOTIFY", JOB_SECRET)];
    let mut stack = Stack::start(&env).await;
    let member = stack.host().token("org-1", "ann", &["member"]);
    let mut failed = Vec::new();
    for n in 0..3 {
        let (status, created) =
            call(&stack, &member, reqwest::Method::POST, "/v1/jobs", Some(job(&format!("u{n}@example.com")))).await;
        assert_eq!(status, 202, "{created}");
        failed.push(created["id"].as_str().unwrap().to_string());
    }
    for id in &failed {
        until(&stack, &member, &format!("/v1/jobs/{id}"), Duration::from_secs(30), |job| job["status"] == "failed")
            .await;
    }
    // The service is fixed.
    service.set(200);

    let vars = [("JOB_TYPE", "notify.email"), ("ORG", "org-1")];
    let mut drill = Drill::new("job-type-failing", &stack, &vars, vec![]);
    drill.run_all(&mut stack).await;

    let (_, page) = call(&stack, &member, reqwest::Method::GET, "/v1/jobs?status=completed", None).await;
    let mut retried: Vec<String> =
        page["items"].as_array().unwrap().iter().map(|j| j["retry_of"].as_str().unwrap().to_string()).collect();
    retried.sort();
    failed.sort();
    assert_eq!(retried, failed, "each failed job was retried once and completed: {page}");
    stack.host.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_open() {
    // The service is down (503): calls fail until the target's breaker opens.
    let (service, url) = Service::start(503).await;
    let env = [("JOB_URL_NOTIFY", url.as_str()), ("JOB_SECRET_NOTIFY", JOB_SECRET)];
    let mut stack = Stack::start(&env).await;
    let member = stack.host().token("org-1", "ann", &["member"]);
    let mut jobs = Vec::new();
    for n in 0..2 {
        let (status, created) =
            call(&stack, &member, reqwest::Method::POST, "/v1/jobs", Some(job(&format!("b{n}@example.com")))).await;
        assert_eq!(status, 202, "{created}");
        jobs.push(created["id"].as_str().unwrap().to_string());
    }
    let admin = stack.admin_token();
    until(&stack, &admin, "/v1/admin/jobs/breakers", Duration::from_secs(90), |page| {
        page["items"].as_array().unwrap().iter().any(|b| b["state"] == "open")
    })
    .await;
    // The service is back.
    service.set(200);

    let vars = [("JOB_TYPE", "notify.email"), ("ORG", "org-1")];
    let mut drill = Drill::new("circuit-breaker-open", &stack, &vars, vec![]);
    drill.run_all(&mut stack).await;

    for id in &jobs {
        let (_, job) = call(&stack, &member, reqwest::Method::GET, &format!("/v1/jobs/{id}"), None).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
    stack.host.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch() {
    let (service, url) = Service::start(200).await;
    let env = [("JOB_URL_NOTIFY", url.as_str()), ("JOB_SECRET_NOTIFY", JOB_SECRET)];
    let mut stack = Stack::start(&env).await;
    let admin = stack.admin_token();
    let member = stack.host().token("org-1", "ann", &["member"]);
    let feature = json!({"key": "new-checkout", "default_value": true});
    assert_eq!(call(&stack, &admin, reqwest::Method::POST, "/v1/admin/flags", Some(feature)).await.0, 201);

    let vars = [("JOB_TYPE", "notify.email"), ("FLAG", "new-checkout"), ("ORG", "org-1")];
    let mut drill = Drill::new("kill-switch", &stack, &vars, vec![]);
    drill.run_through(&mut stack, Some(r#"set_enabled "$FLAG" false"#)).await;

    // Paused and killed: a new job waits without a call (the gate reads the flag within 5 s), the feature is off.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, paused) = call(&stack, &member, reqwest::Method::POST, "/v1/jobs", Some(job("p@example.com"))).await;
    assert_eq!((status, &paused["paused"]), (202, &json!(true)), "{paused}");
    let (_, evaluated) = call(&stack, &member, reqwest::Method::GET, "/v1/flags?keys=new-checkout", None).await;
    assert_eq!(evaluated["flags"]["new-checkout"]["reason"], "killed", "{evaluated}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(service.calls.load(Ordering::SeqCst), 0, "a paused type calls nothing");

    drill.run_all(&mut stack).await;
    let id = paused["id"].as_str().unwrap();
    until(&stack, &member, &format!("/v1/jobs/{id}"), Duration::from_secs(60), |job| job["status"] == "completed")
        .await;
    let (_, evaluated) = call(&stack, &member, reqwest::Method::GET, "/v1/flags?keys=new-checkout", None).await;
    assert_eq!(evaluated["flags"]["new-checkout"]["value"], true, "{evaluated}");
    stack.host.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secret_rotation() {
    let (old, new) = ("old-acme-secret", "new-acme-secret");
    let mut stack = Stack::start(&[("WEBHOOK_SECRET_ACME", old)]).await;
    let both = vec![("WEBHOOK_SECRET_ACME", format!("{new},{old}"))];
    let only_new = vec![("WEBHOOK_SECRET_ACME", new.to_string())];
    let vars = [("PROVIDER", "acme"), ("OLD_SECRET", old), ("NEW_SECRET", new)];
    let mut drill = Drill::new("webhook-secret-rotation", &stack, &vars, vec![both, only_new]);
    drill.run_all(&mut stack).await;

    assert_eq!(send_webhook(&stack, "acme", new, "evt_after_rotation").await, 202);
    assert_eq!(send_webhook(&stack, "acme", old, "evt_old_secret").await, 401);
    stack.host.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_false_positives() {
    // A quota set far too low: the operator's address is refused after 5 requests.
    let mut stack = Stack::start(&[("RATE_LIMIT_IP", "5/900")]).await;
    let admin = stack.admin_token();
    let mut last = 0;
    for _ in 0..6 {
        last = call(&stack, &admin, reqwest::Method::GET, "/v1/admin/flags?limit=1", None).await.0;
    }
    assert_eq!(last, 429);

    let raised = vec![("RATE_LIMIT_IP", "1000/900".to_string())];
    let mut drill = Drill::new("rate-limit-false-positives", &stack, &[], vec![raised]);
    drill.run_all(&mut stack).await;

    assert_eq!(call(&stack, &admin, reqwest::Method::GET, "/v1/admin/flags?limit=1", None).await.0, 200);
    stack.host.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdpr_requests() {
    // The erasure's processor (notify.erase_user) is answered by this service.
    let (service, url) = Service::start(200).await;
    let env = [("JOB_URL_NOTIFY", url.as_str()), ("JOB_SECRET_NOTIFY", JOB_SECRET)];
    let mut stack = Stack::start(&env).await;
    // acme has two admins, ann and bob, and each has a job there.
    let admin = stack.admin_token();
    assert_eq!(call(&stack, &admin, reqwest::Method::PUT, "/v1/orgs/acme", Some(json!({"name": "Acme"}))).await.0, 201);
    for user in ["user-ann", "user-bob"] {
        let path = format!("/v1/orgs/acme/members/{user}");
        assert_eq!(call(&stack, &admin, reqwest::Method::PUT, &path, Some(json!({"role": "admin"}))).await.0, 201);
    }
    let ann = stack.host().token("acme", "user-ann", &["admin"]);
    let bob = stack.host().token("acme", "user-bob", &["admin"]);
    let later = json!({"type": "notify.email", "input": {"to": "someone@example.com", "template": "welcome"},
        "run_at": "2027-06-01T00:00:00Z"});
    let (status, job) = call(&stack, &ann, reqwest::Method::POST, "/v1/jobs", Some(later.clone())).await;
    assert_eq!(status, 202, "{job}");
    let (_, bobs) = call(&stack, &bob, reqwest::Method::POST, "/v1/jobs", Some(later.clone())).await;

    let vars = [("USER_ID", "user-ann"), ("REASON", "TICKET-4711")];
    let mut drill = Drill::new("gdpr-requests", &stack, &vars, vec![]);
    drill.run_all(&mut stack).await;

    let id = job["id"].as_str().unwrap();
    let path = format!("/v1/jobs/{id}?org_id=acme");
    assert_eq!(call(&stack, &bob, reqwest::Method::GET, &path, None).await.0, 404, "ann's job is erased");
    let path = format!("/v1/jobs/{}", bobs["id"].as_str().unwrap());
    assert_eq!(call(&stack, &bob, reqwest::Method::GET, &path, None).await.0, 200, "bob's stays");
    assert_eq!(call(&stack, &ann, reqwest::Method::POST, "/v1/jobs", Some(later)).await.0, 409, "suppressed");
    assert!(service.calls.load(Ordering::SeqCst) >= 1, "the processor was asked");
    stack.host.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollback() {
    // The bad deployment lost the readiness provider's secret; the last good one has it.
    let check_secret = "check-provider-secret";
    let mut stack = Stack::start(&[]).await;
    let member = stack.host().token("keel-check", "keel-check-member", &["member"]);
    assert_eq!(send_webhook(&stack, "keel-check", check_secret, "evt_before").await, 404, "no such provider");

    let good = vec![("WEBHOOK_SECRET_KEEL_CHECK", check_secret.to_string())];
    let vars = [("MEMBER_TOKEN", member.as_str()), ("CHECK_SECRET", check_secret)];
    let mut drill = Drill::new("deployment-rollback", &stack, &vars, vec![good]);
    drill.run_through(&mut stack, Some("check-after-deploy.txt")).await;
    let diagnosed = std::fs::read_to_string(drill.shell.work.join("check-after-deploy.txt")).unwrap();
    assert!(diagnosed.lines().any(|l| l.starts_with("fail") && l.contains("webhook")), "{diagnosed}");

    drill.run_all(&mut stack).await;
    let verified = std::fs::read_to_string(drill.shell.work.join("check-after-rollback.txt")).unwrap();
    assert!(!verified.lines().any(|l| l.starts_with("fail")), "{verified}");
    assert_eq!(send_webhook(&stack, "keel-check", check_secret, "evt_after").await, 202);
    stack.host.take().unwrap().shutdown().await;
}
