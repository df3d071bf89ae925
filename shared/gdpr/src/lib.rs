//! Keel's GDPR domain: the directory of organizations and memberships (who administers what, which last-admin
//! protection is decided on) and the data map that assembles every domain's declaration of what it keeps.
//! Export, erasure, suppression and the scheduled cleanups are not built yet.

pub mod datamap;
pub mod directory;
pub mod export;
