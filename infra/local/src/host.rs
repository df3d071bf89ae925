//! The host: builds every function the template declares on the chosen backend, serves their HTTP routes, polls
//! their queues and fires their schedules, until shut down.

use crate::backend::{self, Backend, Built};
use crate::gateway::{self, Incoming, Routes};
use crate::poller::Poller;
use crate::registry::{Handler, Registry};
use crate::schedule::Schedule;
use crate::template::{Auth, LOCAL_ACCOUNT, LOCAL_REGION, ScheduleDecl, Template, TemplateError, VarValue};
use crate::token::{Authorizer, DevKey, TokenError};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use keel::bus::EventBus;
use keel::clock::{Clock, SystemClock};
use keel::config::{ConfigError, Env};
use keel::faults::Faults;
use keel::function::ScheduledFunction;
use keel::function::{HttpFunction, Invocation, StreamFunction};
use keel::object::ObjectStore;
use keel::queue::Queue;
use keel::resources::StaticResources;
use keel::table::Table;
use keel_embedded::{EmbeddedBus, EmbeddedDb, EmbeddedObjects, LinkRefused, RecordedEvent};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The only routes that do not come from the template.
pub const LIVE_PATH: &str = "/health/live";
pub const READY_PATH: &str = "/health/ready";
/// Every function's metrics since the host started, in Prometheus text (the EMF Lambda writes, summed).
pub const METRICS_PATH: &str = "/metrics";
/// The links of the template's buckets: `{OBJECTS_PATH}/{bucket logical id}/{key}?expires=..&signature=..`, as
/// the embedded object store signs them (S3's presigned URLs on AWS).
pub const OBJECTS_PATH: &str = "/local/objects";
/// `POST {SCHEDULES_PATH}/{event}` fires the schedule of that event name (`WebhookDeliveries`) now, and answers how
/// the invocation ended: what `keel-local run-schedule NAME` calls.
pub const SCHEDULES_PATH: &str = "/local/schedules";

/// The host's metrics sink: installed once per process, shared by every host in it.
fn prometheus() -> Arc<keel::metrics::Prometheus> {
    static SINK: std::sync::OnceLock<Arc<keel::metrics::Prometheus>> = std::sync::OnceLock::new();
    SINK.get_or_init(|| {
        let sink = Arc::new(keel::metrics::Prometheus::default());
        keel::metrics::install(sink.clone());
        sink
    })
    .clone()
}
/// How long one readiness ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime of tokens from [`Host::token`].
const TOKEN_TTL: chrono::Duration = chrono::Duration::hours(1);

pub struct HostOptions {
    /// 0 picks a free port.
    pub port: u16,
    pub data_dir: PathBuf,
    pub backend: Backend,
    pub template: PathBuf,
    /// The process-like environment: what functions see besides their template variables, where template
    /// parameters and variables can be overridden (`WEBHOOK_SECRET_*`, `KEEL_FAULTS`, ...).
    pub env: Env,
}

impl std::fmt::Debug for HostOptions {
    /// The environment may hold secrets: it is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostOptions")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("backend", &self.backend)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("template.yaml and keel-local's function registry disagree: {0}")]
    Registry(String),
    #[error("function {function} cannot start: {source}")]
    Function {
        function: String,
        #[source]
        source: ConfigError,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("the {backend:?} backend cannot start: {reason}")]
    Backend { backend: Backend, reason: String },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot listen on 127.0.0.1:{port}: {reason}")]
    Listen { port: u16, reason: String },
    #[error("{0}")]
    Bus(String),
}

