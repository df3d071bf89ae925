//! The object store port on the local disk. Each object's bytes are one file under `objects/<store>/`, named by a
//! ULID so keys need no escaping and `a` and `a/b` can both exist, as in S3; its key, size, time and content type
//! are a row of a redb table in the database file, which gives ordered listings and an atomic replace.
//!
//! A put copies the source to a temporary file, syncs it, renames it into place and then commits the row; a crash in
//! between leaves an unreferenced file and no object, never a row without its bytes.
//!
//! Links are `{base}/{key}?expires=..&signature=..`, signed with HMAC-SHA256 under a key kept in the database (so
//! links outlive a restart); the local host serves them through [`EmbeddedObjects::open_link`].

use super::{EmbeddedDb, malformed, read_table, unavailable};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use keel::clock::Clock;
use keel::object::{
    MAX_LIST_LIMIT, MAX_OBJECT_BYTES, ObjectInfo, ObjectPage, ObjectStore, check_key, check_link_validity, check_prefix,
};
use keel::port::PortError;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::Write as _;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

type Def<'a> = TableDefinition<'a, &'static str, &'static [u8]>;

/// One signing key per store, by store name.
const LINK_KEYS: &str = "object-link-keys";

#[derive(Serialize, Deserialize)]
struct Row {
    file: String,
    size: u64,
    modified_ms: i64,
    content_type: String,
}

impl Row {
    fn decode(bytes: &[u8]) -> Result<Self, PortError> {
        serde_json::from_slice(bytes).map_err(|_| malformed("object row"))
    }

    fn info(&self, key: &str) -> Result<ObjectInfo, PortError> {
        let modified =
            DateTime::<Utc>::from_timestamp_millis(self.modified_ms).ok_or_else(|| malformed("object time"))?;
        Ok(ObjectInfo { key: key.to_string(), size: self.size, modified })
    }
}

/// Why a link was not honoured. The local host answers each with 403, as S3 does, except `Missing` (404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefused {
    #[error("the link has expired")]
    Expired,
    #[error("the link's signature does not match")]
    BadSignature,
    #[error("the object does not exist")]
    Missing,
    #[error("{0}")]
    Unavailable(PortError),
}

/// What a valid link names: the file to send and how to label it.
#[derive(Debug, Clone)]
pub struct LinkedFile {
    pub path: PathBuf,
    pub size: u64,
    pub content_type: String,
}

/// An [`ObjectStore`] kept beside an [`EmbeddedDb`].
#[derive(Clone)]
pub struct EmbeddedObjects {
    db: EmbeddedDb,
    name: String,
    redb_name: Arc<str>,
    files: PathBuf,
    link_base: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for EmbeddedObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedObjects").field("name", &self.name).finish_non_exhaustive()
    }
}

fn io_failed(operation: &str) -> impl Fn(std::io::Error) -> PortError + '_ {
    move |e| PortError::Unavailable(format!("object store {operation} failed: {}", e.kind()))
}

impl EmbeddedObjects {
    /// `link_base` is the URL under which the host serves this store's links (no trailing `/`).
    pub(crate) fn new(db: EmbeddedDb, name: &str, link_base: &str, clock: Arc<dyn Clock>) -> Result<Self, PortError> {
        let root = db.path().parent().map(Path::to_path_buf).unwrap_or_default();
        let files = root.join("objects").join(name);
        std::fs::create_dir_all(files.join("tmp")).map_err(io_failed("setup"))?;
        Ok(Self {
            redb_name: format!("objects:{name}").into(),
            name: name.to_string(),
            db,
            files,
            link_base: link_base.trim_end_matches('/').to_string(),
            clock,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn row(&self, key: &str) -> Result<Option<Row>, PortError> {
        check_key(key)?;
        let redb_name = self.redb_name.clone();
        let key = key.to_string();
        self.db
            .blocking(move |db| {
                let Some(table) = read_table(db, Def::new(&redb_name))? else { return Ok(None) };
                let guard = table.get(key.as_str()).map_err(|e| unavailable("read", e))?;
                guard.map(|g| Row::decode(g.value())).transpose()
            })
            .await
    }

    /// Writes `row` for `key` (or removes it) and returns the row it replaced.
    async fn set_row(&self, key: &str, row: Option<Row>) -> Result<Option<Row>, PortError> {
        let redb_name = self.redb_name.clone();
        let key = key.to_string();
        let value = row.map(|row| serde_json::to_vec(&row)).transpose().map_err(|_| malformed("object row"))?;
        self.db
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                let old = {
                    let mut table = txn.open_table(Def::new(&redb_name)).map_err(|e| unavailable("write", e))?;
                    let old = match &value {
                        Some(value) => table.insert(key.as_str(), value.as_slice()),
                        None => table.remove(key.as_str()),
                    }
                    .map_err(|e| unavailable("write", e))?;
                    old.map(|guard| Row::decode(guard.value())).transpose()?
                };
                txn.commit().map_err(|e| unavailable("commit", e))?;
                Ok(old)
            })
            .await
    }

    /// The store's link signing key, made on first use.
    async fn link_key(&self) -> Result<Vec<u8>, PortError> {
        let name = self.name.clone();
        self.db
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| unavailable("write", e))?;
                let key = {
                    let mut table = txn.open_table(Def::new(LINK_KEYS)).map_err(|e| unavailable("write", e))?;
                    let existing =
                        table.get(name.as_str()).map_err(|e| unavailable("read", e))?.map(|g| g.value().to_vec());
                    match existing {
                        Some(key) => key,
                        None => {
                            let key: [u8; 32] = rand::random();
                            table.insert(name.as_str(), key.as_slice()).map_err(|e| unavailable("write", e))?;
                            key.to_vec()
                        }
                    }
                };
                txn.commit().map_err(|e| unavailable("commit", e))?;
                Ok(key)
            })
            .await
    }

    fn signature(link_key: &[u8], key: &str, expires: i64) -> Result<Hmac<Sha256>, PortError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(link_key).map_err(|_| malformed("link key"))?;
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        Ok(mac)
    }

    /// Checks a link's `expires` and `signature` (its query parameters) for `key` (its path below the base) and
    /// names the file to serve.
    pub async fn open_link(&self, key: &str, expires: &str, signature: &str) -> Result<LinkedFile, LinkRefused> {
        let link_key = self.link_key().await.map_err(LinkRefused::Unavailable)?;
        let expires_at: i64 = expires.parse().map_err(|_| LinkRefused::BadSignature)?;
        let given = hex::decode(signature).map_err(|_| LinkRefused::BadSignature)?;
        Self::signature(&link_key, key, expires_at)
            .map_err(LinkRefused::Unavailable)?
            .verify_slice(&given)
            .map_err(|_| LinkRefused::BadSignature)?;
        if self.clock.now().timestamp() >= expires_at {
            return Err(LinkRefused::Expired);
        }
        let row = self.row(key).await.map_err(|_| LinkRefused::Missing)?.ok_or(LinkRefused::Missing)?;
        Ok(LinkedFile { path: self.files.join(&row.file), size: row.size, content_type: row.content_type })
    }
}

