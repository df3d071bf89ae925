//! The `keel-local` command line: `serve` (the default), `token`, `run-schedule` and `check`.

use crate::backend::Backend;
use crate::host::{Host, HostOptions};
use crate::token::DevKey;
use clap::{Args, Parser, Subcommand};
use keel::config::Env;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs every Keel function in one process, wired as template.yaml wires them in AWS.
#[derive(Debug, Parser)]
#[command(name = "keel-local", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API, poll the queues and fire the schedules (the default).
    Serve(ServeArgs),
    /// Print a development JWT the host accepts on routes behind the JWT authorizer.
    Token(TokenArgs),
    /// Fire one schedule of a running host now, by its event's name in the template (`WebhookDeliveries`).
    RunSchedule(RunScheduleArgs),
    /// Run the readiness suite against a running stack, deployed or local: one line per check, non-zero exit on a
    /// failure. Tokens and the webhook secret come from KEEL_CHECK_ADMIN_TOKEN, KEEL_CHECK_MEMBER_TOKEN and
    /// KEEL_CHECK_WEBHOOK_SECRET.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The API's base URL (keel-local's address, or the stack's API URL).
    #[arg(long)]
    pub url: String,
    /// A provider configured with Keel's signature scheme, for the webhook round trip.
    #[arg(long)]
    pub webhook_provider: Option<String>,
    /// keel-local only: mint the tokens the environment does not give with this data directory's development key.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long each round trip may take to complete.
    #[arg(long, default_value_t = 60)]
    pub wait_seconds: u64,
    /// The CloudFormation stack to read back the template's alarms, DLQs, encryption and retention from (with the
    /// AWS credentials of the default chain).
    #[arg(long, conflicts_with = "stack_resources")]
    pub stack: Option<String>,
    /// Instead of --stack: a file with `aws cloudformation list-stack-resources` output, for a role that may read
    /// the resources but not list the stack.
    #[arg(long)]
    pub stack_resources: Option<PathBuf>,
    /// The template whose promises the stack is checked against.
    #[arg(long, default_value = "template.yaml")]
    pub template: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RunScheduleArgs {
    /// The schedule's event name, as the template declares it under its function's `Events`.
    pub name: String,
    /// The running host's port on 127.0.0.1.
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Where the embedded database and the development key live.
    #[arg(long, default_value = ".keel-data")]
    pub data_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    pub backend: Backend,
    /// The SAM template that declares the functions, routes, queues and schedules.
    #[arg(long, default_value = "template.yaml")]
    pub template: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The organization (`org_id` claim).
    #[arg(long)]
    pub org: String,
    /// The user (`sub` claim).
    #[arg(long)]
    pub user: String,
    /// Roles, comma-separated: member, admin, platform-admin.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub roles: Vec<String>,
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: i64,
    /// The data directory whose development key signs the token.
    #[arg(long, default_value = ".keel-data")]
    pub data_dir: PathBuf,
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(&args),
        Some(Command::RunSchedule(args)) => run_schedule(&args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

/// Asks the host on `args.port` to fire the schedule, and prints its answer; fails when the invocation did.
fn run_schedule(args: &RunScheduleArgs) -> ExitCode {
    let url = format!("http://127.0.0.1:{}{}/{}", args.port, crate::host::SCHEDULES_PATH, args.name);
    let answer = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|runtime| {
        runtime.block_on(async {
            let response = reqwest::Client::new().post(&url).send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })
    });
    match answer {
        Ok(Ok((status, body))) => {
            println!("{body}");
            if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Ok(Err(error)) => {
            eprintln!("keel-local run-schedule: no host answered at {url}: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("keel-local run-schedule: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The organization and users of the tokens `check --data-dir` mints.
pub const CHECK_ORG: &str = "keel-check";
pub const CHECK_ADMIN: &str = "keel-check-admin";
pub const CHECK_MEMBER: &str = "keel-check-member";

fn check(args: &CheckArgs) -> ExitCode {
    use crate::check;
    let from_env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let mut admin_token = from_env(check::ADMIN_TOKEN_VAR);
    let mut member_token = from_env(check::MEMBER_TOKEN_VAR);
    if let Some(dir) = &args.data_dir {
        let key = match DevKey::load(dir) {
            Ok(key) => key,
            Err(error) => {
                eprintln!("keel-local check: {error}");
                return ExitCode::FAILURE;
            }
        };
        let ttl = chrono::Duration::minutes(30);
        admin_token = admin_token.or_else(|| key.issue(CHECK_ORG, CHECK_ADMIN, &["platform-admin"], ttl).ok());
        member_token = member_token.or_else(|| key.issue(CHECK_ORG, CHECK_MEMBER, &["member"], ttl).ok());
    }
    let webhook = match (&args.webhook_provider, from_env(check::WEBHOOK_SECRET_VAR)) {
        (Some(provider), Some(secret)) => Some(check::WebhookTarget { provider: provider.clone(), secret }),
        (Some(_), None) => {
            eprintln!("keel-local check: --webhook-provider needs its secret in {}", check::WEBHOOK_SECRET_VAR);
            return ExitCode::FAILURE;
        }
        (None, _) => None,
    };
    let options = check::Options {
        url: args.url.clone(),
        admin_token,
        member_token,
        webhook,
        wait: std::time::Duration::from_secs(args.wait_seconds),
        stack: match (&args.stack, &args.stack_resources) {
            (Some(stack), _) => Some((check::aws::Listing::Stack(stack.clone()), args.template.clone())),
            (None, Some(file)) => Some((check::aws::Listing::File(file.clone()), args.template.clone())),
            (None, None) => None,
        },
    };
    let lines = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(check::run(&options, |line| println!("{line}"))),
        Err(error) => {
            eprintln!("keel-local check: {error}");
            return ExitCode::FAILURE;
        }
    };
    if check::failed(&lines) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn token(args: &TokenArgs) -> ExitCode {
    let roles: Vec<&str> = args.roles.iter().map(String::as_str).filter(|r| !r.is_empty()).collect();
    let signed = DevKey::load_or_create(&args.data_dir)
        .and_then(|key| key.issue(&args.org, &args.user, &roles, chrono::Duration::seconds(args.ttl_seconds)));
    match signed {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("keel-local token: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    keel::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keel-local: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let options = HostOptions {
            port: args.port,
            data_dir: args.data_dir,
            backend: args.backend,
            template: args.template,
            env: Env::from_process(),
        };
        match Host::start(options).await {
            Ok(host) => {
                eprintln!("keel-local listening on http://{} (Ctrl-C to stop)", host.addr());
                host.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(%error, "keel-local could not start");
                eprintln!("keel-local: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_is_the_default_and_token_takes_a_role_list() {
        let cli = Cli::try_parse_from(["keel-local"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!((cli.serve.port, cli.serve.backend), (3000, Backend::Embedded));
        assert_eq!(cli.serve.data_dir, PathBuf::from(".keel-data"));
        let cli = Cli::try_parse_from(["keel-local", "--port", "0", "--backend", "aws"]).unwrap();
        assert_eq!((cli.serve.port, cli.serve.backend), (0, Backend::Aws));
        let cli = Cli::try_parse_from(["keel-local", "serve", "--template", "t.yaml"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Serve(ServeArgs { ref template, .. })) if template == &PathBuf::from("t.yaml"))
        );
        let cli = Cli::try_parse_from(["keel-local", "token", "--org", "o", "--user", "u", "--roles", "admin,member"])
            .unwrap();
        let Some(Command::Token(args)) = cli.command else { panic!("not a token command") };
        assert_eq!(args.roles, ["admin", "member"]);
        assert_eq!(args.ttl_seconds, 3600);
        assert!(Cli::try_parse_from(["keel-local", "--backend", "s3"]).is_err());
    }
}
