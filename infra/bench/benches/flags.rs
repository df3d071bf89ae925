//! Feature-flag evaluation: Keel's engine (`keel_flags`) against Unleash's own Rust engine, yggdrasil
//! (`unleash-yggdrasil`, the core of Unleash's server-side SDKs), on the same flags.
//!
//! Every scenario is written once, as an Unleash client-features document; yggdrasil takes it as it is and Keel
//! imports it with `keel_flags::unleash::convert` (which must report no warnings), so the two engines evaluate
//! the same flag by construction. Before anything is timed, both engines answer for hundreds of user ids in every
//! scenario and must agree on the value (and on the variant's name), so the comparison cannot drift.
//!
//! Measured per scenario: Keel's `Snapshot::evaluate` (its full answer: value, variant, reason, rule, version) and
//! `Snapshot::is_enabled` (the decision alone, no variant chosen);
//! yggdrasil's `resolve` (enabled and variant, its closest equivalent of a full answer); yggdrasil's `is_enabled`
//! (its cheapest call), and `get_variant` where the flag has variants. Then 100 flags for one context, loading
//! a snapshot of 1,000 Keel flags from their stored JSON, and refreshing it after one flag changed.
//!
//! `cargo bench -p keel-bench --bench flags -- --warm-up-time 1 --measurement-time 3`

// Bench set-up fails loudly rather than measuring the wrong thing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keel_flags::unleash;
use keel_flags::{
    Constraint, Flag, FlagType, Lifecycle, Operator, Override, OverrideAction, Payload, Rollout, Rule, Segment,
    Snapshot, Stickiness, StoredFlag, Variant,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::hint::black_box;
use unleash_yggdrasil::{EngineState, UpdateMessage};

/// User ids every scenario is checked with before it is measured.
const CHECKED_USERS: usize = 500;

fn now() -> DateTime<Utc> {
    "2026-11-22T12:00:00Z".parse().unwrap()
}

/// The context every evaluation is measured with, as an Unleash SDK sends it.
fn unleash_context(user_id: &str) -> Value {
    json!({
        "userId": user_id,
        "sessionId": "session-1f3a",
        "environment": "production",
        "appName": "keel-bench",
    })
}

/// The five shapes, as Unleash client features (one feature each).
#[derive(Debug, Clone, Copy)]
enum Shape {
    NoRules,
    OneConstraint,
    TwoConstraints,
    Rollout50,
    Variants,
}

const SHAPES: [Shape; 5] =
    [Shape::NoRules, Shape::OneConstraint, Shape::TwoConstraints, Shape::Rollout50, Shape::Variants];

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::NoRules => "no_rules",
            Shape::OneConstraint => "one_constraint",
            Shape::TwoConstraints => "two_constraints",
            Shape::Rollout50 => "rollout_50",
            Shape::Variants => "variants",
        }
    }

    fn feature(self, name: &str) -> Value {
        match self {
            Shape::NoRules => json!({ "name": name, "enabled": true, "strategies": [] }),
            Shape::OneConstraint => json!({
                "name": name,
                "enabled": true,
                "strategies": [{
                    "name": "default",
                    "constraints": [
                        { "contextName": "userId", "operator": "IN", "values": ["7"] }
                    ]
                }]
            }),
            Shape::TwoConstraints => json!({
                "name": name,
                "enabled": true,
                "strategies": [{
                    "name": "default",
                    "constraints": [
                        { "contextName": "userId", "operator": "IN", "values": ["3", "7", "11", "42", "101", "256"] },
                        { "contextName": "environment", "operator": "IN", "values": ["production"] }
                    ]
                }]
            }),
            Shape::Rollout50 => json!({
                "name": name,
                "enabled": true,
                "strategies": [{
                    "name": "flexibleRollout",
                    "parameters": { "rollout": "50", "stickiness": "userId", "groupId": name }
                }]
            }),
            Shape::Variants => json!({
                "name": name,
                "enabled": true,
                "strategies": [{ "name": "default" }],
                "variants": [
                    { "name": "control", "weight": 500, "weightType": "variable", "stickiness": "default",
                      "payload": { "type": "string", "value": "the current checkout" } },
                    { "name": "one-page", "weight": 300, "weightType": "variable", "stickiness": "default",
                      "payload": { "type": "string", "value": "checkout on a single page" } },
                    { "name": "express", "weight": 200, "weightType": "variable", "stickiness": "default",
                      "payload": { "type": "string", "value": "express checkout with saved cards" } }
                ]
            }),
        }
    }
}

