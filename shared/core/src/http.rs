//! Requests and responses as every HTTP function sees them: `http::Request` as `lambda_http` builds it from an
//! API Gateway HTTP API event (payload 2.0), with the path parameters, the query string, the authorizer's claims and
//! the invocation's context in its extensions. The Lambda runtime and the local host make it the same way
//! (`keel::lambda`), so there is one code path.

use crate::problem::Problem;
use ::http::header::CONTENT_TYPE;
use base64::Engine;
use serde::Serialize;

pub use ::http::{HeaderValue, Method, StatusCode, header};
pub use lambda_http::request::RequestContext;
pub use lambda_http::{Body, Request, RequestExt};

/// What a handler answers.
pub type Response = http::Response<Body>;

pub fn response(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    let mut response = http::Response::new(body.into());
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

/// A response without a body (204, 304).
pub fn empty(status: u16) -> Response {
    let mut response = http::Response::new(Body::Empty);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response
}

pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => response(status, "application/json", body),
        Err(_) => Problem::new(500, "internal", "the response could not be encoded").into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A path parameter: API Gateway's, or the route table's when the event carried none.
pub fn path_param<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.path_parameters_ref().and_then(|params| params.first(name))
}

/// A `true`/`false` query parameter; anything else is 422 naming it.
pub fn bool_param(request: &Request, name: &str) -> Result<Option<bool>, Problem> {
    match query_param(request, name) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(Problem::invalid_param(name, format!("{name} is true or false"))),
    }
}

pub fn query_param<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.query_string_parameters_ref().and_then(|params| params.first(name)).filter(|v| !v.is_empty())
}

/// The exact bytes the client sent (a base64-encoded event body is decoded by the conversion).
pub fn raw_body(request: &Request) -> &[u8] {
    request.body()
}

/// Parses a JSON body into `T`; a body that is empty, not JSON or of the wrong shape is a 4xx that says why.
pub fn json_body<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, Problem> {
    let raw = raw_body(request);
    if raw.is_empty() {
        return Err(Problem::bad_request("missing_body", "a JSON body is required"));
    }
    serde_json::from_slice(raw).map_err(|e| Problem::unprocessable("invalid_body", format!("invalid JSON body: {e}")))
}

/// The body as JSON: 413 over `cap` bytes, 400 when empty or not JSON.
pub fn body_value(request: &Request, cap: usize) -> Result<serde_json::Value, Problem> {
    let raw = raw_body(request);
    if raw.len() > cap {
        return Err(Problem::new(413, "body_too_large", format!("the body is over {cap} bytes")));
    }
    if raw.is_empty() {
        return Err(Problem::bad_request("missing_body", "a JSON body is required"));
    }
    serde_json::from_slice(raw)
        .map_err(|e| Problem::bad_request("malformed_json", format!("the body is not JSON: {e}")))
}

/// Deserializes a JSON value; a value of the wrong shape is a 422 (`code`) pointing at the field that did not fit.
pub fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value, code: &str) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut pointer = json_pointer(error.path());
        let message = error.inner().to_string();
        // serde names a missing field only in its message; point at where it belongs.
        if let Some(field) = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
            pointer.push('/');
            pointer.push_str(&field.replace('~', "~0").replace('/', "~1"));
        }
        Problem::invalid(code, vec![crate::problem::FieldError { pointer, message }])
    })
}

/// A serde path as an RFC 6901 JSON pointer.
pub fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => {
                pointer.push('/');
                pointer.push_str(&index.to_string());
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => break,
        }
    }
    pointer
}

/// Query parameter `name` as a cursor [`encode_cursor`] made whose position passes `valid`; 422 naming the parameter
/// otherwise.
pub fn cursor_param(request: &Request, name: &str, valid: impl Fn(&str) -> bool) -> Result<Option<String>, Problem> {
    let Some(raw) = query_param(request, name) else { return Ok(None) };
    decode_cursor(raw)
        .filter(|position| valid(position))
        .map(Some)
        .ok_or_else(|| Problem::invalid_param(name, "the cursor is not one this API returned"))
}

/// Query parameter `limit`: `default` when absent, else an integer from 1 to `max`; 422 otherwise.
pub fn limit_param(request: &Request, default: usize, max: usize) -> Result<usize, Problem> {
    let Some(raw) = query_param(request, "limit") else { return Ok(default) };
    raw.parse()
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| Problem::invalid_param("limit", format!("limit is an integer from 1 to {max}")))
}

/// An opaque pagination cursor for a table position (a sort key).
pub fn encode_cursor(position: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}

/// The position an [`encode_cursor`] cursor holds, if `raw` is one; callers decide what a bad cursor answers.
pub fn decode_cursor(raw: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}
