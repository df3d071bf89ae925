//! The directory: organizations and their members with a role each, which is what last-admin protection and an
//! erasure's blockers are decided on. Every change is audited in the same transaction (`keel::audit`).
//!
//! Guarantee: an organization that has members keeps at least one admin. The organization's item counts its
//! members and admins and every membership change rewrites it under its version, so two admins removing each
//! other at once cannot both succeed. Tokens still carry the roles requests are authorized with; the directory is
//! the record of who administers what, kept beside them.
//!
//! Items (`DIRECTORY_TABLE`):
//! - `ORG#{org}` / `ORG`: name, member and admin counts;
//! - `ORG#{org}` / `MEMBER#{user}`: one membership;
//! - `USER#{user}` / `ORG#{org}`: the same membership, by user (written in the same transaction);
//! - the audit trail's partitions (`AUDIT`, `AUDIT#ORG#{org}`, `AUDIT#ACTOR#{user}`), which also hold the GDPR
//!   operations' entries (an export of another user by a platform admin, with its reason).

use chrono::{DateTime, Utc};
use keel::audit::{self, AuditEntry};
use keel::clock::Clock;
use keel::datamap::{ANOTHER_USER, DataSubject, Entry, ErasureSubject, ExportSink, Holder, Tally, count, to_record};
use keel::port::PortError;
use keel::problem::FieldError;
use keel::table::{Expect, Key, Query, Table, Write, item_of, value_of};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub const TABLE_VAR: &str = "DIRECTORY_TABLE";

/// Longest organization or user id, in characters.
pub const MAX_ID_CHARS: usize = 128;
pub const MAX_NAME_CHARS: usize = 200;

/// Optimistic attempts at a membership change before it answers `Contended`.
const ATTEMPTS: usize = 5;
const ORG_SK: &str = "ORG";
const MEMBER_PREFIX: &str = "MEMBER#";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrgRole {
    Admin,
    Member,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub members: u32,
    pub admins: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Membership {
    pub org_id: String,
    pub user_id: String,
    pub role: OrgRole,
    pub since: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("no such organization")]
    OrgNotFound,
    #[error("no such member")]
    MemberNotFound,
    /// The change would leave an organization with members but no admin (its last admin removed or demoted, or
    /// a first member who is not an admin).
    #[error("an organization with members keeps an admin")]
    LastAdmin,
    /// Other changes to the organization kept winning; the caller may retry.
    #[error("the organization is being changed concurrently")]
    Contended,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Whether a change was made or found already in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

pub struct Directory {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
}

pub fn org_partition(org: &str) -> String {
    format!("ORG#{org}")
}

pub fn user_partition(user: &str) -> String {
    format!("USER#{user}")
}

fn member_sk(user: &str) -> String {
    format!("{MEMBER_PREFIX}{user}")
}

/// Checks an organization or user id (`pointer` names it in the error).
pub fn check_id(pointer: &str, id: &str) -> Result<(), FieldError> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError {
            pointer: pointer.to_string(),
            message: format!("1 to {MAX_ID_CHARS} characters, without spaces or control characters"),
        });
    }
    Ok(())
}

/// Checks an organization id: an id, and not one of Keel's reserved organizations (`keel:`, where its own exports
/// and erasures are filed).
pub fn check_org_id(pointer: &str, id: &str) -> Result<(), FieldError> {
    check_id(pointer, id)?;
    if id.starts_with(keel_jobs::RESERVED_DEDUP_PREFIX) {
        return Err(FieldError { pointer: pointer.to_string(), message: "ids starting `keel:` are Keel's own".into() });
    }
    Ok(())
}

fn invalid(error: FieldError) -> DirectoryError {
    DirectoryError::Invalid(vec![error])
}

