//! The flag store on the AWS adapter (DynamoDB through the official SDK) against the emulator (moto): create,
//! versioned updates and conflicts, the audit trail in pages, Unleash import, the snapshot evaluation loads, and
//! usage records; then the admin function itself wired by `FLAGS_TABLE`.
//!
//! Everything runs one operation at a time: when a transaction fails, moto restores a copy of the whole table taken
//! before it, undoing writes other requests made meanwhile (see aws_pipeline.rs). Concurrent writers are
//! covered on the embedded backend (functions/flags-admin/tests/admin.rs).

use chrono::{DateTime, Duration, Utc};
use keel::clock::{Clock, ManualClock};
use keel::config::Env;
use keel::port::PortError;
use keel::table::{Expect, Item, Key, Page, Query, Table, Write};
use keel_aws::testing::{Emulator, unique_name};
use keel_aws::{AwsResources, DynamoTable, provision};
use keel_flags::store::{FlagStore, ImportMode, StoreError, flag_subject};
use keel_flags::{Context, Flag, Override, OverrideAction, Reason, Rollout, Rule, Stickiness, unleash};
use keel_tests::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A table that, once armed, lets another writer change flag `f` just before the next transaction: the race a
/// conditional write must catch, played one step at a time.
struct Interfering {
    inner: Arc<dyn Table>,
    other: FlagStore,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl Table for Interfering {
    async fn get(&self, key: &Key) -> Result<Option<Item>, PortError> {
        self.inner.get(key).await
    }
    async fn put(&self, item: Item, expect: Expect) -> Result<(), PortError> {
        self.inner.put(item, expect).await
    }
    async fn delete(&self, key: &Key, expect: Expect) -> Result<(), PortError> {
        self.inner.delete(key, expect).await
    }
    async fn query(&self, query: &Query) -> Result<Page, PortError> {
        self.inner.query(query).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<(), PortError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.other
                .update("f", None, "other", "update", |flag| {
                    flag.target_users.push(format!("user-{}", flag.version));
                    Ok(())
                })
                .await
                .map_err(|e| PortError::Unavailable(e.to_string()))?;
        }
        self.inner.transact(writes).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}

fn start() -> DateTime<Utc> {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

async fn table_name() -> String {
    let client = aws_sdk_dynamodb::Client::new(&Emulator::shared().sdk_config());
    let name = unique_name("flags");
    provision::ensure_table(&client, &name).await.unwrap();
    name
}

async fn store(name: &str) -> (FlagStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start()));
    let client = aws_sdk_dynamodb::Client::new(&Emulator::shared().sdk_config());
    let table = Arc::new(DynamoTable::new(client, name, clock.clone() as Arc<dyn Clock>));
    (FlagStore::new(table, clock.clone()), clock)
}

fn rollout_flag(key: &str, percentage: f64) -> Flag {
    let mut flag = Flag::new(key);
    flag.description = "half the organizations".into();
    flag.rules.push(Rule {
        id: "half".into(),
        constraints: vec![],
        segments: vec![],
        rollout: Some(Rollout { percentage, stickiness: Stickiness::default(), group_id: None }),
        variants: vec![],
        starts_at: None,
        ends_at: None,
        disabled: false,
    });
    flag
}

