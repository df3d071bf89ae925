//! The caller's identity, read from the API Gateway HTTP API JWT authorizer context (`requestContext.authorizer
//! .jwt.claims`, which `lambda_http` keeps in the request's extensions). API Gateway has verified the token;
//! functions never trust a tenant id from the body or query.

use crate::http::Request;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    PlatformAdmin,
}

impl Role {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "platform-admin" => Some(Role::PlatformAdmin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::PlatformAdmin => "platform-admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub org_id: String,
    pub roles: Vec<Role>,
}

impl Identity {
    /// `None` when the request carries no authorizer claims, or lacks `sub` or `org_id`.
    pub fn from_request(request: &Request) -> Option<Self> {
        let RequestContext::ApiGatewayV2(context) = request.request_context_ref()? else {
            return None;
        };
        Self::from_claims(&context.authorizer.as_ref()?.jwt.as_ref()?.claims)
    }

    /// From claims flattened as API Gateway hands them over (see [`flatten_claims`]); `None` without `sub` or
    /// `org_id`.
    pub fn from_claims(claims: &HashMap<String, String>) -> Option<Self> {
        let user_id = claims.get("sub").filter(|s| !s.is_empty())?.clone();
        let org_id = claims.get("org_id").filter(|s| !s.is_empty())?.clone();
        let roles = claims.get("roles").map(|raw| parse_roles(raw)).unwrap_or_default();
        Some(Self { user_id, org_id, roles })
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A verified token's claims as API Gateway's JWT authorizer hands them to a function: every value a string, an
/// array as `[a b]`. Functions that verify tokens themselves (a Function URL has no authorizer) flatten the same way,
/// so [`Identity::from_claims`] reads one shape.
pub fn flatten_claims(claims: &Map<String, Value>) -> HashMap<String, String> {
    claims.iter().map(|(name, value)| (name.clone(), flatten(value))).collect()
}

fn flatten(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(flatten).collect::<Vec<_>>().join(" ")),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// API Gateway flattens an array claim to `[a b]`; tokens may also carry `a,b` or a JSON array string.
/// Unknown role names are ignored, so a typo grants nothing.
fn parse_roles(raw: &str) -> Vec<Role> {
    let trimmed = raw.trim().trim_start_matches('[').trim_end_matches(']');
    let mut roles: Vec<Role> = trimmed
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(|part| part.trim().trim_matches('"'))
        .filter_map(Role::parse)
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
    use lambda_http::request::LambdaRequest;

    /// A request as `lambda_http` builds it from an event whose authorizer context carries `claims`.
    fn request_with(claims: &[(&str, &str)]) -> Request {
        let claims: serde_json::Map<String, serde_json::Value> =
            claims.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        let event: ApiGatewayV2httpRequest = serde_json::from_value(serde_json::json!({
            "rawPath": "/", "requestContext": {"http": {"method": "GET"}, "authorizer": {"jwt": {"claims": claims}}}
        }))
        .unwrap();
        LambdaRequest::ApiGatewayV2(event).into()
    }

    #[test]
    fn reads_roles_in_every_shape_api_gateway_and_tokens_use() {
        for raw in ["[admin platform-admin]", "admin,platform-admin", "[\"admin\",\"platform-admin\"]"] {
            let id = Identity::from_request(&request_with(&[("sub", "u1"), ("org_id", "o1"), ("roles", raw)])).unwrap();
            assert_eq!(id.roles, vec![Role::Admin, Role::PlatformAdmin], "{raw}");
        }
    }

    #[test]
    fn unknown_roles_grant_nothing_and_missing_claims_mean_no_identity() {
        let id = Identity::from_request(&request_with(&[("sub", "u1"), ("org_id", "o1"), ("roles", "root")])).unwrap();
        assert!(id.roles.is_empty());
        assert!(Identity::from_request(&request_with(&[("sub", "u1")])).is_none());
        assert!(Identity::from_request(&request_with(&[("sub", ""), ("org_id", "o1")])).is_none());
        assert!(Identity::from_request(&Request::default()).is_none());
    }
}
