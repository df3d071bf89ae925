//! An export of everything Keel holds about a user (GDPR Art. 15 and 20): every holder writes its records into a
//! [`Bundle`], one JSON Lines file per data-map entry spooled to disk as they come, then zipped with a
//! `manifest.json` (the subject, the time, and for each entry its items, the SHA-256 of its file, description,
//! purpose, recipients and retention; the entries left out, with the reason). Memory stays bounded whatever the
//! user's number of items: a record is on disk once written, and the zip streams from those files.

use crate::directory::Directory;
use chrono::{DateTime, Utc};
use keel::config::ConfigError;
use keel::datamap::{DataSubject, Entry, Export, ExportSink, Holder};
use keel::object::ObjectStore;
use keel::port::PortError;
use keel::resources::Resources;
use keel_jobs::builtin::{Checkpoints, Task, TaskFailure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The bundle's format, named in its manifest.
pub const FORMAT: &str = "keel.export.v1";

struct Spool {
    file: BufWriter<File>,
    items: u64,
    sha256: Sha256,
}

/// The files of one export, being written.
pub struct Bundle {
    dir: PathBuf,
    spools: BTreeMap<&'static str, Spool>,
    /// The entries an export includes: a record under another name is a holder's bug, refused.
    included: Vec<Entry>,
}

/// A finished bundle: the zip on disk, and what its manifest says.
pub struct Finished {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub items: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    name: &'a str,
    file: String,
    items: u64,
    sha256: String,
    description: &'a str,
    purpose: &'a str,
    recipients: &'a [&'a str],
    retention: keel::datamap::Retention,
}

fn io(what: &str, error: std::io::Error) -> PortError {
    PortError::Unavailable(format!("{what}: {error}"))
}

impl Bundle {
    /// A bundle spooled under `dir` (which must exist and be the bundle's own) for the entries of `map`.
    pub fn new(dir: &Path, map: &[Entry]) -> Self {
        let included = map.iter().filter(|e| e.export == Export::Include).copied().collect();
        Self { dir: dir.to_path_buf(), spools: BTreeMap::new(), included }
    }

    /// Runs every holder's export into this bundle.
    pub async fn fill(&mut self, holders: &[&dyn Holder], subject: &DataSubject) -> Result<(), PortError> {
        for holder in holders {
            holder.export(subject, self).await?;
        }
        Ok(())
    }

    /// Zips the spooled files and the manifest into `{dir}/export.zip`.
    pub fn finish(mut self, subject: &DataSubject, map: &[Entry], at: DateTime<Utc>) -> Result<Finished, PortError> {
        let mut entries = Vec::new();
        let mut items = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for entry in &self.included {
            let (count, sha256) = match self.spools.remove(entry.name) {
                Some(mut spool) => {
                    spool.file.flush().map_err(|e| io("writing the bundle", e))?;
                    (spool.items, hex::encode(spool.sha256.finalize()))
                }
                None => (0, hex::encode(Sha256::digest(b""))),
            };
            items.insert(entry.name.to_string(), count);
            digests.insert(entry.name, sha256.clone());
            entries.push(ManifestEntry {
                name: entry.name,
                file: file_name(entry.name),
                items: count,
                sha256,
                description: entry.description,
                purpose: entry.purpose,
                recipients: entry.recipients,
                retention: entry.retention,
            });
        }
        let excluded: Vec<Value> = map
            .iter()
            .filter_map(|e| match e.export {
                Export::Exclude { reason } => Some(json!({"name": e.name, "reason": reason})),
                Export::Include => None,
            })
            .collect();
        let manifest = json!({
            "format": FORMAT,
            "subject": {"user_id": subject.user_id, "org_ids": subject.org_ids},
            "created_at": at,
            "entries": entries,
            "excluded": excluded,
        });

        let path = self.dir.join("export.zip");
        let file = File::create(&path).map_err(|e| io("creating the bundle", e))?;
        let mut zip = zip::ZipWriter::new(BufWriter::new(file));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let zip_error = |e: zip::result::ZipError| PortError::Unavailable(format!("zipping the bundle: {e}"));
        zip.start_file("manifest.json", options).map_err(zip_error)?;
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| PortError::Invalid(e.to_string()))?;
        zip.write_all(&manifest).map_err(|e| io("zipping the bundle", e))?;
        for entry in &self.included {
            zip.start_file(file_name(entry.name), options).map_err(zip_error)?;
            let spooled = self.dir.join(file_name(entry.name));
            if spooled.exists() {
                let mut source = File::open(&spooled).map_err(|e| io("reading the bundle", e))?;
                std::io::copy(&mut source, &mut zip).map_err(|e| io("zipping the bundle", e))?;
            }
        }
        let mut writer = zip.finish().map_err(zip_error)?;
        writer.flush().map_err(|e| io("writing the bundle", e))?;
        drop(writer);
        let mut sha256 = Sha256::new();
        let mut reader = File::open(&path).map_err(|e| io("reading the bundle", e))?;
        let bytes = std::io::copy(&mut reader, &mut sha256).map_err(|e| io("reading the bundle", e))?;
        Ok(Finished { path, bytes, sha256: hex::encode(sha256.finalize()), items })
    }
}

