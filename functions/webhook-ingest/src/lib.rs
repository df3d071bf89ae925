//! `POST /webhooks/{provider}`: verify the signature on the raw bytes, reject duplicates, and acknowledge only once
//! the event is durably queued.
//!
//! Happy path: one table write (a transaction putting the idempotency record and the delivery record together)
//! and one queue send. If the send fails the client gets 503 and its retry finds the records already written: as
//! long as the delivery is still `pending` (no worker has taken it), the retry sends the pointer again. The worker
//! ignores pointers to deliveries it has completed, so nothing is lost and nothing is forwarded twice.

pub mod verify;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use keel::clock::Clock;
use keel::config::{ConfigError, Env};
use keel::function::Invocation;
use keel::http::{self, Request, Response};
use keel::metrics;
use keel::openapi::{Content, Doc, Param, Reply, schema};
use keel::port::PortError;
use keel::problem::Problem;
use keel::queue::Queue;
use keel::resources::Resources;
use keel::route::{Access, Api, Route};
use keel::table::{Attrs, Expect, Item, Table, Write};
use keel_webhooks::{self as webhooks, Delivery, Status};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use verify::{Scheme, Secret};

pub const TABLE_VAR: &str = "WEBHOOKS_TABLE";
pub const QUEUE_VAR: &str = "WEBHOOK_QUEUE_URL";
const SECRET_PREFIX: &str = "WEBHOOK_SECRET_";
const SCHEME_PREFIX: &str = "WEBHOOK_SCHEME_";

/// A configured provider: its scheme and every secret that currently verifies (several during rotation).
pub struct Provider {
    pub scheme: Scheme,
    pub secrets: Vec<Secret>,
}

/// Reads every `WEBHOOK_SECRET_<NAME>` (comma-separated secrets) and its `WEBHOOK_SCHEME_<NAME>` (default `keel`).
/// An unknown scheme fails start-up; a provider without a secret is simply not configured (requests fail closed).
pub fn providers_from_env(env: &Env) -> Result<HashMap<String, Provider>, ConfigError> {
    let mut providers = HashMap::new();
    for (suffix, raw_secrets) in env.with_prefix(SECRET_PREFIX) {
        let scheme_var = format!("{SCHEME_PREFIX}{suffix}");
        let scheme = match env.get(&scheme_var) {
            None => Scheme::Keel,
            Some(raw) => raw.parse().map_err(|_| ConfigError::Malformed {
                name: scheme_var.clone(),
                reason: "expected one of keel, standard, stripe, github, slack, shopify".into(),
            })?,
        };
        let secrets: Vec<Secret> = raw_secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Secret::new(s.to_string()))
            .collect();
        if !secrets.is_empty() {
            providers.insert(suffix.to_string(), Provider { scheme, secrets });
        }
    }
    Ok(providers)
}

