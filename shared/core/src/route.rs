//! One route table per HTTP function: method, path (as `template.yaml` declares it), who may call it, and the
//! handler, written next to the handlers. [`serve`] is the only router: it finds the route, admits the caller,
//! runs the handler and renders every failure as problem+json, so no handler routes, checks roles or builds an
//! error body of its own. A test holds every function's table equal to the template's routes.

use crate::function::Invocation;
use crate::http::{Request, Response};
use crate::idempotency::{self, Begun, Idempotency};
use crate::identity::{Identity, Role};
use crate::metrics;
use crate::openapi::Doc;
use crate::problem::Problem;
use crate::ratelimit::RateLimits;
use http::Method;
use http::header::{ALLOW, HeaderValue};
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

/// Who may call a route. In AWS the HTTP API's JWT authorizer has verified the token of every route but a public
/// one; the table decides what the verified claims allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (webhook ingest authenticates by signature instead).
    Public,
    /// Any caller with an organization and one of Keel's roles (member, admin, platform-admin).
    Member,
    /// Operators of the whole deployment.
    PlatformAdmin,
}

impl Access {
    fn admit(self, request: &Request) -> Result<Option<Identity>, Problem> {
        if self == Access::Public {
            return Ok(None);
        }
        let identity =
            Identity::from_request(request).ok_or_else(|| Problem::unauthorized("a valid bearer token is required"))?;
        match self {
            Access::Member if identity.roles.is_empty() => {
                Err(Problem::forbidden("this operation requires the `member` role or above"))
            }
            Access::PlatformAdmin if !identity.has_role(Role::PlatformAdmin) => {
                Err(Problem::forbidden("this operation requires the `platform-admin` role"))
            }
            _ => Ok(Some(identity)),
        }
    }
}

/// What a handler returns: a response, or a problem [`serve`] renders.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<Response, Problem>> + Send + 'a>>;

/// A handler: `|function, call| Box::pin(function.list(call))`.
pub type Handler<F> = for<'a> fn(&'a F, &'a Call) -> Answer<'a>;

pub struct Route<F> {
    pub method: Method,
    /// The path template, exactly as the template's `Path` (`/v1/admin/flags/{key}`).
    pub path: &'static str,
    pub access: Access,
    pub handler: Handler<F>,
    /// Whether the route changes state: every method but GET, unless marked [`Route::read_only`]. Writing routes
    /// honour `Idempotency-Key`.
    pub writes: bool,
    /// What the OpenAPI document says of the route.
    pub doc: Doc,
}

impl<F> Route<F> {
    pub const fn get(path: &'static str, access: Access, doc: Doc, handler: Handler<F>) -> Self {
        Self { method: Method::GET, path, access, handler, writes: false, doc }
    }

    pub const fn post(path: &'static str, access: Access, doc: Doc, handler: Handler<F>) -> Self {
        Self { method: Method::POST, path, access, handler, writes: true, doc }
    }

    pub const fn put(path: &'static str, access: Access, doc: Doc, handler: Handler<F>) -> Self {
        Self { method: Method::PUT, path, access, handler, writes: true, doc }
    }

    pub const fn delete(path: &'static str, access: Access, doc: Doc, handler: Handler<F>) -> Self {
        Self { method: Method::DELETE, path, access, handler, writes: true, doc }
    }

    /// A POST that only reads (an evaluation with a body).
    pub const fn read_only(mut self) -> Self {
        self.writes = false;
        self
    }

    /// API Gateway's route key: `METHOD /path`.
    pub fn route_key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An admitted request, as its handler gets it.
pub struct Call {
    pub request: Request,
    pub invocation: Invocation,
    identity: Option<Identity>,
}

impl Call {
    /// The caller. Every route but a public one has one; a public route's handler that asks gets a 401.
    pub fn identity(&self) -> Result<&Identity, Problem> {
        self.identity.as_ref().ok_or_else(|| Problem::unauthorized("a valid bearer token is required"))
    }
}

/// An HTTP function: its route table is all [`serve`] needs.
pub trait Api: Send + Sync + Sized + 'static {
    const ROUTES: &'static [Route<Self>];

