//! Adapters over an embedded redb database (and, for objects, files beside it): the default backend for local
//! runs. No server; every acknowledged write is committed with redb's default durability (fsync before the call
//! returns), so data survives a restart or a SIGKILL.
//!
//! One file, `keel.redb`, holds every logical table, queue and bus, each in redb tables named after it. redb calls
//! block, so every port call runs them on tokio's blocking pool.

mod bus;
mod objects;
mod queue;
mod table;

pub use bus::{EmbeddedBus, RecordedEvent};
pub use objects::{EmbeddedObjects, LinkRefused, LinkedFile};
pub use queue::{EmbeddedQueue, QueueSpec};
pub use table::EmbeddedTable;

use keel::clock::Clock;
use keel::port::PortError;
use keel::queue::Queue;
use redb::Database;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// The file inside the directory given to [`EmbeddedDb::open`].
pub const FILE_NAME: &str = "keel.redb";

/// A bus rule: events matching `pattern` are sent to `target`.
#[derive(Clone)]
pub(crate) struct Rule {
    pub(crate) pattern: keel::bus::EventPattern,
    pub(crate) target: Arc<dyn Queue>,
}

pub(crate) struct Inner {
    pub(crate) db: Database,
    path: PathBuf,
    /// Woken when a queue may have a newly visible message, so long polls return at once.
    notifies: Mutex<HashMap<String, Arc<Notify>>>,
    /// Routing rules per bus name; configuration, not data, so kept in memory.
    rules: Mutex<HashMap<String, Vec<Rule>>>,
}

/// One open redb database and the in-process state its adapters share. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedDb {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDb").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

/// Databases open in this process by file path. redb locks its file, so a second `open` of the same directory
/// shares the first handle (and its queues' wake-ups and bus rules) instead of failing.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmbeddedDb {
    /// Opens (creating if needed) `dir/keel.redb`.
    pub fn open(dir: &Path) -> Result<Self, PortError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| PortError::Unavailable(format!("embedded db directory could not be created: {}", e.kind())))?;
        let dir = dir.canonicalize().map_err(|e| {
            PortError::Unavailable(format!("embedded db directory could not be resolved: {}", e.kind()))
        })?;
        let path = dir.join(FILE_NAME);
        let mut open = lock(&OPEN);
        open.retain(|_, weak| weak.strong_count() > 0);
        if let Some(inner) = open.get(&path).and_then(Weak::upgrade) {
            return Ok(Self { inner });
        }
        let db = create_database(&path)?;
        let inner = Arc::new(Inner {
            db,
            path: path.clone(),
            notifies: Mutex::new(HashMap::new()),
            rules: Mutex::new(HashMap::new()),
        });
        open.insert(path, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A logical table; many share the file, each in its own redb table.
    pub fn table(&self, name: &str, clock: Arc<dyn Clock>) -> EmbeddedTable {
        EmbeddedTable::new(self.clone(), name, clock)
    }

    pub fn queue(&self, spec: QueueSpec, clock: Arc<dyn Clock>) -> EmbeddedQueue {
        EmbeddedQueue::new(self.clone(), spec, clock)
    }

    pub fn bus(&self, name: &str) -> EmbeddedBus {
        EmbeddedBus::new(self.clone(), name)
    }

    /// An object store whose files live in `objects/<name>/` beside the database file; the host serves its links
    /// under `link_base`.
    pub fn objects(&self, name: &str, link_base: &str, clock: Arc<dyn Clock>) -> Result<EmbeddedObjects, PortError> {
        EmbeddedObjects::new(self.clone(), name, link_base, clock)
    }

    pub(crate) fn notify(&self, queue: &str) -> Arc<Notify> {
        lock(&self.inner.notifies).entry(queue.to_string()).or_default().clone()
    }

    pub(crate) fn add_rule(&self, bus: &str, rule: Rule) {
        lock(&self.inner.rules).entry(bus.to_string()).or_default().push(rule);
    }

    pub(crate) fn rules(&self, bus: &str) -> Vec<Rule> {
        lock(&self.inner.rules).get(bus).cloned().unwrap_or_default()
    }

    /// Runs blocking redb work off the async threads.
    pub(crate) async fn blocking<T, F>(&self, work: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, PortError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner.db))
            .await
            .map_err(|_| PortError::Unavailable("embedded db task failed".into()))?
    }

    /// A cheap read transaction: proves the database is open and readable.
    pub(crate) async fn ping(&self) -> Result<(), PortError> {
        self.blocking(|db| {
            use redb::ReadableDatabase;
            db.begin_read().map(|_| ()).map_err(|e| unavailable("read", e))
        })
        .await
    }
}

/// Opens the file, retrying briefly while a handle being dropped in this process still holds redb's lock.
fn create_database(path: &Path) -> Result<Database, PortError> {
    let mut attempts = 0;
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(PortError::Unavailable("embedded db is open in another process".into()));
            }
            Err(e) => return Err(unavailable("open", e)),
        }
    }
}

/// Maps a redb failure. redb's messages name tables and storage faults, never stored data.
pub(crate) fn unavailable(operation: &str, err: impl Into<redb::Error>) -> PortError {
    PortError::Unavailable(format!("embedded db {operation} failed: {}", err.into()))
}

/// Opens a redb table for reading in a transaction of its own; `None` when nothing was ever written to it.
pub(crate) fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    db: &Database,
    definition: redb::TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, PortError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(|e| unavailable("read", e))?;
    match txn.open_table(definition) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(unavailable("read", e)),
    }
}

/// A stored record that does not decode: the file was written by something else or is damaged.
pub(crate) fn malformed(what: &str) -> PortError {
    PortError::Unavailable(format!("embedded db holds a malformed {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_twice_shares_one_handle() {
        let dir = tempfile::tempdir().unwrap();
        let a = EmbeddedDb::open(dir.path()).unwrap();
        let b = EmbeddedDb::open(dir.path()).unwrap();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        assert!(a.path().ends_with(FILE_NAME));
        drop((a, b));
        // Once every handle is gone the file can be opened afresh.
        EmbeddedDb::open(dir.path()).unwrap();
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        EmbeddedDb::open(&nested).unwrap();
        assert!(nested.join(FILE_NAME).exists());
    }

    #[tokio::test]
    async fn ping_works() {
        let dir = tempfile::tempdir().unwrap();
        EmbeddedDb::open(dir.path()).unwrap().ping().await.unwrap();
    }
}
