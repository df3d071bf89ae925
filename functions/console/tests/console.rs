//! The console function: the page and its assets with their content types, caching and security headers; an
//! unknown asset 404; the configuration naming where the event stream is; a malformed stream URL refused at start.
//! These run on the build the bootstrap made (`console/dist`); `infra/local/tests/host/console.rs` drives the page
//! itself in Chromium.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::http::Method;
use keel::resources::StaticResources;
use keel_tests::*;
use std::sync::Arc;

fn console(env: &[(&str, &str)]) -> Result<console::Console, keel::config::ConfigError> {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(chrono::Utc::now()));
    console::build(&Env::from_pairs(env.iter().copied()), &StaticResources::new(clock))
}

async fn get(
    console: &console::Console,
    route: &str,
    path: &str,
) -> aws_lambda_events::apigw::ApiGatewayV2httpResponse {
    let clock = ManualClock::new(chrono::Utc::now());
    console.call(route_request(Method::GET, route, path), invocation(&clock)).await
}

fn header<'r>(response: &'r aws_lambda_events::apigw::ApiGatewayV2httpResponse, name: &str) -> &'r str {
    response.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_types_caching_and_policy() {
    let console = console(&[]).unwrap();
    let page = get(&console, "/console", "/console").await;
    assert_eq!(page.status_code, 200, "{}", body_text(&page));
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache", "a deployment shows at the next load");
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self';"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");

    // Every asset the page names is served, hashed names cached for good.
    let html = body_text(&page);
    let assets: Vec<&str> = html.split('"').filter(|part| part.starts_with("/console/assets/")).collect();
    assert!(assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")), "{html}");
    for asset in assets {
        let served = get(&console, "/console/assets/{file}", asset).await;
        assert_eq!(served.status_code, 200, "{asset}");
        let expected =
            if asset.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
        assert_eq!(header(&served, "content-type"), expected);
        assert_eq!(header(&served, "cache-control"), "public, max-age=31536000, immutable");
    }
    let missing = get(&console, "/console/assets/{file}", "/console/assets/nope.js").await;
    assert_eq!(missing.status_code, 404);
    let sneaky = get(&console, "/console/assets/{file}", "/console/assets/..%2Findex.html").await;
    assert_eq!(sneaky.status_code, 404, "only the assets directory's own files");
}

#[tokio::test]
async fn the_configuration_says_where_the_stream_is_and_the_policy_allows_it() {
    let local = console(&[]).unwrap();
    let answer = get(&local, "/console/config.json", "/console/config.json").await;
    assert_eq!(body_json(&answer), serde_json::json!({"events_stream_base": "", "oidc": null}), "the API's own origin");

    let url = "https://abc123.lambda-url.eu-west-1.on.aws";
    let deployed = console(&[("EVENTS_STREAM_URL", url)]).unwrap();
    let answer = get(&deployed, "/console/config.json", "/console/config.json").await;
    assert_eq!(body_json(&answer)["events_stream_base"], format!("{url}/"));
    let page = get(&deployed, "/console", "/console").await;
    assert!(header(&page, "content-security-policy").contains(&format!("connect-src 'self' {url};")));

    let refused = console(&[("EVENTS_STREAM_URL", "javascript:alert(1)")]).err().expect("refused");
    assert!(refused.to_string().contains("EVENTS_STREAM_URL"), "{refused}");
}

#[tokio::test]
async fn with_an_issuer_the_page_signs_in_through_it_and_may_reach_it() {
    let issuer = "https://login.example.com/tenant/";
    let with_issuer = console(&[("JWT_ISSUER", issuer), ("JWT_AUDIENCE", "keel-console")]).unwrap();
    let answer = get(&with_issuer, "/console/config.json", "/console/config.json").await;
    assert_eq!(body_json(&answer)["oidc"], serde_json::json!({"issuer": issuer, "client_id": "keel-console"}));
    let page = get(&with_issuer, "/console", "/console").await;
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("connect-src 'self' https://login.example.com;"), "{policy}");

    let without_client = console(&[("JWT_ISSUER", issuer)]).unwrap();
    let answer = get(&without_client, "/console/config.json", "/console/config.json").await;
    assert_eq!(body_json(&answer)["oidc"], serde_json::Value::Null, "no client id: tokens are pasted");
    assert!(console(&[("JWT_ISSUER", "login.example.com"), ("JWT_AUDIENCE", "c")]).is_err(), "not a URL");

    // Cognito: the issuer on one host, the token endpoint on the pool's domain.
    let cognito = console(&[
        ("JWT_ISSUER", "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc"),
        ("JWT_AUDIENCE", "client"),
        ("CONSOLE_TOKEN_ORIGIN", "https://keel.auth.eu-west-1.amazoncognito.com"),
    ])
    .unwrap();
    let page = get(&cognito, "/console", "/console").await;
    let policy = header(&page, "content-security-policy");
    assert!(
        policy.contains(
            "connect-src 'self' https://cognito-idp.eu-west-1.amazonaws.com https://keel.auth.eu-west-1.amazoncognito.com;"
        ),
        "{policy}"
    );
}
