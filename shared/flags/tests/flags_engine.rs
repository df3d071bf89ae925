//! Behaviour of the feature-flag engine (`keel_flags`) as its contract states it: the evaluation order, schedules
//! and expiry, failing closed, ERROR answers, tenant isolation, rollouts, variants, prerequisites, constraints,
//! `validate_flag`, `explain`, and the warnings of the Unleash import. Every instant is explicit.

// The helpers below are test code too: they may unwrap and panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use keel_flags::{
    Constraint, Context, DefaultVariant, ErrorCode, Evaluation, Flag, Invalid, MAX_LIST, MAX_VALUES, Operator,
    Override, OverrideAction, Payload, Prerequisite, Reason, Rollout, Rule, Segment, Snapshot, Stickiness, ValueType,
    Variant, VariantOverride, hash, payload_value, unleash, validate_flag,
};
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

const VERSION: u64 = 7;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

fn flag(key: &str) -> Flag {
    let mut flag = Flag::new(key);
    flag.version = VERSION;
    flag
}

fn org(id: &str) -> Context {
    Context { organization_id: Some(id.into()), ..Context::default() }
}

fn org_user(org_id: &str, user: &str) -> Context {
    Context { user_id: Some(user.into()), ..org(org_id) }
}

fn with_attr(mut context: Context, name: &str, value: &str) -> Context {
    context.attributes.insert(name.into(), value.into());
    context
}

fn constraint(field: &str, operator: Operator, values: &[&str]) -> Constraint {
    Constraint {
        field: field.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
        inverted: false,
        case_insensitive: false,
    }
}

fn inverted(mut c: Constraint) -> Constraint {
    c.inverted = true;
    c
}

fn case_insensitive(mut c: Constraint) -> Constraint {
    c.case_insensitive = true;
    c
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

fn rollout_rule(id: &str, percentage: f64) -> Rule {
    Rule { rollout: Some(rollout(percentage)), ..rule(id, Vec::new()) }
}

fn rollout(percentage: f64) -> Rollout {
    Rollout { percentage, stickiness: Stickiness::default(), group_id: None }
}

fn variant(name: &str, weight: u32) -> Variant {
    Variant { name: name.into(), weight, payload: None, overrides: Vec::new() }
}

fn override_(org_id: &str, action: OverrideAction, reason: &str) -> Override {
    Override {
        org_id: org_id.into(),
        action,
        reason: reason.into(),
        starts_at: None,
        expires_at: None,
        created_by: "ops@example.com".into(),
    }
}

fn prerequisite(key: &str, enabled: bool, variants: &[&str]) -> Prerequisite {
    Prerequisite { flag: key.into(), enabled, variants: variants.iter().map(|v| v.to_string()).collect() }
}

fn snapshot(flags: Vec<Flag>) -> Snapshot {
    Snapshot::build(flags, &BTreeMap::new())
}

fn segments(list: Vec<Segment>) -> BTreeMap<String, Segment> {
    list.into_iter().map(|s| (s.name.clone(), s)).collect()
}

fn by_key(list: Vec<Flag>) -> BTreeMap<String, Flag> {
    list.into_iter().map(|f| (f.key.clone(), f)).collect()
}

/// Asserts every part of an answer but the variant, and the OpenFeature reason string.
#[track_caller]
fn expect(e: &Evaluation<'_>, value: bool, reason: Reason, rule_id: Option<&str>, open_feature: &str) {
    assert_eq!(e.value, value, "value of {e:?}");
    assert_eq!(e.reason, reason, "reason of {e:?}");
    assert_eq!(e.rule_id, rule_id, "rule id of {e:?}");
    assert_eq!(e.version, VERSION, "version of {e:?}");
    assert_eq!(e.reason.open_feature(), open_feature, "OpenFeature reason of {e:?}");
    if reason != Reason::Error && reason != Reason::FlagNotFound {
        assert_eq!(e.error, None, "error of {e:?}");
    }
}

/// The pointers of every problem `validate_flag` reports, or an empty list when the flag is valid.
fn pointers(flag: &Flag, flags: &BTreeMap<String, Flag>, segments: &BTreeMap<String, Segment>) -> Vec<String> {
    match validate_flag(flag, flags, segments) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| e.pointer).collect(),
    }
}

/// Asserts that `flag` (alone) is rejected, exactly at `pointer`, and returns the problem there.
#[track_caller]
fn rejected_at(flag: &Flag, pointer: &str) -> Invalid {
    rejected_among(flag, &BTreeMap::new(), &BTreeMap::new(), pointer)
}

#[track_caller]
fn rejected_among(
    flag: &Flag,
    flags: &BTreeMap<String, Flag>,
    segments: &BTreeMap<String, Segment>,
    pointer: &str,
) -> Invalid {
    let errors = validate_flag(flag, flags, segments).expect_err("the flag must be rejected");
    assert!(
        errors.iter().all(|e| e.pointer == pointer),
        "expected every problem at {pointer}, got {:?}",
        errors.iter().map(|e| (&e.pointer, &e.message)).collect::<Vec<_>>()
    );
    errors.into_iter().next().unwrap()
}

#[track_caller]
fn assert_valid(flag: &Flag) {
    assert_eq!(pointers(flag, &BTreeMap::new(), &BTreeMap::new()), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Evaluation order: for each adjacent pair, both would decide and the earlier one wins.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn order_unknown_flag_fails_closed_before_anything_else() {
    let s = snapshot(vec![flag("known")]);
    let e = s.evaluate("unknown", &org("org-a"), now());
    assert_eq!((e.value, e.reason, e.rule_id, e.version), (false, Reason::FlagNotFound, None, 0));
    assert_eq!(e.error.map(|(code, _)| code), Some(ErrorCode::FlagNotFound));
    assert_eq!(e.error.map(|(code, _)| code.as_str()), Some("FLAG_NOT_FOUND"));
    assert_eq!(e.reason.open_feature(), "ERROR");
}

#[test]
fn order_kill_switch_beats_environment() {
    let mut f = flag("f");
    f.enabled = false;
    f.environments = vec!["prod".into()];
    let s = snapshot(vec![f]);
    let e = s.evaluate("f", &Context { environment: Some("dev".into()), ..org("org-a") }, now());
    expect(&e, false, Reason::Killed, None, "DISABLED");
}

#[test]
fn order_kill_switch_beats_override() {
    let mut f = flag("f");
    f.enabled = false;
    f.overrides = vec![override_("org-a", OverrideAction::ForcedOn, "pilot customer")];
    f.default_value = true;
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), false, Reason::Killed, None, "DISABLED");
}

#[test]
fn order_environment_beats_prerequisites() {
    let mut f = flag("f");
    f.environments = vec!["prod".into(), "staging".into()];
    // The prerequisite would fail too: it does not exist.
    f.prerequisites = vec![prerequisite("missing", true, &[])];
    f.default_value = true;
    let s = snapshot(vec![f]);
    let dev = Context { environment: Some("dev".into()), ..org("org-a") };
    expect(&s.evaluate("f", &dev, now()), false, Reason::EnvironmentOff, None, "DISABLED");
    // A context with no environment is not in a targeted environment either.
    expect(&s.evaluate("f", &org("org-a"), now()), false, Reason::EnvironmentOff, None, "DISABLED");
    // In a targeted environment the next stage decides.
    let prod = Context { environment: Some("prod".into()), ..org("org-a") };
    expect(&s.evaluate("f", &prod, now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
}

#[test]
fn order_prerequisites_beat_override() {
    let mut parent = flag("parent");
    parent.default_value = false;
    let mut f = flag("f");
    f.prerequisites = vec![prerequisite("parent", true, &[])];
    f.overrides = vec![override_("org-a", OverrideAction::ForcedOn, "pilot customer")];
    let s = snapshot(vec![parent, f]);
    expect(&s.evaluate("f", &org("org-a"), now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
}

#[test]
fn order_override_beats_block_list() {
    let mut f = flag("f");
    f.block_orgs = vec!["org-a".into()];
    f.overrides = vec![override_("org-a", OverrideAction::ForcedOn, "contract exception")];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::Override, None, "TARGETING_MATCH");
}

#[test]
fn order_forced_off_override_beats_allow_list_and_rules() {
    let mut f = flag("f");
    f.allow_orgs = vec!["org-a".into()];
    f.rules = vec![rule("everyone", Vec::new())];
    f.default_value = true;
    f.overrides = vec![override_("org-a", OverrideAction::ForcedOff, "incident 42")];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), false, Reason::Override, None, "TARGETING_MATCH");
}

#[test]
fn order_block_list_beats_target_user() {
    let mut f = flag("f");
    f.block_orgs = vec!["org-a".into()];
    f.target_users = vec!["u-1".into()];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org_user("org-a", "u-1"), now()), false, Reason::Blocked, None, "TARGETING_MATCH");
    // The same user in another organization is targeted.
    expect(&s.evaluate("f", &org_user("org-b", "u-1"), now()), true, Reason::TargetUser, None, "TARGETING_MATCH");
}

#[test]
fn order_target_user_beats_allow_list() {
    let mut f = flag("f");
    f.target_users = vec!["u-1".into()];
    f.allow_orgs = vec!["org-a".into()];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org_user("org-a", "u-1"), now()), true, Reason::TargetUser, None, "TARGETING_MATCH");
    expect(&s.evaluate("f", &org_user("org-a", "u-2"), now()), true, Reason::AllowList, None, "TARGETING_MATCH");
}

#[test]
fn order_allow_list_beats_rules() {
    let mut f = flag("f");
    f.allow_orgs = vec!["org-a".into()];
    f.rules = vec![rule("everyone", Vec::new())];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::AllowList, None, "TARGETING_MATCH");
    expect(&s.evaluate("f", &org("org-b"), now()), true, Reason::Rule, Some("everyone"), "TARGETING_MATCH");
}

#[test]
fn order_first_matching_rule_beats_later_ones() {
    let mut f = flag("f");
    f.rules = vec![
        rule("enterprise", vec![constraint("plan", Operator::In, &["enterprise"])]),
        rule("first", vec![constraint("organizationId", Operator::StrStartsWith, &["org-"])]),
        rule("second", Vec::new()),
    ];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::Rule, Some("first"), "TARGETING_MATCH");
    let enterprise = with_attr(org("org-a"), "plan", "enterprise");
    expect(&s.evaluate("f", &enterprise, now()), true, Reason::Rule, Some("enterprise"), "TARGETING_MATCH");
    expect(&s.evaluate("f", &org("acme"), now()), true, Reason::Rule, Some("second"), "TARGETING_MATCH");
}

#[test]
fn order_rules_beat_default() {
    let mut f = flag("f");
    f.default_value = true;
    f.rules = vec![rule("internal", vec![constraint("organizationId", Operator::In, &["org-a"])])];
    let mut g = flag("g");
    g.default_value = false;
    g.rules = vec![rule("internal", vec![constraint("organizationId", Operator::In, &["org-a"])])];
    let s = snapshot(vec![f, g]);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::Rule, Some("internal"), "TARGETING_MATCH");
    expect(&s.evaluate("g", &org("org-a"), now()), true, Reason::Rule, Some("internal"), "TARGETING_MATCH");
    // When no rule matches, the default decides.
    expect(&s.evaluate("f", &org("org-b"), now()), true, Reason::Default, None, "DEFAULT");
    expect(&s.evaluate("g", &org("org-b"), now()), false, Reason::Default, None, "DEFAULT");
}