    /// Where `Idempotency-Key` records are kept. Required of a function with a writing route that callers reach
    /// with a token (the route test checks it); a public route deduplicates by its own means (webhook ingest, by
    /// the provider's event id).
    fn idempotency(&self) -> Option<&Idempotency> {
        None
    }

    /// The function's rate limits, applied to every route a caller reaches with a token.
    fn rate_limits(&self) -> Option<&RateLimits> {
        None
    }
}

/// The route a response came from, in the response's extensions (for tests and metrics; never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub method: Method,
    pub path: &'static str,
}

/// Routes `request` through `function`'s table.
pub async fn serve<F: Api>(function: &F, request: Request) -> Response {
    let invocation = Invocation::of(&request);
    let trace_id = invocation.trace_id().map(str::to_string);
    let mut response = route_and_run(function, request, invocation).await;
    if let Some(value) = trace_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(TRACE_ID, value);
    }
    response
}

/// The header every HTTP answer carries: the X-Ray trace id of the invocation (`Root` of its trace header).
pub const TRACE_ID: &str = "x-trace-id";

async fn route_and_run<F: Api>(function: &F, mut request: Request, invocation: Invocation) -> Response {
    let started = std::time::Instant::now();
    let route = match find(F::ROUTES, &mut request) {
        Ok(route) => route,
        Err(problem) => {
            // Counted under one label: unknown paths cannot mint metrics.
            metrics::count("Requests", &[("Route", "unmatched"), ("Status", "4xx")], 1.0);
            return *problem;
        }
    };
    let mut response = match route.access.admit(&request) {
        Err(problem) => problem.into_response(),
        Ok(None) => run(function, route, Call { request, invocation, identity: None }).await,
        Ok(Some(caller)) => {
            // Operators' actions are logged, members' high-volume calls (flag evaluations) are not.
            if route.access == Access::PlatformAdmin {
                tracing::info!(method = %route.method, route = route.path, user = %caller.user_id, "operator request");
            }
            let mut limited = match function.rate_limits() {
                Some(limits) => Some(limits.check(&caller.org_id, source_ip(&request).as_deref()).await),
                None => None,
            };
            let refusal = limited.as_mut().and_then(|decision| decision.refusal.take());
            let mut response = match refusal {
                Some(refusal) => refusal,
                None => match request.headers().get(idempotency::HEADER).cloned().filter(|_| route.writes) {
                    Some(raw_key) => {
                        keyed(function, route, Call { request, invocation, identity: Some(caller) }, &raw_key).await
                    }
                    None => run(function, route, Call { request, invocation, identity: Some(caller) }).await,
                },
            };
            for (name, value) in limited.map(|decision| decision.headers).unwrap_or_default() {
                response.headers_mut().insert(name, value);
            }
            response
        }
    };
    let status = match response.status().as_u16() {
        ..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let dimensions = [("Route", route.route_key()), ("Status", status.to_string())];
    let dimensions: Vec<(&str, &str)> = dimensions.iter().map(|(k, v)| (*k, v.as_str())).collect();
    metrics::count("Requests", &dimensions, 1.0);
    metrics::milliseconds("Latency", &dimensions, started.elapsed().as_secs_f64() * 1000.0);
    response.extensions_mut().insert(Matched { method: route.method.clone(), path: route.path });
    response
}

/// The handler's answer, every failure rendered as problem+json.
async fn run<F: Api>(function: &F, route: &Route<F>, call: Call) -> Response {
    (route.handler)(function, &call).await.unwrap_or_else(Problem::into_response)
}

/// The handler's answer under an `Idempotency-Key`: run once, replayed after.
async fn keyed<F: Api>(function: &F, route: &Route<F>, call: Call, raw_key: &HeaderValue) -> Response {
    let (Some(store), Ok(caller)) = (function.idempotency(), call.identity()) else {
        return Problem::new(500, "internal", "Idempotency-Key is not configured for this function").into_response();
    };
    match store.begin(caller, &route.route_key(), raw_key, &call.request, call.invocation.deadline).await {
        Begun::Answer(response) => response,
        Begun::Run(claim) => {
            let answer = run(function, route, call).await;
            store.finish(claim, answer).await
        }
    }
}

/// The caller's address as API Gateway saw it.
fn source_ip(request: &Request) -> Option<String> {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone(),
        _ => None,
    }
}

