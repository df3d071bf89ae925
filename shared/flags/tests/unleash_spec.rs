//! The Unleash client specification (v6.1.0), run against Keel's engine: each file's state is imported with
//! `flags::unleash` and every enabled-check and variant check must give Unleash's answer. The files are not in the
//! repository; `infra/test.sh` points `KEEL_FIXTURES_DIR` at them. No case is excluded.

use chrono::{TimeZone, Utc};
use keel_flags::{Snapshot, unleash};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn spec_dir() -> PathBuf {
    let fixtures = std::env::var("KEEL_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let dir = fixtures.join("unleash-client-specification/specifications");
    assert!(dir.is_dir(), "the Unleash client specification is not at {} (set KEEL_FIXTURES_DIR)", dir.display());
    dir
}

#[test]
fn unleash_client_specification() {
    let dir = spec_dir();
    let index: Vec<String> = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index.len(), 22);
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    let (mut checks, mut variant_checks, mut failures) = (0, 0, Vec::new());
    for file in &index {
        let spec: Value = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        let features = unleash::parse(&spec["state"]).unwrap_or_else(|e| panic!("{file}: {e}"));
        let import = unleash::convert(&features, now);
        let segments: BTreeMap<_, _> = import.segments.iter().map(|s| (s.name.clone(), s.clone())).collect();
        let snapshot = Snapshot::build(import.flags.clone(), &segments);
        for test in spec["tests"].as_array().into_iter().flatten() {
            checks += 1;
            let context = unleash::context(&test["context"]);
            let answer = snapshot.evaluate(test["toggleName"].as_str().unwrap(), &context, now);
            if Value::Bool(answer.value) != test["expectedResult"] {
                failures.push(format!("{file}: {} (got {})", test["description"], answer.value));
            }
        }
        for test in spec["variantTests"].as_array().into_iter().flatten() {
            variant_checks += 1;
            let context = unleash::context(&test["context"]);
            let answer = snapshot.evaluate(test["toggleName"].as_str().unwrap(), &context, now);
            let mut got = json!({
                "name": answer.variant_name(),
                "enabled": answer.variant.is_some(),
                "feature_enabled": answer.value,
            });
            if let Some(payload) = answer.variant.and_then(|v| v.payload.as_ref()) {
                got["payload"] = json!({"type": payload.kind, "value": payload.value});
            }
            let mut expected = test["expectedResult"].clone();
            // Older files omit feature_enabled; where they do, it is not part of the check.
            if expected.get("feature_enabled").is_none() {
                got.as_object_mut().unwrap().remove("feature_enabled");
            }
            if let Some(object) = expected.as_object_mut() {
                object.remove("featureEnabled");
            }
            if got != expected {
                failures.push(format!("{file}: {} (got {got}, want {expected})", test["description"]));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checks} + {variant_checks} checks fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((checks, variant_checks), (227, 52), "the specification has 227 enabled-checks and 52 variant checks");
}
