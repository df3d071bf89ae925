//! The organization's event feed as Server-Sent Events, `GET /v1/events/stream`: job lifecycle events and domain
//! events, the ones `GET /v1/events/feed` pages through, pushed as they settle. API Gateway HTTP APIs cannot
//! stream, so on AWS this is a Function URL in response-streaming mode that checks the issuer's JWTs itself
//! (`keel::lambda::run_stream`); keel-local serves it beside the other routes with its development tokens.
//!
//! The guarantee: within a connection every event of the feed after the position the client names is sent once,
//! in feed order, and each frame's `id` is that event's position. The position is `Last-Event-ID` (which every
//! EventSource sends when it reconnects) or, for a first connection that resumes from a JSON page, the
//! `last_event_id` query parameter; without either the stream starts at the present. So a client that reconnects
//! with the last id it saw gets what followed, with no gap and no duplicate. The one gap: the feed keeps 24 hours,
//! and a client away longer misses what expired meanwhile.
//!
//! An event reaches the stream once it has settled (`FEED_SETTLE`, 1 s) and the next poll runs (every second by
//! default): about two seconds after its transition. A comment line every 25 s keeps proxies and clients from
//! timing the connection out. A stream ends before the invocation's deadline (a Function URL invocation lasts at
//! most 15 minutes), after 14 minutes at most, or after the feed could not be read several times in a row; the
//! client reconnects with `Last-Event-ID` (the stream asks for a retry after one second).

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use keel::clock::Clock;
use keel::config::{ConfigError, Env};
use keel::function::{ByteStream, StreamFunction};
use keel::http::Request;
use keel::identity::Identity;
use keel::problem::Problem;
use keel::resources::Resources;
use keel::table::Table;
use keel_jobs::store::{feed_page, settled_position};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub const TABLE_VAR: &str = "JOBS_TABLE";
pub const PATH: &str = "/v1/events/stream";
pub const POLL_VAR: &str = "EVENTS_STREAM_POLL_MILLIS";
pub const HEARTBEAT_VAR: &str = "EVENTS_STREAM_HEARTBEAT_SECONDS";
pub const LONGEST_VAR: &str = "EVENTS_STREAM_MAX_SECONDS";
pub const LAST_EVENT_ID: &str = "last-event-id";
pub const LAST_EVENT_ID_PARAM: &str = "last_event_id";
/// After this many failed reads in a row the stream ends, so the client reconnects (perhaps to a healthier
/// instance) instead of hearing nothing.
pub const FAILED_READS: u32 = 5;
/// Events read per query; a full page is followed at once by the next.
const PAGE: usize = 100;
/// What the client waits before it reconnects, in milliseconds (the SSE `retry` field).
const RETRY_MILLIS: u64 = 1000;

/// Why a stream does not open or ends early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("`{0}` is not a position of the feed (the `id` of an event this stream sent)")]
    NotAPosition(String),
    #[error("the feed could not be read {FAILED_READS} times in a row: {0}")]
    FeedUnavailable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How often the feed is read while nothing new arrives.
    pub poll: Duration,
    /// A comment line after this long without a write.
    pub heartbeat: Duration,
    /// The longest a stream lasts, whatever the deadline.
    pub longest: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { poll: Duration::from_secs(1), heartbeat: Duration::from_secs(25), longest: Duration::from_secs(14 * 60) }
    }
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let default = Self::default();
        let positive = |name: &str, value: u64| {
            if value == 0 {
                Err(ConfigError::Malformed { name: name.into(), reason: "must be more than 0".into() })
            } else {
                Ok(value)
            }
        };
        let poll = positive(POLL_VAR, env.parse_or(POLL_VAR, "milliseconds", 1000u64)?)?;
        let heartbeat = positive(HEARTBEAT_VAR, env.parse_or(HEARTBEAT_VAR, "seconds", 25u64)?)?;
        let longest = positive(LONGEST_VAR, env.parse_or(LONGEST_VAR, "seconds", default.longest.as_secs())?)?;
        Ok(Self {
            poll: Duration::from_millis(poll),
            heartbeat: Duration::from_secs(heartbeat),
            longest: Duration::from_secs(longest),
        })
    }
}