/// A route, a queue-to-function mapping and a schedule, as the template declares them and the host serves them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Declared {
    /// `(METHOD, path)`, `ANY` for any method, `("ANY", "$default")` for the catch-all route.
    pub routes: Vec<(String, String)>,
    pub queues: Vec<QueueMapping>,
    pub schedules: Vec<ScheduleMapping>,
    /// The binary names of functions with a (streaming) Function URL.
    pub function_urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueMapping {
    /// The queue's logical id.
    pub queue: String,
    /// The function's binary name.
    pub function: String,
    pub batch_size: usize,
    pub report_batch_item_failures: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScheduleMapping {
    pub function: String,
    pub event: String,
    pub expression: String,
}

impl Declared {
    fn sort(mut self) -> Self {
        self.routes.sort();
        self.queues.sort();
        self.schedules.sort();
        self.function_urls.sort();
        self
    }
}

/// What the template at `template` declares: its routes, enabled SQS mappings and enabled schedules.
pub fn declared(template: &Path) -> Result<Declared, HostError> {
    Ok(declared_by(&Template::load(template)?))
}

fn declared_by(template: &Template) -> Declared {
    let mut declared = Declared::default();
    for function in &template.functions {
        for route in &function.routes {
            declared.routes.push((route.method.clone(), route.path.clone()));
        }
        for sqs in function.sqs.iter().filter(|s| s.enabled) {
            declared.queues.push(QueueMapping {
                queue: sqs.queue.clone(),
                function: function.binary.clone(),
                batch_size: sqs.batch_size,
                report_batch_item_failures: sqs.report_batch_item_failures,
            });
        }
        if function.url.is_some() {
            declared.function_urls.push(function.binary.clone());
        }
        for schedule in function.schedules.iter().filter(|s| s.enabled) {
            declared.schedules.push(ScheduleMapping {
                function: function.binary.clone(),
                event: schedule.event.clone(),
                expression: schedule.expression.clone(),
            });
        }
    }
    declared.sort()
}

/// What a running host serves, from its live route table, pollers and schedules.
pub fn served(host: &Host) -> Declared {
    host.served.clone()
}

struct HttpTarget {
    function: String,
    handler: Arc<dyn HttpFunction>,
    timeout: Duration,
}

/// A function behind a streaming Function URL, served at the path it answers.
struct StreamTarget {
    function: String,
    handler: Arc<dyn StreamFunction>,
    timeout: Duration,
}

enum Probe {
    Table(String, Arc<dyn Table>),
    Queue(String, Arc<dyn Queue>),
    Bus(String, Arc<dyn EventBus>),
    Bucket(String, Arc<dyn ObjectStore>),
}

struct App {
    routes: Routes,
    targets: Vec<HttpTarget>,
    streams: Vec<StreamTarget>,
    /// Ends open streams when the host shuts down (graceful shutdown waits for every connection).
    cancel: CancellationToken,
    authorizer: Authorizer,
    probes: Vec<Probe>,
    /// The embedded buckets, whose links the host serves.
    objects: BTreeMap<String, EmbeddedObjects>,
    /// The schedules, to fire one on request.
    schedules: Vec<Scheduled>,
}

/// A schedule: its function, handler, declaration and timeout.
type Scheduled = (String, Arc<dyn ScheduledFunction>, ScheduleDecl, Duration);

/// A running host. Dropping it stops it without waiting; [`Host::shutdown`] waits for in-flight work.
pub struct Host {
    addr: SocketAddr,
    key: DevKey,
    embedded: Option<EmbeddedDb>,
    embedded_buses: BTreeMap<String, EmbeddedBus>,
    /// The template's buckets, by logical id.
    buckets: BTreeMap<String, Arc<dyn ObjectStore>>,
    served: Declared,
    /// Each HTTP function as built, by binary name.
    http_functions: BTreeMap<String, Arc<dyn HttpFunction>>,
    cancel: CancellationToken,
    server: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("addr", &self.addr).field("served", &self.served).finish_non_exhaustive()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Host {
    /// Starts every function of the workspace as `options.template` wires them.
    pub async fn start(options: HostOptions) -> Result<Host, HostError> {
        Self::start_with(options, Registry::workspace()).await
    }

    /// Starts with a given registry (tests: functions of their own behind a template of their own).
    pub async fn start_with(options: HostOptions, registry: Registry) -> Result<Host, HostError> {
        let template = Template::load(&options.template)?;
        check_registry(&template, &registry)?;
        // Before any function runs, so no invocation's metrics go to stdout instead.
        prometheus();
        let faults = Faults::from_env(&options.env)?;
        let routes = route_table(&template)?;
        let key = DevKey::load_or_create(&options.data_dir)?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // Listening first: the embedded buckets sign links with the host's address.
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, options.port))
            .await
            .map_err(|e| HostError::Listen { port: options.port, reason: e.to_string() })?;
        let addr =
            listener.local_addr().map_err(|e| HostError::Listen { port: options.port, reason: e.to_string() })?;
        let links = format!("http://{addr}{OBJECTS_PATH}");
        let built = match options.backend {
            Backend::Embedded => backend::embedded(&template, &options.data_dir, &links, &faults, clock.clone()).await,
            Backend::Aws => backend::aws(&template, &faults, clock.clone()).await,
        }
        .map_err(|reason| HostError::Backend { backend: options.backend, reason })?;
        // The deployment's GDPR key (a template parameter without a default), stood in for by one derived from
        // the data directory's key: stable across restarts, so pseudonyms and suppressions keep their meaning.
        let mut process = options.env.clone();
        if process.get(keel::suppression::KEY_VAR).is_none() {
            process.set(keel::suppression::KEY_VAR, key.derive(keel::suppression::KEY_VAR));
        }
        let functions = build_functions(&template, &registry, &process, &built, &format!("http://{addr}/"), clock)?;

        let mut probes = Vec::new();
        probes.extend(built.tables.iter().map(|(id, r)| Probe::Table(id.clone(), r.adapter.clone())));
        probes.extend(built.queues.iter().map(|(id, r)| Probe::Queue(id.clone(), r.adapter.clone())));
        probes.extend(built.buses.iter().map(|(id, r)| Probe::Bus(id.clone(), r.adapter.clone())));
        probes.extend(built.buckets.iter().map(|(id, r)| Probe::Bucket(id.clone(), r.adapter.clone())));

        let mut served = Declared {
            routes: routes
                .iter()
                .map(|r| (r.method.as_ref().map_or("ANY".to_string(), |m| m.to_string()), r.path.clone()))
                .collect(),
            ..Declared::default()
        };
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        for poller in functions.pollers {
            served.queues.push(QueueMapping {
                queue: poller.queue_id.clone(),
                function: poller.inner.function.clone(),
                batch_size: poller.inner.batch_size,
                report_batch_item_failures: poller.inner.report_batch_item_failures,
            });
            tasks.push(tokio::spawn(poller.inner.run(cancel.clone())));
        }
        let schedules = functions.schedules.clone();
        for (function, handler, decl, timeout) in functions.schedules {
            served.schedules.push(ScheduleMapping {
                function: function.clone(),
                event: decl.event.clone(),
                expression: decl.expression.clone(),
            });
            tasks.push(tokio::spawn(run_schedule(function, handler, decl, timeout, cancel.clone())));
        }

        for stream in &functions.streams {
            let path = stream.handler.path();
            if routes.find(&Method::GET, &gateway::path_segments(path)).is_some() {
                return Err(HostError::Registry(format!(
                    "{} streams at {path}, which a route of the HTTP API also matches",
                    stream.function
                )));
            }
            served.function_urls.push(stream.function.clone());
        }
        let http_functions =
            functions.http.iter().map(|target| (target.function.clone(), target.handler.clone())).collect();
        let app = Arc::new(App {
            routes,
            targets: functions.http,
            streams: functions.streams,
            cancel: cancel.clone(),
            authorizer: Authorizer::new(key.clone(), &options.env)?,
            probes,
            objects: built.embedded_objects,
            schedules,
        });
        let router = axum::Router::new().fallback(handle).with_state(app);
        let shutdown = cancel.clone();
        let server = tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(error) = axum::serve(listener, service).with_graceful_shutdown(shutdown.cancelled_owned()).await
            {
                tracing::error!(%error, "the HTTP server stopped");
            }
        });
        tracing::info!(%addr, backend = ?options.backend, template = %options.template.display(),
            routes = served.routes.len(), queues = served.queues.len(), schedules = served.schedules.len(), "keel-local is serving");
        Ok(Host {
            addr,
            key,
            embedded: built.embedded,
            embedded_buses: built.embedded_buses,
            buckets: built.buckets.into_iter().map(|(id, r)| (id, r.adapter)).collect(),
            served: served.sort(),
            http_functions,
            cancel,
            server: Some(server),
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A development token (valid for an hour) the host accepts on JWT routes.
    pub fn token(&self, org: &str, user: &str, roles: &[&str]) -> String {
        match self.key.issue(org, user, roles, TOKEN_TTL) {
            Ok(token) => token,
            Err(error) => {
                tracing::error!(%error, "a development token could not be signed");
                String::new()
            }
        }
    }

    /// The key the host verifies tokens with (tests: tokens with chosen claims).
    pub fn key(&self) -> &DevKey {
        &self.key
    }

    /// The embedded database, on the embedded backend.
    pub fn embedded(&self) -> Option<&EmbeddedDb> {
        self.embedded.as_ref()
    }

    /// Every event put on the template's event bus (embedded backend, one bus).
    pub fn bus_recorded(&self) -> Result<Vec<RecordedEvent>, HostError> {
        let mut buses = self.embedded_buses.keys();
        match (buses.next(), buses.next()) {
            (Some(id), None) => self.bus_recorded_of(id),
            (None, _) if self.embedded.is_none() => {
                Err(HostError::Bus("bus events are recorded on the embedded backend only".into()))
            }
            (None, _) => Err(HostError::Bus("the template declares no event bus".into())),
            (Some(_), Some(_)) => {
                Err(HostError::Bus("the template declares several buses; use bus_recorded_of".into()))
            }
        }
    }

    /// Every event put on the bus with this logical id (embedded backend).
    pub fn bus_recorded_of(&self, logical_id: &str) -> Result<Vec<RecordedEvent>, HostError> {
        let bus = self
            .embedded_buses
            .get(logical_id)
            .ok_or_else(|| HostError::Bus(format!("no embedded event bus {logical_id}")))?;
        bus.recorded().map_err(|e| HostError::Bus(e.to_string()))
    }

    /// The bucket with this logical id, as the functions that `!Ref` it get it.
    pub fn bucket(&self, logical_id: &str) -> Option<Arc<dyn ObjectStore>> {
        self.buckets.get(logical_id).cloned()
    }

    /// The HTTP function built for `binary`, to call directly (tests of its route table).
    pub fn http_function(&self, binary: &str) -> Option<Arc<dyn HttpFunction>> {
        self.http_functions.get(binary).cloned()
    }

    /// The OpenAPI document of every HTTP function the host serves, generated from their route tables (what
    /// `functions/api-docs/openapi.json` must hold).
    pub fn openapi(&self) -> Result<Value, keel::openapi::Undocumented> {
        let functions: Vec<(&str, Vec<keel::function::RouteInfo>)> =
            self.http_functions.iter().map(|(binary, function)| (binary.as_str(), function.routes())).collect();
        keel::openapi::document(env!("CARGO_PKG_VERSION"), &functions)
    }

    pub fn served(&self) -> &Declared {
        &self.served
    }

    /// Stops accepting requests and polling, finishes what is in flight, and releases the data directory.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        tracing::info!(addr = %self.addr, "keel-local stopped");
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutting down: no new requests or receives; finishing in-flight work");
        self.shutdown().await;
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check_registry(template: &Template, registry: &Registry) -> Result<(), HostError> {
    let declared: Vec<&str> = template.functions.iter().map(|f| f.binary.as_str()).collect();
    let unknown: Vec<&str> = declared.iter().copied().filter(|b| !registry.names().any(|n| n == *b)).collect();
    let undeclared: Vec<&str> = registry.names().filter(|n| !declared.contains(n)).collect();
    let mut problems = Vec::new();
    if !unknown.is_empty() {
        problems.push(format!("the template declares {} but keel-local has no constructor for it", unknown.join(", ")));
    }
    if !undeclared.is_empty() {
        problems
            .push(format!("keel-local registers {} but the template declares no such function", undeclared.join(", ")));
    }
    if problems.is_empty() { Ok(()) } else { Err(HostError::Registry(problems.join("; "))) }
}

fn route_table(template: &Template) -> Result<Routes, HostError> {
    let mut routes = Vec::new();
    let mut index = 0;
    for function in &template.functions {
        for decl in &function.routes {
            let route = gateway::Route::new(decl, index)
                .map_err(|reason| TemplateError::Invalid { at: format!("route {}", decl.route_key()), reason })?;
            let objects = format!("{OBJECTS_PATH}/bucket/key");
            for reserved in [LIVE_PATH, READY_PATH, METRICS_PATH, crate::docs::DOCS_PATH, objects.as_str()] {
                if decl.path != "$default" && route.method.as_ref().is_none_or(|m| m == Method::GET) {
                    let probe = Routes::new(vec![route.clone()]);
                    if probe.find(&Method::GET, &gateway::path_segments(reserved)).is_some() {
                        return Err(HostError::Template(TemplateError::Invalid {
                            at: format!("route {}", decl.route_key()),
                            reason: format!("it overlaps keel-local's own {reserved}"),
                        }));
                    }
                }
            }
            routes.push(route);
        }
        if !function.routes.is_empty() {
            index += 1;
        }
    }
    Ok(Routes::new(routes))
}

struct PollerSpec {
    queue_id: String,
    inner: Poller,
}

struct Functions {
    http: Vec<HttpTarget>,
    streams: Vec<StreamTarget>,
    pollers: Vec<PollerSpec>,
    schedules: Vec<Scheduled>,
}

/// The environment and resources of each function, then the function itself; checks that each is of the shape
/// its events need.
fn build_functions(
    template: &Template,
    registry: &Registry,
    process: &Env,
    built: &Built,
    base_url: &str,
    clock: Arc<dyn Clock>,
) -> Result<Functions, HostError> {
    let mut functions = Functions { http: Vec::new(), streams: Vec::new(), pollers: Vec::new(), schedules: Vec::new() };
    for function in &template.functions {
        let mut env = process.clone();
        let mut resources = StaticResources::new(clock.clone());
        for (var, value) in &function.variables {
            match value {
                // Declared values yield to the process environment, so a developer or a test can tune a function
                // (`WEBHOOK_RETRY_BASE_SECONDS=0`) the way `sam local --env-vars` does.
                VarValue::Literal(literal) => {
                    if process.get(var).is_none() {
                        env.set(var, literal);
                    }
                }
                VarValue::Parameter { default, .. } => {
                    if let (None, Some(default)) = (process.get(var), default) {
                        env.set(var, default);
                    }
                }
                VarValue::Table(id) => {
                    let r = lookup(&built.tables, id, &function.logical_id)?;
                    env.set(var, &r.reference);
                    resources = resources.with_table(var, r.adapter.clone());
                }
                VarValue::Queue(id) => {
                    let r = lookup(&built.queues, id, &function.logical_id)?;
                    env.set(var, &r.reference);
                    resources = resources.with_queue(var, r.adapter.clone());
                }
                VarValue::Bus(id) => {
                    let r = lookup(&built.buses, id, &function.logical_id)?;
                    env.set(var, &r.reference);
                    resources = resources.with_bus(var, r.adapter.clone());
                }
                VarValue::Bucket(id) => {
                    let r = lookup(&built.buckets, id, &function.logical_id)?;
                    env.set(var, &r.reference);
                    resources = resources.with_objects(var, r.adapter.clone());
                }
                VarValue::FunctionUrl(target) => {
                    if !template.functions.iter().any(|f| &f.logical_id == target && f.url.is_some()) {
                        return Err(HostError::Registry(format!(
                            "{}: `{var}` names the Function URL of {target}, which declares none",
                            function.logical_id
                        )));
                    }
                    if process.get(var).is_none() {
                        env.set(var, base_url);
                    }
                }
                VarValue::NoValue => {}
            }
        }
        let handler = registry
            .build(&function.binary, &env, &resources)
            .ok_or_else(|| HostError::Registry(format!("no constructor for {}", function.binary)))?
            .map_err(|source| HostError::Function { function: function.binary.clone(), source })?;
        let mismatch = |needs: &str| {
            HostError::Registry(format!(
                "{} has {needs} events but its constructor builds {}",
                function.binary,
                handler.kind()
            ))
        };
        if !function.routes.is_empty() {
            let Handler::Http(http) = &handler else { return Err(mismatch("HttpApi")) };
            functions.http.push(HttpTarget {
                function: function.binary.clone(),
                handler: http.clone(),
                timeout: function.timeout,
            });
        }
        if function.url.is_some() {
            let Handler::Stream(stream) = &handler else { return Err(mismatch("FunctionUrlConfig")) };
            functions.streams.push(StreamTarget {
                function: function.binary.clone(),
                handler: stream.clone(),
                timeout: function.timeout,
            });
        } else if let Handler::Stream(_) = &handler {
            return Err(HostError::Registry(format!(
                "{} streams its answers but the template gives it no FunctionUrlConfig",
                function.binary
            )));
        }
        for sqs in function.sqs.iter().filter(|s| s.enabled) {
            let Handler::Queue(worker) = &handler else { return Err(mismatch("SQS")) };
            let queue = lookup(&built.queues, &sqs.queue, &function.logical_id)?;
            functions.pollers.push(PollerSpec {
                queue_id: sqs.queue.clone(),
                inner: Poller {
                    function: function.binary.clone(),
                    handler: worker.clone(),
                    queue: queue.adapter.clone(),
                    batch_size: sqs.batch_size.min(keel::queue::MAX_RECEIVE),
                    report_batch_item_failures: sqs.report_batch_item_failures,
                    timeout: function.timeout,
                },
            });
        }
        for schedule in function.schedules.iter().filter(|s| s.enabled) {
            let Handler::Scheduled(scheduled) = &handler else { return Err(mismatch("schedule")) };
            functions.schedules.push((function.binary.clone(), scheduled.clone(), schedule.clone(), function.timeout));
        }
    }
    Ok(functions)
}

fn lookup<'a, T: ?Sized>(
    map: &'a BTreeMap<String, backend::Resource<T>>,
    id: &str,
    function: &str,
) -> Result<&'a backend::Resource<T>, HostError> {
    map.get(id).ok_or_else(|| HostError::Registry(format!("{function} refers to {id}, which was not built")))
}

