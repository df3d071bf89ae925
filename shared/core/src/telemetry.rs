//! JSON logs, one object per line, carrying the request id and trace id of the invocation that wrote them
//! (CloudWatch Logs Insights can then join a request's lines across API Gateway, SQS and the worker).

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber once; later calls are no-ops. The level comes from `RUST_LOG` (default `info`).
/// Tracing to the X-Ray daemon starts too, when Lambda's active tracing gives its address (`keel::trace`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .try_init();
    crate::trace::init_from_env();
}

/// The span every invocation runs in; its fields appear on every log line written inside it.
pub fn invocation_span(function: &str, request_id: &str, trace_id: Option<&str>) -> tracing::Span {
    tracing::info_span!("invocation", function, request_id, trace_id = trace_id.unwrap_or(""))
}
