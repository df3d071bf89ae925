//! `keel-local check --stack` / `--stack-resources`: the AWS lines against the emulator (moto).
//!
//! - Every resource `template.yaml` promises things about (its tables, queues and bucket) is made in moto as the
//!   template declares it, and listed with its alarms as `aws cloudformation list-stack-resources` would list the
//!   stack. The
//!   lines pass; then drift (an alarm gone from the stack, a redrive policy removed, recovery turned off, the
//!   lifecycle deleted) fails each line that owns it, naming the resource.
//! - Through CloudFormation itself: a stack of the template's queues made by moto's CloudFormation is found by
//!   name and read back. (moto's CloudFormation loses alarms' logical ids and ignores tables' encryption, recovery
//!   and TTL, so the whole template is read back from a listing above instead.)
//! - Without credentials the lines are skipped and say so.

use keel_aws::testing::Emulator;
use keel_local::check::aws::{Promises, promises};
use serde_json::json;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_keel-local");

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml")
}

/// Makes in moto each resource the template promises things about, as it declares it; the listing of them.
async fn provision(config: &aws_config::SdkConfig, promised: &Promises) -> serde_json::Value {
    let text = std::fs::read_to_string(template()).unwrap();
    let sam: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let dynamodb = aws_sdk_dynamodb::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    let s3 = s3(config);
    let mut listed = Vec::new();
    let mut list = |logical: &str, physical: &str| {
        listed.push(
            json!({"LogicalResourceId": logical, "PhysicalResourceId": physical, "ResourceStatus": "CREATE_COMPLETE"}),
        );
    };
    use aws_sdk_dynamodb::types::*;
    for table in &promised.tables {
        let props = &sam["Resources"][table.id.as_str()]["Properties"];
        let name = keel_aws::testing::unique_name(&table.id);
        let mut create = dynamodb.create_table().table_name(&name).billing_mode(BillingMode::PayPerRequest);
        for definition in props["AttributeDefinitions"].as_sequence().unwrap() {
            let kind = ScalarAttributeType::from(definition["AttributeType"].as_str().unwrap());
            create = create.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(definition["AttributeName"].as_str().unwrap())
                    .attribute_type(kind)
                    .build()
                    .unwrap(),
            );
        }
        for key in props["KeySchema"].as_sequence().unwrap() {
            let kind = KeyType::from(key["KeyType"].as_str().unwrap());
            create = create.key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key["AttributeName"].as_str().unwrap())
                    .key_type(kind)
                    .build()
                    .unwrap(),
            );
        }
        if table.sse {
            create = create.sse_specification(SseSpecification::builder().enabled(true).sse_type(SseType::Kms).build());
        }
        create.send().await.unwrap();
        if table.point_in_time_recovery {
            let pitr =
                PointInTimeRecoverySpecification::builder().point_in_time_recovery_enabled(true).build().unwrap();
            dynamodb
                .update_continuous_backups()
                .table_name(&name)
                .point_in_time_recovery_specification(pitr)
                .send()
                .await
                .unwrap();
        }
        if let Some(attribute) = &table.ttl_attribute {
            let ttl = TimeToLiveSpecification::builder().attribute_name(attribute).enabled(true).build().unwrap();
            dynamodb.update_time_to_live().table_name(&name).time_to_live_specification(ttl).send().await.unwrap();
        }
        list(&table.id, &name);
    }
    // Dead-letter queues first: the others name them.
    let mut queues: Vec<_> = promised.queues.iter().collect();
    queues.sort_by_key(|q| q.redrive.is_some());
    let mut arns = std::collections::BTreeMap::new();
    use aws_sdk_sqs::types::QueueAttributeName as A;
    for queue in queues {
        let mut create = sqs.create_queue().queue_name(keel_aws::testing::unique_name(&queue.id));
        if let Some(seconds) = queue.retention_seconds {
            create = create.attributes(A::MessageRetentionPeriod, seconds.to_string());
        }
        create = create.attributes(A::SqsManagedSseEnabled, queue.managed_sse.to_string());
        if let Some((dlq, count)) = &queue.redrive {
            let policy = json!({"deadLetterTargetArn": arns[dlq], "maxReceiveCount": count}).to_string();
            create = create.attributes(A::RedrivePolicy, policy);
        }
        let url = create.send().await.unwrap().queue_url().unwrap().to_string();
        let attributes = sqs.get_queue_attributes().queue_url(&url).attribute_names(A::QueueArn).send().await.unwrap();
        arns.insert(queue.id.clone(), attributes.attributes().unwrap()[&A::QueueArn].clone());
        list(&queue.id, &url);
    }
    use aws_sdk_s3::types::*;
    for bucket in &promised.buckets {
        let name = keel_aws::testing::unique_name("export").to_lowercase();
        s3.create_bucket().bucket(&name).send().await.unwrap();
        let algorithm = ServerSideEncryption::from(bucket.sse_algorithm.as_deref().unwrap());
        let rule = ServerSideEncryptionRule::builder()
            .apply_server_side_encryption_by_default(
                ServerSideEncryptionByDefault::builder().sse_algorithm(algorithm).build().unwrap(),
            )
            .build();
        let encryption = ServerSideEncryptionConfiguration::builder().rules(rule).build().unwrap();
        s3.put_bucket_encryption().bucket(&name).server_side_encryption_configuration(encryption).send().await.unwrap();
        let rule = LifecycleRule::builder()
            .id("export-bundles-expire")
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .expiration(LifecycleExpiration::builder().days(bucket.expiration_days.unwrap()).build())
            .build()
            .unwrap();
        let lifecycle = BucketLifecycleConfiguration::builder().rules(rule).build().unwrap();
        s3.put_bucket_lifecycle_configuration().bucket(&name).lifecycle_configuration(lifecycle).send().await.unwrap();
        list(&bucket.id, &name);
    }
    // The alarms are CloudFormation's record alone (see check/aws.rs): listed as the stack lists them.
    for alarm in &promised.alarms {
        list(alarm, &keel_aws::testing::unique_name(alarm));
    }
    json!({"StackResourceSummaries": listed})
}

