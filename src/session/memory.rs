//! The in-process session store of the embedded default: one process, no Redis.
//!
//! Same semantics as the Redis store: every entry carries an absolute expiry and is invisible
//! from that second on; each operation runs under one lock, so rotation is as atomic as the
//! Redis script. Expired entries are swept as the map is written to.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    LAST_USED_RESOLUTION_SECS, NewSession, RotateOutcome, Rotation, SessionError, SessionInfo,
    SessionStore,
};
use crate::store::{
    clock::now_secs as now,
    memory::{Locked, Sweep},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    info: SessionInfo,
    access_jti: Uuid,
    refresh_jti: Uuid,
    /// The refresh jti rotated away last, the payload of that rotation, and until when
    /// presenting it again counts as a concurrent duplicate rather than reuse.
    grace: Option<Grace>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grace {
    previous_refresh_jti: Uuid,
    payload: String,
    until: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct JtiEntry {
    session_id: Uuid,
    expires_at: i64,
}

#[derive(Default, Serialize, Deserialize)]
struct Inner {
    sessions: HashMap<Uuid, Session>,
    jtis: HashMap<Uuid, JtiEntry>,
    by_user: HashMap<Uuid, HashSet<Uuid>>,
}

impl Sweep for Inner {
    fn sweep(&mut self) {
        let at = now();
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
}

/// Sessions in one locked map. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryStore {
    inner: Locked<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding the sessions saved at `path` by [`MemoryStore::save`] (none if there is
    /// no such file). The file is removed at once: if this process then crashes, sessions
    /// revoked meanwhile must not come back from an old snapshot at the next start.
    pub fn restore(path: &Path) -> Self {
        let saved = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Inner>(&bytes).ok());
        if let Err(err) = std::fs::remove_file(path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove the session snapshot");
        }
        let store = Self::default();
        if let Some(mut inner) = saved {
            inner.sweep();
            let _ = store.inner.update(|live| *live = inner);
        }
        store
    }

    /// Writes the live sessions to `path` (mode 0600: they name clients and token ids), for
    /// the next start of this instance.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = self
            .inner
            .read(serde_json::to_vec)
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(path)?, &json)
    }

    /// Number of sessions held, expired ones included until the next sweep.
    pub fn session_count(&self) -> usize {
        self.inner.read(|i| i.sessions.len()).unwrap_or(0)
    }
}

impl Inner {
    fn create(&mut self, new: NewSession) {
        for (jti, expires_at) in [
            (new.access_jti, new.access_exp),
            (new.refresh_jti, new.refresh_exp),
        ] {
            let entry = JtiEntry {
                session_id: new.id,
                expires_at,
            };
            self.jtis.insert(jti, entry);
        }
        self.by_user.entry(new.user_id).or_default().insert(new.id);
        let info = SessionInfo {
            id: new.id,
            user_id: new.user_id,
            created_at: new.created_at,
            last_used_at: new.created_at,
            expires_at: new.refresh_exp,
            user_agent: new.user_agent,
            ip: new.ip,
        };
        let session = Session {
            info,
            access_jti: new.access_jti,
            refresh_jti: new.refresh_jti,
            grace: None,
        };
        self.sessions.insert(new.id, session);
    }

    fn is_access_active(&mut self, user_id: Uuid, session_id: Uuid, jti: Uuid) -> bool {
        let at = now();
        let jti_live = self
            .jtis
            .get(&jti)
            .is_some_and(|e| e.session_id == session_id && e.expires_at > at);
        if !jti_live
            || !self
                .live_session(session_id, at)
                .is_some_and(|s| s.info.user_id == user_id && s.access_jti == jti)
        {
            return false;
        }
        if let Some(session) = self.sessions.get_mut(&session_id)
            && at - session.info.last_used_at >= LAST_USED_RESOLUTION_SECS
        {
            session.info.last_used_at = at;
        }
        true
    }

    fn rotate(&mut self, r: Rotation) -> RotateOutcome {
        let (current, grace) = match self.live_session(r.session_id, r.now) {
            Some(s) if s.info.user_id == r.user_id => (s.refresh_jti, s.grace.clone()),
            _ => return RotateOutcome::Unknown,
        };
        if current != r.presented_refresh_jti {
            if let Some(grace) = grace
                && grace.previous_refresh_jti == r.presented_refresh_jti
                && grace.until > r.now
            {
                // The same token, again, right after its rotation: two tabs, one answer.
                return RotateOutcome::Grace(grace.payload);
            }
            // A rotated-away refresh token came back: someone holds a copy. Revoke it all.
            self.remove_session(r.session_id);
            return RotateOutcome::Reused;
        }
        let Some(session) = self.sessions.get_mut(&r.session_id) else {
            return RotateOutcome::Unknown;
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
        self.jtis.remove(&old_access);
        self.jtis.remove(&old_refresh);
        for (jti, expires_at) in [
            (r.new_access_jti, r.new_access_exp),
            (r.new_refresh_jti, r.new_refresh_exp),
        ] {
            let entry = JtiEntry {
                session_id: r.session_id,
                expires_at,
            };
            self.jtis.insert(jti, entry);
        }
        RotateOutcome::Rotated
    }

    fn revoke(&mut self, user_id: Uuid, session_id: Uuid) -> bool {
        let owned = self
            .live_session(session_id, now())
            .is_some_and(|s| s.info.user_id == user_id);
        owned && self.remove_session(session_id)
    }

    fn revoke_all(&mut self, user_id: Uuid, keep: Option<Uuid>) -> u64 {
        let ids: Vec<Uuid> = self
            .by_user
            .get(&user_id)
            .map(|set| set.iter().copied().filter(|id| Some(*id) != keep).collect())
            .unwrap_or_default();
        let at = now();
        let mut live = 0;
        for id in ids {
            if self.live_session(id, at).is_some() {
                live += 1;
            }
            self.remove_session(id);
        }
        live
    }

    fn list(&self, user_id: Uuid) -> Vec<SessionInfo> {
        let at = now();
        let mut sessions: Vec<SessionInfo> = self
            .by_user
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.live_session(*id, at))
            .map(|s| s.info.clone())
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        sessions
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, new: NewSession) -> Result<(), SessionError> {
        Ok(self.inner.write(|i| i.create(new))?)
    }

    async fn is_access_active(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        jti: Uuid,
    ) -> Result<bool, SessionError> {
        // Not counted as a write: it only ever moves `last_used_at`.
        Ok(self
            .inner
            .update(|i| i.is_access_active(user_id, session_id, jti))?)
    }

    async fn rotate(&self, rotation: Rotation) -> Result<RotateOutcome, SessionError> {
        Ok(self.inner.write(|i| i.rotate(rotation))?)
    }

    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, SessionError> {
        Ok(self.inner.write(|i| i.revoke(user_id, session_id))?)
    }

    async fn revoke_all(&self, user_id: Uuid, keep: Option<Uuid>) -> Result<u64, SessionError> {
        Ok(self.inner.write(|i| i.revoke_all(user_id, keep))?)
    }

    async fn list(&self, user_id: Uuid) -> Result<Vec<SessionInfo>, SessionError> {
        Ok(self.inner.read(|i| i.list(user_id))?)
    }

    async fn ping(&self) -> Result<(), SessionError> {
        Ok(self.inner.read(|_| ())?)
    }
}
