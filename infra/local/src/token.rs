//! Local development tokens: HS256 JWTs signed with a random key kept in `<data-dir>/dev-jwt.key` (mode 0600,
//! created on first use), so no secret is hard-coded anywhere. The host verifies them where API Gateway's JWT
//! authorizer would verify the identity provider's tokens, and hands their claims to the function flattened to
//! strings, as API Gateway does. With `JWT_ISSUER` (and `JWT_AUDIENCE`) in the host's environment, the host also
//! accepts that issuer's tokens, checked against its published keys as the HTTP API's authorizer checks them
//! ([`Authorizer`]), so a sign-in through a real identity provider works locally too.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};

use std::io::Write;
use std::path::Path;

pub const ISSUER: &str = "keel-local";
pub const AUDIENCE: &str = "keel";
/// The key file inside the data directory.
pub const KEY_FILE: &str = "dev-jwt.key";
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the development key {path} could not be read or created: {reason}")]
    Key { path: String, reason: String },
    #[error("the token could not be signed: {0}")]
    Sign(String),
    /// Why a token was refused (for logs; clients only ever see `Unauthorized`).
    #[error("the token was refused: {0}")]
    Invalid(String),
}

/// The HS256 key. Its bytes never appear in `Debug` output or errors.
#[derive(Clone)]
pub struct DevKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevKey(..)")
    }
}

impl DevKey {
    /// Reads `<data_dir>/dev-jwt.key`, creating it (and the directory) with a fresh random key if absent. Safe
    /// against a concurrent first use: the key is written to a private temporary file and linked into place, so
    /// every process ends up with the same key.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join(KEY_FILE);
        let fail = |reason: String| TokenError::Key { path: path.display().to_string(), reason };
        std::fs::create_dir_all(data_dir).map_err(|e| fail(e.to_string()))?;
        if !path.exists() {
            let mut secret = [0u8; KEY_BYTES];
            rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
            let temporary = data_dir.join(format!(".{KEY_FILE}.{}", ulid::Ulid::new()));
            let written = write_private(&temporary, format!("{}\n", STANDARD.encode(secret)).as_bytes())
                .and_then(|()| std::fs::hard_link(&temporary, &path));
            let _ = std::fs::remove_file(&temporary);
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        tighten_permissions(&path);
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        let secret = STANDARD.decode(text.trim()).ok().filter(|s| s.len() >= KEY_BYTES).ok_or_else(|| {
            fail("the file does not hold a base64 key of at least 32 bytes; delete it to make a new one".into())
        })?;
        Ok(Self { secret })
    }

    /// The key a data directory already holds; an error (naming the file) when it holds none, so a mistyped
    /// directory is not taken for a new one.
    pub fn load(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            return Err(TokenError::Key {
                path: path.display().to_string(),
                reason: "no development key here: is this the data directory of the running keel-local?".into(),
            });
        }
        Self::load_or_create(data_dir)
    }

    /// Another secret for `purpose`, derived from this key (HMAC-SHA256, hex): keel-local's stand-in for a
    /// deployment's secret parameter.
    pub fn derive(&self, purpose: &str) -> String {
        use hmac::Mac;
        let mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.secret).map(|mut mac| {
            mac.update(purpose.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        });
        // HMAC takes a key of any length.
        mac.unwrap_or_default()
    }

    /// A key from given bytes (tests: a key the host does not know).
    pub fn from_secret(secret: impl Into<Vec<u8>>) -> Self {
        Self { secret: secret.into() }
    }

    /// A token for `user` in `org` with `roles`, valid for `ttl` (negative: already expired).
    pub fn issue(&self, org: &str, user: &str, roles: &[&str], ttl: chrono::Duration) -> Result<String, TokenError> {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "org_id": org,
            "roles": roles,
            "iat": now,
            "exp": now + ttl.num_seconds(),
        }))
    }

    /// Signs arbitrary claims (tests: tokens with a wrong issuer, audience, ...).
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(&self.secret))
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// Verifies signature (HS256 only), issuer, audience and expiry (no leeway); returns the claims.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<Map<String, Value>>(token, &DecodingKey::from_secret(&self.secret), &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

