//! A grown deployment's data, written straight into the server's database and Redis before the
//! scenarios run: stored users, live sessions and audit events. Inserted by SQL and pipelined
//! store calls, since registering a million users over HTTP would take a day of argon2.

use std::{sync::Arc, time::Instant};

use futures_util::{StreamExt, stream};
use latchkey::{
    session::{SessionStore, redis::RedisStore},
    store::redis::{RedisClient, RedisOptions},
};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;
use uuid::Uuid;

use crate::redis_cost;

/// The id of seeded user `i` (from 1): a fixed prefix and the number, so the audit events
/// and sessions below can name real users without reading their ids back.
pub fn user_id(i: u64) -> Uuid {
    Uuid::from_u128((0x5eed_u128 << 112) | u128::from(i))
}

/// The same id as SQL, for `i` an integer expression.
fn user_id_sql(i: &str) -> String {
    format!("('5eed' || lpad(to_hex({i}), 28, '0'))::uuid")
}

/// What to seed (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Seed {
    pub users: u64,
    pub sessions: u64,
    pub audit: u64,
}

impl Seed {
    pub fn is_empty(&self) -> bool {
        self.users == 0 && self.sessions == 0 && self.audit == 0
    }
}

/// Seeds `seed` into the database at `db` and the Redis at `redis_url` under the server's
/// `prefix`. Users get the password hash the server gave `template` (an address it
/// registered), so any seeded user can log in with the benchmark's password.
pub async fn run(
    db: &DatabaseConnection,
    redis_url: Option<&str>,
    prefix: Option<&str>,
    template: &str,
    seed: Seed,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // Sessions first: PostgreSQL's autovacuum after the bulk inserts shares the services' CPU.
    if seed.sessions > 0 {
        let (Some(url), Some(prefix)) = (redis_url, prefix) else {
            anyhow::bail!("--seed-sessions needs --backend postgres (sessions live in Redis)");
        };
        sessions(url, prefix, seed.sessions, seed.users).await?;
    }
    if seed.users > 0 {
        users(db, seed.users, template).await?;
    }
    if seed.audit > 0 {
        audit(db, seed.audit, seed.users).await?;
    }
    // As autovacuum would leave the tables, before the measurements instead of during them.
    db.execute_unprepared("VACUUM ANALYZE").await?;
    println!(
        "{}",
        json!({
            "seeded_users": seed.users,
            "seeded_sessions": seed.sessions,
            "seeded_audit_events": seed.audit,
            "seconds": started.elapsed().as_secs(),
        })
    );
    Ok(())
}

async fn users(db: &DatabaseConnection, n: u64, template: &str) -> anyhow::Result<()> {
    let id = user_id_sql("i");
    let template = template.replace('\'', "''");
    // Oldest first, one a second, all before the benchmark's own users.
    db.execute_unprepared(&format!(
        "INSERT INTO users (id, name, email, password_hash, role, disabled, \
         email_verified_at, created_at, updated_at) \
         SELECT {id}, 'Seeded ' || i, 'seeded-' || i || '@bench.example', \
         (SELECT password_hash FROM users WHERE email = '{template}'), 'user', false, \
         now(), now() - make_interval(secs => {n} - i + 3600), now() \
         FROM generate_series(1, {n}) AS i"
    ))
    .await?;
    eprintln!("bench: seeded {n} users");
    Ok(())
}

/// Events spread over the last ~70 days (inside the default 90-day retention, so the
/// server's purge keeps them), of five common types, each about a seeded user.
async fn audit(db: &DatabaseConnection, n: u64, users: u64) -> anyhow::Result<()> {
    let user = user_id_sql(&format!("1 + i % {}", users.max(1)));
    let spacing = 6_000_000.0 / n.max(1) as f64;
    // In batches, so PostgreSQL's memory and WAL stay bounded.
    let batch = 1_000_000;
    for from in (1..=n).step_by(batch as usize) {
        let to = (from + batch - 1).min(n);
        db.execute_unprepared(&format!(
            "INSERT INTO audit_events (id, occurred_at, event_type, user_id, session_id, ip, \
             user_agent, detail) \
             SELECT gen_random_uuid(), now() - make_interval(secs => i * {spacing}), \
             (ARRAY['login_succeeded', 'login_failed', 'logout', 'registered', \
             'password_changed'])[1 + i % 5], {user}, gen_random_uuid(), '203.0.113.' || i % 250, \
             'Mozilla/5.0 (X11; Linux x86_64) Bench/1.0', NULL \
             FROM generate_series({from}, {to}) AS i"
        ))
        .await?;
        eprintln!("bench: seeded audit events {from}..={to}");
    }
    Ok(())
}

/// Live sessions as a login writes them, through the service's own store, for seeded users
/// (several each when there are more sessions than users).
async fn sessions(url: &str, prefix: &str, n: u64, users: u64) -> anyhow::Result<()> {
    let client = RedisClient::new(url, &RedisOptions::multiplexed())?;
    let store = Arc::new(RedisStore::new(client, prefix));
    let now = chrono::Utc::now().timestamp();
    let created = stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            let mut session = redis_cost::session(now);
            if users > 0 {
                session.user_id = user_id(1 + i % users);
            }
            async move {
                // A create runs again after a timeout: it writes the same keys.
                let mut tries = 0;
                loop {
                    match store.create(session.clone()).await {
                        Err(err) if tries < 3 => {
                            tries += 1;
                            eprintln!("bench: seeding a session again: {err}");
                        }
                        done => return done,
                    }
                }
            }
        })
        .buffer_unordered(128)
        .fold(Ok(0u64), |count, result| async move {
            let count = count?;
            result?;
            if (count + 1) % 200_000 == 0 {
                eprintln!("bench: seeded {} sessions", count + 1);
            }
            Ok::<_, anyhow::Error>(count + 1)
        })
        .await?;
    anyhow::ensure!(created == n, "seeded {created} of {n} sessions");
    Ok(())
}
