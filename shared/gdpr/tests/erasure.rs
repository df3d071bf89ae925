//! Erasure on the embedded backend: a user who used every domain is erased; a new export of them is empty, the other
//! users' data is untouched, the audit trails keep every entry in order with the user pseudonymized, a processor's
//! confirmation lands in the receipt, a run that fails midway resumes from its checkpoint without erasing twice,
//! and the last admin of an organization with other members is refused before anything is erased.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::datamap::ERASER;
use keel::port::PortError;
use keel::resources::StaticResources;
use keel::table::{Expect, Item, Key, Query, Table, Write};
use keel::testing::SwitchableTable;
use keel_embedded::{EmbeddedDb, QueueSpec};
use keel_gdpr::directory::{Directory, OrgRole};
use keel_gdpr::erasure::{ConfirmationStatus, ERASURES_ORG, EraseTask, Erasures, Receipt, StartError};
use keel_gdpr::export::{ADMIN_EXPORTS_ORG, ExportTask, Output};
use keel_jobs::builtin::{Checkpoints, Task, TaskFailure};
use keel_jobs::{Created, Jobs, NewJob, Registry, Status};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

struct World {
    _dir: tempfile::TempDir,
    resources: StaticResources,
    env: Env,
    directory: Directory,
    jobs: Jobs,
    flags: keel_flags::store::FlagStore,
    tables: BTreeMap<&'static str, Arc<dyn Table>>,
    /// The jobs table, switchable off to fail an erasure midway.
    jobs_switch: Arc<SwitchableTable>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap()));
    let mut tables: BTreeMap<&'static str, Arc<dyn Table>> = BTreeMap::new();
    for (var, name) in [
        ("DIRECTORY_TABLE", "DirectoryTable"),
        ("FLAGS_TABLE", "FlagsTable"),
        ("WEBHOOKS_TABLE", "WebhooksTable"),
        ("IDEMPOTENCY_TABLE", "IdempotencyTable"),
    ] {
        tables.insert(var, Arc::new(db.table(name, clock.clone())));
    }
    let jobs_switch = Arc::new(SwitchableTable::new(Arc::new(db.table("JobsTable", clock.clone()))));
    tables.insert("JOBS_TABLE", jobs_switch.clone());
    let mut resources = StaticResources::new(clock.clone())
        .with_queue("JOB_QUEUE_URL", Arc::new(db.queue(QueueSpec::new("JobQueue"), clock.clone())))
        .with_bus("EVENT_BUS_NAME", Arc::new(db.bus("EventBus")))
        .with_objects(
            "EXPORT_BUCKET",
            Arc::new(db.objects("ExportBucket", "http://127.0.0.1:9", clock.clone()).unwrap()),
        );
    for (var, table) in &tables {
        resources = resources.with_table(var, table.clone());
    }
    let env = Env::from_pairs([
        (keel::suppression::KEY_VAR, keel::testing::GDPR_HASH_KEY),
        ("JOB_URL_NOTIFY", "http://127.0.0.1:9/notify"),
        ("JOB_SECRET_NOTIFY", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ]);
    World {
        _dir: dir,
        directory: Directory::new(tables["DIRECTORY_TABLE"].clone(), clock.clone()),
        jobs: keel_gdpr::jobs(&resources).unwrap(),
        flags: keel_flags::store::FlagStore::new(tables["FLAGS_TABLE"].clone(), clock),
        resources,
        env,
        tables,
        jobs_switch,
    }
}

impl World {
    fn registry(&self) -> Registry {
        Registry::sample(&self.env).unwrap()
    }

    fn erasures(&self) -> Erasures {
        Erasures::from_resources(&self.env, &self.resources, self.registry()).unwrap()
    }

    async fn job(&self, org: &str, user: &str, job_type: &str, input: Value) -> keel_jobs::Job {
        let registry = self.registry();
        let new = NewJob { job_type: job_type.into(), input, ..NewJob::default() };
        match self.jobs.create(org, user, registry.get(job_type).unwrap(), new, None).await.unwrap() {
            Created::New(job) => job,
            other => panic!("{other:?}"),
        }
    }

    async fn complete(&self, org: &str, id: &str, output: Value) {
        let current = self.jobs.get(org, id).await.unwrap().unwrap();
        self.jobs.finish(current, Status::Completed, None, Some(output)).await.unwrap();
    }

    async fn idempotency_record(&self, org: &str, user: &str, key: &str) {
        let sk = serde_json::to_string(&[user, "POST /v1/jobs", key]).unwrap();
        let mut item = Item::new(Key::new(format!("IDEM#{org}"), sk), serde_json::Map::new());
        item.attrs.insert("response".into(), json!({"status": 202}));
        self.tables["IDEMPOTENCY_TABLE"].transact(vec![Write::Put { item, expect: Expect::Absent }]).await.unwrap();
    }

