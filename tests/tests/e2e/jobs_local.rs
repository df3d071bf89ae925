//! Jobs end to end on keel-local over HTTP, against a downstream service that verifies every call with the official
//! Standard Webhooks library (`tests/sdk/job_service.py`): outcomes, events, fairness between organizations, and a
//! cancel that reaches a running call.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use keel_tests::repo_root;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Python service, stopped when dropped.
pub(crate) struct Service {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Service {
    pub(crate) fn start() -> Self {
        let python = repo_root().join(".venv/bin/python");
        assert!(python.exists(), "the virtualenv is missing: run `bash infra/bootstrap.sh`");
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/sdk/job_service.py"))
            .arg(SECRET)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("the service printed {line:?}"));
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    pub(crate) async fn calls(&self) -> Vec<Value> {
        reqwest::get(format!("{}/calls", self.url)).await.unwrap().json().await.unwrap()
    }
}

async fn start(dir: &std::path::Path, service: &Service) -> Host {
    start_with(dir, service, &[]).await
}

pub(crate) async fn start_with(dir: &std::path::Path, service: &Service, extra: &[(&str, &str)]) -> Host {
    let mut env = Env::from_pairs([
        ("KEEL_STAGE", "dev".to_string()),
        ("RATE_LIMIT_ORG", "off".to_string()),
        ("RATE_LIMIT_IP", "off".to_string()),
        ("JOB_URL_NOTIFY", format!("{}/notify", service.url)),
        ("JOB_SECRET_NOTIFY", SECRET.to_string()),
        ("JOB_URL_SIDECAR", format!("{}/sidecar", service.url)),
        ("JOB_SECRET_SIDECAR", SECRET.to_string()),
    ]);
    for (name, value) in extra {
        env.set(*name, *value);
    }
    Host::start(HostOptions {
        port: 0,
        data_dir: dir.to_path_buf(),
        backend: Backend::Embedded,
        template: repo_root().join("template.yaml"),
        env,
    })
    .await
    .unwrap()
}

pub(crate) struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(host: &Host, org: &str, user: &str) -> Self {
        Self {
            base: format!("http://{}", host.addr()),
            token: host.token(org, user, &["member"]),
            http: reqwest::Client::new(),
        }
    }

    /// A `notify.email` job whose service acts on `template`.
    pub(crate) async fn create(&self, template: &str) -> Value {
        self.create_job(json!({"type": "notify.email", "input": {"to": "ada@example.com", "template": template}})).await
    }