impl Directory {
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>) -> Self {
        Self { table, clock }
    }

    /// Writes an audit entry of its own (a GDPR operation, which changes nothing in this table), before the
    /// operation it records starts: an operation may then fail after its entry, but never run without one.
    pub async fn record(&self, entry: &AuditEntry) -> Result<(), DirectoryError> {
        Ok(entry.append(self.table.as_ref()).await?)
    }

    pub async fn org(&self, id: &str) -> Result<Option<Organization>, DirectoryError> {
        Ok(self.org_versioned(id).await?.map(|(org, _)| org))
    }

    async fn org_versioned(&self, id: &str) -> Result<Option<(Organization, u64)>, DirectoryError> {
        let Some(item) = self.table.get(&Key::new(org_partition(id), ORG_SK)).await? else { return Ok(None) };
        Ok(Some((value_of(&item, "org")?, item.version)))
    }

    /// Creates the organization, or renames it.
    pub async fn put_org(&self, actor: &str, id: &str, name: &str) -> Result<(Organization, Change), DirectoryError> {
        check_org_id("/id", id).map_err(invalid)?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(invalid(FieldError {
                pointer: "/name".into(),
                message: format!("1 to {MAX_NAME_CHARS} characters, without control characters"),
            }));
        }
        for _ in 0..ATTEMPTS {
            let now = self.clock.now();
            let current = self.org_versioned(id).await?;
            let (org, expect, version, change, action) = match &current {
                None => {
                    let org = Organization {
                        id: id.to_string(),
                        name: name.to_string(),
                        members: 0,
                        admins: 0,
                        created_at: now,
                        updated_at: now,
                    };
                    (org, Expect::Absent, 1, Change::Created, "directory.org.create")
                }
                Some((org, _)) if org.name == name => return Ok((org.clone(), Change::Unchanged)),
                Some((org, version)) => {
                    let renamed = Organization { name: name.to_string(), updated_at: now, ..org.clone() };
                    (renamed, Expect::Version(*version), version + 1, Change::Updated, "directory.org.rename")
                }
            };
            let entry = AuditEntry::new(now, actor, Some(id), action, format!("org:{id}"))
                .with_change(current.as_ref().map(|(org, _)| name_of(org)), Some(name_of(&org)));
            let mut writes = vec![Write::Put { item: item_of(org_key(id), "org", &org, version)?, expect }];
            writes.extend(entry.writes()?);
            match self.table.transact(writes).await {
                Ok(()) => return Ok((org, change)),
                Err(e) if e.is_condition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DirectoryError::Contended)
    }

    pub async fn membership(&self, org: &str, user: &str) -> Result<Option<Membership>, DirectoryError> {
        Ok(self.membership_versioned(org, user).await?.map(|(m, _)| m))
    }

    async fn membership_versioned(&self, org: &str, user: &str) -> Result<Option<(Membership, u64)>, DirectoryError> {
        let Some(item) = self.table.get(&Key::new(org_partition(org), member_sk(user))).await? else {
            return Ok(None);
        };
        Ok(Some((value_of(&item, "member")?, item.version)))
    }

    /// Adds `user` to `org` with `role`, or changes their role. Demoting the organization's last admin, or adding a
    /// member to an organization without an admin, is refused.
    pub async fn set_member(
        &self,
        actor: &str,
        org: &str,
        user: &str,
        role: OrgRole,
    ) -> Result<(Membership, Change), DirectoryError> {
        check_id("/user_id", user).map_err(invalid)?;
        for _ in 0..ATTEMPTS {
            let now = self.clock.now();
            let Some((mut organization, org_version)) = self.org_versioned(org).await? else {
                return Err(DirectoryError::OrgNotFound);
            };
            let current = self.membership_versioned(org, user).await?;
            let (membership, member_expect, member_version, change) = match &current {
                Some((m, _)) if m.role == role => return Ok((m.clone(), Change::Unchanged)),
                Some((m, version)) => {
                    if m.role == OrgRole::Admin && organization.admins <= 1 {
                        return Err(DirectoryError::LastAdmin);
                    }
                    let changed = Membership { role, updated_at: now, ..m.clone() };
                    (changed, Expect::Version(*version), version + 1, Change::Updated)
                }
                // An organization's members always include an admin, from its first member on.
                None if organization.admins == 0 && role != OrgRole::Admin => return Err(DirectoryError::LastAdmin),
                None => {
                    organization.members += 1;
                    let added =
                        Membership { org_id: org.into(), user_id: user.into(), role, since: now, updated_at: now };
                    (added, Expect::Absent, 1, Change::Created)
                }
            };
            match (current.as_ref().map(|(m, _)| m.role), role) {
                (Some(OrgRole::Admin), OrgRole::Member) => organization.admins -= 1,
                (Some(OrgRole::Member) | None, OrgRole::Admin) => organization.admins += 1,
                _ => {}
            }
            organization.updated_at = now;
            let entry = AuditEntry::new(now, actor, Some(org), "directory.member.set", member_resource(org, user))
                .about(user)
                .with_change(current.as_ref().map(|(m, _)| role_of(m)), Some(role_of(&membership)));
            let mut writes = vec![
                Write::Put {
                    item: item_of(org_key(org), "org", &organization, org_version + 1)?,
                    expect: Expect::Version(org_version),
                },
                Write::Put {
                    item: item_of(
                        Key::new(org_partition(org), member_sk(user)),
                        "member",
                        &membership,
                        member_version,
                    )?,
                    expect: member_expect,
                },
                Write::Put {
                    item: item_of(Key::new(user_partition(user), org_partition(org)), "member", &membership, 1)?,
                    expect: Expect::Any,
                },
            ];
            writes.extend(entry.writes()?);
            match self.table.transact(writes).await {
                Ok(()) => return Ok((membership, change)),
                Err(e) if e.is_condition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DirectoryError::Contended)
    }

    /// Removes `user` from `org`. Removing the last admin while other members remain is refused.
    pub async fn remove_member(&self, actor: &str, org: &str, user: &str) -> Result<Membership, DirectoryError> {
        for _ in 0..ATTEMPTS {
            let now = self.clock.now();
            let Some((mut organization, org_version)) = self.org_versioned(org).await? else {
                return Err(DirectoryError::OrgNotFound);
            };
            let Some((membership, member_version)) = self.membership_versioned(org, user).await? else {
                return Err(DirectoryError::MemberNotFound);
            };
            if membership.role == OrgRole::Admin {
                if organization.admins <= 1 && organization.members > 1 {
                    return Err(DirectoryError::LastAdmin);
                }
                organization.admins -= 1;
            }
            organization.members -= 1;
            organization.updated_at = now;
            let entry = AuditEntry::new(now, actor, Some(org), "directory.member.remove", member_resource(org, user))
                .about(user)
                .with_change(Some(role_of(&membership)), None);
            let mut writes = vec![
                Write::Put {
                    item: item_of(org_key(org), "org", &organization, org_version + 1)?,
                    expect: Expect::Version(org_version),
                },
                Write::Delete {
                    key: Key::new(org_partition(org), member_sk(user)),
                    expect: Expect::Version(member_version),
                },
                Write::Delete { key: Key::new(user_partition(user), org_partition(org)), expect: Expect::Any },
            ];
            writes.extend(entry.writes()?);
            match self.table.transact(writes).await {
                Ok(()) => return Ok(membership),
                Err(e) if e.is_condition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DirectoryError::Contended)
    }

    /// One page of an organization's members, by user id; the cursor is the last user id of the page.
    pub async fn members(
        &self,
        org: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Membership>, Option<String>), DirectoryError> {
        let mut query = Query::partition(org_partition(org));
        query.sk_from = Some(MEMBER_PREFIX.to_string());
        // '$' follows '#': the upper bound of every `MEMBER#...` sort key.
        query.sk_to = Some("MEMBER$".to_string());
        query.after = after.map(member_sk);
        query.limit = limit;
        let page = self.table.query(&query).await?;
        let members = page.items.iter().map(|item| value_of(item, "member")).collect::<Result<Vec<_>, _>>()?;
        let next = page.next.and_then(|sk| sk.strip_prefix(MEMBER_PREFIX).map(str::to_string));
        Ok((members, next))
    }

    /// Every organization `user` belongs to.
    pub async fn memberships(&self, user: &str) -> Result<Vec<Membership>, DirectoryError> {
        let mut query = Query::partition(user_partition(user));
        query.limit = keel::table::MAX_QUERY_LIMIT;
        let mut all = Vec::new();
        loop {
            let page = self.table.query(&query).await?;
            for item in &page.items {
                all.push(value_of(item, "member")?);
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(all),
            }
        }
    }
}

/// Where a user stands in each organization they belong to, for an erasure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Standing {
    /// Organizations the user is the last admin of while others are members: an erasure waits for a handover.
    pub last_admin_of: Vec<String>,
    /// Organizations the user is the only member of: erased with them.
    pub alone_in: Vec<String>,
    /// Every organization the user belongs to.
    pub member_of: Vec<String>,
}