#[test]
fn partial_rollout_rule_answers_split_and_full_rollout_targeting_match() {
    let mut f = flag("f");
    f.rules = vec![rollout_rule("half", 50.0), rollout_rule("all", 100.0)];
    let s = snapshot(vec![f]);
    let (mut split, mut full) = (0, 0);
    for i in 0..200 {
        let e = s.evaluate("f", &org(&format!("org-{i}")), now());
        match e.rule_id {
            Some("half") => {
                expect(&e, true, Reason::Rollout, Some("half"), "SPLIT");
                split += 1;
            }
            _ => {
                expect(&e, true, Reason::Rule, Some("all"), "TARGETING_MATCH");
                full += 1;
            }
        }
    }
    assert!(split > 0 && full > 0, "{split} split, {full} full");
}

#[test]
fn flag_without_targeting_answers_static() {
    let mut on = flag("on");
    on.default_value = true;
    let off = flag("off");
    let s = snapshot(vec![on, off]);
    expect(&s.evaluate("on", &org("org-a"), now()), true, Reason::Static, None, "STATIC");
    expect(&s.evaluate("off", &Context::default(), now()), false, Reason::Static, None, "STATIC");
}

#[test]
fn weighted_variants_without_targeting_answer_split() {
    let mut split = flag("split");
    split.default_value = true;
    split.variants = vec![variant("a", 1), variant("b", 1)];
    let mut single = flag("single");
    single.default_value = true;
    single.variants = vec![variant("a", 1), variant("never", 0)];
    let mut split_off = flag("split-off");
    split_off.variants = vec![variant("a", 1), variant("b", 1)];
    let s = snapshot(vec![split, single, split_off]);
    let names: BTreeSet<&str> =
        (0..50).map(|i| s.evaluate("split", &org(&format!("org-{i}")), now()).served_name()).collect();
    assert_eq!(names, BTreeSet::from(["a", "b"]), "organizations get different variants");
    expect(&s.evaluate("split", &org("org-a"), now()), true, Reason::Rollout, None, "SPLIT");
    // One variant with weight: everyone gets the same answer.
    expect(&s.evaluate("single", &org("org-a"), now()), true, Reason::Static, None, "STATIC");
    expect(&s.evaluate("split-off", &org("org-a"), now()), false, Reason::Static, None, "STATIC");
}

#[test]
fn typed_flags_serve_their_default_variant_whenever_none_is_chosen() {
    let payload = |value: &str| Some(Payload { kind: "number".into(), value: value.into() });
    let mut limit = flag("limit");
    limit.value_type = ValueType::Number;
    limit.default_value = true;
    limit.default_variant = Some(DefaultVariant { name: "none".into(), payload: payload("0") });
    limit.variants = vec![Variant { payload: payload("25"), ..variant("high", 1) }];
    limit.block_orgs = vec!["org-blocked".into()];
    // A rule deciding without variants of its own falls back to the flag's.
    limit.rules = vec![rule("pro", vec![constraint("plan", Operator::In, &["pro"])])];
    let mut killed = limit.clone();
    killed.key = "killed".into();
    killed.enabled = false;
    let s = snapshot(vec![limit, killed]);
    let on = s.evaluate("limit", &with_attr(org("org-a"), "plan", "pro"), now());
    assert_eq!((on.typed_value(), on.served_name(), on.value), (Some(json!(25)), "high", true));
    for (key, who) in [("limit", "org-blocked"), ("killed", "org-a")] {
        let off = s.evaluate(key, &org(who), now());
        assert_eq!((off.typed_value(), off.served_name(), off.value), (Some(json!(0)), "none", false), "{key}");
        assert!(off.variant.is_none(), "no variant was chosen: Unleash's `disabled`");
    }
    // A boolean flag without a default variant names its answers on and off.
    let mut plain = flag("plain");
    plain.block_orgs = vec!["org-blocked".into()];
    plain.default_value = true;
    let s = snapshot(vec![plain]);
    assert_eq!(s.evaluate("plain", &org("org-a"), now()).served_name(), keel_flags::ON);
    assert_eq!(s.evaluate("plain", &org("org-blocked"), now()).served_name(), keel_flags::OFF);
    assert_eq!(s.evaluate("plain", &org("org-a"), now()).typed_value(), Some(json!(true)));
}

