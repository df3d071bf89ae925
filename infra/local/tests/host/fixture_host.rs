//! The host against a template and functions of the tests' own: routing, the payload v2 translation, the JWT
//! authorizer, responses, limits, environment wiring, queue polling with partial batch failures, and restarts.

use crate::common::*;
use keel::config::Env;
use keel::queue::Queue;
use keel_embedded::QueueSpec;
use keel_local::{Declared, DevKey, Host, HostError, QueueMapping, Registry, ScheduleMapping, declared, served};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn body(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

#[tokio::test]
async fn serves_exactly_the_declared_routes_queues_and_schedules() {
    let (host, _seen, dir) = fixture_host(Env::default()).await;
    let declared = declared(&dir.path().join("template.yaml")).unwrap();
    assert_eq!(served(&host), declared);
    assert_eq!(
        declared,
        Declared {
            routes: [
                ("ANY", "/items/{id}"),
                ("GET", "/binary"),
                ("GET", "/closed/{proxy+}"),
                ("GET", "/env"),
                ("GET", "/sleep"),
                ("POST", "/jobs"),
                ("POST", "/open/{name}"),
            ]
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect(),
            queues: vec![QueueMapping {
                queue: "Jobs".into(),
                function: "worker".into(),
                batch_size: 5,
                report_batch_item_failures: true
            }],
            schedules: vec![ScheduleMapping {
                function: "ticker".into(),
                event: "Tick".into(),
                expression: "rate(1 minute)".into()
            }],
            function_urls: vec![],
        }
    );
    host.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_api_gateways_404() {
    let (host, _seen, _dir) = fixture_host(Env::default()).await;
    let client = reqwest::Client::new();
    for (method, path) in
        [("GET", "/nowhere"), ("GET", "/open/x"), ("POST", "/open"), ("POST", "/open/x/y"), ("GET", "/closed")]
    {
        let response = client.request(method.parse().unwrap(), url(&host, path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        assert_eq!(body(response).await, json!({"message": "Not Found"}));
    }
    host.shutdown().await;
}

#[tokio::test]
async fn the_request_event_is_api_gateways_payload_v2() {
    let (host, _seen, _dir) = fixture_host(Env::default()).await;
    let client = reqwest::Client::new();
    let response = client
        .post(url(&host, "/open/acme%20pay?a=1&b=two%20words&a=3"))
        .header("X-Multi", "one")
        .header("x-multi", "two")
        .header("Cookie", "s=1; t=2")
        .header("User-Agent", "fixture/1")
        .body(vec![0xffu8, 0x00, 0x80, b'x'])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("apigw-requestid"));
    let echoed = body(response).await;
    // What the function received: the host's event through `lambda_http`'s conversion.
    let request = &echoed["request"];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["rawPath"], "/open/acme pay");
    assert_eq!(request["rawQueryString"], "a=1&b=two%20words&a=3");
    assert_eq!(request["queryStringParameters"], json!({"a": "1,3", "b": "two words"}));
    assert_eq!(request["pathParameters"], json!({"name": "acme pay"}));
    assert_eq!(request["headers"]["x-multi"], "one,two");
    assert_eq!(request["headers"]["user-agent"], "fixture/1");
    assert!(request["headers"]["x-amzn-trace-id"].as_str().unwrap().starts_with("Root=1-"));
    assert_eq!(request["headers"]["cookie"], "s=1; t=2", "the event's cookies, joined back into one header");
    let decoded =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, request["body_base64"].as_str().unwrap())
            .unwrap();
    assert_eq!(decoded, [0xff, 0x00, 0x80, b'x'], "a binary body keeps its exact bytes");
    let context = &request["requestContext"];
    assert_eq!(context["stage"], "$default");
    assert_eq!(context["routeKey"], "POST /open/{name}");
    assert_eq!(context["http"]["method"], "POST");
    assert_eq!(context["http"]["path"], "/open/acme pay");
    assert_eq!(context["http"]["protocol"], "HTTP/1.1");
    assert_eq!(context["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(context["http"]["userAgent"], "fixture/1");
    assert_eq!(context["requestId"], echoed["request_id"]);
    assert!(context["timeEpoch"].as_i64().unwrap() > 0);
    assert!(context.get("authorizer").is_none_or(Value::is_null), "open routes carry no claims");
    // The deadline is the function's Timeout (1 s) from now.
    let deadline = chrono::DateTime::parse_from_rfc3339(echoed["deadline"].as_str().unwrap()).unwrap();
    let left = deadline.signed_duration_since(chrono::Utc::now());
    assert!(left <= chrono::Duration::seconds(1) && left > chrono::Duration::seconds(-5), "{left}");

    let text = client.post(url(&host, "/open/x")).body("plain text").send().await.unwrap();
    let echoed = body(text).await;
    assert_eq!(
        echoed["request"]["body_base64"],
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "plain text")
    );
    host.shutdown().await;
}

#[tokio::test]
async fn the_jwt_authorizer_admits_valid_tokens_only() {
    let (host, _seen, dir) = fixture_host(Env::default()).await;
    let client = reqwest::Client::new();
    let closed = url(&host, "/closed/a/b/c");

    let token = host.token("org-1", "user-1", &["admin", "member"]);
    let response = client.get(&closed).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = body(response).await;
    let request = &echoed["request"];
    assert_eq!(request["pathParameters"], json!({"proxy": "a/b/c"}));
    assert_eq!(request["headers"]["authorization"], format!("Bearer {token}"));
    let claims = &request["requestContext"]["authorizer"]["jwt"]["claims"];
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["org_id"], "org-1");
    assert_eq!(claims["roles"], "[admin member]");
    assert_eq!(claims["iss"], "keel-local");
    assert_eq!(claims["aud"], "keel");
    assert!(claims["exp"].as_str().unwrap().parse::<i64>().is_ok(), "claims are strings");
    assert!(request["requestContext"]["authorizer"]["jwt"].get("scopes").is_none_or(Value::is_null));

    // The same token from the data directory's key file, as `keel-local token` would make it.
    let from_file = DevKey::load_or_create(&dir.path().join("data")).unwrap();
    let cli_token = from_file.issue("o", "u", &["member"], chrono::Duration::minutes(5)).unwrap();
    assert_eq!(client.get(&closed).bearer_auth(cli_token).send().await.unwrap().status(), 200);

    let expired = host.key().issue("org-1", "user-1", &["admin"], chrono::Duration::seconds(-10)).unwrap();
    let foreign =
        DevKey::from_secret(vec![1u8; 32]).issue("org-1", "user-1", &["admin"], chrono::Duration::hours(1)).unwrap();
    let wrong_issuer = host
        .key()
        .sign(&json!({"iss": "elsewhere", "aud": "keel", "sub": "u", "exp": chrono::Utc::now().timestamp() + 60}))
        .unwrap();
    for (label, authorization) in [
        ("missing", None),
        ("expired", Some(format!("Bearer {expired}"))),
        ("wrong key", Some(format!("Bearer {foreign}"))),
        ("wrong issuer", Some(format!("Bearer {wrong_issuer}"))),
        ("garbage", Some("Bearer not.a.jwt".to_string())),
        ("not bearer", Some(format!("Basic {token}"))),
    ] {
        let mut request = client.get(&closed);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{label}");
        assert!(response.headers().contains_key("www-authenticate"), "{label}");
        assert_eq!(body(response).await, json!({"message": "Unauthorized"}), "{label}");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn responses_carry_status_headers_cookies_and_decoded_bodies() {
    let (host, _seen, _dir) = fixture_host(Env::default()).await;
    let response = reqwest::get(url(&host, "/binary")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let many: Vec<_> = response.headers().get_all("x-many").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    // A header the function sets twice reaches API Gateway once: the runtime's JSON for an HTTP API response
    // holds one value per header name (aws_lambda_events' `serialize_headers` takes the first), and the host
    // reads that same JSON. Functions join repeated values themselves (`Allow: GET, PUT`).
    assert_eq!(many, ["one"]);
    let cookies: Vec<_> =
        response.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly"]);
    assert_eq!(response.bytes().await.unwrap().as_ref(), [0u8, 159, 146, 150]);
    host.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_slow_functions_time_out() {
    let (host, _seen, _dir) = fixture_host(Env::default()).await;
    let client = reqwest::Client::new();
    let big = vec![b'a'; 10 * 1024 * 1024 + 1];
    let response = client.post(url(&host, "/open/x")).body(big).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(body(response).await, json!({"message": "Request Entity Too Large"}));
    let just_fits = vec![b'a'; 10 * 1024 * 1024];
    assert_eq!(client.post(url(&host, "/open/x")).body(just_fits).send().await.unwrap().status(), 200);

    let started = Instant::now();
    let response = client.get(url(&host, "/sleep")).send().await.unwrap();
    assert_eq!(response.status(), 500, "the function's 1 s Timeout cuts it off");
    assert_eq!(body(response).await, json!({"message": "Internal Server Error"}));
    assert!(started.elapsed() < Duration::from_secs(3));
    host.shutdown().await;
}

#[tokio::test]
async fn variables_resolve_parameters_literals_and_resources() {
    let (host, _seen, _dir) = fixture_host(Env::default()).await;
    let env = body(reqwest::get(url(&host, "/env")).await.unwrap()).await;
    assert_eq!(
        env,
        json!({"GREETING": "hello", "LITERAL": "declared", "ITEMS_TABLE": "Items", "JOBS_QUEUE_URL": "Jobs"})
    );
    host.shutdown().await;

    // The process environment overrides parameters and literals, never the wiring of a resource.
    let overrides = Env::from_pairs([("GREETING", "hi"), ("LITERAL", "mine"), ("ITEMS_TABLE", "elsewhere")]);
    let (host, _seen, _dir) = fixture_host(overrides).await;
    let env = body(reqwest::get(url(&host, "/env")).await.unwrap()).await;
    assert_eq!(env, json!({"GREETING": "hi", "LITERAL": "mine", "ITEMS_TABLE": "Items", "JOBS_QUEUE_URL": "Jobs"}));
    host.shutdown().await;
}

#[tokio::test]
async fn health_endpoints_report_liveness_and_backend_readiness() {
    let (host, _seen, _dir) = fixture_host(Env::default()).await;
    let live = reqwest::get(url(&host, "/health/live")).await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = reqwest::get(url(&host, "/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready = body(ready).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"], json!({"table Items": "ok", "queue Jobs": "ok", "queue JobsDlq": "ok"}));
    host.shutdown().await;

    let (host, _seen, _dir) = fixture_host(Env::from_pairs([("KEEL_FAULTS", "*.ping:1")])).await;
    let ready = reqwest::get(url(&host, "/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready = body(ready).await;
    assert_eq!(ready["failed"].as_object().unwrap().len(), 3, "{ready}");
    assert!(ready["failed"]["table Items"].as_str().unwrap().contains("injected fault"));
    host.shutdown().await;
}

#[tokio::test]
async fn the_queue_is_polled_with_partial_batch_failures_and_redrive() {
    let (host, seen, _dir) = fixture_host(Env::default()).await;
    let client = reqwest::Client::new();
    for job in ["ok-1", "fail-1", "ok-2"] {
        let response = client.post(url(&host, "/jobs")).body(job).send().await.unwrap();
        assert_eq!(response.status(), 202);
    }
    let db = host.embedded().unwrap().clone();
    let dlq = db.queue(QueueSpec::new("JobsDlq"), std::sync::Arc::new(keel::clock::SystemClock));
    let jobs = db.queue(QueueSpec::new("Jobs"), std::sync::Arc::new(keel::clock::SystemClock));
    let started = Instant::now();
    while dlq.depth().await.unwrap() < 1 && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.snapshot();
    let count = |body: &str| seen.iter().filter(|(b, _)| b == body).count();
    assert_eq!(count("ok-1"), 1, "{seen:?}");
    assert_eq!(count("ok-2"), 1, "{seen:?}");
    let failures: Vec<u32> = seen.iter().filter(|(b, _)| b == "fail-1").map(|(_, c)| *c).collect();
    assert_eq!(failures, [1, 2], "retried after its visibility timeout until maxReceiveCount");
    assert_eq!(dlq.depth().await.unwrap(), 1, "then dead-lettered");
    assert_eq!(jobs.depth().await.unwrap(), 0, "successes were deleted");
    host.shutdown().await;
}

#[tokio::test]
async fn data_survives_a_restart_on_the_same_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let template = write_fixture(dir.path());
    let data = dir.path().join("data");
    let client = reqwest::Client::new();

    let host = Host::start_with(options(&data, &template, Env::default()), registry(&Seen::default())).await.unwrap();
    let response = client.put(url(&host, "/items/a")).body("v1").send().await.unwrap();
    assert_eq!(response.status(), 204);
    let token = host.token("o", "u", &["member"]);
    host.shutdown().await;

    let host = Host::start_with(options(&data, &template, Env::default()), registry(&Seen::default())).await.unwrap();
    let item = client.get(url(&host, "/items/a")).send().await.unwrap();
    assert_eq!(item.status(), 200);
    assert_eq!(body(item).await, json!({"value": "v1"}));
    let closed = client.get(url(&host, "/closed/x")).bearer_auth(token).send().await.unwrap();
    assert_eq!(closed.status(), 200, "the development key survives too");
    host.shutdown().await;
}

#[tokio::test]
async fn messages_left_in_flight_by_an_earlier_run_are_delivered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let template = write_fixture(dir.path());
    let data = dir.path().join("data");
    {
        // An earlier run received a message and stopped before finishing it; its visibility timeout is an hour.
        let db = keel_embedded::EmbeddedDb::open(&data).unwrap();
        let mut spec = QueueSpec::new("Jobs");
        spec.visibility_timeout = Duration::from_secs(3600);
        let jobs = db.queue(spec, std::sync::Arc::new(keel::clock::SystemClock));
        jobs.send("held", &Default::default()).await.unwrap();
        assert_eq!(jobs.receive(1, Duration::ZERO).await.unwrap().len(), 1);
    }
    let seen = Seen::default();
    let host = Host::start_with(options(&data, &template, Env::default()), registry(&seen)).await.unwrap();
    let started = Instant::now();
    while seen.snapshot().is_empty() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.snapshot(), [("held".to_string(), 2)]);
    host.shutdown().await;
}

#[tokio::test]
async fn start_up_fails_when_template_and_registry_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let template = write_fixture(dir.path());
    let data = dir.path().join("data");
    let seen = Seen::default();

    let missing = Registry::new()
        .http("echo", build_echo)
        .scheduled("ticker", |_: &Env, _: &dyn keel::resources::Resources| Ok(Ticker));
    let error = Host::start_with(options(&data, &template, Env::default()), missing).await.unwrap_err();
    assert!(matches!(&error, HostError::Registry(m) if m.contains("declares worker")), "{error}");

    let extra = registry(&seen).http("stray", build_echo);
    let error = Host::start_with(options(&data, &template, Env::default()), extra).await.unwrap_err();
    assert!(matches!(&error, HostError::Registry(m) if m.contains("registers stray")), "{error}");

    let wrong_shape = Registry::new()
        .http("echo", build_echo)
        .http("worker", |_: &Env, _: &dyn keel::resources::Resources| Ok(Noop))
        .scheduled("ticker", |_: &Env, _: &dyn keel::resources::Resources| Ok(Ticker));
    let error = Host::start_with(options(&data, &template, Env::default()), wrong_shape).await.unwrap_err();
    assert!(error.to_string().contains("worker has SQS events"), "{error}");

    let error =
        Host::start_with(options(&data, &template, Env::from_pairs([("KEEL_FAULTS", "nope:1")])), registry(&seen))
            .await
            .unwrap_err();
    assert!(error.to_string().contains("KEEL_FAULTS"), "{error}");
}
