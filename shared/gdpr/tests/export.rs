//! The export's pieces on the embedded backend: every entry an export includes has a holder, the bundle's manifest
//! counts and hashes what its files hold, a record under an undeclared entry is refused, and the task stores one
//! bundle and, run again from its checkpoint, returns it without exporting again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use keel::clock::{Clock, ManualClock};
use keel::datamap::{DataSubject, Export, ExportSink};
use keel::object::ObjectStore;
use keel::port::PortError;
use keel::resources::StaticResources;
use keel_embedded::{EmbeddedDb, EmbeddedObjects, QueueSpec};
use keel_gdpr::datamap::data_map;
use keel_gdpr::directory::{Directory, OrgRole};
use keel_gdpr::export::{Bundle, ExportTask, Output};
use keel_gdpr::holders;
use keel_jobs::builtin::{Checkpoints, Task};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::{Arc, Mutex};

struct World {
    _dir: tempfile::TempDir,
    resources: StaticResources,
    objects: Arc<EmbeddedObjects>,
    directory: Directory,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap()));
    let directory_table = Arc::new(db.table("DirectoryTable", clock.clone()));
    let objects = Arc::new(db.objects("ExportBucket", "http://127.0.0.1:9/local/objects", clock.clone()).unwrap());
    let resources = StaticResources::new(clock.clone())
        .with_table("DIRECTORY_TABLE", directory_table.clone())
        .with_table("JOBS_TABLE", Arc::new(db.table("JobsTable", clock.clone())))
        .with_table("FLAGS_TABLE", Arc::new(db.table("FlagsTable", clock.clone())))
        .with_table("WEBHOOKS_TABLE", Arc::new(db.table("WebhooksTable", clock.clone())))
        .with_table("IDEMPOTENCY_TABLE", Arc::new(db.table("IdempotencyTable", clock.clone())))
        .with_queue("JOB_QUEUE_URL", Arc::new(db.queue(QueueSpec::new("JobQueue"), clock.clone())))
        .with_bus("EVENT_BUS_NAME", Arc::new(db.bus("EventBus")))
        .with_objects("EXPORT_BUCKET", objects.clone());
    World { _dir: dir, resources, objects, directory: Directory::new(directory_table, clock) }
}

fn subject(user: &str, orgs: &[&str]) -> DataSubject {
    DataSubject { user_id: user.into(), org_ids: orgs.iter().map(|o| o.to_string()).collect() }
}

#[test]
fn every_entry_an_export_includes_has_a_holder_and_every_holder_entry_is_in_the_map() {
    let w = world();
    let holders = holders(&w.resources).unwrap();
    let held: BTreeSet<&str> = holders.iter().flat_map(|h| h.entries().iter().map(|e| e.name)).collect();
    let map = data_map();
    let included: BTreeSet<&str> = map.iter().filter(|e| e.export == Export::Include).map(|e| e.name).collect();
    assert!(included.is_subset(&held), "entries without a holder: {:?}", included.difference(&held));
    let mapped: BTreeSet<&str> = map.iter().map(|e| e.name).collect();
    assert!(held.is_subset(&mapped), "holders' entries outside the map: {:?}", held.difference(&mapped));
}

