//! The data map's vocabulary: one [`Entry`] per kind of item Keel keeps, saying what personal data it holds, about
//! whom, why, for whom, for how long, and what an export and an erasure do with it (GDPR Art. 30's record of
//! processing, and the plan the GDPR tasks follow). Each domain declares the entries of the items it writes, next
//! to the code that writes them; the key patterns let a test check that every item found in a table is declared.

use crate::port::PortError;
use crate::table::Key;
use serde::Serialize;
use std::collections::BTreeSet;

/// Whom an item's personal data is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// One user, named in the item.
    User,
    /// An organization (a customer), and through it the people acting for it.
    Organization,
    /// Nobody: configuration, counters, Keel's own bookkeeping.
    Nobody,
}

/// How long an item is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Retention {
    /// Expires this many seconds after it is written, or after it ends for a record that ends (a finished job):
    /// the table's expiry, enforced on every read.
    Expires { seconds: u64 },
    /// Removed by a scheduled cleanup this many days after it is written or finished.
    Cleanup { days: u32 },
    /// Kept while what it describes exists.
    WhileInUse,
}

/// What an export of a user's data does with an item about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Export {
    Include,
    /// Not part of the bundle, for the stated reason (it holds nothing about a person, or only another's data).
    Exclude {
        #[schema(value_type = String)]
        reason: &'static str,
    },
}

/// What an erasure of a user does with an item about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Erasure {
    Delete,
    /// The user's id is replaced by a stable pseudonym; the item keeps its shape (an append-only trail).
    Pseudonymize,
    /// Kept under a stated exemption (GDPR Art. 17(3)), or because it holds nothing about a person.
    Keep {
        #[schema(value_type = String)]
        exemption: &'static str,
    },
}

/// One kind of item in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    /// Unique, `domain.kind`: the bundle's file name and the receipt's line.
    #[schema(value_type = String)]
    pub name: &'static str,
    /// The environment variable that names the table (`FLAGS_TABLE`), as the template wires it.
    #[schema(value_type = String)]
    pub table: &'static str,
    /// Key patterns: literal text and `{placeholders}`, each placeholder standing for one or more characters.
    #[schema(value_type = String)]
    pub pk: &'static str,
    #[schema(value_type = String)]
    pub sk: &'static str,
    #[schema(value_type = String)]
    pub description: &'static str,
    pub subject: Subject,
    /// The attributes that are (or may be) personal data; empty when there are none.
    #[schema(value_type = Vec<String>)]
    pub personal_data: &'static [&'static str],
    #[schema(value_type = String)]
    pub purpose: &'static str,
    /// Who receives the data besides Keel's operators (Art. 15(1)(c)).
    #[schema(value_type = Vec<String>)]
    pub recipients: &'static [&'static str],
    pub retention: Retention,
    pub export: Export,
    pub erasure: Erasure,
}

impl Entry {
    /// Whether `key` is one of this entry's items.
    pub fn matches(&self, key: &Key) -> bool {
        pattern_matches(self.pk, &key.pk) && pattern_matches(self.sk, &key.sk)
    }
}

/// Whether `text` fits `pattern`: literal pieces in order, each `{placeholder}` matching one or more characters.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('{') {
        None => pattern == text,
        Some((literal, rest)) => {
            let Some(after) = text.strip_prefix(literal) else { return false };
            let rest = rest.split_once('}').map_or("", |(_, rest)| rest);
            // The placeholder takes at least one character; try every length, shortest first.
            (1..=after.len()).filter(|&i| after.is_char_boundary(i)).any(|i| pattern_matches(rest, &after[i..]))
        }
    }
}

/// The entries of `map` that `key` in `table` matches: exactly one for a well-declared item.
pub fn classify<'a>(map: &'a [Entry], table: &str, key: &Key) -> Vec<&'a Entry> {
    map.iter().filter(|entry| entry.table == table && entry.matches(key)).collect()
}

/// Whom an export (or erasure) is about: a user, and the organizations their items may be filed under (the
/// directory's memberships and the organization of the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSubject {
    pub user_id: String,
    pub org_ids: BTreeSet<String>,
}

/// A record for an [`ExportSink`].
pub fn to_record<T: Serialize>(value: &T) -> Result<serde_json::Value, PortError> {
    serde_json::to_value(value).map_err(|e| PortError::Invalid(format!("export record: {e}")))
}

