//! The directory on the embedded table: organizations, memberships, last-admin protection under concurrency, the
//! audit entries each change writes, and every item it writes declared once in the data map.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{TimeZone, Utc};
use keel::audit::AuditEntry;
use keel::clock::ManualClock;
use keel::table::{Query, Table};
use keel_embedded::{EmbeddedDb, EmbeddedTable};
use keel_gdpr::directory::{Change, Directory, DirectoryError, OrgRole, TABLE_VAR};
use std::sync::Arc;

struct Fixture {
    _dir: tempfile::TempDir,
    table: Arc<EmbeddedTable>,
    directory: Directory,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap()));
    let table = Arc::new(db.table("directory", clock.clone()));
    Fixture { _dir: dir, directory: Directory::new(table.clone(), clock), table }
}

impl Fixture {
    async fn audit(&self, partition: &str) -> Vec<AuditEntry> {
        let page = self.table.query(&Query::partition(partition)).await.unwrap();
        page.items.iter().map(|item| AuditEntry::from_item(item).unwrap()).collect()
    }

    /// `acme` with `ann` as its admin and `bob` as a member.
    async fn acme(&self) {
        self.directory.put_org("root", "acme", "Acme").await.unwrap();
        self.directory.set_member("root", "acme", "ann", OrgRole::Admin).await.unwrap();
        self.directory.set_member("ann", "acme", "bob", OrgRole::Member).await.unwrap();
    }
}

#[tokio::test]
async fn an_organization_is_created_renamed_and_left_alone_when_nothing_changes() {
    let f = fixture();
    let (org, change) = f.directory.put_org("root", "acme", " Acme ").await.unwrap();
    assert_eq!((org.name.as_str(), org.members, org.admins, change), ("Acme", 0, 0, Change::Created));
    let (_, change) = f.directory.put_org("root", "acme", "Acme").await.unwrap();
    assert_eq!(change, Change::Unchanged);
    let (org, change) = f.directory.put_org("root", "acme", "Acme Corp").await.unwrap();
    assert_eq!((org.name.as_str(), change), ("Acme Corp", Change::Updated));
    assert_eq!(f.directory.org("acme").await.unwrap().unwrap().name, "Acme Corp");
    assert!(f.directory.org("globex").await.unwrap().is_none());

    let actions: Vec<String> = f.audit("AUDIT#ORG#acme").await.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["directory.org.create", "directory.org.rename"], "an unchanged write is not audited");
}

#[tokio::test]
async fn bad_ids_and_names_are_refused_with_their_pointer() {
    let f = fixture();
    for (id, name, pointer) in [
        ("", "Acme", "/id"),
        ("a b", "Acme", "/id"),
        (&"x".repeat(129) as &str, "Acme", "/id"),
        ("acme", "  ", "/name"),
        ("acme", "bad\u{7}name", "/name"),
        ("acme", &"n".repeat(201), "/name"),
    ] {
        match f.directory.put_org("root", id, name).await {
            Err(DirectoryError::Invalid(errors)) => assert_eq!(errors[0].pointer, pointer, "{id:?} {name:?}"),
            other => panic!("{id:?} {name:?}: {other:?}"),
        }
    }
    f.directory.put_org("root", "acme", "Acme").await.unwrap();
    match f.directory.set_member("root", "acme", "", OrgRole::Member).await {
        Err(DirectoryError::Invalid(errors)) => assert_eq!(errors[0].pointer, "/user_id"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.directory.set_member("root", "globex", "ann", OrgRole::Member).await,
        Err(DirectoryError::OrgNotFound)
    ));
    assert!(matches!(f.directory.remove_member("root", "acme", "nobody").await, Err(DirectoryError::MemberNotFound)));
}

#[tokio::test]
async fn memberships_are_listed_by_organization_and_by_user_and_counted() {
    let f = fixture();
    f.acme().await;
    f.directory.put_org("root", "globex", "Globex").await.unwrap();
    f.directory.set_member("root", "globex", "bob", OrgRole::Admin).await.unwrap();

    let (_, change) = f.directory.set_member("ann", "acme", "bob", OrgRole::Member).await.unwrap();
    assert_eq!(change, Change::Unchanged);
    let org = f.directory.org("acme").await.unwrap().unwrap();
    assert_eq!((org.members, org.admins), (2, 1));

    let (page, next) = f.directory.members("acme", None, 1).await.unwrap();
    assert_eq!(page.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(), ["ann"]);
    let (rest, end) = f.directory.members("acme", next.as_deref(), 10).await.unwrap();
    assert_eq!(rest.iter().map(|m| (m.user_id.as_str(), m.role)).collect::<Vec<_>>(), [("bob", OrgRole::Member)]);
    assert!(end.is_none());

    let bobs: Vec<(String, OrgRole)> =
        f.directory.memberships("bob").await.unwrap().into_iter().map(|m| (m.org_id, m.role)).collect();
    assert_eq!(bobs, [("acme".to_string(), OrgRole::Member), ("globex".to_string(), OrgRole::Admin)]);

    f.directory.remove_member("ann", "acme", "bob").await.unwrap();
    assert_eq!(f.directory.memberships("bob").await.unwrap().len(), 1, "the by-user copy goes with the membership");
    let org = f.directory.org("acme").await.unwrap().unwrap();
    assert_eq!((org.members, org.admins), (1, 1));
}

