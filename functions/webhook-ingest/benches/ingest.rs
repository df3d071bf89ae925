//! CPU cost of the ingest handler with the backends taken out: the real `Ingest`, built by `webhook_ingest::build`
//! from an environment, over no-op table and queue adapters (every write accepted, every read empty) and a fixed
//! clock. What is left is what the function itself does per webhook, called as Lambda calls it (through
//! `lambda_http`'s conversion of the API Gateway event and of the answer): route lookup, body handling, signature
//! verification, metadata parsing, building the two records and the queue message, and the response.
//!
//! `cargo bench -p webhook-ingest --bench ingest`

// Bench set-up fails loudly rather than measuring the wrong path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use keel::clock::ManualClock;
use keel::config::Env;
use keel::function::Invocation;
use keel::lambda::invoke_http;
use keel::port::PortError;
use keel::queue::{MessageAttrs, Queue, Received};
use keel::resources::StaticResources;
use keel::table::{Expect, Item, Key, Page, Query, Table, Write};
use sha2::Sha256;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use webhook_ingest::verify::{self, Scheme, Secret};

const KEEL_SECRET: &str = "bench-secret";
const STANDARD_KEY: &[u8] = b"bench-standard-secret-key-32byte";
const STRIPE_SECRET: &str = "whsec_bench_stripe";
const GITHUB_SECRET: &str = "bench-github-secret";

/// Accepts every write; every read finds nothing.
struct NoopTable;

#[async_trait]
impl Table for NoopTable {
    async fn get(&self, _key: &Key) -> Result<Option<Item>, PortError> {
        Ok(None)
    }
    async fn put(&self, _item: Item, _expect: Expect) -> Result<(), PortError> {
        Ok(())
    }
    async fn delete(&self, _key: &Key, _expect: Expect) -> Result<(), PortError> {
        Ok(())
    }
    async fn query(&self, _query: &Query) -> Result<Page, PortError> {
        Ok(Page::default())
    }
    async fn transact(&self, _writes: Vec<Write>) -> Result<(), PortError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// Accepts every message; never has any to give.
struct NoopQueue;

#[async_trait]
impl Queue for NoopQueue {
    fn name(&self) -> &str {
        "bench"
    }
    async fn send(&self, _body: &str, _attributes: &MessageAttrs) -> Result<String, PortError> {
        Ok("bench-message".to_string())
    }
    async fn receive(&self, _max: usize, _wait: Duration) -> Result<Vec<Received>, PortError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), PortError> {
        Ok(())
    }
    async fn change_visibility(&self, _receipt: &str, _timeout: Duration) -> Result<(), PortError> {
        Ok(())
    }
    async fn depth(&self) -> Result<u64, PortError> {
        Ok(0)
    }
    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A JSON body of exactly `size` bytes with an `id`, a `type` and an `action`, padded with a string.
fn json_body(size: usize) -> String {
    let head = r#"{"id":"evt_1NbenchBENCHbench","type":"invoice.paid","action":"opened","data":""#;
    let tail = r#""}"#;
    let mut body = String::with_capacity(size);
    body.push_str(head);
    body.extend(std::iter::repeat_n('x', size - head.len() - tail.len()));
    body.push_str(tail);
    assert_eq!(body.len(), size);
    body
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("application/json"));
    map.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    for (name, value) in pairs {
        map.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

fn keel_headers(secret: &str, body: &str) -> HeaderMap {
    let ts = now().timestamp().to_string();
    let sig = hex::encode(hmac(secret.as_bytes(), &[ts.as_bytes(), b".", body.as_bytes()]));
    headers(&[
        ("x-webhook-event-id", "evt_01JBENCH000000000000000000".into()),
        ("x-webhook-timestamp", ts),
        ("x-webhook-signature", sig),
    ])
}

fn standard_headers(body: &str) -> HeaderMap {
    let (id, ts) = ("msg_2bENCHbenchBENCHbench", now().timestamp().to_string());
    let tag = hmac(STANDARD_KEY, &[id.as_bytes(), b".", ts.as_bytes(), b".", body.as_bytes()]);
    let sig = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag));
    headers(&[("webhook-id", id.into()), ("webhook-timestamp", ts), ("webhook-signature", sig)])
}

