//! A flag as it is stored and as the admin API reads and writes it. Field names are Keel's wire names
//! (snake_case); `compile` checks a flag and turns it into the form evaluation runs on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Caps that keep one flag inside one DynamoDB item (400 KB) and evaluation bounded.
pub const MAX_KEY_LEN: usize = 200;
pub const MAX_DESCRIPTION_LEN: usize = 2000;
pub const MAX_RULES: usize = 100;
pub const MAX_CONSTRAINTS: usize = 50;
pub const MAX_VALUES: usize = 1000;
pub const MAX_VALUE_LEN: usize = 1000;
pub const MAX_VARIANTS: usize = 50;
pub const MAX_LIST: usize = 1000;
pub const MAX_OVERRIDES: usize = 1000;
pub const MAX_PREREQUISITES: usize = 10;
pub const MAX_SEGMENTS: usize = 10;
pub const MAX_PAYLOAD_LEN: usize = 10_000;
pub const MAX_WARNINGS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub key: String,
    #[serde(default)]
    pub description: String,
    /// The kill switch: `false` turns the flag off everywhere, before any targeting.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Environments the flag is on in; empty means every environment.
    #[serde(default)]
    pub environments: Vec<String>,
    /// Evaluated in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The flag's variants, chosen by weight when a decision that turns the flag on names none of its own.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// How variants are bucketed; organizationId unless set.
    #[serde(default)]
    pub variant_stickiness: Stickiness,
    /// Organizations always on (after overrides, block list and target users).
    #[serde(default)]
    pub allow_orgs: Vec<String>,
    /// Organizations always off (after overrides).
    #[serde(default)]
    pub block_orgs: Vec<String>,
    /// Users always on, whatever their organization (the block list still wins).
    #[serde(default)]
    pub target_users: Vec<String>,
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// Other flags that must evaluate as stated, for the same context, before this flag's targeting runs. One
    /// level only, as in Unleash: a prerequisite that has prerequisites of its own is never satisfied.
    #[serde(default)]
    pub prerequisites: Vec<Prerequisite>,
    /// Whether the flag is on when no targeting decides.
    #[serde(default)]
    pub default_value: bool,
    /// What the flag answers: `boolean` (on or off), or a `string`, `number` or `object` taken from the served
    /// variant's payload, so a typed flag answers its type on every path.
    #[serde(default, skip_serializing_if = "ValueType::is_boolean")]
    pub value_type: ValueType,
    /// The variant served whenever evaluation chooses none: the flag is off for the context (killed, environment
    /// off, prerequisite failed, blocked, forced off, default off) or on without a variant list. Required for a
    /// flag that is not `boolean`; a boolean flag without one answers the variant names `on` and `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_variant: Option<DefaultVariant>,
    /// What a lenient import carried over that Keel does not support as such (each as Unleash evaluates it), with
    /// a pointer into the flag and into the imported document. Kept until a write replaces them. This field, the
    /// two above and a rule's `disabled` are left out of the document while they hold their default, so flags
    /// stored before they existed read and write exactly as they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<FlagWarning>,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub archived: bool,
    /// Set by the store on every write, starting at 1.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub updated_by: String,
    #[serde(default = "epoch", deserialize_with = "timestamp::required")]
    pub updated_at: DateTime<Utc>,
}

fn yes() -> bool {
    true
}

fn epoch() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