/// The host checks its development tokens where a Function URL's function checks the issuer's.
#[async_trait::async_trait]
impl keel::function::TokenVerifier for DevKey {
    async fn verify(
        &self,
        token: &str,
    ) -> Result<std::collections::HashMap<String, String>, keel::function::TokenRefused> {
        DevKey::verify(self, token)
            .map(|claims| keel::identity::flatten_claims(&claims))
            .map_err(|error| keel::function::TokenRefused::Invalid(error.to_string()))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A key readable by others is made private again (and said so in the log).
#[cfg(unix)]
fn tighten_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the development key was readable by others; restricting it to 0600");
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

#[cfg(not(unix))]
fn tighten_permissions(_path: &Path) {}

/// The host's JWT authorizer: its development tokens, and the configured issuer's (`iss` decides which checks a
/// token gets; a token naming the issuer is never checked against the development key).
#[derive(Debug, Clone)]
pub struct Authorizer {
    key: DevKey,
    issuer: Option<(String, std::sync::Arc<keel_aws::jwks::JwksVerifier>)>,
}

impl Authorizer {
    pub fn new(key: DevKey, env: &keel::config::Env) -> Result<Self, keel::config::ConfigError> {
        let issuer = match env.get(keel_aws::jwks::ISSUER_VAR) {
            None | Some("") => None,
            Some(issuer) => Some((
                issuer.to_string(),
                std::sync::Arc::new(keel_aws::jwks::JwksVerifier::new(
                    issuer,
                    env.required(keel_aws::jwks::AUDIENCE_VAR)?,
                )?),
            )),
        };
        Ok(Self { key, issuer })
    }
}

/// The `iss` a token claims, unverified (only to choose the checks).
fn claimed_issuer(token: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    serde_json::from_slice::<Value>(&payload).ok()?.get("iss")?.as_str().map(str::to_string)
}

#[async_trait::async_trait]
impl keel::function::TokenVerifier for Authorizer {
    async fn verify(
        &self,
        token: &str,
    ) -> Result<std::collections::HashMap<String, String>, keel::function::TokenRefused> {
        match &self.issuer {
            Some((issuer, verifier)) if claimed_issuer(token).as_deref() == Some(issuer.as_str()) => {
                verifier.verify(token).await
            }
            _ => keel::function::TokenVerifier::verify(&self.key, token).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevKey::load_or_create(&dir.path().join("nested")).unwrap();
        let again = DevKey::load_or_create(&dir.path().join("nested")).unwrap();
        assert_eq!(first.secret, again.secret);
        assert_eq!(first.secret.len(), KEY_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("nested").join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = DevKey::load_or_create(&tempfile::tempdir().unwrap().path().join("x")).unwrap();
        assert_ne!(first.secret, other.secret, "every data directory gets its own random key");
        assert_eq!(format!("{first:?}"), "DevKey(..)");
    }

    #[test]
    fn load_refuses_a_directory_without_a_key_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        assert!(matches!(DevKey::load(&missing), Err(TokenError::Key { .. })));
        assert!(!missing.exists());
        let made = DevKey::load_or_create(dir.path()).unwrap();
        assert_eq!(DevKey::load(dir.path()).unwrap().secret, made.secret);
    }

    #[tokio::test]
    async fn with_an_issuer_a_token_naming_it_is_never_checked_against_the_development_key() {
        use keel::function::TokenVerifier;
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(dir.path()).unwrap();
        // An issuer on a port nothing listens on: its tokens cannot be checked, and are refused.
        let issuer = "http://127.0.0.1:9";
        let env = keel::config::Env::from_pairs([("JWT_ISSUER", issuer), ("JWT_AUDIENCE", "keel")]);
        let authorizer = Authorizer::new(key.clone(), &env).unwrap();
        let dev = key.issue("org-1", "ann", &["member"], chrono::Duration::minutes(5)).unwrap();
        assert_eq!(authorizer.verify(&dev).await.unwrap()["sub"], "ann", "development tokens still pass");
        // A token signed with the development key but claiming the issuer goes to the issuer's checks.
        let now = chrono::Utc::now().timestamp();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"iss": issuer, "aud": "keel", "sub": "eve", "org_id": "org-1", "roles": ["platform-admin"],
                "iat": now, "exp": now + 300}),
            &EncodingKey::from_secret(&key.secret),
        )
        .unwrap();
        assert!(authorizer.verify(&forged).await.is_err(), "the development key does not vouch for the issuer");
        assert!(
            Authorizer::new(key, &keel::config::Env::from_pairs([("JWT_ISSUER", issuer)])).is_err(),
            "needs JWT_AUDIENCE"
        );
    }

    #[test]
    fn a_malformed_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "short").unwrap();
        assert!(matches!(DevKey::load_or_create(dir.path()), Err(TokenError::Key { .. })));
    }

    #[test]
    fn tokens_verify_and_carry_the_claims() {
        let key = DevKey::from_secret(vec![7u8; 32]);
        let token = key.issue("org-1", "user-1", &["admin", "member"], chrono::Duration::hours(1)).unwrap();
        let claims = key.verify(&token).unwrap();
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["aud"], AUDIENCE);
        let flat = keel::identity::flatten_claims(&claims);
        assert_eq!(flat["sub"], "user-1");
        assert_eq!(flat["org_id"], "org-1");
        assert_eq!(flat["roles"], "[admin member]");
        assert!(flat["exp"].parse::<i64>().is_ok());
    }

    #[test]
    fn expired_foreign_and_mislabelled_tokens_are_refused() {
        let key = DevKey::from_secret(vec![7u8; 32]);
        let expired = key.issue("o", "u", &[], chrono::Duration::seconds(-5)).unwrap();
        assert!(key.verify(&expired).is_err());
        let foreign = DevKey::from_secret(vec![8u8; 32]).issue("o", "u", &[], chrono::Duration::hours(1)).unwrap();
        assert!(key.verify(&foreign).is_err());
        let exp = chrono::Utc::now().timestamp() + 600;
        for claims in [
            json!({"iss": "someone-else", "aud": AUDIENCE, "sub": "u", "exp": exp}),
            json!({"iss": ISSUER, "aud": "other", "sub": "u", "exp": exp}),
            json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u"}),
        ] {
            assert!(key.verify(&key.sign(&claims).unwrap()).is_err(), "{claims}");
        }
        assert!(key.verify("not-a-token").is_err());
    }
}
