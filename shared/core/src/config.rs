//! Typed configuration, read once at start-up from a snapshot of the environment. A missing or malformed variable
//! fails start-up with an error that names it (and never echoes a secret's value).

use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("missing required environment variable {0}")]
    Missing(String),
    #[error("environment variable {name} is malformed: {reason}")]
    Malformed { name: String, reason: String },
}

/// A snapshot of environment variables. Functions read configuration from this, never from `std::env` directly,
/// so tests and the local host can hand each function its own environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// The variable's value; an empty value counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &str) -> Result<&str, ConfigError> {
        self.get(name).ok_or_else(|| ConfigError::Missing(name.to_string()))
    }

    /// Parses a variable if set. The error names the variable and the expected form, not the value.
    pub fn parse<T: FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ConfigError::Malformed { name: name.to_string(), reason: format!("expected {expected}") }),
        }
    }

    pub fn parse_or<T: FromStr>(&self, name: &str, expected: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.parse(name, expected)?.unwrap_or(default))
    }

    /// Every variable whose name starts with `prefix`, with the prefix removed.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|rest| (rest, v.as_str())))
            .filter(|(_, v)| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let env = Env::from_pairs([("PORT", "eighty"), ("EMPTY", "")]);
        assert_eq!(env.required("EMPTY"), Err(ConfigError::Missing("EMPTY".into())));
        let err = env.parse::<u16>("PORT", "a port number").unwrap_err();
        assert_eq!(err.to_string(), "environment variable PORT is malformed: expected a port number");
        assert_eq!(env.parse_or::<u16>("ABSENT", "a port number", 7).unwrap(), 7);
    }

    #[test]
    fn prefix_listing_strips_the_prefix_and_skips_empty_values() {
        let env = Env::from_pairs([("WEBHOOK_SECRET_ACME", "s1"), ("WEBHOOK_SECRET_X", ""), ("OTHER", "o")]);
        let found: Vec<_> = env.with_prefix("WEBHOOK_SECRET_").collect();
        assert_eq!(found, vec![("ACME", "s1")]);
    }
}
