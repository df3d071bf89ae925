//! The decorators every port call of a function goes through (the AWS resources and the local host apply them):
//! they count each call and each error per operation (`PortCalls`, `PortErrors`, in the invocation's metrics) and
//! inject faults. Each call runs in a trace span of its own (`keel::trace`), and a message sent or an event put
//! carries that span's X-Ray header, so the trace continues in whoever receives it.
//!
//! Fault injection fails a configured share of calls. Configured by one variable,
//! `KEEL_FAULTS=queue.send:0.3,table.put:0.1,bus.put:0.2:ambiguous`, and off unless set. A plain fault fails the
//! call before it reaches the backend; an `ambiguous` one fails half its calls after the backend did the work (the
//! reply was lost), which is the case retries and idempotency exist for. `table.*` matches every table operation.

use crate::bus::{BusEvent, EventBus};
use crate::config::{ConfigError, Env};
use crate::object::{ObjectInfo, ObjectPage, ObjectStore};
use crate::port::PortError;
use crate::queue::{MessageAttrs, Queue, Received, TRACE_HEADER_ATTRIBUTE};
use crate::table::{Expect, Item, Key, Page, Query, Table, Write};
use async_trait::async_trait;
use rand::Rng;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub const VAR: &str = "KEEL_FAULTS";

const OPERATIONS: [&str; 17] = [
    "table.get",
    "table.put",
    "table.delete",
    "table.query",
    "table.transact",
    "queue.send",
    "queue.receive",
    "queue.delete",
    "queue.change_visibility",
    "bus.put",
    "objects.put",
    "objects.get",
    "objects.head",
    "objects.delete",
    "objects.list",
    "objects.link",
    "*.ping",
];

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    operation: String,
    rate: f64,
    ambiguous: bool,
}

/// The parsed fault configuration. Empty means no faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    rules: Vec<Rule>,
}

/// What an injected fault does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    FailBefore,
    FailAfter,
}

impl Faults {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        match env.get(VAR) {
            None => Ok(Self::default()),
            Some(spec) => Self::parse(spec).map_err(|reason| ConfigError::Malformed { name: VAR.into(), reason }),
        }
    }

    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.split(':');
            let operation = parts.next().unwrap_or_default().to_string();
            let known = OPERATIONS.contains(&operation.as_str())
                || operation
                    .strip_suffix(".*")
                    .is_some_and(|port| ["table", "queue", "bus", "objects"].contains(&port));
            if !known {
                return Err(format!(
                    "unknown operation `{operation}`; expected one of {} or table.*, queue.*, bus.*, objects.*",
                    OPERATIONS.join(", ")
                ));
            }
            let rate: f64 = parts
                .next()
                .and_then(|r| r.parse().ok())
                .filter(|r: &f64| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("`{entry}` needs a rate between 0 and 1, like `{operation}:0.2`"))?;
            let ambiguous = match parts.next() {
                None => false,
                Some("ambiguous") => true,
                Some(other) => return Err(format!("unknown fault mode `{other}`; the only mode is `ambiguous`")),
            };
            if parts.next().is_some() {
                return Err(format!("`{entry}` has too many parts"));
            }
            rules.push(Rule { operation, rate, ambiguous });
        }
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn outcome(&self, operation: &str) -> Outcome {
        let port = operation.split('.').next().unwrap_or_default();
        let Some(rule) =
            self.rules.iter().find(|r| r.operation == operation || r.operation.strip_suffix(".*") == Some(port))
        else {
            return Outcome::Pass;
        };
        let mut rng = rand::rng();
        if !rng.random_bool(rule.rate) {
            Outcome::Pass
        } else if rule.ambiguous && rng.random_bool(0.5) {
            Outcome::FailAfter
        } else {
            Outcome::FailBefore
        }
    }

    pub fn table(&self, inner: Arc<dyn Table>) -> Arc<dyn Table> {
        Arc::new(FaultyTable { inner, faults: self.clone() })
    }

    pub fn queue(&self, inner: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Arc::new(FaultyQueue { inner, faults: self.clone() })
    }

    pub fn bus(&self, inner: Arc<dyn EventBus>) -> Arc<dyn EventBus> {
        Arc::new(FaultyBus { inner, faults: self.clone() })
    }

    pub fn objects(&self, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(FaultyObjects { inner, faults: self.clone() })
    }

    /// Runs `call` under the fault configured for `operation`, counting it and its failure.
    async fn around<T, F>(&self, operation: &str, call: F) -> Result<T, PortError>
    where
        F: Future<Output = Result<T, PortError>>,
    {
        let injected = || Err(PortError::Unavailable(format!("injected fault: {operation}")));
        let result = crate::trace::port_call(operation, async {
            match self.outcome(operation) {
                Outcome::Pass => call.await,
                Outcome::FailBefore => injected(),
                Outcome::FailAfter => match call.await {
                    Ok(_) => injected(),
                    Err(error) => Err(error),
                },
            }
        })
        .await;
        crate::metrics::count("PortCalls", &[("Operation", operation)], 1.0);
        // A condition that did not hold is an answer, not a failure of the backend.
        if result.as_ref().is_err_and(|error| !error.is_condition_failed()) {
            crate::metrics::count("PortErrors", &[("Operation", operation)], 1.0);
        }
        result
    }
}

struct FaultyTable {
    inner: Arc<dyn Table>,
    faults: Faults,
}

