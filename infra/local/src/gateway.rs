//! API Gateway HTTP API, as far as a function can tell: route selection, the payload format 2.0 request event, and
//! how the function's response becomes the HTTP response.
//!
//! Requests and responses go through their JSON form, exactly as between API Gateway and Lambda: the host writes
//! the event API Gateway would send and the function receives what `aws_lambda_events` deserialises from it; the
//! function's response is serialised and read back the way API Gateway reads it.

use crate::template::{Auth, RouteDecl};
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// API Gateway's payload limit.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

impl Segment {
    /// Lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param(_) => 1,
            Segment::Greedy(_) => 2,
        }
    }
}

/// One route of the HTTP API and the function (by index) it integrates with.
#[derive(Debug, Clone)]
pub struct Route {
    /// `None` for `ANY`.
    pub method: Option<Method>,
    /// As declared (`$default` for the catch-all).
    pub path: String,
    pub route_key: String,
    pub auth: Auth,
    pub target: usize,
    /// `None` for `$default`.
    segments: Option<Vec<Segment>>,
}

impl Route {
    pub fn new(decl: &RouteDecl, target: usize) -> Result<Self, String> {
        let method = match decl.method.as_str() {
            "ANY" => None,
            other => Some(Method::from_bytes(other.as_bytes()).map_err(|_| format!("unknown method `{other}`"))?),
        };
        let segments = if decl.path == "$default" {
            None
        } else {
            crate::template::check_route_path(&decl.path)?;
            Some(
                decl.path
                    .trim_start_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => match name.strip_suffix('+') {
                            Some(name) => Segment::Greedy(name.to_string()),
                            None => Segment::Param(name.to_string()),
                        },
                        None => Segment::Literal(s.to_string()),
                    })
                    .collect(),
            )
        };
        Ok(Self {
            method,
            path: decl.path.clone(),
            route_key: decl.route_key(),
            auth: decl.auth.clone(),
            target,
            segments,
        })
    }

    fn matches(&self, segments: &[String]) -> Option<HashMap<String, String>> {
        let Some(pattern) = &self.segments else { return Some(HashMap::new()) };
        let mut params = HashMap::new();
        for (i, part) in pattern.iter().enumerate() {
            match part {
                Segment::Greedy(name) => {
                    let rest = segments.get(i..).filter(|rest| !rest.is_empty())?;
                    params.insert(name.clone(), rest.join("/"));
                    return Some(params);
                }
                Segment::Literal(text) => {
                    if segments.get(i)? != text {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = segments.get(i).filter(|v| !v.is_empty())?;
                    params.insert(name.clone(), value.clone());
                }
            }
        }
        (segments.len() == pattern.len()).then_some(params)
    }

    /// How API Gateway prefers among matching routes: most specific path first (segment by segment: literal,
    /// then parameter, then greedy), `$default` last, an exact method before `ANY`.
    fn priority(&self) -> (bool, Vec<u8>, bool) {
        match &self.segments {
            None => (true, Vec::new(), true),
            Some(segments) => (false, segments.iter().map(Segment::rank).collect(), self.method.is_none()),
        }
    }
}

/// The HTTP API's routes.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(Route::priority);
        Self { routes }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The route for a request (by its decoded path segments) and its path parameters.
    pub fn find(&self, method: &Method, segments: &[String]) -> Option<(&Route, HashMap<String, String>)> {
        self.routes
            .iter()
            .filter(|route| route.method.as_ref().is_none_or(|m| m == method))
            .find_map(|route| route.matches(segments).map(|params| (route, params)))
    }
}

/// The path API Gateway HTTP API hands over: percent-decoded.
pub fn decoded_path(uri: &Uri) -> String {
    percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy().into_owned()
}

/// The decoded path's segments (the leading `/` dropped; a trailing `/` leaves an empty last segment).
pub fn path_segments(decoded: &str) -> Vec<String> {
    let trimmed = decoded.strip_prefix('/').unwrap_or(decoded);
    if trimmed.is_empty() { Vec::new() } else { trimmed.split('/').map(str::to_string).collect() }
}

/// What the host knows about one incoming request.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: http::Version,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub source_ip: IpAddr,
    pub request_id: &'a str,
    pub now: DateTime<Utc>,
    pub route_key: &'a str,
    pub path_parameters: &'a HashMap<String, String>,
    /// Verified claims, already flattened to strings; `None` on routes without an authorizer.
    pub claims: Option<&'a HashMap<String, String>>,
}