/// Where an export writes: one record at a time, under its entry's name, so a holder never gathers a user's items
/// in memory.
pub trait ExportSink: Send {
    fn record(&mut self, entry: &'static str, record: serde_json::Value) -> Result<(), PortError>;
}

/// The JSON pointers of every string in `value` equal to `needle`: where an item names a user, so an export can
/// say so without handing over the rest (which may name others).
pub fn mentions(value: &serde_json::Value, needle: &str) -> Vec<String> {
    fn walk(value: &serde_json::Value, needle: &str, at: &mut String, found: &mut Vec<String>) {
        let len = at.len();
        match value {
            serde_json::Value::String(text) if text == needle => found.push(at.clone()),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    at.push_str(&format!("/{i}"));
                    walk(item, needle, at, found);
                    at.truncate(len);
                }
            }
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    at.push('/');
                    at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    walk(item, needle, at, found);
                    at.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(value, needle, &mut String::new(), &mut found);
    found
}

/// What an export writes in place of a user other than its subject.
pub const ANOTHER_USER: &str = "(another user)";

/// Who audit entries name as carrying out an erasure's changes.
pub const ERASER: &str = "keel:gdpr";

/// Whom an erasure is about, and what stands for them afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureSubject {
    pub subject: DataSubject,
    /// What replaces the user's id in items that keep their shape (audit trails, flag rules): the same for every
    /// item, so a trail still reads as one person's, and keyed, so it cannot be turned back into the id.
    pub pseudonym: String,
    /// The organizations the user was the only member of when the erasure was asked for: the directory deletes
    /// those that still are. Other domains erase only the user's own items in them (someone else's job in such an
    /// organization stays: being alone in the directory is not being alone in the tenant).
    pub orgs_alone: BTreeSet<String>,
}

/// Per data-map entry, the items an erasure deleted or pseudonymized (or, in a dry run, would).
pub type Tally = std::collections::BTreeMap<String, u64>;

/// Adds `n` items of `entry` to `tally`, leaving entries with none out.
pub fn count(tally: &mut Tally, entry: &str, n: u64) {
    if n > 0 {
        *tally.entry(entry.to_string()).or_default() += n;
    }
}

/// Replaces every string in `value` equal to `user` with `pseudonym`, and answers how many it replaced.
pub fn pseudonymize(value: &mut serde_json::Value, user: &str, pseudonym: &str) -> usize {
    match value {
        serde_json::Value::String(text) if text == user => {
            *text = pseudonym.to_string();
            1
        }
        serde_json::Value::Array(items) => items.iter_mut().map(|item| pseudonymize(item, user, pseudonym)).sum(),
        serde_json::Value::Object(map) => map.values_mut().map(|item| pseudonymize(item, user, pseudonym)).sum(),
        _ => 0,
    }
}

/// `text` with every occurrence of `user` that stands as a word of its own (not inside a longer id: the
/// characters around it are not letters, digits, `-` or `_`) replaced by `pseudonym`: for free text (a reason, an
/// error, a processor's answer) that may mention the user among other words.
pub fn pseudonymize_text(text: &str, user: &str, pseudonym: &str) -> String {
    if user.is_empty() {
        return text.to_string();
    }
    let id_char = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(user) {
        let (before, after) = (&rest[..at], &rest[at + user.len()..]);
        let alone = !before.chars().next_back().is_some_and(id_char) && !after.chars().next().is_some_and(id_char);
        out.push_str(before);
        out.push_str(if alone { pseudonym } else { user });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// [`pseudonymize_text`] on every string in `value`.
pub fn pseudonymize_strings(value: &mut serde_json::Value, user: &str, pseudonym: &str) {
    match value {
        serde_json::Value::String(text) => *text = pseudonymize_text(text, user, pseudonym),
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|item| pseudonymize_strings(item, user, pseudonym))
        }
        serde_json::Value::Object(map) => map.values_mut().for_each(|item| pseudonymize_strings(item, user, pseudonym)),
        _ => {}
    }
}