/// The route for `request`: the one API Gateway matched (its route key), or, for an event without one (a direct
/// invoke), the most specific template the path fits, whose parameters then go into the request as API
/// Gateway's would. 404 when no path fits, 405 (with `Allow`) when the path fits under other methods only.
fn find<'r, F>(routes: &'r [Route<F>], request: &mut Request) -> Result<&'r Route<F>, Box<Response>> {
    let route_key = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.route_key.clone().filter(|key| key != "$default"),
        _ => None,
    };
    let mut params = HashMap::new();
    let fits: Vec<&Route<F>> = match route_key.as_deref().and_then(|key| key.split_once(' ')) {
        Some((_, path)) => routes.iter().filter(|route| route.path == path).collect(),
        None => {
            let segments: Vec<String> = request
                .uri()
                .path()
                .split('/')
                .skip(1)
                .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
                .collect();
            let mut fitting: Vec<(&Route<F>, HashMap<String, String>)> =
                routes.iter().filter_map(|route| fit(route.path, &segments).map(|found| (route, found))).collect();
            // Fewest parameters first: `/flags/import` before `/flags/{key}`, as API Gateway prefers.
            fitting.sort_by_key(|(_, found)| found.len());
            let chosen = fitting.iter().find(|(route, _)| route.method == request.method()).or(fitting.first());
            if let Some((_, found)) = chosen {
                params = found.clone();
            }
            fitting.into_iter().map(|(route, _)| route).collect()
        }
    };
    if fits.is_empty() {
        return Err(Box::new(Problem::not_found("no such operation").into_response()));
    }
    let Some(route) = fits.iter().find(|route| route.method == request.method()) else {
        let mut allowed: Vec<&str> = fits.iter().map(|route| route.method.as_str()).collect();
        allowed.sort_unstable();
        allowed.dedup();
        let allowed = allowed.join(", ");
        let path = request.uri().path().to_string();
        let mut response =
            Problem::new(405, "method_not_allowed", format!("{path} accepts {allowed} only")).into_response();
        if let Ok(value) = HeaderValue::from_str(&allowed) {
            response.headers_mut().insert(ALLOW, value);
        }
        return Err(Box::new(response));
    };
    if !params.is_empty() && request.path_parameters_ref().is_none() {
        let taken = std::mem::take(request);
        *request = taken.with_path_parameters(params);
    }
    Ok(route)
}

