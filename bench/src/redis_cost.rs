//! What the Redis store costs per entry: sessions (the record, both token ids, the user's
//! index) and rate-limit counters, each seeded under a prefix of their own and measured by
//! Redis's own `used_memory`.

use std::sync::Arc;

use futures_util::{StreamExt, stream};
use latchkey::{
    limits::{LimitStore, redis::RedisLimits},
    session::{NewSession, SessionStore, redis::RedisStore},
    store::redis::{RedisClient, RedisOptions},
};
use serde_json::{Value, json};
use uuid::Uuid;

/// Requests in flight while seeding (one shared connection, pipelined).
const IN_FLIGHT: usize = 256;

async fn used_memory(client: &RedisClient) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut client.conn().await?)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))
}

/// Deletes every key under `prefix`, a SCAN page at a time (one KEYS over a million keys
/// would outlast the client's timeout).
async fn clear(client: &RedisClient, prefix: &str) -> anyhow::Result<()> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut client.conn().await?)
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut client.conn().await?)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Deletes every key under `prefix` in the Redis at `url`.
pub async fn clear_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    clear(
        &RedisClient::new(url, &RedisOptions::multiplexed())?,
        prefix,
    )
    .await
}

/// A session as a browser login makes one (user agent and IP included).
pub fn session(now: i64) -> NewSession {
    NewSession {
        id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Bench/1.0".into()),
        ip: Some("203.0.113.7".into()),
        created_at: now,
        access_jti: Uuid::new_v4(),
        access_exp: now + 900,
        refresh_jti: Uuid::new_v4(),
        refresh_exp: now + 7 * 24 * 3600,
    }
}

/// Seeds `n` sessions and `n` rate-limit counters into the Redis at `url` and prints the bytes
/// each costs; removes them afterwards.
pub async fn measure(url: &str, n: u64) -> anyhow::Result<Value> {
    let client = RedisClient::new(url, &RedisOptions::multiplexed())?;
    // As long as the default `latchkey:` give or take two bytes, so key names weigh the same.
    let prefix = format!("lk{}:", &Uuid::new_v4().simple().to_string()[..8]);
    let now = chrono::Utc::now().timestamp();

    let sessions = Arc::new(RedisStore::new(client.clone(), &prefix));
    let before = used_memory(&client).await?;
    stream::iter(0..n)
        .map(|_| {
            let sessions = sessions.clone();
            async move { sessions.create(session(now)).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let after_sessions = used_memory(&client).await?;
    clear(&client, &prefix).await?;

    // Keys shaped as the limiter writes them: a rule, then a 128-bit digest in a hash tag.
    let limits = Arc::new(RedisLimits::new(client.clone(), &prefix));
    let base = used_memory(&client).await?;
    stream::iter(0..n)
        .map(|i| {
            let limits = limits.clone();
            async move {
                let key = format!("login-ip:{{{:022}}}", i);
                limits.hit(&key, 60_000).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let after_limits = used_memory(&client).await?;
    clear(&client, &prefix).await?;

    let per = |from: u64, to: u64| to.saturating_sub(from) / n.max(1);
    let line = json!({
        "redis_entries": n,
        "bytes_per_session": per(before, after_sessions),
        "bytes_per_rate_limit_key": per(base, after_limits),
    });
    println!("{line}");
    Ok(line)
}