#[test]
fn payloads_become_values_as_they_are_written() {
    let p = |kind: &str, value: &str| Payload { kind: kind.into(), value: value.into() };
    assert_eq!(payload_value(&p("string", "x")), Some(json!("x")));
    assert_eq!(payload_value(&p("csv", "a,b")), Some(json!("a,b")));
    assert_eq!(payload_value(&p("number", " 42 ")), Some(json!(42)));
    // An SDK asking for a float refuses `2`, one asking for an integer refuses `2.0`: the author's form is kept.
    assert_eq!(payload_value(&p("number", "2.0")), Some(json!(2.0)));
    assert_eq!(payload_value(&p("number", "1e3")), Some(json!(1000.0)));
    assert_eq!(payload_value(&p("number", "2.5")), Some(json!(2.5)));
    assert_eq!(payload_value(&p("number", "NaN")), None);
    assert_eq!(payload_value(&p("number", "inf")), None);
    assert_eq!(payload_value(&p("json", r#"{"a":[1]}"#)), Some(json!({"a": [1]})));
    assert_eq!(payload_value(&p("xml", "<a/>")), None);
}

#[test]
fn is_enabled_decides_exactly_as_evaluate() {
    let mut flags = Vec::new();
    for (i, percentage) in [0.0, 12.5, 50.0, 100.0].into_iter().enumerate() {
        let mut f = flag(&format!("f{i}"));
        f.variants = vec![variant("a", 3), variant("b", 1)];
        f.rules = vec![rollout_rule("r", percentage)];
        f.block_orgs = vec!["org-3".into()];
        f.overrides = vec![override_("org-4", OverrideAction::Variant { variant: "b".into() }, "pilot")];
        flags.push(f);
    }
    let s = snapshot(flags);
    for key in ["f0", "f1", "f2", "f3", "missing"] {
        for i in 0..200 {
            let context = org(&format!("org-{i}"));
            assert_eq!(s.is_enabled(key, &context, now()), s.evaluate(key, &context, now()).value, "{key} org-{i}");
        }
    }
}

#[test]
fn every_reason_is_reached_and_maps_onto_open_feature() {
    let mut killed = flag("killed");
    killed.enabled = false;
    let mut env = flag("env");
    env.environments = vec!["prod".into()];
    let mut prereq = flag("prereq");
    prereq.prerequisites = vec![prerequisite("missing", true, &[])];
    let mut targeted = flag("targeted");
    targeted.overrides = vec![override_("org-o", OverrideAction::ForcedOn, "pilot")];
    targeted.block_orgs = vec!["org-b".into()];
    targeted.target_users = vec!["u-t".into()];
    targeted.allow_orgs = vec!["org-a".into()];
    targeted.rules = vec![rule("rule", vec![constraint("organizationId", Operator::In, &["org-r"])])];
    let mut broken = flag("broken");
    broken.rules = vec![Rule { segments: vec!["deleted".into()], ..rule("broken", Vec::new()) }];
    let mut split = flag("split");
    split.rules = vec![rollout_rule("split", 50.0)];
    let mut bad = flag("bad");
    bad.rules = vec![rollout_rule("r", 150.0)];
    let plain = flag("plain");
    let s = snapshot(vec![killed, env, prereq, targeted, broken, split, bad, plain]);

    let in_rollout = (0..1000)
        .map(|i| format!("org-{i}"))
        .find(|o| s.evaluate("split", &org(o), now()).reason == Reason::Rollout)
        .unwrap();
    let cases: Vec<(&str, Context, Reason, &str)> = vec![
        ("nope", org("org-a"), Reason::FlagNotFound, "ERROR"),
        ("bad", org("org-a"), Reason::Error, "ERROR"),
        ("broken", org("org-a"), Reason::Error, "ERROR"),
        ("killed", org("org-a"), Reason::Killed, "DISABLED"),
        ("env", org("org-a"), Reason::EnvironmentOff, "DISABLED"),
        ("prereq", org("org-a"), Reason::PrerequisiteFailed, "DISABLED"),
        ("targeted", org("org-o"), Reason::Override, "TARGETING_MATCH"),
        ("targeted", org_user("org-b", "u-t"), Reason::Blocked, "TARGETING_MATCH"),
        ("targeted", org_user("org-x", "u-t"), Reason::TargetUser, "TARGETING_MATCH"),
        ("targeted", org("org-a"), Reason::AllowList, "TARGETING_MATCH"),
        ("targeted", org("org-r"), Reason::Rule, "TARGETING_MATCH"),
        ("split", org(&in_rollout), Reason::Rollout, "SPLIT"),
        ("targeted", org("org-x"), Reason::Default, "DEFAULT"),
        ("plain", org("org-a"), Reason::Static, "STATIC"),
    ];
    let mut reached = BTreeSet::new();
    for (key, context, reason, open_feature) in &cases {
        let e = s.evaluate(key, context, now());
        assert_eq!(e.reason, *reason, "{key} for {context:?}");
        assert_eq!(e.reason.open_feature(), *open_feature);
        reached.insert(e.reason.as_str());
    }
    let all = [
        "flag_not_found",
        "error",
        "killed",
        "environment_off",
        "prerequisite_failed",
        "override",
        "blocked",
        "target_user",
        "allow_list",
        "rule",
        "rollout",
        "default",
        "static",
    ];
    assert_eq!(reached, all.into_iter().collect::<BTreeSet<_>>());
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Schedules and expiry.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn scheduled_rule_is_in_force_exactly_on_its_half_open_window() {
    let start = at(2026, 7, 1, 0);
    let end = at(2026, 7, 8, 0);
    let mut f = flag("launch");
    f.rules = vec![Rule { starts_at: Some(start), ends_at: Some(end), ..rule("launch-week", Vec::new()) }];
    let s = snapshot(vec![f]);
    let answer = |t: DateTime<Utc>| s.evaluate("launch", &org("org-a"), t);
    let ns = Duration::nanoseconds(1);
    let sec = Duration::seconds(1);
    for t in [start - sec, start - ns, end, end + ns, end + sec] {
        expect(&answer(t), false, Reason::Default, None, "DEFAULT");
    }
    for t in [start, start + ns, start + sec, end - sec, end - ns] {
        expect(&answer(t), true, Reason::Rule, Some("launch-week"), "TARGETING_MATCH");
    }
}

#[test]
fn rule_with_only_a_start_or_only_an_end_is_open_on_the_other_side() {
    let t = at(2026, 7, 1, 0);
    let mut f = flag("f");
    f.rules = vec![
        Rule { starts_at: Some(t), ..rule("from", vec![constraint("organizationId", Operator::In, &["org-a"])]) },
        Rule { ends_at: Some(t), ..rule("until", vec![constraint("organizationId", Operator::In, &["org-b"])]) },
    ];
    let s = snapshot(vec![f]);
    let ns = Duration::nanoseconds(1);
    assert!(!s.evaluate("f", &org("org-a"), t - ns).value);
    assert!(s.evaluate("f", &org("org-a"), t).value);
    assert!(s.evaluate("f", &org("org-a"), t + Duration::days(10_000)).value);
    assert!(s.evaluate("f", &org("org-b"), t - Duration::days(10_000)).value);
    assert!(s.evaluate("f", &org("org-b"), t - ns).value);
    assert!(!s.evaluate("f", &org("org-b"), t).value);
}

#[test]
fn override_stops_applying_at_expires_at_exactly() {
    let expires = at(2026, 6, 30, 0);
    let mut f = flag("f");
    f.overrides = vec![Override {
        expires_at: Some(expires),
        ..override_("org-a", OverrideAction::ForcedOn, "trial until end of June")
    }];
    let s = snapshot(vec![f]);
    let ns = Duration::nanoseconds(1);
    for t in [expires - Duration::seconds(1), expires - ns] {
        expect(&s.evaluate("f", &org("org-a"), t), true, Reason::Override, None, "TARGETING_MATCH");
    }
    for t in [expires, expires + ns, expires + Duration::seconds(1)] {
        expect(&s.evaluate("f", &org("org-a"), t), false, Reason::Default, None, "DEFAULT");
    }
}

#[test]
fn override_whose_start_is_not_reached_does_not_apply() {
    let starts = at(2026, 7, 1, 0);
    let mut f = flag("f");
    f.default_value = true;
    f.overrides = vec![Override {
        starts_at: Some(starts),
        ..override_("org-a", OverrideAction::ForcedOff, "maintenance window")
    }];
    let s = snapshot(vec![f]);
    let ns = Duration::nanoseconds(1);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::Default, None, "DEFAULT");
    expect(&s.evaluate("f", &org("org-a"), starts - ns), true, Reason::Default, None, "DEFAULT");
    expect(&s.evaluate("f", &org("org-a"), starts), false, Reason::Override, None, "TARGETING_MATCH");
    expect(&s.evaluate("f", &org("org-a"), starts + ns), false, Reason::Override, None, "TARGETING_MATCH");
}

#[test]
fn consecutive_overrides_for_one_org_take_turns() {
    let switch = at(2026, 7, 1, 0);
    let mut f = flag("f");
    f.overrides = vec![
        Override { expires_at: Some(switch), ..override_("org-a", OverrideAction::ForcedOff, "until July") },
        Override { starts_at: Some(switch), ..override_("org-a", OverrideAction::ForcedOn, "from July") },
    ];
    f.default_value = true;
    assert_valid(&f);
    let s = snapshot(vec![f]);
    let ns = Duration::nanoseconds(1);
    expect(&s.evaluate("f", &org("org-a"), switch - ns), false, Reason::Override, None, "TARGETING_MATCH");
    expect(&s.evaluate("f", &org("org-a"), switch), true, Reason::Override, None, "TARGETING_MATCH");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Fail closed.
// ---------------------------------------------------------------------------------------------------------------

#[track_caller]
fn assert_not_found(e: &Evaluation<'_>) {
    assert!(!e.value);
    assert_eq!(e.variant, None);
    assert_eq!(e.reason, Reason::FlagNotFound);
    assert_eq!(e.reason.open_feature(), "ERROR");
    assert_eq!(e.rule_id, None);
    assert_eq!(e.version, 0);
    assert_eq!(e.error.map(|(code, _)| code), Some(ErrorCode::FlagNotFound));
}

#[test]
fn unknown_flag_fails_closed() {
    let mut on = flag("on");
    on.default_value = true;
    let s = snapshot(vec![on]);
    assert_not_found(&s.evaluate("On", &org("org-a"), now()));
    assert_not_found(&s.evaluate("", &Context::default(), now()));
    assert!(s.evaluate("on", &org("org-a"), now()).value);
}

#[test]
fn archived_flag_is_left_out_and_not_found() {
    let mut archived = flag("old");
    archived.default_value = true;
    archived.archived = true;
    let s = snapshot(vec![archived, flag("live")]);
    assert_eq!(s.keys(), vec!["live"]);
    assert_not_found(&s.evaluate("old", &org("org-a"), now()));
    let (e, steps) = s.explain("old", &org("org-a"), now());
    assert_not_found(&e);
    assert_eq!(steps.len(), 1);
    assert!(steps[0].decided);
}

#[test]
fn empty_snapshot_fails_closed() {
    for s in [Snapshot::default(), snapshot(Vec::new())] {
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert_not_found(&s.evaluate("anything", &org("org-a"), now()));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 4. ERROR answers.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn rule_with_missing_segment_answers_error_and_earlier_rules_still_decide() {
    let beta = Segment {
        name: "beta".into(),
        description: String::new(),
        constraints: vec![constraint("plan", Operator::In, &["beta"])],
    };
    let mut f = flag("f");
    f.rules = vec![
        rule("internal", vec![constraint("organizationId", Operator::In, &["org-a"])]),
        Rule { segments: vec!["beta".into()], ..rule("beta", Vec::new()) },
        Rule { segments: vec!["deleted".into()], ..rule("broken", Vec::new()) },
        rule("after", Vec::new()),
    ];
    let s = Snapshot::build(vec![f], &segments(vec![beta]));
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::Rule, Some("internal"), "TARGETING_MATCH");
    let beta_org = with_attr(org("org-b"), "plan", "beta");
    expect(&s.evaluate("f", &beta_org, now()), true, Reason::Rule, Some("beta"), "TARGETING_MATCH");

    let e = s.evaluate("f", &org("org-b"), now());
    expect(&e, false, Reason::Error, Some("broken"), "ERROR");
    assert_eq!(e.variant, None);
    let (code, message) = e.error.unwrap();
    assert_eq!(code, ErrorCode::General);
    assert_eq!(code.as_str(), "GENERAL");
    assert!(message.contains("deleted"), "{message}");
}

#[test]
fn broken_rule_out_of_its_window_is_skipped() {
    let mut f = flag("f");
    f.rules = vec![
        Rule { segments: vec!["deleted".into()], ends_at: Some(now()), ..rule("expired", Vec::new()) },
        rule("after", Vec::new()),
    ];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::Rule, Some("after"), "TARGETING_MATCH");
    let e = s.evaluate("f", &org("org-a"), now() - Duration::nanoseconds(1));
    expect(&e, false, Reason::Error, Some("expired"), "ERROR");
}

#[test]
fn flag_that_does_not_compile_answers_parse_error_and_others_keep_working() {
    let mut bad = flag("bad");
    bad.default_value = true;
    bad.rules = vec![rollout_rule("too-much", 150.0)];
    let mut good = flag("good");
    good.rules = vec![rollout_rule("all", 100.0)];
    let s = snapshot(vec![bad, good]);
    assert_eq!(s.keys(), vec!["bad", "good"]);

    let e = s.evaluate("bad", &org("org-a"), now());
    assert!(!e.value);
    assert_eq!(e.variant, None);
    assert_eq!(e.reason, Reason::Error);
    assert_eq!(e.reason.open_feature(), "ERROR");
    assert_eq!(e.rule_id, None);
    // The stored flag's version, so an operator can tell which write broke it.
    assert_eq!(e.version, VERSION);
    let (code, message) = e.error.unwrap();
    assert_eq!(code, ErrorCode::ParseError);
    assert_eq!(code.as_str(), "PARSE_ERROR");
    assert!(message.contains("/rules/0/rollout/percentage"), "{message}");

    expect(&s.evaluate("good", &org("org-a"), now()), true, Reason::Rule, Some("all"), "TARGETING_MATCH");
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Tenant isolation.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn override_for_one_org_never_affects_another() {
    let mut f = flag("f");
    f.variants = vec![variant("blue", 1), variant("green", 1)];
    f.overrides = vec![
        override_("org-a", OverrideAction::ForcedOn, "design partner"),
        override_("org-c", OverrideAction::Variant { variant: "green".into() }, "asked for green"),
    ];
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::Override, None, "TARGETING_MATCH");
    for other in ["org-b", "org-a ", "ORG-A", "org-", "org-aa", ""] {
        let e = s.evaluate("f", &org(other), now());
        expect(&e, false, Reason::Default, None, "DEFAULT");
        assert_eq!(e.variant, None);
    }
    // Neither a user id nor an attribute equal to the org id stands in for the organization.
    let impostor = with_attr(org_user("org-b", "org-a"), "organizationId", "org-a");
    expect(&s.evaluate("f", &impostor, now()), false, Reason::Default, None, "DEFAULT");
    expect(&s.evaluate("f", &Context::default(), now()), false, Reason::Default, None, "DEFAULT");
}

#[test]
fn allow_and_block_lists_are_per_org() {
    let mut f = flag("f");
    f.allow_orgs = vec!["org-a".into()];
    f.block_orgs = vec!["org-b".into()];
    f.default_value = true;
    let s = snapshot(vec![f]);
    expect(&s.evaluate("f", &org("org-a"), now()), true, Reason::AllowList, None, "TARGETING_MATCH");
    expect(&s.evaluate("f", &org("org-b"), now()), false, Reason::Blocked, None, "TARGETING_MATCH");
    expect(&s.evaluate("f", &org("org-c"), now()), true, Reason::Default, None, "DEFAULT");

    let mut g = flag("g");
    g.allow_orgs = vec!["org-a".into()];
    let s = snapshot(vec![g]);
    expect(&s.evaluate("g", &org("org-b"), now()), false, Reason::Default, None, "DEFAULT");
    expect(&s.evaluate("g", &Context::default(), now()), false, Reason::Default, None, "DEFAULT");
}

#[test]
fn explain_for_one_org_does_not_mention_another_orgs_override() {
    let secret = "renewal at risk: CFO escalation";
    let mut f = flag("f");
    f.overrides = vec![override_("org-a", OverrideAction::ForcedOn, secret)];
    let s = snapshot(vec![f]);
    let (e, steps) = s.explain("f", &org("org-a"), now());
    expect(&e, true, Reason::Override, None, "TARGETING_MATCH");
    assert!(steps.iter().any(|step| step.detail.contains(secret)));

    let (e, steps) = s.explain("f", &org("org-b"), now());
    expect(&e, false, Reason::Default, None, "DEFAULT");
    for step in &steps {
        assert!(!step.detail.contains(secret), "{step:?}");
        assert!(!step.detail.contains("org-a"), "{step:?}");
        assert_ne!(step.stage, "override");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Rollouts.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn rollout_sticks_to_the_organization_by_default() {
    let mut f = flag("f");
    f.rules = vec![rollout_rule("half", 50.0)];
    let s = snapshot(vec![f]);
    let (mut ins, mut outs) = (0, 0);
    for i in 0..100 {
        let o = format!("org-{i}");
        let first = s.evaluate("f", &org(&o), now());
        for user in ["u-1", "u-2", "someone-else", ""] {
            let mut context = org_user(&o, user);
            context.session_id = Some(format!("session-{user}"));
            assert_eq!(s.evaluate("f", &context, now()), first, "org {o}, user {user}");
        }
        if first.value { ins += 1 } else { outs += 1 }
    }
    assert!(ins > 20 && outs > 20, "{ins} in, {outs} out");
}

#[test]
fn context_without_organization_is_never_in_a_partial_rollout() {
    let mut f = flag("f");
    f.rules = vec![rollout_rule("almost-all", 99.99)];
    let s = snapshot(vec![f]);
    for i in 0..500 {
        let context = Context {
            user_id: Some(format!("u-{i}")),
            session_id: Some(format!("s-{i}")),
            attributes: [("organization_id".to_string(), format!("org-{i}"))].into(),
            ..Context::default()
        };
        expect(&s.evaluate("f", &context, now()), false, Reason::Default, None, "DEFAULT");
    }
}

#[test]
fn rollout_with_custom_stickiness_hashes_that_field() {
    let mut f = flag("f");
    f.rules = vec![Rule {
        rollout: Some(Rollout {
            percentage: 50.0,
            stickiness: Stickiness::Field("tenantRegion".into()),
            group_id: None,
        }),
        ..rule("by-region", Vec::new())
    }];
    let mut by_user = flag("by-user");
    by_user.rules = vec![Rule {
        rollout: Some(Rollout {
            percentage: 50.0,
            stickiness: Stickiness::Field("userId".into()),
            group_id: Some("shared".into()),
        }),
        ..rule("by-user", Vec::new())
    }];
    let s = snapshot(vec![f, by_user]);
    let mut seen = BTreeSet::new();
    for r in 0..100 {
        let region = format!("region-{r}");
        // The engine's answer is Unleash's bucket of `flagKey:value`.
        let expected = hash::rollout_bucket("f", &region) < 5000;
        for o in ["org-a", "org-b", "org-c"] {
            let e = s.evaluate("f", &with_attr(org(o), "tenantRegion", &region), now());
            assert_eq!(e.value, expected, "{region} in {o}");
        }
        seen.insert(expected);
    }
    assert_eq!(seen.len(), 2, "both sides of the rollout are reached");
    // Without the field, never in, whatever the organization.
    assert!(!s.evaluate("f", &org("org-a"), now()).value);
    // A built-in field as stickiness, with an explicit group id.
    for u in 0..100 {
        let user = format!("u-{u}");
        let expected = hash::rollout_bucket("shared", &user) < 5000;
        assert_eq!(s.evaluate("by-user", &org_user("org-a", &user), now()).value, expected);
        assert_eq!(s.evaluate("by-user", &org_user("org-z", &user), now()).value, expected);
    }
}

#[test]
fn zero_percent_never_includes_and_hundred_always_does() {
    let mut zero = flag("zero");
    zero.rules = vec![rollout_rule("none", 0.0)];
    let mut full = flag("full");
    full.rules = vec![rollout_rule("all", 100.0)];
    let s = snapshot(vec![zero, full]);
    for i in 0..2000 {
        let o = format!("org-{i}");
        expect(&s.evaluate("zero", &org(&o), now()), false, Reason::Default, None, "DEFAULT");
        expect(&s.evaluate("full", &org(&o), now()), true, Reason::Rule, Some("all"), "TARGETING_MATCH");
    }
}

#[test]
fn two_decimal_percentages_bucket_by_hundredths() {
    // An organization in bucket 1234 (of 10,000) is out at 12.34% and in at 12.35%.
    let o = (0..1_000_000).map(|i| format!("org-{i}")).find(|o| hash::rollout_bucket("f", o) == 1234).unwrap();
    let answer = |percentage: f64| {
        let mut f = flag("f");
        f.rules = vec![rollout_rule("r", percentage)];
        snapshot(vec![f]).evaluate("f", &org(&o), now()).value
    };
    assert!(!answer(12.34));
    assert!(answer(12.35));
    assert!(answer(12.36));
}

#[test]
fn rollout_share_is_close_to_the_percentage() {
    let mut f = flag("f");
    f.rules = vec![rollout_rule("quarter", 25.5)];
    let s = snapshot(vec![f]);
    let n = 10_000;
    let ins = (0..n).filter(|i| s.evaluate("f", &org(&format!("org-{i}")), now()).value).count();
    let share = ins as f64 * 100.0 / f64::from(n);
    assert!((24.0..=27.0).contains(&share), "{share}% of organizations at 25.5%");
}

#[test]
fn rules_sharing_a_group_id_bucket_alike() {
    let grouped = |key: &str| {
        let mut f = flag(key);
        f.rules = vec![Rule {
            rollout: Some(Rollout { percentage: 30.0, stickiness: Stickiness::default(), group_id: Some("q3".into()) }),
            ..rule("r", Vec::new())
        }];
        f
    };
    let s = snapshot(vec![grouped("one"), grouped("two")]);
    for i in 0..500 {
        let context = org(&format!("org-{i}"));
        assert_eq!(s.evaluate("one", &context, now()).value, s.evaluate("two", &context, now()).value);
    }
}

proptest! {
    #[test]
    fn raising_a_rule_percentage_never_removes_an_organization(
        orgs in proptest::collection::vec("[a-zA-Z0-9-]{1,24}", 1..20),
        low in 0u32..=10_000,
        raise in 0u32..=10_000,
    ) {
        let high = (low + raise).min(10_000);
        let build = |hundredths: u32| {
            let mut f = flag("f");
            f.rules = vec![rollout_rule("r", f64::from(hundredths) / 100.0)];
            snapshot(vec![f])
        };
        let (before, after) = (build(low), build(high));
        // Both percentages are valid two-decimal values: neither snapshot answers ERROR.
        prop_assert_ne!(before.evaluate("f", &org("x"), now()).reason, Reason::Error);
        prop_assert_ne!(after.evaluate("f", &org("x"), now()).reason, Reason::Error);
        for o in &orgs {
            if before.evaluate("f", &org(o), now()).value {
                prop_assert!(after.evaluate("f", &org(o), now()).value, "{} left at {} -> {}", o, low, high);
            }
        }
    }
}

#[test]
fn raising_by_one_hundredth_never_removes_an_organization() {
    let build = |percentage: f64| {
        let mut f = flag("f");
        f.rules = vec![rollout_rule("r", percentage)];
        snapshot(vec![f])
    };
    let (before, after) = (build(12.34), build(12.35));
    for i in 0..20_000 {
        let context = org(&format!("org-{i}"));
        if before.evaluate("f", &context, now()).value {
            assert!(after.evaluate("f", &context, now()).value, "org-{i}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Variants.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn variant_weights_are_respected_over_many_orgs() {
    let mut f = flag("f");
    f.default_value = true;
    f.variants = vec![variant("a", 100), variant("b", 300), variant("c", 600)];
    let s = snapshot(vec![f]);
    let n = 10_000;
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..n {
        let context = org(&format!("org-{i}"));
        let e = s.evaluate("f", &context, now());
        assert!(e.value);
        *counts.entry(e.variant_name()).or_default() += 1;
        // Sticky: the same organization, another user, gets the same variant.
        let again = s.evaluate("f", &Context { user_id: Some("other".into()), ..context }, now());
        assert_eq!(again.variant_name(), e.variant_name());
    }
    for (name, share) in [("a", 10.0), ("b", 30.0), ("c", 60.0)] {
        let got = f64::from(counts[name]) * 100.0 / f64::from(n);
        assert!((got - share).abs() <= 2.0, "variant {name}: {got}% for weight {share}% ({counts:?})");
    }
}

#[test]
fn variant_override_by_context_field_beats_the_weights() {
    let mut f = flag("f");
    f.default_value = true;
    f.variants = vec![
        Variant {
            overrides: vec![VariantOverride { field: "userId".into(), values: vec!["u-beta".into()] }],
            ..variant("beta", 0)
        },
        Variant {
            overrides: vec![VariantOverride { field: "plan".into(), values: vec!["enterprise".into()] }],
            ..variant("enterprise", 0)
        },
        variant("standard", 1),
    ];
    let s = snapshot(vec![f]);
    assert_eq!(s.evaluate("f", &org_user("org-a", "u-beta"), now()).variant_name(), "beta");
    let enterprise = with_attr(org("org-a"), "plan", "enterprise");
    assert_eq!(s.evaluate("f", &enterprise, now()).variant_name(), "enterprise");
    // The override matches exact values only.
    assert_eq!(s.evaluate("f", &org_user("org-a", "U-BETA"), now()).variant_name(), "standard");
    for i in 0..200 {
        assert_eq!(s.evaluate("f", &org(&format!("org-{i}")), now()).variant_name(), "standard");
    }
}

#[test]
fn rule_variants_beat_flag_variants() {
    let mut f = flag("f");
    f.variants = vec![variant("flag-level", 1)];
    f.allow_orgs = vec!["org-allowed".into()];
    f.rules = vec![
        Rule {
            variants: vec![variant("rule-level", 1)],
            ..rule("internal", vec![constraint("plan", Operator::In, &["x"])])
        },
        rule("plain", vec![constraint("plan", Operator::In, &["y"])]),
    ];
    f.default_value = true;
    let s = snapshot(vec![f]);
    let e = s.evaluate("f", &with_attr(org("org-a"), "plan", "x"), now());
    expect(&e, true, Reason::Rule, Some("internal"), "TARGETING_MATCH");
    assert_eq!(e.variant_name(), "rule-level");
    // A rule without variants of its own uses the flag's; so do the other stages.
    assert_eq!(s.evaluate("f", &with_attr(org("org-a"), "plan", "y"), now()).variant_name(), "flag-level");
    assert_eq!(s.evaluate("f", &org("org-allowed"), now()).variant_name(), "flag-level");
    assert_eq!(s.evaluate("f", &org("org-a"), now()).variant_name(), "flag-level");
}

#[test]
fn override_variant_returns_that_variant() {
    let mut f = flag("f");
    f.variants = vec![variant("blue", 1000), variant("green", 0)];
    f.overrides = vec![
        override_("org-a", OverrideAction::Variant { variant: "green".into() }, "wants green"),
        override_("org-b", OverrideAction::ForcedOn, "pilot"),
    ];
    assert_valid(&f);
    let s = snapshot(vec![f]);
    let e = s.evaluate("f", &org("org-a"), now());
    expect(&e, true, Reason::Override, None, "TARGETING_MATCH");
    assert_eq!(e.variant.map(|v| v.name.as_str()), Some("green"));
    // forced_on picks by weight.
    assert_eq!(s.evaluate("f", &org("org-b"), now()).variant_name(), "blue");
}

#[test]
fn disabled_answer_has_no_variant() {
    let with_variants = |key: &str| {
        let mut f = flag(key);
        f.variants = vec![variant("only", 1)];
        f
    };
    let mut killed = with_variants("killed");
    killed.enabled = false;
    killed.default_value = true;
    let mut env = with_variants("env");
    env.environments = vec!["prod".into()];
    env.default_value = true;
    let mut prereq = with_variants("prereq");
    prereq.prerequisites = vec![prerequisite("missing", true, &[])];
    prereq.default_value = true;
    let mut off = with_variants("off");
    off.overrides = vec![override_("org-a", OverrideAction::ForcedOff, "incident")];
    off.default_value = true;
    let mut blocked = with_variants("blocked");
    blocked.block_orgs = vec!["org-a".into()];
    blocked.default_value = true;
    let default_off = with_variants("default-off");
    let mut broken_rule = with_variants("broken-rule");
    broken_rule.rules = vec![Rule { segments: vec!["deleted".into()], ..rule("r", Vec::new()) }];
    let mut on = with_variants("on");
    on.default_value = true;
    let s = snapshot(vec![killed, env, prereq, off, blocked, default_off, broken_rule, on]);
    for key in ["killed", "env", "prereq", "off", "blocked", "default-off", "broken-rule", "missing"] {
        let e = s.evaluate(key, &org("org-a"), now());
        assert!(!e.value, "{key}");
        assert_eq!(e.variant, None, "{key}");
        assert_eq!(e.variant_name(), "disabled", "{key}");
    }
    assert_eq!(s.evaluate("on", &org("org-a"), now()).variant_name(), "only");
}

// ---------------------------------------------------------------------------------------------------------------
// 8. Prerequisites.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn satisfied_prerequisite_lets_targeting_run() {
    let mut parent = flag("parent");
    parent.allow_orgs = vec!["org-a".into()];
    let mut child = flag("child");
    child.prerequisites = vec![prerequisite("parent", true, &[])];
    child.rules = vec![rule("everyone", Vec::new())];
    let s = snapshot(vec![parent, child]);
    expect(&s.evaluate("child", &org("org-a"), now()), true, Reason::Rule, Some("everyone"), "TARGETING_MATCH");
    expect(&s.evaluate("child", &org("org-b"), now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
}

#[test]
fn prerequisite_expecting_the_parent_off() {
    let mut parent = flag("legacy-ui");
    parent.allow_orgs = vec!["org-a".into()];
    let mut child = flag("new-ui");
    child.prerequisites = vec![prerequisite("legacy-ui", false, &[])];
    child.default_value = true;
    let s = snapshot(vec![parent, child]);
    expect(&s.evaluate("new-ui", &org("org-a"), now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
    expect(&s.evaluate("new-ui", &org("org-b"), now()), true, Reason::Default, None, "DEFAULT");
}

#[test]
fn prerequisite_with_a_variant_list() {
    let mut parent = flag("theme");
    parent.default_value = true;
    parent.variants = vec![
        Variant {
            overrides: vec![VariantOverride { field: "organizationId".into(), values: vec!["org-a".into()] }],
            ..variant("dark", 1)
        },
        Variant {
            overrides: vec![VariantOverride { field: "organizationId".into(), values: vec!["org-b".into()] }],
            ..variant("light", 1)
        },
    ];
    let mut child = flag("dark-charts");
    child.prerequisites = vec![prerequisite("theme", true, &["dark"])];
    child.default_value = true;
    let mut no_variant = flag("plain-parent");
    no_variant.default_value = true;
    let mut wants_disabled = flag("wants-disabled");
    wants_disabled.prerequisites = vec![prerequisite("plain-parent", true, &["disabled"])];
    wants_disabled.default_value = true;
    let s = snapshot(vec![parent, child, no_variant, wants_disabled]);
    expect(&s.evaluate("dark-charts", &org("org-a"), now()), true, Reason::Default, None, "DEFAULT");
    expect(&s.evaluate("dark-charts", &org("org-b"), now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
    // A parent without variants answers Unleash's `disabled` variant.
    expect(&s.evaluate("wants-disabled", &org("org-a"), now()), true, Reason::Default, None, "DEFAULT");
}

#[test]
fn missing_prerequisite_at_runtime_fails() {
    let mut archived = flag("archived-parent");
    archived.default_value = true;
    archived.archived = true;
    let mut child = flag("child");
    child.prerequisites = vec![prerequisite("archived-parent", true, &[])];
    child.default_value = true;
    let mut expects_off = flag("expects-off");
    expects_off.prerequisites = vec![prerequisite("never-existed", false, &[])];
    expects_off.default_value = true;
    let s = snapshot(vec![archived, child, expects_off]);
    expect(&s.evaluate("child", &org("org-a"), now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
    // Even a prerequisite expected off must exist.
    expect(&s.evaluate("expects-off", &org("org-a"), now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
}

#[test]
fn nested_prerequisite_fails() {
    let mut grandparent = flag("grandparent");
    grandparent.default_value = true;
    let mut parent = flag("parent");
    parent.prerequisites = vec![prerequisite("grandparent", true, &[])];
    parent.default_value = true;
    let mut child = flag("child");
    child.prerequisites = vec![prerequisite("parent", true, &[])];
    child.default_value = true;
    let s = snapshot(vec![grandparent, parent, child]);
    // The parent itself is on ...
    expect(&s.evaluate("parent", &org("org-a"), now()), true, Reason::Default, None, "DEFAULT");
    // ... but one level only: the child's prerequisite is never satisfied.
    expect(&s.evaluate("child", &org("org-a"), now()), false, Reason::PrerequisiteFailed, None, "DISABLED");
}

#[test]
fn prerequisite_that_cannot_be_evaluated_is_never_satisfied() {
    // A parent that answers ERROR has no known value: the dependent fails closed whatever it expects.
    let mut erroring = flag("erroring");
    erroring.rules = vec![Rule { segments: vec!["deleted".into()], ..rule("r", Vec::new()) }];
    let mut uncompilable = flag("uncompilable");
    uncompilable.rules = vec![rollout_rule("r", 150.0)];
    let mut flags = vec![erroring, uncompilable];
    for parent in ["erroring", "uncompilable"] {
        for expected in [true, false] {
            let mut child = flag(&format!("{parent}-{expected}"));
            child.prerequisites = vec![prerequisite(parent, expected, &[])];
            child.default_value = true;
            flags.push(child);
        }
    }
    let s = snapshot(flags);
    assert_eq!(s.evaluate("erroring", &org("org-a"), now()).reason, Reason::Error);
    for parent in ["erroring", "uncompilable"] {
        for expected in [true, false] {
            let e = s.evaluate(&format!("{parent}-{expected}"), &org("org-a"), now());
            expect(&e, false, Reason::PrerequisiteFailed, None, "DISABLED");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 9. Constraints.
// ---------------------------------------------------------------------------------------------------------------

/// Whether a rule with this one constraint matches the context.
#[track_caller]
fn holds(c: Constraint, context: &Context) -> bool {
    holds_at(c, context, now())
}

#[track_caller]
fn holds_at(c: Constraint, context: &Context, t: DateTime<Utc>) -> bool {
    let mut f = flag("c");
    f.rules = vec![rule("r", vec![c])];
    assert_valid(&f);
    let s = snapshot(vec![f]);
    let e = s.evaluate("c", context, t);
    assert!(matches!(e.reason, Reason::Rule | Reason::Default), "{e:?}");
    e.value
}

fn plan(value: &str) -> Context {
    with_attr(org("org-a"), "plan", value)
}

#[test]
fn constraint_in_and_not_in() {
    let c = || constraint("plan", Operator::In, &["pro", "enterprise"]);
    assert!(holds(c(), &plan("pro")));
    assert!(!holds(c(), &plan("Pro")));
    assert!(holds(case_insensitive(c()), &plan("Pro")));
    assert!(!holds(inverted(c()), &plan("pro")));
    assert!(holds(inverted(c()), &plan("free")));
    // A missing field is in nothing: IN fails, its inversion holds.
    assert!(!holds(c(), &org("org-a")));
    assert!(holds(inverted(c()), &org("org-a")));

    let n = || constraint("plan", Operator::NotIn, &["free"]);
    assert!(holds(n(), &plan("pro")));
    assert!(!holds(n(), &plan("free")));
    assert!(holds(n(), &plan("FREE")));
    assert!(!holds(case_insensitive(n()), &plan("FREE")));
    assert!(holds(inverted(n()), &plan("free")));
    // A missing field is not in the list.
    assert!(holds(n(), &org("org-a")));
    assert!(!holds(inverted(n()), &org("org-a")));

    // Many values (a hashed set) behave the same.
    let many: Vec<String> = (0..100).map(|i| format!("org-{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(holds(constraint("organizationId", Operator::In, &refs), &org("org-42")));
    assert!(!holds(constraint("organizationId", Operator::In, &refs), &org("org-100")));
    assert!(holds(case_insensitive(constraint("organizationId", Operator::In, &refs)), &org("ORG-42")));
}

#[test]
fn constraint_string_operators() {
    let email = |value: &str| with_attr(org("org-a"), "email", value);
    let starts = || constraint("email", Operator::StrStartsWith, &["admin@", "ops@"]);
    assert!(holds(starts(), &email("ops@example.com")));
    assert!(!holds(starts(), &email("Ops@example.com")));
    assert!(holds(case_insensitive(starts()), &email("Ops@example.com")));
    assert!(holds(inverted(starts()), &email("dev@example.com")));

    let ends = || constraint("email", Operator::StrEndsWith, &["@example.com"]);
    assert!(holds(ends(), &email("a@example.com")));
    assert!(!holds(ends(), &email("a@EXAMPLE.COM")));
    assert!(holds(case_insensitive(ends()), &email("a@EXAMPLE.COM")));
    assert!(!holds(inverted(ends()), &email("a@example.com")));

    let contains = || constraint("email", Operator::StrContains, &["+test"]);
    assert!(holds(contains(), &email("a+test@example.com")));
    assert!(!holds(contains(), &email("a+TEST@example.com")));
    assert!(holds(case_insensitive(contains()), &email("a+TEST@example.com")));
    assert!(holds(inverted(contains()), &email("a@example.com")));
    // A missing field holds no string test; the inversion holds.
    assert!(!holds(contains(), &org("org-a")));
    assert!(holds(inverted(contains()), &org("org-a")));
}

#[test]
fn constraint_numeric_operators() {
    let seats = |value: &str| with_attr(org("org-a"), "seats", value);
    let c = |op| constraint("seats", op, &["10"]);
    let cases = [
        (Operator::NumEq, [false, true, false]),
        (Operator::NumGt, [false, false, true]),
        (Operator::NumGte, [false, true, true]),
        (Operator::NumLt, [true, false, false]),
        (Operator::NumLte, [true, true, false]),
    ];
    for (op, expected) in cases {
        for (value, want) in ["9.5", "10.0", "11"].into_iter().zip(expected) {
            assert_eq!(holds(c(op), &seats(value)), want, "{op:?} {value}");
            assert_eq!(holds(inverted(c(op)), &seats(value)), !want, "inverted {op:?} {value}");
        }
    }
    // Not a number, or missing: never holds.
    assert!(!holds(c(Operator::NumGte), &seats("ten")));
    assert!(!holds(c(Operator::NumLt), &org("org-a")));
    assert!(holds(constraint("seats", Operator::NumLt, &["-1.5e3"]), &seats("-2000")));
}

#[test]
fn constraint_date_operators_default_current_time_to_now() {
    let launch = "2026-07-01T00:00:00Z";
    let after = || constraint("currentTime", Operator::DateAfter, &[launch]);
    let before = || constraint("currentTime", Operator::DateBefore, &[launch]);
    let launch_at = at(2026, 7, 1, 0);
    let ns = Duration::nanoseconds(1);
    // The context has no currentTime: the evaluation instant is used.
    let context = org("org-a");
    assert!(!holds_at(after(), &context, launch_at));
    assert!(holds_at(after(), &context, launch_at + ns));
    assert!(holds_at(before(), &context, launch_at - ns));
    assert!(!holds_at(before(), &context, launch_at));
    assert!(holds_at(inverted(after()), &context, launch_at));
    // A currentTime in the context wins over the evaluation instant.
    let timed = Context { current_time: Some("2026-08-01T00:00:00+02:00".into()), ..org("org-a") };
    assert!(holds_at(after(), &timed, launch_at - Duration::days(365)));
    assert!(!holds_at(before(), &timed, launch_at - Duration::days(365)));
    // Any other field is read from the context, and a missing one never holds.
    let signup = |value: &str| with_attr(org("org-a"), "signedUpAt", value);
    let signed_up_after = || constraint("signedUpAt", Operator::DateAfter, &["2025-01-01T00:00:00Z"]);
    assert!(holds(signed_up_after(), &signup("2025-06-01T10:00:00Z")));
    assert!(!holds(signed_up_after(), &signup("2024-06-01T10:00:00Z")));
    assert!(!holds(signed_up_after(), &signup("not a date")));
    assert!(!holds(signed_up_after(), &org("org-a")));
}

#[test]
fn constraint_semver_operators() {
    let app = |value: &str| with_attr(org("org-a"), "appVersion", value);
    let c = |op| constraint("appVersion", op, &["2.1.0"]);
    let cases = [
        (Operator::SemverEq, [false, true, false]),
        (Operator::SemverGt, [false, false, true]),
        (Operator::SemverGte, [false, true, true]),
        (Operator::SemverLt, [true, false, false]),
        (Operator::SemverLte, [true, true, false]),
    ];
    for (op, expected) in cases {
        for (value, want) in ["2.1.0-beta.1", "2.1.0", "2.10.0"].into_iter().zip(expected) {
            assert_eq!(holds(c(op), &app(value)), want, "{op:?} {value}");
            assert_eq!(holds(inverted(c(op)), &app(value)), !want, "inverted {op:?} {value}");
        }
    }
    assert!(!holds(c(Operator::SemverGt), &app("3")));
    assert!(!holds(c(Operator::SemverGt), &org("org-a")));
}

#[test]
fn constraint_regex() {
    let c = || constraint("email", Operator::Regex, &[r"^[a-z]+@example\.com$"]);
    let email = |value: &str| with_attr(org("org-a"), "email", value);
    assert!(holds(c(), &email("ana@example.com")));
    assert!(!holds(c(), &email("Ana@example.com")));
    assert!(holds(case_insensitive(c()), &email("Ana@EXAMPLE.com")));
    assert!(holds(inverted(c()), &email("ana@example.org")));
    assert!(!holds(c(), &org("org-a")));
}

#[test]
fn constraint_in_cidr() {
    let c = || constraint("remoteAddress", Operator::InCidr, &["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"]);
    let from = |ip: &str| Context { remote_address: Some(ip.into()), ..org("org-a") };
    assert!(holds(c(), &from("10.20.30.40")));
    assert!(holds(c(), &from("2001:db8::1")));
    assert!(holds(c(), &from("192.168.1.7")));
    assert!(!holds(c(), &from("192.168.1.8")));
    assert!(!holds(c(), &from("not-an-ip")));
    assert!(holds(inverted(c()), &from("11.0.0.1")));
    assert!(!holds(c(), &org("org-a")));
}

#[test]
fn constraint_fields_built_in_vs_attributes() {
    // Built-in fields come from the context's own fields, never from attributes of the same name.
    let user = || constraint("userId", Operator::In, &["u-1"]);
    assert!(holds(user(), &org_user("org-a", "u-1")));
    assert!(!holds(user(), &with_attr(org_user("org-a", "u-2"), "userId", "u-1")));
    type Slot = fn(&mut Context) -> &mut Option<String>;
    let fields: [(&str, Slot); 6] = [
        ("organizationId", |c| &mut c.organization_id),
        ("userId", |c| &mut c.user_id),
        ("environment", |c| &mut c.environment),
        ("sessionId", |c| &mut c.session_id),
        ("remoteAddress", |c| &mut c.remote_address),
        ("appName", |c| &mut c.app_name),
    ];
    for (name, slot) in fields {
        let mut context = Context::default();
        *slot(&mut context) = Some("v".into());
        assert!(holds(constraint(name, Operator::In, &["v"]), &context), "{name}");
        let mut as_attribute = Context::default();
        as_attribute.attributes.insert(name.into(), "v".into());
        assert!(!holds(constraint(name, Operator::In, &["v"]), &as_attribute), "{name} as an attribute");
    }
    // Any other name is an attribute.
    assert!(holds(constraint("region", Operator::In, &["eu"]), &with_attr(Context::default(), "region", "eu")));
}

#[test]
fn every_constraint_of_a_rule_and_of_its_segments_must_hold() {
    let eu = Segment {
        name: "eu".into(),
        description: "EU customers".into(),
        constraints: vec![constraint("region", Operator::In, &["eu-west", "eu-central"])],
    };
    let mut f = flag("f");
    f.rules =
        vec![Rule { segments: vec!["eu".into()], ..rule("eu-pro", vec![constraint("plan", Operator::In, &["pro"])]) }];
    let all = segments(vec![eu]);
    assert_eq!(pointers(&f, &BTreeMap::new(), &all), Vec::<String>::new());
    let s = Snapshot::build(vec![f], &all);
    let context = |plan: &str, region: &str| with_attr(with_attr(org("org-a"), "plan", plan), "region", region);
    assert!(s.evaluate("f", &context("pro", "eu-west"), now()).value);
    assert!(!s.evaluate("f", &context("pro", "us-east"), now()).value);
    assert!(!s.evaluate("f", &context("free", "eu-west"), now()).value);
}

// ---------------------------------------------------------------------------------------------------------------
// 10. validate_flag.
// ---------------------------------------------------------------------------------------------------------------

/// A flag using most of the model, valid.
fn full_flag() -> Flag {
    let mut f = flag("checkout-v2");
    f.description = "The new checkout".into();
    f.environments = vec!["prod".into(), "staging".into()];
    f.variants = vec![
        Variant {
            payload: Some(keel_flags::Payload { kind: "json".into(), value: r#"{"color":"blue"}"#.into() }),
            ..variant("blue", 500)
        },
        variant("green", 500),
    ];
    f.rules = vec![
        Rule {
            segments: vec!["beta".into()],
            rollout: Some(Rollout {
                percentage: 12.34,
                stickiness: Stickiness::Field("userId".into()),
                group_id: Some("checkout".into()),
            }),
            variants: vec![variant("rule-only", 1)],
            starts_at: Some(at(2026, 1, 1, 0)),
            ends_at: Some(at(2027, 1, 1, 0)),
            ..rule(
                "beta-users",
                vec![
                    constraint("seats", Operator::NumGte, &["10"]),
                    constraint("currentTime", Operator::DateAfter, &["2026-01-01T00:00:00Z"]),
                    constraint("appVersion", Operator::SemverGte, &["1.2.3"]),
                    constraint("email", Operator::Regex, &[r".+@example\.com"]),
                    constraint("remoteAddress", Operator::InCidr, &["10.0.0.0/8"]),
                ],
            )
        },
        rollout_rule("everyone", 100.0),
    ];
    f.allow_orgs = vec!["org-a".into()];
    f.block_orgs = vec!["org-b".into()];
    f.target_users = vec!["u-1".into()];
    f.overrides = vec![
        override_("org-c", OverrideAction::Variant { variant: "green".into() }, "asked for green"),
        Override { expires_at: Some(at(2026, 7, 1, 0)), ..override_("org-d", OverrideAction::ForcedOff, "incident") },
        Override { starts_at: Some(at(2026, 7, 1, 0)), ..override_("org-d", OverrideAction::ForcedOn, "after") },
    ];
    f.prerequisites = vec![prerequisite("payments", true, &["v2"])];
    f
}

fn context_for_full_flag() -> (BTreeMap<String, Flag>, BTreeMap<String, Segment>) {
    let mut payments = flag("payments");
    payments.variants = vec![variant("v1", 1), variant("v2", 1)];
    let beta = Segment { name: "beta".into(), description: String::new(), constraints: Vec::new() };
    (by_key(vec![payments, full_flag()]), segments(vec![beta]))
}

#[test]
fn valid_flag_passes_validation() {
    let (flags, segments) = context_for_full_flag();
    assert_eq!(validate_flag(&full_flag(), &flags, &segments), Ok(()));
    assert_valid(&Flag::new("minimal"));
    // Two decimals, 0 and 100 are all valid percentages.
    for percentage in [0.0, 0.01, 12.35, 99.99, 100.0] {
        let mut f = flag("f");
        f.rules = vec![rollout_rule("r", percentage)];
        assert_valid(&f);
    }
}

#[test]
fn validate_rejects_percentage_over_100() {
    let mut f = flag("f");
    f.rules = vec![rule("a", Vec::new()), rollout_rule("b", 100.01)];
    rejected_at(&f, "/rules/1/rollout/percentage");
    f.rules = vec![rollout_rule("a", 150.0)];
    rejected_at(&f, "/rules/0/rollout/percentage");
    f.rules = vec![rollout_rule("a", -1.0)];
    rejected_at(&f, "/rules/0/rollout/percentage");
    f.rules = vec![rollout_rule("a", f64::NAN)];
    rejected_at(&f, "/rules/0/rollout/percentage");
}

#[test]
fn validate_rejects_percentage_with_three_decimals() {
    let mut f = flag("f");
    for percentage in [12.345, 0.001, 99.999] {
        f.rules = vec![rollout_rule("a", percentage)];
        rejected_at(&f, "/rules/0/rollout/percentage");
    }
}

#[test]
fn validate_rejects_regex_that_does_not_compile() {
    let mut f = flag("f");
    f.rules = vec![
        rule("ok", Vec::new()),
        rule(
            "bad",
            vec![
                constraint("email", Operator::Regex, &["^fine$"]),
                constraint("email", Operator::Regex, &["(unclosed"]),
            ],
        ),
    ];
    rejected_at(&f, "/rules/1/constraints/1/values/0");
    // Lookaround is not supported by the regex engine: rejected, not silently never matching.
    f.rules = vec![rule("r", vec![constraint("email", Operator::Regex, &["(?=a)"])])];
    rejected_at(&f, "/rules/0/constraints/0/values/0");
}

/// A snapshot compiles a stored pattern when a rule first reaches it (writes compile it first): one that does not
/// compile, inverted or not, answers ERROR for the contexts that reach it, and the flag's other paths still answer.
#[test]
fn stored_regexes_are_compiled_on_first_use_and_a_broken_one_answers_error_when_reached() {
    let broken = [("unclosed", "(unclosed"), ("lookaround", "(?=a)"), ("unknown-class", r"\p{NoSuchClass}")];
    let mut flags = Vec::new();
    for (key, pattern) in broken {
        let mut f = flag(key);
        f.allow_orgs = vec!["org-allowed".into()];
        f.rules = vec![rule("r", vec![constraint("email", Operator::Regex, &[pattern])])];
        rejected_at(&f, "/rules/0/constraints/0/values/0");
        flags.push(f.clone());
        f.key = format!("{key}-inverted");
        f.rules[0].constraints[0].inverted = true;
        flags.push(f);
    }
    let mut folded = flag("folded");
    folded.rules = vec![rule("r", vec![case_insensitive(constraint("email", Operator::Regex, &["^ADA@"]))])];
    flags.push(folded);
    // A stored segment (written by hand) whose regex does not compile, referenced by a rule.
    let segment = Segment {
        name: "staff".into(),
        description: String::new(),
        constraints: vec![inverted(constraint("email", Operator::Regex, &["(unclosed"]))],
    };
    let mut in_segment = flag("in-segment");
    in_segment.allow_orgs = vec!["org-allowed".into()];
    in_segment.rules = vec![Rule { segments: vec!["staff".into()], ..rule("r", Vec::new()) }];
    flags.push(in_segment);
    let s = Snapshot::build(flags, &segments(vec![segment]));
    let context = with_attr(org("org-a"), "email", "ada@acme.io");
    let keys = broken.iter().flat_map(|(key, _)| [key.to_string(), format!("{key}-inverted")]);
    for key in keys.chain(["in-segment".to_string()]) {
        // With the attribute and without it (an inverted constraint holds for a missing field when it compiles).
        for context in [context.clone(), org("org-a")] {
            let e = s.evaluate(&key, &context, now());
            assert_eq!((e.value, e.reason, e.rule_id), (false, Reason::Error, Some("r")), "{key}");
            assert_eq!(e.error.map(|(code, _)| code), Some(ErrorCode::General), "{key}");
            // Decided before the rule is reached: unaffected.
            expect(&s.evaluate(&key, &org("org-allowed"), now()), true, Reason::AllowList, None, "TARGETING_MATCH");
        }
    }
    expect(&s.evaluate("folded", &context, now()), true, Reason::Rule, Some("r"), "TARGETING_MATCH");
}

/// A write parses a JSON payload as serving does: a number out of range, a lone surrogate or nesting deeper than
/// serde_json's 128 levels is refused, though each is valid JSON syntax.
#[test]
fn validate_rejects_json_payloads_that_serving_cannot_parse() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for value in [r#"{"a":1e400}"#, r#"{"a":"\ud800"}"#, deep.as_str()] {
        let mut f = flag("f");
        f.variants =
            vec![Variant { payload: Some(Payload { kind: "json".into(), value: value.into() }), ..variant("a", 1) }];
        rejected_at(&f, "/variants/0/payload/value");
    }
}

#[test]
fn validate_rejects_number_that_does_not_parse() {
    let mut f = flag("f");
    f.rules = vec![rule("a", Vec::new()), rule("b", vec![constraint("seats", Operator::NumGt, &["ten"])])];
    rejected_at(&f, "/rules/1/constraints/0/values/0");
    for value in ["NaN", "inf", ""] {
        f.rules = vec![rule("a", vec![constraint("seats", Operator::NumEq, &[value])])];
        rejected_at(&f, "/rules/0/constraints/0/values/0");
    }
}

#[test]
fn validate_rejects_date_that_does_not_parse() {
    let mut f = flag("f");
    for value in ["2026-13-01T00:00:00Z", "yesterday", "2026-07-01"] {
        f.rules =
            vec![rule("a", Vec::new()), rule("b", vec![constraint("currentTime", Operator::DateAfter, &[value])])];
        rejected_at(&f, "/rules/1/constraints/0/values/0");
    }
}

#[test]
fn validate_rejects_semver_that_does_not_parse() {
    let mut f = flag("f");
    for value in ["1.2", "v1.2.3", "latest"] {
        f.rules = vec![rule("a", Vec::new()), rule("b", vec![constraint("app", Operator::SemverLt, &[value])])];
        rejected_at(&f, "/rules/1/constraints/0/values/0");
    }
}

#[test]
fn validate_rejects_single_valued_operator_with_zero_or_two_values() {
    let mut f = flag("f");
    for op in [Operator::NumEq, Operator::DateBefore, Operator::SemverEq, Operator::Regex] {
        for values in [&[][..], &["1", "2"][..]] {
            f.rules = vec![rule("a", vec![constraint("x", op, values)])];
            let problem = rejected_at(&f, "/rules/0/constraints/0/values");
            assert!(problem.message.contains("exactly one value"), "{problem:?}");
        }
    }
    // The message names the operator as it is written on the wire.
    f.rules = vec![rule("a", vec![constraint("x", Operator::NumEq, &[])])];
    assert_eq!(rejected_at(&f, "/rules/0/constraints/0/values").message, "operator NUM_EQ takes exactly one value");
    // Multi-valued operators accept any number, none included.
    f.rules =
        vec![rule("a", vec![constraint("x", Operator::In, &[]), constraint("x", Operator::StrContains, &["a", "b"])])];
    assert_valid(&f);
}

#[test]
fn validate_rejects_prerequisite_cycle() {
    let mut a = flag("a");
    a.prerequisites = vec![prerequisite("b", true, &[])];
    let mut b = flag("b");
    b.prerequisites = vec![prerequisite("a", true, &[])];
    let others = by_key(vec![a.clone()]);
    let errors = validate_flag(&b, &others, &BTreeMap::new()).unwrap_err();
    let cycle = errors.iter().find(|e| e.pointer == "/prerequisites/0/flag").expect("the cycle is reported");
    assert!(cycle.message.contains("cycle"), "{cycle:?}");
    // A flag cannot be its own prerequisite.
    let mut me = flag("me");
    me.prerequisites = vec![prerequisite("me", true, &[])];
    let problem = rejected_among(&me, &by_key(vec![me.clone()]), &BTreeMap::new(), "/prerequisites/0/flag");
    assert!(!problem.message.is_empty());
}

#[test]
fn validate_rejects_missing_prerequisite_flag() {
    let mut f = flag("f");
    f.prerequisites = vec![prerequisite("present", true, &[]), prerequisite("absent", true, &[])];
    let problem = rejected_among(&f, &by_key(vec![flag("present")]), &BTreeMap::new(), "/prerequisites/1/flag");
    assert!(problem.message.contains("absent"), "{problem:?}");
    // An archived flag is no prerequisite either.
    let mut archived = flag("present");
    archived.archived = true;
    f.prerequisites = vec![prerequisite("present", true, &[])];
    let problem = rejected_among(&f, &by_key(vec![archived]), &BTreeMap::new(), "/prerequisites/0/flag");
    assert!(problem.message.contains("archived"), "{problem:?}");
}

#[test]
fn validate_rejects_nested_prerequisites() {
    let grandparent = flag("grandparent");
    let mut parent = flag("parent");
    parent.prerequisites = vec![prerequisite("grandparent", true, &[])];
    let mut child = flag("child");
    child.prerequisites = vec![prerequisite("parent", true, &[])];
    let problem = rejected_among(
        &child,
        &by_key(vec![grandparent.clone(), parent.clone()]),
        &BTreeMap::new(),
        "/prerequisites/0/flag",
    );
    assert!(problem.message.contains("one level"), "{problem:?}");
    // The other way round: a flag others depend on may not get prerequisites.
    let mut child = flag("child");
    child.prerequisites = vec![prerequisite("parent", true, &[])];
    let mut parent = flag("parent");
    parent.prerequisites = vec![prerequisite("grandparent", true, &[])];
    rejected_among(&parent, &by_key(vec![grandparent, child]), &BTreeMap::new(), "/prerequisites");
}

#[test]
fn validate_rejects_prerequisite_variant_the_parent_lacks() {
    let mut parent = flag("parent");
    parent.variants = vec![variant("v1", 1)];
    let mut f = flag("f");
    f.prerequisites = vec![prerequisite("parent", true, &["v1", "v9"])];
    rejected_among(&f, &by_key(vec![parent]), &BTreeMap::new(), "/prerequisites/0/variants");
}

#[test]
fn validate_rejects_override_without_reason() {
    let mut f = flag("f");
    for reason in ["", "   "] {
        f.overrides = vec![
            override_("org-a", OverrideAction::ForcedOn, "ok"),
            override_("org-b", OverrideAction::ForcedOn, reason),
        ];
        rejected_at(&f, "/overrides/1/reason");
    }
}

#[test]
fn validate_rejects_override_variant_that_does_not_exist() {
    let mut f = flag("f");
    f.variants = vec![variant("blue", 1)];
    f.overrides = vec![override_("org-a", OverrideAction::Variant { variant: "red".into() }, "asked for red")];
    let problem = rejected_at(&f, "/overrides/0/action/variant");
    assert!(problem.message.contains("red"));
    // A rule's variant is not one of the flag's.
    f.rules = vec![Rule { variants: vec![variant("red", 1)], ..rule("r", Vec::new()) }];
    rejected_at(&f, "/overrides/0/action/variant");
}

#[test]
fn validate_rejects_overlapping_overrides_for_one_org() {
    let window = |action, start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>| Override {
        starts_at: start,
        expires_at: end,
        ..override_("org-a", action, "scheduled")
    };
    let (t1, t2, t3) = (at(2026, 7, 1, 0), at(2026, 8, 1, 0), at(2026, 9, 1, 0));
    let mut f = flag("f");
    // Two unbounded overrides.
    f.overrides =
        vec![override_("org-a", OverrideAction::ForcedOn, "one"), override_("org-a", OverrideAction::ForcedOff, "two")];
    rejected_at(&f, "/overrides/1/org_id");
    // Windows sharing one hour.
    f.overrides = vec![
        window(OverrideAction::ForcedOn, Some(t1), Some(t2)),
        window(OverrideAction::ForcedOff, Some(t2 - Duration::hours(1)), Some(t3)),
    ];
    rejected_at(&f, "/overrides/1/org_id");
    // Open-ended after a start, against one with no start.
    f.overrides =
        vec![window(OverrideAction::ForcedOn, Some(t2), None), window(OverrideAction::ForcedOff, None, Some(t3))];
    rejected_at(&f, "/overrides/1/org_id");
    // Back to back is fine, and so are other organizations.
    f.overrides = vec![
        window(OverrideAction::ForcedOn, Some(t1), Some(t2)),
        window(OverrideAction::ForcedOff, Some(t2), Some(t3)),
        override_("org-b", OverrideAction::ForcedOn, "other org"),
    ];
    assert_valid(&f);
}

#[test]
fn validate_rejects_duplicate_rule_ids() {
    let mut f = flag("f");
    f.rules = vec![rule("a", Vec::new()), rule("b", Vec::new()), rule("a", Vec::new())];
    let problem = rejected_at(&f, "/rules/2/id");
    assert!(problem.message.contains("`a`"));
    f.rules = vec![rule("", Vec::new())];
    rejected_at(&f, "/rules/0/id");
}

#[test]
fn validate_rejects_start_after_end() {
    let (early, late) = (at(2026, 7, 1, 0), at(2026, 8, 1, 0));
    let mut f = flag("f");
    f.rules = vec![
        rule("ok", Vec::new()),
        Rule { starts_at: Some(late), ends_at: Some(early), ..rule("backwards", Vec::new()) },
    ];
    rejected_at(&f, "/rules/1");
    // An empty window is as wrong as a backwards one.
    f.rules = vec![Rule { starts_at: Some(early), ends_at: Some(early), ..rule("empty", Vec::new()) }];
    rejected_at(&f, "/rules/0");
    f.rules = Vec::new();
    f.overrides = vec![Override {
        starts_at: Some(late),
        expires_at: Some(early),
        ..override_("org-a", OverrideAction::ForcedOn, "backwards")
    }];
    rejected_at(&f, "/overrides/0");
}

#[test]
fn validate_rejects_unknown_segment() {
    let known = Segment { name: "known".into(), description: String::new(), constraints: Vec::new() };
    let mut f = flag("f");
    f.rules =
        vec![rule("a", Vec::new()), Rule { segments: vec!["known".into(), "gone".into()], ..rule("b", Vec::new()) }];
    let problem = rejected_among(&f, &BTreeMap::new(), &segments(vec![known]), "/rules/1/segments/1");
    assert!(problem.message.contains("gone"));
}

#[test]
fn validate_rejects_org_on_both_allow_and_block_list() {
    let mut f = flag("f");
    f.allow_orgs = vec!["org-a".into(), "org-b".into()];
    f.block_orgs = vec!["org-c".into(), "org-b".into()];
    let problem = rejected_at(&f, "/allow_orgs");
    assert!(problem.message.contains("org-b"));
}

#[test]
fn validate_rejects_oversized_lists() {
    let many = |n: usize| (0..n).map(|i| format!("x-{i}")).collect::<Vec<_>>();
    let mut f = flag("f");
    f.allow_orgs = many(MAX_LIST);
    f.target_users = many(MAX_LIST);
    assert_valid(&f);

    let mut f = flag("f");
    f.allow_orgs = many(MAX_LIST + 1);
    rejected_at(&f, "/allow_orgs");
    let mut f = flag("f");
    f.block_orgs = many(MAX_LIST + 1);
    rejected_at(&f, "/block_orgs");
    let mut f = flag("f");
    f.target_users = many(MAX_LIST + 1);
    rejected_at(&f, "/target_users");
    let mut f = flag("f");
    f.environments = many(MAX_LIST + 1);
    rejected_at(&f, "/environments");
    let mut f = flag("f");
    let values = many(MAX_VALUES + 1);
    f.rules = vec![rule("r", vec![Constraint { values, ..constraint("plan", Operator::In, &[]) }])];
    rejected_at(&f, "/rules/0/constraints/0/values");
    let mut f = flag("f");
    f.rules = (0..=keel_flags::MAX_RULES).map(|i| rule(&format!("r{i}"), Vec::new())).collect();
    rejected_at(&f, "/rules");
    // One oversized value.
    let mut f = flag("f");
    f.allow_orgs = vec!["ok".into(), "x".repeat(keel_flags::MAX_VALUE_LEN + 1)];
    rejected_at(&f, "/allow_orgs/1");
}

#[test]
fn unknown_operator_is_rejected_when_deserializing() {
    let document = |operator: &str| {
        json!({
            "key": "f",
            "rules": [{"id": "r", "constraints": [{"field": "plan", "operator": operator, "values": ["pro"]}]}],
        })
    };
    let flag: Flag = serde_json::from_value(document("IN")).unwrap();
    assert_eq!(flag.rules[0].constraints[0].operator, Operator::In);
    let error = serde_json::from_value::<Flag>(document("STR_MATCHES")).unwrap_err();
    assert!(error.to_string().contains("STR_MATCHES"), "{error}");
    // Operators are case-sensitive, as in Unleash.
    assert!(serde_json::from_value::<Flag>(document("in")).is_err());
}

// ---------------------------------------------------------------------------------------------------------------
// 11. explain.
// ---------------------------------------------------------------------------------------------------------------

const STAGES: [&str; 10] = [
    "flag",
    "kill_switch",
    "environment",
    "prerequisite",
    "override",
    "block_list",
    "target_users",
    "allow_list",
    "rule",
    "default",
];

#[test]
fn explain_steps_follow_the_evaluation_order_and_end_with_the_decision() {
    let mut parent = flag("parent");
    parent.default_value = true;
    let mut f = flag("f");
    f.environments = vec!["prod".into()];
    f.prerequisites = vec![prerequisite("parent", true, &[])];
    f.overrides = vec![override_("org-o", OverrideAction::ForcedOn, "pilot")];
    f.block_orgs = vec!["org-b".into()];
    f.target_users = vec!["u-t".into()];
    f.allow_orgs = vec!["org-a".into()];
    f.rules = vec![
        Rule { ends_at: Some(at(2020, 1, 1, 0)), ..rule("expired", Vec::new()) },
        rule("first", vec![constraint("plan", Operator::In, &["pro"])]),
        Rule { rollout: Some(rollout(50.0)), ..rule("second", vec![constraint("plan", Operator::In, &["half"])]) },
    ];
    let mut g = flag("g");
    g.rules = vec![
        Rule { ends_at: Some(at(2020, 1, 1, 0)), ..rule("expired", Vec::new()) },
        rule("first", vec![constraint("plan", Operator::In, &["pro"])]),
        Rule { rollout: Some(rollout(0.0)), ..rule("second", Vec::new()) },
        Rule { segments: vec!["deleted".into()], ..rule("broken", Vec::new()) },
        rule("unreached", Vec::new()),
    ];
    let mut killed = flag("killed");
    killed.enabled = false;
    let s = snapshot(vec![parent, f, g, killed]);
    let prod = |context: Context| Context { environment: Some("prod".into()), ..context };
    let cases = vec![
        ("missing", org("org-a"), "flag"),
        ("killed", org("org-a"), "kill_switch"),
        ("f", org("org-a"), "environment"),
        ("f", prod(org("org-o")), "override"),
        ("f", prod(org_user("org-b", "u-t")), "block_list"),
        ("f", prod(org_user("org-x", "u-t")), "target_users"),
        ("f", prod(org("org-a")), "allow_list"),
        ("f", prod(with_attr(org("org-x"), "plan", "pro")), "rule"),
        ("g", org("org-x"), "rule"),
        ("g", with_attr(org("org-x"), "plan", "pro"), "rule"),
        ("f", prod(org("org-x")), "default"),
    ];
    let mut half = (0..1000).map(|i| prod(with_attr(org(&format!("org-{i}")), "plan", "half")));
    let in_half = half.find(|c| s.evaluate("f", c, now()).rule_id == Some("second")).unwrap();
    let cases = cases.into_iter().chain([("f", in_half, "rule")]);
    for (key, context, deciding) in cases {
        let (explained, steps) = s.explain(key, &context, now());
        assert_eq!(explained, s.evaluate(key, &context, now()), "{key} for {context:?}");
        let last = steps.last().unwrap();
        assert_eq!(last.stage, deciding, "{steps:#?}");
        assert!(last.decided, "{steps:#?}");
        assert!(steps[..steps.len() - 1].iter().all(|step| !step.decided), "{steps:#?}");
        let ranks: Vec<usize> =
            steps.iter().map(|step| STAGES.iter().position(|stage| *stage == step.stage).unwrap()).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{steps:#?}");
        assert!(steps.iter().all(|step| !step.detail.is_empty()), "{steps:#?}");
    }

    // Rules are explained in order, each once, up to the deciding one.
    let (e, steps) = s.explain("g", &org("org-x"), now());
    assert_eq!((e.reason, e.rule_id), (Reason::Error, Some("broken")));
    let rule_steps: Vec<&str> = steps.iter().filter(|s| s.stage == "rule").map(|s| s.detail.as_str()).collect();
    assert_eq!(rule_steps.len(), 4, "{rule_steps:#?}");
    for (detail, id) in rule_steps.iter().zip(["expired", "first", "second", "broken"]) {
        assert!(detail.contains(&format!("`{id}`")), "{detail} should be about {id}");
    }
    // The full path, stage by stage, for a context that falls through to the default.
    let (_, steps) = s.explain("f", &prod(org("org-x")), now());
    let stages: Vec<&str> = steps.iter().map(|s| s.stage).collect();
    assert_eq!(stages, ["flag", "kill_switch", "environment", "prerequisite", "rule", "rule", "rule", "default"]);
}

#[test]
fn explain_equals_evaluate_over_many_contexts() {
    let mut f = flag("f");
    f.variants = vec![variant("a", 1), variant("b", 2)];
    f.rules = vec![rollout_rule("r", 33.33)];
    f.default_value = true;
    let s = snapshot(vec![f]);
    for i in 0..300 {
        let context = org_user(&format!("org-{i}"), &format!("u-{i}"));
        let (explained, steps) = s.explain("f", &context, now());
        assert_eq!(explained, s.evaluate("f", &context, now()));
        assert!(steps.last().unwrap().decided);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 12. Unleash import warnings.
// ---------------------------------------------------------------------------------------------------------------

fn import(document: serde_json::Value) -> unleash::Import {
    let features = unleash::parse(&document).unwrap();
    unleash::convert(&features, now())
}

#[track_caller]
fn warned_at(import: &unleash::Import, pointer: &str) -> String {
    let warnings = import.warnings();
    let warning = warnings.iter().find(|w| w.pointer == pointer);
    warning.unwrap_or_else(|| panic!("no warning at {pointer}: {warnings:?}")).message.clone()
}

#[test]
fn unleash_unknown_strategy_is_reported() {
    let result = import(json!({"features": [
        {"name": "ok", "enabled": true, "strategies": [{"name": "default"}]},
        {"name": "f", "enabled": true, "strategies": [
            {"name": "default"},
            {"name": "applicationHostname", "parameters": {"hostNames": "a.example.com"}},
            {"name": "myCustomStrategy"},
        ]},
    ]}));
    assert_eq!(result.warnings().len(), 2, "{:?}", result.warnings());
    assert!(warned_at(&result, "/features/1/strategies/1/name").contains("applicationHostname"));
    assert!(warned_at(&result, "/features/1/strategies/2/name").contains("myCustomStrategy"));
    // Every strategy is kept; those Unleash never matches as disabled rules, each with its warning on the flag.
    let rules: Vec<bool> = result.flags[1].rules.iter().map(|r| r.disabled).collect();
    assert_eq!(rules, [false, true, true]);
    let on_flag: Vec<(&str, &str)> =
        result.flags[1].warnings.iter().map(|w| (w.pointer.as_str(), w.source.as_str())).collect();
    assert_eq!(on_flag, [("/rules/1", "/features/1/strategies/1/name"), ("/rules/2", "/features/1/strategies/2/name")]);
    assert!(result.flags[0].warnings.is_empty());
    // A disabled rule never matches, so only the `default` strategy decides.
    let mut only_custom = result.flags[1].clone();
    only_custom.rules.remove(0);
    let s = snapshot(vec![only_custom]);
    let (answer, steps) = s.explain("f", &org("o"), now());
    assert_eq!((answer.value, answer.reason), (false, Reason::Default));
    assert!(steps.iter().any(|s| s.detail.contains("disabled")), "{steps:?}");
}

#[test]
fn unleash_unknown_operator_is_reported() {
    let result = import(json!({"features": [{"name": "f", "enabled": true, "strategies": [{
        "name": "default",
        "constraints": [
            {"contextName": "userId", "operator": "IN", "values": ["a"]},
            {"contextName": "userId", "operator": "STR_MATCHES", "values": ["a"]},
        ],
    }]}]}));
    let message = warned_at(&result, "/features/0/strategies/0/constraints/1/operator");
    assert!(message.contains("STR_MATCHES"), "{message}");
    assert_eq!(result.warnings().len(), 1);
}

#[test]
fn unleash_unknown_operator_in_a_segment_is_reported() {
    let result = import(json!({
        "features": [{"name": "f", "enabled": true, "strategies": [{"name": "default", "segments": [7]}]}],
        "segments": [{"id": 7, "constraints": [{"contextName": "x", "operator": "LIKE", "values": ["a"]}]}],
    }));
    assert!(warned_at(&result, "/segments/0/constraints/0/operator").contains("LIKE"));
    // ... and the strategy that uses it.
    warned_at(&result, "/features/0/strategies/0/segments/0");
}

#[test]
fn unleash_invalid_regex_is_reported() {
    let result = import(json!({"features": [{"name": "f", "enabled": true, "strategies": [{
        "name": "flexibleRollout",
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": "f"},
        "constraints": [{"contextName": "email", "operator": "REGEX", "value": "(unclosed"}],
    }]}]}));
    warned_at(&result, "/features/0/strategies/0/constraints/0/values/0");
    assert_eq!(result.warnings().len(), 1);
}

#[test]
fn unleash_missing_segment_is_reported() {
    let result = import(json!({
        "features": [{"name": "f", "enabled": true, "strategies": [{"name": "default", "segments": [1, 2]}]}],
        "segments": [{"id": 1, "constraints": []}],
    }));
    let message = warned_at(&result, "/features/0/strategies/0/segments/1");
    assert!(message.contains('2'), "{message}");
    assert_eq!(result.warnings().len(), 1);
}

#[test]
fn unleash_invalid_ip_in_remote_address_is_reported() {
    let result = import(json!({"features": [{"name": "f", "enabled": true, "strategies": [{
        "name": "remoteAddress",
        "parameters": {"IPs": "10.0.0.0/8, not-an-ip, 192.168.1.1"},
    }]}]}));
    let message = warned_at(&result, "/features/0/strategies/0/parameters/IPs");
    assert!(message.contains("not-an-ip"), "{message}");
    assert_eq!(result.warnings().len(), 1);
    // The valid addresses are kept and evaluate.
    let s = snapshot(result.flags);
    let from = |ip: &str| Context { remote_address: Some(ip.into()), ..Context::default() };
    assert!(s.evaluate("f", &from("10.1.2.3"), now()).value);
    assert!(s.evaluate("f", &from("192.168.1.1"), now()).value);
    assert!(!s.evaluate("f", &from("172.16.0.1"), now()).value);
}

#[test]
fn unleash_document_without_problems_has_no_warnings() {
    let result = import(json!({
        "features": [{"name": "f", "enabled": true, "strategies": [{
            "name": "flexibleRollout",
            "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "f"},
            "constraints": [{"contextName": "appName", "operator": "IN", "values": ["web"]}],
            "segments": [1],
        }]}],
        "segments": [{"id": 1, "constraints": [{"contextName": "region", "operator": "IN", "values": ["eu"]}]}],
    }));
    assert_eq!(result.warnings(), Vec::<Invalid>::new());
    assert_eq!(result.flags.len(), 1);
    assert_eq!(result.segments.len(), 1);
}
