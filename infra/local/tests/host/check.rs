//! `keel-local check`: the readiness suite passes against keel-local on Keel's own template (a second run too,
//! with its flag already there), and each fault it is meant to catch fails its line with the reason and the exit
//! status: a webhook secret the stack does not hold, a member's token given as the admin's, no stack at all.

use keel::config::Env;
use keel_local::{Backend, Host, HostOptions};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_keel-local");
const SECRET: &str = "check-test-secret-value";

async fn start(data_dir: &Path) -> Host {
    Host::start(HostOptions {
        port: 0,
        data_dir: data_dir.to_path_buf(),
        backend: Backend::Embedded,
        template: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml"),
        env: Env::from_pairs([("WEBHOOK_SECRET_KEEL_CHECK", SECRET), ("KEEL_STAGE", "dev")]),
    })
    .await
    .unwrap()
}

/// Runs `keel-local check` against `url` with `env`; its exit status and its lines as (verdict, check, detail).
async fn check(url: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<(String, String, String)>, String) {
    let mut command = tokio::process::Command::new(BIN);
    command.args(["check", "--url", url, "--wait-seconds", "20"]).args(args);
    for var in ["KEEL_CHECK_ADMIN_TOKEN", "KEEL_CHECK_MEMBER_TOKEN", "KEEL_CHECK_WEBHOOK_SECRET"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|line| {
            let (verdict, rest) = line.split_once("  ").unwrap();
            let (check, detail) = rest.trim_start().split_once(' ').unwrap_or((rest, ""));
            (verdict.to_string(), check.to_string(), detail.trim().to_string())
        })
        .collect();
    (output.status.success(), lines, stdout)
}

fn verdicts(lines: &[(String, String, String)]) -> Vec<(&str, &str)> {
    lines.iter().map(|(verdict, check, _)| (check.as_str(), verdict.as_str())).collect()
}

fn detail<'l>(lines: &'l [(String, String, String)], name: &str) -> &'l str {
    &lines.iter().find(|(_, check, _)| check == name).unwrap().2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_against_keel_local_and_again_once_its_flag_exists() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let url = format!("http://{}", host.addr());
    let data_dir = dir.path().to_str().unwrap();
    let args = ["--data-dir", data_dir, "--webhook-provider", "keel-check"];
    let secret = [("KEEL_CHECK_WEBHOOK_SECRET", SECRET)];

    let (ok, lines, stdout) = check(&url, &args, &secret).await;
    assert!(ok, "{stdout}");
    let expected = [
        ("health", "pass"),
        ("openapi", "pass"),
        ("authorizer", "pass"),
        ("roles", "pass"),
        ("cleanups", "warn"),
        ("breakers", "pass"),
        ("rate-limits", "pass"),
        ("webhook", "pass"),
        ("flag", "pass"),
        ("job", "pass"),
        ("idempotency", "pass"),
        ("export", "pass"),
        ("aws-resources", "warn"),
    ];
    assert_eq!(verdicts(&lines), expected, "{stdout}");
    assert!(detail(&lines, "cleanups").contains("never ran"), "{stdout}");
    assert!(detail(&lines, "flag").contains("created"), "{stdout}");
    assert!(!stdout.contains(SECRET), "the secret is never printed");

    // Every cleanup has run once: the suite passes whole but for what it does not inspect, and its flag is reused.
    let http = reqwest::Client::new();
    for schedule in [
        "WebhookPayloads",
        "WebhookDeliveries",
        "FinishedJobs",
        "EventFeed",
        "IdempotencyRecords",
        "FlagOverrides",
        "ExportBundles",
    ] {
        let fired = http.post(format!("{url}/local/schedules/{schedule}")).send().await.unwrap();
        assert_eq!(fired.status(), 200, "{schedule}");
    }
    let (ok, lines, stdout) = check(&url, &args, &secret).await;
    assert!(ok, "{stdout}");
    let warned: Vec<&str> = lines.iter().filter(|(v, _, _)| v != "pass").map(|(_, c, _)| c.as_str()).collect();
    assert_eq!(warned, ["aws-resources"], "{stdout}");
    assert!(!detail(&lines, "flag").contains("created"), "the flag of the first run is evaluated: {stdout}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_fails_its_line_with_the_reason_and_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let url = format!("http://{}", host.addr());
    let data_dir = dir.path().to_str().unwrap();

    let (ok, lines, stdout) = check(
        &url,
        &["--data-dir", data_dir, "--webhook-provider", "keel-check"],
        &[("KEEL_CHECK_WEBHOOK_SECRET", "not-it")],
    )
    .await;
    assert!(!ok, "{stdout}");
    assert_eq!(lines.iter().filter(|(v, _, _)| v == "fail").count(), 1, "{stdout}");
    assert!(detail(&lines, "webhook").contains("refused the signature"), "{stdout}");
    assert!(!stdout.contains("not-it"));

    let member = host.token("org-1", "ann", &["member"]);
    let (ok, lines, stdout) = check(&url, &[], &[("KEEL_CHECK_ADMIN_TOKEN", &member)]).await;
    assert!(!ok, "{stdout}");
    assert!(detail(&lines, "roles").contains("not a platform admin's"), "{stdout}");
    assert!(!stdout.contains(&member), "a token is never printed");

    // Without tokens or a provider, what needs them is skipped, said, and not a failure.
    let (ok, lines, stdout) = check(&url, &[], &[]).await;
    assert!(ok, "{stdout}");
    assert!(detail(&lines, "job").contains("skipped: no admin token"), "{stdout}");
    assert!(detail(&lines, "webhook").contains("skipped"), "{stdout}");
    assert_eq!(verdicts(&lines)[..3], [("health", "pass"), ("openapi", "pass"), ("authorizer", "pass")], "{stdout}");

    host.shutdown().await;
    let (ok, lines, stdout) = check(&url, &[], &[]).await;
    assert!(!ok, "{stdout}");
    assert!(detail(&lines, "health").contains("no answer"), "{stdout}");

    let (ok, _, _) = check(&url, &["--webhook-provider", "keel-check"], &[]).await;
    assert!(!ok, "a provider without its secret is refused before any check");
}
