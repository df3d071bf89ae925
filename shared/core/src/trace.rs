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

use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_aws::trace::XrayIdGenerator;
use opentelemetry_aws::trace::xray_propagator::{span_context_from_str, span_context_to_string};
use opentelemetry_aws::xray_exporter::XrayExporter;
use opentelemetry_aws::xray_exporter::daemon_client::XrayDaemonClient;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
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
        .with_id_generator(XrayIdGenerator::default())
        // The header's `Sampled` decides; a trace Keel starts itself is sampled.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_simple_exporter(exporter)
        .build();
    let tracer = provider.tracer("keel");
    let _ = INSTALLED.set(Installed { _provider: provider, tracer });
    Ok(())
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
    let parent = match trace_header.and_then(span_context_from_str) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    };
    // X-Ray names a segment after its service: the function.
    let span = installed
        .tracer
        .span_builder(name.to_string())
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("service.name", name.to_string())])
        .start_with_context(&installed.tracer, &parent);
    let context = parent.with_span(span);
    let output = future.with_context(context.clone()).await;
    context.span().end();
    output
}

/// Runs a port call (`table.put`, `queue.send`, ...) in a span under the current one; outside a traced
/// invocation, just the call.
pub async fn port_call<T, E: std::fmt::Display, F>(operation: &str, future: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
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
    if let Err(error) = &result {
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
}
