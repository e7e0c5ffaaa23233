//! Counters in Redis, shared by every instance. Keys: `P` + `rl:<rule>:{<subject>}` (a counter
//! with a TTL = the window) and `P` + `rl:backoff:{<email>}` (a hash: failures, until), each
//! subject (its digest) a Redis Cluster hash tag: every script touches one subject's keys,
//! so one slot.

use async_trait::async_trait;
use redis::Script;

use super::{BackoffSchedule, GateOutcome, LimitStore, LoginGate};
use crate::store::{
    BackendError,
    redis::{RedisClient, RedisConn},
};

/// The Lua function behind every counter: `hit(key, window ms)` counts a hit and returns
/// {count, ms until the window ends}. The window starts at the key's first hit. A macro, so
/// that `concat!` can put the one definition into each script that counts.
macro_rules! lua_hit {
    () => {
        r#"
local function hit(key, window)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, window) end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    redis.call('PEXPIRE', key, window)
    ttl = tonumber(window)
  end
  return n, ttl
end
"#
    };
}

/// KEYS: counter. ARGV: window ms. Returns {count, ms until the window ends}.
const HIT: &str = concat!(
    lua_hit!(),
    r#"
local n, ttl = hit(KEYS[1], ARGV[1])
return {n, ttl}
"#
);

/// KEYS: backoff hash. ARGV: now ms, memory seconds, then the delays of `BackoffSchedule`
/// (after 1, 2, ... failures; the last holds for every failure after it).
/// Returns {failures, delay ms}.
const FAIL: &str = r#"
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local delay = tonumber(ARGV[2 + math.min(f, #ARGV - 2)])
redis.call('HSET', KEYS[1], 'until', tonumber(ARGV[1]) + delay)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {f, delay}
"#;

/// The account's part of `LimitStore::login_gate`. KEYS: account counter, backoff hash (one
/// subject, one hash tag: one slot). ARGV: account window ms, account limit, now ms.
/// Returns {2 account limited | 3 backing off, ms} where ms is the window's reset or the
/// backoff's wait, or {0, 1 if failures are on record else 0}. The counter is `HIT`'s.
const ACCOUNT_GATE: &str = concat!(
    lua_hit!(),
    r#"
local n, ttl = hit(KEYS[1], ARGV[1])
if n > tonumber(ARGV[2]) then return {2, ttl} end
local backoff = redis.call('HMGET', KEYS[2], 'until', 'failures')
if backoff[1] then
  local wait = tonumber(backoff[1]) - tonumber(ARGV[3])
  if wait > 0 then return {3, wait} end
end
if backoff[2] then return {0, 1} end
return {0, 0}
"#
);

pub struct RedisLimits {
    redis: RedisClient,
    prefix: String,
    hit: Script,
    fail: Script,
    account_gate: Script,
}

impl RedisLimits {
    /// Counters on `redis` (the session store's handle), under `prefix`.
    pub fn new(redis: RedisClient, prefix: &str) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}rl:"),
            hit: Script::new(HIT),
            fail: Script::new(FAIL),
            account_gate: Script::new(ACCOUNT_GATE),
        }
    }

    async fn conn(&self) -> Result<RedisConn, BackendError> {
        self.redis.conn().await
    }
}

#[async_trait]
impl LimitStore for RedisLimits {
    async fn hit(&self, key: &str, window_ms: u64) -> Result<(u64, u64), BackendError> {
        let mut conn = self.conn().await?;
        let (count, ttl): (u64, i64) = self
            .hit
            .key(format!("{}{key}", self.prefix))
            .arg(window_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok((count, u64::try_from(ttl).unwrap_or(0)))
    }

    async fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        schedule: &BackoffSchedule,
    ) -> Result<(u64, u64), BackendError> {
        let mut conn = self.conn().await?;
        Ok(self
            .fail
            .key(format!("{}{key}", self.prefix))
            .arg(now_ms)
            .arg(schedule.memory_secs)
            .arg(&schedule.delays_ms)
            .invoke_async(&mut conn)
            .await?)
    }

    async fn login_gate(&self, gate: &LoginGate<'_>) -> Result<GateOutcome, BackendError> {
        // Two scripts, each atomic on one subject's slot: the outer counter is charged first
        // and only a request within it reaches the account; an account refusal after the outer
        // charge is what one script did too. A request counted in between is neither lost nor
        // counted twice: each counter stays exact.
        let (count, reset_ms) = self.hit(gate.outer_key, gate.outer.window_ms()).await?;
        if count > gate.outer.limit {
            return Ok(GateOutcome::OuterLimited { reset_ms });
        }
        let mut conn = self.conn().await?;
        let (verdict, ms): (u8, i64) = self
            .account_gate
            .key(format!("{}{}", self.prefix, gate.account_key))
            .key(format!("{}{}", self.prefix, gate.backoff_key))
            .arg(gate.account.window_ms())
            .arg(gate.account.limit)
            .arg(gate.now_ms)
            .invoke_async(&mut conn)
            .await?;
        let ms = u64::try_from(ms).unwrap_or(0);
        Ok(match verdict {
            2 => GateOutcome::AccountLimited { reset_ms: ms },
            3 => GateOutcome::BackingOff { wait_ms: ms },
            _ => GateOutcome::Open {
                failures_on_record: ms != 0,
            },
        })
    }

    async fn reset(&self, key: &str) -> Result<(), BackendError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