/// Copies `source` to `tmp`, synced to disk; returns its size.
fn copy_synced(source: &Path, tmp: &Path) -> Result<u64, PortError> {
    let mut from = std::fs::File::open(source).map_err(io_failed("read of the source"))?;
    let mut to = std::fs::File::create(tmp).map_err(io_failed("write"))?;
    let size = std::io::copy(&mut from, &mut to).map_err(io_failed("write"))?;
    to.flush().map_err(io_failed("write"))?;
    to.sync_all().map_err(io_failed("sync"))?;
    Ok(size)
}

#[async_trait]
impl ObjectStore for EmbeddedObjects {
    async fn put_file(&self, key: &str, source: &Path, content_type: &str) -> Result<ObjectInfo, PortError> {
        check_key(key)?;
        let size = std::fs::metadata(source).map_err(io_failed("read of the source"))?.len();
        if size > MAX_OBJECT_BYTES {
            return Err(PortError::Invalid(format!("an object holds at most {MAX_OBJECT_BYTES} bytes")));
        }
        let file = ulid::Ulid::new().to_string();
        let tmp = self.files.join("tmp").join(&file);
        let target = self.files.join(&file);
        let source = source.to_path_buf();
        let size = tokio::task::spawn_blocking(move || -> Result<u64, PortError> {
            let size = copy_synced(&source, &tmp)?;
            std::fs::rename(&tmp, &target).map_err(io_failed("rename"))?;
            Ok(size)
        })
        .await
        .map_err(|_| PortError::Unavailable("object store task failed".into()))??;
        let row =
            Row { file, size, modified_ms: self.clock.now().timestamp_millis(), content_type: content_type.into() };
        let info = row.info(key)?;
        if let Some(old) = self.set_row(key, Some(row)).await? {
            let _ = std::fs::remove_file(self.files.join(old.file));
        }
        Ok(info)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let Some(row) = self.row(key).await? else { return Ok(None) };
        let path = self.files.join(row.file);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            // Replaced or deleted between the row's read and this one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_failed("read")(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError> {
        self.row(key).await?.map(|row| row.info(key)).transpose()
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        check_key(key)?;
        if let Some(old) = self.set_row(key, None).await? {
            match std::fs::remove_file(self.files.join(old.file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_failed("delete")(e)),
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage, PortError> {
        check_prefix(prefix)?;
        if limit == 0 {
            return Err(PortError::Invalid("a listing's limit must be at least 1".into()));
        }
        let limit = limit.min(MAX_LIST_LIMIT);
        let redb_name = self.redb_name.clone();
        let prefix = prefix.to_string();
        let after = after.map(str::to_string);
        self.db
            .blocking(move |db| {
                let Some(table) = read_table(db, Def::new(&redb_name))? else { return Ok(ObjectPage::default()) };
                let lower = match after.as_deref() {
                    Some(after) if after >= prefix.as_str() => Bound::Excluded(after),
                    _ => Bound::Included(prefix.as_str()),
                };
                let range = table.range::<&str>((lower, Bound::Unbounded)).map_err(|e| unavailable("read", e))?;
                let mut page = ObjectPage::default();
                for entry in range {
                    let (key, value) = entry.map_err(|e| unavailable("read", e))?;
                    let key = key.value();
                    if !key.starts_with(prefix.as_str()) {
                        return Ok(page);
                    }
                    if page.objects.len() == limit {
                        page.next = page.objects.last().map(|o| o.key.clone());
                        return Ok(page);
                    }
                    page.objects.push(Row::decode(value.value())?.info(key)?);
                }
                Ok(page)
            })
            .await
    }

    async fn link(&self, key: &str, valid_for: Duration) -> Result<String, PortError> {
        check_key(key)?;
        check_link_validity(valid_for)?;
        let link_key = self.link_key().await?;
        let expires = self.clock.now().timestamp() + i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX);
        let signature = hex::encode(Self::signature(&link_key, key, expires)?.finalize().into_bytes());
        Ok(format!("{}/{key}?expires={expires}&signature={signature}", self.link_base))
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.db.ping().await?;
        std::fs::metadata(&self.files).map(|_| ()).map_err(io_failed("directory check"))
    }
}
