//! The operator API for the webhook pipeline (role `platform-admin`): the delivery log with filters and cursors,
//! one delivery with its payload, replay of one or a filtered set, and redrive of the dead-letter queue. Each
//! replay and redrive is audited (`keel::audit`, in the webhooks table) before it is carried out.

use chrono::{DateTime, Duration, Utc};
use keel::audit::AuditEntry;
use keel::clock::Clock;
use keel::config::{ConfigError, Env};
use keel::http::{self, Request, Response};
use keel::idempotency::Idempotency;
use keel::openapi::{Content, Doc, Param, Reply, inline, schema};
use keel::port::PortError;
use keel::problem::Problem;
use keel::queue::Queue;
use keel::ratelimit::RateLimits;
use keel::resources::Resources;
use keel::route::{Access, Api, Call, Route};
use keel::table::{Query, Table};
use keel_webhooks::{self as webhooks, Delivery, Status};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use ulid::Ulid;

pub const TABLE_VAR: &str = "WEBHOOKS_TABLE";
pub const QUEUE_VAR: &str = "WEBHOOK_QUEUE_URL";
pub const DLQ_VAR: &str = "WEBHOOK_DLQ_URL";

/// Page size cap of the delivery log, and of one filtered replay.
pub const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 50;
/// Cap on one redrive call; call again for more.
pub const MAX_REDRIVE: usize = 1000;
/// Backend pages one list call may scan while filtering, so a sparse filter cannot run unbounded.
const MAX_SCAN_PAGES: usize = 10;

pub struct Ops {
    table: Arc<dyn Table>,
    queue: Arc<dyn Queue>,
    dead_letters: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    idempotency: Idempotency,
    rate_limits: RateLimits,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<Ops, ConfigError> {
    Ok(Ops {
        table: resources.table(TABLE_VAR)?,
        queue: resources.queue(QUEUE_VAR)?,
        dead_letters: resources.queue(DLQ_VAR)?,
        clock: resources.clock(),
        idempotency: Idempotency::from_resources(resources)?,
        rate_limits: RateLimits::shared(env, resources)?,
    })
}

impl Api for Ops {
    fn idempotency(&self) -> Option<&Idempotency> {
        Some(&self.idempotency)
    }

    fn rate_limits(&self) -> Option<&RateLimits> {
        Some(&self.rate_limits)
    }

    const ROUTES: &'static [Route<Self>] = &[
        Route::get("/v1/webhooks/{provider}/deliveries", Access::PlatformAdmin, LIST, |ops, call| {
            Box::pin(ops.list(&call.request))
        }),
        Route::get("/v1/webhooks/{provider}/deliveries/{deliveryId}", Access::PlatformAdmin, SHOW, |ops, call| {
            Box::pin(ops.show(&call.request))
        }),
        Route::post(
            "/v1/webhooks/{provider}/deliveries/{deliveryId}/replay",
            Access::PlatformAdmin,
            REPLAY_ONE,
            |ops, call| Box::pin(ops.replay_one(call)),
        ),
        Route::post("/v1/webhooks/{provider}/replay", Access::PlatformAdmin, REPLAY_MANY, |ops, call| {
            Box::pin(ops.replay_many(call))
        }),
        Route::post("/v1/webhooks/dead-letters/redrive", Access::PlatformAdmin, REDRIVE, |ops, call| {
            Box::pin(ops.redrive(call))
        }),
    ];
}

const PROVIDER: Param = Param::path("provider", "The provider's name, as in `POST /webhooks/{provider}`.");
const DELIVERY: Param = Param::path("deliveryId", "The delivery's id (a ULID).");
const NO_PROVIDER: Reply = Reply::problem(404, "The provider name is not a valid one.");
const NO_DELIVERY: Reply = Reply::problem(404, "No delivery of this provider has this id.");
const BAD_FILTER: Reply = Reply::problem(422, "A filter or the cursor is invalid (`pointer` names it).");
const BUSY: Reply = Reply::problem(
    409,
    "A worker is processing the delivery, or it changed meanwhile (retry later); or, `payload_removed`, its payload \
     was removed after 24 hours.",
);

