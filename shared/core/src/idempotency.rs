//! `Idempotency-Key` on every writing route, as the IETF draft (draft-ietf-httpapi-idempotency-key-header) says,
//! applied by the router so no handler deals with it.
//!
//! The guarantee: for one caller, route and key, within the window (24 h), the handler's work happens at most once
//! per fingerprint while a record exists; a repeat gets the first response back (status, headers, body) with
//! `Idempotent-Replayed: true`; the same key with another request (method, path, query, `If-Match`, body) gets 422;
//! a repeat while the first is running gets 409. The record is claimed before the handler runs (a conditional put
//! of an in-flight record) and holds a lease that ends at the invocation's deadline, when Lambda stops the request:
//! a request that died in between stops blocking then, never later. Expired records count as absent whether or not
//! anything deleted them (the table port enforces expiry on every read and condition).
//!
//! Only answers below 400 are stored. A 4xx means nothing was written (handlers never half-write), so the client
//! may fix the request and reuse the key; a 5xx means a backend failed, and the client's retry must run again. Those
//! release the claim. The gap: an answer larger than [`MAX_STORED_BODY`] is not stored either (the item would not
//! fit DynamoDB's 400 KB), so its repeat runs again; only an Unleash import report can be that large.
//!
//! Cost: a request without the header costs nothing. With it, a first request costs two writes (claim, store) and
//! a repeat one read after the failed claim (two calls).

use crate::clock::Clock;
use crate::config::ConfigError;
use crate::http::{Body, HeaderValue, Request, Response, header};
use crate::identity::Identity;
use crate::port::PortError;
use crate::problem::Problem;
use crate::resources::Resources;
use crate::table::{Attrs, Expect, Item, Key, Table, Write};
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest key, in characters.
pub const MAX_KEY_LEN: usize = 255;
/// How long a key is remembered.
pub const WINDOW: Duration = Duration::hours(24);
/// The lease when the invocation's deadline is unknown (a direct call outside Lambda).
const DEFAULT_LEASE: Duration = Duration::seconds(30);
/// The longest lease, whatever the deadline says (Lambda's own maximum is 15 minutes).
const MAX_LEASE: Duration = Duration::minutes(15);
/// Largest response body stored for replay.
pub const MAX_STORED_BODY: usize = 256 * 1024;

/// The table records live in: `IDEMPOTENCY_TABLE` in the template.
pub const TABLE_VAR: &str = "IDEMPOTENCY_TABLE";

/// The idempotency table's entry of the data map.
pub const DATA_MAP: &[crate::datamap::Entry] = &[
    crate::datamap::Entry {
        name: "api.idempotency_record",
        table: TABLE_VAR,
        pk: "IDEM#{org}",
        sk: "[\"{user}\",\"{route}\",\"{key}\"]",
        description: "A request made with an Idempotency-Key and the answer it got, replayed to its repeats.",
        subject: crate::datamap::Subject::User,
        personal_data: &["the caller's user id (in the key)", "the stored answer's body"],
        purpose: "Answering a retried request without doing its work twice.",
        recipients: &[],
        retention: crate::datamap::Retention::Expires { seconds: 24 * 3600 },
        export: crate::datamap::Export::Include,
        erasure: crate::datamap::Erasure::Delete,
    },
    crate::datamap::Entry {
        name: "api.idempotency_org",
        table: TABLE_VAR,
        pk: "IDEMORG#{shard}",
        sk: "{org}",
        description: "An organization that has Idempotency-Key records: what their cleanup reads.",
        subject: crate::datamap::Subject::Nobody,
        personal_data: &[],
        purpose: "Removing Idempotency-Key records after their 24 hours.",
        recipients: &[],
        retention: crate::datamap::Retention::WhileInUse,
        export: crate::datamap::Export::Exclude { reason: "holds nothing about a person" },
        erasure: crate::datamap::Erasure::Keep { exemption: "holds nothing about a person" },
    },
];

/// The organizations with records (`IDEMORG#{shard}` / `{org}`), for their cleanup: records are by organization,
/// which nothing else lists. Rewritten with every claim.
pub const ORGS: crate::cleanup::Listing = crate::cleanup::Listing { prefix: "IDEMORG", shards: 8 };

/// Deletes every listed organization's records past their expiry (24 hours after their answer). Records are keyed
/// by user, route and key, not time, so each organization's are read whole.
pub struct RecordsCleanup(pub Arc<dyn Table>);