#[tokio::test]
async fn the_store_on_dynamodb() {
    let name = table_name().await;
    let (store, clock) = store(&name).await;

    // Create: version 1, audited, a revision to reload on.
    assert_eq!(store.revision().await.unwrap(), None);
    let created = store.create(rollout_flag("checkout", 50.0), "alice").await.unwrap();
    assert_eq!((created.version, created.updated_by.as_str(), created.updated_at), (1, "alice", start()));
    assert_eq!(store.get("checkout").await.unwrap(), Some(created.clone()));
    let first_revision = store.revision().await.unwrap();
    assert!(first_revision.is_some());
    assert!(matches!(store.create(Flag::new("checkout"), "alice").await, Err(StoreError::AlreadyExists)));

    // Update: with the right version, then a conflict naming the current one, then without If-Match.
    clock.advance(Duration::seconds(10));
    let updated = store
        .update("checkout", Some(1), "bob", "update", |flag| {
            flag.description = "more".into();
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!((updated.version, updated.updated_by.as_str()), (2, "bob"));
    let conflict = store.update("checkout", Some(1), "carol", "update", |_| Ok(())).await;
    assert!(matches!(conflict, Err(StoreError::VersionMismatch { current: 2 })), "{conflict:?}");
    let invalid = store
        .update("checkout", None, "carol", "update", |flag| {
            flag.rules[0].rollout.as_mut().unwrap().percentage = 120.0;
            Ok(())
        })
        .await;
    match invalid {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].pointer, "/rules/0/rollout/percentage"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    for n in 0..3 {
        store
            .update("checkout", None, "dave", "set_override", |flag| {
                flag.overrides.push(Override {
                    org_id: format!("org-{n}"),
                    action: OverrideAction::ForcedOn,
                    reason: "pilot".into(),
                    starts_at: None,
                    expires_at: Some(start() + Duration::days(30)),
                    created_by: "dave".into(),
                });
                Ok(())
            })
            .await
            .unwrap();
    }
    let stored = store.get("checkout").await.unwrap().unwrap();
    assert_eq!((stored.version, stored.overrides.len()), (5, 3));
    assert_eq!(stored.rules[0].rollout.as_ref().unwrap().percentage, 50.0);
    assert_ne!(store.revision().await.unwrap(), first_revision);
    assert!(matches!(store.update("nope", None, "x", "update", |_| Ok(())).await, Err(StoreError::NotFound)));

    // The audit trail, newest first, in pages of 2: five changes to the flag.
    let mut pages = vec![];
    let mut after = None;
    loop {
        let (entries, next) = store.audit(Some(&flag_subject("checkout")), after, 2).await.unwrap();
        pages.push(entries);
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let entries: Vec<_> = pages.iter().flatten().collect();
    assert!(pages.iter().all(|page| page.len() <= 2));
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["set_override", "set_override", "set_override", "update", "create"]);
    assert_eq!(entries[3].actor, "bob");
    assert_eq!(entries[3].before.as_ref().unwrap()["description"], "half the organizations");
    assert_eq!(entries[3].after.as_ref().unwrap()["description"], "more");
    assert_eq!(entries[4].before, None);
    let (overall, _) = store.audit(None, None, 100).await.unwrap();
    assert_eq!(overall.len(), 5);

    // Import: created, then the same document unchanged, then a changed one updated.
    let document = |rollout: &str| {
        json!({"version": 2, "features": [
            {"name": "search-v2", "enabled": true, "type": "experiment", "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": rollout, "stickiness": "userId", "groupId": "search-v2"},
                 "segments": [7]}],
             "variants": [{"name": "a", "weight": 500, "payload": {"type": "json", "value": "{\"x\":1}"}}, {"name": "b", "weight": 500, "payload": {"type": "json", "value": "{\"x\":2}"}}]},
            {"name": "kill-exports", "enabled": false, "type": "kill-switch", "strategies": []}],
         "segments": [{"id": 7, "name": "beta", "constraints": [
            {"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@beta.example"]}]}]})
    };
    let import = |doc: serde_json::Value| unleash::convert(&unleash::parse(&doc).unwrap(), start());
    let report = store.import(import(document("30")), "importer", ImportMode::Strict, false).await.unwrap();
    assert_eq!(report.created, ["search-v2", "kill-exports"]);
    assert_eq!(report.segments_written, ["unleash-segment-7"]);
    let report = store.import(import(document("30")), "importer", ImportMode::Strict, false).await.unwrap();
    assert_eq!((report.created.len(), report.updated.len(), report.unchanged.len()), (0, 0, 2));
    assert!(report.segments_written.is_empty());
    let report = store.import(import(document("70")), "importer", ImportMode::Strict, false).await.unwrap();
    assert_eq!(report.updated, ["search-v2"]);
    let mut bad = document("30");
    bad["features"][0]["strategies"][0]["name"] = json!("applicationHostname");
    let before = store.audit(None, None, 100).await.unwrap().0.len();
    assert!(matches!(
        store.import(import(bad), "importer", ImportMode::Strict, false).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.audit(None, None, 100).await.unwrap().0.len(), before);

    // Segments: versioned like flags.
    let (segment, version) = store.segment("unleash-segment-7").await.unwrap().unwrap();
    assert_eq!(version, 1);
    let conflict = store.put_segment(segment.clone(), Some(9), "alice").await;
    assert!(matches!(conflict, Err(StoreError::VersionMismatch { current: 1 })));
    assert_eq!(store.put_segment(segment, Some(1), "alice").await.unwrap().1, 2);

    // The snapshot evaluation loads: every live flag, compiled, segments resolved.
    let (revision, snapshot) = store.load().await.unwrap();
    assert_eq!(revision, store.revision().await.unwrap());
    assert_eq!(snapshot.keys(), ["checkout", "kill-exports", "search-v2"]);
    let org = |id: &str| Context { organization_id: Some(id.into()), ..Context::default() };
    let answer = snapshot.evaluate("checkout", &org("org-1"), start());
    assert_eq!((answer.value, answer.reason, answer.version), (true, Reason::Override, 5));
    assert_eq!(snapshot.evaluate("kill-exports", &org("org-1"), start()).reason, Reason::Killed);
    let beta = Context {
        user_id: Some("u-1".into()),
        attributes: BTreeMap::from([("email".into(), "x@beta.example".into())]),
        ..Context::default()
    };
    let outsider = Context { user_id: Some("u-1".into()), ..Context::default() };
    assert!(!snapshot.evaluate("search-v2", &outsider, start()).value);
    let (evaluation, steps) = snapshot.explain("search-v2", &beta, start());
    assert!(steps.iter().any(|s| s.stage == "rule"), "{steps:?}");
    assert_eq!(evaluation.version, 2);

    // Usage: when each flag was last evaluated.
    assert!(store.usage().await.unwrap().is_empty());
    let at = start() + Duration::minutes(5);
    store.record_usage(&BTreeMap::from([("checkout".to_string(), at), ("search-v2".to_string(), at)])).await.unwrap();
    let later = at + Duration::minutes(1);
    store.record_usage(&BTreeMap::from([("checkout".to_string(), later)])).await.unwrap();
    assert_eq!(
        store.usage().await.unwrap(),
        BTreeMap::from([("checkout".to_string(), later), ("search-v2".to_string(), at)])
    );
}

