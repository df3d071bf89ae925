//! How a function finds its backends. A function names each backend by the environment variable that carries it
//! (`WEBHOOKS_TABLE`, `WEBHOOK_QUEUE_URL`, ...), exactly as `template.yaml` wires it. In Lambda the AWS resources
//! resolve the variable to a DynamoDB table, an SQS queue URL, a bus name or an S3 bucket; the local host resolves the same
//! variable through the template's `!Ref`/`!GetAtt` to its embedded counterpart. Fault injection, when configured,
//! is applied here, so every function gets it the same way.

use crate::bus::EventBus;
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::object::ObjectStore;
use crate::queue::Queue;
use crate::table::Table;
use std::sync::Arc;

pub trait Resources: Send + Sync {
    fn table(&self, var: &str) -> Result<Arc<dyn Table>, ConfigError>;
    fn queue(&self, var: &str) -> Result<Arc<dyn Queue>, ConfigError>;
    fn bus(&self, var: &str) -> Result<Arc<dyn EventBus>, ConfigError>;
    /// The object store of the bucket `var` names.
    fn objects(&self, var: &str) -> Result<Arc<dyn ObjectStore>, ConfigError>;
    fn clock(&self) -> Arc<dyn Clock>;
}

/// Resources handed over explicitly, by variable name: what the local host builds from the template's wiring and
/// what tests build around embedded adapters. Fault injection is the caller's to apply (see `keel::faults`).
pub struct StaticResources {
    tables: std::collections::HashMap<String, Arc<dyn Table>>,
    queues: std::collections::HashMap<String, Arc<dyn Queue>>,
    buses: std::collections::HashMap<String, Arc<dyn EventBus>>,
    objects: std::collections::HashMap<String, Arc<dyn ObjectStore>>,
    clock: Arc<dyn Clock>,
}

impl StaticResources {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            tables: Default::default(),
            queues: Default::default(),
            buses: Default::default(),
            objects: Default::default(),
            clock,
        }
    }

    pub fn with_table(mut self, var: &str, table: Arc<dyn Table>) -> Self {
        self.tables.insert(var.to_string(), table);
        self
    }

    pub fn with_queue(mut self, var: &str, queue: Arc<dyn Queue>) -> Self {
        self.queues.insert(var.to_string(), queue);
        self
    }

    pub fn with_bus(mut self, var: &str, bus: Arc<dyn EventBus>) -> Self {
        self.buses.insert(var.to_string(), bus);
        self
    }

    pub fn with_objects(mut self, var: &str, objects: Arc<dyn ObjectStore>) -> Self {
        self.objects.insert(var.to_string(), objects);
        self
    }
}

fn lookup<T: ?Sized>(map: &std::collections::HashMap<String, Arc<T>>, var: &str) -> Result<Arc<T>, ConfigError> {
    map.get(var).cloned().ok_or_else(|| ConfigError::Missing(var.to_string()))
}

impl Resources for StaticResources {
    fn table(&self, var: &str) -> Result<Arc<dyn Table>, ConfigError> {
        lookup(&self.tables, var)
    }
    fn queue(&self, var: &str) -> Result<Arc<dyn Queue>, ConfigError> {
        lookup(&self.queues, var)
    }
    fn bus(&self, var: &str) -> Result<Arc<dyn EventBus>, ConfigError> {
        lookup(&self.buses, var)
    }
    fn objects(&self, var: &str) -> Result<Arc<dyn ObjectStore>, ConfigError> {
        lookup(&self.objects, var)
    }
    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }
}
