//! The readiness suite's AWS lines: what `template.yaml` promises about the stack's resources, read back from AWS.
//! The stack's resources are found through CloudFormation (`ListStackResources`, by logical id), or in a saved
//! listing of them (the JSON `aws cloudformation list-stack-resources` prints, for a role that may not list); each
//! promise is then read from the service that keeps it, so drift after the deployment (an alarm deleted by hand, a redrive
//! policy removed) is caught too:
//!
//! - `aws-stack`: every checked resource of the template is in the stack, none failed or deleted;
//! - `aws-alarms`: every alarm is in the stack, created or updated without failure. This one is read from
//!   CloudFormation's record, not from CloudWatch: an alarm deleted by hand is not seen. (CloudWatch's SDK speaks its
//!   CBOR protocol, which the emulator the suite is tested on does not serve, so a CloudWatch read could not be
//!   tested.)
//! - `aws-dlqs`: every queue with a redrive policy sends to its dead-letter queue after the template's count;
//! - `aws-encryption`: tables with SSE, queues with SQS-managed SSE, the bucket's default encryption algorithm;
//! - `aws-retention`: queues' message retention, tables' TTL attribute and point-in-time recovery, the bucket's
//!   expiration rule.
//!
//! Log groups' retention is not read back (their names come from `!Sub` of the stage); CloudFormation's status of
//! them counts in `aws-stack`.

use super::{Checked, Found};
use serde_yaml::Value as Yaml;
use std::collections::BTreeMap;
use std::path::Path;

/// What the template promises, by resource type.
#[derive(Debug, Default, PartialEq)]
pub struct Promises {
    pub alarms: Vec<String>,
    pub queues: Vec<QueuePromise>,
    pub tables: Vec<TablePromise>,
    pub buckets: Vec<BucketPromise>,
}

#[derive(Debug, PartialEq)]
pub struct QueuePromise {
    pub id: String,
    /// The dead-letter queue's logical id and the receive count.
    pub redrive: Option<(String, u64)>,
    pub retention_seconds: Option<u64>,
    pub managed_sse: bool,
}

#[derive(Debug, PartialEq)]
pub struct TablePromise {
    pub id: String,
    pub sse: bool,
    pub point_in_time_recovery: bool,
    pub ttl_attribute: Option<String>,
}

#[derive(Debug, PartialEq)]
pub struct BucketPromise {
    pub id: String,
    pub sse_algorithm: Option<String>,
    pub expiration_days: Option<i32>,
}

/// The tag-less value of a YAML node: `!GetAtt X.Arn` and friends arrive as tagged values.
fn untagged(value: &Yaml) -> &Yaml {
    match value {
        Yaml::Tagged(tagged) => &tagged.value,
        other => other,
    }
}

fn get<'v>(value: &'v Yaml, key: &str) -> Option<&'v Yaml> {
    untagged(value).as_mapping().and_then(|m| m.get(key))
}

fn flag(value: Option<&Yaml>) -> bool {
    value.map(untagged).and_then(Yaml::as_bool).unwrap_or(false)
}

/// `!GetAtt X.Arn` (either form): `X`.
fn get_att_resource(value: &Yaml) -> Option<String> {
    let target = match value {
        Yaml::Tagged(tagged) if tagged.tag == "GetAtt" => tagged.value.clone(),
        other => get(other, "Fn::GetAtt")?.clone(),
    };
    match target {
        Yaml::String(text) => text.split_once('.').map(|(resource, _)| resource.to_string()),
        Yaml::Sequence(parts) => parts.first().and_then(Yaml::as_str).map(str::to_string),
        _ => None,
    }
}

