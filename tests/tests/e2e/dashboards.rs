//! The template's alarms and dashboard watch metrics the code really writes: every Keel metric name they name is
//! recorded somewhere in the workspace's sources (`metrics::count` or `metrics::milliseconds`), so renaming a
//! metric without its alarm fails here rather than silencing the alarm.

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