fn file_name(entry: &str) -> String {
    format!("{entry}.jsonl")
}

impl ExportSink for Bundle {
    fn record(&mut self, entry: &'static str, record: Value) -> Result<(), PortError> {
        if !self.included.iter().any(|e| e.name == entry) {
            return Err(PortError::Invalid(format!("`{entry}` is not an entry the export includes")));
        }
        let spool = match self.spools.entry(entry) {
            std::collections::btree_map::Entry::Occupied(spool) => spool.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let file = File::create(self.dir.join(file_name(entry))).map_err(|e| io("spooling the bundle", e))?;
                slot.insert(Spool { file: BufWriter::new(file), items: 0, sha256: Sha256::new() })
            }
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| PortError::Invalid(e.to_string()))?;
        line.push(b'\n');
        spool.file.write_all(&line).map_err(|e| io("spooling the bundle", e))?;
        spool.sha256.update(&line);
        spool.items += 1;
        Ok(())
    }
}

/// The built-in job type (and task) that exports a user.
pub const TASK: &str = "gdpr.export";
/// The object store bundles are written to, as the template wires it.
pub const BUCKET_VAR: &str = "EXPORT_BUCKET";
/// How long a download link is valid.
pub const LINK_VALIDITY: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Where bundles are stored in the bucket: `exports/{ulid}.zip`.
pub const BUNDLE_PREFIX: &str = "exports/";

/// The organization platform admins' exports of a user are filed under: nobody's, so no member sees them.
pub const ADMIN_EXPORTS_ORG: &str = "keel:gdpr-exports";

/// The export bundles' holder: it exports nothing (a bundle is a copy of the other entries); an erasure deletes
/// the bundles of every export of the user, found through those exports' jobs. An export still running is
/// cancelled and waited for (`Unavailable` until it ends), so a bundle it stores cannot escape.
pub struct BundlesHolder {
    pub jobs: keel_jobs::Jobs,
    pub objects: Arc<dyn ObjectStore>,
}