/// API Gateway's own error bodies.
fn message(status: StatusCode, text: &str) -> Response {
    let mut response = Response::new(Body::from(json!({ "message": text }).to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn log_request(
    method: &Method,
    path: &str,
    route: &str,
    function: &str,
    status: StatusCode,
    request_id: &str,
    started: Instant,
) {
    tracing::info!(
        method = %method,
        path,
        route,
        function,
        status = status.as_u16(),
        request_id,
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
}

/// An X-Ray trace header for a request that came without one.
fn new_trace_header(now: chrono::DateTime<Utc>) -> String {
    let mut random = [0u8; 12];
    rand::Rng::fill(&mut rand::rng(), &mut random[..]);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("Root=1-{:08x}-{hex};Sampled=1", now.timestamp())
}

async fn handle(State(app): State<Arc<App>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request) -> Response {
    let started = Instant::now();
    let request_id = ulid::Ulid::new().to_string();
    let (parts, body) = request.into_parts();
    let path = gateway::decoded_path(&parts.uri);
    if parts.method == Method::GET && path == METRICS_PATH {
        let mut response = message(StatusCode::OK, "metrics");
        *response.body_mut() = Body::from(prometheus().render());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        log_request(&parts.method, &path, "", "keel-local", response.status(), &request_id, started);
        return response;
    }
    if parts.method == Method::GET && path == crate::docs::DOCS_PATH {
        // The document is compiled in: render it once per process.
        static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let page = PAGE
            .get_or_init(|| crate::docs::page(&serde_json::from_str::<Value>(api_docs::DOCUMENT).unwrap_or_default()));
        let mut response = message(StatusCode::OK, "docs");
        *response.body_mut() = Body::from(page.clone());
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
        log_request(&parts.method, &path, "", "keel-local", response.status(), &request_id, started);
        return response;
    }
    if let Some(rest) = path.strip_prefix(OBJECTS_PATH).and_then(|rest| rest.strip_prefix('/'))
        && parts.method == Method::GET
    {
        let response = serve_object(&app, rest, parts.uri.query().unwrap_or_default()).await;
        log_request(&parts.method, &path, "", "keel-local", response.status(), &request_id, started);
        return response;
    }
    if let Some(event) = path.strip_prefix(SCHEDULES_PATH).and_then(|rest| rest.strip_prefix('/'))
        && parts.method == Method::POST
    {
        // A developer's tool, not a page's: a browser's request (it sends `Origin`) is refused, so a site the
        // developer visits cannot fire schedules on their host.
        let response = if parts.headers.contains_key(http::header::ORIGIN) {
            message(StatusCode::FORBIDDEN, "schedules are fired by keel-local run-schedule, not from a browser")
        } else {
            fire_now(&app, event).await
        };
        log_request(&parts.method, &path, "", "keel-local", response.status(), &request_id, started);
        return response;
    }
    if parts.method == Method::GET && (path == LIVE_PATH || path == READY_PATH) {
        let response = if path == LIVE_PATH {
            let mut live = message(StatusCode::OK, "live");
            *live.body_mut() = Body::from(json!({ "status": "live" }).to_string());
            live
        } else {
            ready(&app).await
        };
        log_request(&parts.method, &path, "", "keel-local", response.status(), &request_id, started);
        return response;
    }

    if let Some(stream) = app.streams.iter().find(|s| s.handler.path() == path) {
        let response = serve_stream(&app, stream, &parts, peer, &request_id).await;
        log_request(&parts.method, &path, "", &stream.function, response.status(), &request_id, started);
        return response;
    }

    let segments = gateway::path_segments(&path);
    let Some((route, params)) = app.routes.find(&parts.method, &segments) else {
        log_request(&parts.method, &path, "", "", StatusCode::NOT_FOUND, &request_id, started);
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some(target) = app.targets.get(route.target) else {
        return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let respond = |response: Response| {
        log_request(&parts.method, &path, &route.route_key, &target.function, response.status(), &request_id, started);
        response
    };

    let claims = match &route.auth {
        Auth::None => None,
        Auth::Jwt(_) => {
            // The same check the stream's function URL gets (`keel::lambda::open_stream`): one verifier.
            let verified = match keel::http::bearer(&parts.headers) {
                Some(token) => keel::function::TokenVerifier::verify(&app.authorizer, token).await.map_err(|refused| {
                    let (keel::function::TokenRefused::Invalid(reason)
                    | keel::function::TokenRefused::Unavailable(reason)) = refused;
                    (reason, "Bearer error=\"invalid_token\"")
                }),
                None => Err(("no bearer token".to_string(), "Bearer")),
            };
            match verified {
                Ok(claims) => Some(claims),
                Err((reason, challenge)) => {
                    tracing::info!(route = %route.route_key, request_id, reason, "unauthorized");
                    let mut response = message(StatusCode::UNAUTHORIZED, "Unauthorized");
                    response.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
                    return respond(response);
                }
            }
        }
    };

    let too_large = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > gateway::MAX_BODY_BYTES);
    let bytes = if too_large { None } else { axum::body::to_bytes(body, gateway::MAX_BODY_BYTES).await.ok() };
    let Some(bytes) = bytes else {
        return respond(message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"));
    };

    let now = Utc::now();
    let mut headers = parts.headers.clone();
    let trace_header = match headers.get("x-amzn-trace-id").and_then(|v| v.to_str().ok()) {
        Some(existing) => existing.to_string(),
        None => new_trace_header(now),
    };
    for (name, value) in [
        ("x-amzn-trace-id", trace_header.clone()),
        ("x-forwarded-for", peer.ip().to_string()),
        ("x-forwarded-port", app_port(&parts.headers)),
        ("x-forwarded-proto", "http".to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    let incoming = Incoming {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &headers,
        body: &bytes,
        source_ip: peer.ip(),
        request_id: &request_id,
        now,
        route_key: &route.route_key,
        path_parameters: &params,
        claims: claims.as_ref(),
    };
    let event = match gateway::to_request(&incoming) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(%error, "the request could not be translated");
            return respond(message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"));
        }
    };
    let deadline = now + chrono::Duration::from_std(target.timeout).unwrap_or(chrono::Duration::MAX);
    let invocation = Invocation {
        request_id: request_id.clone(),
        deadline,
        trace_header: Some(trace_header.clone()),
        stop: Default::default(),
    };
    let (handler, name) = (target.handler.clone(), target.function.clone());
    let mut task =
        tokio::spawn(async move { keel::lambda::invoke_http(&name, handler.as_ref(), event, &invocation).await });
    let response = match tokio::time::timeout(target.timeout, &mut task).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::error!(function = %target.function, request_id, %error, "the function panicked");
            return respond(message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"));
        }
        Err(_) => {
            task.abort();
            tracing::error!(function = %target.function, request_id, timeout_s = target.timeout.as_secs(), "the function timed out");
            return respond(message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"));
        }
    };
    let reply = match gateway::from_response(&response) {
        Ok(reply) => reply,
        Err(error) => {
            tracing::error!(function = %target.function, request_id, %error, "the function's response is malformed");
            return respond(message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"));
        }
    };
    let mut out = Response::new(Body::from(reply.body));
    *out.status_mut() = reply.status;
    *out.headers_mut() = reply.headers;
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        out.headers_mut().insert("apigw-requestid", id);
    }
    respond(out)
}

/// A request to a streaming function's path, as its Function URL would deliver it: the event (payload format 2.0,
/// no authorizer), the host's authorizer as the token verifier, the stream ended at the function's timeout
/// less the runner's margin, or when the host shuts down.
async fn serve_stream(
    app: &App,
    stream: &StreamTarget,
    parts: &http::request::Parts,
    peer: SocketAddr,
    request_id: &str,
) -> Response {
    let now = Utc::now();
    let mut headers = parts.headers.clone();
    if let Ok(value) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", value);
    }
    let no_params = HashMap::new();
    let incoming = Incoming {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &headers,
        body: &[],
        source_ip: peer.ip(),
        request_id,
        now,
        route_key: "$default",
        path_parameters: &no_params,
        claims: None,
    };
    let event = match gateway::to_request(&incoming) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(%error, "the request could not be translated");
            return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
    };
    let deadline = now + chrono::Duration::from_std(stream.timeout).unwrap_or(chrono::Duration::MAX);
    let invocation =
        Invocation { request_id: request_id.to_string(), deadline, trace_header: None, stop: Default::default() };
    let mut request = keel::lambda::request_of(event);
    request.extensions_mut().insert(invocation.to_context());
    let until = deadline - keel::lambda::STREAM_MARGIN;
    let answer =
        keel::lambda::open_stream(&stream.function, stream.handler.as_ref(), &app.authorizer, request, until).await;
    let (answer_parts, body) = answer.into_parts();
    let ended = app.cancel.clone().cancelled_owned();
    let body = futures::StreamExt::take_until(futures::StreamExt::map(body, Ok::<_, std::convert::Infallible>), ended);
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = answer_parts.status;
    *response.headers_mut() = answer_parts.headers;
    response
}

fn app_port(headers: &HeaderMap) -> String {
    headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':'))
        .map(|(_, port)| port.to_string())
        .unwrap_or_else(|| "80".to_string())
}

/// A bucket's signed link: the object's bytes streamed from its file, 404 when it is gone, 403 for a link that
/// expired or was altered (S3's answers). The query is only `expires` and `signature`, neither percent-encoded.
async fn serve_object(app: &App, bucket_and_key: &str, query: &str) -> Response {
    let Some((bucket, key)) = bucket_and_key.split_once('/') else {
        return message(StatusCode::NOT_FOUND, "no such object");
    };
    let Some(objects) = app.objects.get(bucket) else { return message(StatusCode::NOT_FOUND, "no such bucket") };
    let param = |name: &str| {
        query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|v| v.strip_prefix('='))).unwrap_or("")
    };
    let file = match objects.open_link(key, param("expires"), param("signature")).await {
        Ok(file) => file,
        Err(LinkRefused::Missing) => return message(StatusCode::NOT_FOUND, "no such object"),
        Err(LinkRefused::Unavailable(error)) => {
            tracing::warn!(%error, bucket, "a link could not be checked");
            return message(StatusCode::SERVICE_UNAVAILABLE, "the bucket is unavailable");
        }
        Err(refused) => return message(StatusCode::FORBIDDEN, &refused.to_string()),
    };
    let opened = match tokio::fs::File::open(&file.path).await {
        Ok(opened) => opened,
        // Deleted between the check and the open.
        Err(_) => return message(StatusCode::NOT_FOUND, "no such object"),
    };
    let chunks = futures::stream::unfold(opened, |mut opened| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 64 * 1024];
        match opened.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buffer)), opened))
            }
            Err(error) => Some((Err(error), opened)),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    if let Ok(value) = http::HeaderValue::from_str(&file.content_type) {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(file.size));
    response
}

