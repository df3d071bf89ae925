//! The event stream's token check against an issuer Keel did not write: `tests/sdk/jwt_issuer.py` publishes its
//! discovery document and an RSA key set and signs RS256 tokens with joserfc (Authlib's JOSE library), as an
//! identity provider would. `keel_aws::jwks::JwksVerifier` accepts its tokens (the `client_id` of an access token
//! too) and refuses its expired, foreign-audience and unknown-key ones; a stream opens with the good one.

use keel::function::{TokenRefused, TokenVerifier};
use keel_aws::jwks::JwksVerifier;
use keel_tests::repo_root;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const AUDIENCE: &str = "keel-console";

struct Issuer {
    child: Child,
    url: String,
    tokens: Value,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn issuer() -> Issuer {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "the virtualenv is missing: run `bash infra/bootstrap.sh`");
    let mut child = Command::new(python)
        .arg(repo_root().join("tests/sdk/jwt_issuer.py"))
        .arg(AUDIENCE)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let printed: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("the issuer printed {line:?}"));
    Issuer { child, url: printed["issuer"].as_str().unwrap().to_string(), tokens: printed["tokens"].clone() }
}

#[tokio::test]
async fn tokens_of_an_issuer_keel_did_not_write_are_checked_as_api_gateway_checks_them() {
    let issuer = issuer();
    let verifier = JwksVerifier::new(&issuer.url, AUDIENCE).unwrap();
    let token = |name: &str| issuer.tokens[name].as_str().unwrap().to_string();
    let claims = verifier.verify(&token("valid")).await.unwrap();
    assert_eq!((claims["sub"].as_str(), claims["org_id"].as_str()), ("user-1", "org-1"));
    assert_eq!(claims["roles"], "[admin]");
    verifier.verify(&token("access")).await.unwrap();
    for refused in ["expired", "other_audience", "unknown_key"] {
        let outcome = verifier.verify(&token(refused)).await;
        assert!(matches!(outcome, Err(TokenRefused::Invalid(_))), "{refused}: {outcome:?}");
    }

    // The stream's runner, with this verifier, opens a stream for the good token and refuses the others.
    let dir = tempfile::tempdir().unwrap();
    let db = keel_embedded::EmbeddedDb::open(dir.path()).unwrap();
    let clock: std::sync::Arc<dyn keel::clock::Clock> = std::sync::Arc::new(keel::clock::SystemClock);
    let table = std::sync::Arc::new(db.table("JobsTable", clock.clone()));
    let stream = events_stream::EventsStream::new(table, clock, events_stream::Settings::default());
    let until = chrono::Utc::now() + chrono::Duration::seconds(5);
    for (name, status) in [("valid", 200), ("expired", 401)] {
        let event: aws_lambda_events::apigw::ApiGatewayV2httpRequest = serde_json::from_value(serde_json::json!({
            "rawPath": events_stream::PATH,
            "headers": {"authorization": format!("Bearer {}", token(name))},
            "requestContext": {"http": {"method": "GET", "path": events_stream::PATH}}
        }))
        .unwrap();
        let request = keel::lambda::request_of(event);
        let answer = keel::lambda::open_stream("events-stream", &stream, &verifier, request, until).await;
        assert_eq!(answer.status(), status, "{name}");
    }
}
