//! The Redis session store: shared by every instance, so a revocation on one is seen by all
//! on the very next request (no per-instance cache of revocation state).
//!
//! Key layout, with `P` the configured prefix and `{U}` the user id as a Redis Cluster hash tag,
//! so everything of one user (sessions, token ids, index) lives in one slot and every script
//! touches a single slot:
//!
//! ```text
//! P{U}:s:<sid>     hash   user_id created_at last_used_at expires_at user_agent ip access_jti refresh_jti
//!                         (EXPIREAT = the refresh token's exp)
//! P{U}:j:<jti>     string the session id (EXPIREAT = that token's exp)
//! P{U}:sessions    zset   sid -> expires_at (expired members are trimmed on every write)
//! P{U}:g:<sid>     hash   prev (the refresh jti rotated away last), payload (that rotation's
//!                         pair, as claims); EXPIRE = the grace window
//! ```
//!
//! Every write is one Lua script (one round trip, atomic). The guard's check is two plain reads
//! in one pipelined round trip (see `is_access_active`).

use async_trait::async_trait;
use redis::Script;
use uuid::Uuid;

use super::{NewSession, RotateOutcome, Rotation, SessionError, SessionInfo, SessionStore};
use crate::store::{
    BackendError,
    redis::{RedisClient, RedisConn},
};

/// Records a session with its two token ids.
/// KEYS: session, access jti, refresh jti, index. ARGV: user, created, expires, ua, ip,
/// access jti, refresh jti, access exp, sid.
const CREATE: &str = r#"
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'created_at', ARGV[2], 'last_used_at', ARGV[2],
  'expires_at', ARGV[3], 'user_agent', ARGV[4], 'ip', ARGV[5], 'access_jti', ARGV[6], 'refresh_jti', ARGV[7])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[9], 'EXAT', ARGV[8])