const LIST: Doc = Doc {
    summary: "List deliveries",
    description: "The provider's delivery log, newest first, without payloads.",
    params: &[
        PROVIDER,
        Param::query("status", "Only deliveries in this status.", schema::<Status>),
        Param::query("event_type", "Only deliveries of this event type.", inline::<String>),
        Param::query("since", "Only deliveries received at or after this instant (RFC 3339).", inline::<String>),
        Param::query("until", "Only deliveries received before this instant (RFC 3339).", inline::<String>),
        Param::query("limit", "Page size, 1 to 100 (50 when absent).", inline::<u32>),
        Param::query("cursor", "`next_cursor` of the previous page.", inline::<String>),
    ],
    replies: &[Reply::json(200, "A page of deliveries.", schema::<DeliveryPage>), NO_PROVIDER, BAD_FILTER],
    ..Doc::NONE
};
const SHOW: Doc = Doc {
    summary: "Read a delivery",
    params: &[PROVIDER, DELIVERY],
    replies: &[Reply::json(200, "The delivery with its payload.", schema::<DeliveryDetail>), NO_DELIVERY],
    ..Doc::NONE
};
const REPLAY_ONE: Doc = Doc {
    summary: "Replay a delivery",
    description: "Puts the delivery back to `pending` and queues it again.",
    params: &[PROVIDER, DELIVERY],
    replies: &[Reply::json(202, "The delivery is queued again.", schema::<Replayed>), NO_DELIVERY, BUSY],
    ..Doc::NONE
};
const REPLAY_MANY: Doc = Doc {
    summary: "Replay the deliveries a filter selects",
    description: "At most `limit` deliveries received since `since` (required, so a replay is always bounded).",
    params: &[PROVIDER],
    body: Some(Content::Json(schema::<Filter>)),
    replies: &[
        Reply::json(202, "What was queued again and what was skipped (busy or changed).", schema::<Replayed>),
        NO_PROVIDER,
        Reply::problem(400, "The body is missing."),
        Reply::problem(422, "The body is not a filter, or a filter is invalid (`pointer` names it)."),
    ],
    ..Doc::NONE
};
const REDRIVE: Doc = Doc {
    summary: "Redrive the dead-letter queue",
    description: "Moves up to `limit` dead letters (1000 when absent) back to the webhook queue.",
    body: Some(Content::Json(schema::<RedriveBody>)),
    body_optional: true,
    replies: &[
        Reply::json(200, "How many moved and how many remain.", schema::<Redriven>),
        Reply::problem(422, "The body is not JSON of this shape, or `limit` is out of range."),
    ],
    ..Doc::NONE
};

/// A delivery as the log lists it: everything but the payload, and the payload's size.
#[derive(Serialize, utoipa::ToSchema)]
struct DeliverySummary<'d> {
    provider: &'d str,
    delivery_id: &'d str,
    event_id: &'d str,
    event_type: &'d str,
    status: Status,
    /// Worker attempts so far.
    attempts: u32,
    last_error: Option<&'d str>,
    received_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    /// Time spent in the last attempt, in milliseconds.
    duration_ms: Option<i64>,
    /// Until when the worker that claimed it holds it.
    lease_until: Option<DateTime<Utc>>,
    /// How many times an operator replayed it.
    replays: u32,
    content_type: Option<&'d str>,
    trace_header: Option<&'d str>,
    body_size: usize,
    /// When the payload was removed, 24 hours after it arrived (the record stays 7 days).
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_removed_at: Option<DateTime<Utc>>,
}