    /// Every item of a table, as a map from key to item, for comparing before and after.
    async fn items(&self, var: &str, partition: &str) -> Vec<Item> {
        let mut query = Query::partition(partition);
        query.limit = keel::table::MAX_QUERY_LIMIT;
        let mut all = Vec::new();
        loop {
            let page = self.tables[var].query(&query).await.unwrap();
            all.extend(page.items);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return all,
            }
        }
    }

    async fn export(&self, user: &str, orgs: &[&str]) -> Output {
        let task = ExportTask::from_resources(&self.resources).unwrap();
        let input = json!({"user_id": user, "org_ids": orgs});
        serde_json::from_value(task.run(&input, None, &Saved::default()).await.unwrap()).unwrap()
    }
}

/// Checkpoints kept in memory, as a job's record keeps them.
#[derive(Default)]
struct Saved(Mutex<Vec<Value>>);

impl Saved {
    fn last(&self) -> Option<Value> {
        self.0.lock().unwrap().last().cloned()
    }
}

#[async_trait]
impl Checkpoints for Saved {
    async fn save(&self, checkpoint: &Value) -> Result<bool, PortError> {
        self.0.lock().unwrap().push(checkpoint.clone());
        Ok(true)
    }
}

/// Ann has used everything: two organizations (one she is alone in), jobs (one finished with an output, one still
/// pending), an operator's export of her with its bundle, flags and a segment naming her, Idempotency-Key
/// records, and audit entries in every trail. Bob shares her organization and flags.
async fn ann_and_bob(w: &World) {
    // Entries of an hour earlier first: audit ids follow each other within the fixed clock's millisecond.
    let at = Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap();
    // An entry from before entries named their subject: ann only in its resource.
    let older =
        keel::audit::AuditEntry::new(at, "carl", Some("acme"), "directory.member.set", "org:acme/member:ann".into());
    older.append(w.tables["DIRECTORY_TABLE"].as_ref()).await.unwrap();
    let replay = keel::audit::AuditEntry::new(at, "ann", None, "webhooks.delivery.replay", "delivery:d1".into());
    replay.append(w.tables["WEBHOOKS_TABLE"].as_ref()).await.unwrap();
    let d = &w.directory;
    d.put_org("op", "acme", "Acme").await.unwrap();
    d.put_org("op", "solo", "Ann's own").await.unwrap();
    d.set_member("op", "acme", "carl", OrgRole::Admin).await.unwrap();
    d.set_member("carl", "acme", "ann", OrgRole::Admin).await.unwrap();
    d.set_member("ann", "acme", "bob", OrgRole::Member).await.unwrap();
    d.set_member("op", "solo", "ann", OrgRole::Admin).await.unwrap();

    let done = w.job("acme", "ann", "notify.email", json!({"to": "ann@example.com", "template": "hi"})).await;
    w.complete("acme", &done.id, json!({"sent_to": "ann@example.com"})).await;
    w.job("acme", "ann", "notify.email", json!({"to": "ann@example.com", "template": "later"})).await;
    w.job("solo", "ann", "cache.warm", json!({"prefix": "ann/"})).await;
    w.job("acme", "bob", "notify.email", json!({"to": "bob@example.com", "template": "hi"})).await;
    // Someone outside the directory with a token for ann's own organization: theirs is not ann's to erase.
    w.job("solo", "zed", "cache.warm", json!({"prefix": "zed/"})).await;
    let export = w.job(ADMIN_EXPORTS_ORG, "op", "gdpr.export", json!({"user_id": "ann"})).await;
    let bundle = w.export("ann", &["acme"]).await;
    w.complete(ADMIN_EXPORTS_ORG, &export.id, json!(bundle)).await;

    let flag = |key: &str, users: &[&str]| {
        serde_json::from_value::<keel_flags::model::Flag>(json!({
            "key": key,
            "target_users": users,
            // An organization whose id is ann's is not about ann.
            "allow_orgs": ["ann"],
            "rules": [{"id": "r1", "constraints": [{"field": "userId", "operator": "IN", "values": users}]}],
        }))
        .unwrap()
    };
    w.flags.create(flag("beta", &["ann", "bob"]), "ann").await.unwrap();
    w.flags.create(flag("bobs", &["bob"]), "bob").await.unwrap();
    let segment: keel_flags::model::Segment = serde_json::from_value(json!({
        "name": "testers", "constraints": [{"field": "userId", "operator": "IN", "values": ["ann", "bob"]}]
    }))
    .unwrap();
    w.flags.put_segment(segment, None, "bob").await.unwrap();

    w.idempotency_record("acme", "ann", "k1").await;
    w.idempotency_record("acme", "bob", "k1").await;
    w.idempotency_record("solo", "ann", "k2").await;
}