/// The payload format 2.0 event as JSON.
pub fn request_json(incoming: &Incoming<'_>) -> Value {
    // Header names arrive lower-cased from `http`; repeated headers are joined with commas. Cookies leave the
    // headers for their own field.
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in incoming.headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == http::header::COOKIE {
            cookies.extend(text.split(';').map(str::trim).filter(|c| !c.is_empty()).map(str::to_string));
        } else {
            headers.entry(name.as_str().to_ascii_lowercase()).or_default().push(text);
        }
    }
    let headers: Map<String, Value> = headers.into_iter().map(|(k, v)| (k, Value::String(v.join(",")))).collect();

    let raw_query = incoming.uri.query().unwrap_or_default();
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(raw_query.as_bytes()) {
        query.entry(name.into_owned()).or_default().push(value.into_owned());
    }
    let query: Map<String, Value> = query.into_iter().map(|(k, v)| (k, Value::String(v.join(",")))).collect();

    let path = decoded_path(incoming.uri);
    let protocol = match incoming.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let user_agent =
        incoming.headers.get(http::header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let host = incoming.headers.get(http::header::HOST).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let domain = host.unwrap_or_else(|| "localhost".to_string());
    let domain_prefix = domain.split('.').next().unwrap_or_default().to_string();

    let mut context = json!({
        "accountId": crate::template::LOCAL_ACCOUNT,
        "apiId": "keel-local",
        "domainName": domain,
        "domainPrefix": domain_prefix,
        "http": {
            "method": incoming.method.as_str(),
            "path": path,
            "protocol": protocol,
            "sourceIp": incoming.source_ip.to_string(),
            "userAgent": user_agent.unwrap_or_default(),
        },
        "requestId": incoming.request_id,
        "routeKey": incoming.route_key,
        "stage": "$default",
        "time": incoming.now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
        "timeEpoch": incoming.now.timestamp_millis(),
    });
    if let (Some(claims), Some(context)) = (incoming.claims, context.as_object_mut()) {
        context.insert("authorizer".into(), json!({ "jwt": { "claims": claims, "scopes": null } }));
    }

    let mut event = json!({
        "version": "2.0",
        "routeKey": incoming.route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": false,
    });
    if let Some(event) = event.as_object_mut() {
        if !cookies.is_empty() {
            event.insert("cookies".into(), json!(cookies));
        }
        if !query.is_empty() {
            event.insert("queryStringParameters".into(), Value::Object(query));
        }
        if !incoming.path_parameters.is_empty() {
            event.insert("pathParameters".into(), json!(incoming.path_parameters));
        }
        if !incoming.body.is_empty() {
            match std::str::from_utf8(incoming.body) {
                Ok(text) => {
                    event.insert("body".into(), Value::String(text.to_string()));
                }
                Err(_) => {
                    event.insert("body".into(), Value::String(STANDARD.encode(incoming.body)));
                    event.insert("isBase64Encoded".into(), Value::Bool(true));
                }
            }
        }
    }
    event
}

/// The event the function receives, deserialised from its JSON as the Lambda runtime would.
pub fn to_request(incoming: &Incoming<'_>) -> Result<ApiGatewayV2httpRequest, String> {
    serde_json::from_value(request_json(incoming)).map_err(|e| format!("the request event does not deserialise: {e}"))
}

/// An HTTP response as API Gateway makes it from the function's.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Hop-by-hop and framing headers are API Gateway's, not the function's.
const DROPPED_HEADERS: [&str; 4] = ["content-length", "transfer-encoding", "connection", "keep-alive"];

