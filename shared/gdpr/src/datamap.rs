//! The data map: every domain's entries, and the directory's own. The GDPR tasks walk it without knowing any
//! domain's key formats; `GET /v1/admin/gdpr/data-map` serves it as the record of processing (GDPR Art. 30).

use crate::directory::TABLE_VAR;
use keel::datamap::{Entry, Erasure, Export, Retention, Subject};

const PURPOSE: &str = "Knowing who belongs to and administers each customer organization (GDPR Art. 6(1)(b)).";
const AUDIT_PURPOSE: &str =
    "Accountability for changes to who may act for an organization and for access to personal data (GDPR Art. 5(2)).";

/// The directory's items.
pub const DIRECTORY: &[Entry] = &[
    Entry {
        name: "directory.organization",
        table: TABLE_VAR,
        pk: "ORG#{org}",
        sk: "ORG",
        description: "A customer organization: its name and how many members and admins it has.",
        subject: Subject::Organization,
        personal_data: &[],
        purpose: PURPOSE,
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "about an organization, not a person; the memberships are included" },
        erasure: Erasure::Keep {
            exemption: "holds nothing about a person; deleted with a user who is its only member",
        },
    },
    Entry {
        name: "directory.membership",
        table: TABLE_VAR,
        pk: "ORG#{org}",
        sk: "MEMBER#{user}",
        description: "A user's membership of an organization and their role in it.",
        subject: Subject::User,
        personal_data: &["user_id", "role", "since"],
        purpose: PURPOSE,
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Include,
        erasure: Erasure::Delete,
    },
    Entry {
        name: "directory.membership_by_user",
        table: TABLE_VAR,
        pk: "USER#{user}",
        sk: "ORG#{org}",
        description: "The same membership, listed by user.",
        subject: Subject::User,
        personal_data: &["user_id", "role", "since"],
        purpose: PURPOSE,
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "a copy of directory.membership, which the bundle includes" },
        erasure: Erasure::Delete,
    },
    Entry {
        name: "directory.audit",
        table: TABLE_VAR,
        pk: "AUDIT",
        sk: "{id}",
        description: "The audit trail of directory changes and GDPR operations: who changed which organization or \
            membership, who exported whose data and why, when.",
        subject: Subject::User,
        personal_data: &["actor", "resource", "before", "after"],
        purpose: AUDIT_PURPOSE,
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Include,
        erasure: Erasure::Pseudonymize,
    },
    Entry {
        name: "directory.audit_index",
        table: TABLE_VAR,
        pk: "AUDIT#{index}",
        sk: "{id}",
        description: "The same audit entries, by organization and by actor.",
        subject: Subject::User,
        personal_data: &["actor", "resource", "before", "after"],
        purpose: AUDIT_PURPOSE,
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "copies of directory.audit, which the bundle includes" },
        erasure: Erasure::Pseudonymize,
    },
];

/// What the GDPR tasks keep of their own: export bundles, in the export bucket (an object store's entry: `pk` is
/// the object's key, `sk` empty); erasures' records and receipts, and suppressions.
pub const GDPR: &[Entry] = &[
    Entry {
        name: "gdpr.export_bundle",
        table: crate::export::BUCKET_VAR,
        pk: "exports/{id}.zip",
        sk: "",
        description: "A user's export bundle: a zip of everything the export found about them.",
        subject: Subject::User,
        personal_data: &["every record of the entries an export includes"],
        purpose: "Giving users their data (GDPR Art. 15 and 20).",
        recipients: &["the user, through a link valid 15 minutes"],
        retention: Retention::Expires { seconds: 8 * 24 * 3600 },
        export: Export::Exclude { reason: "copies of the other entries, which a new bundle includes afresh" },
        erasure: Erasure::Delete,
    },
    Entry {
        name: "gdpr.erasure",
        table: TABLE_VAR,
        pk: "ERASURE#{pseudonym}",
        sk: "{id}",
        description: "An erasure: whom it erases while it runs, who asked and why; once done, its receipt, naming the \
        user's pseudonym only.",
        subject: Subject::User,
        personal_data: &["user_id (until the erasure completes)", "requested_by", "reason"],
        purpose: "Carrying out erasures and proving them afterwards (GDPR Art. 17 and 5(2)).",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "names the user only while it erases them" },
        erasure: Erasure::Keep {
            exemption: "the proof of an erasure (Art. 5(2)); it names the pseudonym, not the user",
        },
    },
    Entry {
        name: "gdpr.erasure_id",
        table: TABLE_VAR,
        pk: "ERASUREID#{id}",
        sk: "ERASURE",
        description: "Which partition (pseudonym) an erasure's record is in, by the erasure's id.",
        subject: Subject::Nobody,
        personal_data: &[],
        purpose: "Finding an erasure by its id.",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "holds a pseudonym only" },
        erasure: Erasure::Keep { exemption: "holds a pseudonym only" },
    },
    Entry {
        name: "gdpr.suppression",
        table: keel::suppression::TABLE_VAR,
        pk: "SUPPRESSED#{hash}",
        sk: "SUPPRESSED",
        description: "A keyed hash of an erased user's id: Keel refuses new personal data about them until it is lifted.",
        subject: Subject::User,
        personal_data: &["hash (keyed; not the id)"],
        purpose: "Keeping an erased user erased (GDPR Art. 17 and 21).",
        recipients: &[],
        retention: Retention::WhileInUse,
        export: Export::Exclude { reason: "a keyed hash, which only identifies the user with Keel's key" },
        erasure: Erasure::Keep { exemption: "what keeps the erasure from being undone; a keyed hash, not the id" },
    },
];

/// The whole map, every domain's entries in the order an erasure walks their holders (`crate::holders`).
pub fn data_map() -> Vec<Entry> {
    [
        DIRECTORY,
        GDPR,
        keel_jobs::datamap::ENTRIES,
        keel_webhooks::DATA_MAP,
        keel_flags::datamap::ENTRIES,
        keel::idempotency::DATA_MAP,
        keel::ratelimit::DATA_MAP,
        keel::cleanup::DATA_MAP,
    ]
    .concat()
}
