//! Evaluation: a compiled snapshot of every flag answers for a context without allocating. The order, first
//! decision wins: unknown flag, kill switch, environment, prerequisites, live override, block list, target users,
//! allow list, rules in order, default. `explain` runs the same code and records every step.

use super::compile::{
    CompiledConstraint, CompiledFlag, CompiledRollout, CompiledRule, CompiledVariants, Field, Invalid,
    SegmentConstraints, Sticky, Test, compile_flag,
};
use super::hash;
use super::model::{Flag, Operator, OverrideAction, Payload, Prerequisite, Segment, ValueType, Variant};
use chrono::{DateTime, Utc};
use foldhash::HashMap;
use serde::Deserialize;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// What a flag is evaluated for. The API fills organization, user and environment from the caller's token and the
/// deployment, never from the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub organization_id: Option<String>,
    pub user_id: Option<String>,
    pub environment: Option<String>,
    pub session_id: Option<String>,
    pub remote_address: Option<String>,
    pub app_name: Option<String>,
    /// RFC 3339; the evaluation instant when absent.
    pub current_time: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl Context {
    fn get(&self, field: &Field) -> Option<&str> {
        match field {
            Field::Organization => self.organization_id.as_deref(),
            Field::User => self.user_id.as_deref(),
            Field::Environment => self.environment.as_deref(),
            Field::Session => self.session_id.as_deref(),
            Field::RemoteAddress => self.remote_address.as_deref(),
            Field::AppName => self.app_name.as_deref(),
            Field::CurrentTime => self.current_time.as_deref(),
            Field::Attribute(name) => self.attributes.get(name).map(String::as_str),
        }
    }
}

/// Why an answer is what it is. Keel's reasons are finer than OpenFeature's; `open_feature` maps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    FlagNotFound,
    Error,
    Killed,
    EnvironmentOff,
    PrerequisiteFailed,
    Override,
    Blocked,
    TargetUser,
    AllowList,
    Rule,
    Rollout,
    Default,
    Static,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FlagNotFound => "flag_not_found",
            Reason::Error => "error",
            Reason::Killed => "killed",
            Reason::EnvironmentOff => "environment_off",
            Reason::PrerequisiteFailed => "prerequisite_failed",
            Reason::Override => "override",
            Reason::Blocked => "blocked",
            Reason::TargetUser => "target_user",
            Reason::AllowList => "allow_list",
            Reason::Rule => "rule",
            Reason::Rollout => "rollout",
            Reason::Default => "default",
            Reason::Static => "static",
        }
    }

    /// OpenFeature's resolution reason.
    pub fn open_feature(self) -> &'static str {
        match self {
            Reason::FlagNotFound | Reason::Error => "ERROR",
            Reason::Killed | Reason::EnvironmentOff | Reason::PrerequisiteFailed => "DISABLED",
            Reason::Override | Reason::Blocked | Reason::TargetUser | Reason::AllowList | Reason::Rule => {
                "TARGETING_MATCH"
            }
            Reason::Rollout => "SPLIT",
            Reason::Default => "DEFAULT",
            Reason::Static => "STATIC",
        }
    }
}

/// OpenFeature's error codes that Keel's answers can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    FlagNotFound,
    /// The stored flag does not compile (written by an older or newer Keel, or by hand).
    ParseError,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::General => "GENERAL",
        }
    }
}

/// One answer. Borrowed from the snapshot, so evaluating allocates nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'s> {
    /// Whether the flag is on for the context (Unleash's `isEnabled`). A boolean flag's value.
    pub value: bool,
    /// The variant chosen when the flag is on and a variant list applies (Unleash's variant).
    pub variant: Option<&'s Variant>,
    /// The flag's default variant, served when none was chosen.
    pub default_variant: Option<&'s Variant>,
    pub value_type: ValueType,
    pub reason: Reason,
    /// The rule that decided, when one did.
    pub rule_id: Option<&'s str>,
    /// The flag's version (0 for an unknown flag).
    pub version: u64,
    pub error: Option<(ErrorCode, &'s str)>,
}

/// The variant names of a boolean flag that has no default variant and chose none (flagd's names).
pub const ON: &str = "on";
pub const OFF: &str = "off";

