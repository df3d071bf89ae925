//! The evaluation context: organization, user and environment from the caller's token and the deployment; every
//! other field from the request, checked against the caps. A request can never name the organization, the user or
//! the environment it is evaluated for.

use chrono::DateTime;
use keel::identity::Identity;
use keel_flags::{self as flags, Context};
use serde_json::{Map, Value};

/// Most entries one request context may carry.
pub const MAX_ATTRIBUTES: usize = 50;
/// Longest attribute value, in bytes (after a number or boolean is turned into its text).
pub const MAX_VALUE_BYTES: usize = flags::MAX_VALUE_LEN;
/// Longest attribute name, in bytes.
pub const MAX_NAME_BYTES: usize = flags::MAX_KEY_LEN;

/// Names a request may not set: the engine's identity fields, and the spellings a rule author might mistake for
/// them (a rule on an attribute called `orgId` must not be satisfiable by the caller).
pub const RESERVED: [&str; 6] =
    [flags::ORGANIZATION_ID, flags::USER_ID, flags::ENVIRONMENT, "orgId", "org_id", "user_id"];

/// OFREP's targeting key: accepted and ignored, since the user comes from the token.
pub const TARGETING_KEY: &str = "targetingKey";

/// What is wrong with a request's context, and where (a JSON pointer into the request body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub pointer: String,
    pub message: String,
}

impl Invalid {
    fn at(name: &str, message: impl Into<String>) -> Self {
        Self { pointer: format!("/context/{}", escape_pointer(name)), message: message.into() }
    }
}

/// RFC 6901: `~` is `~0` and `/` is `~1` inside a reference token.
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Which protocol the context arrives in; only OFREP knows `targetingKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Keel,
    Ofrep,
}

/// The context for `identity` in `environment`, with the request's extra fields. Strings are taken as they are,
/// numbers and booleans by their JSON text, `null` as absent; anything else is refused.
pub fn build(
    identity: &Identity,
    environment: &str,
    extra: Option<&Map<String, Value>>,
    dialect: Dialect,
) -> Result<Context, Invalid> {
    let mut context = Context {
        organization_id: Some(identity.org_id.clone()),
        user_id: Some(identity.user_id.clone()),
        environment: Some(environment.to_string()),
        ..Context::default()
    };
    let Some(extra) = extra else { return Ok(context) };
    let counted = extra.keys().filter(|name| !(dialect == Dialect::Ofrep && *name == TARGETING_KEY)).count();
    if counted > MAX_ATTRIBUTES {
        return Err(Invalid {
            pointer: "/context".into(),
            message: format!("the context holds at most {MAX_ATTRIBUTES} attributes, not {counted}"),
        });
    }
    for (name, raw) in extra {
        if dialect == Dialect::Ofrep && name == TARGETING_KEY {
            continue;
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(Invalid::at(
                name,
                format!("`{name}` comes from the caller's token and the deployment and cannot be set in the context"),
            ));
        }
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(Invalid::at(name, format!("an attribute name has 1 to {MAX_NAME_BYTES} bytes")));
        }
        let value = match raw {
            Value::Null => continue,
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(Invalid::at(name, format!("`{name}` must be a string, a number or a boolean")));
            }
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(Invalid::at(name, format!("`{name}` has more than {MAX_VALUE_BYTES} bytes")));
        }
        match name.as_str() {
            flags::SESSION_ID => context.session_id = Some(value),
            flags::REMOTE_ADDRESS => context.remote_address = Some(value),
            flags::APP_NAME => context.app_name = Some(value),
            flags::CURRENT_TIME => {
                if DateTime::parse_from_rfc3339(value.trim()).is_err() {
                    return Err(Invalid::at(name, "`currentTime` must be an RFC 3339 timestamp"));
                }
                context.current_time = Some(value);
            }
            _ => {
                context.attributes.insert(name.clone(), value);
            }
        }
    }
    Ok(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::identity::Role;
    use serde_json::json;

    fn identity() -> Identity {
        Identity { user_id: "u1".into(), org_id: "o1".into(), roles: vec![Role::Member] }
    }

    fn extra(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn identity_and_environment_come_from_the_caller_and_fields_are_mapped() {
        let body = extra(json!({
            "sessionId": "s1", "remoteAddress": "10.0.0.1", "appName": "web", "currentTime": "2026-01-01T00:00:00Z",
            "plan": "pro", "seats": 12, "beta": true, "ratio": 1.5, "gone": null, "targetingKey": "someone-else",
        }));
        let context = build(&identity(), "prod", Some(&body), Dialect::Ofrep).unwrap();
        assert_eq!(context.organization_id.as_deref(), Some("o1"));
        assert_eq!(context.user_id.as_deref(), Some("u1"));
        assert_eq!(context.environment.as_deref(), Some("prod"));
        assert_eq!(context.session_id.as_deref(), Some("s1"));
        assert_eq!(context.remote_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(context.app_name.as_deref(), Some("web"));
        assert_eq!(context.current_time.as_deref(), Some("2026-01-01T00:00:00Z"));
        let attributes: Vec<(&str, &str)> = context.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(attributes, vec![("beta", "true"), ("plan", "pro"), ("ratio", "1.5"), ("seats", "12")]);
    }

    #[test]
    fn targeting_key_is_an_ordinary_attribute_in_keel_dialect() {
        let body = extra(json!({"targetingKey": "t"}));
        let context = build(&identity(), "prod", Some(&body), Dialect::Keel).unwrap();
        assert_eq!(context.attributes.get("targetingKey").map(String::as_str), Some("t"));
    }

    #[test]
    fn reserved_names_nested_values_and_caps_are_refused_with_a_pointer() {
        for name in RESERVED {
            let err = build(&identity(), "prod", Some(&extra(json!({ name: "x" }))), Dialect::Keel).unwrap_err();
            assert_eq!(err.pointer, format!("/context/{name}"));
        }
        let err = build(&identity(), "p", Some(&extra(json!({"a/b": {"x": 1}}))), Dialect::Keel).unwrap_err();
        assert_eq!(err.pointer, "/context/a~1b");
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let err = build(&identity(), "p", Some(&extra(json!({ "v": long }))), Dialect::Keel).unwrap_err();
        assert_eq!(err.pointer, "/context/v");
        let exactly = "x".repeat(MAX_VALUE_BYTES);
        assert!(build(&identity(), "p", Some(&extra(json!({ "v": exactly }))), Dialect::Keel).is_ok());
        let many: Map<String, Value> = (0..=MAX_ATTRIBUTES).map(|i| (format!("a{i}"), json!("v"))).collect();
        assert_eq!(build(&identity(), "p", Some(&many), Dialect::Keel).unwrap_err().pointer, "/context");
        let err = build(&identity(), "p", Some(&extra(json!({"currentTime": "yesterday"}))), Dialect::Keel);
        assert_eq!(err.unwrap_err().pointer, "/context/currentTime");
    }
}
