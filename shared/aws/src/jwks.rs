//! Bearer tokens of the deployment's OIDC issuer, checked as the HTTP API's JWT authorizer checks them, for the
//! functions no authorizer stands in front of (a Function URL that streams).
//!
//! The keys come from the issuer's discovery document (`{issuer}/.well-known/openid-configuration`, its
//! `jwks_uri`), as API Gateway finds them. They are fetched on the first token, kept for an hour, and fetched again
//! early when a token names a key id not seen yet (a rotation), at most once a minute, so tokens with made-up key
//! ids cannot make every request call the issuer. The checks: a key id the set holds, an algorithm the key's type
//! signs with (RSA as API Gateway requires, or EC), the signature, `iss` equal to the issuer, `exp` in the future
//! and `nbf` in the past, and `aud` naming the audience (or, for access tokens without `aud`, `client_id`).

use async_trait::async_trait;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keel::config::{ConfigError, Env};
use keel::function::{TokenRefused, TokenVerifier};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

pub const ISSUER_VAR: &str = "JWT_ISSUER";
pub const AUDIENCE_VAR: &str = "JWT_AUDIENCE";
/// How long a fetched key set is trusted before it is fetched again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The least time between two fetches (an unknown key id fetches early, but no more often than this).
pub const REFETCH_AFTER: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

struct Key {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, std::sync::Arc<Key>>,
    fetched: Option<Instant>,
}

pub struct JwksVerifier {
    /// As configured: `iss` must equal it exactly, as API Gateway compares it.
    issuer: String,
    /// The issuer without a trailing `/`, where discovery starts.
    base: String,
    audience: String,
    client: reqwest::Client,
    cache: RwLock<Cache>,
    refetch_after: Duration,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier").field("issuer", &self.issuer).field("audience", &self.audience).finish()
    }
}

impl JwksVerifier {
    /// For `issuer` (https, or http on a loopback address for tests) and `audience`.
    pub fn new(issuer: &str, audience: &str) -> Result<Self, ConfigError> {
        let base = issuer.trim_end_matches('/').to_string();
        let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"].iter().any(|p| base.starts_with(p));
        if !(base.starts_with("https://") || loopback) {
            return Err(ConfigError::Malformed {
                name: ISSUER_VAR.into(),
                reason: "the issuer must be an https URL (its keys are fetched from it)".into(),
            });
        }
        if audience.is_empty() {
            return Err(ConfigError::Malformed { name: AUDIENCE_VAR.into(), reason: "the audience is empty".into() });
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| ConfigError::Malformed { name: ISSUER_VAR.into(), reason: format!("no HTTP client: {e}") })?;
        Ok(Self {
            issuer: issuer.to_string(),
            base,
            audience: audience.to_string(),
            client,
            cache: RwLock::new(Cache::default()),
            refetch_after: REFETCH_AFTER,
        })
    }

    /// Another least time between fetches (tests).
    pub fn refetch_after(mut self, after: Duration) -> Self {
        self.refetch_after = after;
        self
    }

    /// From `JWT_ISSUER` and `JWT_AUDIENCE`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::new(env.required(ISSUER_VAR)?, env.required(AUDIENCE_VAR)?)
    }

    async fn key(&self, kid: &str) -> Result<std::sync::Arc<Key>, TokenRefused> {
        {
            let cache = self.cache.read().await;
            let fresh = cache.fetched.is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
            if let Some(key) = cache.keys.get(kid).filter(|_| fresh) {
                return Ok(key.clone());
            }
        }
        let mut cache = self.cache.write().await;
        // Another request may have fetched while this one waited; a recent fetch is not repeated for a stranger.
        let recent = cache.fetched.is_some_and(|at| at.elapsed() < self.refetch_after);
        let fresh = cache.fetched.is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
        if !(recent || (fresh && cache.keys.contains_key(kid))) {
            match self.fetch().await {
                Ok(keys) => *cache = Cache { keys, fetched: Some(Instant::now()) },
                // Keys fetched within the hour still answer while the issuer is down.
                Err(reason) if !fresh => return Err(TokenRefused::Unavailable(reason)),
                Err(reason) => {
                    tracing::warn!(reason, "the issuer's keys could not be fetched again; using the last set")
                }
            }
        }
        cache.keys.get(kid).cloned().ok_or_else(|| TokenRefused::Invalid(format!("no key `{kid}` in the issuer's set")))
    }

    async fn fetch(&self) -> Result<HashMap<String, std::sync::Arc<Key>>, String> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.base);
        let discovery: Value = self.get_json(&discovery_url).await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{discovery_url} names no jwks_uri"))?;
        let set: JwkSet = serde_json::from_value(self.get_json(jwks_uri).await?)
            .map_err(|e| format!("{jwks_uri} is not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let mut algorithms = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => continue,
                },
                // Symmetric keys have no place in a public set; OKP keys API Gateway does not accept either.
                _ => continue,
            };
            if let Some(declared) = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok()) {
                algorithms.retain(|a| *a == declared);
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            keys.insert(kid, std::sync::Arc::new(Key { key, algorithms }));
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self.client.get(url).send().await.map_err(|e| format!("{url}: {}", without_url(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        response.json().await.map_err(|e| format!("{url}: not JSON ({})", without_url(&e)))
    }
}

/// reqwest's message without the URL it already repeats.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" ({url})"), "").replace(url.as_str(), "");
    }
    text
}

#[async_trait]
impl TokenVerifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<HashMap<String, String>, TokenRefused> {
        let invalid = |e: jsonwebtoken::errors::Error| TokenRefused::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let kid = header.kid.ok_or_else(|| TokenRefused::Invalid("the token names no key id (`kid`)".into()))?;
        let key = self.key(&kid).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(TokenRefused::Invalid(format!("key `{kid}` does not sign with {:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(invalid)?.claims;
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(self.audience.as_str())),
            Some(_) => false,
            None => claims.get("client_id").and_then(Value::as_str) == Some(self.audience.as_str()),
        };
        if !audience_ok {
            return Err(TokenRefused::Invalid("the token is for another audience".into()));
        }
        Ok(keel::identity::flatten_claims(&claims))
    }
}
