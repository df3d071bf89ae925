//! The end-to-end tests, one binary: the local host over real HTTP (with the official OpenFeature SDKs as clients),
//! and the webhook pipeline and flag store on the AWS adapters against the emulator. Each function's own tests live
//! with that function (`functions/<name>/tests`).

// Helpers outside `#[test]` functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_pipeline;
mod dashboards;
mod data_map;
mod events_stream;
mod flags_local;
mod flags_store_aws;
mod gdpr_local;
mod jobs_aws;
mod jobs_local;
mod jwks_interop;
mod local_host;
mod routes;
mod schemathesis;
mod secrets;
mod xray;