/// Both engines, loaded from one Unleash document.
struct Engines {
    keel: Snapshot,
    yggdrasil: EngineState,
}

impl Engines {
    fn load(features: Vec<Value>) -> Self {
        let document = json!({ "version": 2, "features": features, "segments": [] });

        let parsed = unleash::parse(&document).unwrap();
        let import = unleash::convert(&parsed, now());
        assert!(import.warnings().is_empty(), "the import lost something: {:?}", import.warnings());
        let segments: BTreeMap<String, Segment> = import.segments.into_iter().map(|s| (s.name.clone(), s)).collect();
        let keel = Snapshot::build(import.flags, &segments);

        let yggdrasil = EngineState::initial_state(now());
        let warnings = yggdrasil.take_state(UpdateMessage::FullResponse(serde_json::from_value(document).unwrap()));
        assert!(warnings.is_none(), "yggdrasil warned: {warnings:?}");
        Self { keel, yggdrasil }
    }

    /// Both engines give the same value and variant for `key` in this context; returns (value, variant name).
    fn agree(&self, key: &str, context: &Value) -> (bool, String) {
        let keel_context = unleash::context(context);
        let ygg_context: unleash_yggdrasil::Context = serde_json::from_value(context.clone()).unwrap();

        let keel = self.keel.evaluate(key, &keel_context, now());
        assert_eq!(keel.error, None, "{key}: Keel answered with an error");
        let resolved = self.yggdrasil.resolve(key, &ygg_context, &None).expect("yggdrasil knows the flag");
        let enabled = self.yggdrasil.is_enabled(key, &ygg_context, &None);
        let variant = self.yggdrasil.get_variant(key, &ygg_context, &None);

        assert_eq!(keel.value, enabled, "{key} for {context}: value differs (is_enabled)");
        assert_eq!(self.keel.is_enabled(key, &keel_context, now()), enabled, "{key}: Keel's is_enabled differs");
        assert_eq!(keel.value, resolved.enabled, "{key} for {context}: value differs (resolve)");
        assert_eq!(keel.variant_name(), variant.name, "{key} for {context}: variant differs (get_variant)");
        assert_eq!(keel.variant_name(), resolved.variant.name, "{key} for {context}: variant differs (resolve)");
        (keel.value, keel.variant_name().to_string())
    }
}

/// Both engines agree for CHECKED_USERS user ids, and the answers are the spread the scenario intends.
fn check_scenario(shape: Shape, engines: &Engines, key: &str) {
    let mut on = 0;
    let mut variants: BTreeMap<String, usize> = BTreeMap::new();
    for user in 0..CHECKED_USERS {
        let (value, variant) = engines.agree(key, &unleash_context(&user.to_string()));
        on += usize::from(value);
        *variants.entry(variant).or_default() += 1;
    }
    match shape {
        Shape::NoRules | Shape::Variants => assert_eq!(on, CHECKED_USERS, "{key}"),
        Shape::OneConstraint => assert_eq!(on, 1, "{key}"),
        Shape::TwoConstraints => assert_eq!(on, 6, "{key}"),
        Shape::Rollout50 => assert!((200..=300).contains(&on), "{key}: {on} of {CHECKED_USERS} in a 50% rollout"),
    }
    if let Shape::Variants = shape {
        assert_eq!(variants.len(), 3, "{key}: every variant is chosen for someone: {variants:?}");
    }
    // The measured context is one the flag is on for.
    assert!(engines.agree(key, &unleash_context("7")).0, "{key} is off for the measured context");
}