/// A domain's side of the GDPR tasks: it finds its own items about a subject, by its own key formats.
#[async_trait::async_trait]
pub trait Holder: Send + Sync {
    /// The entries this holder keeps.
    fn entries(&self) -> &'static [Entry];
    /// Writes every item about `subject` of each of its entries whose export is [`Export::Include`].
    async fn export(&self, subject: &DataSubject, sink: &mut dyn ExportSink) -> Result<(), PortError>;
    /// Deletes or pseudonymizes every item about the subject, as each entry's [`Erasure`] says, counting in
    /// `tally` what it changed as it goes (so a run that fails midway still tells what it did); with `dry_run`,
    /// changes nothing and counts what it would change. Safe to run again after a crash or to completion: a second
    /// run finds nothing left to change.
    async fn erase(&self, subject: &ErasureSubject, dry_run: bool, tally: &mut Tally) -> Result<(), PortError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_literals_and_placeholders() {
        assert!(pattern_matches("FLAG#{key}", "FLAG#checkout"));
        assert!(pattern_matches("FLAG#{key}", "FLAG#a#b"));
        assert!(!pattern_matches("FLAG#{key}", "FLAG#"));
        assert!(!pattern_matches("FLAG#{key}", "SEGMENT#x"));
        assert!(pattern_matches("OVERRIDE#{org}#{user}", "OVERRIDE#o1#u1"));
        assert!(!pattern_matches("OVERRIDE#{org}#{user}", "OVERRIDE#o1"));
        assert!(pattern_matches("STATE", "STATE"));
        assert!(!pattern_matches("STATE", "STATE2"));
        assert!(pattern_matches("{id}", "x"));
        assert!(pattern_matches("ORG#{org}#JOB", "ORG#a#b#JOB"));
        assert!(!pattern_matches("ORG#{org}#JOB", "ORG##JOB"));
    }

    #[test]
    fn mentions_are_the_pointers_of_equal_strings_only() {
        let value = serde_json::json!({
            "target_users": ["bob", "ann"],
            "rules": [{"constraints": [{"values": ["x", "ann"]}]}],
            "a/b": "ann",
            "description": "ann's flag",
            "n": 1
        });
        assert_eq!(mentions(&value, "ann"), ["/a~1b", "/rules/0/constraints/0/values/1", "/target_users/1"]);
        assert!(mentions(&value, "nobody").is_empty());
    }

    #[test]
    fn pseudonymize_replaces_equal_strings_only() {
        let mut value = serde_json::json!({"users": ["ann", "bob"], "by": "ann", "note": "ann's", "ann": 1});
        assert_eq!(pseudonymize(&mut value, "ann", "p1"), 2);
        assert_eq!(value, serde_json::json!({"users": ["p1", "bob"], "by": "p1", "note": "ann's", "ann": 1}));
        assert_eq!(pseudonymize(&mut value, "ann", "p1"), 0, "a second pass finds nothing");
    }

    #[test]
    fn text_is_pseudonymized_where_the_id_stands_alone() {
        assert_eq!(pseudonymize_text("ann asked; erase ann.", "ann", "p"), "p asked; erase p.");
        assert_eq!(
            pseudonymize_text("annabel and joann and ann-2 and ann_x", "ann", "p"),
            "annabel and joann and ann-2 and ann_x"
        );
        assert_eq!(pseudonymize_text("user:ann/org:acme", "ann", "p"), "user:p/org:acme");
        assert_eq!(pseudonymize_text("nothing", "", "p"), "nothing");
        let mut value = serde_json::json!({"note": "erased ann's data", "n": ["ann", 1]});
        pseudonymize_strings(&mut value, "ann", "p");
        assert_eq!(value, serde_json::json!({"note": "erased p's data", "n": ["p", 1]}));
    }

    #[test]
    fn classify_picks_by_table_and_key() {
        const A: Entry = Entry {
            name: "a.one",
            table: "A_TABLE",
            pk: "ONE#{id}",
            sk: "{sk}",
            description: "",
            subject: Subject::Nobody,
            personal_data: &[],
            purpose: "",
            recipients: &[],
            retention: Retention::WhileInUse,
            export: Export::Exclude { reason: "" },
            erasure: Erasure::Keep { exemption: "" },
        };
        const B: Entry = Entry { name: "b.one", table: "B_TABLE", ..A };
        let map = [A, B];
        let key = Key::new("ONE#1", "x");
        assert_eq!(classify(&map, "A_TABLE", &key), vec![&A]);
        assert_eq!(classify(&map, "B_TABLE", &key), vec![&B]);
        assert!(classify(&map, "A_TABLE", &Key::new("TWO#1", "x")).is_empty());
    }
}