impl Directory {
    pub async fn standing(&self, user: &str) -> Result<Standing, DirectoryError> {
        let mut standing = Standing::default();
        for membership in self.memberships(user).await? {
            let org = membership.org_id;
            let Some(organization) = self.org(&org).await? else { continue };
            if organization.members <= 1 {
                standing.alone_in.push(org.clone());
            } else if membership.role == OrgRole::Admin && organization.admins <= 1 {
                standing.last_admin_of.push(org.clone());
            }
            standing.member_of.push(org);
        }
        Ok(standing)
    }

    /// Deletes an organization whose only member is `user`, with that membership, in one audited transaction;
    /// `false` when it has other members now (the caller then removes the membership alone).
    async fn erase_org(&self, org: &str, user: &str) -> Result<bool, DirectoryError> {
        let Some((organization, version)) = self.org_versioned(org).await? else { return Ok(true) };
        if organization.members > 1 {
            return Ok(false);
        }
        let entry = AuditEntry::new(self.clock.now(), keel::datamap::ERASER, Some(org), "directory.org.erase", {
            format!("org:{org}")
        })
        .about(user);
        let mut writes = vec![
            Write::Delete { key: org_key(org), expect: Expect::Version(version) },
            Write::Delete { key: Key::new(org_partition(org), member_sk(user)), expect: Expect::Any },
            Write::Delete { key: Key::new(user_partition(user), org_partition(org)), expect: Expect::Any },
        ];
        writes.extend(entry.writes()?);
        match self.table.transact(writes).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_condition_failed() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait::async_trait]
impl Holder for Directory {
    fn entries(&self) -> &'static [Entry] {
        crate::datamap::DIRECTORY
    }

