//! Counters in Redis, shared by every instance. Keys: `P` + `rl:<rule>:<subject>` (a counter
//! with a TTL = the window) and `P` + `rl:backoff:<email>` (a hash: failures, until).

use async_trait::async_trait;
use redis::Script;

use super::{GateOutcome, LimitSettings, LimitStore, LoginGate};
use crate::session::{
    StoreError,
    redis_client::{RedisClient, RedisConn},
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

/// KEYS: backoff hash. ARGV: now ms, free failures, base ms, max ms, memory seconds.
/// Returns {failures, delay ms}. Mirrors `backoff_delay_ms`.
const FAIL: &str = r#"
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local free = tonumber(ARGV[2])
local delay = 0
if f > free then
  local doublings = math.min(f - free - 1, 32)
  delay = math.floor(math.min(tonumber(ARGV[3]) * (2 ^ doublings), tonumber(ARGV[4])))
end
redis.call('HSET', KEYS[1], 'until', tonumber(ARGV[1]) + delay)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {f, delay}
"#;

/// The login gate of `LimitStore::login_gate`, in one round trip. KEYS: IP counter, account
/// counter, backoff hash. ARGV: IP window ms, IP limit, account window ms, account limit, now
/// ms. Returns {0 open | 1 IP limited | 2 account limited | 3 backing off, ms} where ms is the
/// window's reset or the backoff's wait; when open, 1 if failures are on record, else 0.
/// The counters are `HIT`'s.
const LOGIN_GATE: &str = concat!(
    lua_hit!(),
    r#"
local n, ttl = hit(KEYS[1], ARGV[1])
if n > tonumber(ARGV[2]) then return {1, ttl} end
n, ttl = hit(KEYS[2], ARGV[3])
if n > tonumber(ARGV[4]) then return {2, ttl} end
local backoff = redis.call('HMGET', KEYS[3], 'until', 'failures')
if backoff[1] then
  local wait = tonumber(backoff[1]) - tonumber(ARGV[5])
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
    login_gate: Script,
}

impl RedisLimits {
    /// Counters on `redis` (the session store's handle), under `prefix`.
    pub fn new(redis: RedisClient, prefix: &str) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}rl:"),
            hit: Script::new(HIT),
            fail: Script::new(FAIL),
            login_gate: Script::new(LOGIN_GATE),
        }
    }

    async fn conn(&self) -> Result<RedisConn, StoreError> {
        self.redis.conn().await
    }
}

fn to_store(err: redis::RedisError) -> StoreError {
    StoreError(err.to_string())
}

#[async_trait]
impl LimitStore for RedisLimits {
    async fn hit(&self, key: &str, window_secs: u64) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn().await?;
        let (count, ttl): (u64, i64) = self
            .hit
            .key(format!("{}{key}", self.prefix))
            .arg(window_secs.saturating_mul(1000))
            .invoke_async(&mut conn)
            .await
            .map_err(to_store)?;
        Ok((count, u64::try_from(ttl).unwrap_or(0)))
    }

    async fn backoff_wait(&self, key: &str, now_ms: u64) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn().await?;
        let until: Option<u64> = redis::cmd("HGET")
            .arg(format!("{}{key}", self.prefix))
            .arg("until")
            .query_async(&mut conn)
            .await
            .map_err(to_store)?;
        Ok(until
            .map(|until| until.saturating_sub(now_ms))
            .filter(|wait| *wait > 0))
    }

    async fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        policy: &LimitSettings,
    ) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn().await?;
        self.fail
            .key(format!("{}{key}", self.prefix))
            .arg(now_ms)
            .arg(policy.backoff_free_failures)
            .arg(policy.backoff_base_secs.saturating_mul(1000))
            .arg(policy.backoff_max_secs.saturating_mul(1000))
            .arg(policy.backoff_memory_secs)
            .invoke_async(&mut conn)
            .await
            .map_err(to_store)
    }

    async fn login_gate(&self, gate: &LoginGate<'_>) -> Result<GateOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let (verdict, ms): (u8, i64) = self
            .login_gate
            .key(format!("{}{}", self.prefix, gate.ip_key))
            .key(format!("{}{}", self.prefix, gate.account_key))
            .key(format!("{}{}", self.prefix, gate.backoff_key))
            .arg(gate.ip.window_secs.saturating_mul(1000))
            .arg(gate.ip.limit)
            .arg(gate.account.window_secs.saturating_mul(1000))
            .arg(gate.account.limit)
            .arg(gate.now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(to_store)?;
        let ms = u64::try_from(ms).unwrap_or(0);
        Ok(match verdict {
            1 => GateOutcome::IpLimited { reset_ms: ms },
            2 => GateOutcome::AccountLimited { reset_ms: ms },
            3 => GateOutcome::BackingOff { wait_ms: ms },
            _ => GateOutcome::Open {
                failures_on_record: ms != 0,
            },
        })
    }

    async fn reset(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut conn)
            .await
            .map_err(to_store)?;
        Ok(())
    }
}
