//! The object store port: named files (export bundles) uploaded from disk so memory stays bounded whatever their
//! size, read back, listed by prefix with a cursor, deleted, and handed out through links that expire. S3 in AWS
//! (a presigned GET), a directory locally (links the local host signs and serves itself).

use crate::port::PortError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::path::Path;
use std::time::Duration;

/// Largest object `put_file` takes: S3's limit for a single PUT. Keel's bundles are far below it; a larger file
/// would need a multipart upload, which no adapter does.
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Longest validity of a link: what SigV4 presigning allows.
pub const MAX_LINK_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest key, in bytes (S3 allows 1024; Keel's keys are short, and a filesystem name must fit too).
pub const MAX_KEY_BYTES: usize = 512;

/// Largest page `list` returns, whatever `limit` asks for (S3's ListObjectsV2 page).
pub const MAX_LIST_LIMIT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectPage {
    /// In byte order of their keys.
    pub objects: Vec<ObjectInfo>,
    /// The key to pass as `after` for the next page; `None` when the listing is exhausted.
    pub next: Option<String>,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Uploads the file at `source` as `key`, replacing any object there, streamed from disk. `content_type` is
    /// what a link serves it as.
    async fn put_file(&self, key: &str, source: &Path, content_type: &str) -> Result<ObjectInfo, PortError>;
    /// The whole object in memory: for small objects (manifests, tests), not for bundles.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError>;
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError>;
    /// Removing an absent object succeeds, so a cleanup can run twice.
    async fn delete(&self, key: &str) -> Result<(), PortError>;
    /// Objects whose key starts with `prefix`, in key order, strictly after `after`; at most `limit` (capped).
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage, PortError>;
    /// A URL with which anyone holding it can GET the object (with its content type) until `valid_for` passes.
    /// Does not check that the object exists: the link answers an error when it does not.
    async fn link(&self, key: &str, valid_for: Duration) -> Result<String, PortError>;
    /// Cheap reachability check for readiness probes.
    async fn ping(&self) -> Result<(), PortError>;
}

/// Keys are `/`-separated segments of characters S3 calls safe (letters, digits, `!-_.*'()`), so the same key is a
/// valid S3 key, a URL path and a file name without escaping. No empty, `.` or `..` segment. Both adapters call it
/// so they refuse alike.
pub fn check_key(key: &str) -> Result<(), PortError> {
    let invalid = |why: &str| Err(PortError::Invalid(format!("object key {why}")));
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return invalid(&format!("must be 1 to {MAX_KEY_BYTES} bytes"));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"!-_.*'()/".contains(&b)) {
        return invalid("may hold only letters, digits, `/` and `!-_.*'()`");
    }
    if key.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return invalid("has an empty, `.` or `..` segment");
    }
    Ok(())
}

/// A prefix is a key's beginning: empty, or the same characters as a key (it may end in `/`).
pub fn check_prefix(prefix: &str) -> Result<(), PortError> {
    match prefix.strip_suffix('/').unwrap_or(prefix) {
        "" if prefix.is_empty() => Ok(()),
        rest => check_key(rest).map_err(|_| PortError::Invalid("object prefix is not the beginning of a key".into())),
    }
}

pub fn check_link_validity(valid_for: Duration) -> Result<(), PortError> {
    if valid_for < Duration::from_secs(1) || valid_for > MAX_LINK_VALIDITY {
        return Err(PortError::Invalid(format!("a link is valid from 1 s to {} s", MAX_LINK_VALIDITY.as_secs())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in ["a", "exports/01J/bundle.zip", "A-b_c.d*e'f(g)!", &"k".repeat(MAX_KEY_BYTES)] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../a",
            "a/./b",
            "a b",
            "a%2Fb",
            "a\\b",
            "é",
            "a?b",
            &"k".repeat(MAX_KEY_BYTES + 1),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes() {
        for good in ["", "exports/", "exports/01", "a"] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        for bad in ["/", "a//", "../", "a b/"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_validity() {
        assert!(check_link_validity(Duration::from_secs(900)).is_ok());
        assert!(check_link_validity(MAX_LINK_VALIDITY).is_ok());
        assert!(check_link_validity(Duration::from_millis(999)).is_err());
        assert!(check_link_validity(MAX_LINK_VALIDITY + Duration::from_secs(1)).is_err());
    }
}
