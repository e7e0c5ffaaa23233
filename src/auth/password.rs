//! Argon2id password hashing, off the async runtime and bounded.
//!
//! Each hash costs ~15-20 ms of CPU and ~19 MiB of memory, so it runs on `spawn_blocking`
//! behind a semaphore: a login flood queues for hashing instead of starving token verification
//! or exhausting memory.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::config::Argon2Settings;

/// Hashes and verifies passwords with the configured argon2id parameters.
#[derive(Clone)]
pub struct PasswordService {
    argon2: Arc<Argon2<'static>>,
    permits: Arc<Semaphore>,
    /// A real hash of a random password, with the current parameters. Verifying an unknown
    /// email's password against it costs the same as a real check, so response timing does
    /// not reveal which emails have accounts.
    dummy_hash: Arc<String>,
}

impl PasswordService {
    pub fn new(settings: Argon2Settings, concurrency: usize) -> anyhow::Result<Self> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let random = uuid::Uuid::new_v4().to_string();
        let dummy_hash = argon2
            .hash_password(random.as_bytes())
            .map_err(|err| anyhow::anyhow!("argon2: {err}"))?
            .to_string();
        Ok(Self {
            argon2: Arc::new(argon2),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let argon2 = Arc::clone(&self.argon2);
        tokio::task::spawn_blocking(move || {
            argon2
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|err| anyhow::anyhow!("argon2: {err}"))
        })
        .await?
    }

    /// Checks a password against a stored hash, or against the dummy hash when there is no
    /// account (always `false` then, after the same amount of work).
    pub async fn verify(
        &self,
        password: SecretString,
        stored_hash: Option<String>,
    ) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let argon2 = Arc::clone(&self.argon2);
        let known = stored_hash.is_some();
        let hash = stored_hash.unwrap_or_else(|| self.dummy_hash.as_str().to_owned());
        tokio::task::spawn_blocking(move || {
            let parsed = match PasswordHash::new(&hash) {
                Ok(parsed) => parsed,
                Err(_) => return false,
            };
            argon2
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok()
                && known
        })
        .await
        .map_err(Into::into)
    }
}
