//! Test support (cargo feature `testing`): the repository root and a table that can be switched off.
//! The AWS emulator harness is `keel_aws::testing`.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The repository root: the nearest ancestor of the crate under test that holds `.venv`, else the nearest one
/// whose `Cargo.toml` declares the workspace.
pub fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Some(with_venv) = start.ancestors().find(|dir| dir.join(".venv").is_dir()) {
        return with_venv.to_path_buf();
    }
    let is_workspace =
        |dir: &Path| std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|text| text.contains("[workspace]"));
    start.ancestors().find(|dir| is_workspace(dir)).unwrap_or(&start).to_path_buf()
}

/// A table that counts reads and writes and, while switched off, fails every call as an unreachable store would.
pub struct SwitchableTable {
    inner: std::sync::Arc<dyn crate::table::Table>,
    down: std::sync::atomic::AtomicBool,
    gets: std::sync::atomic::AtomicUsize,
    queries: std::sync::atomic::AtomicUsize,
    puts: std::sync::atomic::AtomicUsize,
    /// Write requests (put, delete, transaction) and the items they wrote or deleted.
    write_requests: std::sync::atomic::AtomicUsize,
    items_written: std::sync::atomic::AtomicUsize,
}

impl SwitchableTable {
    pub fn new(inner: std::sync::Arc<dyn crate::table::Table>) -> Self {
        Self {
            inner,
            down: Default::default(),
            gets: Default::default(),
            queries: Default::default(),
            puts: Default::default(),
            write_requests: Default::default(),
            items_written: Default::default(),
        }
    }

    /// Write requests so far: each put, delete or transaction is one, as DynamoDB bills round trips.
    pub fn write_requests(&self) -> usize {
        self.write_requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Items written or deleted so far (a transaction's condition checks are not writes).
    pub fn items_written(&self) -> usize {
        self.items_written.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wrote(&self, items: usize) {
        self.write_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.items_written.fetch_add(items, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn gets(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn puts(&self) -> usize {
        self.puts.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check(&self, counter: Option<&std::sync::atomic::AtomicUsize>) -> Result<(), crate::port::PortError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::port::PortError::Unavailable("switched off by the test".into()));
        }
        if let Some(counter) = counter {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::table::Table for SwitchableTable {
    async fn get(&self, key: &crate::table::Key) -> Result<Option<crate::table::Item>, crate::port::PortError> {
        self.check(Some(&self.gets))?;
        self.inner.get(key).await
    }
    async fn put(&self, item: crate::table::Item, expect: crate::table::Expect) -> Result<(), crate::port::PortError> {
        self.check(Some(&self.puts))?;
        self.wrote(1);
        self.inner.put(item, expect).await
    }
    async fn delete(
        &self,
        key: &crate::table::Key,
        expect: crate::table::Expect,
    ) -> Result<(), crate::port::PortError> {
        self.check(None)?;
        self.wrote(1);
        self.inner.delete(key, expect).await
    }
    async fn query(&self, query: &crate::table::Query) -> Result<crate::table::Page, crate::port::PortError> {
        self.check(Some(&self.queries))?;
        self.inner.query(query).await
    }
    async fn transact(&self, writes: Vec<crate::table::Write>) -> Result<(), crate::port::PortError> {
        self.check(None)?;
        self.wrote(writes.iter().filter(|write| !matches!(write, crate::table::Write::Check { .. })).count());
        self.inner.transact(writes).await
    }
    async fn ping(&self) -> Result<(), crate::port::PortError> {
        self.check(None)?;
        self.inner.ping().await
    }
}
