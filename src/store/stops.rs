//! Remembered credential stops (table `credential_stops`).
//!
//! A credential or configuration refusal is nobody's job's fault, and a
//! restart cannot cure it; but a supervisor restarts the worker anyway, and
//! each start that took jobs only to hand them back would spend one of
//! their deliveries. So the refusal is written down per app and key
//! fingerprint, and a worker that finds its own fingerprint there takes no
//! jobs until an operator clears it (`tagsweep resume`, the console) or a
//! new key is given.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};
use crate::config::Credential;

/// A refusal as the table remembers it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialStop {
    pub sdkappid: i64,
    pub fingerprint: String,
    pub stopped_at: DateTime<Utc>,
    pub error_code: i32,
    pub error_info: String,
    pub fix: String,
}

/// The first 16 hex digits of SHA-256 over a fixed label and the secret
/// key (or the ready-made UserSig): enough to tell keys apart, too little
/// to find the key from, and the label keeps it from matching any other
/// hash of the same key.
pub fn fingerprint(credential: &Credential) -> String {
    let (label, secret) = match credential {
        Credential::SecretKey(key) => ("tagsweep credential stop: secret key\0", key),
        Credential::UserSig(sig) => ("tagsweep credential stop: usersig\0", sig),
    };
    let digest = Sha256::new().chain_update(label).chain_update(secret.expose_secret()).finalize();
    digest[..8].iter().map(|byte| format!("{byte:02x}")).collect()
}

fn app_key(sdkappid: u64) -> i64 {
    i64::try_from(sdkappid).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes down a refusal of this app and key (the latest one wins).
    pub async fn remember_stop(
        &self,
        sdkappid: u64,
        fingerprint: &str,
        error_code: i32,
        error_info: &str,
        fix: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO credential_stops (sdkappid, fingerprint, error_code, error_info, fix)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sdkappid, fingerprint) DO UPDATE SET
                 stopped_at = now(), error_code = EXCLUDED.error_code,
                 error_info = EXCLUDED.error_info, fix = EXCLUDED.fix",
        )
        .bind(app_key(sdkappid))
        .bind(fingerprint)
        .bind(error_code)
        .bind(error_info)
        .bind(fix)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The remembered refusal of this app and key, if any.
    pub async fn stop_for(&self, sdkappid: u64, fingerprint: &str) -> Result<Option<CredentialStop>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sdkappid, fingerprint, stopped_at, error_code, error_info, fix
             FROM credential_stops WHERE sdkappid = $1 AND fingerprint = $2",
        )
        .bind(app_key(sdkappid))
        .bind(fingerprint)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Forgets the app's refusals of other keys: this key was just accepted.
    pub async fn clear_other_stops(&self, sdkappid: u64, fingerprint: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM credential_stops WHERE sdkappid = $1 AND fingerprint <> $2")
            .bind(app_key(sdkappid))
            .bind(fingerprint)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// Every remembered refusal (the console lists them with a Resume button).
    pub async fn credential_stops(&self) -> Result<Vec<CredentialStop>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sdkappid, fingerprint, stopped_at, error_code, error_info, fix
             FROM credential_stops ORDER BY sdkappid, stopped_at",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn the_fingerprint_tells_keys_apart_and_never_shows_the_key() {
        let key = |k: &str| Credential::SecretKey(SecretString::from(k.to_owned()));
        let a = fingerprint(&key("5bd2850fff3ecb11d7c805251c51ee46"));
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, fingerprint(&key("5bd2850fff3ecb11d7c805251c51ee46")), "stable across restarts");
        assert_ne!(a, fingerprint(&key("5bd2850fff3ecb11d7c805251c51ee47")));
        assert!(!"5bd2850fff3ecb11d7c805251c51ee46".contains(&a));
        let sig = Credential::UserSig(SecretString::from("5bd2850fff3ecb11d7c805251c51ee46".to_owned()));
        assert_ne!(a, fingerprint(&sig), "a UserSig and a key with the same text differ");
    }
}