pub struct Ingest {
    /// Keyed by the provider's environment suffix (`ACME_PAY` for `/webhooks/acme-pay`).
    providers: HashMap<String, Provider>,
    table: Arc<dyn Table>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<Ingest, ConfigError> {
    Ok(Ingest {
        providers: providers_from_env(env)?,
        table: resources.table(TABLE_VAR)?,
        queue: resources.queue(QUEUE_VAR)?,
        clock: resources.clock(),
    })
}

impl Api for Ingest {
    /// Public: the provider's signature authenticates the request, not a token.
    const ROUTES: &'static [Route<Self>] =
        &[Route::post("/webhooks/{provider}", Access::Public, RECEIVE, |ingest, call| {
            Box::pin(ingest.receive(&call.request, &call.invocation))
        })];
}

const RECEIVE: Doc = Doc {
    summary: "Receive a webhook",
    description: "The provider's request as it sends it, verified by the provider's signature scheme (Stripe, \
        GitHub, Slack, Twilio, Shopify, Standard Webhooks, ...), recorded once per event id and queued for delivery.",
    params: &[Param::path("provider", "A configured provider's name.")],
    body: Some(Content::Bytes),
    replies: &[
        Reply::json(202, "Verified, recorded and queued.", schema::<Acknowledged>),
        Reply::json(
            200,
            "A duplicate of an event already received, or Slack's URL verification (`challenge`).",
            schema::<Acknowledged>,
        ),
        Reply::problem(400, "A signature header is missing or malformed."),
        Reply::problem(401, "The signature does not verify, or its timestamp is outside the tolerance."),
        Reply::problem(404, "No provider of this name is configured."),
        Reply::problem(413, "The body is over the size limit."),
    ],
    ..Doc::NONE
};

/// What ingest answers a provider.
#[derive(Serialize, utoipa::ToSchema)]
struct Acknowledged {
    /// `queued` or `duplicate`; absent on Slack's URL verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_id: Option<String>,
    /// Slack's URL verification challenge, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge: Option<String>,
}

impl Ingest {
    /// Ingests, counting each refusal by its code under the provider's name.
    async fn receive(&self, request: &Request, invocation: &Invocation) -> Result<Response, Problem> {
        let result = self.ingest(request, invocation).await;
        if let Err(problem) = &result {
            let provider = self.provider_label(request);
            metrics::count("WebhooksRejected", &[("Provider", provider), ("Reason", problem.code.as_str())], 1.0);
        }
        result
    }

