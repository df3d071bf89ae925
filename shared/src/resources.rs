//! How a function finds its backends. A function names each backend by the environment variable that carries it
//! (`WEBHOOKS_TABLE`, `WEBHOOK_QUEUE_URL`, ...), exactly as `template.yaml` wires it. In Lambda the AWS resources
//! resolve the variable to a DynamoDB table, an SQS queue URL or a bus name; the local host resolves the same
//! variable through the template's `!Ref`/`!GetAtt` to its embedded counterpart. Fault injection, when configured,
//! is applied here, so every function gets it the same way.

use crate::bus::EventBus;
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::queue::Queue;
use crate::table::Table;
use std::sync::Arc;

pub trait Resources: Send + Sync {
    fn table(&self, var: &str) -> Result<Arc<dyn Table>, ConfigError>;
    fn queue(&self, var: &str) -> Result<Arc<dyn Queue>, ConfigError>;
    fn bus(&self, var: &str) -> Result<Arc<dyn EventBus>, ConfigError>;
    fn clock(&self) -> Arc<dyn Clock>;
}
