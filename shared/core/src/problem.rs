//! Errors on the wire: RFC 9457 problem+json with a stable machine-readable `code`. Details say what is wrong with
//! the request; they never carry a stack trace, an internal error message or a secret.

use serde::Serialize;

/// RFC 9457 problem details with Keel's stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    /// A JSON pointer or parameter name locating the offending input, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Every problem found in the input, when there are several (`pointer` locates the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// One problem with the input: where (a JSON pointer or parameter name) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

impl Problem {
    pub fn new(status: u16, code: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:keel:problem:{code}"),
            title: title_for(status).to_string(),
            status,
            detail: detail.into(),
            code: code.to_string(),
            pointer: None,
            errors: None,
        }
    }

    pub fn at(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }

    /// Lists every problem found; `pointer` is set to the first one's when not already set.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        if self.pointer.is_none() {
            self.pointer = errors.first().map(|e| e.pointer.clone());
        }
        self.errors = Some(errors);
        self
    }

    /// 422 listing every problem found in the input; `pointer` names the first.
    pub fn invalid(code: &str, errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [] => "the request is not valid".to_string(),
            [only] => only.message.clone(),
            [first, rest @ ..] => format!("{} (and {} more problems, listed in `errors`)", first.message, rest.len()),
        };
        Problem::unprocessable(code, detail).with_errors(errors)
    }

    /// 422 for one query parameter (or body field) `name`.
    pub fn invalid_param(name: &str, message: impl Into<String>) -> Self {
        Problem::invalid("invalid_parameter", vec![FieldError { pointer: name.to_string(), message: message.into() }])
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(400, code, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(403, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not_found", detail)
    }

    pub fn unprocessable(code: &str, detail: impl Into<String>) -> Self {
        Self::new(422, code, detail)
    }

    /// A backend failed; the client should retry. The cause goes to the logs, not to the client.
    pub fn unavailable() -> Self {
        Self::new(503, "backend_unavailable", "a backend is temporarily unavailable; retry the request")
    }

    pub fn into_response(self) -> crate::http::Response {
        let body = serde_json::to_string(&self).unwrap_or_default();
        crate::http::response(self.status, "application/problem+json", body)
    }
}

fn title_for(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9457_fields_and_content_type() {
        let response = Problem::unprocessable("invalid_field", "limit must be 1..=100").at("limit").into_response();
        assert_eq!(response.status(), 422);
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"type": "urn:keel:problem:invalid_field", "title": "Unprocessable Content",
                "status": 422, "detail": "limit must be 1..=100", "code": "invalid_field", "pointer": "limit"})
        );
    }
}
