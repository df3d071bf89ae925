//! Idempotent provisioning of the resources the AWS adapters expect, for tests and for the local host's
//! `--backend aws` against an emulator. In AWS, `template.yaml` creates these; nothing in a Lambda calls this.
//!
//! Every helper may be called again with the same arguments: an existing resource is reused and brought to the
//! requested configuration. Errors are [`PortError::Unavailable`] with the SDK's full error context (setup-time
//! messages carry no item data).

use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use keel::bus::EventPattern;
use keel::port::PortError;
use serde_json::{Value, json};
use std::time::Duration;

/// The table's TTL attribute, as the DynamoDB adapter writes it.
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// How long `ensure_table` waits for a new table to become active.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

fn failed(what: impl std::fmt::Display, err: impl std::error::Error) -> PortError {
    PortError::Unavailable(format!("{what}: {}", DisplayErrorContext(err)))
}

fn build_failed(what: &str) -> impl Fn(aws_sdk_dynamodb::error::BuildError) -> PortError + '_ {
    move |e| PortError::Invalid(format!("{what}: {e}"))
}

/// Creates the table with string keys `pk` (hash) and `sk` (range), on-demand billing and TTL on `expires_at`,
/// unless it exists; waits until it is active.
pub async fn ensure_table(client: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), PortError> {
    let what = format!("create table {name}");
    let key = |attribute: &str, key_type: KeyType| {
        KeySchemaElement::builder().attribute_name(attribute).key_type(key_type).build().map_err(build_failed(&what))
    };
    let string_attribute = |attribute: &str| {
        AttributeDefinition::builder()
            .attribute_name(attribute)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_failed(&what))
    };
    let created = client
        .create_table()
        .table_name(name)
        .attribute_definitions(string_attribute("pk")?)
        .attribute_definitions(string_attribute("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
        Err(e) => return Err(failed(&what, e)),
    }

    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    loop {
        let described = client.describe_table().table_name(name).send().await.map_err(|e| failed(&what, e))?;
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PortError::Unavailable(format!("{what}: not active after {TABLE_ACTIVE_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ttl = client.describe_time_to_live().table_name(name).send().await.map_err(|e| failed(&what, e))?;
    let current = ttl.time_to_live_description();
    let enabled = current
        .and_then(|d| d.time_to_live_status())
        .is_some_and(|status| matches!(status, TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling))
        && current.and_then(|d| d.attribute_name()) == Some(TTL_ATTRIBUTE);
    if !enabled {
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL_ATTRIBUTE)
            .build()
            .map_err(build_failed(&what))?;
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(spec)
            .send()
            .await
            .map_err(|e| failed(format!("enable TTL on table {name}"), e))?;
    }
    Ok(())
}

/// Creates a standard queue, or updates an existing one, with this visibility timeout and, if given, a redrive
/// policy to the dead-letter queue `(dlq_arn, max_receive_count)`. Returns the queue's URL and ARN.
pub async fn ensure_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_secs: u32,
    redrive: Option<(&str, u32)>,
) -> Result<(String, String), PortError> {
    let what = format!("create queue {name}");
    let mut attributes = vec![(QueueAttributeName::VisibilityTimeout, visibility_timeout_secs.to_string())];
    if let Some((dlq_arn, max_receive_count)) = redrive {
        let policy = json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count });
        attributes.push((QueueAttributeName::RedrivePolicy, policy.to_string()));
    }
    let mut request = client.create_queue().queue_name(name);
    for (attribute, value) in &attributes {
        request = request.attributes(attribute.clone(), value);
    }
    let url = match request.send().await {
        Ok(output) => output.queue_url.ok_or_else(|| PortError::Unavailable(format!("{what}: no queue URL")))?,
        Err(SdkError::ServiceError(e)) if e.err().is_queue_name_exists() => {
            // It exists with other attributes: bring them to what was asked for.
            let url = client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| failed(&what, e))?
                .queue_url
                .ok_or_else(|| PortError::Unavailable(format!("{what}: no queue URL")))?;
            let mut update = client.set_queue_attributes().queue_url(&url);
            for (attribute, value) in attributes {
                update = update.attributes(attribute, value);
            }
            update.send().await.map_err(|e| failed(format!("update queue {name}"), e))?;
            url
        }
        Err(e) => return Err(failed(&what, e)),
    };
    let arn = queue_arn(client, &url).await?;
    Ok((url, arn))
}

