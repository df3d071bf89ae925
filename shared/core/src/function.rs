//! The four shapes of Keel function, as AWS invokes them: an HTTP API route (payload format 2.0, through
//! `lambda_http`), an SQS event source mapping with partial batch responses, an EventBridge Scheduler target, and a
//! Function URL that streams its response.
//! Lambda's runtime (`keel::lambda`) and the local host both call these.

use crate::http::{Request, Response};
use crate::identity::Identity;
use crate::openapi::Doc;
use crate::problem::Problem;
use crate::queue::Queue;
use crate::route::{Access, Api, serve};
use async_trait::async_trait;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use http::Method;
use lambda_http::RequestExt;
use std::collections::HashMap;

/// What the invocation knows about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub request_id: String,
    /// When the runtime will stop the invocation; long work stops before this.
    pub deadline: DateTime<Utc>,
    /// The X-Ray trace header of the invocation, if any.
    pub trace_header: Option<String>,
    /// Fires when the host asks work in flight to stop early (keel-local shutting down). On Lambda it never fires:
    /// the runtime stops a sandbox only between invocations.
    pub stop: Stop,
}

/// A request to stop early that long work can wait on beside its own work (`tokio::select!`).
#[derive(Clone, Default)]
pub struct Stop(std::sync::Arc<StopState>);

#[derive(Default)]
struct StopState {
    stopped: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    pub fn stop(&self) {
        self.0.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once [`Stop::stop`] has been called (at once if it already was).
    pub async fn stopped(&self) {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Stop").field(&self.is_stopped()).finish()
    }
}

/// Two stops are alike when both have, or both have not, been asked to stop.
impl PartialEq for Stop {
    fn eq(&self, other: &Self) -> bool {
        self.is_stopped() == other.is_stopped()
    }
}

impl Invocation {
    pub fn from_context(context: &lambda_runtime::Context) -> Self {
        let deadline_ms = i64::try_from(context.deadline).unwrap_or(i64::MAX);
        Invocation {
            request_id: context.request_id.clone(),
            deadline: DateTime::<Utc>::from_timestamp_millis(deadline_ms).unwrap_or(DateTime::<Utc>::MAX_UTC),
            trace_header: context.xray_trace_id.clone(),
            stop: Stop::default(),
        }
    }

    /// The Lambda context the runtime would hand over for this invocation.
    pub fn to_context(&self) -> lambda_runtime::Context {
        let mut context = lambda_runtime::Context::default();
        context.request_id = self.request_id.clone();
        context.deadline = u64::try_from(self.deadline.timestamp_millis()).unwrap_or(0);
        context.xray_trace_id = self.trace_header.clone();
        context
    }

    /// The X-Ray trace id: the `Root` of the trace header (`Root=1-5759e988-bd862e3fe1be46a994272793;...`).
    pub fn trace_id(&self) -> Option<&str> {
        let header = self.trace_header.as_deref()?;
        header.split(';').find_map(|part| part.trim().strip_prefix("Root=")).filter(|root| !root.is_empty())
    }

    /// The invocation an HTTP request arrived in (its Lambda context travels in the request's extensions).
    pub fn of(request: &Request) -> Self {
        match request.lambda_context_ref() {
            Some(context) => Self::from_context(context),
            None => Self::from_context(&lambda_runtime::Context::default()),
        }
    }
}

/// An HTTP function: a route table ([`Api`]) served by [`serve`]. Implemented for every [`Api`].
#[async_trait]
pub trait HttpFunction: Send + Sync {
    /// Never fails: every error is an HTTP response (problem+json).
    async fn handle(&self, request: Request) -> Response;
    /// The table: method, path template and access of every route.
    fn routes(&self) -> Vec<RouteInfo>;
    /// Whether the function keeps `Idempotency-Key` records (its writing routes need it).
    fn keeps_idempotency_keys(&self) -> bool;
}

/// A route as its table declares it.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub writes: bool,
    pub doc: Doc,
}

#[async_trait]
impl<F: Api> HttpFunction for F {
    async fn handle(&self, request: Request) -> Response {
        serve(self, request).await
    }