async fn ready(app: &App) -> Response {
    let mut checks = BTreeMap::new();
    let mut failed = BTreeMap::new();
    for probe in &app.probes {
        let (name, result) = match probe {
            Probe::Table(id, t) => (format!("table {id}"), tokio::time::timeout(PING_TIMEOUT, t.ping()).await),
            Probe::Queue(id, q) => (format!("queue {id}"), tokio::time::timeout(PING_TIMEOUT, q.ping()).await),
            Probe::Bus(id, b) => (format!("bus {id}"), tokio::time::timeout(PING_TIMEOUT, b.ping()).await),
            Probe::Bucket(id, o) => (format!("bucket {id}"), tokio::time::timeout(PING_TIMEOUT, o.ping()).await),
        };
        match result {
            Ok(Ok(())) => {
                checks.insert(name, "ok".to_string());
            }
            Ok(Err(error)) => {
                checks.insert(name.clone(), "failed".to_string());
                failed.insert(name, error.to_string());
            }
            Err(_) => {
                checks.insert(name.clone(), "failed".to_string());
                failed.insert(name, format!("no answer within {PING_TIMEOUT:?}"));
            }
        }
    }
    let (status, body) = if failed.is_empty() {
        (StatusCode::OK, json!({ "status": "ready", "checks": checks }))
    } else {
        tracing::warn!(?failed, "not ready");
        (StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "unavailable", "checks": checks, "failed": failed }))
    };
    let mut response = message(status, "");
    *response.body_mut() = Body::from(body.to_string());
    response
}