    /// Any job: 202 with the job.
    async fn create_job(&self, body: Value) -> Value {
        let response =
            self.http.post(format!("{}/v1/jobs", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 202);
        response.json().await.unwrap()
    }

    async fn get(&self, id: &str) -> Value {
        let response =
            self.http.get(format!("{}/v1/jobs/{id}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until the job is in one of `statuses`; the job.
    async fn wait_for(&self, id: &str, statuses: &[&str], within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let job = self.get(id).await;
            if statuses.contains(&job["status"].as_str().unwrap()) {
                return job;
            }
            assert!(started.elapsed() < within, "job {id} still {} after {within:?}: {job}", job["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_reach_a_service_that_verifies_them_with_the_standard_webhooks_library() {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &service).await;
    let ada = Client::new(&host, "org-a", "ada");
    let ok = ada.create("ok").await;
    let flaky = ada.create("flaky").await;
    let fail = ada.create("fail").await;
    let ok = ada.wait_for(ok["id"].as_str().unwrap(), &["completed"], Duration::from_secs(20)).await;
    assert_eq!(ok["output"], json!({"delivered": true}));
    let flaky = ada.wait_for(flaky["id"].as_str().unwrap(), &["completed"], Duration::from_secs(20)).await;
    assert_eq!(flaky["attempts"].as_array().unwrap().len(), 1, "the 503 was retried within the attempt");
    let fail = ada.wait_for(fail["id"].as_str().unwrap(), &["failed"], Duration::from_secs(20)).await;
    assert_eq!(fail["attempts"][0]["downstream_status"], 400);

    let calls = service.calls().await;
    assert_eq!(calls.len(), 4, "ok, flaky twice, fail: {calls:#?}");
    assert!(calls.iter().all(|call| call["verified"] == true), "every call verifies: {calls:#?}");
    let ids: std::collections::BTreeSet<&str> = calls.iter().map(|call| call["id"].as_str().unwrap()).collect();
    let jobs: std::collections::BTreeSet<&str> =
        [&ok, &flaky, &fail].iter().map(|job| job["id"].as_str().unwrap()).collect();
    assert_eq!(ids, jobs, "the webhook-id is the job id");

    let events: Vec<String> = host
        .bus_recorded()
        .unwrap()
        .into_iter()
        .filter(|recorded| recorded.event.source == "keel.jobs" && recorded.event.detail["data"]["job_id"] == ok["id"])
        .map(|recorded| recorded.event.detail_type)
        .collect();
    assert_eq!(events, ["job.created", "job.started", "job.completed"]);
    host.shutdown().await;
}

/// Organization A queues 500 jobs, then B queues 5: every one of B's starts before A has had 50 start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organizations_jobs_start_before_a_flood_has_had_fifty_start() {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &service).await;
    let a = Client::new(&host, "org-a", "ada");
    let b = Client::new(&host, "org-b", "bob");
    // A's jobs take 2 s each and are created 16 at a time, so all 500 are queued while its first are running.
    use futures::StreamExt;
    let a_ids: Vec<String> = futures::stream::iter(0..500)
        .map(|_| async { a.create("slow:2000").await["id"].as_str().unwrap().to_string() })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut b_ids = Vec::new();
    for _ in 0..5 {
        b_ids.push(b.create("ok").await["id"].as_str().unwrap().to_string());
    }
    let mut b_started = Vec::new();
    for id in &b_ids {
        let job = b.wait_for(id, &["completed"], Duration::from_secs(60)).await;
        b_started.push(chrono::DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap());
    }
    let last_b = b_started.iter().max().copied().unwrap();
    let a_started: Vec<Value> = futures::stream::iter(&a_ids).then(|id| a.get(id)).collect().await;
    let a_started_before = a_started
        .iter()
        .filter_map(|job| job["started_at"].as_str())
        .filter(|at| chrono::DateTime::parse_from_rfc3339(at).unwrap() <= last_b)
        .count();
    println!("A jobs started before B's last: {a_started_before}");
    assert!(a_started_before < 50, "{a_started_before} of A's jobs started before B's last");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_running_job_within_the_heartbeat() {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &service).await;
    let ada = Client::new(&host, "org-a", "ada");
    let job = ada.create("slow:40000").await;
    let id = job["id"].as_str().unwrap();
    ada.wait_for(id, &["processing"], Duration::from_secs(20)).await;
    let asked = Instant::now();
    let response =
        ada.http.post(format!("{}/v1/jobs/{id}/cancel", ada.base)).bearer_auth(&ada.token).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let cancelled = ada.wait_for(id, &["cancelled"], Duration::from_secs(10)).await;
    let took = asked.elapsed();
    println!("cancel reached the running job in {took:?}");
    assert!(took <= Duration::from_secs(6), "the heartbeat is 5 s: {took:?}");
    assert_eq!(cancelled["attempts"][0]["outcome"], "cancelled");
    host.shutdown().await;
}

/// Creates a job until it is acknowledged, as a careful client would: the same `Idempotency-Key` on every try, so a
/// try whose answer was lost is not a second job. A key whose first try is still held (its record was written but
/// the answer lost) answers 409 until the try's deadline passes: keep trying for longer than that.
async fn create_until_acknowledged(client: &Client, key: &str) -> String {
    let body = json!({"type": "notify.email", "input": {"to": "ada@example.com", "template": "ok"}});
    for _ in 0..300 {
        let sent = client
            .http
            .post(format!("{}/v1/jobs", client.base))
            .bearer_auth(&client.token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await;
        if let Ok(response) = sent
            && matches!(response.status().as_u16(), 200 | 202)
            && let Ok(job) = response.json::<Value>().await
        {
            return job["id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {key} never acknowledged");
}

/// Faults in each port in turn: every acknowledged job still completes; none is lost, none stays open.
async fn faults_leave_no_job_behind(spec: &str) {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let host = start_with(dir.path(), &service, &[("KEEL_FAULTS", spec)]).await;
    let ada = Client::new(&host, "org-a", "ada");
    let ids: Vec<String> = futures::future::join_all((0..20).map(|n| {
        let ada = &ada;
        async move { create_until_acknowledged(ada, &format!("faulty-{n}")).await }
    }))
    .await;
    let started = Instant::now();
    for id in &ids {
        loop {
            let Ok(response) = ada.http.get(format!("{}/v1/jobs/{id}", ada.base)).bearer_auth(&ada.token).send().await
            else {
                continue;
            };
            let job: Value = response.json().await.unwrap_or_default();
            if job["status"] == "completed" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(200), "{spec}: job {id} is {job}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_table_transactions_and_reads_leave_no_job_behind() {
    faults_leave_no_job_behind("table.transact:0.3:ambiguous,table.get:0.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_table_writes_and_queries_leave_no_job_behind() {
    faults_leave_no_job_behind("table.put:0.3:ambiguous,table.query:0.2,table.delete:0.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_the_queue_and_the_bus_leave_no_job_behind() {
    faults_leave_no_job_behind("queue.send:0.3:ambiguous,queue.receive:0.2,queue.delete:0.2,bus.put:0.3").await;
}

/// A callback job outlives its worker's invocation: the service answers 202, reports progress and the result on
/// the callback route with the attempt's token; another token is refused; a cancel is delivered to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_job_reports_its_progress_and_result_with_its_attempts_token() {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &service).await;
    let ada = Client::new(&host, "org-a", "ada");
    let create = |workflow: &str| {
        let body = json!({"type": "sidecar.orchestrate", "input": {"workflow": workflow}});
        ada.http.post(format!("{}/v1/jobs", ada.base)).bearer_auth(&ada.token).json(&body).send()
    };
    let job: Value = create("callback").await.unwrap().json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let token = loop {
        let calls = service.calls().await;
        if let Some(token) = calls.iter().find(|c| c["id"] == id.as_str()).and_then(|c| c["token"].as_str()) {
            break token.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the service was never called: {calls:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let accepted = ada.wait_for(&id, &["processing"], Duration::from_secs(10)).await;
    assert!(token.starts_with(&format!("{id}.")));
    let report = |token: String, body: Value| {
        reqwest::Client::new()
            .post(format!("{}/v1/jobs/callbacks", ada.base))
            .header("keel-callback-token", token)
            .json(&body)
            .send()
    };
    let forged = format!("{id}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(report(forged, json!({"state": "completed"})).await.unwrap().status(), 404);
    let progress = report(token.clone(), json!({"state": "progress"})).await.unwrap();
    assert_eq!(progress.status(), 200);
    let moved: Value = progress.json().await.unwrap();
    assert!(moved["lease_until"].as_str() > accepted["lease_until"].as_str(), "progress pushes the deadline out");
    let done = report(token.clone(), json!({"state": "completed", "output": {"steps": 3}})).await.unwrap();
    assert_eq!(done.status(), 200);
    let job = ada.get(&id).await;
    assert_eq!((job["status"].as_str(), &job["output"]), (Some("completed"), &json!({"steps": 3})));
    assert_eq!(report(token, json!({"state": "progress"})).await.unwrap().status(), 404, "the attempt is over");

    let second: Value = create("callback").await.unwrap().json().await.unwrap();
    let second_id = second["id"].as_str().unwrap().to_string();
    while !service.calls().await.iter().any(|c| c["id"] == second_id.as_str()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ada.wait_for(&second_id, &["processing"], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancel =
        ada.http.post(format!("{}/v1/jobs/{second_id}/cancel", ada.base)).bearer_auth(&ada.token).send().await.unwrap();
    assert_eq!(cancel.status(), 202);
    ada.wait_for(&second_id, &["cancelled"], Duration::from_secs(10)).await;
    let told = service.calls().await;
    let notice = told.iter().find(|c| c["event"] == "cancel").unwrap_or_else(|| panic!("no cancel notice: {told:#?}"));
    assert_eq!(
        (notice["id"].as_str(), notice["verified"].as_bool()),
        (Some(format!("{second_id}.cancel").as_str()), Some(true))
    );
    host.shutdown().await;
}

/// keel-local shutting down mid-call: an attempt of a type that runs at least once is handed back at once (not
/// counted) and runs again when the host is back; one of a type that runs at most once finishes its call first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_hands_back_a_job_that_runs_at_least_once_and_finishes_one_that_runs_at_most_once() {
    let service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &service).await;
    let ada = Client::new(&host, "org-a", "ada");
    let email = ada.create("slow:60000").await["id"].as_str().unwrap().to_string();
    ada.wait_for(&email, &["processing"], Duration::from_secs(20)).await;
    let stopping = Instant::now();
    host.shutdown().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown waited {took:?}: the 60 s call was not handed back");

    let host = start(dir.path(), &service).await;
    let ada = Client::new(&host, "org-a", "ada");
    let again = loop {
        let job = ada.get(&email).await;
        if job["attempts"].as_array().unwrap().len() == 2 {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again["attempts"][0]["outcome"], "released", "{again}");
    assert_eq!(again["status"], "processing", "it runs again at once: {again}");
    let response = ada.http.post(format!("{}/v1/jobs/{email}/cancel", ada.base)).bearer_auth(&ada.token).send();
    assert_eq!(response.await.unwrap().status(), 202);
    ada.wait_for(&email, &["cancelled"], Duration::from_secs(20)).await;

    let sms = ada.create_job(json!({"type": "notify.sms", "input": {"to": "+15551234567", "text": "slow:2500"}})).await;
    let sms = sms["id"].as_str().unwrap().to_string();
    ada.wait_for(&sms, &["processing"], Duration::from_secs(20)).await;
    host.shutdown().await;
    let host = start(dir.path(), &service).await;
    let sms = Client::new(&host, "org-a", "ada").get(&sms).await;
    assert_eq!(sms["status"], "completed", "the at-most-once call was finished before the host stopped: {sms}");
    assert_eq!(sms["attempts"].as_array().unwrap().len(), 1);
    host.shutdown().await;
}
