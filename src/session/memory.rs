//! The in-process session store of the embedded default: one process, no Redis.
//!
//! Same semantics as the Redis store: every entry carries an absolute expiry and is invisible
//! from that second on; each operation runs under one lock, so rotation is as atomic as the
//! Redis script. Expired entries are swept as the map is written to.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    LAST_USED_RESOLUTION_SECS, NewSession, RotateOutcome, Rotation, SessionInfo, SessionStore,
    StoreError,
};

#[derive(Debug, Clone)]
struct Session {
    info: SessionInfo,
    access_jti: Uuid,
    refresh_jti: Uuid,
    /// The refresh jti rotated away last, the payload of that rotation, and until when
    /// presenting it again counts as a concurrent duplicate rather than reuse.
    grace: Option<Grace>,
}

#[derive(Debug, Clone)]
struct Grace {
    previous_refresh_jti: Uuid,
    payload: String,
    until: i64,
}

#[derive(Debug, Clone, Copy)]
struct JtiEntry {
    session_id: Uuid,
    expires_at: i64,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Uuid, Session>,
    jtis: HashMap<Uuid, JtiEntry>,
    by_user: HashMap<Uuid, HashSet<Uuid>>,
    writes_since_sweep: usize,
}

/// Sweep expired entries every this many writes: amortised O(1), and memory stays bounded by
/// the number of live sessions.
const SWEEP_EVERY: usize = 1024;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Inner {
    fn live_session(&self, session_id: Uuid, at: i64) -> Option<&Session> {
        self.sessions
            .get(&session_id)
            .filter(|s| s.info.expires_at > at)
    }

    fn remove_session(&mut self, session_id: Uuid) -> bool {
        match self.sessions.remove(&session_id) {
            Some(session) => {
                self.jtis.remove(&session.access_jti);
                self.jtis.remove(&session.refresh_jti);
                if let Some(set) = self.by_user.get_mut(&session.info.user_id) {
                    set.remove(&session_id);
                    if set.is_empty() {
                        self.by_user.remove(&session.info.user_id);
                    }
                }
                true
            }
            None => false,
        }
    }

    fn after_write(&mut self) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= SWEEP_EVERY {
            self.writes_since_sweep = 0;
            self.sweep(now());
        }
    }

    fn sweep(&mut self, at: i64) {
        let expired: Vec<Uuid> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.info.expires_at <= at)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_session(id);
        }
        self.jtis.retain(|_, entry| entry.expires_at > at);
    }
}

/// Sessions in a mutex-guarded map. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError("in-process store lock poisoned".into()))
    }

    /// Number of sessions held, expired ones included until the next sweep.
    pub fn session_count(&self) -> usize {
        self.inner.lock().map(|i| i.sessions.len()).unwrap_or(0)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, new: NewSession) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.jtis.insert(
            new.access_jti,
            JtiEntry {
                session_id: new.id,
                expires_at: new.access_exp,
            },
        );
        inner.jtis.insert(
            new.refresh_jti,
            JtiEntry {
                session_id: new.id,
                expires_at: new.refresh_exp,
            },
        );
        inner.by_user.entry(new.user_id).or_default().insert(new.id);
        inner.sessions.insert(
            new.id,
            Session {
                info: SessionInfo {
                    id: new.id,
                    user_id: new.user_id,
                    created_at: new.created_at,
                    last_used_at: new.created_at,
                    expires_at: new.refresh_exp,
                    user_agent: new.user_agent,
                    ip: new.ip,
                },
                access_jti: new.access_jti,
                refresh_jti: new.refresh_jti,
                grace: None,
            },
        );
        inner.after_write();
        Ok(())
    }

    async fn is_access_active(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        jti: Uuid,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let at = now();
        let jti_live = inner
            .jtis
            .get(&jti)
            .is_some_and(|e| e.session_id == session_id && e.expires_at > at);
        if !jti_live
            || !inner
                .live_session(session_id, at)
                .is_some_and(|s| s.info.user_id == user_id && s.access_jti == jti)
        {
            return Ok(false);
        }
        if let Some(session) = inner.sessions.get_mut(&session_id)
            && at - session.info.last_used_at >= LAST_USED_RESOLUTION_SECS
        {
            session.info.last_used_at = at;
        }
        Ok(true)
    }

    async fn rotate(&self, r: Rotation) -> Result<RotateOutcome, StoreError> {
        let mut inner = self.lock()?;
        let (current, grace) = match inner.live_session(r.session_id, r.now) {
            Some(s) if s.info.user_id == r.user_id => (s.refresh_jti, s.grace.clone()),
            _ => return Ok(RotateOutcome::Unknown),
        };
        if current != r.presented_refresh_jti {
            if let Some(grace) = grace
                && grace.previous_refresh_jti == r.presented_refresh_jti
                && grace.until > r.now
            {
                // The same token, again, right after its rotation: two tabs, one answer.
                return Ok(RotateOutcome::Grace(grace.payload));
            }
            // A rotated-away refresh token came back: someone holds a copy. Revoke it all.
            inner.remove_session(r.session_id);
            inner.after_write();
            return Ok(RotateOutcome::Reused);
        }
        let Some(session) = inner.sessions.get_mut(&r.session_id) else {
            return Ok(RotateOutcome::Unknown);
        };
        let old_access = std::mem::replace(&mut session.access_jti, r.new_access_jti);
        let old_refresh = std::mem::replace(&mut session.refresh_jti, r.new_refresh_jti);
        session.info.last_used_at = r.now;
        session.info.expires_at = r.new_refresh_exp;
        session.grace = (r.grace_secs > 0).then(|| Grace {
            previous_refresh_jti: r.presented_refresh_jti,
            payload: r.grace_payload,
            until: r.now + r.grace_secs,
        });
        inner.jtis.remove(&old_access);
        inner.jtis.remove(&old_refresh);
        inner.jtis.insert(
            r.new_access_jti,
            JtiEntry {
                session_id: r.session_id,
                expires_at: r.new_access_exp,
            },
        );
        inner.jtis.insert(
            r.new_refresh_jti,
            JtiEntry {
                session_id: r.session_id,
                expires_at: r.new_refresh_exp,
            },
        );
        inner.after_write();
        Ok(RotateOutcome::Rotated)
    }

    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let owned = inner
            .live_session(session_id, now())
            .is_some_and(|s| s.info.user_id == user_id);
        let removed = owned && inner.remove_session(session_id);
        inner.after_write();
        Ok(removed)
    }

    async fn revoke_all(&self, user_id: Uuid, keep: Option<Uuid>) -> Result<u64, StoreError> {
        let mut inner = self.lock()?;
        let ids: Vec<Uuid> = inner
            .by_user
            .get(&user_id)
            .map(|set| set.iter().copied().filter(|id| Some(*id) != keep).collect())
            .unwrap_or_default();
        let at = now();
        let mut live = 0;
        for id in ids {
            if inner.live_session(id, at).is_some() {
                live += 1;
            }
            inner.remove_session(id);
        }
        inner.after_write();
        Ok(live)
    }

    async fn list(&self, user_id: Uuid) -> Result<Vec<SessionInfo>, StoreError> {
        let inner = self.lock()?;
        let at = now();
        let mut sessions: Vec<SessionInfo> = inner
            .by_user
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| inner.live_session(*id, at))
            .map(|s| s.info.clone())
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(sessions)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }
}