#[test]
fn a_bundle_counts_and_hashes_its_files_and_refuses_an_undeclared_entry() {
    let dir = tempfile::tempdir().unwrap();
    let map = data_map();
    let mut bundle = Bundle::new(dir.path(), &map);
    for n in 0..3 {
        bundle.record("jobs.job", json!({"id": n})).unwrap();
    }
    bundle.record("directory.membership", json!({"org_id": "acme"})).unwrap();
    match bundle.record("jobs.owner", json!({})) {
        Err(PortError::Invalid(reason)) => assert!(reason.contains("jobs.owner"), "{reason}"),
        other => panic!("an excluded entry was accepted: {other:?}"),
    }
    match bundle.record("nobody.knows", json!({})) {
        Err(PortError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
    let at = Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap();
    let finished = bundle.finish(&subject("ann", &["acme"]), &map, at).unwrap();
    assert_eq!(finished.items["jobs.job"], 3);
    assert_eq!(finished.items["directory.membership"], 1);
    assert_eq!(finished.items["flags.flag"], 0, "an entry with nothing is listed with 0");

    let bytes = std::fs::read(&finished.path).unwrap();
    assert_eq!(bytes.len() as u64, finished.bytes);
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), finished.sha256);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut read = |name: &str| {
        let mut text = String::new();
        archive.by_name(name).unwrap().read_to_string(&mut text).unwrap();
        text
    };
    let manifest: Value = serde_json::from_str(&read("manifest.json")).unwrap();
    assert_eq!(manifest["created_at"], "2026-12-03T09:00:00Z");
    assert_eq!(manifest["subject"], json!({"user_id": "ann", "org_ids": ["acme"]}));
    let jobs = manifest["entries"].as_array().unwrap().iter().find(|e| e["name"] == "jobs.job").unwrap().clone();
    let text = read("jobs.job.jsonl");
    assert_eq!(text, "{\"id\":0}\n{\"id\":1}\n{\"id\":2}\n");
    assert_eq!(
        (jobs["items"].as_u64(), jobs["sha256"].as_str()),
        (Some(3), Some(hex::encode(sha2::Sha256::digest(&text)).as_str()))
    );
    assert_eq!(jobs["retention"], json!({"kind": "expires", "seconds": 30 * 24 * 3600}));
    assert_eq!(read("flags.flag.jsonl"), "");
    let excluded = manifest["excluded"].as_array().unwrap();
    assert!(excluded.iter().any(|e| e["name"] == "jobs.owner" && e["reason"].as_str().is_some_and(|r| !r.is_empty())));
}

/// Checkpoints kept in memory, as a job's record keeps them.
#[derive(Default)]
struct Saved(Mutex<Vec<Value>>);

#[async_trait]
impl Checkpoints for Saved {
    async fn save(&self, checkpoint: &Value) -> Result<bool, PortError> {
        self.0.lock().unwrap().push(checkpoint.clone());
        Ok(true)
    }
}

#[tokio::test]
async fn the_task_stores_one_bundle_and_a_run_from_its_checkpoint_returns_it() {
    let w = world();
    w.directory.put_org("op", "acme", "Acme").await.unwrap();
    w.directory.put_org("op", "globex", "Globex").await.unwrap();
    w.directory.set_member("op", "globex", "ann", OrgRole::Admin).await.unwrap();
    let task = ExportTask::from_resources(&w.resources).unwrap();
    let saved = Saved::default();
    let input = json!({"user_id": "ann", "org_ids": ["acme"]});
    let output = task.run(&input, None, &saved).await.unwrap();
    let output: Output = serde_json::from_value(output).unwrap();
    assert_eq!(output.items["directory.membership"], 1, "globex, found in the directory");
    let stored = w.objects.head(&output.bundle_key).await.unwrap().unwrap();
    assert_eq!(stored.size, output.bytes);
    let checkpoint = saved.0.lock().unwrap().last().cloned().unwrap();

    let again = task.run(&input, Some(&checkpoint), &saved).await.unwrap();
    assert_eq!(serde_json::from_value::<Output>(again).unwrap(), output);
    let listed = w.objects.list("exports/", None, 10).await.unwrap();
    assert_eq!(listed.objects.len(), 1, "nothing exported twice");
    let key = keel::table::Key::new(&output.bundle_key, "");
    let map = data_map();
    let entries = keel::datamap::classify(&map, keel_gdpr::export::BUCKET_VAR, &key);
    assert_eq!(entries.iter().map(|e| e.name).collect::<Vec<_>>(), ["gdpr.export_bundle"], "the bundle is declared");

    for bad in [json!({}), json!({"user_id": ""}), json!({"user_id": "ann", "extra": 1}), json!("ann")] {
        match task.run(&bad, None, &saved).await {
            Err(keel_jobs::builtin::TaskFailure::Failed(_)) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
}