/// Reads the function's response as API Gateway reads the Lambda's JSON: `statusCode`, `headers`,
/// `multiValueHeaders`, `cookies` (one `set-cookie` each) and `body` (base64-decoded when `isBase64Encoded`).
/// An unusable response is an error (API Gateway answers 500).
pub fn from_response(response: &ApiGatewayV2httpResponse) -> Result<Reply, String> {
    let value = serde_json::to_value(response).map_err(|e| format!("the response does not serialise: {e}"))?;
    let status = value
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or("the response has no valid statusCode")?;
    let mut headers = HeaderMap::new();
    let header = |name: &str, value: &str| -> Result<Option<(HeaderName, HeaderValue)>, String> {
        if DROPPED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Ok(None);
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name `{name}`"))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("invalid value for header `{name}`"))?;
        Ok(Some((name, value)))
    };
    if let Some(Value::Object(single)) = value.get("headers") {
        for (name, v) in single {
            if let Some((name, v)) = header(name, v.as_str().unwrap_or_default())? {
                headers.insert(name, v);
            }
        }
    }
    if let Some(Value::Object(multi)) = value.get("multiValueHeaders") {
        for (name, values) in multi {
            for v in values.as_array().into_iter().flatten() {
                if let Some((name, v)) = header(name, v.as_str().unwrap_or_default())?
                    && !headers.get_all(&name).iter().any(|existing| *existing == v)
                {
                    headers.append(name, v);
                }
            }
        }
    }
    for cookie in value.get("cookies").and_then(Value::as_array).into_iter().flatten() {
        if let Some((name, v)) = header("set-cookie", cookie.as_str().unwrap_or_default())? {
            headers.append(name, v);
        }
    }
    let body = match value.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) if value.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            STANDARD.decode(text).map_err(|_| "the body is marked base64 but is not".to_string())?
        }
        Some(Value::String(text)) => text.clone().into_bytes(),
        Some(_) => return Err("the body is not a string".into()),
    };
    Ok(Reply { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::encodings::Body;

    fn route(method: &str, path: &str) -> RouteDecl {
        RouteDecl { event: "E".into(), method: method.into(), path: path.into(), auth: Auth::None }
    }

    fn table(decls: &[(&str, &str)]) -> Routes {
        Routes::new(decls.iter().enumerate().map(|(i, (m, p))| Route::new(&route(m, p), i).unwrap()).collect())
    }

    fn find<'a>(routes: &'a Routes, method: Method, path: &str) -> Option<(&'a str, HashMap<String, String>)> {
        routes.find(&method, &path_segments(path)).map(|(r, p)| (r.route_key.as_str(), p))
    }

    #[test]
    fn the_most_specific_route_wins() {
        let routes = table(&[
            ("ANY", "$default"),
            ("GET", "/files/{proxy+}"),
            ("GET", "/files/{name}"),
            ("GET", "/files/readme"),
            ("ANY", "/files/readme"),
            ("POST", "/items/{id}/replay"),
        ]);
        assert_eq!(find(&routes, Method::GET, "/files/readme").unwrap().0, "GET /files/readme");
        assert_eq!(find(&routes, Method::PUT, "/files/readme").unwrap().0, "ANY /files/readme");
        let (key, params) = find(&routes, Method::GET, "/files/a.txt").unwrap();
        assert_eq!((key, params["name"].as_str()), ("GET /files/{name}", "a.txt"));
        let (key, params) = find(&routes, Method::GET, "/files/a/b/c").unwrap();
        assert_eq!((key, params["proxy"].as_str()), ("GET /files/{proxy+}", "a/b/c"));
        assert_eq!(find(&routes, Method::POST, "/items/7/replay").unwrap().1["id"], "7");
        assert_eq!(find(&routes, Method::GET, "/elsewhere").unwrap().0, "$default");
    }

    #[test]
    fn unmatched_methods_paths_and_empty_params_find_nothing() {
        let routes = table(&[("POST", "/webhooks/{provider}"), ("GET", "/")]);
        assert!(find(&routes, Method::GET, "/webhooks/acme").is_none());
        assert!(find(&routes, Method::POST, "/webhooks").is_none());
        assert!(find(&routes, Method::POST, "/webhooks/").is_none());
        assert!(find(&routes, Method::POST, "/webhooks/acme/extra").is_none());
        assert!(find(&routes, Method::GET, "/").is_some());
    }

    fn incoming_event(
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        claims: Option<&HashMap<String, String>>,
    ) -> Value {
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        let params = HashMap::from([("provider".to_string(), "acme pay".to_string())]);
        let now = DateTime::parse_from_rfc3339("2026-03-12T19:03:58.123Z").unwrap().with_timezone(&Utc);
        request_json(&Incoming {
            method: &Method::POST,
            uri: &uri,
            version: http::Version::HTTP_11,
            headers: &map,
            body,
            source_ip: "127.0.0.1".parse().unwrap(),
            request_id: "01J0000000000000000000000",
            now,
            route_key: "POST /webhooks/{provider}",
            path_parameters: &params,
            claims,
        })
    }

    #[test]
    fn the_event_has_the_payload_v2_shape() {
        let event = incoming_event(
            "/webhooks/acme%20pay?a=1&b=x%20y&a=2&flag",
            &[
                ("Host", "127.0.0.1:3000"),
                ("User-Agent", "curl/8"),
                ("X-Multi", "one"),
                ("x-multi", "two"),
                ("Cookie", "s=1; t=2"),
            ],
            b"{\"ok\":true}",
            None,
        );
        assert_eq!(event["version"], "2.0");
        assert_eq!(event["routeKey"], "POST /webhooks/{provider}");
        assert_eq!(event["rawPath"], "/webhooks/acme pay");
        assert_eq!(event["rawQueryString"], "a=1&b=x%20y&a=2&flag");
        assert_eq!(event["queryStringParameters"], json!({"a": "1,2", "b": "x y", "flag": ""}));
        assert_eq!(event["pathParameters"], json!({"provider": "acme pay"}));
        assert_eq!(event["headers"]["x-multi"], "one,two");
        assert_eq!(event["headers"]["user-agent"], "curl/8");
        assert!(event["headers"].get("cookie").is_none());
        assert_eq!(event["cookies"], json!(["s=1", "t=2"]));
        assert_eq!(event["body"], "{\"ok\":true}");
        assert_eq!(event["isBase64Encoded"], false);
        let context = &event["requestContext"];
        assert_eq!(
            context["http"],
            json!({"method": "POST", "path": "/webhooks/acme pay", "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1", "userAgent": "curl/8"})
        );
        assert_eq!(context["stage"], "$default");
        assert_eq!(context["routeKey"], "POST /webhooks/{provider}");
        assert_eq!(context["requestId"], "01J0000000000000000000000");
        assert_eq!(context["time"], "12/Mar/2026:19:03:58 +0000");
        assert_eq!(context["timeEpoch"], 1_773_342_238_123_i64);
        assert!(context.get("authorizer").is_none());
    }

    #[test]
    fn binary_bodies_are_base64_and_claims_go_to_the_authorizer_context() {
        let claims =
            HashMap::from([("sub".to_string(), "u1".to_string()), ("roles".to_string(), "[admin]".to_string())]);
        let event = incoming_event("/webhooks/x", &[], &[0xff, 0x00, 0xfe], Some(&claims));
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["body"], STANDARD.encode([0xff, 0x00, 0xfe]));
        assert_eq!(event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"], "[admin]");
        let request = keel::lambda::request_of(serde_json::from_value(event).unwrap());
        assert_eq!(keel::http::raw_body(&request), &[0xff, 0x00, 0xfe]);
        let identity = keel::identity::Identity::from_request(&request);
        assert!(identity.is_none(), "no org_id claim, no identity");
    }

    #[test]
    fn responses_map_headers_cookies_and_base64_bodies() {
        let mut response = ApiGatewayV2httpResponse::default();
        response.status_code = 201;
        response.headers.insert("content-type", HeaderValue::from_static("text/plain"));
        response.body = Some(Body::Text("hi".into()));
        response.multi_value_headers.append("x-many", HeaderValue::from_static("a"));
        response.multi_value_headers.append("x-many", HeaderValue::from_static("b"));
        response.cookies = vec!["a=1; Path=/".into(), "b=2".into()];
        let reply = from_response(&response).unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.headers["content-type"], "text/plain");
        assert_eq!(reply.headers.get_all("x-many").iter().count(), 2);
        assert_eq!(reply.headers.get_all("set-cookie").iter().collect::<Vec<_>>(), ["a=1; Path=/", "b=2"]);
        assert_eq!(reply.body, b"hi");

        let mut binary = ApiGatewayV2httpResponse::default();
        binary.status_code = 200;
        binary.body = Some(Body::Text(STANDARD.encode([1u8, 2, 255])));
        binary.is_base64_encoded = true;
        assert_eq!(from_response(&binary).unwrap().body, vec![1u8, 2, 255]);

        let mut raw = ApiGatewayV2httpResponse::default();
        raw.status_code = 200;
        raw.body = Some(Body::Binary(vec![1, 2, 255]));
        raw.is_base64_encoded = true;
        assert_eq!(from_response(&raw).unwrap().body, vec![1u8, 2, 255]);

        let mut broken = ApiGatewayV2httpResponse::default();
        broken.status_code = 42;
        assert!(from_response(&broken).is_err());
    }
}