/// Reads the promises of `template` (a SAM template).
pub fn promises(template: &Path) -> Result<Promises, String> {
    let text = std::fs::read_to_string(template).map_err(|e| format!("{}: {e}", template.display()))?;
    let root: Yaml = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", template.display()))?;
    let resources = get(&root, "Resources").and_then(Yaml::as_mapping).ok_or("the template has no Resources")?;
    let mut promises = Promises::default();
    for (id, resource) in resources {
        let (Some(id), Some(kind)) = (id.as_str(), get(resource, "Type").and_then(Yaml::as_str)) else { continue };
        if get(resource, "Condition").is_some() {
            continue; // it may not exist in a given deployment
        }
        let empty = Yaml::Mapping(Default::default());
        let props = get(resource, "Properties").unwrap_or(&empty);
        match kind {
            "AWS::CloudWatch::Alarm" => promises.alarms.push(id.to_string()),
            "AWS::SQS::Queue" => promises.queues.push(QueuePromise {
                id: id.to_string(),
                redrive: get(props, "RedrivePolicy").and_then(|policy| {
                    let dlq = get_att_resource(get(policy, "deadLetterTargetArn")?)?;
                    Some((dlq, get(policy, "maxReceiveCount").map(untagged)?.as_u64()?))
                }),
                retention_seconds: get(props, "MessageRetentionPeriod").map(untagged).and_then(Yaml::as_u64),
                managed_sse: flag(get(props, "SqsManagedSseEnabled")),
            }),
            "AWS::DynamoDB::Table" => promises.tables.push(TablePromise {
                id: id.to_string(),
                sse: get(props, "SSESpecification").is_some_and(|sse| flag(get(sse, "SSEEnabled"))),
                point_in_time_recovery: get(props, "PointInTimeRecoverySpecification")
                    .is_some_and(|pitr| flag(get(pitr, "PointInTimeRecoveryEnabled"))),
                ttl_attribute: get(props, "TimeToLiveSpecification")
                    .filter(|ttl| flag(get(ttl, "Enabled")))
                    .and_then(|ttl| get(ttl, "AttributeName").map(untagged).and_then(Yaml::as_str))
                    .map(str::to_string),
            }),
            "AWS::S3::Bucket" => promises.buckets.push(BucketPromise {
                id: id.to_string(),
                sse_algorithm: get(props, "BucketEncryption")
                    .and_then(|e| get(e, "ServerSideEncryptionConfiguration"))
                    .and_then(|rules| untagged(rules).as_sequence()?.first().cloned())
                    .and_then(|rule| {
                        get(&rule, "ServerSideEncryptionByDefault")
                            .and_then(|d| get(d, "SSEAlgorithm"))
                            .and_then(|a| untagged(a).as_str().map(str::to_string))
                    }),
                expiration_days: get(props, "LifecycleConfiguration").and_then(|l| get(l, "Rules")).and_then(|rules| {
                    untagged(rules).as_sequence()?.iter().find_map(|rule| {
                        get(rule, "ExpirationInDays").map(untagged)?.as_i64().and_then(|d| i32::try_from(d).ok())
                    })
                }),
            }),
            _ => {}
        }
    }
    Ok(promises)
}

/// The clients the lines read with, from one SDK configuration.
pub struct Clients {
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            cloudformation: aws_sdk_cloudformation::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            // Path-style addressing keeps an emulator's endpoint usable; AWS answers it too.
            s3: aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(true).build()),
        }
    }
}

/// The SDK's error as one short line (its code, else its kind), never the request.
fn sdk_error<E: std::error::Error>(operation: &str, error: E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text.truncate(200);
    format!("{operation}: {text}")
}

/// Where the stack's resources are listed.
#[derive(Debug, Clone)]
pub enum Listing {
    /// A CloudFormation stack, listed through its API.
    Stack(String),
    /// A file holding `aws cloudformation list-stack-resources` output (`StackResourceSummaries`).
    File(std::path::PathBuf),
}

/// Logical id -> (physical id, status) from a saved listing.
fn listed_in(file: &Path) -> Result<BTreeMap<String, (String, String)>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let listing: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let summaries = listing
        .get("StackResourceSummaries")
        .and_then(|s| s.as_array())
        .ok_or_else(|| format!("{}: no StackResourceSummaries (list-stack-resources output)", file.display()))?;
    let field =
        |summary: &serde_json::Value, name: &str| summary.get(name).and_then(|v| v.as_str()).map(str::to_string);
    Ok(summaries
        .iter()
        .filter_map(|s| {
            let status = field(s, "ResourceStatus").unwrap_or_default();
            Some((field(s, "LogicalResourceId")?, (field(s, "PhysicalResourceId")?, status)))
        })
        .collect())
}

