//! The session store: where revocation lives.
//!
//! A token is only as good as its `jti` entry here: the guard refuses any token whose `jti` is
//! absent, whatever its signature says. Two implementations share one contract (and one test
//! suite): [`redis::RedisStore`] for production (shared by every instance) and
//! [`memory::MemoryStore`] for the embedded default (one process).
//!
//! A session is one login on one device. It holds the `jti` of its current access token and of
//! its current refresh token; rotation swaps both in one atomic step.

pub mod challenge;
pub mod memory;
pub mod redis;

/// `last_used_at` is written at most this often per session, to keep the guard's store access
/// cheap.
pub const LAST_USED_RESOLUTION_SECS: i64 = 60;

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::BackendError;

/// A new session, created at login with its first token pair.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub access_jti: Uuid,
    /// Unix seconds: the access token's `exp`.
    pub access_exp: i64,
    pub refresh_jti: Uuid,
    /// Unix seconds: the refresh token's `exp`, which is also the session's expiry.
    pub refresh_exp: i64,
}

/// One refresh-token rotation request.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Seconds during which the presented token, once rotated away, still gets this rotation's
    /// pair back (two tabs refreshing at once). 0 disables the grace window.
    pub grace_secs: i64,
    /// What to hand back during the grace window: the new pair's claims, opaque to the store.
    pub grace_payload: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// The `jti` of the refresh token the client presented.
    pub presented_refresh_jti: Uuid,
    pub new_access_jti: Uuid,
    pub new_access_exp: i64,
    pub new_refresh_jti: Uuid,
    pub new_refresh_exp: i64,
    /// Unix seconds.
    pub now: i64,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token was current: the new pair replaced it, the old access token is gone.
    Rotated,
    /// The presented token was rotated away by the latest rotation, within the grace window:
    /// nothing changed, and here is the payload of that rotation (its pair) to answer with.
    Grace(String),
    /// The presented token belonged to the session but was neither current nor in grace: a
    /// replay of a rotated-away token. The whole session has been revoked.
    Reused,
    /// No such session (expired, logged out, or never existed).
    Unknown,
}

/// A session as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// The session store could not be reached or answered nonsense.
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct SessionError(#[from] pub BackendError);

impl From<::redis::RedisError> for SessionError {
    fn from(err: ::redis::RedisError) -> Self {
        Self(err.into())
    }
}

/// The contract both stores implement. Every operation is one atomic step.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Records a session and the `jti`s of its first pair, each with a TTL equal to the token's
    /// remaining lifetime.
    async fn create(&self, session: NewSession) -> Result<(), SessionError>;

    /// Is this access token still live: is its `jti` recorded for this user and session?
    /// Also records the use in the session's `last_used_at` (at most once a minute).
    async fn is_access_active(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        jti: Uuid,
    ) -> Result<bool, SessionError>;

    /// Atomically replaces the session's current refresh `jti` (which must be the presented
    /// one) and drops its previous access `jti`.
    async fn rotate(&self, rotation: Rotation) -> Result<RotateOutcome, SessionError>;

    /// Revokes one session and every token of it. `false` if there was no such session.
    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, SessionError>;

    /// Revokes every session of a user except `keep` (if given); returns how many were revoked.
    async fn revoke_all(&self, user_id: Uuid, keep: Option<Uuid>) -> Result<u64, SessionError>;

    /// The user's live sessions, most recently created first.
    async fn list(&self, user_id: Uuid) -> Result<Vec<SessionInfo>, SessionError>;

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), SessionError>;
}