impl<'s> Evaluation<'s> {
    #[inline(always)]
    fn off(reason: Reason, flag: &'s CompiledFlag) -> Self {
        Self {
            value: false,
            variant: None,
            default_variant: flag.default_variant.as_ref(),
            value_type: flag.value_type,
            reason,
            rule_id: None,
            version: flag.version,
            error: None,
        }
    }

    fn failed(code: ErrorCode, message: &'s str, version: u64) -> Self {
        Self {
            value: false,
            variant: None,
            default_variant: None,
            value_type: ValueType::Boolean,
            reason: Reason::Error,
            rule_id: None,
            version,
            error: Some((code, message)),
        }
    }

    /// The variant's name, or Unleash's `disabled` when there is none.
    pub fn variant_name(&self) -> &'s str {
        self.variant.map_or("disabled", |v| v.name.as_str())
    }

    /// The variant served: the one chosen, else the flag's default variant.
    pub fn served_variant(&self) -> Option<&'s Variant> {
        self.variant.or(self.default_variant)
    }

    /// The served variant's name, else `on` or `off`: every answer that is not an error names a variant.
    pub fn served_name(&self) -> &'s str {
        match self.served_variant() {
            Some(variant) => variant.name.as_str(),
            None if self.value => ON,
            None => OFF,
        }
    }

    /// The value in the flag's type: a boolean flag's on/off, else the served variant's payload (a string flag's
    /// variant without a payload serves its name). `None` only for an answer that has no value of its type: an
    /// error of a flag whose type is unknown is `false` (fails closed), and a flag that compiled always has one.
    pub fn typed_value(&self) -> Option<serde_json::Value> {
        if self.value_type == ValueType::Boolean {
            return Some(serde_json::Value::Bool(self.value));
        }
        let variant = self.served_variant()?;
        match (&variant.payload, self.value_type) {
            (None, ValueType::String) => Some(serde_json::Value::String(variant.name.clone())),
            (Some(payload), _) => payload_value(payload),
            (None, _) => None,
        }
    }
}

/// A payload as a JSON value: `string` and `csv` a string, `number` a number, `json` its JSON.
pub fn payload_value(payload: &Payload) -> Option<serde_json::Value> {
    match payload.kind.as_str() {
        "string" | "csv" => Some(serde_json::Value::String(payload.value.clone())),
        "number" => number(payload.value.trim()),
        "json" => serde_json::from_str(&payload.value).ok(),
        _ => None,
    }
}

/// A number payload as it is written: an integer when written as one (`2`), else a float (`2.0`, `1e3`, which JSON
/// carries with a fraction). SDKs tell the two apart (Python's and Java's refuse `2` for a float and `2.0` for an
/// integer), so the flag's author decides which one the flag serves.
fn number(raw: &str) -> Option<serde_json::Value> {
    if let Ok(integer) = raw.parse::<i64>() {
        return Some(serde_json::Value::from(integer));
    }
    let float = raw.parse::<f64>().ok().filter(|f| f.is_finite())?;
    serde_json::Number::from_f64(float).map(serde_json::Value::Number)
}

/// One step of an explanation: what was checked, whether it decided, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Step {
    pub stage: &'static str,
    pub decided: bool,
    pub detail: String,
}

/// Receives the steps of an evaluation. `()` ignores them at no cost.
trait Trace {
    fn step(&mut self, stage: &'static str, decided: bool, detail: impl FnOnce() -> String);
}

impl Trace for () {
    #[inline(always)]
    fn step(&mut self, _: &'static str, _: bool, _: impl FnOnce() -> String) {}
}

impl Trace for Vec<Step> {
    fn step(&mut self, stage: &'static str, decided: bool, detail: impl FnOnce() -> String) {
        self.push(Step { stage, decided, detail: detail() });
    }
}

/// A flag in a snapshot: two words, so the map evaluation looks flags up in stays small.
#[derive(Debug, Clone)]
enum Entry {
    /// Shared with the snapshots refreshed from this one while the flag's stored version stays the same.
    Ready(Arc<Compiled>),
    /// The stored flag does not compile; it answers ERROR (PARSE_ERROR) with the stored version, so the write
    /// that broke it can be found, and the others are unaffected.
    Broken(Arc<Broken>),
}

#[derive(Debug)]
struct Compiled {
    flag: CompiledFlag,
    kept: Kept,
}

#[derive(Debug)]
struct Broken {
    message: String,
    version: u64,
    kept: Kept,
}

/// What decides whether a refresh may keep an entry.
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// The stored item's version when it was compiled.
    stored_version: u64,
    /// Its rules reference segments, so a change to the segments recompiles it.
    uses_segments: bool,
}

impl Entry {
    fn kept(&self) -> Kept {
        match self {
            Entry::Ready(compiled) => compiled.kept,
            Entry::Broken(broken) => broken.kept,
        }
    }
}

/// One stored flag as the store lists it: the item's version, and the document, decoded only when it changed.
#[derive(Debug, Clone, Copy)]
pub struct StoredFlag<'a> {
    pub key: &'a str,
    pub version: u64,
    pub document: &'a serde_json::Value,
}