#[async_trait::async_trait]
impl crate::cleanup::Cleanup for RecordsCleanup {
    fn name(&self) -> &'static str {
        "api.idempotency_records"
    }

    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<crate::cleanup::Swept, PortError> {
        let select = |org: &str| crate::table::Query {
            expired: true,
            limit: crate::table::MAX_QUERY_LIMIT,
            ..crate::table::Query::partition(format!("IDEM#{org}"))
        };
        let expired = |item: &Item| item.expires_at.is_some_and(|at| at <= now);
        ORGS.sweep(self.0.as_ref(), cursor, stop, removed, select, expired).await
    }
}

pub struct Idempotency {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
}

/// What the router does next.
pub enum Begun {
    /// Run the handler, then [`Idempotency::finish`] with its answer.
    Run(Claim),
    /// Answer this without running the handler (a replay, a conflict, a mismatch, a bad key).
    Answer(Response),
}

/// A claimed key: the in-flight record this request holds.
pub struct Claim {
    key: Key,
    version: u64,
    fingerprint: String,
}

#[async_trait::async_trait]
impl crate::datamap::Holder for Idempotency {
    fn entries(&self) -> &'static [crate::datamap::Entry] {
        DATA_MAP
    }

    /// The user's records in each of their organizations.
    async fn erase(
        &self,
        subject: &crate::datamap::ErasureSubject,
        dry_run: bool,
        tally: &mut crate::datamap::Tally,
    ) -> Result<(), PortError> {
        for org in &subject.subject.org_ids {
            let mut query = self.records_of(org, &subject.subject.user_id);
            loop {
                let page = self.table.query(&query).await?;
                for item in &page.items {
                    if !dry_run {
                        self.table.transact(vec![Write::Delete { key: item.key.clone(), expect: Expect::Any }]).await?;
                    }
                    crate::datamap::count(tally, DATA_MAP[0].name, 1);
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// The user's records in each of their organizations: a sort-key range, since each record's key starts with
    /// its user.
    async fn export(
        &self,
        subject: &crate::datamap::DataSubject,
        sink: &mut dyn crate::datamap::ExportSink,
    ) -> Result<(), PortError> {
        for org in &subject.org_ids {
            let mut query = self.records_of(org, &subject.user_id);
            loop {
                let page = self.table.query(&query).await?;
                for item in &page.items {
                    let [_, route, key]: [String; 3] = serde_json::from_str(&item.key.sk)
                        .map_err(|_| PortError::Invalid(format!("idempotency record `{}`", item.key.sk)))?;
                    // The answer's status, not its body: an answer can name other users (a membership the
                    // caller changed), and the items it describes are exported by their own domains.
                    let record = json!({
                        "org_id": org,
                        "route": route,
                        "idempotency_key": key,
                        "response_status": item.attrs.get("response").and_then(|r| r.get("status")),
                        "expires_at": item.expires_at,
                    });
                    sink.record(DATA_MAP[0].name, record)?;
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }
}

impl Idempotency {
    /// The query of `user`'s records in `org`: a sort-key range, since each record's key starts with its user.
    fn records_of(&self, org: &str, user: &str) -> crate::table::Query {
        let user = serde_json::to_string(&[user]).unwrap_or_default();
        let prefix = format!("{},", user.trim_end_matches(']'));
        let mut query = crate::table::Query::partition(format!("IDEM#{org}"));
        query.sk_from = Some(prefix.clone());
        query.sk_to = Some(format!("{prefix}{}", char::MAX));
        query.limit = crate::table::MAX_QUERY_LIMIT;
        query
    }

    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>) -> Self {
        Self { table, clock }
    }

    /// The records in the function's `IDEMPOTENCY_TABLE`.
    pub fn from_resources(resources: &dyn Resources) -> Result<Self, ConfigError> {
        Ok(Self::new(resources.table(TABLE_VAR)?, resources.clock()))
    }

    /// Claims `raw_key` for `caller` on `route` (its route key), or says what to answer instead.
    pub async fn begin(
        &self,
        caller: &Identity,
        route: &str,
        raw_key: &HeaderValue,
        request: &Request,
        deadline: DateTime<Utc>,
    ) -> Begun {
        let key = match parse_key(raw_key) {
            Ok(key) => key,
            Err(problem) => return Begun::Answer(problem.into_response()),
        };
        let record = Key::new(
            format!("IDEM#{}", caller.org_id),
            serde_json::to_string(&[caller.user_id.as_str(), route, key.as_str()]).unwrap_or_default(),
        );
        let fingerprint = fingerprint(request);
        // Two rounds at most: a claim that fails on a record which is gone (expired) by the time it is read is retried.
        for _ in 0..2 {
            let now = self.clock.now();
            let lease_until = lease_end(now, deadline);
            // A fresh claim's version is random, so a request whose claim was taken over and released since can
            // never match a later claim's version by chance of counting from 1 again.
            let version = rand::random_range(1..u64::MAX / 2);
            let claim = vec![
                Write::Put {
                    item: in_flight(&record, version, &fingerprint, now, lease_until),
                    expect: Expect::Absent,
                },
                // The organization has records now: listed for their cleanup.
                ORGS.put(&caller.org_id),
            ];
            match self.table.transact(claim).await {
                Ok(()) => return Begun::Run(Claim { key: record, version, fingerprint }),
                Err(PortError::ConditionFailed { .. }) => {}
                Err(error) => return Begun::Answer(unavailable(&error)),
            }
            let stored = match self.table.get(&record).await {
                Ok(Some(stored)) => stored,
                Ok(None) => continue,
                Err(error) => return Begun::Answer(unavailable(&error)),
            };
            if stored.attrs.get("fingerprint").and_then(Value::as_str) != Some(fingerprint.as_str()) {
                return Begun::Answer(
                    Problem::unprocessable(
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request; use a new key for a new request",
                    )
                    .at(HEADER)
                    .into_response(),
                );
            }
            if let Some(response) = stored.attrs.get("response") {
                return Begun::Answer(replay(response));
            }
            let held_until = stored.attrs.get("lease_until").and_then(Value::as_str).and_then(parse_time);
            if held_until.is_some_and(|until| until > now) {
                let wait = held_until.map_or(1, |until| (until - now).num_seconds().clamp(1, 900));
                return Begun::Answer(in_progress(wait));
            }
            // The request that held it died before answering: take it over, unless another request just did.
            let version = stored.version + 1;
            let taken = in_flight(&record, version, &fingerprint, now, lease_until);
            return match self.table.put(taken, Expect::Version(stored.version)).await {
                Ok(()) => Begun::Run(Claim { key: record, version, fingerprint }),
                Err(PortError::ConditionFailed { .. }) => Begun::Answer(in_progress(1)),
                Err(error) => Begun::Answer(unavailable(&error)),
            };
        }
        Begun::Answer(unavailable(&PortError::Unavailable("the idempotency record kept changing".into())))
    }

    /// Stores the handler's answer for replay (below 400), or releases the claim.
    pub async fn finish(&self, claim: Claim, response: Response) -> Response {
        let status = response.status().as_u16();
        let stored = (status < 400).then(|| stored_response(&response)).flatten();
        let result = match stored {
            Some(stored) => {
                let mut attrs = Attrs::new();
                attrs.insert("fingerprint".into(), claim.fingerprint.clone().into());
                attrs.insert("response".into(), stored);
                let item = Item {
                    key: claim.key.clone(),
                    attrs,
                    version: claim.version + 1,
                    expires_at: Some(self.clock.now() + WINDOW),
                };
                self.table.put(item, Expect::Version(claim.version)).await
            }
            None => self.table.delete(&claim.key, Expect::Version(claim.version)).await,
        };
        match result {
            Ok(()) => {}
            // Our lease ran out and another request took the key over: it owns the record now.
            Err(PortError::ConditionFailed { .. }) => {
                tracing::warn!(status, "an idempotency claim was taken over before its request answered");
            }
            Err(error) => tracing::warn!(%error, status, "the idempotency record could not be completed"),
        }
        response
    }
}

/// 409: the key's first request is still running; retry after `wait` seconds.
fn in_progress(wait: i64) -> Response {
    let mut response = Problem::new(
        409,
        "idempotency_in_flight",
        "a request with this Idempotency-Key is still in progress; retry later",
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn in_flight(key: &Key, version: u64, fingerprint: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>) -> Item {
    let mut attrs = Attrs::new();
    attrs.insert("fingerprint".into(), fingerprint.into());
    attrs.insert("lease_until".into(), lease_until.to_rfc3339().into());
    Item { key: key.clone(), attrs, version, expires_at: Some(now + WINDOW) }
}

fn lease_end(now: DateTime<Utc>, deadline: DateTime<Utc>) -> DateTime<Utc> {
    if deadline <= now { now + DEFAULT_LEASE } else { deadline.min(now + MAX_LEASE) }
}

fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw).ok().map(|at| at.with_timezone(&Utc))
}

fn unavailable(error: &PortError) -> Response {
    tracing::warn!(%error, "idempotency record unavailable");
    Problem::unavailable().into_response()
}

/// The key: a structured-field string (`"abc"`, as the draft writes it) or the bare token many clients send;
/// 1 to 255 printable ASCII characters.
pub fn parse_key(raw: &HeaderValue) -> Result<String, Problem> {
    let malformed = || {
        Problem::bad_request(
            "malformed_idempotency_key",
            format!("Idempotency-Key is 1 to {MAX_KEY_LEN} printable ASCII characters, optionally in double quotes"),
        )
        .at(HEADER)
    };
    let text = raw.to_str().map_err(|_| malformed())?.trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"').ok_or_else(malformed)?;
            let mut key = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(escaped @ ('"' | '\\')) => key.push(escaped),
                        _ => return Err(malformed()),
                    },
                    '"' => return Err(malformed()),
                    c => key.push(c),
                }
            }
            key
        }
        None if text.contains([' ', '"', '\\']) => return Err(malformed()),
        None => text.to_string(),
    };
    if key.is_empty() || key.chars().count() > MAX_KEY_LEN || !key.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(malformed());
    }
    Ok(key)
}

