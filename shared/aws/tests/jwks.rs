//! The issuer's tokens, checked as API Gateway's JWT authorizer checks them: an issuer served on a local port
//! (discovery document and key set, fetches counted), keys made for the test, tokens signed with them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keel::function::{TokenRefused, TokenVerifier};
use keel_aws::jwks::JwksVerifier;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const AUDIENCE: &str = "keel-console";

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

fn signing_key(kid: &str) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    SigningKey { kid: kid.into(), encoding: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
}

/// The identity provider: discovery, the key set it currently publishes, and whether it answers at all.
struct Issuer {
    url: String,
    published: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

fn json_body(value: Value) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], value.to_string())
}

async fn issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let published = Arc::new(Mutex::new(Vec::new()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let jwks_uri = format!("{url}/keys");
    let (keys, counted, failing) = (published.clone(), fetches.clone(), down.clone());
    let discovery_down = down.clone();
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let (uri, down) = (jwks_uri.clone(), discovery_down.clone());
                async move {
                    if down.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(json_body(json!({ "issuer": "ignored", "jwks_uri": uri })))
                }
            }),
        )
        .route(
            "/keys",
            get(move || {
                let (keys, counted, failing) = (keys.clone(), counted.clone(), failing.clone());
                async move {
                    if failing.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok(json_body(json!({ "keys": keys.lock().unwrap().clone() })))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Issuer { url, published, fetches, down }
}

impl Issuer {
    fn publish(&self, keys: &[&SigningKey]) {
        *self.published.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn claims(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": self.url, "aud": AUDIENCE, "sub": "user-1", "org_id": "org-1",
                "roles": ["admin", "member"], "iat": now, "exp": now + 600 })
    }
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn invalid(outcome: Result<std::collections::HashMap<String, String>, TokenRefused>) -> String {
    match outcome {
        Err(TokenRefused::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_of_the_issuer_verifies_and_carries_its_claims_flattened_as_api_gateway_does() {
    let issuer = issuer().await;
    let key = signing_key("k1");
    issuer.publish(&[&key]);
    let verifier = JwksVerifier::new(&issuer.url, AUDIENCE).unwrap();
    let claims = verifier.verify(&sign(&key, &issuer.claims())).await.unwrap();
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["roles"], "[admin member]");
    let identity = keel::identity::Identity::from_claims(&claims).unwrap();
    assert_eq!(identity.org_id, "org-1");
    assert_eq!(identity.roles, vec![keel::identity::Role::Member, keel::identity::Role::Admin]);

    // An access token without `aud` is accepted on its `client_id`, as API Gateway accepts it.
    let mut access = issuer.claims();
    access.as_object_mut().unwrap().remove("aud");
    access["client_id"] = json!(AUDIENCE);
    verifier.verify(&sign(&key, &access)).await.unwrap();
    // Many tokens, one fetch of the key set.
    for _ in 0..10 {
        verifier.verify(&sign(&key, &issuer.claims())).await.unwrap();
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tokens_that_are_forged_expired_early_or_for_someone_else_are_refused() {
    let issuer = issuer().await;
    let key = signing_key("k1");
    let stranger = signing_key("k1"); // same key id, a key the issuer never published
    issuer.publish(&[&key]);
    let verifier = JwksVerifier::new(&issuer.url, AUDIENCE).unwrap();
    let now = chrono::Utc::now().timestamp();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = issuer.claims();
        change(&mut claims);
        sign(&key, &claims)
    };
    let cases = [
        ("another key", sign(&stranger, &issuer.claims())),
        ("expired", with(&|c| c["exp"] = json!(now - 1))),
        ("no expiry", with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))),
        ("not yet valid", with(&|c| c["nbf"] = json!(now + 300))),
        ("another issuer", with(&|c| c["iss"] = json!("https://elsewhere.example"))),
        ("another audience", with(&|c| c["aud"] = json!("someone-else"))),
        ("audiences without ours", with(&|c| c["aud"] = json!(["a", "b"]))),
        (
            "client_id beside a wrong aud",
            with(&|c| {
                c["aud"] = json!("someone-else");
                c["client_id"] = json!(AUDIENCE);
            }),
        ),
        ("not a token", "not-a-token".to_string()),
    ];
    for (case, token) in cases {
        let outcome = verifier.verify(&token).await;
        assert!(matches!(outcome, Err(TokenRefused::Invalid(_))), "{case}: {outcome:?}");
    }
    // A changed payload breaks the signature.
    let token = sign(&key, &issuer.claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    payload["org_id"] = json!("org-2");
    parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    invalid(verifier.verify(&parts.join(".")).await);
    // No key id; a symmetric algorithm naming the issuer's key id (the public key is no HMAC secret).
    let unnamed = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &issuer.claims(), &key.encoding).unwrap();
    assert!(invalid(verifier.verify(&unnamed).await).contains("key id"));
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let hmac = jsonwebtoken::encode(&hs, &issuer.claims(), &EncodingKey::from_secret(b"guess")).unwrap();
    assert!(invalid(verifier.verify(&hmac).await).contains("does not sign with"));
    // A good token still verifies after all that, and the refusals did not fetch the set again and again.
    verifier.verify(&sign(&key, &issuer.claims())).await.unwrap();
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_an_issuer_outage_is_unavailable_not_unauthorized() {
    let issuer = issuer().await;
    let (old, new) = (signing_key("old"), signing_key("new"));
    issuer.publish(&[&old]);
    let verifier = JwksVerifier::new(&issuer.url, AUDIENCE).unwrap().refetch_after(Duration::from_millis(200));
    // Before any key set was fetched, an issuer that does not answer makes tokens uncheckable.
    issuer.down.store(true, Ordering::SeqCst);
    assert!(matches!(verifier.verify(&sign(&old, &issuer.claims())).await, Err(TokenRefused::Unavailable(_))));
    issuer.down.store(false, Ordering::SeqCst);
    verifier.verify(&sign(&old, &issuer.claims())).await.unwrap();

    // The issuer rotates: a token with the new key id is refused until the set may be fetched again, then accepted.
    issuer.publish(&[&old, &new]);
    invalid(verifier.verify(&sign(&new, &issuer.claims())).await);
    tokio::time::sleep(Duration::from_millis(250)).await;
    verifier.verify(&sign(&new, &issuer.claims())).await.unwrap();
    let fetched = issuer.fetches.load(Ordering::SeqCst);
    // Made-up key ids within the minute cost no fetch.
    for kid in ["x", "y", "z"] {
        invalid(verifier.verify(&sign(&signing_key(kid), &issuer.claims())).await);
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), fetched);

    // While the issuer is down, keys already fetched keep working.
    issuer.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    invalid(verifier.verify(&sign(&signing_key("unknown"), &issuer.claims())).await);
    verifier.verify(&sign(&old, &issuer.claims())).await.unwrap();
}

#[test]
fn an_issuer_that_is_not_https_is_refused_at_start_up() {
    assert!(JwksVerifier::new("http://idp.example.com", AUDIENCE).is_err());
    assert!(JwksVerifier::new("https://idp.example.com/", "").is_err());
    assert!(JwksVerifier::new("https://idp.example.com/", AUDIENCE).is_ok());
}
