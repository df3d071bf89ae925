//! The template's tables, queues, buses and buckets, built once on the chosen backend and shared by every function
//! that `!Ref`s them, each wrapped in the fault injection `KEEL_FAULTS` configures.

use crate::template::{QueueDecl, Template};
use keel::bus::EventBus;
use keel::clock::Clock;
use keel::faults::Faults;
use keel::object::ObjectStore;
use keel::port::PortError;
use keel::queue::Queue;
use keel::table::Table;
use keel_embedded::{EmbeddedBus, EmbeddedDb, EmbeddedObjects, QueueSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Where the host keeps data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// One redb file in the data directory: no account, no server, data survives restarts.
    #[default]
    Embedded,
    /// The AWS adapters, against whatever `AWS_ENDPOINT_URL` and the usual AWS variables point at (an emulator
    /// such as moto, or an account). Missing resources are created as `keel-local-<LogicalId>`.
    Aws,
}

/// Prefix of every resource `--backend aws` creates.
pub const AWS_NAME_PREFIX: &str = "keel-local-";

pub(crate) struct Resource<T: ?Sized> {
    /// Fault-wrapped, as functions and pollers use it.
    pub adapter: Arc<T>,
    /// What a `!Ref` of it evaluates to in a function's environment (a name, or a queue URL).
    pub reference: String,
}

/// The built resources, by logical id.
pub(crate) struct Built {
    pub tables: BTreeMap<String, Resource<dyn Table>>,
    pub queues: BTreeMap<String, Resource<dyn Queue>>,
    pub buses: BTreeMap<String, Resource<dyn EventBus>>,
    pub buckets: BTreeMap<String, Resource<dyn ObjectStore>>,
    pub embedded: Option<EmbeddedDb>,
    /// The embedded buckets themselves, whose links the host serves.
    pub embedded_objects: BTreeMap<String, EmbeddedObjects>,
    /// The embedded buses themselves, for `recorded()`.
    pub embedded_buses: BTreeMap<String, EmbeddedBus>,
}

/// Queues in an order where each dead-letter queue comes before the queues that redrive to it.
fn dead_letters_first(queues: &[QueueDecl]) -> Result<Vec<&QueueDecl>, String> {
    let mut ordered: Vec<&QueueDecl> = Vec::new();
    let mut pending: Vec<&QueueDecl> = queues.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|queue| {
            let ready = match &queue.redrive {
                None => true,
                Some(redrive) => ordered.iter().any(|q| q.logical_id == redrive.dead_letter_queue),
            };
            if ready {
                ordered.push(queue);
            }
            !ready
        });
        if pending.len() == before {
            let ids: Vec<&str> = pending.iter().map(|q| q.logical_id.as_str()).collect();
            return Err(format!("the redrive policies of queues {} form a cycle", ids.join(", ")));
        }
    }
    Ok(ordered)
}

/// `links` is the URL under which the host serves the buckets' links (`{links}/{bucket}/{key}`).
pub(crate) async fn embedded(
    template: &Template,
    data_dir: &Path,
    links: &str,
    faults: &Faults,
    clock: Arc<dyn Clock>,
) -> Result<Built, String> {
    let db = EmbeddedDb::open(data_dir)
        .map_err(|e| format!("the embedded database in {} could not be opened: {e}", data_dir.display()))?;
    let mut built = Built {
        tables: BTreeMap::new(),
        queues: BTreeMap::new(),
        buses: BTreeMap::new(),
        buckets: BTreeMap::new(),
        embedded: Some(db.clone()),
        embedded_objects: BTreeMap::new(),
        embedded_buses: BTreeMap::new(),
    };
    for id in &template.buckets {
        let objects = db
            .objects(id, &format!("{links}/{id}"), clock.clone())
            .map_err(|e| format!("bucket {id} could not be opened: {e}"))?;
        built.embedded_objects.insert(id.clone(), objects.clone());
        built
            .buckets
            .insert(id.clone(), Resource { adapter: faults.objects(Arc::new(objects)), reference: id.clone() });
    }
    for id in &template.tables {
        let table: Arc<dyn Table> = Arc::new(db.table(id, clock.clone()));
        built.tables.insert(id.clone(), Resource { adapter: faults.table(table), reference: id.clone() });
    }
    let mut raw_queues: BTreeMap<String, Arc<dyn Queue>> = BTreeMap::new();
    for decl in dead_letters_first(&template.queues)? {
        let spec = QueueSpec {
            name: decl.logical_id.clone(),
            visibility_timeout: decl.visibility_timeout,
            max_receive_count: decl.redrive.as_ref().map(|r| r.max_receive_count),
            dead_letter_queue: decl.redrive.as_ref().map(|r| r.dead_letter_queue.clone()),
            retention: decl.retention,
        };
        let embedded = db.queue(spec, clock.clone());
        // Whatever a previous run of the host had received, no consumer holds any more: make it visible now
        // rather than after its visibility timeout.
        let released = embedded
            .release_in_flight()
            .await
            .map_err(|e| format!("queue {} could not release in-flight messages: {e}", decl.logical_id))?;
        if released > 0 {
            tracing::info!(queue = %decl.logical_id, released, "released messages left in flight by an earlier run");
        }
        let queue: Arc<dyn Queue> = Arc::new(embedded);
        raw_queues.insert(decl.logical_id.clone(), queue.clone());
        built.queues.insert(
            decl.logical_id.clone(),
            Resource { adapter: faults.queue(queue), reference: decl.logical_id.clone() },
        );
    }
    for id in &template.buses {
        let bus = db.bus(id);
        built.embedded_buses.insert(id.clone(), bus.clone());
        let adapter: Arc<dyn EventBus> = Arc::new(bus);
        built.buses.insert(id.clone(), Resource { adapter: faults.bus(adapter), reference: id.clone() });
    }
    for rule in &template.rules {
        let bus = built
            .embedded_buses
            .get(&rule.bus)
            .ok_or_else(|| format!("rule {} names no known bus", rule.logical_id))?;
        for target in &rule.targets {
            // EventBridge's own delivery to SQS is not a port call of Keel's, so it is not fault-injected.
            let queue =
                raw_queues.get(target).ok_or_else(|| format!("rule {} targets no known queue", rule.logical_id))?;
            bus.add_rule(rule.pattern.clone(), queue.clone());
        }
    }
    Ok(built)
}