    /// The user's memberships, and the audit entries they made or that are about their membership (in each of the
    /// subject's organizations), with any other user they name replaced by `(another user)`.
    async fn export(&self, subject: &DataSubject, sink: &mut dyn ExportSink) -> Result<(), PortError> {
        let user = &subject.user_id;
        for membership in self.memberships(user).await.map_err(PortError::from)? {
            sink.record("directory.membership", to_record(&membership)?)?;
        }
        let about_user = format!("/member:{user}");
        let mut partitions = vec![(audit::actor_partition(user), false)];
        partitions.extend(subject.org_ids.iter().map(|org| (audit::org_partition(org), true)));
        let mut seen = std::collections::BTreeSet::new();
        for (partition, only_about_user) in partitions {
            let mut query = Query::partition(partition);
            query.limit = keel::table::MAX_QUERY_LIMIT;
            loop {
                let page = self.table.query(&query).await?;
                for item in &page.items {
                    let mut entry = AuditEntry::from_item(item)?;
                    let relevant = !only_about_user || entry.resource.ends_with(&about_user) || entry.actor == *user;
                    if relevant && seen.insert(entry.id.clone()) {
                        // Whoever else the entry names (the actor, or the member acted on) is not the subject's.
                        if entry.actor != *user {
                            entry.actor = ANOTHER_USER.to_string();
                        }
                        if entry.subject.as_ref().is_some_and(|subject| subject != user) {
                            entry.subject = Some(ANOTHER_USER.to_string());
                        }
                        let redacted = redact_others(&entry.resource, user);
                        if redacted != entry.resource {
                            // The reason for acting on another user is about them too.
                            entry.resource = redacted;
                            entry.reason = None;
                        }
                        sink.record("directory.audit", to_record(&entry)?)?;
                    }
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// The user's memberships removed (an organization they are still its only member of deleted with them, if
    /// the erasure found them alone in it), then every entry of the directory's audit trail that names them
    /// pseudonymized (the whole trail is read: it is the directory's and the GDPR operations', and older entries name
    /// users only in their resource). The last admin of an organization with other members is refused (`Invalid`):
    /// the erasure checks for that before it starts, so this is a membership that changed since.
    async fn erase(&self, erasure: &ErasureSubject, dry_run: bool, tally: &mut Tally) -> Result<(), PortError> {
        let user = &erasure.subject.user_id;
        for membership in self.memberships(user).await.map_err(PortError::from)? {
            let org = &membership.org_id;
            let mut erased = erasure.orgs_alone.contains(org);
            if !dry_run {
                erased = erased && self.erase_org(org, user).await.map_err(PortError::from)?;
                if !erased {
                    match self.remove_member(keel::datamap::ERASER, org, user).await {
                        Ok(_) | Err(DirectoryError::MemberNotFound) | Err(DirectoryError::OrgNotFound) => {}
                        Err(DirectoryError::LastAdmin) => {
                            return Err(PortError::Invalid(format!(
                                "the user became the last admin of organization {org}, which has other members: \
                                 hand it over, then erase again"
                            )));
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            count(tally, "directory.membership", 1);
            count(tally, "directory.membership_by_user", 1);
            count(tally, "directory.organization", u64::from(erased));
        }
        let names = ("directory.audit", "directory.audit_index");
        let everything = [audit::ALL.to_string()];
        audit::pseudonymize(self.table.as_ref(), names, user, &erasure.pseudonym, &everything, dry_run, tally).await
    }
}

/// `resource` with every user it names other than `user` (`member:{id}`, `user:{id}`) written `(another user)`.
fn redact_others(resource: &str, user: &str) -> String {
    let pieces: Vec<String> = resource
        .split('/')
        .map(|piece| match piece.split_once(':') {
            Some((kind @ ("member" | "user"), id)) if id != user => format!("{kind}:{ANOTHER_USER}"),
            _ => piece.to_string(),
        })
        .collect();
    pieces.join("/")
}

/// For callers that speak the port's errors (an export): a refusal is invalid input, a backend failure stays one.
impl From<DirectoryError> for PortError {
    fn from(error: DirectoryError) -> Self {
        match error {
            DirectoryError::Port(error) => error,
            // Others' changes kept winning: worth another try.
            DirectoryError::Contended => PortError::Unavailable(DirectoryError::Contended.to_string()),
            other => PortError::Invalid(other.to_string()),
        }
    }
}

fn org_key(org: &str) -> Key {
    Key::new(org_partition(org), ORG_SK)
}

fn member_resource(org: &str, user: &str) -> String {
    format!("org:{org}/member:{user}")
}

fn name_of(org: &Organization) -> Value {
    serde_json::json!({ "name": org.name })
}

fn role_of(membership: &Membership) -> Value {
    serde_json::json!({ "role": membership.role })
}
