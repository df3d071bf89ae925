//! Import of Unleash's client features format (`{version, features, segments}`, and the delta format's
//! `{events}`) into Keel flags that evaluate exactly as Unleash evaluates them. What Keel does not support as such
//! (a custom strategy, an unknown operator, an invalid address) is carried over as Unleash evaluates it (a strategy
//! Unleash never matches becomes a disabled rule) and reported as a warning with a pointer into the Unleash
//! document; each converted flag also keeps its own warnings, pointing into the flag. The import API refuses a
//! document with warnings in strict mode and stores the flags with their warnings in lenient mode.
//!
//! Payload types map onto value types: a feature whose variants all carry `string` (or `csv`) payloads becomes a
//! `string` flag, `number` payloads a `number` flag, `json` objects an `object` flag. Such a flag serves
//! Unleash's `disabled` variant when no variant is chosen, with the empty value of its type (`""`, `0` or `0.0`
//! as the payloads are written, `{}`), since Keel answers a typed flag's type on every path where Unleash has no
//! payload. Features whose variants mix types, or leave some without a payload, stay boolean (with a warning:
//! OFREP then serves on/off, Keel's API the payload).

use super::compile::{Invalid, compile_constraint, parse_cidr};
use super::eval::Context;
use super::model::{
    self, Constraint, DefaultVariant, Flag, FlagType, FlagWarning, Lifecycle, Operator, Payload, Prerequisite, Rollout,
    Rule, Segment, Stickiness, ValueType, Variant, VariantOverride,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientFeatures {
    #[serde(default)]
    pub features: Vec<Feature>,
    #[serde(default)]
    pub segments: Option<Vec<UnleashSegment>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Feature {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub strategies: Option<Vec<Strategy>>,
    #[serde(default)]
    pub variants: Option<Vec<UnleashVariant>>,
    #[serde(default)]
    pub dependencies: Option<Vec<Dependency>>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub stale: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    pub constraints: Option<Vec<UnleashConstraint>>,
    #[serde(default)]
    pub segments: Option<Vec<i64>>,
    #[serde(default)]
    pub variants: Option<Vec<UnleashVariant>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashConstraint {
    pub context_name: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub inverted: bool,
    #[serde(default)]
    pub case_insensitive: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashVariant {
    pub name: String,
    #[serde(default)]
    pub weight: u32,
    #[serde(default)]
    pub payload: Option<Payload>,
    #[serde(default)]
    pub stickiness: Option<String>,
    #[serde(default)]
    pub overrides: Option<Vec<UnleashOverride>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashOverride {
    pub context_name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Dependency {
    pub feature: String,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub variants: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UnleashSegment {
    pub id: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub constraints: Vec<UnleashConstraint>,
}

/// The delta API's events, applied in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Event {
    Hydration {
        #[serde(default)]
        features: Vec<Feature>,
        #[serde(default)]
        segments: Vec<UnleashSegment>,
    },
    FeatureUpdated {
        feature: Feature,
    },
    #[serde(rename_all = "camelCase")]
    FeatureRemoved {
        feature_name: String,
    },
    SegmentUpdated {
        segment: UnleashSegment,
    },
    #[serde(rename_all = "camelCase")]
    SegmentRemoved {
        segment_id: i64,
    },
}

/// Reads either format: `{features, segments}` or the delta API's `{events}`.
pub fn parse(document: &Value) -> Result<ClientFeatures, String> {
    if let Some(events) = document.get("events") {
        let events: Vec<Event> =
            serde_json::from_value(events.clone()).map_err(|e| format!("not Unleash delta events: {e}"))?;
        let mut features: Vec<Feature> = Vec::new();
        let mut segments: Vec<UnleashSegment> = Vec::new();
        for event in events {
            match event {
                Event::Hydration { features: all, segments: all_segments } => {
                    features = all;
                    segments = all_segments;
                }
                Event::FeatureUpdated { feature } => {
                    features.retain(|f| f.name != feature.name);
                    features.push(feature);
                }
                Event::FeatureRemoved { feature_name } => features.retain(|f| f.name != feature_name),
                Event::SegmentUpdated { segment } => {
                    segments.retain(|s| s.id != segment.id);
                    segments.push(segment);
                }
                Event::SegmentRemoved { segment_id } => segments.retain(|s| s.id != segment_id),
            }
        }
        return Ok(ClientFeatures { features, segments: Some(segments) });
    }
    serde_json::from_value(document.clone()).map_err(|e| format!("not Unleash client features: {e}"))
}

/// The flags and segments an Unleash document becomes. What Keel does not support as such is on each flag
/// (`Flag::warnings`), and for segments in `segment_warnings`.
#[derive(Debug, Clone, Default)]
pub struct Import {
    pub flags: Vec<Flag>,
    pub segments: Vec<Segment>,
    /// The warnings about segments, which no flag carries.
    pub segment_warnings: Vec<Invalid>,
}

impl Import {
    /// Every warning, with its pointer into the Unleash document: the segments', then each flag's.
    pub fn warnings(&self) -> Vec<Invalid> {
        let of_flags = self.flags.iter().flat_map(|flag| &flag.warnings);
        self.segment_warnings
            .iter()
            .cloned()
            .chain(of_flags.map(|w| Invalid { pointer: w.source.clone(), message: w.message.clone() }))
            .collect()
    }
}

/// The name of the variant a typed flag imported from Unleash serves when none is chosen, as Unleash names it.
pub const DISABLED_VARIANT: &str = "disabled";

/// The Keel name of an Unleash segment.
pub fn segment_name(id: i64) -> String {
    format!("unleash-segment-{id}")
}

pub fn convert(features: &ClientFeatures, now: DateTime<Utc>) -> Import {
    let mut import = Import::default();
    let mut known_segments = BTreeMap::new();
    for (i, segment) in features.segments.iter().flatten().enumerate() {
        let mut constraints = Vec::new();
        let mut ok = true;
        for (j, c) in segment.constraints.iter().enumerate() {
            match constraint(c, &format!("/segments/{i}/constraints/{j}"), &mut import.segment_warnings) {
                Some(c) => constraints.push(c),
                None => ok = false,
            }
        }
        // A segment with a constraint that never holds makes every strategy using it never match.
        known_segments.insert(segment.id, ok);
        import.segments.push(Segment {
            name: segment_name(segment.id),
            description: segment.name.clone().unwrap_or_default(),
            constraints,
        });
    }
    for (i, feature) in features.features.iter().enumerate() {
        import.flags.push(flag(feature, &format!("/features/{i}"), &known_segments, now));
    }
    import
}

/// Records what a converted flag carries over that Keel does not support as such.
fn warn(warnings: &mut Vec<FlagWarning>, pointer: impl Into<String>, source: impl Into<String>, message: String) {
    warnings.push(FlagWarning { pointer: pointer.into(), source: source.into(), message });
}

fn flag(feature: &Feature, at: &str, segments: &BTreeMap<i64, bool>, now: DateTime<Utc>) -> Flag {
    let strategies = feature.strategies.as_deref().unwrap_or_default();
    let mut flag = Flag::new(&feature.name);
    let mut warnings = Vec::new();
    flag.description = feature.description.clone().unwrap_or_default();
    flag.enabled = feature.enabled;
    // Unleash: a feature with no strategies is on for everyone; with strategies, on when one matches.
    flag.default_value = strategies.is_empty();
    flag.rules = strategies
        .iter()
        .enumerate()
        .map(|(i, s)| rule(s, i, &feature.name, &format!("{at}/strategies/{i}"), segments, &mut warnings))
        .collect();
    let variants = feature.variants.as_deref().unwrap_or_default();
    flag.variants = convert_variants(variants);
    flag.variant_stickiness = variant_stickiness(variants.first().and_then(|v| v.stickiness.as_deref()));
    type_from_payloads(&mut flag, at, &mut warnings);
    flag.prerequisites = feature
        .dependencies
        .iter()
        .flatten()
        .map(|d| Prerequisite {
            flag: d.feature.clone(),
            enabled: d.enabled.unwrap_or(true),
            variants: d.variants.clone().unwrap_or_default(),
        })
        .collect();
    flag.lifecycle = Lifecycle {
        kind: match feature.kind.as_deref() {
            Some("experiment") => FlagType::Experiment,
            Some("operational") => FlagType::Operational,
            Some("kill-switch") => FlagType::KillSwitch,
            Some("permission") => FlagType::Permission,
            _ => FlagType::Release,
        },
        stale_after: feature.stale.unwrap_or(false).then_some(now),
        permanent: false,
    };
    flag.warnings = warnings;
    flag
}

/// Gives the flag the value type its variants' payloads share, with Unleash's `disabled` variant as its default.
fn type_from_payloads(flag: &mut Flag, at: &str, warnings: &mut Vec<FlagWarning>) {
    let all: Vec<&Variant> = flag.variants.iter().chain(flag.rules.iter().flat_map(|r| &r.variants)).collect();
    if all.iter().all(|v| v.payload.is_none()) {
        return;
    }
    let type_of = |payload: &Payload| match payload.kind.as_str() {
        "string" | "csv" => Some(ValueType::String),
        "number" => Some(ValueType::Number),
        "json" => {
            serde_json::from_str::<Value>(&payload.value).ok().filter(Value::is_object).map(|_| ValueType::Object)
        }
        _ => None,
    };
    let types: Vec<Option<ValueType>> = all.iter().map(|v| v.payload.as_ref().and_then(type_of)).collect();
    let Some(Some(value_type)) = types.first().copied().filter(|first| types.iter().all(|t| t == first)) else {
        warn(
            warnings,
            "/variants",
            format!("{at}/variants"),
            "the variants carry payloads of different types, or some carry none: imported as a boolean flag, so \
             OFREP serves it on or off and Keel's API gives the payload"
                .into(),
        );
        return;
    };
    let empty = match value_type {
        ValueType::String => "",
        ValueType::Object => "{}",
        ValueType::Number
            if all.iter().any(|v| v.payload.as_ref().is_some_and(|p| p.value.trim().parse::<i64>().is_err())) =>
        {
            "0.0"
        }
        _ => "0",
    };
    let kind = if value_type == ValueType::Object { "json" } else { value_type.as_str() };
    flag.value_type = value_type;
    flag.default_variant = Some(DefaultVariant {
        name: DISABLED_VARIANT.into(),
        payload: Some(Payload { kind: kind.into(), value: empty.into() }),
    });
}

fn variant_stickiness(raw: Option<&str>) -> Stickiness {
    match raw {
        None => Stickiness::UnleashDefault,
        Some(raw) => Stickiness::from(raw.to_string()),
    }
}

fn convert_variants(variants: &[UnleashVariant]) -> Vec<Variant> {
    variants
        .iter()
        .map(|v| Variant {
            name: v.name.clone(),
            weight: v.weight,
            payload: v.payload.clone(),
            overrides: v
                .overrides
                .iter()
                .flatten()
                .map(|o| VariantOverride { field: o.context_name.clone(), values: o.values.clone() })
                .collect(),
        })
        .collect()
}

/// A strategy as a rule; one Unleash never matches is a disabled rule, with a warning saying why.
fn rule(
    strategy: &Strategy,
    index: usize,
    feature: &str,
    at: &str,
    segments: &BTreeMap<i64, bool>,
    warnings: &mut Vec<FlagWarning>,
) -> Rule {
    let mut never = None;
    let mut rule = convert_rule(strategy, index, feature, at, segments, warnings, &mut never);
    if let Some((source, message)) = never {
        rule.disabled = true;
        warn(warnings, format!("/rules/{index}"), source, format!("{message}; Unleash never matches this strategy"));
    }
    rule
}

/// The rule a strategy becomes. `never` is set (to a pointer and why) when Unleash never matches the strategy.
fn convert_rule(
    strategy: &Strategy,
    index: usize,
    feature: &str,
    at: &str,
    segments: &BTreeMap<i64, bool>,
    warnings: &mut Vec<FlagWarning>,
    never: &mut Option<(String, String)>,
) -> Rule {
    let mut never_matches = |pointer: String, message: String| {
        never.get_or_insert((pointer, message));
    };
    let param = |name: &str| -> Option<String> {
        match strategy.parameters.as_ref()?.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let mut constraints = Vec::new();
    for (j, c) in strategy.constraints.iter().flatten().enumerate() {
        let mut problems = Vec::new();
        match constraint(c, &format!("{at}/constraints/{j}"), &mut problems) {
            Some(c) => constraints.push(c),
            None => {
                let pointer = problems.first().map_or(format!("{at}/constraints/{j}"), |p| p.pointer.clone());
                let message = problems.first().map_or(String::new(), |p| p.message.clone());
                never_matches(pointer, format!("{message} (the constraint is left out of the rule)"));
            }
        }
    }
    let mut rollout = None;
    // Unleash compares the bucket (1 to 100) with the percentage, so one past either end means none or everyone.
    let mut percentage = |name: &str| {
        let raw = param(name).and_then(|p| p.trim().parse::<f64>().ok()).filter(|p| p.is_finite())?;
        let clamped = raw.clamp(0.0, 100.0);
        if clamped != raw {
            warn(
                warnings,
                format!("/rules/{index}/rollout/percentage"),
                format!("{at}/parameters/{name}"),
                format!(
                    "a rollout of {raw}% is outside 0 to 100; imported as {clamped}%, which Unleash does the same as"
                ),
            );
        }
        Some(clamped)
    };
    match strategy.name.as_str() {
        "default" => {}
        "userWithId" => match param("userIds") {
            Some(ids) => constraints.push(Constraint {
                field: model::USER_ID.into(),
                operator: Operator::In,
                values: ids.split(',').map(|id| id.trim().to_string()).collect(),
                inverted: false,
                case_insensitive: false,
            }),
            None => never_matches(format!("{at}/parameters"), "userWithId without userIds".into()),
        },
        "remoteAddress" => {
            let ips = param("IPs").unwrap_or_default();
            if ips.trim().is_empty() {
                never_matches(format!("{at}/parameters"), "remoteAddress without IPs".into());
            }
            let mut values = Vec::new();
            for ip in ips.split(',').map(str::trim).filter(|ip| !ip.is_empty()) {
                if parse_cidr(ip).is_some() {
                    values.push(ip.to_string());
                } else {
                    warn(
                        warnings,
                        format!("/rules/{index}/constraints/{}/values", constraints.len()),
                        format!("{at}/parameters/IPs"),
                        format!("`{ip}` is not an address or CIDR block; Unleash ignores it, and so does Keel"),
                    );
                }
            }
            constraints.push(Constraint {
                field: model::REMOTE_ADDRESS.into(),
                operator: Operator::InCidr,
                values,
                inverted: false,
                case_insensitive: false,
            });
        }
        name @ ("gradualRolloutUserId" | "gradualRolloutSessionId" | "gradualRolloutRandom") => {
            let Some(percentage) = percentage("percentage") else {
                never_matches(format!("{at}/parameters/percentage"), format!("{name} without a valid percentage"));
                return finish(strategy, index, constraints, Vec::new(), None);
            };
            let stickiness = match name {
                "gradualRolloutUserId" => Stickiness::Field(model::USER_ID.into()),
                "gradualRolloutSessionId" => Stickiness::Field(model::SESSION_ID.into()),
                _ => Stickiness::Random,
            };
            let group_id = param("groupId");
            if group_id.is_none() && name != "gradualRolloutRandom" {
                never_matches(format!("{at}/parameters/groupId"), format!("{name} without a groupId"));
            }
            rollout = Some(Rollout { percentage, stickiness, group_id });
        }
        "flexibleRollout" => {
            let Some(percentage) = percentage("rollout") else {
                never_matches(format!("{at}/parameters/rollout"), "flexibleRollout without a valid rollout".into());
                return finish(strategy, index, constraints, Vec::new(), None);
            };
            let stickiness = Stickiness::from(param("stickiness").unwrap_or_else(|| "default".into()));
            rollout = Some(Rollout {
                percentage,
                stickiness,
                group_id: Some(param("groupId").unwrap_or_else(|| feature.to_string())),
            });
        }
        other => never_matches(
            format!("{at}/name"),
            format!("strategy `{other}` has no Keel equivalent (hostname and custom strategies)"),
        ),
    }
    let mut segment_names = Vec::new();
    for (j, id) in strategy.segments.iter().flatten().enumerate() {
        match segments.get(id) {
            Some(true) => segment_names.push(segment_name(*id)),
            Some(false) => {
                never_matches(format!("{at}/segments/{j}"), format!("segment {id} has a constraint that never holds"))
            }
            None => never_matches(format!("{at}/segments/{j}"), format!("segment {id} does not exist")),
        }
    }
    let variants = strategy.variants.as_deref().unwrap_or_default();
    // Strategy variants bucket on the strategy's stickiness and group id: give them a rollout to carry those.
    if !variants.is_empty() && rollout.is_none() {
        rollout = Some(Rollout {
            percentage: 100.0,
            stickiness: Stickiness::from(param("stickiness").unwrap_or_else(|| "default".into())),
            group_id: Some(param("groupId").unwrap_or_else(|| feature.to_string())),
        });
    }
    finish(strategy, index, constraints, segment_names, rollout)
}

fn finish(
    strategy: &Strategy,
    index: usize,
    constraints: Vec<Constraint>,
    segments: Vec<String>,
    rollout: Option<Rollout>,
) -> Rule {
    Rule {
        id: strategy.id.clone().unwrap_or_else(|| format!("{}-{index}", strategy.name)),
        constraints,
        segments,
        rollout,
        variants: convert_variants(strategy.variants.as_deref().unwrap_or_default()),
        starts_at: None,
        ends_at: None,
        disabled: false,
    }
}

/// An Unleash constraint as a Keel constraint, or `None` (with the reason in `problems`) when it never holds in
/// Unleash: an unknown operator, or a value Unleash cannot parse.
fn constraint(c: &UnleashConstraint, at: &str, problems: &mut Vec<Invalid>) -> Option<Constraint> {
    let Ok(operator) = serde_json::from_value::<Operator>(Value::String(c.operator.clone())) else {
        problems
            .push(Invalid { pointer: format!("{at}/operator"), message: format!("unknown operator `{}`", c.operator) });
        return None;
    };
    let values =
        if operator.single_valued() { c.value.iter().cloned().collect() } else { c.values.clone().unwrap_or_default() };
    let mut values: Vec<String> = values;
    if operator == Operator::InCidr {
        // Unleash skips entries that are not addresses or blocks.
        values.retain(|v| parse_cidr(v).is_some());
    }
    let converted = Constraint {
        field: c.context_name.clone(),
        operator,
        values,
        inverted: c.inverted,
        // Unleash honours case-insensitivity only for the string and regex operators.
        case_insensitive: c.case_insensitive
            && matches!(
                operator,
                Operator::StrStartsWith | Operator::StrEndsWith | Operator::StrContains | Operator::Regex
            ),
    };
    let before = problems.len();
    compile_constraint(converted.clone(), at, true, problems);
    (problems.len() == before).then_some(converted)
}

/// An Unleash SDK context (`userId`, `sessionId`, `remoteAddress`, `environment`, `appName`, `currentTime`,
/// `properties`) as a Keel context. Null and non-string values are absent.
pub fn context(unleash: &Value) -> Context {
    let text = |name: &str| unleash.get(name).and_then(Value::as_str).map(str::to_string);
    Context {
        organization_id: None,
        user_id: text("userId"),
        environment: text("environment"),
        session_id: text("sessionId"),
        remote_address: text("remoteAddress"),
        app_name: text("appName"),
        current_time: text("currentTime"),
        attributes: unleash
            .get("properties")
            .and_then(Value::as_object)
            .map(|properties| {
                properties.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect()
            })
            .unwrap_or_default(),
    }
}
