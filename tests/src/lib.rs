//! Support for Keel's pipeline and end-to-end tests: signed webhook requests, API Gateway events, an embedded
//! world of adapters, and port decorators that count calls.

// Test support fails the test that uses it by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription, ApiGatewayV2httpRequest,
    ApiGatewayV2httpResponse,
};
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue, Method};
use keel::bus::EventBus;
use keel::clock::{Clock, ManualClock};
use keel::function::{HttpFunction, Invocation};
use keel::port::PortError;
use keel::queue::{MessageAttrs, Queue, Received};
use keel::resources::StaticResources;
use keel::table::{Expect, Item, Key, Page, Query, Table, Write};
use keel_embedded::{EmbeddedBus, EmbeddedDb, EmbeddedQueue, QueueSpec};
use sha2::Sha256;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the published test vectors and specifications are (`$KEEL_FIXTURES_DIR`, else `../shared/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("KEEL_FIXTURES_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/fixtures"))
}

/// Reads one of the sample events in `events/`, the same files `sam local invoke -e` takes.
pub fn sample_event<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = repo_root().join("events").join(name);
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Hex HMAC-SHA256 of `{timestamp}.{body}`: Keel's own scheme.
pub fn keel_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Headers of a correctly signed Keel-scheme webhook.
pub fn keel_headers(secret: &str, event_id: &str, at: DateTime<Utc>, body: &[u8]) -> Vec<(String, String)> {
    let timestamp = at.timestamp().to_string();
    vec![
        ("x-webhook-event-id".into(), event_id.into()),
        ("x-webhook-timestamp".into(), timestamp.clone()),
        ("x-webhook-signature".into(), keel_signature(secret, &timestamp, body)),
        ("content-type".into(), "application/json".into()),
    ]
}

/// An API Gateway HTTP API (payload 2.0) request as the ingest route receives it.
pub fn webhook_request(provider: &str, headers: &[(String, String)], body: &[u8]) -> ApiGatewayV2httpRequest {
    let mut request = api_request(Method::POST, "POST /webhooks/{provider}", &format!("/webhooks/{provider}"));
    request.path_parameters.insert("provider".into(), provider.into());
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            request.headers.append(name, value);
        }
    }
    set_body(&mut request, body);
    request
}

/// An event for `route_key` at the concrete `path`, as API Gateway sends it (path parameters are the caller's to add).
pub fn api_request(method: Method, route_key: &str, path: &str) -> ApiGatewayV2httpRequest {
    let mut request: ApiGatewayV2httpRequest = serde_json::from_value(serde_json::json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "requestContext": {"routeKey": route_key, "http": {"method": method.as_str(), "path": path}},
    }))
    .expect("a valid API Gateway event");
    request.headers.insert("host", HeaderValue::from_static("api.keel.test"));
    request
}

/// An event for the template route `route` (`/v1/orgs/{orgId}`) at `path` (`/v1/orgs/acme?limit=1`), with the
/// path parameters read off `path` by position and the query string split, as API Gateway fills them.
pub fn route_request(method: Method, route: &str, path: &str) -> ApiGatewayV2httpRequest {
    let (bare, query) = path.split_once('?').unwrap_or((path, ""));
    let mut request = api_request(method.clone(), &format!("{method} {route}"), bare);
    for (name, value) in route.split('/').zip(bare.split('/')) {
        if let Some(name) = name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            request.path_parameters.insert(name.into(), value.into());
        }
    }
    if !query.is_empty() {
        request.raw_query_string = Some(query.to_string());
        let mut pairs: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.entry(k.to_string()).or_default().push(v.to_string());
        }
        request.query_string_parameters = pairs.into();
    }
    request
}

/// Sets the body the way API Gateway does: text when UTF-8, base64 otherwise.
pub fn set_body(request: &mut ApiGatewayV2httpRequest, body: &[u8]) {
    use base64::Engine;
    match std::str::from_utf8(body) {
        Ok(text) => {
            request.body = Some(text.to_string());
            request.is_base64_encoded = false;
        }
        Err(_) => {
            request.body = Some(base64::engine::general_purpose::STANDARD.encode(body));
            request.is_base64_encoded = true;
        }
    }
}

/// Adds verified JWT claims as API Gateway's authorizer puts them (arrays flattened to `[a b]`).
pub fn with_claims(
    mut request: ApiGatewayV2httpRequest,
    user: &str,
    org: &str,
    roles: &[&str],
) -> ApiGatewayV2httpRequest {
    let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
    jwt.claims.insert("sub".into(), user.into());
    jwt.claims.insert("org_id".into(), org.into());
    jwt.claims.insert("roles".into(), format!("[{}]", roles.join(" ")));
    let mut authorizer = ApiGatewayRequestAuthorizer::default();
    authorizer.jwt = Some(jwt);
    request.request_context.authorizer = Some(authorizer);
    request
}

pub fn invocation(clock: &dyn Clock) -> Invocation {
    Invocation {
        request_id: ulid::Ulid::new().to_string(),
        deadline: clock.now() + chrono::Duration::seconds(30),
        trace_header: Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into()),
        stop: Default::default(),
    }
}

/// Calls an HTTP function with an API Gateway event through `lambda_http`'s conversion, as Lambda does.
#[async_trait]
pub trait CallHttp {
    async fn call(&self, event: ApiGatewayV2httpRequest, invocation: Invocation) -> ApiGatewayV2httpResponse;
}

#[async_trait]
impl<F: HttpFunction> CallHttp for F {
    async fn call(&self, event: ApiGatewayV2httpRequest, invocation: Invocation) -> ApiGatewayV2httpResponse {
        keel::lambda::invoke_http("test", self, event, &invocation).await
    }
}

/// A response body's bytes (API Gateway's base64 decoded).
pub fn body_bytes(response: &ApiGatewayV2httpResponse) -> Vec<u8> {
    use base64::Engine;
    let raw: &[u8] = response.body.as_deref().unwrap_or_default();
    if response.is_base64_encoded {
        base64::engine::general_purpose::STANDARD.decode(raw).expect("a base64 body")
    } else {
        raw.to_vec()
    }
}

pub fn body_text(response: &ApiGatewayV2httpResponse) -> String {
    String::from_utf8_lossy(&body_bytes(response)).into_owned()
}

pub fn body_json(response: &ApiGatewayV2httpResponse) -> serde_json::Value {
    serde_json::from_slice(&body_bytes(response)).unwrap_or(serde_json::Value::Null)
}

/// Every message currently visible on `queue`, received (and so hidden for the visibility timeout).
pub async fn drain(queue: &dyn Queue) -> Vec<Received> {
    let mut all = Vec::new();
    loop {
        let batch = queue.receive(10, Duration::ZERO).await.expect("receive");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// Received messages as the SQS event Lambda would hand the worker.
pub fn sqs_event(messages: &[Received]) -> SqsEvent {
    let mut event = SqsEvent::default();
    for received in messages {
        let mut message = SqsMessage::default();
        message.message_id = Some(received.message_id.clone());
        message.receipt_handle = Some(received.receipt.clone());
        message.body = Some(received.body.clone());
        message.event_source = Some("aws:sqs".into());
        message.attributes.insert("ApproximateReceiveCount".into(), received.receive_count.to_string());
        event.records.push(message);
    }
    event
}

/// Counts calls through a table, so tests can assert how many writes a path makes.
pub struct CountingTable {
    pub inner: Arc<dyn Table>,
    pub writes: AtomicUsize,
    pub reads: AtomicUsize,
}

impl CountingTable {
    pub fn new(inner: Arc<dyn Table>) -> Arc<Self> {
        Arc::new(Self { inner, writes: AtomicUsize::new(0), reads: AtomicUsize::new(0) })
    }
    pub fn counts(&self) -> (usize, usize) {
        (self.reads.load(Ordering::SeqCst), self.writes.load(Ordering::SeqCst))
    }
}

#[async_trait]
impl Table for CountingTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, PortError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn put(&self, item: Item, expect: Expect) -> Result<(), PortError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.put(item, expect).await
    }
    async fn delete(&self, key: &Key, expect: Expect) -> Result<(), PortError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key, expect).await
    }
    async fn query(&self, query: &Query) -> Result<Page, PortError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.query(query).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<(), PortError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.transact(writes).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}

/// Counts sends through a queue.
pub struct CountingQueue {
    pub inner: Arc<dyn Queue>,
    pub sends: AtomicUsize,
}

#[async_trait]
impl Queue for CountingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, body: &str, attributes: &MessageAttrs) -> Result<String, PortError> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        self.inner.send(body, attributes).await
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, PortError> {
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), PortError> {
        self.inner.delete(receipt).await
    }
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), PortError> {
        self.inner.change_visibility(receipt, timeout).await
    }
    async fn depth(&self) -> Result<u64, PortError> {
        self.inner.depth().await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}

/// The webhook pipeline's backends on the embedded adapters, in a temporary directory, on a manual clock.
pub struct World {
    pub dir: tempfile::TempDir,
    pub db: EmbeddedDb,
    pub clock: Arc<ManualClock>,
    pub table: Arc<dyn Table>,
    pub queue: Arc<EmbeddedQueue>,
    pub dead_letters: Arc<EmbeddedQueue>,
    pub bus: Arc<EmbeddedBus>,
    pub idempotency: Arc<dyn Table>,
    pub rate_limits: Arc<dyn Table>,
}

pub const MAX_RECEIVE_COUNT: u32 = 3;

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = EmbeddedDb::open(dir.path()).expect("open embedded db");
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let table: Arc<dyn Table> = Arc::new(db.table("WebhooksTable", dyn_clock.clone()));
        let idempotency: Arc<dyn Table> = Arc::new(db.table("IdempotencyTable", dyn_clock.clone()));
        let rate_limits: Arc<dyn Table> = Arc::new(db.table("RateLimitsTable", dyn_clock.clone()));
        let dead_letters = Arc::new(db.queue(
            QueueSpec {
                name: "WebhookDeadLetterQueue".into(),
                visibility_timeout: Duration::from_secs(30),
                max_receive_count: None,
                dead_letter_queue: None,
                retention: Duration::from_secs(14 * 86400),
            },
            dyn_clock.clone(),
        ));
        let queue = Arc::new(db.queue(
            QueueSpec {
                name: "WebhookQueue".into(),
                visibility_timeout: Duration::from_secs(180),
                max_receive_count: Some(MAX_RECEIVE_COUNT),
                dead_letter_queue: Some("WebhookDeadLetterQueue".into()),
                retention: Duration::from_secs(4 * 86400),
            },
            dyn_clock,
        ));
        let bus = Arc::new(db.bus("EventBus"));
        Self { dir, db, clock, table, queue, dead_letters, bus, idempotency, rate_limits }
    }

    /// Resources wired the way template.yaml wires the three webhook functions.
    pub fn resources(&self) -> StaticResources {
        let bus: Arc<dyn EventBus> = self.bus.clone();
        StaticResources::new(self.clock.clone())
            .with_table("WEBHOOKS_TABLE", self.table.clone())
            .with_queue("WEBHOOK_QUEUE_URL", self.queue.clone())
            .with_queue("WEBHOOK_DLQ_URL", self.dead_letters.clone())
            .with_bus("EVENT_BUS_NAME", bus)
            .with_table(keel::idempotency::TABLE_VAR, self.idempotency.clone())
            .with_table(keel::ratelimit::TABLE_VAR, self.rate_limits.clone())
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
