//! A template and functions of the tests' own, so the host's behaviour is tested apart from Keel's functions:
//! `echo` answers every HTTP route by the route key it was invoked under (echoing the request it received), `worker` records what it receives and
//! fails bodies starting with `fail`, `ticker` is a scheduled function.

use async_trait::async_trait;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use base64::Engine;
use keel::config::{ConfigError, Env};
use keel::function::ScheduledFunction;
use keel::function::{HttpFunction, Invocation, QueueFunction};
use keel::http::RequestContext;
use keel::http::{Request, RequestExt, Response};
use keel::queue::{MessageAttrs, Queue};
use keel::resources::Resources;
use keel::table::{Attrs, Expect, Item, Key, Table};
use keel_local::{Backend, Host, HostOptions, Registry};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const FIXTURE: &str = r#"
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Parameters:
  Greeting: {Type: String, Default: hello}
Globals:
  Function:
    Timeout: 5
    Environment:
      Variables:
        GREETING: !Ref Greeting
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        DefaultAuthorizer: Dev
        Authorizers:
          Dev:
            IdentitySource: $request.header.Authorization
            JwtConfiguration: {issuer: keel-local, audience: [keel]}
  Items: {Type: AWS::DynamoDB::Table}
  Jobs:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 1
      RedrivePolicy: {deadLetterTargetArn: !GetAtt JobsDlq.Arn, maxReceiveCount: 2}
  JobsDlq: {Type: AWS::SQS::Queue}
  Echo:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: echo}}
    Properties:
      Timeout: 1
      Environment:
        Variables:
          ITEMS_TABLE: !Ref Items
          JOBS_QUEUE_URL: !Ref Jobs
          LITERAL: declared
      Events:
        Open: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: POST, Path: '/open/{name}', Auth: {Authorizer: NONE}}}
        Closed: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: GET, Path: '/closed/{proxy+}'}}
        Item: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: ANY, Path: '/items/{id}', Auth: {Authorizer: NONE}}}
        Binary: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: GET, Path: /binary, Auth: {Authorizer: NONE}}}
        Sleep: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: GET, Path: /sleep, Auth: {Authorizer: NONE}}}
        Env: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: GET, Path: /env, Auth: {Authorizer: NONE}}}
        Enqueue: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: POST, Path: /jobs, Auth: {Authorizer: NONE}}}
  Worker:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: worker}}
    Properties:
      Events:
        Jobs:
          Type: SQS
          Properties: {Queue: !GetAtt Jobs.Arn, BatchSize: 5, FunctionResponseTypes: [ReportBatchItemFailures]}
  Ticker:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: ticker}}
    Properties:
      Events:
        Tick: {Type: Schedule, Properties: {Schedule: rate(1 minute)}}
"#;

pub fn write_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("template.yaml");
    std::fs::write(&path, FIXTURE).unwrap();
    path
}

pub struct Echo {
    env: Env,
    table: Arc<dyn Table>,
    queue: Arc<dyn Queue>,
}

fn json_response(status: u16, value: &Value) -> Response {
    keel::http::json(status, value)
}

/// The request as the function received it from `lambda_http`'s conversion of the host's event.
fn echoed(request: &Request) -> Value {
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .keys()
        .map(|name| {
            let values: Vec<&str> = request.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (name.to_string(), Value::String(values.join(",")))
        })
        .collect();
    let params = |map: Option<&aws_lambda_events::query_map::QueryMap>| -> Value {
        map.map(|map| {
            let mut object = serde_json::Map::new();
            for (name, _) in map.iter() {
                object.entry(name.to_string()).or_insert_with(|| map.all(name).unwrap_or_default().join(",").into());
            }
            Value::Object(object)
        })
        .unwrap_or_else(|| json!({}))
    };
    json!({
        "method": request.method().as_str(),
        "rawPath": request.raw_http_path(),
        "rawQueryString": request.uri().query().unwrap_or_default(),
        "queryStringParameters": params(request.query_string_parameters_ref()),
        "pathParameters": params(request.path_parameters_ref()),
        "headers": headers,
        "requestContext": request.request_context_ref().map(|context| serde_json::to_value(context).unwrap()),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(request.body()),
    })
}

/// Answers whatever the host routes to it (the fixture template's routes use `ANY` and `{proxy+}`, which Keel's
/// route tables do not), so its table is empty.
#[async_trait]
impl HttpFunction for Echo {
    fn routes(&self) -> Vec<keel::function::RouteInfo> {
        Vec::new()
    }

    fn keeps_idempotency_keys(&self) -> bool {
        false
    }