impl<'d> DeliverySummary<'d> {
    fn of(delivery: &'d Delivery) -> Self {
        DeliverySummary {
            provider: &delivery.provider,
            delivery_id: &delivery.delivery_id,
            event_id: &delivery.event_id,
            event_type: &delivery.event_type,
            status: delivery.status,
            attempts: delivery.attempts,
            last_error: delivery.last_error.as_deref(),
            received_at: delivery.received_at,
            updated_at: delivery.updated_at,
            started_at: delivery.started_at,
            completed_at: delivery.completed_at,
            duration_ms: delivery.duration_ms,
            lease_until: delivery.lease_until,
            replays: delivery.replays,
            content_type: delivery.content_type.as_deref(),
            trace_header: delivery.trace_header.as_deref(),
            body_size: delivery.body().len(),
            payload_removed_at: delivery.payload_removed_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeliveryPage<'d> {
    items: Vec<DeliverySummary<'d>>,
    next_cursor: Option<String>,
}

/// One delivery with its payload: as received (base64), and parsed when it is JSON.
#[derive(Serialize, utoipa::ToSchema)]
struct DeliveryDetail<'d> {
    #[serde(flatten)]
    summary: DeliverySummary<'d>,
    payload_base64: &'d str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Replayed {
    replayed: Vec<String>,
    /// Busy or changed while replaying (a filtered replay only).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<Vec<String>>,
    /// Where a further filtered replay would continue.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Option<String>>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    /// At most this many, 1 to 1000.
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Redriven {
    redriven: usize,
    /// The queue's approximate depth after the move, when it could be read.
    remaining: Option<u64>,
}

/// Filters shared by the list and the filtered replay.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Filter {
    status: Option<String>,
    event_type: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

struct Parsed {
    status: Option<Status>,
    event_type: Option<String>,
    query: Query,
}

impl Filter {
    fn from_query(request: &Request) -> Result<Self, Problem> {
        let limit = match http::query_param(request, "limit") {
            None => None,
            Some(raw) => Some(raw.parse().map_err(|_| {
                Problem::unprocessable("invalid_parameter", format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                    .at("limit")
            })?),
        };
        Ok(Self {
            status: http::query_param(request, "status").map(str::to_string),
            event_type: http::query_param(request, "event_type").map(str::to_string),
            since: http::query_param(request, "since").map(str::to_string),
            until: http::query_param(request, "until").map(str::to_string),
            limit,
        })
    }

    fn parse(&self, provider: &str, cursor: Option<&str>) -> Result<Parsed, Problem> {
        let status = match &self.status {
            None => None,
            Some(raw) => Some(Status::parse(raw).ok_or_else(|| {
                Problem::unprocessable(
                    "invalid_parameter",
                    "status must be one of pending, processing, completed, failed, dead_letter",
                )
                .at("status")
            })?),
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(
                Problem::unprocessable("invalid_parameter", format!("limit must be from 1 to {MAX_LIMIT}")).at("limit")
            );
        }
        let mut query = Query::partition(webhooks::log_partition(provider));
        query.descending = true;
        query.limit = limit;
        query.sk_from = self.since.as_deref().map(|t| time_bound(t, "since", 0)).transpose()?;
        query.sk_to = self.until.as_deref().map(|t| time_bound(t, "until", u128::MAX)).transpose()?;
        query.after = cursor.map(decode_cursor).transpose()?;
        Ok(Parsed { status, event_type: self.event_type.clone(), query })
    }
}

/// The smallest (or largest) delivery id of the given instant.
fn time_bound(raw: &str, field: &str, random: u128) -> Result<String, Problem> {
    let at = DateTime::parse_from_rfc3339(raw).map_err(|_| {
        Problem::unprocessable("invalid_parameter", format!("{field} must be an RFC 3339 timestamp")).at(field)
    })?;
    let ms = u64::try_from(at.timestamp_millis())
        .map_err(|_| Problem::unprocessable("invalid_parameter", format!("{field} is before 1970")).at(field))?;
    Ok(Ulid::from_parts(ms, random).to_string())
}

fn decode_cursor(raw: &str) -> Result<String, Problem> {
    http::decode_cursor(raw)
        .filter(|sk| Ulid::from_string(sk).is_ok())
        .ok_or_else(|| Problem::unprocessable("invalid_cursor", "the cursor is not one this API returned").at("cursor"))
}

fn provider_param(request: &Request) -> Result<&str, Problem> {
    http::path_param(request, "provider")
        .filter(|p| webhooks::valid_provider(p))
        .ok_or_else(|| Problem::not_found("no such provider"))
}

fn unavailable(error: &PortError) -> Problem {
    tracing::warn!(%error, "operator request failed on a backend");
    Problem::unavailable()
}

impl Ops {
    /// Scans the log newest first, applying the filters, until the page is full or the scan budget is spent.
    /// Each delivery comes with the version it was read at, for a later conditional write.
    async fn scan(&self, parsed: &Parsed) -> Result<(Vec<(Delivery, u64)>, Option<String>), Problem> {
        let mut query = parsed.query.clone();
        let mut found = Vec::new();
        for _ in 0..MAX_SCAN_PAGES {
            query.limit = parsed.query.limit - found.len();
            let page = self.table.query(&query).await.map_err(|e| unavailable(&e))?;
            for item in &page.items {
                let Some(delivery) = Delivery::from_item(item) else { continue };
                let status_ok = parsed.status.is_none_or(|s| s == delivery.status);
                let type_ok = parsed.event_type.as_ref().is_none_or(|t| *t == delivery.event_type);
                if status_ok && type_ok {
                    found.push((delivery, item.version));
                }
            }
            match page.next {
                None => return Ok((found, None)),
                Some(next) if found.len() >= parsed.query.limit => {
                    return Ok((found, Some(http::encode_cursor(&next))));
                }
                Some(next) => query.after = Some(next),
            }
        }
        Ok((found, query.after.as_deref().map(http::encode_cursor)))
    }

    async fn list(&self, request: &Request) -> Result<Response, Problem> {
        let provider = provider_param(request)?;
        let parsed = Filter::from_query(request)?.parse(provider, http::query_param(request, "cursor"))?;
        let (deliveries, next) = self.scan(&parsed).await?;
        let items = deliveries.iter().map(|(delivery, _)| DeliverySummary::of(delivery)).collect();
        Ok(http::json(200, &DeliveryPage { items, next_cursor: next }))
    }

    async fn load(&self, request: &Request) -> Result<(Delivery, u64), Problem> {
        let provider = provider_param(request)?;
        let id = http::path_param(request, "deliveryId")
            .filter(|id| Ulid::from_string(id).is_ok())
            .ok_or_else(|| Problem::not_found("no such delivery"))?;
        let item = self
            .table
            .get(&webhooks::delivery_key(provider, id))
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| Problem::not_found("no such delivery"))?;
        let delivery = Delivery::from_item(&item).ok_or_else(|| Problem::not_found("no such delivery"))?;
        Ok((delivery, item.version))
    }

    async fn show(&self, request: &Request) -> Result<Response, Problem> {
        let (delivery, _) = self.load(request).await?;
        let payload = serde_json::from_slice::<Value>(&delivery.body()).ok();
        let detail =
            DeliveryDetail { summary: DeliverySummary::of(&delivery), payload_base64: &delivery.body_base64, payload };
        Ok(http::json(200, &detail))
    }

    /// Puts the delivery back to `pending` and queues it again. Refuses one that a worker holds right now.
    async fn replay(&self, delivery: Delivery, version: u64) -> Result<(), Problem> {
        let now = self.clock.now();
        match webhooks::replay(self.table.as_ref(), self.queue.as_ref(), now, delivery, version).await {
            Ok(webhooks::Replay::Queued) => Ok(()),
            Ok(webhooks::Replay::Busy) => {
                Err(Problem::new(409, "delivery_in_progress", "a worker is processing this delivery; retry later"))
            }
            Ok(webhooks::Replay::Changed) => {
                Err(Problem::new(409, "delivery_changed", "the delivery changed while replaying; retry"))
            }
            Ok(webhooks::Replay::PayloadRemoved) => Err(Problem::new(
                409,
                "payload_removed",
                "the delivery's payload was removed after its 24-hour retention; there is nothing to replay",
            )),
            Err(error) => Err(unavailable(&error)),
        }
    }

    /// Records an operator's request in the audit trail before it is carried out, so none runs without its entry
    /// (one that then fails leaves its entry: the trail records what was asked).
    async fn audit(&self, call: &Call, action: &str, resource: String, asked: Value) -> Result<(), Problem> {
        let actor = &call.identity()?.user_id;
        let entry = AuditEntry::new(self.clock.now(), actor, None, action, resource).with_change(None, Some(asked));
        entry.append(self.table.as_ref()).await.map_err(|e| unavailable(&e))
    }

    async fn replay_one(&self, call: &Call) -> Result<Response, Problem> {
        let request = &call.request;
        let (delivery, version) = self.load(request).await?;
        let id = delivery.delivery_id.clone();
        let resource = format!("webhook:{}/delivery:{id}", delivery.provider);
        self.audit(call, "webhooks.delivery.replay", resource, Value::Null).await?;
        self.replay(delivery, version).await?;
        Ok(http::json(202, &Replayed { replayed: vec![id], skipped: None, next_cursor: None }))
    }

    async fn replay_many(&self, call: &Call) -> Result<Response, Problem> {
        let request = &call.request;
        let provider = provider_param(request)?;
        let filter: Filter = http::json_body(request)?;
        if filter.since.is_none() {
            return Err(
                Problem::unprocessable("invalid_body", "since is required, so a replay is always bounded").at("/since")
            );
        }
        let parsed = filter.parse(provider, None)?;
        let asked = serde_json::from_slice(http::raw_body(request)).unwrap_or(Value::Null);
        self.audit(call, "webhooks.deliveries.replay", format!("webhook:{provider}"), asked).await?;
        let (deliveries, next) = self.scan(&parsed).await?;
        let mut replayed = Vec::new();
        let mut skipped = Vec::new();
        for (delivery, version) in deliveries {
            let id = delivery.delivery_id.clone();
            // The version read by the scan: a delivery that changed since is skipped (409), never overwritten.
            match self.replay(delivery, version).await {
                Ok(()) => replayed.push(id),
                Err(problem) if problem.status == 409 => skipped.push(id),
                Err(problem) => return Err(problem),
            }
        }
        Ok(http::json(202, &Replayed { replayed, skipped: Some(skipped), next_cursor: Some(next) }))
    }

    /// Moves dead letters back to the webhook queue: send first, then delete, so a failure in between leaves a
    /// copy in each queue (the worker deduplicates) rather than none.
    async fn redrive(&self, call: &Call) -> Result<Response, Problem> {
        let (request, invocation) = (&call.request, &call.invocation);
        let body: RedriveBody =
            if http::raw_body(request).is_empty() { RedriveBody::default() } else { http::json_body(request)? };
        let limit = body.limit.unwrap_or(MAX_REDRIVE);
        if !(1..=MAX_REDRIVE).contains(&limit) {
            return Err(
                Problem::unprocessable("invalid_body", format!("limit must be from 1 to {MAX_REDRIVE}")).at("/limit")
            );
        }
        self.audit(call, "webhooks.dlq.redrive", "webhook:dead-letters".into(), serde_json::json!({"limit": limit}))
            .await?;
        let stop_at = invocation.deadline - Duration::seconds(3);
        let mut moved = 0;
        while moved < limit && self.clock.now() < stop_at {
            let batch = self
                .dead_letters
                .receive((limit - moved).min(keel::queue::MAX_RECEIVE), std::time::Duration::ZERO)
                .await
                .map_err(|e| unavailable(&e))?;
            if batch.is_empty() {
                break;
            }
            for message in batch {
                let mut attributes = message.attributes.clone();
                attributes.remove("keel-dead-letter-reason");
                self.queue.send(&message.body, &attributes).await.map_err(|e| unavailable(&e))?;
                self.dead_letters.delete(&message.receipt).await.map_err(|e| unavailable(&e))?;
                moved += 1;
            }
        }
        let remaining = self.dead_letters.depth().await.ok();
        Ok(http::json(200, &Redriven { redriven: moved, remaining }))
    }
}
