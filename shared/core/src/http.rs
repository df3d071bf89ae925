//! Small helpers over API Gateway HTTP API (payload 2.0) requests and responses, shared by every HTTP function.

use crate::identity::{Identity, Role};
use crate::problem::Problem;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use base64::Engine;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use std::borrow::Cow;

pub fn response(status: u16, content_type: &str, body: String) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse { status_code: i64::from(status), ..Default::default() };
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers.insert(CONTENT_TYPE, value);
    }
    response.body = Some(Body::Text(body));
    response
}

pub fn json<T: Serialize>(status: u16, value: &T) -> ApiGatewayV2httpResponse {
    match serde_json::to_string(value) {
        Ok(body) => response(status, "application/json", body),
        Err(_) => Problem::new(500, "internal", "the response could not be encoded").into_response(),
    }
}

/// A response body as text (binary bodies are decoded lossily); for tests and the local host's logs.
pub fn body_text(response: &ApiGatewayV2httpResponse) -> String {
    match &response.body {
        Some(Body::Text(text)) => text.clone(),
        Some(Body::Binary(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    }
}

pub fn header<'a>(request: &'a ApiGatewayV2httpRequest, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn path_param<'a>(request: &'a ApiGatewayV2httpRequest, name: &str) -> Option<&'a str> {
    request.path_parameters.get(name).map(String::as_str)
}

pub fn query_param<'a>(request: &'a ApiGatewayV2httpRequest, name: &str) -> Option<&'a str> {
    request.query_string_parameters.first(name).filter(|v| !v.is_empty())
}

/// The exact bytes the client sent. API Gateway base64-encodes bodies it considers binary.
pub fn raw_body(request: &ApiGatewayV2httpRequest) -> Result<Cow<'_, [u8]>, Problem> {
    match &request.body {
        None => Ok(Cow::Borrowed(&[])),
        Some(body) if request.is_base64_encoded => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map(Cow::Owned)
            .map_err(|_| Problem::bad_request("malformed_body", "the body is marked base64 but is not valid base64")),
        Some(body) => Ok(Cow::Borrowed(body.as_bytes())),
    }
}

/// Parses a JSON body into `T`; a body that is empty, not JSON or of the wrong shape is a 4xx that says why.
pub fn json_body<T: serde::de::DeserializeOwned>(request: &ApiGatewayV2httpRequest) -> Result<T, Problem> {
    let raw = raw_body(request)?;
    if raw.is_empty() {
        return Err(Problem::bad_request("missing_body", "a JSON body is required"));
    }
    serde_json::from_slice(&raw).map_err(|e| Problem::unprocessable("invalid_body", format!("invalid JSON body: {e}")))
}

/// The caller's identity, requiring `role`. 401 without an identity, 403 without the role.
pub fn require_role(request: &ApiGatewayV2httpRequest, role: Role) -> Result<Identity, Problem> {
    let identity =
        Identity::from_request(request).ok_or_else(|| Problem::unauthorized("a valid bearer token is required"))?;
    if identity.has_role(role) {
        Ok(identity)
    } else {
        Err(Problem::forbidden(format!("this operation requires the `{}` role", role.as_str())))
    }
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