async fn queue_arn(client: &aws_sdk_sqs::Client, url: &str) -> Result<String, PortError> {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| failed(format!("read the ARN of queue {url}"), e))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| PortError::Unavailable(format!("queue {url} has no QueueArn")))
}

/// Creates the event bus unless it exists (the `default` bus always does). Returns its ARN.
pub async fn ensure_bus(client: &aws_sdk_eventbridge::Client, name: &str) -> Result<String, PortError> {
    if name != "default" {
        match client.create_event_bus().name(name).send().await {
            Ok(output) => {
                if let Some(arn) = output.event_bus_arn() {
                    return Ok(arn.to_string());
                }
            }
            Err(SdkError::ServiceError(e)) if e.err().is_resource_already_exists_exception() => {}
            Err(e) => return Err(failed(format!("create event bus {name}"), e)),
        }
    }
    let described =
        client.describe_event_bus().name(name).send().await.map_err(|e| failed(format!("describe bus {name}"), e))?;
    described.arn().map(str::to_string).ok_or_else(|| PortError::Unavailable(format!("event bus {name} has no ARN")))
}

/// Creates the bucket unless this account already has it (in `us-east-1`, or the client's region).
pub async fn ensure_bucket(client: &aws_sdk_s3::Client, name: &str) -> Result<(), PortError> {
    let mut request = client.create_bucket().bucket(name);
    if let Some(region) = client.config().region().map(|r| r.as_ref().to_string()).filter(|r| r != "us-east-1") {
        let location = aws_sdk_s3::types::BucketLocationConstraint::from(region.as_str());
        request = request.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder().location_constraint(location).build(),
        );
    }
    match request.send().await {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(e)) if e.err().is_bucket_already_owned_by_you() => Ok(()),
        Err(e) => Err(failed(format!("create bucket {name}"), e)),
    }
}

/// EventBridge's JSON form of an [`EventPattern`]: exact sources, and detail-types exact or, when they end in `*`,
/// by prefix. An empty pattern matches every event.
pub fn event_pattern_json(pattern: &EventPattern) -> String {
    let mut json = serde_json::Map::new();
    if !pattern.sources.is_empty() {
        json.insert("source".into(), json!(pattern.sources));
    }
    if !pattern.detail_types.is_empty() {
        let types: Vec<Value> = pattern
            .detail_types
            .iter()
            .map(|t| match t.strip_suffix('*') {
                Some(prefix) => json!({ "prefix": prefix }),
                None => json!(t),
            })
            .collect();
        json.insert("detail-type".into(), Value::Array(types));
    }
    if json.is_empty() {
        // EventBridge refuses an empty pattern; this one matches every event.
        json.insert("source".into(), json!([{ "prefix": "" }]));
    }
    Value::Object(json).to_string()
}

