//! The flags table's entries of the data map. Flags are platform configuration, but a flag can name users
//! (`target_users`, user-valued constraint lists, overrides) and records who changed it: those are personal data
//! about the users named.

use keel::datamap::{Entry, Erasure, Export, Retention, Subject};

/// The table flags live in, as the template wires it.
pub const TABLE_VAR: &str = "FLAGS_TABLE";
const PURPOSE: &str = "Deciding which features an organization and its users see, and accounting for every change.";
const RECIPIENTS: &[&str] = &["the flag evaluation API's callers (the customer's own services)"];

pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "flags.flag",
        table: TABLE_VAR,
        pk: "FLAG",
        sk: "{key}",
        description: "A feature flag: rules, target lists, overrides, who changed it last.",
        subject: Subject::User,
        personal_data: &["target_users", "rules[].constraints[].values (user ids)", "overrides", "updated_by"],
        purpose: PURPOSE,
        recipients: RECIPIENTS,
        retention: Retention::WhileInUse,
        export: Export::Include,
        erasure: Erasure::Pseudonymize,
    },
    Entry {
        name: "flags.segment",
        table: TABLE_VAR,
        pk: "SEGMENT",
        sk: "{name}",
        description: "A reusable set of constraints, which may list user ids.",
        subject: Subject::User,
        personal_data: &["constraints[].values (user ids)", "updated_by"],
        purpose: PURPOSE,
        recipients: RECIPIENTS,
        retention: Retention::WhileInUse,
        export: Export::Include,
        erasure: Erasure::Pseudonymize,
    },
    Entry {
        name: "flags.audit",
        table: TABLE_VAR,
        pk: "AUDIT",
        sk: "{id}",
        description: "The audit trail of flag and segment changes, overall: who, when, before and after.",
        subject: Subject::User,
        personal_data: &["actor", "before", "after"],
        purpose: "Accountability for changes to what customers' users see (GDPR Art. 5(2)).",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Include,
        erasure: Erasure::Pseudonymize,
    },
    Entry {
        name: "flags.audit_by_subject",
        table: TABLE_VAR,
        pk: "AUDIT#{subject}",
        sk: "{id}",
        description: "The same audit entries, by flag or segment.",
        subject: Subject::User,
        personal_data: &["actor", "before", "after"],
        purpose: "Accountability for changes to what customers' users see (GDPR Art. 5(2)).",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "a copy of flags.audit, which the bundle includes" },
        erasure: Erasure::Pseudonymize,
    },
    Entry {
        name: "flags.revision",
        table: TABLE_VAR,
        pk: "FLAGMETA",
        sk: "revision",
        description: "A fresh id on every change, which caches compare to decide whether to reload.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Keeping every evaluation's copy of the flags current.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "holds nothing about a person" },
        erasure: Erasure::Keep { exemption: "holds nothing about a person" },
    },
    Entry {
        name: "flags.last_seen",
        table: TABLE_VAR,
        pk: "FLAGSEEN",
        sk: "{key}",
        description: "When a flag was last evaluated, to find stale flags.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Finding flags nobody evaluates any more.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "holds nothing about a person" },
        erasure: Erasure::Keep { exemption: "holds nothing about a person" },
    },
];

/// Stands in for the user to find where an item names them: no id is this.
const MARK: &str = "\u{0}the user\u{0}";

/// Where each flag, segment and audit entry names the user: the key and the JSON pointers, not the rest of the
/// item, which is configuration and may name other users.
#[async_trait::async_trait]
impl keel::datamap::Holder for crate::store::FlagStore {
    fn entries(&self) -> &'static [Entry] {
        ENTRIES
    }

    async fn export(
        &self,
        subject: &keel::datamap::DataSubject,
        sink: &mut dyn keel::datamap::ExportSink,
    ) -> Result<(), keel::port::PortError> {
        use keel::datamap::{mentions, to_record};
        let user = subject.user_id.as_str();
        // Where the flag names users (as an erasure would replace them), found by marking those places.
        for flag in self.flags().await.map_err(port_error)? {
            let mut marked = flag.clone();
            if marked.pseudonymize_user(user, MARK) > 0 {
                let at = mentions(&to_record(&marked)?, MARK);
                sink.record("flags.flag", serde_json::json!({"key": flag.key, "names_the_user_at": at}))?;
            }
        }
        for segment in self.segments().await.map_err(port_error)? {
            let mut marked = segment.clone();
            if marked.pseudonymize_user(user, MARK) > 0 {
                let at = mentions(&to_record(&marked)?, MARK);
                sink.record("flags.segment", serde_json::json!({"name": segment.name, "names_the_user_at": at}))?;
            }
        }
        let mut after = None;
        loop {
            let (entries, next) = self.audit(None, after, keel::table::MAX_QUERY_LIMIT).await.map_err(port_error)?;
            for entry in entries {
                let Some(marked) = crate::store::pseudonymized_entry(&entry, user, MARK) else { continue };
                let record = serde_json::json!({
                    "id": entry.id,
                    "at": entry.at,
                    "action": entry.action,
                    "subject": entry.subject,
                    "names_the_user_at": mentions(&to_record(&marked)?, MARK),
                });
                sink.record("flags.audit", record)?;
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    async fn erase(
        &self,
        subject: &keel::datamap::ErasureSubject,
        dry_run: bool,
        tally: &mut keel::datamap::Tally,
    ) -> Result<(), keel::port::PortError> {
        self.erase_user(&subject.subject.user_id, &subject.pseudonym, dry_run, tally).await.map_err(port_error)
    }
}

fn port_error(error: crate::store::StoreError) -> keel::port::PortError {
    use crate::store::StoreError;
    match error {
        StoreError::Port(error) => error,
        // An admin's change landed in between: worth another try.
        StoreError::VersionMismatch { .. } | StoreError::AlreadyExists => {
            keel::port::PortError::Unavailable(format!("the flag store: {error}"))
        }
        other => keel::port::PortError::Invalid(format!("the flag store: {other}")),
    }
}