/// What makes two requests the same one: method, path, query, `If-Match` and body.
fn fingerprint(request: &Request) -> String {
    let mut hash = Sha256::new();
    hash.update(request.method().as_str());
    hash.update(b"\n");
    hash.update(request.uri().path());
    hash.update(b"?");
    hash.update(request.uri().query().unwrap_or_default());
    hash.update(b"\n");
    hash.update(request.headers().get(header::IF_MATCH).map(HeaderValue::as_bytes).unwrap_or_default());
    hash.update(b"\n");
    hash.update(request.body());
    hex::encode(hash.finalize())
}

fn stored_response(response: &Response) -> Option<Value> {
    let body: &[u8] = response.body();
    if body.len() > MAX_STORED_BODY {
        tracing::warn!(bytes = body.len(), "an answer too large to store for replay; a repeat will run again");
        return None;
    }
    // Every value of every header, in order (a name may repeat).
    let headers: Vec<Value> = response
        .headers()
        .iter()
        .filter_map(|(name, value)| Some(json!([name.as_str(), value.to_str().ok()?])))
        .collect();
    let (text, base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    Some(json!({"status": response.status().as_u16(), "headers": headers, "body": text, "base64": base64}))
}

fn replay(stored: &Value) -> Response {
    let text = stored["body"].as_str().unwrap_or_default();
    let body = if stored["base64"] == true {
        Body::Binary(base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default())
    } else if text.is_empty() {
        Body::Empty
    } else {
        Body::Text(text.to_string())
    };
    let mut response = ::http::Response::new(body);
    let status = stored["status"].as_u64().and_then(|status| u16::try_from(status).ok()).unwrap_or(200);
    *response.status_mut() = ::http::StatusCode::from_u16(status).unwrap_or(::http::StatusCode::OK);
    for pair in stored["headers"].as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else { continue };
        if let (Ok(name), Ok(value)) = (header::HeaderName::try_from(name), HeaderValue::from_str(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Result<String, Problem> {
        parse_key(&HeaderValue::from_str(raw).unwrap())
    }

    #[test]
    fn keys_are_quoted_strings_or_bare_tokens_of_printable_ascii() {
        assert_eq!(key("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
        assert_eq!(key("abc-123").unwrap(), "abc-123");
        assert_eq!(key("\"a \\\"quoted\\\" key\"").unwrap(), "a \"quoted\" key");
        assert_eq!(key(&format!("\"{}\"", "k".repeat(255))).unwrap().len(), 255);
        for bad in ["", "\"\"", "\"open", "two words", "\"bad\\escape\"", "\"a\"b\"", "tab\there"] {
            assert!(HeaderValue::from_str(bad).is_err() || key(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(key(&"k".repeat(256)).unwrap_err().status, 400);
        let non_ascii = HeaderValue::from_bytes("clé".as_bytes()).unwrap();
        assert_eq!(parse_key(&non_ascii).unwrap_err().code, "malformed_idempotency_key");
    }

    #[test]
    fn leases_end_at_the_deadline_within_bounds() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(lease_end(now, now + Duration::seconds(10)), now + Duration::seconds(10));
        assert_eq!(lease_end(now, DateTime::UNIX_EPOCH), now + DEFAULT_LEASE);
        assert_eq!(lease_end(now, now + Duration::hours(2)), now + MAX_LEASE);
    }
}
