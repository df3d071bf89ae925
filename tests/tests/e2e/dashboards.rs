//! The template's alarms and dashboard watch metrics the code really writes: every Keel metric name they name is
//! recorded somewhere in the workspace's sources (`metrics::count` or `metrics::milliseconds`), so renaming a
//! metric without its alarm fails here rather than silencing the alarm. And every function has alarms on its errors
//! and throttles, and every dead-letter queue one on its depth.

use keel_tests::repo_root;
use std::collections::BTreeSet;

fn recorded_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![repo_root().join("shared"), repo_root().join("functions")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for call in ["count(\"", "milliseconds(\""] {
                    for piece in text.split(call).skip(1) {
                        if let Some(name) = piece.split('"').next() {
                            names.insert(name.to_string());
                        }
                    }
                }
            }
        }
    }
    names
}

#[test]
fn every_keel_metric_the_template_watches_is_recorded_by_the_code() {
    let template = std::fs::read_to_string(repo_root().join("template.yaml")).unwrap();
    let recorded = recorded_names();
    let mut watched = BTreeSet::new();
    // Alarms: `Namespace: Keel` followed by its `MetricName`.
    let lines: Vec<&str> = template.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "Namespace: Keel" {
            let name = lines[i + 1].trim().strip_prefix("MetricName: ").expect("MetricName after Namespace: Keel");
            watched.insert(name.to_string());
        }
    }
    // The dashboard's searches: `MetricName=\"Name\"` inside `{Keel,...}`.
    for piece in template.split("MetricName=\\\"").skip(1) {
        watched.insert(piece.split('\\').next().unwrap().to_string());
    }
    assert!(watched.len() >= 10, "{watched:?}");
    let missing: Vec<&String> = watched.iter().filter(|name| !recorded.contains(*name)).collect();
    assert!(missing.is_empty(), "the template watches metrics no code records: {missing:?} (recorded: {recorded:?})");
}

/// The template's resources as `(logical id, its lines)`, read as text: `  Name:` at two spaces under `Resources:`.
fn resources(template: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in template.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            inside = line.trim_end() == "Resources:";
            continue;
        }
        if !inside {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 2 && line.trim_end().ends_with(':') && !line.trim_start().starts_with('#') {
            found.push((line.trim().trim_end_matches(':').to_string(), String::new()));
        } else if let Some((_, block)) = found.last_mut() {
            block.push_str(line.trim());
            block.push('\n');
        }
    }
    found
}

#[test]
fn every_function_has_error_and_throttle_alarms_and_every_dead_letter_queue_a_depth_alarm() {
    let template = std::fs::read_to_string(repo_root().join("template.yaml")).unwrap();
    let resources = resources(&template);
    let alarms: Vec<&String> = resources
        .iter()
        .filter(|(_, block)| block.contains("Type: AWS::CloudWatch::Alarm"))
        .map(|(_, block)| block)
        .collect();
    let watched = |metric: &str, value: &str| {
        alarms.iter().any(|alarm| alarm.contains(&format!("MetricName: {metric}\n")) && alarm.contains(value))
    };
    let functions: Vec<&String> = resources
        .iter()
        .filter(|(_, block)| block.contains("Type: AWS::Serverless::Function"))
        .map(|(id, _)| id)
        .collect();
    assert!(functions.len() >= 10, "{functions:?}");
    for function in &functions {
        for metric in ["Errors", "Throttles"] {
            let value = format!("Value: !Ref {function}\n");
            assert!(watched(metric, &value), "{function} has no {metric} alarm");
        }
    }
    let dead_letter_queues: BTreeSet<String> = template
        .split("deadLetterTargetArn: !GetAtt ")
        .skip(1)
        .map(|rest| rest.split(".Arn").next().unwrap().to_string())
        .collect();
    assert!(dead_letter_queues.len() >= 2, "{dead_letter_queues:?}");
    for queue in &dead_letter_queues {
        let value = format!("Value: !GetAtt {queue}.QueueName\n");
        assert!(watched("ApproximateNumberOfMessagesVisible", &value), "{queue} has no depth alarm");
    }
}

/// Every bucket holds personal data (export bundles): KMS-encrypted, never public, owner-enforced, reachable only
/// over TLS, and expiring on its own.
#[test]
fn every_bucket_is_encrypted_private_tls_only_and_expires_its_objects() {
    let template = std::fs::read_to_string(repo_root().join("template.yaml")).unwrap();
    let resources = resources(&template);
    let buckets: Vec<&(String, String)> =
        resources.iter().filter(|(_, block)| block.contains("Type: AWS::S3::Bucket\n")).collect();
    assert!(!buckets.is_empty());
    for (id, block) in buckets {
        for needed in [
            "SSEAlgorithm: aws:kms\n",
            "BlockPublicAcls: true\n",
            "BlockPublicPolicy: true\n",
            "IgnorePublicAcls: true\n",
            "RestrictPublicBuckets: true\n",
            "ObjectOwnership: BucketOwnerEnforced\n",
            "ExpirationInDays: ",
        ] {
            assert!(block.contains(needed), "{id} lacks {needed:?}");
        }
        let policy = resources
            .iter()
            .find(|(_, p)| p.contains("Type: AWS::S3::BucketPolicy\n") && p.contains(&format!("Bucket: !Ref {id}\n")))
            .unwrap_or_else(|| panic!("{id} has no bucket policy"));
        for needed in ["Effect: Deny\n", "aws:SecureTransport: \"false\"\n", &format!("${{{id}.Arn}}/*")] {
            assert!(policy.1.contains(needed), "{id}'s policy lacks {needed:?}");
        }
    }
}