fn stripe_headers(body: &str) -> HeaderMap {
    let ts = now().timestamp().to_string();
    let sig = hex::encode(hmac(STRIPE_SECRET.as_bytes(), &[ts.as_bytes(), b".", body.as_bytes()]));
    headers(&[("stripe-signature", format!("t={ts},v1={sig}"))])
}

fn github_headers(body: &str) -> HeaderMap {
    let sig = format!("sha256={}", hex::encode(hmac(GITHUB_SECRET.as_bytes(), &[body.as_bytes()])));
    headers(&[
        ("x-hub-signature-256", sig),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
        ("x-github-event", "issues".into()),
    ])
}

/// An HTTP API (payload 2.0) request as API Gateway hands it over.
fn request(provider: &str, headers: HeaderMap, body: &str) -> ApiGatewayV2httpRequest {
    let mut request: ApiGatewayV2httpRequest = serde_json::from_value(serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /webhooks/{provider}",
        "rawPath": format!("/webhooks/{provider}"),
        "requestContext": {"routeKey": "POST /webhooks/{provider}", "http": {"method": "POST"}},
        "pathParameters": {"provider": provider},
        "body": body,
        "isBase64Encoded": false,
    }))
    .unwrap();
    request.headers = headers;
    request
}

fn invocation() -> Invocation {
    Invocation {
        request_id: "8f5a4c2e-0000-4000-8000-000000000000".into(),
        deadline: now() + chrono::Duration::seconds(10),
        trace_header: Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into()),
        stop: Default::default(),
    }
}

fn ingest() -> webhook_ingest::Ingest {
    let env = Env::from_pairs([
        ("WEBHOOKS_TABLE", "t".to_string()),
        ("WEBHOOK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/q".to_string()),
        ("WEBHOOK_SECRET_ACME", KEEL_SECRET.to_string()),
        ("WEBHOOK_SECRET_STD", format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(STANDARD_KEY))),
        ("WEBHOOK_SCHEME_STD", "standard".to_string()),
        ("WEBHOOK_SECRET_STRIPE", STRIPE_SECRET.to_string()),
        ("WEBHOOK_SCHEME_STRIPE", "stripe".to_string()),
        ("WEBHOOK_SECRET_GH", GITHUB_SECRET.to_string()),
        ("WEBHOOK_SCHEME_GH", "github".to_string()),
    ]);
    let resources = StaticResources::new(Arc::new(ManualClock::new(now())))
        .with_table("WEBHOOKS_TABLE", Arc::new(NoopTable))
        .with_queue("WEBHOOK_QUEUE_URL", Arc::new(NoopQueue));
    webhook_ingest::build(&env, &resources).unwrap()
}

fn bench_handler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ingest = ingest();
    let body = json_body(1024);
    let cases = [
        ("keel_1KiB_accepted", request("acme", keel_headers(KEEL_SECRET, &body), &body), 202),
        ("keel_1KiB_bad_signature", request("acme", keel_headers("not-the-secret", &body), &body), 401),
        ("standard_1KiB_accepted", request("std", standard_headers(&body), &body), 202),
        ("stripe_1KiB_accepted", request("stripe", stripe_headers(&body), &body), 202),
        ("github_1KiB_accepted", request("gh", github_headers(&body), &body), 202),
    ];
    let mut group = c.benchmark_group("ingest_call");
    group.throughput(Throughput::Elements(1));
    for (name, request, status) in cases {
        // Measure the path we mean to measure.
        let response = runtime.block_on(invoke_http("bench", &ingest, request.clone(), &invocation()));
        assert_eq!(response.status_code, status, "{name}: {:?}", response.body);
        let ingest = &ingest;
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_batched(
                || (request.clone(), invocation()),
                |(request, invocation)| async move {
                    black_box(invoke_http("bench", ingest, request, &invocation).await)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_verify(c: &mut Criterion) {
    let secrets = [Secret::new(KEEL_SECRET.to_string())];
    let mut group = c.benchmark_group("verify_keel");
    for size in [1024, 64 * 1024] {
        let body = json_body(size);
        let headers = keel_headers(KEEL_SECRET, &body);
        assert!(verify::verify(Scheme::Keel, &secrets, &headers, body.as_bytes(), now()).is_ok());
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{}KiB", size / 1024), |b| {
            b.iter(|| verify::verify(Scheme::Keel, &secrets, black_box(&headers), black_box(body.as_bytes()), now()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handler, bench_verify);
criterion_main!(benches);