    async fn handle(&self, request: Request) -> Response {
        let route = match request.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(context)) => context.route_key.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let invocation = Invocation::of(&request);
        match route.as_str() {
            "GET /binary" => {
                let mut response = keel::http::response(200, "application/octet-stream", vec![0u8, 159, 146, 150]);
                response.headers_mut().append("x-many", "one".parse().unwrap());
                response.headers_mut().append("x-many", "two".parse().unwrap());
                response.headers_mut().append("set-cookie", "a=1; Path=/".parse().unwrap());
                response.headers_mut().append("set-cookie", "b=2; HttpOnly".parse().unwrap());
                response
            }
            "GET /sleep" => {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                json_response(200, &json!({"slept": true}))
            }
            "GET /env" => json_response(
                200,
                &json!({
                    "GREETING": self.env.get("GREETING"),
                    "LITERAL": self.env.get("LITERAL"),
                    "ITEMS_TABLE": self.env.get("ITEMS_TABLE"),
                    "JOBS_QUEUE_URL": self.env.get("JOBS_QUEUE_URL"),
                }),
            ),
            "POST /jobs" => {
                let body = String::from_utf8_lossy(request.body()).into_owned();
                match self.queue.send(&body, &MessageAttrs::new()).await {
                    Ok(id) => json_response(202, &json!({"id": id})),
                    Err(e) => json_response(503, &json!({"error": e.to_string()})),
                }
            }
            "ANY /items/{id}" => {
                let id = keel::http::path_param(&request, "id").unwrap_or_default().to_string();
                let key = Key::new("item", id);
                if request.method() == keel::http::Method::PUT {
                    let mut attrs = Attrs::new();
                    attrs.insert("value".into(), String::from_utf8_lossy(request.body()).into_owned().into());
                    match self.table.put(Item::new(key, attrs), Expect::Any).await {
                        Ok(()) => json_response(204, &json!({})),
                        Err(e) => json_response(503, &json!({"error": e.to_string()})),
                    }
                } else {
                    match self.table.get(&key).await {
                        Ok(Some(item)) => json_response(200, &Value::Object(item.attrs)),
                        Ok(None) => json_response(404, &json!({"found": false})),
                        Err(e) => json_response(503, &json!({"error": e.to_string()})),
                    }
                }
            }
            _ => json_response(
                200,
                &json!({"request": echoed(&request), "request_id": invocation.request_id,
                    "deadline": invocation.deadline.to_rfc3339(), "trace_header": invocation.trace_header}),
            ),
        }
    }
}

pub fn build_echo(env: &Env, resources: &dyn Resources) -> Result<Echo, ConfigError> {
    Ok(Echo { env: env.clone(), table: resources.table("ITEMS_TABLE")?, queue: resources.queue("JOBS_QUEUE_URL")? })
}

/// What the worker saw: (body, ApproximateReceiveCount).
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<(String, u32)>>>);

impl Seen {
    pub fn snapshot(&self) -> Vec<(String, u32)> {
        self.0.lock().unwrap().clone()
    }
}

pub struct Worker(Seen);

#[async_trait]
impl QueueFunction for Worker {
    async fn call(&self, event: SqsEvent, _invocation: Invocation) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let body = record.body.unwrap_or_default();
            let count = record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(0);
            self.0.0.lock().unwrap().push((body.clone(), count));
            if body.starts_with("fail") {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = record.message_id.unwrap_or_default();
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}

pub struct Ticker;

/// An HTTP function that needs nothing.
pub struct Noop;

#[async_trait]
impl HttpFunction for Noop {
    fn routes(&self) -> Vec<keel::function::RouteInfo> {
        Vec::new()
    }

    fn keeps_idempotency_keys(&self) -> bool {
        false
    }

    async fn handle(&self, _request: Request) -> Response {
        json_response(200, &json!({}))
    }
}

#[async_trait]
impl ScheduledFunction for Ticker {
    async fn call(&self, _event: Value, _invocation: Invocation) -> Result<(), String> {
        Ok(())
    }
}

pub fn registry(seen: &Seen) -> Registry {
    let seen = seen.clone();
    Registry::new()
        .http("echo", build_echo)
        .queue("worker", move |_env: &Env, _resources: &dyn Resources| Ok(Worker(seen.clone())))
        .scheduled("ticker", |_env: &Env, _resources: &dyn Resources| Ok(Ticker))
}

pub fn options(data_dir: &Path, template: &Path, env: Env) -> HostOptions {
    HostOptions {
        port: 0,
        data_dir: data_dir.to_path_buf(),
        backend: Backend::Embedded,
        template: template.to_path_buf(),
        env,
    }
}

/// A fixture host with its own data directory.
pub async fn fixture_host(env: Env) -> (Host, Seen, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let template = write_fixture(dir.path());
    let seen = Seen::default();
    let host = Host::start_with(options(&dir.path().join("data"), &template, env), registry(&seen)).await.unwrap();
    (host, seen, dir)
}

pub fn url(host: &Host, path: &str) -> String {
    format!("http://{}{path}", host.addr())
}

/// A port nothing listens on now (for a host started as its own process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until a keel-local process answers `GET /health/live` on `port`.
pub async fn wait_live(client: &reqwest::Client, port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(response) = client.get(format!("http://127.0.0.1:{port}/health/live")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("keel-local did not come up on port {port}");
}
