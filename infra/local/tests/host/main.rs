//! keel-local's own tests, one binary: the host against fixture templates and the real template, its CLI, the
//! `--backend aws` run against the emulator, and SIGKILL mid-traffic and mid-erasure.

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_backend;
mod check;
mod check_aws;
mod cli;
mod common;
mod console;
mod erasure_sigkill;
mod fixture_host;
mod jobs_sigkill;
mod runbooks;
mod sigkill;
mod template_host;