    fn routes(&self) -> Vec<RouteInfo> {
        F::ROUTES
            .iter()
            .map(|route| RouteInfo {
                method: route.method.clone(),
                path: route.path,
                access: route.access,
                writes: route.writes,
                doc: route.doc,
            })
            .collect()
    }

    fn keeps_idempotency_keys(&self) -> bool {
        self.idempotency().is_some()
    }
}

#[async_trait]
pub trait QueueFunction: Send + Sync {
    /// Returns the ids of the messages that failed; the rest are deleted from the queue.
    async fn call(&self, event: SqsEvent, invocation: Invocation) -> SqsBatchResponse;
}

/// Leaves a message of the batch for SQS to deliver again after `delay` (whole seconds, rounded up, at most the
/// 12 hours SQS allows): its visibility is changed, best effort (if that fails, the queue's own visibility timeout
/// applies), and it is reported as a batch item failure. Returns the delay set.
pub async fn deliver_again(
    queue: &dyn Queue,
    record: &SqsMessage,
    delay: std::time::Duration,
    response: &mut SqsBatchResponse,
) -> std::time::Duration {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    let delay = std::time::Duration::from_secs(seconds.min(12 * 3600));
    if let Some(receipt) = &record.receipt_handle {
        queue.change_visibility(receipt, delay).await.ok();
    }
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = record.message_id.clone().unwrap_or_default();
    response.batch_item_failures.push(failure);
    delay
}

/// A function an EventBridge Scheduler schedule invokes. It receives the schedule's input (or, under an
/// EventBridge rule, the scheduled event) and fails with a message for the log; the scheduler retries.
#[async_trait]
pub trait ScheduledFunction: Send + Sync {
    async fn call(&self, event: serde_json::Value, invocation: Invocation) -> Result<(), String>;
}

/// Verifies a bearer token where no JWT authorizer stands in front of the function (a Lambda Function URL): the
/// same checks API Gateway's authorizer makes, the same claims handed over.
#[async_trait]
pub trait TokenVerifier: Send + Sync {
    /// The token's claims, flattened as API Gateway flattens them ([`crate::identity::flatten_claims`]).
    async fn verify(&self, token: &str) -> Result<HashMap<String, String>, TokenRefused>;
}

/// Why a token was not accepted. The reason is for the log only: the client is told 401 or 503 and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    /// Malformed, badly signed, expired, or for another issuer or audience: 401.
    #[error("the token was refused: {0}")]
    Invalid(String),
    /// The keys to check it could not be had (the issuer did not answer): 503, so the client retries instead of
    /// signing in again.
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

/// What a streaming function sends after its status line: chunks, in order, until it ends.
pub type ByteStream = std::pin::Pin<Box<dyn futures::Stream<Item = bytes::Bytes> + Send>>;

/// A function that streams its answer (Lambda response streaming, behind a Function URL: API Gateway HTTP APIs
/// cannot stream). It serves one `GET` path and authenticates callers itself through a [`TokenVerifier`]; the
/// runner (`keel::lambda::run_stream`, or the local host) checks the path and the token before calling it.
#[async_trait]
pub trait StreamFunction: Send + Sync {
    /// The path it answers (a Function URL sends every path to it; the others answer 404).
    fn path(&self) -> &'static str;
    /// The `Content-Type` of a stream.
    fn content_type(&self) -> &'static str;
    /// Opens a stream for `caller`, to end before `until`. An error is answered as problem+json before any chunk.
    async fn open(&self, caller: Identity, request: &Request, until: DateTime<Utc>) -> Result<ByteStream, Problem>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_wakes_every_waiter_and_later_ones_at_once() {
        let stop = Stop::default();
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.stopped() => true,
                    () = tokio::time::sleep(std::time::Duration::from_secs(10)) => false,
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!stop.is_stopped());
        stop.stop();
        assert!(waiter.await.unwrap(), "the waiter heard the stop");
        tokio::time::timeout(std::time::Duration::from_secs(1), stop.stopped()).await.unwrap();
    }
}