/// Runs the AWS lines for the stack `listing` names, calling `record` with each.
pub(super) async fn lines(
    clients: &Clients,
    listing: &Listing,
    promises: &Promises,
    mut record: impl FnMut(&'static str, Checked),
) {
    let listed = match listing {
        Listing::Stack(stack) => stack_resources(clients, stack).await,
        Listing::File(file) => listed_in(file),
    };
    let physical = match listed {
        Ok(physical) => physical,
        Err(reason) => {
            record("aws-stack", Err(reason));
            return;
        }
    };
    record("aws-stack", stack_line(&physical, promises));
    let ids = |id: &str| physical.get(id).map(|(physical, _)| physical.clone()).filter(|p| !p.is_empty());
    record("aws-alarms", alarms(&physical, promises));
    let queues = queue_attributes(clients, promises, &ids).await;
    let tables = table_settings(clients, promises, &ids).await;
    let buckets = bucket_settings(clients, promises, &ids).await;
    record("aws-dlqs", dlqs(promises, &queues));
    record("aws-encryption", encryption(promises, &queues, &tables, &buckets));
    record("aws-retention", retention(promises, &queues, &tables, &buckets));
}

/// Logical id -> (physical id, status).
async fn stack_resources(clients: &Clients, stack: &str) -> Result<BTreeMap<String, (String, String)>, String> {
    let mut found = BTreeMap::new();
    let mut next = None;
    loop {
        let page = clients
            .cloudformation
            .list_stack_resources()
            .stack_name(stack)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("ListStackResources of {stack}"), e))?;
        for summary in page.stack_resource_summaries() {
            let (Some(logical), Some(physical)) = (summary.logical_resource_id(), summary.physical_resource_id())
            else {
                continue;
            };
            let status = summary.resource_status().map(|s| s.as_str().to_string()).unwrap_or_default();
            found.insert(logical.to_string(), (physical.to_string(), status));
        }
        next = page.next_token().map(str::to_string);
        if next.is_none() {
            return Ok(found);
        }
    }
}

fn checked_ids(promises: &Promises) -> Vec<&str> {
    let mut ids: Vec<&str> = promises.alarms.iter().map(String::as_str).collect();
    ids.extend(promises.queues.iter().map(|q| q.id.as_str()));
    ids.extend(promises.tables.iter().map(|t| t.id.as_str()));
    ids.extend(promises.buckets.iter().map(|b| b.id.as_str()));
    ids
}

fn stack_line(physical: &BTreeMap<String, (String, String)>, promises: &Promises) -> Checked {
    let ids = checked_ids(promises);
    let missing: Vec<&str> = ids.iter().copied().filter(|id| !physical.contains_key(*id)).collect();
    let broken: Vec<String> = physical
        .iter()
        .filter(|(_, (_, status))| status.contains("FAILED") || status.starts_with("DELETE"))
        .map(|(id, (_, status))| format!("{id} {status}"))
        .collect();
    if !missing.is_empty() || !broken.is_empty() {
        return Err(format!("not in the stack: {}; failed or deleted: {}", list(&missing), list(&broken)));
    }
    Ok(Found::Pass(format!("{} resources, the {} checked ones among them", physical.len(), ids.len())))
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() { "none".into() } else { items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", ") }
}