#[tokio::test]
async fn dynamodb_catches_a_write_between_read_and_transaction() {
    let name = table_name().await;
    let clock = Arc::new(ManualClock::new(start()));
    let client = aws_sdk_dynamodb::Client::new(&Emulator::shared().sdk_config());
    let inner: Arc<dyn Table> = Arc::new(DynamoTable::new(client, name, clock.clone() as Arc<dyn Clock>));
    let other = FlagStore::new(inner.clone(), clock.clone());
    let table = Arc::new(Interfering { inner, other, armed: AtomicBool::new(false) });
    let store = FlagStore::new(table.clone(), clock.clone());
    store.create(Flag::new("f"), "alice").await.unwrap();

    // With If-Match: the other writer's version 2 lands first, so this one fails and names it.
    table.armed.store(true, Ordering::SeqCst);
    let lost = store
        .update("f", Some(1), "alice", "update", |flag| {
            flag.description = "mine".into();
            Ok(())
        })
        .await;
    assert!(matches!(lost, Err(StoreError::VersionMismatch { current: 2 })), "{lost:?}");

    // Without: the change is read again and applied on top of the other one.
    table.armed.store(true, Ordering::SeqCst);
    let landed = store
        .update("f", None, "alice", "update", |flag| {
            flag.description = "mine".into();
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(landed.version, 4);
    assert_eq!((landed.description.as_str(), landed.target_users.len()), ("mine", 2));

    // The audit holds exactly the writes that landed.
    let (entries, _) = store.audit(Some(&flag_subject("f")), None, 100).await.unwrap();
    let who: Vec<(&str, u64)> =
        entries.iter().map(|e| (e.actor.as_str(), e.after.as_ref().unwrap()["version"].as_u64().unwrap())).collect();
    assert_eq!(who, [("alice", 4), ("other", 3), ("other", 2), ("alice", 1)]);
}

#[tokio::test]
async fn the_admin_function_on_dynamodb() {
    let name = table_name().await;
    let env = Env::from_pairs([
        ("FLAGS_TABLE", name.clone()),
        ("IDEMPOTENCY_TABLE", table_name().await),
        ("RATE_LIMITS_TABLE", table_name().await),
        ("DIRECTORY_TABLE", table_name().await),
        (keel::suppression::KEY_VAR, keel::testing::GDPR_HASH_KEY.to_string()),
    ]);
    let resources = AwsResources::new(&env, &Emulator::shared().sdk_config()).unwrap();
    let admin = flags_admin::build(&env, &resources).unwrap();
    let clock = keel::clock::SystemClock;
    let call = |method: http::Method, route: &str, path: &str, key: Option<&str>, body: Option<serde_json::Value>| {
        let mut request = api_request(method, route, path);
        if let Some(key) = key {
            request.path_parameters.insert("key".into(), key.into());
        }
        if let Some(body) = body {
            set_body(&mut request, body.to_string().as_bytes());
        }
        with_claims(request, "operator-1", "org-ops", &["platform-admin"])
    };

    let created = admin
        .call(
            call(http::Method::POST, "POST /v1/admin/flags", "/v1/admin/flags", None, Some(json!({"key": "f"}))),
            invocation(&clock),
        )
        .await;
    assert_eq!(created.status_code, 201, "{}", body_text(&created));
    assert_eq!(created.headers["etag"], "\"1\"");
    let mut replace = call(
        http::Method::PUT,
        "PUT /v1/admin/flags/{key}",
        "/v1/admin/flags/f",
        Some("f"),
        Some(json!({"key": "f", "default_value": true})),
    );
    replace.headers.insert("if-match", "\"1\"".parse().unwrap());
    // With an Idempotency-Key, on DynamoDB: the repeat is the stored answer (not 412 for the stale If-Match).
    replace.headers.insert("idempotency-key", "\"replace-f-1\"".parse().unwrap());
    let replaced = admin.call(replace.clone(), invocation(&clock)).await;
    assert_eq!(replaced.status_code, 200, "{}", body_text(&replaced));
    assert_eq!(replaced.headers["etag"], "\"2\"");
    let repeated = admin.call(replace, invocation(&clock)).await;
    assert_eq!(
        (repeated.status_code, &repeated.headers["idempotent-replayed"]),
        (200, &"true".parse::<http::HeaderValue>().unwrap())
    );
    assert_eq!(body_json(&repeated), body_json(&replaced));
    let audit = admin
        .call(
            call(http::Method::GET, "GET /v1/admin/flags/{key}/audit", "/v1/admin/flags/f/audit", Some("f"), None),
            invocation(&clock),
        )
        .await;
    let body = body_json(&audit);
    let actions: Vec<&str> = body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["update", "create"]);
    let explained = admin
        .call(
            call(
                http::Method::POST,
                "POST /v1/admin/flags/{key}/explain",
                "/v1/admin/flags/f/explain",
                Some("f"),
                Some(json!({})),
            ),
            invocation(&clock),
        )
        .await;
    assert_eq!(body_json(&explained)["evaluation"]["value"], true);
}