/// Removes every member that is an empty list or null, at every depth.
fn drop_empty(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(members) => {
            members.retain(|_, member| !(member.is_null() || member.as_array().is_some_and(Vec::is_empty)));
            members.values_mut().for_each(drop_empty);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

/// Replaces `user` in `text` when it is exactly them; 1 when it did.
fn swap(text: &mut String, user: &str, pseudonym: &str) -> usize {
    if text == user {
        *text = pseudonym.to_string();
        1
    } else {
        0
    }
}

fn pseudonymize_constraints(constraints: &mut [Constraint], user: &str, pseudonym: &str) -> usize {
    constraints
        .iter_mut()
        .filter(|c| c.field == USER_ID)
        .flat_map(|c| c.values.iter_mut())
        .map(|value| swap(value, user, pseudonym))
        .sum()
}

/// The user ids `constraints` name: the values of their `userId` constraints.
pub fn constrained_users(constraints: &[Constraint]) -> impl Iterator<Item = &str> {
    constraints.iter().filter(|c| c.field == USER_ID).flat_map(|c| c.values.iter().map(String::as_str))
}

impl Rule {
    /// The user ids the rule names.
    pub fn named_users(&self) -> impl Iterator<Item = &str> {
        constrained_users(&self.constraints)
    }
}

impl Segment {
    /// The user ids the segment names.
    pub fn named_users(&self) -> impl Iterator<Item = &str> {
        constrained_users(&self.constraints)
    }

    /// Replaces `user` with `pseudonym` where the segment names users (its `userId` constraints); how many it
    /// replaced.
    pub fn pseudonymize_user(&mut self, user: &str, pseudonym: &str) -> usize {
        pseudonymize_constraints(&mut self.constraints, user, pseudonym)
    }
}

impl Flag {
    /// The user ids the flag names: its target users and its rules' `userId` constraints (what an erased user must
    /// not be put back into).
    pub fn named_users(&self) -> impl Iterator<Item = &str> {
        self.target_users.iter().map(String::as_str).chain(self.rules.iter().flat_map(Rule::named_users))
    }

    /// Replaces `user` with `pseudonym` where the flag names users (target users, `userId` constraints, who last
    /// changed it, who set each override), and nowhere else: a variant, key or organization equal to the id is not
    /// about the user. How many it replaced.
    pub fn pseudonymize_user(&mut self, user: &str, pseudonym: &str) -> usize {
        let mut replaced = swap(&mut self.updated_by, user, pseudonym);
        replaced += self.target_users.iter_mut().map(|u| swap(u, user, pseudonym)).sum::<usize>();
        replaced += self.overrides.iter_mut().map(|o| swap(&mut o.created_by, user, pseudonym)).sum::<usize>();
        for rule in &mut self.rules {
            replaced += pseudonymize_constraints(&mut rule.constraints, user, pseudonym);
        }
        replaced
    }

    /// The document the store keeps: the flag's JSON without its empty lists and nulls, which read back as the
    /// same flag (every list and option defaults to empty). A 1,000-flag project's documents are a fifth smaller, so
    /// loading them is a fifth less decoding, and DynamoDB reads and writes fewer units; the API's documents keep
    /// every field. Should a field ever not read back this way, the full document is kept.
    pub fn stored_document(&self) -> serde_json::Result<serde_json::Value> {
        let full = serde_json::to_value(self)?;
        let mut compact = full.clone();
        drop_empty(&mut compact);
        Ok(if Flag::deserialize(&compact).is_ok_and(|back| back == *self) { compact } else { full })
    }

    /// A flag with nothing but a key: on, no targeting, default value `false`.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            description: String::new(),
            enabled: true,
            environments: Vec::new(),
            rules: Vec::new(),
            variants: Vec::new(),
            variant_stickiness: Stickiness::default(),
            allow_orgs: Vec::new(),
            block_orgs: Vec::new(),
            target_users: Vec::new(),
            overrides: Vec::new(),
            prerequisites: Vec::new(),
            default_value: false,
            value_type: ValueType::Boolean,
            default_variant: None,
            warnings: Vec::new(),
            lifecycle: Lifecycle::default(),
            archived: false,
            version: 0,
            updated_by: String::new(),
            updated_at: DateTime::UNIX_EPOCH,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable within the flag; reported with every decision the rule makes.
    pub id: String,
    /// All must hold (and all constraints of every referenced segment).
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Names of segments whose constraints must also hold.
    #[serde(default)]
    pub segments: Vec<String>,
    /// When set, only this share of the matching contexts is in.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Variants chosen among when this rule decides; the flag's variants when empty.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// The rule applies from this instant (inclusive) ...
    #[serde(default, deserialize_with = "timestamp::optional")]
    pub starts_at: Option<DateTime<Utc>>,
    /// ... until this instant (exclusive).
    #[serde(default, deserialize_with = "timestamp::optional")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Never matches: skipped by evaluation. A lenient import keeps a strategy Unleash never matches this way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// A context field: organizationId, userId, environment, sessionId, remoteAddress, appName, currentTime, or
    /// any attribute name.
    pub field: String,
    pub operator: Operator,
    /// One value for the NUM_, DATE_, SEMVER_ and REGEX operators; any number for the others.
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub inverted: bool,
    #[serde(default)]
    pub case_insensitive: bool,
}

/// Unleash's constraint operators, under Unleash's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operator {
    In,
    NotIn,
    StrStartsWith,
    StrEndsWith,
    StrContains,
    NumEq,
    NumGt,
    NumGte,
    NumLt,
    NumLte,
    DateAfter,
    DateBefore,
    SemverEq,
    SemverGt,
    SemverGte,
    SemverLt,
    SemverLte,
    Regex,
    InCidr,
}

impl Operator {
    /// Operators that compare against exactly one value.
    pub fn single_valued(self) -> bool {
        !matches!(
            self,
            Operator::In
                | Operator::NotIn
                | Operator::StrStartsWith
                | Operator::StrEndsWith
                | Operator::StrContains
                | Operator::InCidr
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// 0 to 100 with at most two decimals.
    pub percentage: f64,
    #[serde(default)]
    pub stickiness: Stickiness,
    /// Hashed with the stickiness value; the flag's key when absent. Rules sharing a group id bucket alike.
    #[serde(default)]
    pub group_id: Option<String>,
}

/// The context value a rollout or a variant choice hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Stickiness {
    /// A context field (organizationId by default); a context without it is never in the rollout.
    Field(String),
    /// Unleash's `default`: userId, else sessionId, else a random draw.
    UnleashDefault,
    /// A fresh random draw on every evaluation.
    Random,
}

/// On the wire, a context field name, `default` or `random`.
impl utoipa::PartialSchema for Stickiness {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <String as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Stickiness {}

impl Default for Stickiness {
    fn default() -> Self {
        Stickiness::Field(ORGANIZATION_ID.to_string())
    }
}

impl From<String> for Stickiness {
    fn from(raw: String) -> Self {
        match raw.as_str() {
            "default" => Stickiness::UnleashDefault,
            "random" => Stickiness::Random,
            _ => Stickiness::Field(raw),
        }
    }
}

impl From<Stickiness> for String {
    fn from(stickiness: Stickiness) -> Self {
        match stickiness {
            Stickiness::Field(field) => field,
            Stickiness::UnleashDefault => "default".into(),
            Stickiness::Random => "random".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// Relative weight among the variants of the same list (0 to 1000 each).
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub payload: Option<Payload>,
    /// Contexts that always get this variant, whatever the weights.
    #[serde(default)]
    pub overrides: Vec<VariantOverride>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// `string`, `json`, `number` or `csv`, as Unleash has them.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// The type of a flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// On or off; variants and payloads are extra information.
    #[default]
    Boolean,
    /// A variant's `string` or `csv` payload, or its name when it has none.
    String,
    /// A variant's `number` payload.
    Number,
    /// A variant's `json` payload holding an object (OFREP's values have no arrays).
    Object,
}

impl ValueType {
    fn is_boolean(&self) -> bool {
        *self == ValueType::Boolean
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Boolean => "boolean",
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Object => "object",
        }
    }
}

/// The variant a flag serves when evaluation chooses none. When a listed variant has the same name, it must
/// carry the same payload, so a name always means one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultVariant {
    pub name: String,
    #[serde(default)]
    pub payload: Option<Payload>,
}

/// Something a lenient import carried over that Keel does not support as such.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagWarning {
    /// Where in the flag the element is (`/rules/2`), empty for the flag as a whole.
    pub pointer: String,
    /// Where it was in the imported document (`/features/3/strategies/2/name`).
    #[serde(default)]
    pub source: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantOverride {
    pub field: String,
    pub values: Vec<String>,
}

/// A per-organization decision that beats all targeting but the kill switch, environments and prerequisites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub org_id: String,
    pub action: OverrideAction,
    /// Required and non-empty: why the organization is treated differently.
    pub reason: String,
    #[serde(default, deserialize_with = "timestamp::optional")]
    pub starts_at: Option<DateTime<Utc>>,
    /// Past this instant the override is ignored (and a cleanup may remove it).
    #[serde(default, deserialize_with = "timestamp::optional")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OverrideAction {
    ForcedOn,
    ForcedOff,
    /// On, with this variant of the flag.
    Variant {
        variant: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prerequisite {
    pub flag: String,
    /// The value the prerequisite must evaluate to.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When non-empty, the prerequisite's variant must be one of these.
    #[serde(default)]
    pub variants: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    #[serde(rename = "type", default)]
    pub kind: FlagType,
    /// Past this instant the flag is reported stale (unless permanent).
    #[serde(default, deserialize_with = "timestamp::optional")]
    pub stale_after: Option<DateTime<Utc>>,
    /// Never stale (operational switches, permissions).
    #[serde(default)]
    pub permanent: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { kind: FlagType::Release, stale_after: None, permanent: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FlagType {
    #[default]
    Release,
    Experiment,
    Operational,
    KillSwitch,
    Permission,
}

/// A named, reusable set of constraints rules can reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub constraints: Vec<Constraint>,
}

/// Context field names with a meaning of their own.
pub const ORGANIZATION_ID: &str = "organizationId";
pub const USER_ID: &str = "userId";
pub const ENVIRONMENT: &str = "environment";
pub const SESSION_ID: &str = "sessionId";
pub const REMOTE_ADDRESS: &str = "remoteAddress";
pub const APP_NAME: &str = "appName";
pub const CURRENT_TIME: &str = "currentTime";

/// Timestamps as chrono reads them, with a fast path for the form chrono writes (`2026-12-01T09:30:00Z`, with 0 to
/// 9 decimals): chrono's general parser was a seventh of the time decoding a 1,000-flag snapshot took. Anything
/// else (offsets, a space for `T`) goes to chrono's parser, so what is accepted is unchanged.
mod timestamp {
    use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
    use serde::de::{Deserializer, Error, Visitor};

    struct Timestamp;

    impl Visitor<'_> for Timestamp {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Self::Value, E> {
            match canonical(text.as_bytes()) {
                Some(at) => Ok(at),
                None => text.parse::<DateTime<FixedOffset>>().map(|at| at.with_timezone(&Utc)).map_err(E::custom),
            }
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, or `None` for chrono's parser to decide.
    fn canonical(b: &[u8]) -> Option<DateTime<Utc>> {
        let digits = |range: std::ops::Range<usize>| -> Option<u32> {
            b.get(range)?.iter().try_fold(0, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
        };
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        let nanos = match (b[19], b.len()) {
            (b'Z', 20) => 0,
            (b'.', len @ 22..=30) if b[len - 1] == b'Z' => digits(20..len - 1)? * 10u32.pow((30 - len) as u32),
            _ => return None,
        };
        // A leap second (60) is chrono's to read.
        if second > 59 {
            return None;
        }
        let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
        Some(date.and_hms_nano_opt(hour, minute, second, nanos)?.and_utc())
    }

    pub(super) fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        deserializer.deserialize_str(Timestamp)
    }

    pub(super) fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        struct Optional;
        impl<'de> Visitor<'de> for Optional {
            type Value = Option<DateTime<Utc>>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 timestamp or null")
            }

            fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
                required(deserializer).map(Some)
            }
        }
        deserializer.deserialize_option(Optional)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Each input as the fast path reads it and as chrono does: the same instant, or both refuse.
        #[test]
        fn the_fast_path_reads_what_chrono_reads() {
            for text in [
                "2026-12-01T09:30:00Z",
                "2026-12-01T09:30:00.5Z",
                "2026-12-01T09:30:00.123Z",
                "2026-12-01T09:30:00.123456Z",
                "2026-12-01T09:30:00.123456789Z",
                "1970-01-01T00:00:00Z",
                "2024-02-29T23:59:59Z",
                "2023-02-29T00:00:00Z",
                "2026-13-01T00:00:00Z",
                "2026-12-01T24:00:00Z",
                "2026-12-01T09:60:00Z",
                "2026-12-31T23:59:60Z",
                "2026-12-01T09:30:00.Z",
                "2026-12-01T09:30:00.1234567890Z",
                "2026-12-01T09:30:00+02:00",
                "2026-12-01 09:30:00Z",
                "2026-12-01t09:30:00z",
                "2026-12-01T09:30:0aZ",
                "+2026-12-01T09:30:00Z",
                "2026-12-01T09:30:00",
                "",
            ] {
                let chrono = text.parse::<DateTime<FixedOffset>>().ok().map(|at| at.with_timezone(&Utc));
                let ours = Timestamp.visit_str::<serde::de::value::Error>(text).ok();
                assert_eq!(ours, chrono, "{text:?}");
                if let Some(fast) = canonical(text.as_bytes()) {
                    assert_eq!(Some(fast), chrono, "{text:?}: the fast path disagrees");
                }
            }
            assert!(canonical(b"2026-12-01T09:30:00.123Z").is_some(), "the canonical form takes the fast path");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn empties(value: &Value, at: String, found: &mut Vec<String>) {
        match value {
            Value::Null => found.push(at),
            Value::Array(items) if items.is_empty() => found.push(at),
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| empties(v, format!("{at}/{i}"), found)),
            Value::Object(members) => members.iter().for_each(|(k, v)| empties(v, format!("{at}/{k}"), found)),
            _ => {}
        }
    }

    /// A flag with one of every element, each with its own lists empty and options unset.
    fn every_element() -> Flag {
        let variant = Variant { name: "a".into(), weight: 1, payload: None, overrides: Vec::new() };
        let mut flag = Flag::new("every-element");
        flag.environments = vec!["production".into()];
        flag.rules = vec![Rule {
            id: "r".into(),
            constraints: vec![Constraint {
                field: "plan".into(),
                operator: Operator::In,
                values: Vec::new(),
                inverted: false,
                case_insensitive: false,
            }],
            segments: Vec::new(),
            rollout: Some(Rollout { percentage: 50.0, stickiness: Stickiness::default(), group_id: None }),
            variants: vec![variant.clone()],
            starts_at: None,
            ends_at: None,
            disabled: false,
        }];
        flag.variants = vec![variant];
        flag.allow_orgs = vec!["org-a".into()];
        flag.overrides = vec![Override {
            org_id: "org-b".into(),
            action: OverrideAction::ForcedOff,
            reason: "r".into(),
            starts_at: None,
            expires_at: None,
            created_by: String::new(),
        }];
        flag.prerequisites = vec![Prerequisite { flag: "other".into(), enabled: true, variants: Vec::new() }];
        flag.default_variant = Some(DefaultVariant { name: "off".into(), payload: None });
        flag
    }

    #[test]
    fn the_stored_document_has_no_empty_list_or_null_and_reads_back_as_the_flag() {
        for flag in [Flag::new("bare"), every_element()] {
            let stored = flag.stored_document().unwrap();
            let mut found = Vec::new();
            empties(&stored, String::new(), &mut found);
            assert_eq!(found, Vec::<String>::new(), "{}", flag.key);
            assert_eq!(Flag::deserialize(&stored).unwrap(), flag);
            let full = serde_json::to_value(&flag).unwrap();
            assert!(stored.to_string().len() < full.to_string().len());
        }
    }

    /// A variant override's values are required, so an empty list cannot be left out: the whole document is kept.
    #[test]
    fn a_field_that_would_not_read_back_keeps_the_full_document() {
        let mut flag = every_element();
        flag.variants[0].overrides = vec![VariantOverride { field: "plan".into(), values: Vec::new() }];
        let stored = flag.stored_document().unwrap();
        assert_eq!(stored, serde_json::to_value(&flag).unwrap());
        assert_eq!(Flag::deserialize(&stored).unwrap(), flag);
    }
}