/// Every alarm of the template, as the stack lists it: there, and created or updated without failure.
fn alarms(physical: &BTreeMap<String, (String, String)>, promises: &Promises) -> Checked {
    let mut missing = Vec::new();
    for id in &promises.alarms {
        match physical.get(id) {
            Some((name, status)) if !name.is_empty() && status.ends_with("_COMPLETE") && !status.contains("DELETE") => {
            }
            Some((_, status)) => missing.push(format!("{id} ({status})")),
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(format!("missing: {}", missing.join(", ")));
    }
    Ok(Found::Pass(format!("{} alarms, each created in the stack", promises.alarms.len())))
}

/// Each queue's attributes, by logical id (missing when the queue could not be read).
async fn queue_attributes(
    clients: &Clients,
    promises: &Promises,
    ids: &dyn Fn(&str) -> Option<String>,
) -> Reads<BTreeMap<String, String>> {
    let mut found = BTreeMap::new();
    for queue in &promises.queues {
        let Some(url) = ids(&queue.id) else { continue };
        let answer = clients
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .map(|a| a.attributes().map(|m| m.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect()))
            .map(Option::unwrap_or_default)
            .map_err(|e| sdk_error(&format!("GetQueueAttributes of {}", queue.id), e));
        found.insert(queue.id.clone(), answer);
    }
    found
}

fn dlqs(promises: &Promises, queues: &Reads<BTreeMap<String, String>>) -> Checked {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for queue in promises.queues.iter() {
        let Some((dlq, count)) = &queue.redrive else { continue };
        checked += 1;
        let (Some(Ok(attributes)), Some(Ok(dlq_attributes))) = (queues.get(&queue.id), queues.get(dlq)) else {
            wrong.push(format!("{} (or {dlq}) could not be read", queue.id));
            continue;
        };
        let policy: serde_json::Value =
            attributes.get("RedrivePolicy").and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
        let target = policy.get("deadLetterTargetArn").and_then(|v| v.as_str());
        let receives = policy.get("maxReceiveCount").and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
        if target.is_none() || target != dlq_attributes.get("QueueArn").map(String::as_str) {
            wrong.push(format!("{} does not send to {dlq}", queue.id));
        } else if receives != Some(*count) {
            wrong.push(format!("{} moves after {receives:?} receives, not {count}", queue.id));
        }
    }
    verdict(wrong, format!("{checked} queues send to their dead-letter queues after the template's receive counts"))
}

struct TableSettings {
    sse: bool,
    pitr: bool,
    ttl: Option<String>,
}

async fn table_settings(
    clients: &Clients,
    promises: &Promises,
    ids: &dyn Fn(&str) -> Option<String>,
) -> Reads<TableSettings> {
    let mut found = BTreeMap::new();
    for table in &promises.tables {
        let Some(name) = ids(&table.id) else { continue };
        let read = async {
            let described = clients
                .dynamodb
                .describe_table()
                .table_name(&name)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("DescribeTable of {}", table.id), e))?;
            let sse = described
                .table()
                .and_then(|t| t.sse_description())
                .and_then(|d| d.status())
                .is_some_and(|s| s.as_str() == "ENABLED");
            let backups = clients
                .dynamodb
                .describe_continuous_backups()
                .table_name(&name)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("DescribeContinuousBackups of {}", table.id), e))?;
            let pitr = backups
                .continuous_backups_description()
                .and_then(|d| d.point_in_time_recovery_description())
                .and_then(|p| p.point_in_time_recovery_status())
                .is_some_and(|s| s.as_str() == "ENABLED");
            let ttl = clients
                .dynamodb
                .describe_time_to_live()
                .table_name(&name)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("DescribeTimeToLive of {}", table.id), e))?;
            let ttl = ttl
                .time_to_live_description()
                .filter(|d| d.time_to_live_status().is_some_and(|s| s.as_str() == "ENABLED"))
                .and_then(|d| d.attribute_name())
                .map(str::to_string);
            Ok(TableSettings { sse, pitr, ttl })
        };
        found.insert(table.id.clone(), read.await);
    }
    found
}

struct BucketSettings {
    algorithm: Option<String>,
    expiration_days: Vec<i32>,
}

async fn bucket_settings(
    clients: &Clients,
    promises: &Promises,
    ids: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, BucketSettings> {
    let mut found = BTreeMap::new();
    for bucket in &promises.buckets {
        let Some(name) = ids(&bucket.id) else { continue };
        let algorithm = match clients.s3.get_bucket_encryption().bucket(&name).send().await {
            Ok(answer) => answer
                .server_side_encryption_configuration()
                .and_then(|c| c.rules().first())
                .and_then(|r| r.apply_server_side_encryption_by_default())
                .map(|d| d.sse_algorithm().as_str().to_string()),
            Err(_) => None,
        };
        // No lifecycle configuration is an error from S3: read as no rule.
        let expiration_days = match clients.s3.get_bucket_lifecycle_configuration().bucket(&name).send().await {
            Ok(answer) => answer
                .rules()
                .iter()
                .filter(|r| r.status().as_str() == "Enabled")
                .filter_map(|r| r.expiration().and_then(|e| e.days()))
                .collect(),
            Err(_) => Vec::new(),
        };
        found.insert(bucket.id.clone(), BucketSettings { algorithm, expiration_days });
    }
    found
}

type Reads<T> = BTreeMap<String, Result<T, String>>;

/// What was read of `id`; when nothing was, the reason goes to `wrong`.
fn read<'r, T>(reads: &'r Reads<T>, id: &str, wrong: &mut Vec<String>) -> Option<&'r T> {
    match reads.get(id) {
        Some(Ok(read)) => Some(read),
        Some(Err(reason)) => {
            wrong.push(reason.clone());
            None
        }
        None => {
            wrong.push(format!("{id} could not be read"));
            None
        }
    }
}

/// The line: the problems found, else `passed`.
fn verdict(wrong: Vec<String>, passed: String) -> Checked {
    if wrong.is_empty() { Ok(Found::Pass(passed)) } else { Err(wrong.join("; ")) }
}