fn scenarios(c: &mut Criterion) {
    let context = unleash_context("7");
    let keel_context = unleash::context(&context);
    let ygg_context: unleash_yggdrasil::Context = serde_json::from_value(context.clone()).unwrap();
    let now = now();

    for shape in SHAPES {
        let key = format!("checkout-{}", shape.name());
        let engines = Engines::load(vec![shape.feature(&key)]);
        check_scenario(shape, &engines, &key);
        let Engines { keel, yggdrasil } = &engines;

        let mut group = c.benchmark_group(format!("flags/{}", shape.name()));
        group.bench_function("keel", |b| {
            b.iter(|| black_box(keel.evaluate(black_box(&key), black_box(&keel_context), black_box(now))))
        });
        group.bench_function("keel_is_enabled", |b| {
            b.iter(|| black_box(keel.is_enabled(black_box(&key), black_box(&keel_context), black_box(now))))
        });
        group.bench_function("yggdrasil_resolve", |b| {
            b.iter(|| black_box(yggdrasil.resolve(black_box(&key), black_box(&ygg_context), &None)))
        });
        group.bench_function("yggdrasil_is_enabled", |b| {
            b.iter(|| black_box(yggdrasil.is_enabled(black_box(&key), black_box(&ygg_context), &None)))
        });
        if let Shape::Variants = shape {
            group.bench_function("yggdrasil_get_variant", |b| {
                b.iter(|| black_box(yggdrasil.get_variant(black_box(&key), black_box(&ygg_context), &None)))
            });
        }
        group.finish();
    }
}

/// 100 flags, 20 of each shape, evaluated for one context.
fn bulk(c: &mut Criterion) {
    let context = unleash_context("7");
    let keel_context = unleash::context(&context);
    let ygg_context: unleash_yggdrasil::Context = serde_json::from_value(context.clone()).unwrap();
    let now = now();

    let keys: Vec<String> =
        SHAPES.iter().flat_map(|shape| (0..20).map(move |i| format!("{}-{i:02}", shape.name()))).collect();
    let features = SHAPES
        .iter()
        .flat_map(|shape| (0..20).map(move |i| shape.feature(&format!("{}-{i:02}", shape.name()))))
        .collect();
    let engines = Engines::load(features);
    assert_eq!(engines.keel.len(), 100);
    let all = engines.yggdrasil.resolve_all(&ygg_context, &None).unwrap();
    assert_eq!(all.len(), 100);
    for key in &keys {
        let (value, variant) = engines.agree(key, &context);
        assert_eq!((value, variant.as_str()), (all[key].enabled, all[key].variant.name.as_str()), "{key}");
    }
    let Engines { keel, yggdrasil } = &engines;

    let mut group = c.benchmark_group("flags/bulk100");
    group.bench_function("keel", |b| {
        b.iter(|| {
            let context = black_box(&keel_context);
            let mut on = 0u32;
            for key in &keys {
                let evaluation = keel.evaluate(black_box(key), context, now);
                on += u32::from(black_box(&evaluation).value);
            }
            on
        })
    });
    group.bench_function("yggdrasil_resolve_all", |b| {
        b.iter(|| black_box(yggdrasil.resolve_all(black_box(&ygg_context), &None)))
    });
    group.bench_function("yggdrasil_is_enabled_each", |b| {
        b.iter(|| {
            let context = black_box(&ygg_context);
            keys.iter().filter(|key| yggdrasil.is_enabled(black_box(key), context, &None)).count()
        })
    });
    group.finish();
}

/// Segments the 1,000 flags reference.
fn segments() -> BTreeMap<String, Segment> {
    let segment = |name: &str, field: &str, values: Vec<String>| Segment {
        name: name.into(),
        description: format!("customers by {field}"),
        constraints: vec![constraint(field, Operator::In, values)],
    };
    [
        segment("beta-customers", "organizationId", (0..40).map(|i| format!("org-{i:04}")).collect()),
        segment("eu-region", "country", ["DE", "FR", "NL", "IE", "ES", "IT", "SE", "PL"].map(String::from).to_vec()),
        segment("enterprise", "plan", vec!["enterprise".into()]),
    ]
    .into_iter()
    .map(|s| (s.name.clone(), s))
    .collect()
}

fn constraint(field: &str, operator: Operator, values: Vec<String>) -> Constraint {
    Constraint { field: field.into(), operator, values, inverted: false, case_insensitive: false }
}

fn rule(id: &str, constraints: Vec<Constraint>) -> Rule {
    Rule {
        id: id.into(),
        constraints,
        segments: Vec::new(),
        rollout: None,
        variants: Vec::new(),
        starts_at: None,
        ends_at: None,
        disabled: false,
    }
}

fn rollout(percentage: f64, stickiness: &str) -> Option<Rollout> {
    Some(Rollout { percentage, stickiness: Stickiness::from(stickiness.to_string()), group_id: None })
}