/// What a refresh did: flags whose compiled form was kept, and flags decoded and compiled anew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub reused: usize,
    pub compiled: usize,
}

/// Every live (unarchived) flag, compiled. Immutable; a refresh builds a new one, keeping the compiled form of
/// every flag whose stored version did not change.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Shared keys: a refresh copies the map without copying a string.
    flags: HashMap<Arc<str>, Entry>,
    /// Archived flags by stored version, so a refresh skips them without decoding them again.
    archived: HashMap<Arc<str>, u64>,
    segments: BTreeMap<String, Segment>,
}

impl Snapshot {
    /// Compiles every unarchived flag. A flag that does not compile is kept as an ERROR answer rather than
    /// failing the whole snapshot; so is a rule referencing a missing segment.
    pub fn build(flags: impl IntoIterator<Item = Flag>, segments: &BTreeMap<String, Segment>) -> Self {
        let mut snapshot = Snapshot { segments: segments.clone(), ..Snapshot::default() };
        let mut compiled_segments = SegmentConstraints::new(segments, false);
        for flag in flags {
            let (key, version) = (Arc::from(flag.key.as_str()), flag.version);
            if flag.archived {
                snapshot.archived.insert(key, version);
            } else {
                snapshot.flags.insert(key.clone(), compile_entry(flag, key, version, &mut compiled_segments));
            }
        }
        snapshot
    }

