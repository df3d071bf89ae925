//! Checks flags and turns them into the form evaluation runs on: every constraint value parsed once (numbers,
//! dates, versions, CIDR blocks, regexes), lists turned into sets, segments resolved into their rules. Checking and
//! compiling are one pass, so a flag that compiles is exactly a flag that is valid.

use super::eval::Reason;
use super::model::{
    self, Constraint, Flag, MAX_CONSTRAINTS, MAX_DESCRIPTION_LEN, MAX_KEY_LEN, MAX_LIST, MAX_OVERRIDES,
    MAX_PREREQUISITES, MAX_RULES, MAX_SEGMENTS, MAX_VALUE_LEN, MAX_VALUES, MAX_VARIANTS, MAX_WARNINGS, Operator,
    Override, OverrideAction, Payload, Prerequisite, Rollout, Rule, Segment, Stickiness, ValueType, Variant,
};
use chrono::{DateTime, Utc};
use foldhash::HashSet;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::IpAddr;
use std::sync::Arc;

/// The pointer of rule `i`, formatted only into an error.
#[derive(Clone, Copy)]
struct RuleAt(usize);

impl Display for RuleAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/rules/{}", self.0)
    }
}

/// Largest variant weight; Unleash's weights go to 1000.
pub const MAX_WEIGHT: u32 = 1000;

/// What is wrong with a flag, and where (a JSON pointer into the flag document). Pointers are passed down as
/// `impl Display` (usually `format_args!`) and only formatted into a `String` when there is an error: formatting one
/// per checked value was a quarter of the time `Snapshot::build` took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub pointer: String,
    pub message: String,
}

impl Invalid {
    fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self { pointer: pointer.into(), message: message.into() }
    }
}

/// A context field, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    Organization,
    User,
    Environment,
    Session,
    RemoteAddress,
    AppName,
    CurrentTime,
    Attribute(String),
}

impl Field {
    pub(crate) fn parse(name: &str) -> Self {
        Self::known(name).unwrap_or_else(|| Field::Attribute(name.to_string()))
    }

    /// As `parse`, keeping the name's string for an attribute rather than copying it.
    fn from_name(name: String) -> Self {
        Self::known(&name).unwrap_or(Field::Attribute(name))
    }

    fn known(name: &str) -> Option<Self> {
        Some(match name {
            model::ORGANIZATION_ID => Field::Organization,
            model::USER_ID => Field::User,
            model::ENVIRONMENT => Field::Environment,
            model::SESSION_ID => Field::Session,
            model::REMOTE_ADDRESS => Field::RemoteAddress,
            model::APP_NAME => Field::AppName,
            model::CURRENT_TIME => Field::CurrentTime,
            _ => return None,
        })
    }
}

/// A set of strings; a short list is scanned, a long one hashed.
#[derive(Debug, Clone)]
pub(crate) enum StrSet {
    Few(Vec<String>),
    Many(HashSet<String>),
}

impl StrSet {
    pub(crate) fn new(values: impl IntoIterator<Item = String>) -> Self {
        let values: Vec<String> = values.into_iter().collect();
        if values.len() <= 8 { StrSet::Few(values) } else { StrSet::Many(values.into_iter().collect()) }
    }