fn s3(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(true).build())
}

/// `keel-local check` with `args` (the listing, the template); its aws lines as (check, verdict, detail).
async fn check(emulator: Option<&Emulator>, args: &[&std::ffi::OsStr]) -> Vec<(String, String, String)> {
    let mut command = tokio::process::Command::new(BIN);
    // No API answers at this address: only the AWS lines matter here.
    command.args(["check", "--url", "http://127.0.0.1:9", "--wait-seconds", "1"]).args(args);
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"] {
        command.env_remove(var);
    }
    command
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    if let Some(emulator) = emulator {
        command.envs(emulator.env_vars());
    }
    let output = command.output().await.unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| line.contains(" aws-"))
        .map(|line| {
            let (verdict, rest) = line.split_once("  ").unwrap();
            let (name, detail) = rest.trim_start().split_once(' ').unwrap_or((rest, ""));
            (name.to_string(), verdict.to_string(), detail.trim().to_string())
        })
        .collect()
}

fn verdict<'l>(lines: &'l [(String, String, String)], name: &str) -> (&'l str, &'l str) {
    let line = lines.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no {name} line: {lines:?}"));
    (line.1.as_str(), line.2.as_str())
}

const LINES: [&str; 5] = ["aws-stack", "aws-alarms", "aws-dlqs", "aws-encryption", "aws-retention"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_lines_read_every_promise_back_and_catch_drift() {
    let emulator = Emulator::start();
    let config = emulator.sdk_config();
    let promised = promises(&template()).unwrap();
    let listing = provision(&config, &promised).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resources.json");
    std::fs::write(&file, listing.to_string()).unwrap();
    let args = [
        std::ffi::OsStr::new("--stack-resources"),
        file.as_os_str(),
        "--template".as_ref(),
        template().into_os_string().leak(),
    ];

    let lines = check(Some(&emulator), &args).await;
    for name in LINES {
        assert_eq!(verdict(&lines, name).0, "pass", "{name}: {lines:?}");
    }
    assert!(verdict(&lines, "aws-alarms").1.starts_with(&format!("{} alarms", promised.alarms.len())), "{lines:?}");

    // Drift after the deployment.
    let physical = |id: &str| {
        listing["StackResourceSummaries"].as_array().unwrap().iter().find(|r| r["LogicalResourceId"] == id).unwrap()
            ["PhysicalResourceId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // An alarm gone from the stack, one whose update failed.
    let mut drifted = listing.clone();
    let summaries = drifted["StackResourceSummaries"].as_array_mut().unwrap();
    summaries.retain(|r| r["LogicalResourceId"] != "WebhookDeadLetterQueueDepthAlarm");
    let failed = summaries.iter_mut().find(|r| r["LogicalResourceId"] == "JobDeadLetterQueueDepthAlarm").unwrap();
    failed["ResourceStatus"] = json!("UPDATE_FAILED");
    std::fs::write(&file, drifted.to_string()).unwrap();
    let sqs = aws_sdk_sqs::Client::new(&config);
    let no_redrive = aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy;
    sqs.set_queue_attributes().queue_url(physical("WebhookQueue")).attributes(no_redrive, "").send().await.unwrap();
    let off = aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
        .point_in_time_recovery_enabled(false)
        .build()
        .unwrap();
    aws_sdk_dynamodb::Client::new(&config)
        .update_continuous_backups()
        .table_name(physical("JobsTable"))
        .point_in_time_recovery_specification(off)
        .send()
        .await
        .unwrap();
    s3(&config).delete_bucket_lifecycle().bucket(physical("ExportBucket")).send().await.unwrap();

    let lines = check(Some(&emulator), &args).await;
    let (alarms, detail) = verdict(&lines, "aws-alarms");
    assert!(alarms == "fail" && detail.contains("WebhookDeadLetterQueueDepthAlarm"), "{lines:?}");
    assert!(detail.contains("JobDeadLetterQueueDepthAlarm (UPDATE_FAILED)"), "{lines:?}");
    let (dlqs, detail) = verdict(&lines, "aws-dlqs");
    assert!(dlqs == "fail" && detail.contains("WebhookQueue does not send to WebhookDeadLetterQueue"), "{lines:?}");
    let (retention, detail) = verdict(&lines, "aws-retention");
    assert!(retention == "fail" && detail.contains("JobsTable has no point-in-time recovery"), "{lines:?}");
    assert!(detail.contains("ExportBucket has no rule expiring objects after 8 days"), "{lines:?}");
    assert_eq!(verdict(&lines, "aws-encryption").0, "pass", "untouched: {lines:?}");
    assert_eq!(verdict(&lines, "aws-stack").0, "fail", "the stack lacks an alarm and has a failed one: {lines:?}");

    // Without credentials: skipped, and said.
    let lines = check(None, &args).await;
    let (skipped, detail) = verdict(&lines, "aws-resources");
    assert!(skipped == "warn" && detail.contains("no AWS credentials"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_is_found_through_cloudformation_by_its_name() {
    let emulator = Emulator::start();
    let config = emulator.sdk_config();
    // A template of the real one's queues alone, and a CloudFormation stack of them.
    let text = std::fs::read_to_string(template()).unwrap();
    let sam: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let queues = ["WebhookQueue", "WebhookDeadLetterQueue", "JobQueue", "JobDeadLetterQueue"];
    let mut reduced = serde_yaml::Mapping::new();
    let mut resources = serde_json::Map::new();
    for id in queues {
        let resource = sam["Resources"][id].clone();
        reduced.insert(id.into(), resource);
        let props = &sam["Resources"][id]["Properties"];
        let mut plain = json!({"MessageRetentionPeriod": props["MessageRetentionPeriod"].as_u64(),
            "SqsManagedSseEnabled": props["SqsManagedSseEnabled"].as_bool()});
        if let Some(count) = props["RedrivePolicy"]["maxReceiveCount"].as_u64() {
            let dlq = id.replace("Queue", "DeadLetterQueue");
            plain["RedrivePolicy"] =
                json!({"deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]}, "maxReceiveCount": count});
        }
        resources.insert(id.into(), json!({"Type": "AWS::SQS::Queue", "Properties": plain}));
    }
    let dir = tempfile::tempdir().unwrap();
    let reduced_path = dir.path().join("queues.yaml");
    let mut root = serde_yaml::Mapping::new();
    root.insert("Resources".into(), serde_yaml::Value::Mapping(reduced));
    std::fs::write(&reduced_path, serde_yaml::to_string(&root).unwrap()).unwrap();
    let cloudformation = aws_sdk_cloudformation::Client::new(&config);
    let body = json!({"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}).to_string();
    cloudformation.create_stack().stack_name("keel-queues").template_body(body).send().await.unwrap();

    let template_arg = ["--template".as_ref(), reduced_path.as_os_str()];
    let by_name = [&["--stack".as_ref(), "keel-queues".as_ref()][..], &template_arg[..]].concat();
    let lines = check(Some(&emulator), &by_name).await;
    for name in LINES {
        assert_eq!(verdict(&lines, name).0, "pass", "{name}: {lines:?}");
    }
    assert!(verdict(&lines, "aws-dlqs").1.starts_with("2 queues"), "{lines:?}");

    let missing = [&["--stack".as_ref(), "no-such-stack".as_ref()][..], &template_arg[..]].concat();
    let lines = check(Some(&emulator), &missing).await;
    assert_eq!(verdict(&lines, "aws-stack").0, "fail", "{lines:?}");
    assert_eq!(lines.len(), 1, "nothing else is read without the stack: {lines:?}");
}