pub struct EventsStream {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

pub fn build(env: &Env, resources: &dyn Resources) -> Result<EventsStream, ConfigError> {
    Ok(EventsStream::new(resources.table(TABLE_VAR)?, resources.clock(), Settings::from_env(env)?))
}

impl EventsStream {
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Self { table, clock, settings }
    }
}

/// The position a request resumes after: `Last-Event-ID`, else `?last_event_id=`; `None` to start at the present.
pub fn resume_position(request: &Request) -> Result<Option<String>, StreamError> {
    let named = keel::http::header(request, LAST_EVENT_ID)
        .or_else(|| keel::http::query_param(request, LAST_EVENT_ID_PARAM))
        .map(str::trim)
        .filter(|id| !id.is_empty());
    match named {
        None => Ok(None),
        Some(id) => match ulid::Ulid::from_string(id) {
            Ok(position) => Ok(Some(position.to_string())),
            Err(_) => Err(StreamError::NotAPosition(id.chars().take(64).collect())),
        },
    }
}

/// One SSE frame of an event: its position as the `id`, the event as one line of JSON.
pub fn event_frame(position: &str, event: &keel_jobs::events::FeedEvent) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!("id: {position}\ndata: {data}\n\n"))
}

pub const HEARTBEAT_FRAME: &[u8] = b": heartbeat\n\n";

#[async_trait]
impl StreamFunction for EventsStream {
    fn path(&self) -> &'static str {
        PATH
    }

    fn content_type(&self) -> &'static str {
        "text/event-stream"
    }

    async fn open(&self, caller: Identity, request: &Request, until: DateTime<Utc>) -> Result<ByteStream, Problem> {
        let after =
            resume_position(request).map_err(|error| Problem::invalid_param(LAST_EVENT_ID_PARAM, error.to_string()))?;
        let now = self.clock.now();
        let longest = chrono::Duration::from_std(self.settings.longest).unwrap_or(chrono::Duration::MAX);
        let end = until.min(now + longest);
        let after = after.unwrap_or_else(|| settled_position(now).to_string());
        let (sender, receiver) = mpsc::channel::<Bytes>(16);
        let pump =
            Pump { table: self.table.clone(), clock: self.clock.clone(), settings: self.settings, org: caller.org_id };
        tokio::spawn(async move {
            let outcome = pump.run(after, end, sender).await;
            if let Err(error) = outcome {
                tracing::warn!(%error, "the event stream ended early");
            }
        });
        Ok(Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        })))
    }
}

/// Reads the feed and writes frames until the end, the client leaving, or the feed failing too often.
struct Pump {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    org: String,
}

impl Pump {
    async fn run(self, mut after: String, end: DateTime<Utc>, sender: mpsc::Sender<Bytes>) -> Result<(), StreamError> {
        if sender.send(Bytes::from(format!("retry: {RETRY_MILLIS}\n\n"))).await.is_err() {
            return Ok(());
        }
        let mut last_write = tokio::time::Instant::now();
        let mut failures = 0;
        loop {
            let now = self.clock.now();
            if now >= end {
                return Ok(());
            }
            match feed_page(self.table.as_ref(), now, &self.org, Some(after.clone()), PAGE).await {
                Ok((events, _)) => {
                    failures = 0;
                    let full = events.len() == PAGE;
                    for (position, event) in events {
                        if sender.send(event_frame(&position, &event)).await.is_err() {
                            return Ok(());
                        }
                        after = position;
                        last_write = tokio::time::Instant::now();
                    }
                    if full {
                        continue;
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "the feed could not be read");
                    if failures >= FAILED_READS {
                        return Err(StreamError::FeedUnavailable(error.to_string()));
                    }
                }
            }
            if last_write.elapsed() >= self.settings.heartbeat {
                if sender.send(Bytes::from_static(HEARTBEAT_FRAME)).await.is_err() {
                    return Ok(());
                }
                last_write = tokio::time::Instant::now();
            }
            let left = (end - self.clock.now()).to_std().unwrap_or_default();
            let next_heartbeat = self.settings.heartbeat.saturating_sub(last_write.elapsed());
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll.min(left).min(next_heartbeat)) => {}
                () = sender.closed() => return Ok(()),
            }
        }
    }
}
