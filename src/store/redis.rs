//! How an instance reaches Redis, for the session store and the rate limiter alike.
//!
//! `REDIS_ACCESS=multiplexed` (the default): one shared connection that every request
//! pipelines onto: a command costs one round trip and no checkout, and it reconnects by itself
//! after Redis restarts. `pooled`: a deadpool-redis checkout per operation (bench/README.md
//! compares the two). Both fail fast when Redis hangs or is down, so the caller can answer 503.

use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime};
use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
};

use super::BackendError;

/// The longest a Redis operation (or a connection attempt) may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How requests reach Redis (`REDIS_ACCESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisAccess {
    /// One shared multiplexed connection: one round trip per operation.
    Multiplexed,
    /// A deadpool-redis checkout per operation.
    Pooled,
}

/// A cheap-to-clone handle to Redis.
#[derive(Clone)]
pub enum RedisClient {
    Multiplexed(ConnectionManager),
    Pooled(Pool),
}

/// One connection for one operation.
pub enum RedisConn {
    Multiplexed(ConnectionManager),
    Pooled(deadpool_redis::Connection),
}

impl RedisClient {
    /// A handle for `url`; no connection is made until the first command.
    pub fn new(url: &str, access: RedisAccess, pool_size: usize) -> Result<Self, BackendError> {
        match access {
            RedisAccess::Multiplexed => {
                let client = redis::Client::open(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT))
                    // A down Redis must not hold requests in reconnect attempts: one retry,
                    // then the request fails (503) and the next one tries again.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(100));
                Ok(Self::Multiplexed(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisAccess::Pooled => {
                let mut config = Config::from_url(url);
                let mut pool_config = PoolConfig::new(pool_size);
                pool_config.timeouts.wait = Some(TIMEOUT);
                pool_config.timeouts.create = Some(TIMEOUT);
                pool_config.timeouts.recycle = Some(TIMEOUT);
                config.pool = Some(pool_config);
                config
                    .create_pool(Some(Runtime::Tokio1))
                    .map(Self::Pooled)
                    .map_err(|err| BackendError::Pool(err.to_string()))
            }
        }
    }

    /// A connection for one operation: a clone of the shared one, or a pool checkout.
    pub async fn conn(&self) -> Result<RedisConn, BackendError> {
        match self {
            Self::Multiplexed(manager) => Ok(RedisConn::Multiplexed(manager.clone())),
            Self::Pooled(pool) => pool
                .get()
                .await
                .map(RedisConn::Pooled)
                .map_err(|err| BackendError::Pool(err.to_string())),
        }
    }

    /// Answers when Redis does.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let pong: String = redis::cmd("PING")
            .query_async(&mut self.conn().await?)
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(BackendError::Protocol(format!("PING answered {pong:?}")))
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Multiplexed(conn) => conn.req_packed_command(cmd),
            Self::Pooled(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Multiplexed(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Pooled(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Multiplexed(conn) => conn.get_db(),
            Self::Pooled(conn) => conn.get_db(),
        }
    }
}