    /// The snapshot of the stored flags now: a flag whose stored version is the one this snapshot compiled (and,
    /// if it uses segments, whose segments are unchanged) keeps its compiled form without even being decoded; the
    /// others are decoded and compiled. A document that does not decode answers ERROR (PARSE_ERROR), as one that
    /// does not compile does.
    pub fn refresh<'a>(
        &self,
        stored: impl IntoIterator<Item = StoredFlag<'a>>,
        segments: BTreeMap<String, Segment>,
    ) -> (Snapshot, Refreshed) {
        let segments_unchanged = segments == self.segments;
        let mut compiled_segments = SegmentConstraints::new(&segments, false);
        let mut counts = Refreshed::default();
        // Start from this snapshot's entries and replace what changed: copying the map shares the keys and the
        // compiled flags, so an unchanged flag costs a lookup.
        let mut flags = self.flags.clone();
        let mut archived = HashMap::default();
        let stored: Vec<StoredFlag<'a>> = stored.into_iter().collect();
        // Live flags among the stored ones: fewer entries than that means some were removed from the table.
        let mut live = 0;
        for item in &stored {
            if let Some((key, version)) = self.archived.get_key_value(item.key)
                && *version == item.version
            {
                counts.reused += 1;
                archived.insert(key.clone(), *version);
                continue;
            }
            if let Some(kept) = self.flags.get(item.key).map(Entry::kept)
                && kept.stored_version == item.version
                && (segments_unchanged || !kept.uses_segments)
            {
                counts.reused += 1;
                live += 1;
                continue;
            }
            counts.compiled += 1;
            let key: Arc<str> = Arc::from(item.key);
            let entry = match Flag::deserialize(item.document) {
                Ok(flag) if flag.archived => {
                    flags.remove(item.key);
                    archived.insert(key, item.version);
                    continue;
                }
                Ok(flag) => {
                    // Group ids default to the document's key, as in `build`, even should the item's differ.
                    let group_key = if *key == *flag.key { key.clone() } else { Arc::from(flag.key.as_str()) };
                    compile_entry(flag, group_key, item.version, &mut compiled_segments)
                }
                Err(error) => Entry::Broken(Arc::new(Broken {
                    message: format!("the stored document does not decode: {error}"),
                    version: item.version,
                    kept: Kept { stored_version: item.version, uses_segments: false },
                })),
            };
            live += 1;
            flags.insert(key, entry);
        }
        if flags.len() > live {
            // Flags that are no longer stored at all (removed by hand): rare, so only then is a set built.
            let keys: foldhash::HashSet<&str> = stored.iter().map(|item| item.key).collect();
            flags.retain(|key, _| keys.contains(&**key));
        }
        (Snapshot { flags, archived, segments }, counts)
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Every flag key, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.flags.keys().map(|key| &**key).collect();
        keys.sort_unstable();
        keys
    }

    pub fn evaluate(&self, key: &str, context: &Context, now: DateTime<Utc>) -> Evaluation<'_> {
        self.run::<true>(key, context, now, true, &mut ())
    }

    /// Whether the flag is on for the context: the same decision as `evaluate`, without choosing a variant.
    pub fn is_enabled(&self, key: &str, context: &Context, now: DateTime<Utc>) -> bool {
        self.run::<false>(key, context, now, true, &mut ()).value
    }

    /// The same evaluation, with every step recorded.
    pub fn explain(&self, key: &str, context: &Context, now: DateTime<Utc>) -> (Evaluation<'_>, Vec<Step>) {
        let mut steps = Vec::new();
        let evaluation = self.run::<true>(key, context, now, true, &mut steps);
        (evaluation, steps)
    }

    #[inline(always)]
    fn entry(&self, key: &str) -> Option<&Entry> {
        self.flags.get(key)
    }

    /// `VARIANT`: choose the variant (false when only the decision is wanted).
    fn run<'s, const VARIANT: bool>(
        &'s self,
        key: &str,
        context: &Context,
        now: DateTime<Utc>,
        with_prerequisites: bool,
        trace: &mut impl Trace,
    ) -> Evaluation<'s> {
        let flag = match self.entry(key) {
            None => {
                trace.step("flag", true, || format!("no flag `{key}`: fails closed"));
                // Keel's own reason, so FLAG_NOT_FOUND is told apart from other errors (OpenFeature: ERROR).
                return Evaluation {
                    reason: Reason::FlagNotFound,
                    ..Evaluation::failed(ErrorCode::FlagNotFound, "flag not found", 0)
                };
            }
            Some(Entry::Broken(broken)) => {
                trace.step("flag", true, || format!("the stored flag does not compile: {}", broken.message));
                return Evaluation::failed(ErrorCode::ParseError, &broken.message, broken.version);
            }
            Some(Entry::Ready(compiled)) => &compiled.flag,
        };
        let version = flag.version;
        trace.step("flag", false, || format!("version {version}"));

        if !flag.enabled {
            trace.step("kill_switch", true, || "the flag is switched off".into());
            return Evaluation::off(Reason::Killed, flag);
        }
        trace.step("kill_switch", false, || "on".into());

        if !flag.environments.is_empty() {
            let env = context.environment.as_deref();
            let targeted = env.is_some_and(|env| flag.environments.iter().any(|e| e == env));
            trace.step("environment", !targeted, || match env {
                Some(env) if targeted => format!("environment `{env}` is targeted"),
                Some(env) => format!("environment `{env}` is not one of {:?}", flag.environments),
                None => "the context has no environment and the flag targets some".into(),
            });
            if !targeted {
                return Evaluation::off(Reason::EnvironmentOff, flag);
            }
        }

        if with_prerequisites {
            for prerequisite in &flag.prerequisites {
                let (satisfied, why) = self.prerequisite_holds(prerequisite, context, now);
                trace.step("prerequisite", !satisfied, || why);
                if !satisfied {
                    return Evaluation::off(Reason::PrerequisiteFailed, flag);
                }
            }
        }

        let org = context.organization_id.as_deref();
        if let Some(override_) = org
            .and_then(|org| flag.overrides.get(org))
            .and_then(|list| list.iter().find(|o| in_force(o.starts_at, o.expires_at, now)))
        {
            trace.step("override", true, || {
                format!("{:?} for this organization: {}", override_.action, override_.reason)
            });
            return match &override_.action {
                OverrideAction::ForcedOn => {
                    on::<VARIANT>(Reason::Override, None, flag.variants.as_ref(), context, flag)
                }
                OverrideAction::ForcedOff => Evaluation::off(Reason::Override, flag),
                OverrideAction::Variant { variant } => Evaluation {
                    variant: flag
                        .variants
                        .as_ref()
                        .and_then(|v| v.variants.iter().find(|candidate| &candidate.name == variant)),
                    ..on::<false>(Reason::Override, None, None, context, flag)
                },
            };
        }

        if let Some(org) = org
            && flag.block_orgs.contains(org)
        {
            trace.step("block_list", true, || "the organization is on the block list".into());
            return Evaluation::off(Reason::Blocked, flag);
        }
        if let Some(user) = context.user_id.as_deref()
            && flag.target_users.contains(user)
        {
            trace.step("target_users", true, || "the user is a target user".into());
            return on::<VARIANT>(Reason::TargetUser, None, flag.variants.as_ref(), context, flag);
        }
        if let Some(org) = org
            && flag.allow_orgs.contains(org)
        {
            trace.step("allow_list", true, || "the organization is on the allow list".into());
            return on::<VARIANT>(Reason::AllowList, None, flag.variants.as_ref(), context, flag);
        }

        for rule in &flag.rules {
            if rule.disabled {
                trace.step("rule", false, || format!("rule `{}` is disabled: it never matches", rule.id));
                continue;
            }
            if !in_force(rule.starts_at, rule.ends_at, now) {
                trace.step("rule", false, || format!("rule `{}` is not in force now", rule.id));
                continue;
            }
            if let Some(why) = &rule.broken {
                trace.step("rule", true, || why.clone());
                return rule_error(rule, flag, why, version);
            }
            if let Some((position, constraint)) = rule.first_failing(|c| c.holds(context, now)) {
                if constraint.is_broken() {
                    trace.step("rule", true, || format!("rule `{}`: constraint {position}: {BROKEN_REGEX}", rule.id));
                    return rule_error(rule, flag, BROKEN_REGEX, version);
                }
                trace.step("rule", false, || format!("rule `{}`: constraint {position} does not hold", rule.id));
                continue;
            }
            if let Some(rollout) = &rule.rollout
                && !rollout.includes(context)
            {
                trace.step("rule", false, || {
                    format!("rule `{}`: matched, but outside its {}% rollout", rule.id, percent(rollout))
                });
                continue;
            }
            trace.step("rule", true, || match &rule.rollout {
                Some(rollout) => format!("rule `{}` matched, inside its {}% rollout", rule.id, percent(rollout)),
                None => format!("rule `{}` matched", rule.id),
            });
            let reason = match &rule.rollout {
                Some(rollout) if rollout.basis_points < hash::FULL => Reason::Rollout,
                _ => Reason::Rule,
            };
            let variants = rule.variants.as_ref().or(flag.variants.as_ref());
            return on::<VARIANT>(reason, Some(rule), variants, context, flag);
        }

        let reason = flag.default_reason;
        trace.step("default", true, || format!("nothing else decided: the default, {}", flag.default_value));
        if flag.default_value {
            on::<VARIANT>(reason, None, flag.variants.as_ref(), context, flag)
        } else {
            Evaluation::off(reason, flag)
        }
    }

    /// One level, as in Unleash: a prerequisite that has prerequisites of its own is never satisfied.
    fn prerequisite_holds(&self, prerequisite: &Prerequisite, context: &Context, now: DateTime<Utc>) -> (bool, String) {
        let name = &prerequisite.flag;
        match self.entry(name) {
            None => (false, format!("prerequisite `{name}` does not exist")),
            Some(Entry::Broken(_)) => (false, format!("prerequisite `{name}` does not compile")),
            Some(Entry::Ready(parent)) if !parent.flag.prerequisites.is_empty() => {
                (false, format!("prerequisite `{name}` has prerequisites of its own, which is not supported"))
            }
            Some(Entry::Ready(_)) => {
                let parent = self.run::<true>(name, context, now, false, &mut ());
                // An ERROR answer's `false` is no real value: expecting the parent off must not be satisfied by it.
                if parent.reason == Reason::Error {
                    return (false, format!("prerequisite `{name}` cannot be evaluated"));
                }
                if parent.value != prerequisite.enabled {
                    return (false, format!("prerequisite `{name}` is {}, not {}", parent.value, prerequisite.enabled));
                }
                let variant = parent.variant_name();
                if !prerequisite.variants.is_empty() && !prerequisite.variants.iter().any(|v| v == variant) {
                    return (
                        false,
                        format!(
                            "prerequisite `{name}` has variant `{variant}`, not one of {:?}",
                            prerequisite.variants
                        ),
                    );
                }
                (true, format!("prerequisite `{name}` holds"))
            }
        }
    }
}