fn variants(names: &[&str]) -> Vec<Variant> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| Variant {
            name: (*name).into(),
            weight: [500, 300, 200, 100][i % 4],
            payload: Some(Payload { kind: "json".into(), value: format!(r#"{{"layout":"{name}","version":{i}}}"#) }),
            overrides: Vec::new(),
        })
        .collect()
}

/// 1,000 flags shaped like a real project's: kill switches and plain on/off flags, rules of 1 to 3 constraints
/// (lists, a regex, numbers, semantic versions), segment references, percentage rollouts, variants with
/// payloads, and a few per-organization overrides with allow and block lists.
fn thousand_flags() -> Vec<Flag> {
    let now = now();
    (0..1000)
        .map(|i| {
            let mut flag = Flag::new(format!("team-{}.feature-{i:04}", i % 12));
            flag.description = format!("Feature {i}: rolled out by team {} during the Q{} release", i % 12, i % 4 + 1);
            flag.version = 1 + (i as u64 % 17);
            flag.updated_by = format!("user-{}", i % 30);
            flag.updated_at = now - Duration::days(i as i64 % 90);
            flag.lifecycle = Lifecycle {
                kind: [FlagType::Release, FlagType::Experiment, FlagType::Operational, FlagType::Permission][i % 4],
                stale_after: Some(now + Duration::days(30 + i as i64 % 60)),
                permanent: i % 4 == 2,
            };
            if i % 7 == 0 {
                flag.environments = vec!["production".into(), "staging".into()];
            }
            match i % 10 {
                0 => flag.default_value = true,
                1 => flag.enabled = i % 20 != 1,
                2 | 3 => {
                    let users = (0..24).map(|u| format!("user-{:05}", i * 31 + u)).collect();
                    flag.rules = vec![rule("internal-users", vec![constraint("userId", Operator::In, users)])];
                }
                4 => {
                    let mut email = constraint(
                        "email",
                        Operator::Regex,
                        // A pattern of its own per flag: no two regexes are the same, so none is compiled for less.
                        vec![format!(r"^[a-z0-9._%+-]+@(example|acme|team-{i})\.(com|io)$")],
                    );
                    email.case_insensitive = true;
                    flag.rules = vec![rule(
                        "staff-on-paid-plans",
                        vec![email, constraint("plan", Operator::In, vec!["pro".into(), "enterprise".into()])],
                    )];
                }
                5 => {
                    flag.rules = vec![
                        rule(
                            "new-clients",
                            vec![
                                constraint("appVersion", Operator::SemverGte, vec![format!("2.{}.0", i % 9)]),
                                constraint("environment", Operator::In, vec!["production".into()]),
                                constraint("seats", Operator::NumGt, vec![format!("{}", 10 + i % 50)]),
                            ],
                        ),
                        Rule { rollout: rollout(10.0, "organizationId"), ..rule("canary", Vec::new()) },
                    ];
                }
                6 => {
                    flag.rules = vec![Rule {
                        rollout: rollout(f64::from((i % 20) as u32 * 5), "organizationId"),
                        ..rule("gradual", Vec::new())
                    }];
                }
                7 => {
                    flag.variants = variants(&["control", "treatment-a", "treatment-b"]);
                    flag.variant_stickiness = Stickiness::UnleashDefault;
                    flag.rules = vec![Rule { rollout: rollout(50.0, "default"), ..rule("experiment", Vec::new()) }];
                }
                8 => {
                    flag.rules = vec![
                        Rule { segments: vec!["beta-customers".into()], ..rule("beta", Vec::new()) },
                        Rule {
                            segments: vec!["eu-region".into(), "enterprise".into()],
                            rollout: rollout(25.0, "organizationId"),
                            ..rule("eu-enterprise", Vec::new())
                        },
                    ];
                }
                _ => {
                    flag.variants = variants(&["basic", "advanced"]);
                    flag.allow_orgs = (0..5).map(|o| format!("org-{:04}", i + o)).collect();
                    flag.block_orgs = vec![format!("org-{:04}", i + 100)];
                    flag.target_users = vec![format!("user-{i:05}")];
                    flag.overrides = vec![
                        Override {
                            org_id: format!("org-{:04}", i + 200),
                            action: OverrideAction::ForcedOn,
                            reason: "contractual early access".into(),
                            starts_at: None,
                            expires_at: Some(now + Duration::days(14)),
                            created_by: "support".into(),
                        },
                        Override {
                            org_id: format!("org-{:04}", i + 201),
                            action: OverrideAction::Variant { variant: "advanced".into() },
                            reason: "pilot of the advanced variant".into(),
                            starts_at: Some(now - Duration::days(1)),
                            expires_at: None,
                            created_by: "support".into(),
                        },
                    ];
                    flag.rules = vec![Rule {
                        constraints: vec![constraint("plan", Operator::NotIn, vec!["free".into()])],
                        rollout: rollout(75.0, "organizationId"),
                        ..rule("paid", Vec::new())
                    }];
                }
            }
            flag
        })
        .collect()
}

fn snapshot_load(c: &mut Criterion) {
    let flags = thousand_flags();
    let segments = segments();
    // As the store keeps them (`Flag::stored_document`).
    let documents: Vec<Value> = flags.iter().map(|f| f.stored_document().unwrap()).collect();
    let stored = serde_json::to_vec(&documents).unwrap();
    eprintln!("flags/snapshot1000: {} flags, {} bytes of stored JSON", flags.len(), stored.len());

    // Every flag compiles, and answers without an error for a context that exercises every rule.
    let snapshot = Snapshot::build(serde_json::from_slice::<Vec<Flag>>(&stored).unwrap(), &segments);
    assert_eq!(snapshot.len(), 1000);
    let mut context = unleash::context(&unleash_context("user-00062"));
    context.organization_id = Some("org-0010".into());
    for (name, value) in
        [("email", "Ada@Acme.io"), ("plan", "enterprise"), ("appVersion", "2.7.1"), ("seats", "40"), ("country", "DE")]
    {
        context.attributes.insert(name.into(), value.into());
    }
    let mut on = 0;
    for key in snapshot.keys() {
        let evaluation = snapshot.evaluate(key, &context, now());
        assert_eq!(evaluation.error, None, "{key}");
        on += usize::from(evaluation.value);
    }
    assert!((100..900).contains(&on), "{on} of 1000 flags on: the mix is not exercising its rules");
    drop(snapshot);

    let mut group = c.benchmark_group("flags/snapshot1000");
    group.sample_size(20);
    group.bench_function("parse_and_build", |b| {
        b.iter_with_large_drop(|| {
            let flags: Vec<Flag> = serde_json::from_slice(black_box(&stored)).unwrap();
            Snapshot::build(flags, &segments)
        })
    });
    group.bench_function("build", |b| {
        b.iter_batched(|| flags.clone(), |flags| Snapshot::build(flags, &segments), BatchSize::LargeInput)
    });

    // A refresh after one flag changed: the items as the store lists them (key, item version, document), the
    // previous snapshot built from the same items, one flag's version and document changed.
    let documents: Vec<(String, u64, Value)> =
        flags.iter().zip(documents).map(|(f, document)| (f.key.clone(), f.version, document)).collect();
    fn listed(documents: &[(String, u64, Value)]) -> Vec<StoredFlag<'_>> {
        documents.iter().map(|(key, version, document)| StoredFlag { key, version: *version, document }).collect()
    }
    let (previous, first) = Snapshot::default().refresh(listed(&documents), segments.clone());
    assert_eq!((first.reused, first.compiled), (0, 1000));
    // The store's full load: every item's document (as the table port hands it over) decoded and compiled.
    let all = listed(&documents);
    group.bench_function("load_from_items", |b| {
        b.iter_with_large_drop(|| Snapshot::default().refresh(black_box(all.iter().copied()), segments.clone()))
    });
    let mut changed = documents.clone();
    let (_, version, document) = &mut changed[500];
    *version += 1;
    document["description"] = json!("changed once");
    let (_, counts) = previous.refresh(listed(&changed), segments.clone());
    assert_eq!((counts.reused, counts.compiled), (999, 1));
    let items = listed(&changed);
    group.bench_function("refresh_one_change", |b| {
        b.iter_with_large_drop(|| previous.refresh(black_box(items.iter().copied()), segments.clone()))
    });
    group.finish();
}

criterion_group!(benches, scenarios, bulk, snapshot_load);
criterion_main!(benches);
