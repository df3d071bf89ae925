//! Jobs on the AWS adapters against the emulator (moto): the jobs API and the worker wired by their variables over
//! DynamoDB, SQS and EventBridge (a rule routes `keel.jobs` events to an observer queue), against the Python
//! service that verifies each call with the Standard Webhooks library. One message at a time: a failed moto
//! transaction restores a snapshot of the whole table (see aws_pipeline.rs).

use crate::jobs_local::{SECRET, Service};
use keel::bus::EventPattern;
use keel::config::Env;
use keel::function::QueueFunction;
use keel::queue::Queue;
use keel_aws::testing::{Emulator, unique_name};
use keel_aws::{AwsResources, SqsQueue, provision};
use keel_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_and_publish_their_events_on_dynamodb_sqs_and_eventbridge() {
    let service = Service::start();
    let config = Emulator::shared().sdk_config();
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);
    let tables: Vec<String> = ["jobs", "flags", "idempotency"].iter().map(|name| unique_name(name)).collect();
    for table in &tables {
        provision::ensure_table(&dynamodb, table).await.unwrap();
    }
    let (dlq_url, dlq_arn) = provision::ensure_queue(&sqs, &unique_name("job-dlq"), 30, None).await.unwrap();
    let (queue_url, _) =
        provision::ensure_queue(&sqs, &unique_name("job-queue"), 360, Some((&dlq_arn, 100))).await.unwrap();
    let (observer_url, observer_arn) = provision::ensure_queue(&sqs, &unique_name("observer"), 30, None).await.unwrap();
    let bus = unique_name("bus");
    provision::ensure_bus(&eventbridge, &bus).await.unwrap();
    let pattern =
        provision::event_pattern_json(&EventPattern { sources: vec!["keel.jobs".into()], detail_types: vec![] });
    provision::ensure_rule_to_queue(
        &eventbridge,
        &sqs,
        &bus,
        &unique_name("jobs"),
        &pattern,
        &observer_url,
        &observer_arn,
    )
    .await
    .unwrap();
    // The worker's built-in tasks need the webhooks table and queue (replay) and the directory, idempotency table
    // and export bucket (export); this test runs neither.
    let (webhook_queue_url, _) = provision::ensure_queue(&sqs, &unique_name("webhook-queue"), 30, None).await.unwrap();
    let env = Env::from_pairs([
        ("WEBHOOKS_TABLE", tables[2].clone()),
        ("WEBHOOK_QUEUE_URL", webhook_queue_url),
        ("JOBS_TABLE", tables[0].clone()),
        ("FLAGS_TABLE", tables[1].clone()),
        ("IDEMPOTENCY_TABLE", tables[2].clone()),
        ("DIRECTORY_TABLE", tables[2].clone()),
        ("EXPORT_BUCKET", "keel-unused-export-bucket".into()),
        ("RATE_LIMITS_TABLE", tables[2].clone()),
        ("JOB_QUEUE_URL", queue_url.clone()),
        ("JOB_DLQ_URL", dlq_url),
        ("EVENT_BUS_NAME", bus),
        ("KEEL_STAGE", "dev".into()),
        ("JOB_URL_NOTIFY", format!("{}/notify", service.url)),
        ("JOB_SECRET_NOTIFY", SECRET.into()),
        ("RATE_LIMIT_ORG", "off".into()),
        ("RATE_LIMIT_IP", "off".into()),
        (keel::suppression::KEY_VAR, keel::testing::GDPR_HASH_KEY.into()),
    ]);
    let resources = AwsResources::new(&env, &config).unwrap();
    let api = jobs_api::build(&env, &resources).unwrap();
    let worker = job_worker::build(&env, &resources).unwrap();
    let clock = keel::clock::SystemClock;

    let create = |template: &str| {
        let mut request = api_request(http::Method::POST, "POST /v1/jobs", "/v1/jobs");
        let body = json!({"type": "notify.email", "input": {"to": "ada@example.com", "template": template}});
        set_body(&mut request, body.to_string().as_bytes());
        with_claims(request, "ada", "org-a", &["member"])
    };
    let mut ids = Vec::new();
    for template in ["ok", "fail"] {
        let response = api.call(create(template), invocation(&clock)).await;
        assert_eq!(response.status_code, 202, "{}", body_text(&response));
        ids.push(body_json(&response)["id"].as_str().unwrap().to_string());
    }
    let queue = SqsQueue::new(sqs.clone(), queue_url);
    for _ in 0..ids.len() {
        let messages = queue.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(messages.len(), 1);
        let response = worker.call(sqs_event(&messages), invocation(&clock)).await;
        assert!(response.batch_item_failures.is_empty());
        queue.delete(&messages[0].receipt).await.unwrap();
    }
    let show = |id: &str| {
        let mut request = api_request(http::Method::GET, "GET /v1/jobs/{id}", &format!("/v1/jobs/{id}"));
        request.path_parameters.insert("id".into(), id.into());
        with_claims(request, "ada", "org-a", &["member"])
    };
    let ok = body_json(&api.call(show(&ids[0]), invocation(&clock)).await);
    assert_eq!((ok["status"].as_str(), &ok["output"]), (Some("completed"), &json!({"delivered": true})), "{ok}");
    let fail = body_json(&api.call(show(&ids[1]), invocation(&clock)).await);
    assert_eq!((fail["status"].as_str(), &fail["attempts"][0]["downstream_status"]), (Some("failed"), &json!(400)));
    let calls = service.calls().await;
    assert!(calls.len() == 2 && calls.iter().all(|call| call["verified"] == true), "{calls:#?}");

    let observer = SqsQueue::new(sqs, observer_url);
    let mut events: Vec<(String, String)> = Vec::new();
    for _ in 0..20 {
        for message in observer.receive(10, Duration::from_secs(1)).await.unwrap() {
            let event: Value = serde_json::from_str(&message.body).unwrap();
            events.push((
                event["detail"]["id"].as_str().unwrap().to_string(),
                event["detail-type"].as_str().unwrap().to_string(),
            ));
            observer.delete(&message.receipt).await.unwrap();
        }
        if events.len() >= 6 {
            break;
        }
    }
    events.sort();
    let mut expected: Vec<(String, String)> = Vec::new();
    for (id, last) in [(&ids[0], "job.completed"), (&ids[1], "job.failed")] {
        for (n, kind) in [(1, "job.created"), (2, "job.started"), (3, last)] {
            expected.push((format!("{id}.{n}"), kind.to_string()));
        }
    }
    expected.sort();
    assert_eq!(events, expected, "each transition once, with its id");
}
