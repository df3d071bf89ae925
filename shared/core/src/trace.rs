//! X-Ray traces through OpenTelemetry, with `opentelemetry-aws`'s X-Ray ids and exporter: a span per invocation
//! (and per queue message), parented on the trace header API Gateway, the Lambda runtime or the message hands
//! over; a child span per port call (`keel::faults` runs every call through [`port_call`]); and the header of
//! the current span handed on with every message sent (`AWSTraceHeader`) and event put (`TraceHeader`), so one
//! trace runs from a webhook's POST through the worker to the forwarded event.
//!
//! Spans go to the X-Ray daemon the Lambda runtime runs when active tracing is on (`AWS_XRAY_DAEMON_ADDRESS`,
//! UDP), each sent as it ends, so an invocation's spans have left before it returns; no collector layer. Without
//! the variable nothing is installed and every function here passes straight through. The one gap: a datagram the
//! daemon drops is a span lost (UDP, as every X-Ray SDK sends).

use crate::port::PortError;
use opentelemetry::trace::{
    FutureExt, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_aws::trace::XrayIdGenerator;
use opentelemetry_aws::trace::xray_propagator::{span_context_from_str, span_context_to_string};
use opentelemetry_aws::xray_exporter::XrayExporter;
use opentelemetry_aws::xray_exporter::daemon_client::XrayDaemonClient;
use opentelemetry_sdk::trace::{IdGenerator, Sampler, SdkTracer, SdkTracerProvider};
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// Where Lambda's X-Ray daemon listens: `169.254.79.129:2000`, or `tcp:... udp:...` with both.
pub const DAEMON_VAR: &str = "AWS_XRAY_DAEMON_ADDRESS";

struct Installed {
    // Kept so the exporter lives as long as the process.
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Sends spans to the daemon at `daemon` from now on (once per process; later calls change nothing).
pub fn install(daemon: SocketAddr) -> std::io::Result<()> {
    let exporter = XrayExporter::new(XrayDaemonClient::new(daemon)?);
    let provider = SdkTracerProvider::builder()
        .with_id_generator(HeaderRoot::default())
        // The header's `Sampled` decides; a trace Keel starts itself, or one whose header defers (`Sampled=?`), is
        // sampled.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_simple_exporter(exporter)
        .build();
    let tracer = provider.tracer("keel");
    let _ = INSTALLED.set(Installed { _provider: provider, tracer });
    Ok(())
}

thread_local! {
    // The trace id of a header that names a root but no parent, taken by the next root span started on this thread.
    static ROOT_OF_HEADER: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// X-Ray ids, except that a root span started for a header naming only its trace (`Root=...` without `Parent`, as
/// a client or keel-local sends) joins that trace instead of starting another: OpenTelemetry has no parent to
/// inherit it from, and the trace id is what the caller's logs and `X-Trace-Id` show.
#[derive(Debug, Default)]
struct HeaderRoot(XrayIdGenerator);

impl IdGenerator for HeaderRoot {
    fn new_trace_id(&self) -> TraceId {
        ROOT_OF_HEADER.with(Cell::take).unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Installs the exporter when Lambda says a daemon listens (`AWS_XRAY_DAEMON_ADDRESS`); a malformed address is
/// logged and tracing stays off, since a function must not fail to start over its traces.
pub fn init_from_env() {
    let Ok(raw) = std::env::var(DAEMON_VAR) else { return };
    match daemon_address(&raw) {
        Some(address) => {
            if let Err(error) = install(address) {
                tracing::warn!(%error, "X-Ray daemon socket could not be opened; tracing is off");
            }
        }
        None => tracing::warn!(value = %raw, "{DAEMON_VAR} is not an address; tracing is off"),
    }
}

/// The UDP address of `AWS_XRAY_DAEMON_ADDRESS`: `host:port`, or the `udp:` part of `tcp:host:port udp:host:port`.
pub fn daemon_address(raw: &str) -> Option<SocketAddr> {
    let udp = raw.split_whitespace().find_map(|part| part.strip_prefix("udp:"));
    udp.unwrap_or(raw.trim()).parse().ok()
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    INSTALLED.get().is_some()
}

/// Runs `future` in a span of the function `name` (a segment of that name in X-Ray), the child of the span `trace_header` names, or the
/// root of a new trace without one.
pub async fn invocation<F: Future>(name: &str, trace_header: Option<&str>, future: F) -> F::Output {
    let Some(installed) = INSTALLED.get() else { return future.await };
    let remote = trace_header.and_then(span_context_from_str);
    let parent = match &remote {
        Some(remote) if remote.span_id() != SpanId::INVALID => Context::new().with_remote_span_context(decided(remote)),
        Some(root_only) => {
            ROOT_OF_HEADER.with(|root| root.set(Some(root_only.trace_id())));
            Context::new()
        }
        None => Context::new(),
    };
    // X-Ray names a segment after its service: the function.
    let span = installed
        .tracer
        .span_builder(name.to_string())
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("service.name", name.to_string())])
        .start_with_context(&installed.tracer, &parent);
    ROOT_OF_HEADER.with(Cell::take);
    let context = parent.with_span(span);
    let output = future.with_context(context.clone()).await;
    context.span().end();
    output
}

/// The remote parent with its sampling decided: X-Ray's `Sampled=?` (or no `Sampled`) leaves the decision to the
/// receiver, which OpenTelemetry's parent-based sampler would read as "not sampled" and hand on as `Sampled=0`.
fn decided(remote: &SpanContext) -> SpanContext {
    if remote.is_sampled() || remote.trace_flags() == TraceFlags::NOT_SAMPLED {
        return remote.clone();
    }
    SpanContext::new(remote.trace_id(), remote.span_id(), TraceFlags::SAMPLED, true, remote.trace_state().clone())
}

/// Runs a port call (`table.put`, `queue.send`, ...) in a span under the current one; outside a traced
/// invocation, just the call. A failed condition is an answer, not an error of the span (as for `PortErrors`).
pub async fn port_call<T, F>(operation: &str, future: F) -> Result<T, PortError>
where
    F: Future<Output = Result<T, PortError>>,
{
    let Some(installed) = INSTALLED.get() else { return future.await };
    let parent = Context::current();
    if !parent.has_active_span() {
        return future.await;
    }
    let span = installed
        .tracer
        .span_builder(operation.to_string())
        .with_kind(SpanKind::Client)
        .start_with_context(&installed.tracer, &parent);
    let context = parent.with_span(span);
    let result = future.with_context(context.clone()).await;
    if let Err(error) = &result
        && !error.is_condition_failed()
    {
        context.span().set_status(Status::error(error.to_string()));
    }
    context.span().end();
    result
}

/// Marks the current span with the HTTP status it answered (a 5xx is an error of the span).
pub fn record_status(status: u16) {
    if !enabled() {
        return;
    }
    let context = Context::current();
    let span = context.span();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    if status >= 500 {
        span.set_status(Status::error(format!("answered {status}")));
    }
}

/// The X-Ray header naming the current span (`Root=...;Parent=...;Sampled=...`), to hand on with a message or an
/// event; `None` outside a traced span.
pub fn current_header() -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = Context::current();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() { span_context_to_string(span_context) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_address_is_the_variables_udp_part() {
        assert_eq!(daemon_address("169.254.79.129:2000"), Some("169.254.79.129:2000".parse().unwrap()));
        assert_eq!(daemon_address("tcp:127.0.0.1:2000 udp:127.0.0.2:2001"), Some("127.0.0.2:2001".parse().unwrap()));
        assert_eq!(daemon_address("not an address"), None);
    }

    #[test]
    fn a_deferred_sampling_decision_is_taken_as_sampled_and_an_explicit_one_is_kept() {
        let parent = "Root=1-58406520-a006649127e371903a2de979;Parent=4c721bf33e3caf8f";
        for (sampled, expected) in [(";Sampled=?", true), ("", true), (";Sampled=1", true), (";Sampled=0", false)] {
            let remote = span_context_from_str(&format!("{parent}{sampled}")).unwrap();
            let decided = decided(&remote);
            assert_eq!(decided.is_sampled(), expected, "{sampled:?}");
            assert_eq!((decided.trace_id(), decided.span_id()), (remote.trace_id(), remote.span_id()));
            assert!(span_context_to_string(&decided).unwrap().ends_with(if expected {
                "Sampled=1"
            } else {
                "Sampled=0"
            }));
        }
    }

    #[test]
    fn a_header_root_is_the_trace_id_of_the_next_root_span_only() {
        let ids = HeaderRoot::default();
        let root = span_context_from_str("Root=1-58406520-a006649127e371903a2de979").unwrap().trace_id();
        ROOT_OF_HEADER.with(|cell| cell.set(Some(root)));
        assert_eq!(ids.new_trace_id(), root);
        assert_ne!(ids.new_trace_id(), root);
    }
}
