//! Keel's GDPR domain: the directory of organizations and memberships (who administers what, which last-admin
//! protection is decided on), the data map that assembles every domain's declaration of what it keeps, and the
//! export of a user's data (the bundle and the `gdpr.export` task). Erasure, suppression and the scheduled
//! cleanups are not built yet.

pub mod datamap;
pub mod directory;
pub mod export;