    pub(crate) fn contains(&self, value: &str) -> bool {
        match self {
            StrSet::Few(values) => values.iter().any(|v| v == value),
            StrSet::Many(values) => values.contains(value),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Test {
    In(StrSet),
    NotIn(StrSet),
    StartsWith(Vec<String>),
    EndsWith(Vec<String>),
    Contains(Vec<String>),
    Num(Operator, f64),
    Date(Operator, DateTime<Utc>),
    Semver(Operator, semver::Version),
    Regex(LazyRegex),
    InCidr(Vec<IpNet>),
}

/// A regex compiled on first use: compiling costs about 100 µs a pattern, and even checking its syntax was a tenth
/// of a 1,000-flag snapshot's build, while many rules are never reached by a process. Writes compile it first, so
/// a stored pattern that does not compile was written by hand; the rule answers ERROR when it is reached.
#[derive(Debug, Clone)]
pub(crate) struct LazyRegex {
    pattern: String,
    case_insensitive: bool,
    compiled: std::sync::OnceLock<Option<regex::Regex>>,
}

impl LazyRegex {
    fn build(pattern: &str, case_insensitive: bool) -> Result<regex::Regex, regex::Error> {
        regex::RegexBuilder::new(pattern).case_insensitive(case_insensitive).size_limit(1 << 20).build()
    }

    /// The compiled pattern; `None` when it does not compile. Out of line, so that compiling is not inlined into
    /// every evaluation.
    #[inline(never)]
    pub(crate) fn compiled(&self) -> Option<&regex::Regex> {
        self.compiled.get_or_init(|| Self::build(&self.pattern, self.case_insensitive).ok()).as_ref()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledConstraint {
    pub(crate) field: Field,
    pub(crate) test: Test,
    pub(crate) inverted: bool,
    pub(crate) case_insensitive: bool,
}

/// A stickiness with its field resolved.
#[derive(Debug, Clone)]
pub(crate) enum Sticky {
    Field(Field),
    UnleashDefault,
    Random,
}

impl CompiledRule {
    /// The first constraint for which `holds` is false, the rule's own then its segments', with its position in
    /// that order. Loops rather than a chained iterator: that cost a one-constraint evaluation 5%.
    #[inline(always)]
    pub(crate) fn first_failing(
        &self,
        holds: impl Fn(&CompiledConstraint) -> bool,
    ) -> Option<(usize, &CompiledConstraint)> {
        if let Some(found) = self.constraints.iter().enumerate().find(|(_, c)| !holds(c)) {
            return Some(found);
        }
        let mut position = self.constraints.len();
        for segment in &self.segments {
            for constraint in segment.iter() {
                if !holds(constraint) {
                    return Some((position, constraint));
                }
                position += 1;
            }
        }
        None
    }
}

impl From<&Stickiness> for Sticky {
    fn from(stickiness: &Stickiness) -> Self {
        match stickiness {
            Stickiness::Field(name) => Sticky::Field(Field::parse(name)),
            Stickiness::UnleashDefault => Sticky::UnleashDefault,
            Stickiness::Random => Sticky::Random,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRollout {
    /// Hundredths of a percent, 0 to 10000.
    pub(crate) basis_points: u32,
    pub(crate) stickiness: Sticky,
    /// The flag's key unless set: shared, not copied, by the flag's rules and variants.
    pub(crate) group_id: Arc<str>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledVariants {
    pub(crate) variants: Vec<Variant>,
    pub(crate) overrides: Vec<(Field, StrSet, usize)>,
    pub(crate) total_weight: u32,
    pub(crate) stickiness: Sticky,
    pub(crate) group_id: Arc<str>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) id: String,
    /// The rule's own constraints; all must hold, and then those of its segments.
    pub(crate) constraints: Vec<CompiledConstraint>,
    /// The constraints of each segment the rule references, compiled once per snapshot and shared.
    pub(crate) segments: Vec<Arc<[CompiledConstraint]>>,
    pub(crate) rollout: Option<CompiledRollout>,
    pub(crate) variants: Option<CompiledVariants>,
    pub(crate) starts_at: Option<DateTime<Utc>>,
    pub(crate) ends_at: Option<DateTime<Utc>>,
    /// Why the rule cannot be evaluated (a segment that no longer exists); reaching it is an ERROR answer.
    pub(crate) broken: Option<String>,
    /// Never matches (kept so that explain can say so).
    pub(crate) disabled: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledFlag {
    pub(crate) version: u64,
    pub(crate) enabled: bool,
    pub(crate) environments: Vec<String>,
    pub(crate) prerequisites: Vec<Prerequisite>,
    /// By organization; several per organization when scheduled one after another.
    pub(crate) overrides: BTreeMap<String, Vec<Override>>,
    pub(crate) block_orgs: StrSet,
    pub(crate) target_users: StrSet,
    pub(crate) allow_orgs: StrSet,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) variants: Option<CompiledVariants>,
    pub(crate) default_value: bool,
    pub(crate) value_type: ValueType,
    /// Served when evaluation chooses no variant.
    pub(crate) default_variant: Option<Variant>,
    /// The reason of an answer nothing else decided: STATIC when the flag has no targeting and answers everyone
    /// alike, SPLIT (`Rollout`) when it has none but its weighted variants split contexts, else DEFAULT.
    pub(crate) default_reason: Reason,
}

/// The segments rules reference, each compiled on its first reference and then shared by every rule that
/// references it (copying a segment's lists into each rule was a tenth of a 1,000-flag snapshot's build).
pub(crate) struct SegmentConstraints<'a> {
    segments: &'a BTreeMap<String, Segment>,
    /// Compile regexes now (writes), as `compile_constraint`'s `eager`.
    eager: bool,
    /// By name: the constraints, or what is wrong with them (pointers into the segment).
    compiled: foldhash::HashMap<&'a str, Result<Arc<[CompiledConstraint]>, Vec<Invalid>>>,
}

impl<'a> SegmentConstraints<'a> {
    pub(crate) fn new(segments: &'a BTreeMap<String, Segment>, eager: bool) -> Self {
        Self { segments, eager, compiled: foldhash::HashMap::default() }
    }

    /// `None` when no segment has the name.
    fn get(&mut self, name: &str) -> Option<&Result<Arc<[CompiledConstraint]>, Vec<Invalid>>> {
        let (name, segment) = self.segments.get_key_value(name)?;
        let eager = self.eager;
        Some(self.compiled.entry(name.as_str()).or_insert_with(|| {
            let mut errors = Vec::new();
            let constraints: Arc<[CompiledConstraint]> = segment
                .constraints
                .iter()
                .enumerate()
                .filter_map(|(k, c)| {
                    compile_constraint(c.clone(), format_args!("/constraints/{k}"), eager, &mut errors)
                })
                .collect();
            if errors.is_empty() { Ok(constraints) } else { Err(errors) }
        }))
    }
}

/// Checks a flag on its own (everything but references to other flags and segments) and compiles it.
/// Segment references resolve against `segments`; a missing one is reported when `strict`, and otherwise compiles
/// into a rule that answers ERROR when reached (a snapshot must not lose every flag to one deleted segment).
/// Takes the flag by value so that a snapshot moves its strings instead of copying them (allocation was most of the
/// time a 1,000-flag snapshot took to build); `key` is the flag's key, shared with the snapshot's map.
pub(crate) fn compile_flag(
    mut flag: Flag,
    key: Arc<str>,
    segments: &mut SegmentConstraints<'_>,
    strict: bool,
) -> Result<CompiledFlag, Vec<Invalid>> {
    let mut errors = Vec::new();
    check_key(&flag.key, "/key", &mut errors);
    check_len(&flag.description, MAX_DESCRIPTION_LEN, "/description", &mut errors);
    check_count(flag.rules.len(), MAX_RULES, "/rules", &mut errors);
    check_count(flag.prerequisites.len(), MAX_PREREQUISITES, "/prerequisites", &mut errors);
    check_count(flag.overrides.len(), MAX_OVERRIDES, "/overrides", &mut errors);
    for (name, list) in [
        ("environments", &flag.environments),
        ("allow_orgs", &flag.allow_orgs),
        ("block_orgs", &flag.block_orgs),
        ("target_users", &flag.target_users),
    ] {
        check_count(list.len(), MAX_LIST, format_args!("/{name}"), &mut errors);
        for (i, value) in list.iter().enumerate() {
            check_value(value, format_args!("/{name}/{i}"), &mut errors);
        }
    }
    if let Some(org) = flag.allow_orgs.iter().find(|org| flag.block_orgs.contains(org)) {
        errors.push(Invalid::new("/allow_orgs", format!("organization `{org}` is on both the allow and block lists")));
    }

    let value_type = flag.value_type;
    let default_variant = compile_default_variant(&flag, strict, &mut errors);
    // The overrides below are checked against the compiled list's names, so the list moves rather than copies.
    let payloads = Payloads { value_type, strict };
    let variants = compile_variants(
        std::mem::take(&mut flag.variants),
        payloads,
        &flag.variant_stickiness,
        &key,
        "/variants",
        "/variant_stickiness",
        &mut errors,
    );
    check_count(flag.warnings.len(), MAX_WARNINGS, "/warnings", &mut errors);
    for (i, warning) in flag.warnings.iter().enumerate() {
        for (name, text) in [("pointer", &warning.pointer), ("source", &warning.source), ("message", &warning.message)]
        {
            check_value(text, format_args!("/warnings/{i}/{name}"), &mut errors);
        }
    }
    // Whether the flag has any targeting, before its rules move into the compiled form.
    let targeted = !(flag.rules.is_empty()
        && flag.overrides.is_empty()
        && flag.allow_orgs.is_empty()
        && flag.block_orgs.is_empty()
        && flag.target_users.is_empty()
        && flag.prerequisites.is_empty()
        && flag.environments.is_empty());
    let mut rules: Vec<CompiledRule> = Vec::with_capacity(flag.rules.len());
    for (i, rule) in std::mem::take(&mut flag.rules).into_iter().enumerate() {
        let at = RuleAt(i);
        if rule.id.is_empty() || rule.id.len() > MAX_KEY_LEN {
            errors.push(Invalid::new(format!("{at}/id"), format!("a rule id has 1 to {MAX_KEY_LEN} characters")));
        } else if rules.iter().any(|other| other.id == rule.id) {
            errors.push(Invalid::new(format!("{at}/id"), format!("rule id `{}` is used twice", rule.id)));
        }
        check_window(rule.starts_at, rule.ends_at, at, &mut errors);
        check_count(rule.constraints.len(), MAX_CONSTRAINTS, format_args!("{at}/constraints"), &mut errors);
        check_count(rule.segments.len(), MAX_SEGMENTS, format_args!("{at}/segments"), &mut errors);
        let Rule { id, constraints, segments: names, rollout, variants, starts_at, ends_at, disabled } = rule;
        let compiled: Vec<CompiledConstraint> = constraints
            .into_iter()
            .enumerate()
            .filter_map(|(j, c)| compile_constraint(c, format_args!("{at}/constraints/{j}"), strict, &mut errors))
            .collect();
        let mut broken = None;
        let mut shared = Vec::with_capacity(names.len());
        for (j, name) in names.iter().enumerate() {
            match segments.get(name) {
                Some(Ok(constraints)) => shared.push(constraints.clone()),
                Some(Err(problems)) => errors.extend(problems.iter().map(|problem| {
                    Invalid::new(
                        format!("{at}/segments/{j}"),
                        format!("segment `{name}`: {}: {}", problem.pointer, problem.message),
                    )
                })),
                None if strict => {
                    errors.push(Invalid::new(format!("{at}/segments/{j}"), format!("no segment `{name}`")))
                }
                None => broken = Some(format!("rule `{id}` references segment `{name}`, which does not exist")),
            }
        }
        let compiled_rollout = rollout.as_ref().and_then(|r| compile_rollout(r, &key, at, &mut errors));
        // A rule's variants are bucketed as its rollout is, else as the flag's.
        let (stickiness, group_id) = match (&rollout, &compiled_rollout) {
            (Some(r), Some(compiled)) => (&r.stickiness, &compiled.group_id),
            (Some(r), None) => (&r.stickiness, &key),
            (None, _) => (&flag.variant_stickiness, &key),
        };
        let variants = compile_variants(
            variants,
            payloads,
            stickiness,
            group_id,
            format_args!("{at}/variants"),
            format_args!("{at}/rollout/stickiness"),
            &mut errors,
        );
        rules.push(CompiledRule {
            id,
            constraints: compiled,
            segments: shared,
            rollout: compiled_rollout,
            variants,
            starts_at,
            ends_at,
            broken,
            disabled,
        });
    }

    for (i, o) in flag.overrides.iter().enumerate() {
        let at = format!("/overrides/{i}");
        check_value(&o.org_id, format_args!("{at}/org_id"), &mut errors);
        if o.org_id.is_empty() {
            errors.push(Invalid::new(format!("{at}/org_id"), "org_id is required"));
        }
        if o.reason.trim().is_empty() {
            errors.push(Invalid::new(format!("{at}/reason"), "an override needs a reason"));
        }
        check_len(&o.reason, MAX_DESCRIPTION_LEN, format_args!("{at}/reason"), &mut errors);
        check_window(o.starts_at, o.expires_at, &at, &mut errors);
        if let OverrideAction::Variant { variant } = &o.action
            && !variants.as_ref().is_some_and(|list| list.variants.iter().any(|v| &v.name == variant))
        {
            errors.push(Invalid::new(format!("{at}/action/variant"), format!("the flag has no variant `{variant}`")));
        }
        if flag.overrides[..i].iter().any(|other| other.org_id == o.org_id && windows_overlap(other, o)) {
            errors.push(Invalid::new(
                format!("{at}/org_id"),
                format!("organization `{}` already has an override in force at the same time", o.org_id),
            ));
        }
    }

    for (i, p) in flag.prerequisites.iter().enumerate() {
        if p.flag == flag.key {
            errors.push(Invalid::new(format!("/prerequisites/{i}/flag"), "a flag cannot be its own prerequisite"));
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let default_reason = match (targeted, flag.default_value && variants.as_ref().is_some_and(splits)) {
        (true, _) => Reason::Default,
        (false, true) => Reason::Rollout,
        (false, false) => Reason::Static,
    };
    let mut overrides: BTreeMap<String, Vec<Override>> = BTreeMap::new();
    for o in flag.overrides {
        overrides.entry(o.org_id.clone()).or_default().push(o);
    }
    Ok(CompiledFlag {
        version: flag.version,
        enabled: flag.enabled,
        environments: flag.environments,
        prerequisites: flag.prerequisites,
        overrides,
        block_orgs: StrSet::new(flag.block_orgs),
        target_users: StrSet::new(flag.target_users),
        allow_orgs: StrSet::new(flag.allow_orgs),
        rules,
        variants,
        default_value: flag.default_value,
        value_type,
        default_variant,
        default_reason,
    })
}

/// Checks a flag before it is written: everything `Snapshot::build` needs, strictly (every referenced segment must
/// exist), and its place among the other flags: each prerequisite exists, is live, and has no prerequisites of its
/// own (one level, as in Unleash, so a cycle is impossible); a flag others depend on may not get prerequisites.
/// `flags` holds the other flags by key (this flag's stored version may be among them and is ignored).
pub fn validate_flag(
    flag: &Flag,
    flags: &BTreeMap<String, Flag>,
    segments: &BTreeMap<String, Segment>,
) -> Result<(), Vec<Invalid>> {
    let mut errors = check_flag(flag, segments);
    errors.extend(check_neighbours(flag, flags));
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// The flag's place among the others (the part of `validate_flag` a lenient import may carry over, since
/// evaluation treats each of these as Unleash does: the prerequisite is never satisfied).
pub fn check_neighbours(flag: &Flag, flags: &BTreeMap<String, Flag>) -> Vec<Invalid> {
    let mut errors = Vec::new();
    for (i, p) in flag.prerequisites.iter().enumerate() {
        let at = format!("/prerequisites/{i}/flag");
        match flags.get(&p.flag).filter(|other| other.key != flag.key) {
            None => errors.push(Invalid::new(at, format!("no flag `{}`", p.flag))),
            Some(other) if other.archived => errors.push(Invalid::new(at, format!("flag `{}` is archived", p.flag))),
            Some(other) if other.prerequisites.iter().any(|pp| pp.flag == flag.key) => errors.push(Invalid::new(
                at,
                format!("prerequisite cycle: `{}` -> `{}` -> `{}`", flag.key, p.flag, flag.key),
            )),
            Some(other) if !other.prerequisites.is_empty() => errors.push(Invalid::new(
                at,
                format!("flag `{}` has prerequisites of its own; prerequisites are one level deep", p.flag),
            )),
            Some(other) => {
                if let Some(variant) = p.variants.iter().find(|v| {
                    v.as_str() != "disabled"
                        && !other.variants.iter().any(|ov| &ov.name == *v)
                        && !other.rules.iter().any(|r| r.variants.iter().any(|rv| &rv.name == *v))
                }) {
                    errors.push(Invalid::new(
                        format!("/prerequisites/{i}/variants"),
                        format!("flag `{}` has no variant `{variant}`", p.flag),
                    ));
                }
            }
        }
    }
    // This flag's own stored version is not a dependent of it (a self-reference is reported above).
    if !flag.prerequisites.is_empty()
        && let Some(dependent) = flags.values().find(|other| {
            other.key != flag.key
                && !other.archived
                && other.prerequisites.iter().any(|p| p.flag == flag.key)
                // A dependent that is also a prerequisite is a cycle, reported as such above.
                && !flag.prerequisites.iter().any(|p| p.flag == other.key)
        })
    {
        errors.push(Invalid::new(
            "/prerequisites",
            format!("flag `{}` depends on this flag, so it cannot have prerequisites of its own", dependent.key),
        ));
    }
    errors
}

/// Checks a flag on its own, strictly (everything but its place among the other flags).
pub fn check_flag(flag: &Flag, segments: &BTreeMap<String, Segment>) -> Vec<Invalid> {
    compile_flag(flag.clone(), Arc::from(flag.key.as_str()), &mut SegmentConstraints::new(segments, true), true)
        .err()
        .unwrap_or_default()
}

/// Checks a segment before it is written.
pub fn validate_segment(segment: &Segment) -> Result<(), Vec<Invalid>> {
    let mut errors = Vec::new();
    check_key(&segment.name, "/name", &mut errors);
    check_len(&segment.description, MAX_DESCRIPTION_LEN, "/description", &mut errors);
    check_count(segment.constraints.len(), MAX_CONSTRAINTS, "/constraints", &mut errors);
    for (i, c) in segment.constraints.iter().enumerate() {
        compile_constraint(c.clone(), format_args!("/constraints/{i}"), true, &mut errors);
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn windows_overlap(a: &Override, b: &Override) -> bool {
    let starts_before_end = |start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>| match (start, end) {
        (Some(start), Some(end)) => start < end,
        _ => true,
    };
    starts_before_end(a.starts_at, b.expires_at) && starts_before_end(b.starts_at, a.expires_at)
}

/// Keys are what Unleash allows in a feature name (URL-safe, printable) so imports keep their names.
pub(crate) fn check_key(key: &str, at: impl Display, errors: &mut Vec<Invalid>) {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        errors.push(Invalid::new(at.to_string(), format!("a key has 1 to {MAX_KEY_LEN} bytes")));
    } else if key.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '#' | '?' | '%' | ',')) {
        errors.push(Invalid::new(
            at.to_string(),
            "a key may not hold whitespace, control characters or any of / # ? % ,",
        ));
    }
}

fn check_len(value: &str, max: usize, at: impl Display, errors: &mut Vec<Invalid>) {
    if value.len() > max {
        errors.push(Invalid::new(at.to_string(), format!("at most {max} bytes")));
    }
}

fn check_value(value: &str, at: impl Display, errors: &mut Vec<Invalid>) {
    check_len(value, MAX_VALUE_LEN, at, errors);
}

fn check_count(count: usize, max: usize, at: impl Display, errors: &mut Vec<Invalid>) {
    if count > max {
        errors.push(Invalid::new(at.to_string(), format!("at most {max} entries, not {count}")));
    }
}

fn check_window(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>, at: impl Display, errors: &mut Vec<Invalid>) {
    if let (Some(start), Some(end)) = (start, end)
        && start >= end
    {
        errors.push(Invalid::new(at.to_string(), "the start must come before the end"));
    }
}

fn compile_rollout(
    rollout: &Rollout,
    flag_key: &Arc<str>,
    at: impl Display,
    errors: &mut Vec<Invalid>,
) -> Option<CompiledRollout> {
    let hundredths = rollout.percentage * 100.0;
    let basis_points = hundredths.round();
    if !(0.0..=100.0).contains(&rollout.percentage) || (hundredths - basis_points).abs() > 1e-6 {
        errors.push(Invalid::new(
            format!("{at}/rollout/percentage"),
            "a percentage is from 0 to 100 with at most two decimals",
        ));
        return None;
    }
    check_stickiness(&rollout.stickiness, format_args!("{at}/rollout/stickiness"), errors);
    let group_id = rollout.group_id.as_deref().map_or_else(|| flag_key.clone(), Arc::from);
    check_value(&group_id, format_args!("{at}/rollout/group_id"), errors);
    Some(CompiledRollout {
        // In range and integral: checked above.
        basis_points: basis_points as u32,
        stickiness: Sticky::from(&rollout.stickiness),
        group_id,
    })
}

fn check_stickiness(stickiness: &Stickiness, at: impl Display, errors: &mut Vec<Invalid>) {
    if let Stickiness::Field(field) = stickiness
        && (field.is_empty() || field.len() > MAX_KEY_LEN)
    {
        errors.push(Invalid::new(at.to_string(), format!("a stickiness field has 1 to {MAX_KEY_LEN} bytes")));
    }
}

/// Whether contexts can get different variants from the list: two variants with weight, or overrides.
fn splits(variants: &CompiledVariants) -> bool {
    !variants.overrides.is_empty() || variants.variants.iter().filter(|v| v.weight > 0).count() > 1
}

/// The flag's default variant, as a variant evaluation can serve; required unless the flag is boolean.
fn compile_default_variant(flag: &Flag, strict: bool, errors: &mut Vec<Invalid>) -> Option<Variant> {
    let Some(default) = &flag.default_variant else {
        if flag.value_type != ValueType::Boolean {
            errors.push(Invalid::new(
                "/default_variant",
                format!(
                    "a {} flag needs a default_variant: the value it serves when it is off or chooses no variant",
                    flag.value_type.as_str()
                ),
            ));
        }
        return None;
    };
    if default.name.is_empty() || default.name.len() > MAX_KEY_LEN {
        errors.push(Invalid::new("/default_variant/name", format!("a variant name has 1 to {MAX_KEY_LEN} bytes")));
    }
    let payloads = Payloads { value_type: flag.value_type, strict };
    check_payload(payloads, default.payload.as_ref(), "/default_variant/payload", errors);
    let listed = flag.variants.iter().chain(flag.rules.iter().flat_map(|r| &r.variants));
    if let Some(other) = listed.into_iter().find(|v| v.name == default.name && v.payload != default.payload) {
        errors.push(Invalid::new(
            "/default_variant/payload",
            format!("variant `{}` is listed with another payload; one name means one value", other.name),
        ));
    }
    Some(Variant { name: default.name.clone(), weight: 0, payload: default.payload.clone(), overrides: Vec::new() })
}

fn compile_variants(
    variants: Vec<Variant>,
    payloads: Payloads,
    stickiness: &Stickiness,
    group_id: &Arc<str>,
    at: impl Display,
    stickiness_at: impl Display,
    errors: &mut Vec<Invalid>,
) -> Option<CompiledVariants> {
    if variants.is_empty() {
        return None;
    }
    check_count(variants.len(), MAX_VARIANTS, &at, errors);
    check_stickiness(stickiness, stickiness_at, errors);
    let mut names = HashSet::default();
    let mut overrides = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        if variant.name.is_empty() || variant.name.len() > MAX_KEY_LEN {
            errors.push(Invalid::new(format!("{at}/{i}/name"), format!("a variant name has 1 to {MAX_KEY_LEN} bytes")));
        } else if !names.insert(variant.name.as_str()) {
            errors.push(Invalid::new(format!("{at}/{i}/name"), format!("variant `{}` is named twice", variant.name)));
        }
        if variant.weight > MAX_WEIGHT {
            errors.push(Invalid::new(format!("{at}/{i}/weight"), format!("a weight is from 0 to {MAX_WEIGHT}")));
        }
        check_payload(payloads, variant.payload.as_ref(), format_args!("{at}/{i}/payload"), errors);
        for (j, o) in variant.overrides.iter().enumerate() {
            check_count(o.values.len(), MAX_VALUES, format_args!("{at}/{i}/overrides/{j}/values"), errors);
            overrides.push((Field::parse(&o.field), StrSet::new(o.values.iter().cloned()), i));
        }
    }
    let total_weight = variants.iter().map(|v| v.weight).sum();
    if total_weight == 0 {
        errors.push(Invalid::new(at.to_string(), "the variants' weights add up to 0"));
    }
    Some(CompiledVariants {
        variants,
        overrides,
        total_weight,
        stickiness: Sticky::from(stickiness),
        group_id: group_id.clone(),
    })
}

/// What a flag's payloads are checked against.
#[derive(Clone, Copy)]
struct Payloads {
    /// Every variant of a typed flag answers the flag's type.
    value_type: ValueType,
    /// Writes and imports parse a JSON payload as serving does; a snapshot only checks its syntax (a stored payload
    /// was parsed when it was written, and building every payload's value was a tenth of a 1,000-flag load).
    strict: bool,
}

/// A payload evaluation can serve, of the flag's type.
fn check_payload(payloads: Payloads, payload: Option<&Payload>, at: impl Display, errors: &mut Vec<Invalid>) {
    let Payloads { value_type, strict } = payloads;
    // For a `json` payload: whether it holds an object.
    let mut object = false;
    if let Some(p) = payload {
        check_len(&p.value, model::MAX_PAYLOAD_LEN, format_args!("{at}/value"), errors);
        match p.kind.as_str() {
            "string" | "csv" => {}
            "json" => match json_object(&p.value, strict) {
                Some(is_object) => object = is_object,
                None => errors.push(Invalid::new(format!("{at}/value"), "a json payload must hold valid JSON")),
            },
            "number" => {
                if !p.value.trim().parse::<f64>().is_ok_and(f64::is_finite) {
                    errors.push(Invalid::new(format!("{at}/value"), "a number payload must hold a finite number"));
                }
            }
            _ => errors.push(Invalid::new(format!("{at}/type"), "a payload type is string, json, number or csv")),
        }
    }
    let fits = match (value_type, payload) {
        (ValueType::Boolean, _) | (ValueType::String, None) => true,
        (ValueType::String, Some(p)) => matches!(p.kind.as_str(), "string" | "csv"),
        (ValueType::Number, Some(p)) => p.kind == "number",
        (ValueType::Object, Some(p)) => p.kind == "json" && object,
        (ValueType::Number | ValueType::Object, None) => false,
    };
    if !fits {
        let expected = match value_type {
            ValueType::Boolean => "any",
            ValueType::String => "a `string` or `csv`",
            ValueType::Number => "a `number`",
            ValueType::Object => "a `json` object",
        };
        errors.push(Invalid::new(
            at.to_string(),
            format!("a {} flag's variants carry {expected} payload", value_type.as_str()),
        ));
    }
}

/// `None` when `text` is not JSON, else whether it is an object. `exact` parses it as serving does (number range,
/// nesting depth, escapes); otherwise only its syntax is checked, without building it.
fn json_object(text: &str, exact: bool) -> Option<bool> {
    if exact {
        serde_json::from_str::<serde_json::Value>(text).ok().map(|value| value.is_object())
    } else {
        serde_json::from_str::<serde::de::IgnoredAny>(text).ok().map(|_| text.trim_start().starts_with('{'))
    }
}

/// `eager` compiles regexes now (writes and imports); otherwise only their syntax is checked (snapshots). Takes
/// the constraint by value so that list values move into the compiled form instead of being copied.
pub(crate) fn compile_constraint(
    c: Constraint,
    at: impl Display,
    eager: bool,
    errors: &mut Vec<Invalid>,
) -> Option<CompiledConstraint> {
    if c.field.is_empty() || c.field.len() > MAX_KEY_LEN {
        errors.push(Invalid::new(format!("{at}/field"), format!("a field name has 1 to {MAX_KEY_LEN} bytes")));
    }
    check_count(c.values.len(), MAX_VALUES, format_args!("{at}/values"), errors);
    for (i, value) in c.values.iter().enumerate() {
        check_value(value, format_args!("{at}/values/{i}"), errors);
    }
    let case_insensitive = c.case_insensitive;
    let fold = |s: String| if case_insensitive { s.to_lowercase() } else { s };
    let test = match c.operator {
        Operator::In => Test::In(StrSet::new(c.values.into_iter().map(fold))),
        Operator::NotIn => Test::NotIn(StrSet::new(c.values.into_iter().map(fold))),
        Operator::StrStartsWith => Test::StartsWith(c.values.into_iter().map(fold).collect()),
        Operator::StrEndsWith => Test::EndsWith(c.values.into_iter().map(fold).collect()),
        Operator::StrContains => Test::Contains(c.values.into_iter().map(fold).collect()),
        _ => return compile_parsed(c, at, eager, errors),
    };
    Some(CompiledConstraint { field: Field::from_name(c.field), test, inverted: c.inverted, case_insensitive })
}

/// Constraints whose values are parsed: numbers, dates, versions, regexes, CIDR blocks.
fn compile_parsed(
    c: Constraint,
    at: impl Display,
    eager: bool,
    errors: &mut Vec<Invalid>,
) -> Option<CompiledConstraint> {
    let mut single = || -> Option<&str> {
        if c.values.len() == 1 {
            Some(c.values[0].as_str())
        } else {
            // The operator's wire name (NUM_EQ), as the flag document spells it.
            let name = serde_json::to_value(c.operator).ok().and_then(|v| v.as_str().map(str::to_owned));
            errors.push(Invalid::new(
                format!("{at}/values"),
                format!("operator {} takes exactly one value", name.unwrap_or_default()),
            ));
            None
        }
    };
    let value_at = || format!("{at}/values/0");
    let test = match c.operator {
        // Lists move into the compiled form in `compile_constraint` and never come here.
        Operator::In | Operator::NotIn | Operator::StrStartsWith | Operator::StrEndsWith | Operator::StrContains => {
            return None;
        }
        op @ (Operator::NumEq | Operator::NumGt | Operator::NumGte | Operator::NumLt | Operator::NumLte) => {
            let raw = single()?;
            match raw.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Test::Num(op, n),
                _ => {
                    errors.push(Invalid::new(value_at(), format!("`{raw}` is not a number")));
                    return None;
                }
            }
        }
        op @ (Operator::DateAfter | Operator::DateBefore) => {
            let raw = single()?;
            match DateTime::parse_from_rfc3339(raw.trim()) {
                Ok(at) => Test::Date(op, at.with_timezone(&Utc)),
                Err(_) => {
                    errors.push(Invalid::new(value_at(), format!("`{raw}` is not an RFC 3339 timestamp")));
                    return None;
                }
            }
        }
        op @ (Operator::SemverEq
        | Operator::SemverGt
        | Operator::SemverGte
        | Operator::SemverLt
        | Operator::SemverLte) => {
            let raw = single()?;
            match semver::Version::parse(raw.trim()) {
                Ok(version) => Test::Semver(op, version),
                Err(_) => {
                    errors.push(Invalid::new(value_at(), format!("`{raw}` is not a semantic version")));
                    return None;
                }
            }
        }
        Operator::Regex => {
            let raw = single()?;
            // Writes compile the pattern now, so one that does not compile (over the size limit, too) is refused;
            // snapshots compile it when it is first used.
            let checked =
                if eager { LazyRegex::build(raw, c.case_insensitive).map(Some).map_err(|_| ()) } else { Ok(None) };
            match checked {
                Ok(compiled) => Test::Regex(LazyRegex {
                    pattern: raw.to_string(),
                    case_insensitive: c.case_insensitive,
                    compiled: compiled.map(|regex| std::sync::OnceLock::from(Some(regex))).unwrap_or_default(),
                }),
                Err(()) => {
                    errors.push(Invalid::new(
                        value_at(),
                        "the regular expression does not compile (lookaround and backreferences are not supported)",
                    ));
                    return None;
                }
            }
        }
        Operator::InCidr => {
            let mut blocks = Vec::with_capacity(c.values.len());
            for (i, raw) in c.values.iter().enumerate() {
                match parse_cidr(raw) {
                    Some(block) => blocks.push(block),
                    None => errors.push(Invalid::new(
                        format!("{at}/values/{i}"),
                        format!("`{raw}` is not an IP address or CIDR block"),
                    )),
                }
            }
            Test::InCidr(blocks)
        }
    };
    Some(CompiledConstraint {
        field: Field::from_name(c.field),
        test,
        inverted: c.inverted,
        case_insensitive: c.case_insensitive,
    })
}

/// An address or a block; a bare address is a block of one.
pub(crate) fn parse_cidr(raw: &str) -> Option<IpNet> {
    let raw = raw.trim();
    raw.parse::<IpNet>().ok().or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}