#[async_trait]
impl Table for FaultyTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, PortError> {
        self.faults.around("table.get", self.inner.get(key)).await
    }
    async fn put(&self, item: Item, expect: Expect) -> Result<(), PortError> {
        self.faults.around("table.put", self.inner.put(item, expect)).await
    }
    async fn delete(&self, key: &Key, expect: Expect) -> Result<(), PortError> {
        self.faults.around("table.delete", self.inner.delete(key, expect)).await
    }
    async fn query(&self, query: &Query) -> Result<Page, PortError> {
        self.faults.around("table.query", self.inner.query(query)).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<(), PortError> {
        self.faults.around("table.transact", self.inner.transact(writes)).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.faults.around("*.ping", self.inner.ping()).await
    }
}

struct FaultyQueue {
    inner: Arc<dyn Queue>,
    faults: Faults,
}

#[async_trait]
impl Queue for FaultyQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, body: &str, attributes: &MessageAttrs) -> Result<String, PortError> {
        // Inside the call's span, so the message names it as its parent (SQS's `AWSTraceHeader`).
        self.faults
            .around("queue.send", async {
                match crate::trace::current_header() {
                    Some(header) => {
                        let mut attributes = attributes.clone();
                        attributes.insert(TRACE_HEADER_ATTRIBUTE.to_string(), header);
                        self.inner.send(body, &attributes).await
                    }
                    None => self.inner.send(body, attributes).await,
                }
            })
            .await
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, PortError> {
        // A lost receive reply leaves its messages in flight until their visibility timeout, as in SQS.
        self.faults.around("queue.receive", self.inner.receive(max, wait)).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), PortError> {
        self.faults.around("queue.delete", self.inner.delete(receipt)).await
    }
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), PortError> {
        self.faults.around("queue.change_visibility", self.inner.change_visibility(receipt, timeout)).await
    }
    async fn depth(&self) -> Result<u64, PortError> {
        self.inner.depth().await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.faults.around("*.ping", self.inner.ping()).await
    }
}

struct FaultyBus {
    inner: Arc<dyn EventBus>,
    faults: Faults,
}

#[async_trait]
impl EventBus for FaultyBus {
    async fn put(&self, events: &[BusEvent]) -> Result<(), PortError> {
        // Inside the call's span, so each event names it as its parent (EventBridge's `TraceHeader`).
        self.faults
            .around("bus.put", async {
                match crate::trace::current_header() {
                    Some(header) => {
                        let traced: Vec<BusEvent> = events
                            .iter()
                            .map(|event| BusEvent { trace_header: Some(header.clone()), ..event.clone() })
                            .collect();
                        self.inner.put(&traced).await
                    }
                    None => self.inner.put(events).await,
                }
            })
            .await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.faults.around("*.ping", self.inner.ping()).await
    }
}

struct FaultyObjects {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

#[async_trait]
impl ObjectStore for FaultyObjects {
    async fn put_file(&self, key: &str, source: &Path, content_type: &str) -> Result<ObjectInfo, PortError> {
        self.faults.around("objects.put", self.inner.put_file(key, source, content_type)).await
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        self.faults.around("objects.get", self.inner.get(key)).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError> {
        self.faults.around("objects.head", self.inner.head(key)).await
    }
    async fn delete(&self, key: &str) -> Result<(), PortError> {
        self.faults.around("objects.delete", self.inner.delete(key)).await
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage, PortError> {
        self.faults.around("objects.list", self.inner.list(prefix, after, limit)).await
    }
    async fn link(&self, key: &str, valid_for: Duration) -> Result<String, PortError> {
        self.faults.around("objects.link", self.inner.link(key, valid_for)).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.faults.around("*.ping", self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_modes_and_wildcards() {
        let faults = Faults::parse("queue.send:0.3, table.*:0.1,bus.put:1:ambiguous").unwrap();
        assert_eq!(faults.rules.len(), 3);
        assert!(faults.rules[2].ambiguous);
        assert!(Faults::parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_unknown_operations_rates_and_modes_naming_the_problem() {
        assert!(Faults::parse("queue.explode:0.1").unwrap_err().contains("unknown operation `queue.explode`"));
        assert!(Faults::parse("queue.send:1.5").unwrap_err().contains("rate between 0 and 1"));
        assert!(Faults::parse("queue.send").unwrap_err().contains("rate between 0 and 1"));
        assert!(Faults::parse("queue.send:0.1:sometimes").unwrap_err().contains("unknown fault mode"));
        let env = Env::from_pairs([(VAR, "nope:1")]);
        assert!(matches!(Faults::from_env(&env), Err(ConfigError::Malformed { name, .. }) if name == VAR));
    }

    #[test]
    fn rate_one_always_fails_rate_zero_never_and_other_operations_pass() {
        let always = Faults::parse("table.put:1").unwrap();
        assert!((0..100).all(|_| always.outcome("table.put") == Outcome::FailBefore));
        assert!((0..100).all(|_| always.outcome("table.get") == Outcome::Pass));
        let never = Faults::parse("table.*:0").unwrap();
        assert!((0..100).all(|_| never.outcome("table.put") == Outcome::Pass));
        let wildcard = Faults::parse("queue.*:1").unwrap();
        assert_eq!(wildcard.outcome("queue.delete"), Outcome::FailBefore);
        let objects = Faults::parse("objects.*:1").unwrap();
        assert_eq!(objects.outcome("objects.put"), Outcome::FailBefore);
        assert_eq!(objects.outcome("table.put"), Outcome::Pass);
    }

    #[test]
    fn ambiguous_faults_sometimes_fail_after_the_work() {
        let faults = Faults::parse("bus.put:1:ambiguous").unwrap();
        let outcomes: Vec<_> = (0..200).map(|_| faults.outcome("bus.put")).collect();
        assert!(outcomes.contains(&Outcome::FailAfter) && outcomes.contains(&Outcome::FailBefore));
    }
}
