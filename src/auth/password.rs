//! Argon2id password hashing, off the async runtime and bounded.
//!
//! Each hash costs ~15-20 ms of CPU and ~19 MiB of memory, so it runs on `spawn_blocking`
//! behind a semaphore: a login flood queues for hashing instead of starving token verification
//! or exhausting memory.

use std::{sync::Arc, time::Duration};

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    config::Argon2Settings,
    error::{ApiError, ErrorCode},
    telemetry::metrics::Metrics,
};

/// Why a hash or a check did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every hashing slot stayed taken for the whole queue timeout.
    #[error("password hashing is saturated")]
    Busy,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<PasswordError> for ApiError {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::Busy => ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    ErrorCode::Busy,
                    "too many password checks are in progress; retry shortly",
                )
            },
            PasswordError::Internal(err) => err.into(),
        }
    }
}

/// Hashes and verifies passwords with the configured argon2id parameters.
#[derive(Clone)]
pub struct PasswordService {
    argon2: Arc<Argon2<'static>>,
    params: Params,
    permits: Arc<Semaphore>,
    /// How long a request may wait for a hashing slot before it gets 503 `busy`.
    queue_timeout: Duration,
    metrics: Arc<Metrics>,
    /// A real hash of a random password, with the current parameters. Verifying an unknown
    /// email's password against it costs the same as a real check, so response timing does
    /// not reveal which emails have accounts.
    dummy_hash: Arc<String>,
}

impl PasswordService {
    pub fn new(
        settings: Argon2Settings,
        concurrency: usize,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let random = uuid::Uuid::new_v4().to_string();
        let dummy_hash = argon2
            .hash_password(random.as_bytes())
            .map_err(|err| anyhow::anyhow!("argon2: {err}"))?
            .to_string();
        Ok(Self {
            argon2: Arc::new(argon2),
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout,
            metrics,
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    /// A hashing slot, or `Busy` after the queue timeout: a login flood is turned away
    /// quickly instead of piling up and starving everything else.
    /// The permit moves into the blocking task, so a request that is abandoned (timeout,
    /// disconnect) keeps its slot until the hash it started has really finished.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, PasswordError> {
        let permits = Arc::clone(&self.permits);
        let started = std::time::Instant::now();
        self.metrics.hash_queue_depth.inc();
        let acquired = tokio::time::timeout(self.queue_timeout, permits.acquire_owned()).await;
        self.metrics.hash_queue_depth.dec();
        self.metrics
            .hash_wait
            .observe(started.elapsed().as_secs_f64());
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(anyhow::Error::from(closed).into()),
            Err(_elapsed) => {
                self.metrics.hash_rejected.inc();
                Err(PasswordError::Busy)
            }
        }
    }

    /// Whether a stored hash was made with other parameters than the configured ones (or
    /// another algorithm), so it should be replaced after the next successful login.
    pub fn needs_rehash(&self, stored_hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(stored_hash) else {
            return true;
        };
        let same_params = Params::try_from(&parsed.params)
            .map(|p| {
                p.m_cost() == self.params.m_cost()
                    && p.t_cost() == self.params.t_cost()
                    && p.p_cost() == self.params.p_cost()
            })
            .unwrap_or(false);
        parsed.algorithm.as_str() != "argon2id" || !same_params
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: SecretString) -> Result<String, PasswordError> {
        let permit = self.permit().await?;
        let argon2 = Arc::clone(&self.argon2);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            argon2
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|err| anyhow::anyhow!("argon2: {err}"))
        })
        .await
        .map_err(anyhow::Error::from)?
        .map_err(PasswordError::from)
    }

    /// Checks a password against a stored hash, or against the dummy hash when there is no
    /// account (always `false` then, after the same amount of work).
    pub async fn verify(
        &self,
        password: SecretString,
        stored_hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let permit = self.permit().await?;
        let argon2 = Arc::clone(&self.argon2);
        let known = stored_hash.is_some();
        let hash = stored_hash.unwrap_or_else(|| self.dummy_hash.as_str().to_owned());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
        .map_err(|err| anyhow::Error::from(err).into())
    }
}