/// The payload EventBridge sends a schedule's target.
pub fn scheduled_event(function: &str, event: &str, now: chrono::DateTime<Utc>) -> Value {
    json!({
        "version": "0",
        "id": ulid::Ulid::new().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": LOCAL_ACCOUNT,
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": LOCAL_REGION,
        "resources": [format!("arn:aws:events:{LOCAL_REGION}:{LOCAL_ACCOUNT}:rule/{function}-{event}")],
        "detail": {},
    })
}

async fn run_schedule(
    function: String,
    handler: Arc<dyn ScheduledFunction>,
    decl: ScheduleDecl,
    timeout: Duration,
    cancel: CancellationToken,
) {
    tracing::info!(function, event = %decl.event, expression = %decl.expression, "schedule armed");
    let mut last = Utc::now();
    let mut next_rate = match decl.schedule {
        Schedule::Rate(period) => Some(tokio::time::Instant::now() + period),
        _ => None,
    };
    loop {
        let wait = match (&decl.schedule, next_rate) {
            (Schedule::Rate(_), Some(at)) => at.saturating_duration_since(tokio::time::Instant::now()),
            (schedule, _) => match schedule.next_after(last.max(Utc::now())) {
                Some(at) => {
                    last = at;
                    (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
                }
                None => break,
            },
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        if let (Schedule::Rate(period), Some(at)) = (&decl.schedule, next_rate.as_mut()) {
            *at += *period;
        }
        // The outcome is logged by `fire`.
        let _ = fire(&function, &handler, &decl, timeout).await;
    }
    tracing::info!(function, event = %decl.event, "schedule stopped");
}

/// Invokes a scheduled function as its schedule would, and logs how it ended.
async fn fire(
    function: &str,
    handler: &Arc<dyn ScheduledFunction>,
    decl: &ScheduleDecl,
    timeout: Duration,
) -> Result<(), String> {
    let now = Utc::now();
    let request_id = ulid::Ulid::new().to_string();
    let payload = decl.input.clone().unwrap_or_else(|| scheduled_event(function, &decl.event, now));
    let deadline = now + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    let invocation =
        Invocation { request_id: request_id.clone(), deadline, trace_header: None, stop: Default::default() };
    let handler = handler.clone();
    let started = Instant::now();
    let name = function.to_string();
    let mut task =
        tokio::spawn(async move { keel::lambda::invoke_scheduled(&name, handler.as_ref(), payload, invocation).await });
    let outcome = match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => Err(error),
        Ok(Err(error)) => Err(format!("panicked: {error}")),
        Err(_) => {
            task.abort();
            Err(format!("timed out after {timeout:?}"))
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    match &outcome {
        Ok(()) => tracing::info!(function, event = %decl.event, request_id, duration_ms, "scheduled invocation"),
        Err(error) => {
            tracing::error!(function, event = %decl.event, request_id, duration_ms, error, "scheduled invocation failed")
        }
    }
    outcome
}

/// `POST {SCHEDULES_PATH}/{event}`: fires that schedule now.
async fn fire_now(app: &App, event: &str) -> Response {
    let Some((function, handler, decl, timeout)) = app.schedules.iter().find(|(_, _, decl, _)| decl.event == event)
    else {
        let known: Vec<&str> = app.schedules.iter().map(|(_, _, decl, _)| decl.event.as_str()).collect();
        let mut response = message(StatusCode::NOT_FOUND, "no such schedule");
        *response.body_mut() = Body::from(json!({"message": "no such schedule", "schedules": known}).to_string());
        return response;
    };
    let outcome = fire(function, handler, decl, *timeout).await;
    let (status, body) = match outcome {
        Ok(()) => (StatusCode::OK, json!({"schedule": event, "function": function, "ok": true})),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"schedule": event, "function": function, "ok": false, "error": error}),
        ),
    };
    let mut response = message(status, "schedule");
    *response.body_mut() = Body::from(body.to_string());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(std::sync::Mutex<Vec<Value>>);

    #[async_trait::async_trait]
    impl ScheduledFunction for Counter {
        async fn call(&self, event: Value, _invocation: Invocation) -> Result<(), String> {
            self.0.lock().unwrap().push(event);
            Ok(())
        }
    }

    fn decl(expression: &str, input: Option<Value>) -> ScheduleDecl {
        ScheduleDecl {
            event: "Tick".into(),
            expression: expression.into(),
            schedule: Schedule::parse(expression).unwrap(),
            input,
            enabled: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_schedules_fire_every_period_with_the_scheduled_event_until_stopped() {
        let counter = Arc::new(Counter(std::sync::Mutex::new(Vec::new())));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_schedule(
            "cleanup".into(),
            counter.clone(),
            decl("rate(1 minute)", None),
            Duration::from_secs(10),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(counter.0.lock().unwrap().len(), 0, "the first firing is one period after start");
        tokio::time::sleep(Duration::from_secs(125)).await;
        cancel.cancel();
        task.await.unwrap();
        let events = counter.0.lock().unwrap().clone();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["detail-type"], "Scheduled Event");
        assert_eq!(events[0]["source"], "aws.events");
        assert_eq!(events[0]["detail"], json!({}));
        assert_eq!(events[0]["resources"][0], "arn:aws:events:local:000000000000:rule/cleanup-Tick");
    }

    #[tokio::test(start_paused = true)]
    async fn schedules_pass_their_input_and_a_past_at_never_fires() {
        let counter = Arc::new(Counter(std::sync::Mutex::new(Vec::new())));
        let cancel = CancellationToken::new();
        let input = json!({"job": "cleanup"});
        let rate = tokio::spawn(run_schedule(
            "f".into(),
            counter.clone(),
            decl("rate(2 minutes)", Some(input.clone())),
            Duration::from_secs(1),
            cancel.clone(),
        ));
        let past = tokio::spawn(run_schedule(
            "f".into(),
            counter.clone(),
            decl("at(2000-01-01T00:00:00)", None),
            Duration::from_secs(1),
            cancel.clone(),
        ));
        past.await.unwrap();
        tokio::time::sleep(Duration::from_secs(121)).await;
        cancel.cancel();
        rate.await.unwrap();
        assert_eq!(counter.0.lock().unwrap().clone(), vec![input]);
    }

    #[test]
    fn trace_headers_look_like_xray_ones() {
        let header = new_trace_header(Utc::now());
        assert!(header.starts_with("Root=1-") && header.ends_with(";Sampled=1"), "{header}");
        assert_eq!(header.len(), "Root=1-".len() + 8 + 1 + 24 + ";Sampled=1".len());
    }
}