    /// A configured provider's name; any other path counts as `unknown`, so requests cannot mint new metrics.
    fn provider_label<'r>(&self, request: &'r Request) -> &'r str {
        let name = http::path_param(request, "provider").unwrap_or_default();
        let known = webhooks::valid_provider(name) && self.providers.contains_key(&webhooks::provider_env_suffix(name));
        if known { name } else { "unknown" }
    }

    async fn ingest(&self, request: &Request, invocation: &Invocation) -> Result<Response, Problem> {
        let name = http::path_param(request, "provider").unwrap_or_default();
        let provider = webhooks::valid_provider(name)
            .then(|| self.providers.get(&webhooks::provider_env_suffix(name)))
            .flatten()
            .ok_or_else(|| Problem::not_found("no webhook provider of that name is configured"))?;
        let body = http::raw_body(request);
        if body.len() > webhooks::MAX_BODY_BYTES {
            return Err(Problem::new(
                413,
                "body_too_large",
                format!("webhook bodies are limited to {} bytes", webhooks::MAX_BODY_BYTES),
            ));
        }
        let now = self.clock.now();
        let verified = verify::verify(provider.scheme, &provider.secrets, request.headers(), body, now)
            .map_err(|e| Problem::new(e.status(), e.code(), e.to_string()))?;
        if provider.scheme == Scheme::Slack
            && let Some(challenge) = verify::slack_url_verification_challenge(body)
        {
            let challenge = Some(challenge);
            return Ok(http::json(200, &Acknowledged { status: None, delivery_id: None, challenge }));
        }
        let event_id = match verified.event_id {
            Some(id) if id.len() > webhooks::MAX_EVENT_ID_LEN => {
                return Err(Problem::bad_request(
                    "malformed_header",
                    format!("the event id is longer than {} characters", webhooks::MAX_EVENT_ID_LEN),
                ));
            }
            Some(id) if !id.is_empty() => id,
            // Without an id from the scheme, identical bodies are the same event.
            _ => format!("sha256:{}", hex::encode(Sha256::digest(body))),
        };
        let mut event_type = verified.event_type.unwrap_or_else(|| "unknown".into());
        event_type.truncate(webhooks::MAX_EVENT_TYPE_LEN);
        let delivery = Delivery {
            provider: name.to_string(),
            delivery_id: ulid::Ulid::from_datetime(now.into()).to_string(),
            event_id,
            event_type,
            status: Status::Pending,
            attempts: 0,
            last_error: None,
            received_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            duration_ms: None,
            lease_until: None,
            replays: 0,
            body_base64: webhooks::encode_body(body),
            content_type: http::header(request, "content-type").map(|s| s.chars().take(256).collect()),
            trace_header: invocation.trace_header.clone(),
            payload_removed_at: None,
        };
        self.accept(delivery, now).await
    }

    async fn accept(&self, delivery: Delivery, now: DateTime<Utc>) -> Result<Response, Problem> {
        let idempotency = idempotency_item(&delivery, now);
        let writes = vec![
            Write::Put { item: idempotency, expect: Expect::Absent },
            Write::Put { item: delivery.to_item(1), expect: Expect::Absent },
        ];
        // Concurrent copies of one event conflict inside DynamoDB's transaction engine; a short jittered retry
        // turns that into the ordinary duplicate answer instead of a 503.
        let record = || async { self.table.transact(writes.clone()).await };
        let recorded = record
            .retry(
                ExponentialBuilder::default().with_min_delay(Duration::from_millis(10)).with_max_times(3).with_jitter(),
            )
            .when(|e: &PortError| matches!(e, PortError::Unavailable(_)))
            .await;
        match recorded {
            Ok(()) => {
                webhooks::send_pointer(self.queue.as_ref(), &delivery).await.map_err(|e| unavailable("queue", &e))?;
                tracing::info!(provider = %delivery.provider, delivery_id = %delivery.delivery_id, "webhook queued");
                metrics::count("WebhooksAccepted", &[("Provider", delivery.provider.as_str())], 1.0);
                Ok(accepted(202, "queued", &delivery.delivery_id))
            }
            Err(PortError::ConditionFailed { .. }) => self.duplicate(&delivery).await,
            Err(error) => Err(unavailable("record", &error)),
        }
    }

    /// The event id was seen before. If its delivery is still pending, the earlier send may have failed: send the
    /// pointer again (the worker deduplicates). Otherwise acknowledge without doing anything.
    async fn duplicate(&self, incoming: &Delivery) -> Result<Response, Problem> {
        let key = webhooks::idempotency_key(&incoming.provider, &incoming.event_id);
        let Some(record) = self.table.get(&key).await.map_err(|e| unavailable("read", &e))? else {
            // It expired between our write and this read; the client's retry will be accepted as new.
            return Err(Problem::unavailable());
        };
        let delivery_id = record.attrs.get("delivery_id").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let original = self
            .table
            .get(&webhooks::delivery_key(&incoming.provider, &delivery_id))
            .await
            .map_err(|e| unavailable("read", &e))?
            .and_then(|item| Delivery::from_item(&item));
        if let Some(original) = original.filter(|d| d.status == Status::Pending) {
            webhooks::send_pointer(self.queue.as_ref(), &original).await.map_err(|e| unavailable("queue", &e))?;
        }
        tracing::info!(provider = %incoming.provider, delivery_id = %delivery_id, "duplicate webhook");
        metrics::count("WebhooksDuplicate", &[("Provider", incoming.provider.as_str())], 1.0);
        Ok(accepted(200, "duplicate", &delivery_id))
    }
}

fn idempotency_item(delivery: &Delivery, now: DateTime<Utc>) -> Item {
    let mut attrs = Attrs::new();
    attrs.insert("delivery_id".into(), delivery.delivery_id.clone().into());
    Item {
        key: webhooks::idempotency_key(&delivery.provider, &delivery.event_id),
        attrs,
        version: 1,
        expires_at: Some(now + webhooks::IDEMPOTENCY_WINDOW),
    }
}

fn accepted(status: u16, outcome: &'static str, delivery_id: &str) -> Response {
    let answer = Acknowledged { status: Some(outcome), delivery_id: Some(delivery_id.to_string()), challenge: None };
    http::json(status, &answer)
}

fn unavailable(step: &str, error: &PortError) -> Problem {
    tracing::warn!(step, %error, "webhook not acknowledged");
    Problem::unavailable()
}
