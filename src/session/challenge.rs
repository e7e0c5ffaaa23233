//! Logins waiting for their second factor (API.md section 9): the `mfa_token` of a login whose
//! password was right, kept in the session store so any instance can finish it. Only the
//! token's SHA-256 is a key; each entry lives 5 minutes, dies at the fifth wrong code, and is
//! taken once.

use std::collections::HashMap;

use async_trait::async_trait;
use redis::Script;
use uuid::Uuid;

use super::SessionError;
use crate::store::{
    clock::now_secs as now,
    memory::{Locked, Sweep},
    redis::{RedisClient, RedisConn},
};

/// A login that passed its password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub user_id: Uuid,
    /// A digest of the password hash that was checked: a password changed before the second
    /// step ends the challenge.
    pub password_check: String,
}

/// Where challenges live; every operation is one atomic step.
#[async_trait]
pub trait ChallengeStore: Send + Sync + 'static {
    /// Records `challenge` under `key` for `ttl_secs`.
    async fn create(
        &self,
        key: &str,
        challenge: &Challenge,
        ttl_secs: i64,
    ) -> Result<(), SessionError>;

    /// The live challenge under `key`.
    async fn get(&self, key: &str) -> Result<Option<Challenge>, SessionError>;

    /// Counts a wrong code; the `max`th deletes the challenge. Returns the count so far (0 if
    /// there was no challenge).
    async fn fail(&self, key: &str, max: u32) -> Result<u32, SessionError>;

    /// Deletes the challenge: `true` for the one caller that found it.
    async fn take(&self, key: &str) -> Result<bool, SessionError>;
}

/// A wrong code on a live challenge; the key is checked first so a dead one is not revived
/// without its TTL.
const FAIL: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'wrong', 1)
if n >= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
return n
"#;

/// Challenges in Redis, one hash per challenge.
pub struct RedisChallenges {
    redis: RedisClient,
    prefix: String,
    fail: Script,
}

impl RedisChallenges {
    pub fn new(redis: RedisClient, prefix: &str) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}mfa:"),
            fail: Script::new(FAIL),
        }
    }

    async fn conn(&self) -> Result<RedisConn, SessionError> {
        Ok(self.redis.conn().await?)
    }
}

#[async_trait]
impl ChallengeStore for RedisChallenges {
    async fn create(
        &self,
        key: &str,
        challenge: &Challenge,
        ttl_secs: i64,
    ) -> Result<(), SessionError> {
        let key = format!("{}{key}", self.prefix);
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("user", challenge.user_id.to_string()),
                    ("pwd", challenge.password_check.clone()),
                    ("wrong", "0".into()),
                ],
            )
            .ignore()
            .expire(&key, ttl_secs)
            .ignore()
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Challenge>, SessionError> {
        let (user, pwd): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{}{key}", self.prefix))
            .arg("user")
            .arg("pwd")
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(user.zip(pwd).and_then(|(user, pwd)| {
            Some(Challenge {
                user_id: Uuid::parse_str(&user).ok()?,
                password_check: pwd,
            })
        }))
    }

    async fn fail(&self, key: &str, max: u32) -> Result<u32, SessionError> {
        let count: u32 = self
            .fail
            .key(format!("{}{key}", self.prefix))
            .arg(max)
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok(count)
    }

    async fn take(&self, key: &str) -> Result<bool, SessionError> {
        let deleted: i64 = redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(deleted == 1)
    }
}

struct Entry {
    challenge: Challenge,
    expires_at: i64,
    wrong: u32,
}

#[derive(Default)]
struct Entries(HashMap<String, Entry>);

impl Sweep for Entries {
    fn sweep(&mut self) {
        let at = now();
        self.0.retain(|_, entry| entry.expires_at > at);
    }
}

impl Entries {
    fn live(&mut self, key: &str) -> Option<&mut Entry> {
        let at = now();
        self.0.get_mut(key).filter(|entry| entry.expires_at > at)
    }
}

/// Challenges in process (the embedded default).
#[derive(Default)]
pub struct MemoryChallenges {
    entries: Locked<Entries>,
}

impl MemoryChallenges {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ChallengeStore for MemoryChallenges {
    async fn create(
        &self,
        key: &str,
        challenge: &Challenge,
        ttl_secs: i64,
    ) -> Result<(), SessionError> {
        let entry = Entry {
            challenge: challenge.clone(),
            expires_at: now() + ttl_secs,
            wrong: 0,
        };
        self.entries.write(|e| e.0.insert(key.to_owned(), entry))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Challenge>, SessionError> {
        Ok(self
            .entries
            .update(|e| e.live(key).map(|entry| entry.challenge.clone()))?)
    }

    async fn fail(&self, key: &str, max: u32) -> Result<u32, SessionError> {
        Ok(self.entries.update(|e| {
            let Some(entry) = e.live(key) else { return 0 };
            entry.wrong += 1;
            let wrong = entry.wrong;
            if wrong >= max {
                e.0.remove(key);
            }
            wrong
        })?)
    }

    async fn take(&self, key: &str) -> Result<bool, SessionError> {
        Ok(self
            .entries
            .update(|e| e.live(key).is_some() && e.0.remove(key).is_some())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge {
            user_id: Uuid::new_v4(),
            password_check: "digest".into(),
        }
    }

    #[tokio::test]
    async fn an_expired_challenge_is_gone_and_a_live_one_is_taken_once() {
        let store = MemoryChallenges::new();
        store.create("old", &challenge(), 0).await.unwrap();
        assert_eq!(store.get("old").await.unwrap(), None);
        assert_eq!(store.fail("old", 5).await.unwrap(), 0);
        assert!(!store.take("old").await.unwrap());

        let live = challenge();
        store.create("live", &live, 300).await.unwrap();
        assert_eq!(store.get("live").await.unwrap(), Some(live));
        assert!(store.take("live").await.unwrap());
        assert!(!store.take("live").await.unwrap());
    }

    #[tokio::test]
    async fn the_fifth_wrong_code_ends_a_challenge() {
        let store = MemoryChallenges::new();
        store.create("c", &challenge(), 300).await.unwrap();
        for n in 1..=4 {
            assert_eq!(store.fail("c", 5).await.unwrap(), n);
            assert!(store.get("c").await.unwrap().is_some());
        }
        assert_eq!(store.fail("c", 5).await.unwrap(), 5);
        assert_eq!(store.get("c").await.unwrap(), None);
    }
}