fn aws_failed(what: &str) -> impl Fn(PortError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub(crate) async fn aws(template: &Template, faults: &Faults, clock: Arc<dyn Clock>) -> Result<Built, String> {
    let config = keel_aws::load_sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);
    let mut built = Built {
        tables: BTreeMap::new(),
        queues: BTreeMap::new(),
        buses: BTreeMap::new(),
        buckets: BTreeMap::new(),
        embedded: None,
        embedded_objects: BTreeMap::new(),
        embedded_buses: BTreeMap::new(),
    };
    let s3 = keel_aws::s3::s3_client(&config);
    for id in &template.buckets {
        // Bucket names are lowercase.
        let name = format!("{AWS_NAME_PREFIX}{id}").to_lowercase();
        keel_aws::provision::ensure_bucket(&s3, &name).await.map_err(aws_failed(&format!("bucket {id}")))?;
        let objects: Arc<dyn ObjectStore> = Arc::new(keel_aws::S3Objects::new(s3.clone(), &name));
        built.buckets.insert(id.clone(), Resource { adapter: faults.objects(objects), reference: name });
    }
    for id in &template.tables {
        let name = format!("{AWS_NAME_PREFIX}{id}");
        keel_aws::provision::ensure_table(&dynamodb, &name).await.map_err(aws_failed(&format!("table {id}")))?;
        let table: Arc<dyn Table> = Arc::new(keel_aws::DynamoTable::new(dynamodb.clone(), &name, clock.clone()));
        built.tables.insert(id.clone(), Resource { adapter: faults.table(table), reference: name });
    }
    let mut arns: BTreeMap<String, (String, String)> = BTreeMap::new();
    for decl in dead_letters_first(&template.queues)? {
        let name = format!("{AWS_NAME_PREFIX}{}", decl.logical_id);
        let redrive = match &decl.redrive {
            None => None,
            Some(r) => {
                let (_, dlq_arn) =
                    arns.get(&r.dead_letter_queue).ok_or_else(|| format!("queue {} has no DLQ", decl.logical_id))?;
                Some((dlq_arn.clone(), r.max_receive_count))
            }
        };
        let visibility = u32::try_from(decl.visibility_timeout.as_secs()).unwrap_or(u32::MAX);
        let (url, arn) =
            keel_aws::provision::ensure_queue(&sqs, &name, visibility, redrive.as_ref().map(|(a, n)| (a.as_str(), *n)))
                .await
                .map_err(aws_failed(&format!("queue {}", decl.logical_id)))?;
        arns.insert(decl.logical_id.clone(), (url.clone(), arn));
        let queue: Arc<dyn Queue> = Arc::new(keel_aws::SqsQueue::new(sqs.clone(), &url));
        built.queues.insert(decl.logical_id.clone(), Resource { adapter: faults.queue(queue), reference: url });
    }
    for id in &template.buses {
        let name = format!("{AWS_NAME_PREFIX}{id}");
        keel_aws::provision::ensure_bus(&eventbridge, &name).await.map_err(aws_failed(&format!("event bus {id}")))?;
        let bus: Arc<dyn EventBus> = Arc::new(keel_aws::EventBridgeBus::new(eventbridge.clone(), &name));
        built.buses.insert(id.clone(), Resource { adapter: faults.bus(bus), reference: name });
    }
    for rule in &template.rules {
        let bus = format!("{AWS_NAME_PREFIX}{}", rule.bus);
        let pattern = keel_aws::provision::event_pattern_json(&rule.pattern);
        for target in &rule.targets {
            let (url, arn) =
                arns.get(target).ok_or_else(|| format!("rule {} targets no known queue", rule.logical_id))?;
            let rule_name = format!("{AWS_NAME_PREFIX}{}-{target}", rule.logical_id);
            keel_aws::provision::ensure_rule_to_queue(&eventbridge, &sqs, &bus, &rule_name, &pattern, url, arn)
                .await
                .map_err(aws_failed(&format!("rule {}", rule.logical_id)))?;
        }
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Redrive;
    use std::time::Duration;

    fn queue(id: &str, dlq: Option<&str>) -> QueueDecl {
        QueueDecl {
            logical_id: id.into(),
            visibility_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(60),
            redrive: dlq.map(|d| Redrive { dead_letter_queue: d.into(), max_receive_count: 2 }),
        }
    }

    #[test]
    fn dead_letter_queues_are_built_before_their_sources_and_cycles_are_refused() {
        let queues = [queue("A", Some("B")), queue("B", Some("C")), queue("C", None)];
        let order: Vec<&str> = dead_letters_first(&queues).unwrap().iter().map(|q| q.logical_id.as_str()).collect();
        assert_eq!(order, ["C", "B", "A"]);
        assert!(dead_letters_first(&[queue("A", Some("B")), queue("B", Some("A"))]).unwrap_err().contains("cycle"));
    }
}