#[tokio::test]
async fn the_last_admin_of_an_organization_with_members_can_be_neither_removed_nor_demoted() {
    let f = fixture();
    f.acme().await;
    assert!(matches!(f.directory.remove_member("ann", "acme", "ann").await, Err(DirectoryError::LastAdmin)));
    assert!(matches!(
        f.directory.set_member("ann", "acme", "ann", OrgRole::Member).await,
        Err(DirectoryError::LastAdmin)
    ));
    // Handing over first makes both possible.
    f.directory.set_member("ann", "acme", "bob", OrgRole::Admin).await.unwrap();
    f.directory.set_member("ann", "acme", "ann", OrgRole::Member).await.unwrap();
    f.directory.remove_member("bob", "acme", "ann").await.unwrap();
    // An admin alone in an organization may leave it, which leaves it empty; demoting them is still refused.
    assert!(matches!(
        f.directory.set_member("bob", "acme", "bob", OrgRole::Member).await,
        Err(DirectoryError::LastAdmin)
    ));
    f.directory.remove_member("bob", "acme", "bob").await.unwrap();
    let org = f.directory.org("acme").await.unwrap().unwrap();
    assert_eq!((org.members, org.admins), (0, 0));
    // An organization without an admin takes an admin first.
    assert!(matches!(
        f.directory.set_member("root", "acme", "cat", OrgRole::Member).await,
        Err(DirectoryError::LastAdmin)
    ));
    f.directory.set_member("root", "acme", "cat", OrgRole::Admin).await.unwrap();
    f.directory.set_member("root", "acme", "dan", OrgRole::Member).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_removing_each_other_at_once_leave_one_admin() {
    for round in 0..10 {
        let f = fixture();
        f.acme().await;
        f.directory.set_member("ann", "acme", "cat", OrgRole::Admin).await.unwrap();
        let directory = Arc::new(f.directory);
        let (a, b) = tokio::join!(
            {
                let d = directory.clone();
                async move { d.remove_member("cat", "acme", "ann").await }
            },
            {
                let d = directory.clone();
                async move { d.remove_member("ann", "acme", "cat").await }
            }
        );
        assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(), 1, "round {round}: {a:?} {b:?}");
        assert!(matches!(a.err().or(b.err()), Some(DirectoryError::LastAdmin)), "round {round}");
        let org = directory.org("acme").await.unwrap().unwrap();
        assert_eq!((org.members, org.admins), (2, 1), "round {round}");
    }
}

#[tokio::test]
async fn each_change_is_audited_under_every_partition_with_before_and_after() {
    let f = fixture();
    f.acme().await;
    f.directory.set_member("ann", "acme", "bob", OrgRole::Admin).await.unwrap();
    f.directory.remove_member("bob", "acme", "ann").await.unwrap();

    let all = f.audit("AUDIT").await;
    assert_eq!(all, f.audit("AUDIT#ORG#acme").await);
    let summary: Vec<(&str, &str, &str)> =
        all.iter().map(|e| (e.actor.as_str(), e.action.as_str(), e.resource.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("root", "directory.org.create", "org:acme"),
            ("root", "directory.member.set", "org:acme/member:ann"),
            ("ann", "directory.member.set", "org:acme/member:bob"),
            ("ann", "directory.member.set", "org:acme/member:bob"),
            ("bob", "directory.member.remove", "org:acme/member:ann"),
        ]
    );
    assert_eq!(all[3].before, Some(serde_json::json!({"role": "member"})));
    assert_eq!(all[3].after, Some(serde_json::json!({"role": "admin"})));
    assert_eq!(all[4].after, None);
    let anns: Vec<&str> = all.iter().filter(|e| e.actor == "ann").map(|e| e.id.as_str()).collect();
    let own: Vec<String> = f.audit("AUDIT#ACTOR#ann").await.into_iter().map(|e| e.id).collect();
    assert_eq!(own, anns);
}

#[tokio::test]
async fn every_item_the_directory_writes_is_declared_once_in_the_data_map() {
    let f = fixture();
    f.acme().await;
    let map = keel_gdpr::datamap::data_map();
    let mut seen = std::collections::BTreeSet::new();
    for key in f.table.keys().await.unwrap() {
        let entries = keel::datamap::classify(&map, TABLE_VAR, &key);
        assert_eq!(entries.len(), 1, "{key:?} matches {:?}", entries.iter().map(|e| e.name).collect::<Vec<_>>());
        seen.insert(entries[0].name);
    }
    let declared: std::collections::BTreeSet<&str> = keel_gdpr::datamap::DIRECTORY.iter().map(|e| e.name).collect();
    assert_eq!(seen, declared, "every directory entry is written by this history");
}
