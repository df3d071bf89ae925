//! The `keel-local` binary: `token` prints a token the data directory's key verifies; `serve` listens, answers
//! readiness, and stops cleanly on SIGTERM; `run-schedule` fires a schedule of the running host now.

use keel_local::DevKey;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_keel-local");

#[test]
fn token_prints_a_verifiable_token_and_keeps_the_key_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = Command::new(BIN)
        .args([
            "token",
            "--org",
            "org-9",
            "--user",
            "user-9",
            "--roles",
            "admin,platform-admin",
            "--ttl-seconds",
            "120",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "one JWT on stdout: {token}");

    let claims = DevKey::load_or_create(&data).unwrap().verify(token).unwrap();
    assert_eq!(claims["sub"], "user-9");
    assert_eq!(claims["org_id"], "org-9");
    assert_eq!(claims["roles"], serde_json::json!(["admin", "platform-admin"]));
    assert_eq!(claims["iss"], "keel-local");
    assert_eq!(claims["aud"], "keel");
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 120);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("dev-jwt.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let other = tempfile::tempdir().unwrap();
    assert!(DevKey::load_or_create(other.path()).unwrap().verify(token).is_err(), "another data dir, another key");
}

#[test]
fn a_bad_template_fails_start_up_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["--port", "0", "--template"])
        .arg(dir.path().join("missing.yaml"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.yaml"));
}

#[cfg(unix)]
#[tokio::test]
async fn serve_listens_on_localhost_is_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0", "--template"])
        .arg(&template)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("keel-local listening on http://") {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the host announced its address");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let ready = reqwest::get(format!("http://{addr}/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);

    // A schedule fired now, by its event's name: the cleanup runs and its run is listed.
    let port = addr.rsplit(':').next().unwrap().to_string();
    let run = |name: &str| Command::new(BIN).args(["run-schedule", name, "--port", &port]).output().unwrap();
    let fired = run("FlagOverrides");
    let answer = String::from_utf8_lossy(&fired.stdout).to_string();
    assert!(fired.status.success(), "{answer} {}", String::from_utf8_lossy(&fired.stderr));
    assert!(answer.contains(r#""ok":true"#) && answer.contains("maintenance"), "{answer}");
    let from_a_page = reqwest::Client::new()
        .post(format!("http://{addr}/local/schedules/FlagOverrides"))
        .header("origin", "https://example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(from_a_page.status(), 403, "a browser's request is refused");
    let unknown = run("NoSuchSchedule");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stdout).contains("WebhookDeliveries"), "lists the schedules there are");
    let token = DevKey::load_or_create(&dir.path().join("data"))
        .unwrap()
        .issue("ops", "op", &["platform-admin"], chrono::Duration::minutes(5))
        .unwrap();
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{addr}/v1/admin/cleanups"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let overrides = listed["cleanups"].as_array().unwrap().iter().find(|c| c["name"] == "flags.overrides").unwrap();
    assert_eq!(overrides["runs"][0]["complete"], true, "{listed}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the host did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0: {status}");
}