/// The parameters `segments` give `template`, if the path fits it.
fn fit(template: &str, segments: &[String]) -> Option<HashMap<String, String>> {
    let parts: Vec<&str> = template.split('/').skip(1).collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = HashMap::new();
    for (part, segment) in parts.iter().zip(segments) {
        match part.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')) {
            Some(name) if !segment.is_empty() => {
                params.insert(name.to_string(), segment.clone());
            }
            Some(_) => return None,
            None if part == segment => {}
            None => return None,
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{self, RequestExt};
    use crate::lambda::request_of;
    use aws_lambda_events::apigw::ApiGatewayV2httpRequest;

    struct Fixture;

    impl Fixture {
        async fn named(&self, call: &Call) -> Result<Response, Problem> {
            let name = http::path_param(&call.request, "name").unwrap_or("<none>");
            let user = call.identity().map(|identity| identity.user_id.clone()).unwrap_or_default();
            Ok(http::json(200, &serde_json::json!({"name": name, "user": user})))
        }
    }

    impl Api for Fixture {
        const ROUTES: &'static [Route<Self>] = &[
            Route::get("/things/{name}", Access::Member, Doc::NONE, |f, call| Box::pin(f.named(call))),
            Route::put("/things/{name}", Access::PlatformAdmin, Doc::NONE, |f, call| Box::pin(f.named(call))),
            Route::post("/things/import", Access::Public, Doc::NONE, |f, call| Box::pin(f.named(call))),
            Route::post("/fail", Access::Public, Doc::NONE, |_, _| {
                Box::pin(async { Err(Problem::unprocessable("bad", "no good").at("/x")) })
            }),
        ];
    }

    fn event(method: &str, path: &str, route_key: Option<&str>, roles: Option<&str>) -> Request {
        let mut json = serde_json::json!({"rawPath": path, "requestContext": {"http": {"method": method}}});
        if let Some(key) = route_key {
            json["routeKey"] = key.into();
            json["requestContext"]["routeKey"] = key.into();
        }
        if let Some(roles) = roles {
            json["requestContext"]["authorizer"] =
                serde_json::json!({"jwt": {"claims": {"sub": "u1", "org_id": "o1", "roles": roles}}});
        }
        let event: ApiGatewayV2httpRequest = serde_json::from_value(json).unwrap();
        request_of(event)
    }

    async fn send(request: Request) -> (u16, serde_json::Value, Response) {
        let response = serve(&Fixture, request).await;
        let body = serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null);
        (response.status().as_u16(), body, response)
    }

    #[tokio::test]
    async fn api_gateways_route_key_picks_the_route_and_its_parameters_come_through() {
        let mut request = event("GET", "/things/a%20b", Some("GET /things/{name}"), Some("[member]"));
        request =
            request.with_path_parameters(std::collections::HashMap::from([("name".to_string(), "a b".to_string())]));
        let (status, body, response) = send(request).await;
        assert_eq!((status, body["name"].as_str(), body["user"].as_str()), (200, Some("a b"), Some("u1")));
        let matched = response.extensions().get::<Matched>().cloned();
        assert_eq!(matched, Some(Matched { method: Method::GET, path: "/things/{name}" }));
    }

    #[tokio::test]
    async fn without_a_route_key_the_most_specific_template_wins_and_fills_the_parameters() {
        let (status, body, _) = send(event("POST", "/things/import", None, None)).await;
        assert_eq!((status, body["name"].as_str()), (200, Some("<none>")), "the literal route, not {{name}}");
        let (status, body, _) = send(event("GET", "/things/caf%C3%A9", None, Some("[member]"))).await;
        assert_eq!((status, body["name"].as_str()), (200, Some("café")), "decoded as API Gateway decodes");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405_with_allow() {
        let (status, body, _) = send(event("GET", "/nothing", None, None)).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        let (status, body, response) = send(event("DELETE", "/things/a", None, Some("[member]"))).await;
        assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")));
        assert_eq!(response.headers()["allow"], "GET, PUT");
        assert!(response.extensions().get::<Matched>().is_none());
    }

    #[tokio::test]
    async fn access_is_checked_before_the_handler_runs() {
        let key = Some("PUT /things/{name}");
        assert_eq!(send(event("PUT", "/things/a", key, None)).await.0, 401);
        assert_eq!(send(event("PUT", "/things/a", key, Some("[member]"))).await.0, 403);
        assert_eq!(send(event("PUT", "/things/a", key, Some("[platform-admin]"))).await.0, 200);
        let get = Some("GET /things/{name}");
        assert_eq!(send(event("GET", "/things/a", get, Some("[]"))).await.0, 403, "no role at all");
        assert_eq!(send(event("GET", "/things/a", get, Some("[admin]"))).await.0, 200);
        let (status, body, _) = send(event("POST", "/things/import", Some("POST /things/import"), None)).await;
        assert_eq!((status, body["user"].as_str()), (200, Some("")), "public: no identity needed");
    }

    #[tokio::test]
    async fn every_answer_carries_the_trace_id_of_its_invocation() {
        let mut context = lambda_runtime::Context::default();
        context.xray_trace_id =
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into());
        for (method, path) in [("POST", "/things/import"), ("GET", "/nothing"), ("DELETE", "/things/a")] {
            let request = event(method, path, None, None).with_lambda_context(context.clone());
            let (_, _, response) = send(request).await;
            assert_eq!(response.headers()["x-trace-id"], "1-5759e988-bd862e3fe1be46a994272793", "{method} {path}");
        }
        let (_, _, untraced) = send(event("POST", "/things/import", None, None)).await;
        assert!(untraced.headers().get("x-trace-id").is_none());
    }

    #[tokio::test]
    async fn a_handlers_problem_is_rendered_as_problem_json() {
        let (status, body, response) = send(event("POST", "/fail", Some("POST /fail"), None)).await;
        assert_eq!((status, body["code"].as_str(), body["pointer"].as_str()), (422, Some("bad"), Some("/x")));
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert!(response.extensions().get::<Matched>().is_some());
    }
}
