//! Suppression: once a user is erased, Keel refuses to create new personal data about them (jobs, flag target
//! lists, directory memberships) until a platform admin lifts it, so an erasure is not undone by the next request
//! of a client that still holds their id. An entry holds a keyed hash of the user id, never the id.
//!
//! The key (`GDPR_HASH_KEY`, at least 32 bytes) also derives the pseudonym that replaces an erased user in the
//! items that keep their shape: the same user always gets the same pseudonym, and nobody without the key can tell
//! whose it is. A new key makes earlier suppressions unrecognizable: rotating it lifts them all.
//!
//! Items (`DIRECTORY_TABLE`, the GDPR domain's table): `SUPPRESSED#{hash}` / `SUPPRESSED`.

use crate::config::{ConfigError, Env};
use crate::port::PortError;
use crate::problem::Problem;
use crate::resources::Resources;
use crate::table::{Expect, Key, Table, Write, item_of, value_of};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const TABLE_VAR: &str = "DIRECTORY_TABLE";
pub const KEY_VAR: &str = "GDPR_HASH_KEY";
/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
const PARTITION_PREFIX: &str = "SUPPRESSED#";
const SK: &str = "SUPPRESSED";

/// One suppressed user, by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suppression {
    pub hash: String,
    /// The erasure that suppressed the user.
    pub erasure_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Suppressions {
    table: Arc<dyn Table>,
    /// Keyed with `GDPR_HASH_KEY`; cloned for each hash.
    mac: Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for Suppressions {
    /// The key is a secret: it is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suppressions").finish_non_exhaustive()
    }
}

impl Suppressions {
    pub fn new(table: Arc<dyn Table>, key: Vec<u8>) -> Result<Self, ConfigError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(ConfigError::Malformed {
                name: KEY_VAR.into(),
                reason: format!("expected at least {MIN_KEY_BYTES} bytes"),
            });
        }
        let mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key)
            .map_err(|e| ConfigError::Malformed { name: KEY_VAR.into(), reason: e.to_string() })?;
        Ok(Self { table, mac })
    }

    /// From `GDPR_HASH_KEY` and the table the template wires.
    pub fn from_env(env: &Env, resources: &dyn Resources) -> Result<Self, ConfigError> {
        Self::new(resources.table(TABLE_VAR)?, env.required(KEY_VAR)?.as_bytes().to_vec())
    }

    fn mac(&self, purpose: &str, user: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(user.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The keyed hash a suppression is stored under.
    pub fn hash(&self, user: &str) -> String {
        self.mac("suppression", user)
    }

    /// What replaces `user` in items an erasure keeps: `erased-` and 24 hex digits of a keyed hash.
    pub fn pseudonym(&self, user: &str) -> String {
        format!("erased-{}", &self.mac("pseudonym", user)[..24])
    }

    fn key_of(hash: &str) -> Key {
        Key::new(format!("{PARTITION_PREFIX}{hash}"), SK)
    }

    pub async fn get(&self, hash: &str) -> Result<Option<Suppression>, PortError> {
        let Some(item) = self.table.get(&Self::key_of(hash)).await? else { return Ok(None) };
        value_of(&item, "suppression").map(Some)
    }

    pub async fn is_suppressed(&self, user: &str) -> Result<bool, PortError> {
        Ok(self.get(&self.hash(user)).await?.is_some())
    }

    /// Suppresses `user` (again, harmlessly, on an erasure's retry).
    pub async fn suppress(&self, user: &str, erasure_id: &str, at: DateTime<Utc>) -> Result<Suppression, PortError> {
        let hash = self.hash(user);
        if let Some(existing) = self.get(&hash).await? {
            return Ok(existing);
        }
        let suppression = Suppression { hash: hash.clone(), erasure_id: erasure_id.to_string(), at };
        let item = item_of(Self::key_of(&hash), "suppression", &suppression, 1)?;
        self.table.transact(vec![Write::Put { item, expect: Expect::Any }]).await?;
        Ok(suppression)
    }

    /// Lifts a suppression, with `also` (its audit entry) in the same transaction; `false` when there was none.
    pub async fn lift(&self, hash: &str, also: Vec<Write>) -> Result<bool, PortError> {
        let mut writes = vec![Write::Delete { key: Self::key_of(hash), expect: Expect::Version(1) }];
        writes.extend(also);
        match self.table.transact(writes).await {
            Ok(()) => Ok(true),
            Err(error) if error.is_condition_failed() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Refuses a request that would create personal data about any of `users` who is suppressed: 409
    /// `erased_user`, naming the pointer but not the user.
    pub async fn refuse_any<'a>(&self, pointer: &str, users: impl IntoIterator<Item = &'a str>) -> Result<(), Problem> {
        for user in users {
            match self.is_suppressed(user).await {
                Ok(false) => {}
                Ok(true) => {
                    return Err(Problem::new(
                        409,
                        "erased_user",
                        format!(
                            "{pointer} names a user who was erased; Keel keeps no new data about them until a \
                             platform admin lifts the suppression"
                        ),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "the suppression list could not be read");
                    return Err(Problem::unavailable());
                }
            }
        }
        Ok(())
    }
}