fn compile_entry(flag: Flag, key: Arc<str>, stored_version: u64, segments: &mut SegmentConstraints<'_>) -> Entry {
    let kept = Kept { stored_version, uses_segments: flag.rules.iter().any(|rule| !rule.segments.is_empty()) };
    let version = flag.version;
    match compile_flag(flag, key, segments, false) {
        Ok(flag) => Entry::Ready(Arc::new(Compiled { flag, kept })),
        Err(errors) => Entry::Broken(Arc::new(Broken { message: describe(&errors), version, kept })),
    }
}

// Always inlined: out of line, this and the map lookup in `run` cost a fifth of a one-flag evaluation.
#[inline(always)]
fn on<'s, const VARIANT: bool>(
    reason: Reason,
    rule: Option<&'s CompiledRule>,
    variants: Option<&'s CompiledVariants>,
    context: &Context,
    flag: &'s CompiledFlag,
) -> Evaluation<'s> {
    Evaluation {
        value: true,
        variant: if VARIANT { variants.and_then(|v| v.choose(context)) } else { None },
        default_variant: flag.default_variant.as_ref(),
        value_type: flag.value_type,
        reason,
        rule_id: rule.map(|r| r.id.as_str()),
        version: flag.version,
        error: None,
    }
}

fn percent(rollout: &CompiledRollout) -> f64 {
    f64::from(rollout.basis_points) / 100.0
}