/// Routes events matching `pattern_json` on `bus` to the queue: creates or updates the rule, points its target at
/// the queue, and adds a statement to the queue's policy letting this rule send to it (unless one is there).
/// Returns the rule's ARN.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_rule_to_queue(
    eventbridge: &aws_sdk_eventbridge::Client,
    sqs: &aws_sdk_sqs::Client,
    bus: &str,
    rule_name: &str,
    pattern_json: &str,
    queue_url: &str,
    queue_arn: &str,
) -> Result<String, PortError> {
    let rule_arn = eventbridge
        .put_rule()
        .name(rule_name)
        .event_bus_name(bus)
        .event_pattern(pattern_json)
        .state(RuleState::Enabled)
        .send()
        .await
        .map_err(|e| failed(format!("put rule {rule_name}"), e))?
        .rule_arn
        .ok_or_else(|| PortError::Unavailable(format!("put rule {rule_name}: no rule ARN")))?;

    let target_id = target_id(queue_arn);
    let target = Target::builder()
        .id(&target_id)
        .arn(queue_arn)
        .build()
        .map_err(|e| PortError::Invalid(format!("target for rule {rule_name}: {e}")))?;
    let targets = eventbridge
        .put_targets()
        .rule(rule_name)
        .event_bus_name(bus)
        .targets(target)
        .send()
        .await
        .map_err(|e| failed(format!("put target of rule {rule_name}"), e))?;
    if targets.failed_entry_count() > 0 {
        let codes: Vec<&str> = targets.failed_entries().iter().filter_map(|e| e.error_code()).collect();
        return Err(PortError::Unavailable(format!("put target of rule {rule_name}: {}", codes.join(", "))));
    }

    allow_rule_to_send(sqs, queue_url, queue_arn, &rule_arn).await?;
    Ok(rule_arn)
}

/// A target id EventBridge accepts (`[.\-_A-Za-z0-9]+`, at most 64 characters) derived from the queue's name.
fn target_id(queue_arn: &str) -> String {
    let name = queue_arn.rsplit(':').next().unwrap_or(queue_arn);
    let id: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).collect();
    let id = if id.is_empty() { "queue".to_string() } else { id };
    id.chars().take(64).collect()
}

async fn allow_rule_to_send(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    queue_arn: &str,
    rule_arn: &str,
) -> Result<(), PortError> {
    let what = format!("allow {rule_arn} to send to {queue_url}");
    let current = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .map_err(|e| failed(&what, e))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::Policy))
        .filter(|p| !p.trim().is_empty());
    let mut policy: Value = match current {
        Some(text) => serde_json::from_str(&text)
            .map_err(|_| PortError::Unavailable(format!("{what}: the queue's policy is not JSON")))?,
        None => json!({ "Version": "2012-10-17", "Statement": [] }),
    };
    let sid: String = format!("keel-{rule_arn}").chars().filter(char::is_ascii_alphanumeric).collect();
    let statement = json!({
        "Sid": sid,
        "Effect": "Allow",
        "Principal": { "Service": "events.amazonaws.com" },
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": { "ArnEquals": { "aws:SourceArn": rule_arn } },
    });
    let shape_error = || PortError::Unavailable(format!("{what}: the queue's policy is not a JSON object"));
    let statements = policy.as_object_mut().ok_or_else(shape_error)?.entry("Statement").or_insert_with(|| json!([]));
    if !statements.is_array() {
        // A policy may hold a single statement object; normalise it to a list.
        *statements = Value::Array(vec![statements.take()]);
    }
    let Value::Array(statements) = statements else {
        return Err(shape_error());
    };
    if statements.iter().any(|s| s.get("Sid").and_then(Value::as_str) == Some(sid.as_str())) {
        return Ok(());
    }
    statements.push(statement);
    sqs.set_queue_attributes()
        .queue_url(queue_url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .map_err(|e| failed(&what, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_eventbridge_json() {
        let pattern = EventPattern {
            sources: vec!["keel.jobs".into()],
            detail_types: vec!["job.completed".into(), "job.fail*".into()],
        };
        let json: Value = serde_json::from_str(&event_pattern_json(&pattern)).unwrap();
        assert_eq!(
            json,
            json!({ "source": ["keel.jobs"], "detail-type": ["job.completed", { "prefix": "job.fail" }] })
        );
        let all: Value = serde_json::from_str(&event_pattern_json(&EventPattern::default())).unwrap();
        assert_eq!(all, json!({ "source": [{ "prefix": "" }] }));
    }

    #[test]
    fn target_ids_are_sanitised() {
        assert_eq!(target_id("arn:aws:sqs:us-east-1:123456789012:keel-jobs_1.fifo"), "keel-jobs_1.fifo");
        assert_eq!(target_id(&format!("arn:aws:sqs:r:1:{}", "q".repeat(80))).len(), 64);
    }
}