#[async_trait::async_trait]
impl Holder for BundlesHolder {
    fn entries(&self) -> &'static [Entry] {
        crate::datamap::GDPR
    }

    async fn export(&self, _: &DataSubject, _: &mut dyn ExportSink) -> Result<(), PortError> {
        Ok(())
    }

    async fn erase(
        &self,
        subject: &keel::datamap::ErasureSubject,
        dry_run: bool,
        tally: &mut keel::datamap::Tally,
    ) -> Result<(), PortError> {
        let filter = keel_jobs::Filter { job_type: Some(TASK.to_string()), ..keel_jobs::Filter::default() };
        let mut running = 0;
        for org in &subject.subject.org_ids {
            let mut after = None;
            loop {
                let page = self.jobs.list(org, &filter, after, keel_jobs::store::MAX_LIST_LIMIT).await?;
                for job in &page.jobs {
                    if job.input["user_id"].as_str() != Some(subject.subject.user_id.as_str()) {
                        continue;
                    }
                    if !job.status.is_terminal() {
                        if !dry_run {
                            match self.jobs.cancel(org, &job.id, keel::datamap::ERASER).await {
                                Ok(job) if job.status.is_terminal() => continue,
                                Ok(_) => {}
                                Err(keel_jobs::JobsError::Conflict(_) | keel_jobs::JobsError::NotFound) => {}
                                Err(error) => return Err(error.into()),
                            }
                        }
                        running += 1;
                        continue;
                    }
                    let Some(output) = self.jobs.output(org, &job.id).await? else { continue };
                    let Some(key) = output["bundle_key"].as_str() else { continue };
                    if self.objects.head(key).await?.is_some() {
                        if !dry_run {
                            self.objects.delete(key).await?;
                        }
                        keel::datamap::count(tally, "gdpr.export_bundle", 1);
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        if running > 0 && !dry_run {
            return Err(PortError::Unavailable(format!(
                "{running} exports of the user are still running after a cancel; the erasure goes on when they stop"
            )));
        }
        Ok(())
    }
}

/// The task's input: whom to export, and the organizations their request came from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub user_id: String,
    #[serde(default)]
    pub org_ids: Vec<String>,
}

/// The task's output, and its checkpoint once the bundle is stored (a retry then has nothing left to do).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Output {
    pub bundle_key: String,
    pub bytes: u64,
    pub sha256: String,
    /// Items per data-map entry.
    pub items: BTreeMap<String, u64>,
    pub created_at: DateTime<Utc>,
}

pub struct ExportTask {
    holders: Vec<Arc<dyn Holder>>,
    directory: Directory,
    objects: Arc<dyn ObjectStore>,
    clock: Arc<dyn keel::clock::Clock>,
}

impl ExportTask {
    pub fn from_resources(resources: &dyn Resources) -> Result<Self, ConfigError> {
        Ok(Self {
            holders: crate::holders(resources)?,
            directory: Directory::new(resources.table(crate::directory::TABLE_VAR)?, resources.clock()),
            objects: resources.objects(BUCKET_VAR)?,
            clock: resources.clock(),
        })
    }
}

#[async_trait::async_trait]
impl Task for ExportTask {
    async fn run(
        &self,
        input: &Value,
        checkpoint: Option<&Value>,
        checkpoints: &dyn Checkpoints,
    ) -> Result<Value, TaskFailure> {
        if let Some(done) = checkpoint.and_then(|saved| serde_json::from_value::<Output>(saved.clone()).ok()) {
            return Ok(json!(done));
        }
        let input: Input = serde_json::from_value(input.clone())
            .map_err(|error| TaskFailure::Failed(format!("the input is not an export request: {error}")))?;
        crate::directory::check_id("/user_id", &input.user_id)
            .map_err(|error| TaskFailure::Failed(format!("user_id: {}", error.message)))?;
        let mut org_ids: std::collections::BTreeSet<String> = input.org_ids.into_iter().collect();
        let memberships = self.directory.memberships(&input.user_id).await.map_err(PortError::from)?;
        org_ids.extend(memberships.into_iter().map(|m| m.org_id));
        let subject = DataSubject { user_id: input.user_id, org_ids };

        let dir = tempfile::tempdir().map_err(|e| TaskFailure::Retriable(format!("a bundle directory: {e}")))?;
        let map = crate::datamap::data_map();
        let mut bundle = Bundle::new(dir.path(), &map);
        let holders: Vec<&dyn Holder> = self.holders.iter().map(|h| h.as_ref()).collect();
        bundle.fill(&holders, &subject).await?;
        let at = self.clock.now();
        let finished = tokio::task::spawn_blocking(move || bundle.finish(&subject, &map, at))
            .await
            .map_err(|e| TaskFailure::Retriable(format!("zipping the bundle: {e}")))??;
        let bundle_key = format!("{BUNDLE_PREFIX}{}.zip", ulid::Ulid::from_datetime(at.into()));
        self.objects.put_file(&bundle_key, &finished.path, "application/zip").await?;
        let output = Output {
            bundle_key,
            bytes: finished.bytes,
            sha256: finished.sha256,
            items: finished.items,
            created_at: at,
        };
        let output = json!(output);
        checkpoints.save(&output).await?;
        Ok(output)
    }
}

/// How long a bundle is kept: its link lasts 15 minutes, and a new export makes a new one.
pub const BUNDLE_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// Deletes bundles older than [`BUNDLE_RETENTION`]. Their keys are ULIDs of their time, so the bucket lists them
/// oldest first and the first one young enough ends the run.
pub struct BundlesCleanup(pub Arc<dyn ObjectStore>);

#[async_trait::async_trait]
impl keel::cleanup::Cleanup for BundlesCleanup {
    fn name(&self) -> &'static str {
        "gdpr.export_bundles"
    }

    async fn run(
        &self,
        now: DateTime<Utc>,
        cursor: Option<String>,
        stop: &(dyn Fn() -> bool + Send + Sync),
        removed: &mut u64,
    ) -> Result<keel::cleanup::Swept, PortError> {
        use keel::cleanup::Swept;
        let cutoff = keel::clock::first_ulid_at(now - BUNDLE_RETENTION).to_string();
        let mut after = cursor.filter(|c| !c.is_empty());
        loop {
            if stop() {
                return Ok(Swept::stopped(after.unwrap_or_default()));
            }
            let page = self.0.list(BUNDLE_PREFIX, after.as_deref(), keel::table::MAX_QUERY_LIMIT).await?;
            for object in &page.objects {
                if stop() {
                    return Ok(Swept::stopped(after.unwrap_or_default()));
                }
                let id = object.key.strip_prefix(BUNDLE_PREFIX).and_then(|k| k.strip_suffix(".zip"));
                let id = id.filter(|id| ulid::Ulid::from_string(id).is_ok());
                match id {
                    Some(id) if id < cutoff.as_str() => {
                        self.0.delete(&object.key).await?;
                        *removed += 1;
                    }
                    // Young enough, so is every later one. (A key not of this shape is not a bundle: left.)
                    Some(_) => return Ok(Swept::done()),
                    None => {}
                }
                after = Some(object.key.clone());
            }
            if page.next.is_none() {
                return Ok(Swept::done());
            }
        }
    }
}