fn in_force(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    start.is_none_or(|start| now >= start) && end.is_none_or(|end| now < end)
}

pub(crate) fn describe(errors: &[Invalid]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.pointer, e.message)).collect::<Vec<_>>().join("; ")
}

/// The value a rollout or variant choice hashes: `None` means the context is never in (a rollout) or a random
/// draw (a variant choice).
fn stickiness_value<'c>(stickiness: &Sticky, context: &'c Context) -> Option<&'c str> {
    match stickiness {
        Sticky::Field(field) => context.get(field),
        Sticky::UnleashDefault => context.user_id.as_deref().or(context.session_id.as_deref()),
        Sticky::Random => None,
    }
}

impl CompiledRollout {
    fn includes(&self, context: &Context) -> bool {
        if self.basis_points == 0 {
            return false;
        }
        let bucket = match (&self.stickiness, stickiness_value(&self.stickiness, context)) {
            (_, Some(value)) => hash::rollout_bucket(&self.group_id, value),
            // A named field the context lacks: never in (Unleash does the same).
            (Sticky::Field(_), None) => return false,
            (Sticky::UnleashDefault | Sticky::Random, None) => hash::random_bucket(),
        };
        bucket < self.basis_points
    }
}

impl CompiledVariants {
    fn choose(&self, context: &Context) -> Option<&Variant> {
        for (field, values, index) in &self.overrides {
            if context.get(field).is_some_and(|value| values.contains(value)) {
                return self.variants.get(*index);
            }
        }
        let target = match stickiness_value(&self.stickiness, context) {
            Some(value) => hash::variant_target(&self.group_id, value, self.total_weight),
            None => hash::random_target(self.total_weight),
        };
        let mut cumulative = 0;
        self.variants.iter().find(|variant| {
            cumulative += variant.weight;
            cumulative >= target
        })
    }
}

