//! Plumbing shared by the session store and the rate limiter: the one Redis connection of an
//! instance, the clock both read, and the locked, periodically swept maps of their in-process
//! variants. Each store wraps [`BackendError`] in an error of its own, so a failure says which
//! store it hit.

pub mod clock;
pub mod memory;
pub mod redis;

/// Why a store operation failed, below the store that asked.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Redis refused, timed out or could not be reached.
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// `REDIS_URL` or `REDIS_CA_CERT` cannot be used (configuration validation refuses them
    /// first).
    #[error("{0}")]
    Config(String),
    /// No Redis connection could be had from the pool.
    #[error("Redis pool: {0}")]
    Pool(String),
    /// A panic elsewhere left an in-process map's lock poisoned.
    #[error("in-process store lock poisoned")]
    Poisoned,
    /// The store answered something the code does not understand.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}
