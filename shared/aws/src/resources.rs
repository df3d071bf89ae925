//! How a Lambda resolves its backends: each environment variable `template.yaml` wires names a DynamoDB table, an
//! SQS queue URL, an EventBridge bus name or an S3 bucket, and becomes the matching AWS adapter.

use crate::{DynamoTable, EventBridgeBus, S3Objects, SqsQueue, load_sdk_config};
use keel::bus::EventBus;
use keel::clock::{Clock, SystemClock};
use keel::config::{ConfigError, Env};
use keel::faults::Faults;
use keel::object::ObjectStore;
use keel::queue::Queue;
use keel::resources::Resources;
use keel::table::Table;
use std::sync::Arc;

/// The AWS backends of one function. Build it once in `main` (cold start), never per invocation: the SDK clients
/// are created here once and cloned (cheaply, they share their connection pools) into every adapter.
#[derive(Clone)]
pub struct AwsResources {
    env: Env,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    eventbridge: aws_sdk_eventbridge::Client,
    /// Made on first use: most functions never touch a bucket, and the cold start should not pay for it.
    s3: Arc<std::sync::OnceLock<aws_sdk_s3::Client>>,
    config: aws_config::SdkConfig,
    clock: Arc<dyn Clock>,
    faults: Faults,
}

impl std::fmt::Debug for AwsResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsResources").finish_non_exhaustive()
    }
}

impl AwsResources {
    /// Fails when `KEEL_FAULTS` is set but malformed.
    pub fn new(env: &Env, config: &aws_config::SdkConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            env: env.clone(),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            eventbridge: aws_sdk_eventbridge::Client::new(config),
            config: config.clone(),
            s3: Arc::new(std::sync::OnceLock::new()),
            clock: Arc::new(SystemClock),
            faults: Faults::from_env(env)?,
        })
    }

    /// Loads the SDK configuration the default way (honouring `AWS_ENDPOINT_URL`) and builds the clients.
    pub async fn load(env: &Env) -> Result<Self, ConfigError> {
        Self::new(env, &load_sdk_config().await)
    }

    // Every adapter leaves through `deliver_*`: the one place where fault injection (`KEEL_FAULTS`) wraps it.

    fn deliver_table(&self, _var: &str, table: Arc<dyn Table>) -> Arc<dyn Table> {
        self.faults.table(table)
    }

    fn deliver_queue(&self, _var: &str, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        self.faults.queue(queue)
    }

    fn deliver_bus(&self, _var: &str, bus: Arc<dyn EventBus>) -> Arc<dyn EventBus> {
        self.faults.bus(bus)
    }
}

impl Resources for AwsResources {
    /// `var` holds a DynamoDB table name.
    fn table(&self, var: &str) -> Result<Arc<dyn Table>, ConfigError> {
        let name = self.env.required(var)?;
        let table = DynamoTable::new(self.dynamodb.clone(), name, self.clock.clone());
        Ok(self.deliver_table(var, Arc::new(table)))
    }

    /// `var` holds an SQS queue URL.
    fn queue(&self, var: &str) -> Result<Arc<dyn Queue>, ConfigError> {
        let url = self.env.required(var)?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::Malformed { name: var.to_string(), reason: "expected an SQS queue URL".into() });
        }
        let queue = SqsQueue::new(self.sqs.clone(), url);
        Ok(self.deliver_queue(var, Arc::new(queue)))
    }

    /// `var` holds an EventBridge bus name (or ARN).
    fn bus(&self, var: &str) -> Result<Arc<dyn EventBus>, ConfigError> {
        let name = self.env.required(var)?;
        let bus = EventBridgeBus::new(self.eventbridge.clone(), name);
        Ok(self.deliver_bus(var, Arc::new(bus)))
    }

    /// `var` holds an S3 bucket name.
    fn objects(&self, var: &str) -> Result<Arc<dyn ObjectStore>, ConfigError> {
        let bucket = self.env.required(var)?;
        let client = self.s3.get_or_init(|| crate::s3::s3_client(&self.config));
        Ok(self.faults.objects(Arc::new(S3Objects::new(client.clone(), bucket))))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(env: Env) -> AwsResources {
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        AwsResources::new(&env, &config).unwrap()
    }

    #[test]
    fn variables_resolve_to_adapters_and_missing_ones_are_named() {
        let res = resources(Env::from_pairs([
            ("JOBS_TABLE", "keel-jobs"),
            ("JOBS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/keel-jobs"),
            ("EVENT_BUS_NAME", "keel"),
            ("BAD_QUEUE_URL", "keel-jobs"),
            ("EXPORTS_BUCKET", "keel-exports"),
        ]));
        assert!(res.objects("EXPORTS_BUCKET").is_ok());
        assert_eq!(res.objects("NOPE_BUCKET").err(), Some(ConfigError::Missing("NOPE_BUCKET".into())));
        assert!(res.table("JOBS_TABLE").is_ok());
        assert_eq!(res.queue("JOBS_QUEUE_URL").unwrap().name(), "keel-jobs");
        assert!(res.bus("EVENT_BUS_NAME").is_ok());
        assert_eq!(res.table("NOPE_TABLE").err(), Some(ConfigError::Missing("NOPE_TABLE".into())));
        assert!(matches!(res.queue("BAD_QUEUE_URL").err(), Some(ConfigError::Malformed { .. })));
    }

    #[tokio::test]
    async fn keel_faults_wrap_every_adapter_and_a_malformed_spec_fails_start_up() {
        let res = resources(Env::from_pairs([("T", "keel-t"), ("KEEL_FAULTS", "table.get:1")]));
        let error = res.table("T").unwrap().get(&keel::table::Key::new("a", "b")).await.unwrap_err();
        assert_eq!(error, keel::port::PortError::Unavailable("injected fault: table.get".into()));
        let res = resources(Env::from_pairs([("B", "keel-b"), ("KEEL_FAULTS", "objects.*:1")]));
        let error = res.objects("B").unwrap().head("exports/k").await.unwrap_err();
        assert_eq!(error, keel::port::PortError::Unavailable("injected fault: objects.head".into()));
        let config = aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
        let malformed = AwsResources::new(&Env::from_pairs([("KEEL_FAULTS", "table.get")]), &config);
        assert!(matches!(malformed, Err(ConfigError::Malformed { name, .. }) if name == "KEEL_FAULTS"));
    }
}