fn encryption(
    promises: &Promises,
    queues: &Reads<BTreeMap<String, String>>,
    tables: &Reads<TableSettings>,
    buckets: &BTreeMap<String, BucketSettings>,
) -> Checked {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for queue in promises.queues.iter().filter(|q| q.managed_sse) {
        checked += 1;
        if let Some(a) = read(queues, &queue.id, &mut wrong)
            && a.get("SqsManagedSseEnabled").map(String::as_str) != Some("true")
        {
            wrong.push(format!("{} has no SQS-managed encryption", queue.id));
        }
    }
    for table in promises.tables.iter().filter(|t| t.sse) {
        checked += 1;
        if read(tables, &table.id, &mut wrong).is_some_and(|settings| !settings.sse) {
            wrong.push(format!("{} is not encrypted with KMS", table.id));
        }
    }
    for bucket in &promises.buckets {
        let Some(expected) = &bucket.sse_algorithm else { continue };
        checked += 1;
        match buckets.get(&bucket.id) {
            Some(settings) if settings.algorithm.as_ref() == Some(expected) => {}
            Some(settings) => {
                wrong.push(format!("{} encrypts with {:?}, not {expected}", bucket.id, settings.algorithm))
            }
            None => wrong.push(format!("{} could not be read", bucket.id)),
        }
    }
    verdict(wrong, format!("{checked} queues, tables and buckets encrypted as the template says"))
}

fn retention(
    promises: &Promises,
    queues: &Reads<BTreeMap<String, String>>,
    tables: &Reads<TableSettings>,
    buckets: &BTreeMap<String, BucketSettings>,
) -> Checked {
    let mut wrong = Vec::new();
    for queue in &promises.queues {
        let Some(seconds) = queue.retention_seconds else { continue };
        let Some(a) = read(queues, &queue.id, &mut wrong) else { continue };
        let kept = a.get("MessageRetentionPeriod");
        if kept.and_then(|s| s.parse::<u64>().ok()) != Some(seconds) {
            let kept = kept.map(String::as_str).unwrap_or("?");
            wrong.push(format!("{} keeps messages {kept} s, not {seconds} s", queue.id));
        }
    }
    for table in &promises.tables {
        let Some(settings) = read(tables, &table.id, &mut wrong) else { continue };
        if table.ttl_attribute.is_some() && settings.ttl != table.ttl_attribute {
            wrong.push(format!("{} has TTL on {:?}, not {:?}", table.id, settings.ttl, table.ttl_attribute));
        }
        if table.point_in_time_recovery && !settings.pitr {
            wrong.push(format!("{} has no point-in-time recovery", table.id));
        }
    }
    for bucket in &promises.buckets {
        let Some(days) = bucket.expiration_days else { continue };
        match buckets.get(&bucket.id) {
            Some(settings) if settings.expiration_days.contains(&days) => {}
            Some(_) => wrong.push(format!("{} has no rule expiring objects after {days} days", bucket.id)),
            None => wrong.push(format!("{} could not be read", bucket.id)),
        }
    }
    verdict(
        wrong,
        "queues' retention, tables' TTL and point-in-time recovery, the bucket's expiry as the template says".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_promises_are_read_as_it_writes_them() {
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
        let promises = promises(&template).unwrap();
        assert!(promises.alarms.len() >= 30, "{}", promises.alarms.len());
        assert!(promises.alarms.contains(&"WebhookDeadLetterQueueDepthAlarm".to_string()));
        let webhook_queue = promises.queues.iter().find(|q| q.id == "WebhookQueue").unwrap();
        assert_eq!(webhook_queue.redrive, Some(("WebhookDeadLetterQueue".to_string(), 5)));
        assert_eq!((webhook_queue.retention_seconds, webhook_queue.managed_sse), (Some(345_600), true));
        let jobs = promises.tables.iter().find(|t| t.id == "JobsTable").unwrap();
        assert_eq!(
            (jobs.sse, jobs.point_in_time_recovery, jobs.ttl_attribute.as_deref()),
            (true, true, Some("expires_at"))
        );
        let idempotency = promises.tables.iter().find(|t| t.id == "IdempotencyTable").unwrap();
        assert!(!idempotency.point_in_time_recovery, "the template keeps none for it");
        assert_eq!(
            promises.buckets,
            [BucketPromise {
                id: "ExportBucket".into(),
                sse_algorithm: Some("aws:kms".into()),
                expiration_days: Some(8)
            }]
        );
    }
}