/// Runs the erasure's task until it completes, completing the processor's request when it waits for it.
async fn run_to_receipt(w: &World, erasure_id: &str, saved: &Saved) -> Receipt {
    let task = EraseTask(w.erasures());
    let input = json!({"erasure_id": erasure_id});
    for _ in 0..3 {
        match task.run(&input, saved.last().as_ref(), saved).await {
            Ok(receipt) => return serde_json::from_value(receipt).unwrap(),
            Err(TaskFailure::Retriable(reason)) if reason.contains("processors") => {
                let checkpoint = saved.last().unwrap();
                let job_id = checkpoint["processors"]["notify.erase_user"].as_str().unwrap().to_string();
                let request = w.jobs.get(ERASURES_ORG, &job_id).await.unwrap().unwrap().job;
                assert_eq!(request.input, json!({"erasure_id": erasure_id, "user_id": "ann"}));
                w.complete(ERASURES_ORG, &job_id, json!({"erased": "ann", "messages": 3})).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    panic!("the erasure did not complete");
}

#[tokio::test]
async fn an_erased_user_leaves_nothing_behind_and_everyone_else_is_untouched() {
    let w = world();
    ann_and_bob(&w).await;
    let before = w.export("ann", &["acme", "solo"]).await;
    assert!(before.items.values().sum::<u64>() > 10, "{:?}", before.items);
    let bob_before = w.export("bob", &["acme"]).await;
    let trail_before = w.items("DIRECTORY_TABLE", "AUDIT").await;

    let erasures = w.erasures();
    let plan = erasures.plan("ann", &["acme".into()]).await.unwrap();
    assert!(plan.blockers.is_empty());
    assert_eq!(plan.orgs_erased, ["solo"]);
    assert_eq!(plan.processors, ["notify.erase_user"]);
    let planned: BTreeMap<&str, u64> = plan.entries.iter().map(|e| (e.name.as_str(), e.items)).collect();
    assert_eq!(planned["directory.membership"], 2);
    assert_eq!(planned["directory.organization"], 1);
    assert_eq!(planned["jobs.job"], 4, "three of hers and the operator's export of her");
    assert_eq!(planned["jobs.output"], 2);
    assert_eq!(planned["gdpr.export_bundle"], 1);
    assert_eq!(planned["flags.flag"], 1);
    assert_eq!(planned["flags.segment"], 1);
    assert_eq!(planned["api.idempotency_record"], 2);
    assert_eq!(planned["webhooks.audit"], 1);
    assert_eq!(erasures.plan("ann", &["acme".into()]).await.unwrap(), plan, "a dry run changes nothing");

    let (record, new) = erasures.start("ann", "ann", None, &["acme".into()], None).await.unwrap();
    assert!(new);
    let (again, new) = erasures.start("ann", "ann", None, &["acme".into()], None).await.unwrap();
    assert_eq!((again.id.as_str(), new), (record.id.as_str(), false), "one running erasure per user");
    let saved = Saved::default();
    let receipt = run_to_receipt(&w, &record.id, &saved).await;

    assert_eq!(receipt.erasure_id, record.id);
    assert_eq!(receipt.subject, record.pseudonym);
    assert!(receipt.subject.starts_with("erased-") && !receipt.subject.contains("ann"));
    assert_eq!(receipt.digest, keel_gdpr::erasure::digest(&receipt).unwrap());
    assert_eq!(receipt.orgs_erased, ["solo"]);
    for (entry, items) in &planned {
        assert!(receipt.items.get(*entry) >= Some(items), "{entry}: planned {items}, receipt {:?}", receipt.items);
    }
    let [confirmation] = receipt.processors.as_slice() else { panic!("{:?}", receipt.processors) };
    assert_eq!(confirmation.status, ConfirmationStatus::Confirmed);
    assert_eq!(confirmation.answer, Some(json!({"erased": receipt.subject, "messages": 3})), "pseudonymized");
    let request = confirmation.job_id.as_deref().unwrap();
    assert!(w.jobs.get(ERASURES_ORG, request).await.unwrap().is_none(), "the request naming ann is gone");

    // The record keeps the receipt and the pseudonym, not the id.
    let (kept, _) = erasures.get(&record.id).await.unwrap().unwrap();
    assert_eq!((kept.user_id, kept.requested_by.as_str()), (None, receipt.subject.as_str()));
    assert!(!serde_json::to_string(&kept.receipt).unwrap().contains("\"ann\""));

    // Nothing about ann is left.
    let after = w.export("ann", &["acme", "solo"]).await;
    assert_eq!(after.items.values().sum::<u64>(), 0, "{:?}", after.items);
    for var in ["DIRECTORY_TABLE", "JOBS_TABLE", "FLAGS_TABLE", "WEBHOOKS_TABLE", "IDEMPOTENCY_TABLE"] {
        for partition in ["AUDIT", "AUDIT#ACTOR#ann", "AUDIT#SUBJECT#ann", "AUDIT#ORG#acme", "JOB#acme", "FLAG"] {
            for item in w.items(var, partition).await {
                // The organization named like ann, kept on purpose (see `ann_and_bob`).
                let text = serde_json::to_string(&item.attrs).unwrap().replace(r#""allow_orgs":["ann"]"#, "");
                assert!(!text.contains("\"ann\"") && !text.contains(":ann"), "{var} {partition}: {text}");
            }
        }
    }
    assert!(w.directory.org("solo").await.unwrap().is_none(), "the organization she was alone in is gone");
    assert!(w.items("IDEMPOTENCY_TABLE", "IDEM#solo").await.is_empty());
    let left_in_solo: Vec<String> =
        w.items("JOBS_TABLE", "JOB#solo").await.iter().map(|i| i.attrs["user_id"].to_string()).collect();
    assert_eq!(left_in_solo, ["\"zed\""], "only ann's jobs there went");
    // What the erasure keeps of its own is declared, and names the pseudonym only.
    let map = keel_gdpr::datamap::data_map();
    let own = [
        Key::new(format!("ERASURE#{}", receipt.subject), &record.id),
        Key::new(format!("ERASUREID#{}", record.id), "ERASURE"),
        Key::new(format!("SUPPRESSED#{}", receipt.suppression), "SUPPRESSED"),
    ];
    for key in own {
        let item = w.tables["DIRECTORY_TABLE"].get(&key).await.unwrap().unwrap_or_else(|| panic!("{key:?}"));
        assert_eq!(keel::datamap::classify(&map, "DIRECTORY_TABLE", &key).len(), 1, "{key:?}");
        assert!(!serde_json::to_string(&item.attrs).unwrap().contains("\"ann\""), "{key:?}");
    }

    // Bob and acme are as they were (acme lost a member; bob's flags lost ann only).
    let bob_after = w.export("bob", &["acme"]).await;
    for entry in ["jobs.job", "jobs.output", "api.idempotency_record", "directory.membership", "flags.flag"] {
        assert_eq!(bob_after.items.get(entry), bob_before.items.get(entry), "{entry}");
    }
    let acme = w.directory.org("acme").await.unwrap().unwrap();
    assert_eq!((acme.members, acme.admins), (2, 1));
    let beta = w.flags.get("beta").await.unwrap().unwrap();
    assert_eq!(beta.target_users, [receipt.subject.clone(), "bob".into()]);
    assert_eq!(beta.allow_orgs, ["ann"], "only where the flag names users");

    // The trail keeps every entry, in order, each the same but for ann's pseudonym.
    let trail_after = w.items("DIRECTORY_TABLE", "AUDIT").await;
    let ids = |items: &[Item]| items.iter().map(|i| i.key.sk.clone()).collect::<Vec<_>>();
    let kept_ids: Vec<String> = ids(&trail_after).into_iter().filter(|id| ids(&trail_before).contains(id)).collect();
    assert_eq!(kept_ids, ids(&trail_before), "no entry lost, none reordered");
    for (old, new) in trail_before.iter().zip(&trail_after) {
        let old = keel::audit::AuditEntry::from_item(old).unwrap();
        let new = keel::audit::AuditEntry::from_item(new).unwrap();
        assert_eq!(old.pseudonymized("ann", &receipt.subject), new);
    }
    let added: Vec<keel::audit::AuditEntry> =
        trail_after[trail_before.len()..].iter().map(|i| keel::audit::AuditEntry::from_item(i).unwrap()).collect();
    assert!(added.iter().all(|e| e.actor == ERASER), "{added:?}");

    // Keel refuses new data about her, and a finished erasure run again returns its receipt.
    let suppressions = erasures.suppressions();
    assert!(suppressions.is_suppressed("ann").await.unwrap());
    assert!(!suppressions.is_suppressed("bob").await.unwrap());
    let refused = suppressions.refuse_any("/input/user_id", ["bob", "ann"]).await.unwrap_err();
    assert_eq!((refused.status, refused.code.as_str()), (409, "erased_user"));
    assert!(!refused.detail.contains("ann"));
    let rerun = run_to_receipt(&w, &record.id, &Saved::default()).await;
    assert_eq!(rerun, receipt);
}

#[tokio::test]
async fn an_erasure_that_fails_midway_resumes_from_its_checkpoint_and_counts_once() {
    let w = world();
    ann_and_bob(&w).await;
    let erasures = w.erasures();
    let (record, _) = erasures.start("ann", "op", Some("ticket 7: ann asked"), &["acme".into()], None).await.unwrap();
    let task = EraseTask(w.erasures());
    let saved = Saved::default();
    w.jobs_switch.set_down(true);
    let input = json!({"erasure_id": record.id});
    match task.run(&input, None, &saved).await {
        Err(TaskFailure::Retriable(_)) => {}
        other => panic!("{other:?}"),
    }
    let checkpoint = saved.last().unwrap();
    assert_eq!(checkpoint["holders_done"], 1, "the directory is done, the bundles' holder failed: {checkpoint}");
    assert_eq!(checkpoint["tally"]["directory.membership"], 2);
    assert!(erasures.suppressions().is_suppressed("ann").await.unwrap(), "suppressed before anything is erased");
    w.jobs_switch.set_down(false);

    let receipt = run_to_receipt(&w, &record.id, &saved).await;
    assert_eq!(receipt.items["directory.membership"], 2, "counted once, not again on the resumed run");
    assert_eq!(receipt.items["jobs.job"], 4);
    let (kept, _) = erasures.get(&record.id).await.unwrap().unwrap();
    let reason = format!("ticket 7: {} asked", receipt.subject);
    assert_eq!((kept.requested_by.as_str(), kept.reason.as_deref()), ("op", Some(reason.as_str())));
    assert_eq!(w.export("ann", &["acme", "solo"]).await.items.values().sum::<u64>(), 0);
}

#[tokio::test]
async fn the_last_admin_of_an_organization_with_members_is_refused_before_anything_is_erased() {
    let w = world();
    ann_and_bob(&w).await;
    w.directory.put_org("op", "beta", "Beta").await.unwrap();
    w.directory.set_member("op", "beta", "ann", OrgRole::Admin).await.unwrap();
    w.directory.set_member("ann", "beta", "dave", OrgRole::Member).await.unwrap();
    let erasures = w.erasures();
    let plan = erasures.plan("ann", &[]).await.unwrap();
    assert_eq!(plan.blockers, ["beta"]);
    match erasures.start("ann", "ann", None, &[], None).await {
        Err(StartError::LastAdmin(orgs)) => assert_eq!(orgs, ["beta"]),
        other => panic!("{other:?}"),
    }
    assert!(!erasures.suppressions().is_suppressed("ann").await.unwrap());

    // Handed over, the erasure may start; the handover undone before it runs, the task refuses as well.
    w.directory.set_member("ann", "beta", "dave", OrgRole::Admin).await.unwrap();
    let (record, _) = erasures.start("ann", "ann", None, &[], None).await.unwrap();
    w.directory.set_member("ann", "beta", "dave", OrgRole::Member).await.unwrap();
    match EraseTask(w.erasures()).run(&json!({"erasure_id": record.id}), None, &Saved::default()).await {
        Err(TaskFailure::Failed(reason)) => assert!(reason.contains("beta"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!erasures.suppressions().is_suppressed("ann").await.unwrap(), "nothing done");
    assert_eq!(w.directory.memberships("ann").await.unwrap().len(), 3);
}

#[test]
fn pseudonyms_are_stable_keyed_and_refuse_a_short_key() {
    let w = world();
    let table = w.tables["DIRECTORY_TABLE"].clone();
    let a = keel::suppression::Suppressions::new(table.clone(), keel::testing::GDPR_HASH_KEY.into()).unwrap();
    let b = keel::suppression::Suppressions::new(table.clone(), "another-key-of-32-bytes-or-more-!!".into()).unwrap();
    assert_eq!(a.pseudonym("ann"), a.pseudonym("ann"));
    assert_ne!(a.pseudonym("ann"), a.pseudonym("bob"));
    assert_ne!(a.pseudonym("ann"), b.pseudonym("ann"), "keyed");
    assert_ne!(a.hash("ann"), b.hash("ann"));
    assert!(!a.hash("ann").contains("ann") && !a.pseudonym("ann").contains("ann"));
    assert!(keel::suppression::Suppressions::new(table, "short".into()).is_err());
}