/// The ERROR answer of a rule that cannot be evaluated.
fn rule_error<'s>(rule: &'s CompiledRule, flag: &'s CompiledFlag, why: &'s str, version: u64) -> Evaluation<'s> {
    Evaluation {
        rule_id: Some(&rule.id),
        default_variant: flag.default_variant.as_ref(),
        value_type: flag.value_type,
        ..Evaluation::failed(ErrorCode::General, why, version)
    }
}

/// The answer of a rule whose stored regular expression does not compile (written by hand: writes refuse one).
const BROKEN_REGEX: &str = "the stored regular expression does not compile";

impl CompiledConstraint {
    /// Whether the constraint holds; never, inverted or not, when its regular expression does not compile.
    fn holds(&self, context: &Context, now: DateTime<Utc>) -> bool {
        let value: Option<Cow<'_, str>> = match (&self.field, context.get(&self.field)) {
            (_, Some(value)) => Some(Cow::Borrowed(value)),
            (Field::CurrentTime, None) => Some(Cow::Owned(rfc3339(now))),
            (_, None) => None,
        };
        let result = match value {
            // A missing field satisfies only NOT_IN.
            None => match &self.test {
                Test::NotIn(_) => true,
                // Broken: `inverted` makes it not hold either way.
                _ if self.is_broken() => self.inverted,
                _ => false,
            },
            Some(value) => self.test_value(&value),
        };
        result != self.inverted
    }

    /// A regular expression that does not compile (compiled now if it was not yet).
    fn is_broken(&self) -> bool {
        matches!(&self.test, Test::Regex(regex) if regex.compiled().is_none())
    }

    fn test_value(&self, raw: &str) -> bool {
        let folded;
        let value = if self.case_insensitive {
            folded = raw.to_lowercase();
            folded.as_str()
        } else {
            raw
        };
        match &self.test {
            Test::In(set) => set.contains(value),
            Test::NotIn(set) => !set.contains(value),
            Test::StartsWith(prefixes) => prefixes.iter().any(|p| value.starts_with(p.as_str())),
            Test::EndsWith(suffixes) => suffixes.iter().any(|s| value.ends_with(s.as_str())),
            Test::Contains(parts) => parts.iter().any(|p| value.contains(p.as_str())),
            Test::Num(op, expected) => value.trim().parse::<f64>().is_ok_and(|n| compare(*op, n.partial_cmp(expected))),
            Test::Date(op, expected) => DateTime::parse_from_rfc3339(value.trim())
                .is_ok_and(|at| compare(*op, Some(at.with_timezone(&Utc).cmp(expected)))),
            Test::Semver(op, expected) => {
                semver::Version::parse(value.trim()).is_ok_and(|v| compare(*op, Some(v.cmp(expected))))
            }
            // Case folding is compiled into the regex; match the raw value.
            // Broken: `inverted` makes it not hold either way.
            Test::Regex(regex) => regex.compiled().map_or(self.inverted, |regex| regex.is_match(raw)),
            Test::InCidr(blocks) => {
                value.trim().parse::<IpAddr>().is_ok_and(|ip| blocks.iter().any(|block| block.contains(&ip)))
            }
        }
    }
}

/// Out of line on purpose: inlined, LLVM hoisted this date arithmetic out of the rules loop in `run` and did it on
/// every evaluation of every flag with a rule (~35% of a one-constraint evaluation), though it is needed only for a
/// `currentTime` constraint when the context has no current time.
#[cold]
#[inline(never)]
fn rfc3339(now: DateTime<Utc>) -> String {
    now.to_rfc3339()
}

fn compare(op: Operator, ordering: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match (op, ordering) {
        (_, None) => false,
        (Operator::NumEq | Operator::SemverEq, Some(o)) => o == Equal,
        (Operator::NumGt | Operator::SemverGt | Operator::DateAfter, Some(o)) => o == Greater,
        (Operator::NumGte | Operator::SemverGte, Some(o)) => o != Less,
        (Operator::NumLt | Operator::SemverLt | Operator::DateBefore, Some(o)) => o == Less,
        (Operator::NumLte | Operator::SemverLte, Some(o)) => o != Greater,
        _ => false,
    }
}