redis.call('SET', KEYS[3], ARGV[9], 'EXAT', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[9])
redis.call('EXPIREAT', KEYS[4], redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')[2])
return 1
"#;

/// The rotation step. KEYS: session, index, grace. ARGV: jti key prefix, sid, presented refresh
/// jti, new access jti, new access exp, new refresh jti, new refresh exp, now, grace seconds,
/// grace payload. Returns {'rotated'}, {'grace', payload}, {'reused'} (the session is gone) or
/// {'unknown'}.
const ROTATE: &str = r#"
local current = redis.call('HGET', KEYS[1], 'refresh_jti')
if not current then return {'unknown'} end
local old_access = redis.call('HGET', KEYS[1], 'access_jti')
if current ~= ARGV[3] then
  local grace = redis.call('HMGET', KEYS[3], 'prev', 'payload')
  if grace[1] == ARGV[3] then
    -- The same token, again, right after its rotation: two tabs, one answer.
    return {'grace', grace[2]}
  end
  -- A rotated-away refresh token came back: someone holds a copy. Revoke the whole session.
  redis.call('DEL', KEYS[1], KEYS[3], ARGV[1] .. old_access, ARGV[1] .. current)
  redis.call('ZREM', KEYS[2], ARGV[2])
  return {'reused'}
end
redis.call('DEL', ARGV[1] .. old_access, ARGV[1] .. current)
redis.call('HSET', KEYS[1], 'access_jti', ARGV[4], 'refresh_jti', ARGV[6], 'last_used_at', ARGV[8],
  'expires_at', ARGV[7])
redis.call('EXPIREAT', KEYS[1], ARGV[7])
redis.call('SET', ARGV[1] .. ARGV[4], ARGV[2], 'EXAT', ARGV[5])
redis.call('SET', ARGV[1] .. ARGV[6], ARGV[2], 'EXAT', ARGV[7])
if tonumber(ARGV[9]) > 0 then
  redis.call('HSET', KEYS[3], 'prev', ARGV[3], 'payload', ARGV[10])
  redis.call('EXPIRE', KEYS[3], ARGV[9])
else
  redis.call('DEL', KEYS[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[2])
redis.call('EXPIREAT', KEYS[2], redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
return {'rotated'}
"#;

/// Records a use in `last_used_at`, but only in a session that still exists: a touch that
/// arrives after a revocation must not recreate the session's hash. KEYS: session. ARGV: now.
const TOUCH: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end
return 1
"#;

/// Revokes sessions. KEYS: index. ARGV: session key prefix, jti key prefix, grace key prefix,
/// mode ('only' or 'except'), a sid. 'only' revokes that session; 'except' every other one of
/// the index ('' keeps none). Returns how many live sessions were revoked.
const REVOKE: &str = r#"
local sids = {}
if ARGV[4] == 'only' then
  sids = {ARGV[5]}
else
  for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if sid ~= ARGV[5] then sids[#sids + 1] = sid end
  end
end
local n = 0
for _, sid in ipairs(sids) do
  local key = ARGV[1] .. sid
  local jtis = redis.call('HMGET', key, 'access_jti', 'refresh_jti')
  if jtis[1] then
    n = n + 1
    redis.call('DEL', ARGV[2] .. jtis[1], ARGV[2] .. jtis[2])
  end
  redis.call('DEL', key, ARGV[3] .. sid)
  redis.call('ZREM', KEYS[1], sid)
end
return n
"#;

/// Lists live sessions. KEYS: index. ARGV: session key prefix, now.
const LIST: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local out = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[1] .. sid, 'user_id', 'created_at', 'last_used_at', 'expires_at', 'user_agent', 'ip')
  if f[1] then
    out[#out + 1] = {sid, f[1], f[2], f[3], f[4], f[5], f[6]}
  end
end
return out
"#;

/// Sessions in Redis.
pub struct RedisStore {
    redis: RedisClient,
    prefix: String,
    create: Script,
    rotate: Script,
    touch: Script,
    revoke: Script,
    list: Script,
}

impl RedisStore {
    /// A store on `redis`, namespacing every key under `prefix`.
    pub fn new(redis: RedisClient, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            create: Script::new(CREATE),
            rotate: Script::new(ROTATE),
            touch: Script::new(TOUCH),
            revoke: Script::new(REVOKE),
            list: Script::new(LIST),
        }
    }

    async fn conn(&self) -> Result<RedisConn, SessionError> {
        Ok(self.redis.conn().await?)
    }

    /// `P{U}`: the prefix and the user's hash tag.
    fn user_tag(&self, user_id: Uuid) -> String {
        format!("{}{{{}}}", self.prefix, user_id)
    }

    fn session_prefix(&self, user_id: Uuid) -> String {
        format!("{}:s:", self.user_tag(user_id))
    }

    fn jti_prefix(&self, user_id: Uuid) -> String {
        format!("{}:j:", self.user_tag(user_id))
    }

    fn grace_prefix(&self, user_id: Uuid) -> String {
        format!("{}:g:", self.user_tag(user_id))
    }

    fn index_key(&self, user_id: Uuid) -> String {
        format!("{}:sessions", self.user_tag(user_id))
    }

    async fn run_revoke(
        &self,
        user_id: Uuid,
        mode: &str,
        sid: Option<Uuid>,
    ) -> Result<u64, SessionError> {
        let mut conn = self.conn().await?;
        self.revoke
            .key(self.index_key(user_id))
            .arg(self.session_prefix(user_id))
            .arg(self.jti_prefix(user_id))
            .arg(self.grace_prefix(user_id))
            .arg(mode)
            .arg(sid.map(|s| s.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await
            .map_err(SessionError::from)
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, s: NewSession) -> Result<(), SessionError> {
        let mut conn = self.conn().await?;
        let jti_prefix = self.jti_prefix(s.user_id);
        let _: i64 = self
            .create
            .key(format!("{}{}", self.session_prefix(s.user_id), s.id))
            .key(format!("{jti_prefix}{}", s.access_jti))
            .key(format!("{jti_prefix}{}", s.refresh_jti))
            .key(self.index_key(s.user_id))
            .arg(s.user_id.to_string())
            .arg(s.created_at)
            .arg(s.refresh_exp)
            .arg(s.user_agent.unwrap_or_default())
            .arg(s.ip.unwrap_or_default())
            .arg(s.access_jti.to_string())
            .arg(s.refresh_jti.to_string())
            .arg(s.access_exp)
            .arg(s.id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(SessionError::from)?;
        Ok(())
    }

    async fn is_access_active(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        jti: Uuid,
    ) -> Result<bool, SessionError> {
        // The guard's hot path: two plain reads in one round trip, no script. (A script costs
        // Redis ~3x the CPU of the two reads it would run.) Reading the two keys one after the
        // other is still exact: rotation and revocation change the jti key and the session's
        // `access_jti` in one atomic script, so "live" can only be answered while the session
        // still pointed at this jti when it was read.
        let mut conn = self.conn().await?;
        let session_key = format!("{}{}", self.session_prefix(user_id), session_id);
        let (owner, (current, last_used)): (Option<String>, (Option<String>, Option<i64>)) =
            redis::pipe()
                .get(format!("{}{}", self.jti_prefix(user_id), jti))
                .cmd("HMGET")
                .arg(&session_key)
                .arg("access_jti")
                .arg("last_used_at")
                .query_async(&mut conn)
                .await?;
        let live = owner.is_some_and(|sid| sid == session_id.to_string())
            && current.is_some_and(|current| current == jti.to_string());
        let now = chrono::Utc::now().timestamp();
        if live && now - last_used.unwrap_or(0) >= super::LAST_USED_RESOLUTION_SECS {
            let _: i64 = self
                .touch
                .key(session_key)
                .arg(now)
                .invoke_async(&mut conn)
                .await
                .map_err(SessionError::from)?;
        }
        Ok(live)
    }

    async fn rotate(&self, r: Rotation) -> Result<RotateOutcome, SessionError> {
        let mut conn = self.conn().await?;
        let outcome: Vec<String> = self
            .rotate
            .key(format!(
                "{}{}",
                self.session_prefix(r.user_id),
                r.session_id
            ))
            .key(self.index_key(r.user_id))
            .key(format!("{}{}", self.grace_prefix(r.user_id), r.session_id))
            .arg(self.jti_prefix(r.user_id))
            .arg(r.session_id.to_string())
            .arg(r.presented_refresh_jti.to_string())
            .arg(r.new_access_jti.to_string())
            .arg(r.new_access_exp)
            .arg(r.new_refresh_jti.to_string())
            .arg(r.new_refresh_exp)
            .arg(r.now)
            .arg(r.grace_secs)
            .arg(r.grace_payload)
            .invoke_async(&mut conn)
            .await
            .map_err(SessionError::from)?;
        let mut outcome = outcome.into_iter();
        match (outcome.next().as_deref(), outcome.next()) {
            (Some("rotated"), _) => Ok(RotateOutcome::Rotated),
            (Some("grace"), Some(payload)) => Ok(RotateOutcome::Grace(payload)),
            (Some("reused"), _) => Ok(RotateOutcome::Reused),
            (Some("unknown"), _) => Ok(RotateOutcome::Unknown),
            (other, _) => Err(BackendError::Protocol(format!("rotate answered {other:?}")).into()),
        }
    }

    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, SessionError> {
        Ok(self.run_revoke(user_id, "only", Some(session_id)).await? > 0)
    }

    async fn revoke_all(&self, user_id: Uuid, keep: Option<Uuid>) -> Result<u64, SessionError> {
        self.run_revoke(user_id, "except", keep).await
    }

    async fn list(&self, user_id: Uuid) -> Result<Vec<SessionInfo>, SessionError> {
        let mut conn = self.conn().await?;
        type Row = (String, String, i64, i64, i64, String, String);
        let rows: Vec<Row> = self
            .list
            .key(self.index_key(user_id))
            .arg(self.session_prefix(user_id))
            .arg(chrono::Utc::now().timestamp())
            .invoke_async(&mut conn)
            .await
            .map_err(SessionError::from)?;
        let mut sessions = rows
            .into_iter()
            .map(|(sid, uid, created, last_used, expires, ua, ip)| {
                let parse = |s: &str| {
                    Uuid::parse_str(s)
                        .map_err(|_| BackendError::Protocol(format!("bad uuid {s:?} in store")))
                };
                Ok(SessionInfo {
                    id: parse(&sid)?,
                    user_id: parse(&uid)?,
                    created_at: created,
                    last_used_at: last_used,
                    expires_at: expires,
                    user_agent: Some(ua).filter(|s| !s.is_empty()),
                    ip: Some(ip).filter(|s| !s.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(sessions)
    }

    async fn ping(&self) -> Result<(), SessionError> {
        Ok(self.redis.ping().await?)
    }
}
