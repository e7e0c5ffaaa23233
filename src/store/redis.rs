//! How an instance reaches Redis, for the session store and the rate limiter alike.
//!
//! `REDIS_URL` names one server (`redis://`, `rediss://` for TLS) or a Redis Cluster by some of
//! its nodes (`redis+cluster://h:p,h:p`, `rediss+cluster://` for TLS); `REDIS_CA_CERT` adds a
//! private CA to trust. TLS is rustls, checking the server's certificate and name always.
//!
//! `REDIS_ACCESS=multiplexed` (the default): one shared connection that every request
//! pipelines onto: a command costs one round trip and no checkout, and it reconnects by itself
//! after Redis restarts. `pooled`: a deadpool-redis checkout per operation (bench/README.md
//! compares the two). A cluster is always one shared cluster connection (it multiplexes onto
//! one connection per node, follows slot moves and failovers by itself). All fail fast when
//! Redis hangs or is down, so the caller can answer 503.

use std::{fmt, time::Duration};

use deadpool_redis::{Manager, Pool, PoolConfig, Runtime};
use redis::{
    Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};

use super::BackendError;

/// The longest a Redis operation (or a connection attempt) may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How requests reach Redis (`REDIS_ACCESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisAccess {
    /// One shared multiplexed connection: one round trip per operation.
    Multiplexed,
    /// A deadpool-redis checkout per operation (one server only).
    Pooled,
}

/// How to connect, beside the URL.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub access: RedisAccess,
    /// Most connections with [`RedisAccess::Pooled`].
    pub pool_size: usize,
    /// PEM certificates of a private CA to trust for TLS (`REDIS_CA_CERT`), instead of the
    /// system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl RedisOptions {
    /// The default access: one shared connection, the system's CAs.
    pub fn multiplexed() -> Self {
        Self {
            access: RedisAccess::Multiplexed,
            pool_size: 1,
            ca_pem: None,
        }
    }
}

/// What a `REDIS_URL` names, read without connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// A Redis Cluster (`redis+cluster://`, `rediss+cluster://`).
    pub cluster: bool,
    /// TLS (`rediss://`, `rediss+cluster://`).
    pub tls: bool,
    /// One URL per node named (one for a single server), credentials included.
    nodes: Vec<String>,
    /// `host:port` of each node named: what may be shown.
    addresses: Vec<String>,
}

/// Why a `REDIS_URL` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RedisUrlError(String);

impl RedisTarget {
    /// Reads `url`: `redis://`, `rediss://`, `redis+unix://`, `unix://`, or the cluster forms
    /// `redis+cluster://[user:password@]host:port,host:port` and `rediss+cluster://...`.
    pub fn parse(url: &str) -> Result<Self, RedisUrlError> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(RedisUrlError("is not a URL (scheme://...)".into()));
        };
        if url.contains('#') {
            // The redis crate reads `#insecure` as "skip certificate checks": never.
            return Err(RedisUrlError(
                "must not have a #fragment: certificate checks cannot be turned off; for a \
                 private CA set REDIS_CA_CERT"
                    .into(),
            ));
        }
        let (cluster, tls) = match scheme {
            "redis" | "redis+unix" | "unix" => (false, false),
            "rediss" => (false, true),
            "redis+cluster" => (true, false),
            "rediss+cluster" => (true, true),
            other => {
                return Err(RedisUrlError(format!(
                    "has the scheme {other:?}: expected redis://, rediss:// (TLS), \
                     redis+cluster://host:port,host:port or rediss+cluster://..."
                )));
            }
        };
        if cluster {
            return Self::cluster(scheme.trim_end_matches("+cluster"), rest, tls);
        }
        let info = url
            .into_connection_info()
            .map_err(|err| RedisUrlError(format!("cannot be read: {err}")))?;
        Ok(Self {
            cluster,
            tls,
            nodes: vec![url.to_owned()],
            addresses: vec![info.addr().to_string()],
        })
    }

    /// The nodes of `user:password@host:port,host:port` as `scheme://user:password@host:port`.
    fn cluster(scheme: &str, rest: &str, tls: bool) -> Result<Self, RedisUrlError> {
        if rest.contains(['/', '?']) {
            return Err(RedisUrlError(
                "names a cluster: it takes no database number or options (a cluster has one \
                 database), only user:password@host:port,host:port"
                    .into(),
            ));
        }
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
            None => (String::new(), rest),
        };
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            let node = format!("{scheme}://{userinfo}{host}");
            let expected = || RedisUrlError(format!("names the node {host:?}: expected host:port"));
            let info = node
                .as_str()
                .into_connection_info()
                .map_err(|_| expected())?;
            if host.is_empty()
                || !matches!(
                    info.addr(),
                    ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. }
                )
            {
                return Err(expected());
            }
            addresses.push(info.addr().to_string());
            nodes.push(node);
        }
        Ok(Self {
            cluster: true,
            tls,
            nodes,
            addresses,
        })
    }

    /// How many nodes the URL names.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// What the startup banner shows: the kind and where, never credentials.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.cluster {
            "Redis Cluster"
        } else {
            "Redis"
        };
        let tls = if self.tls { " over TLS" } else { "" };
        write!(f, "{kind}{tls} at {}", self.addresses.join(", "))
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The PEM text of the CA bundle at `path`, once it holds at least one certificate rustls
/// reads; else why not.
pub fn read_ca_pem(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(path).map_err(|err| format!("cannot be read ({err})"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("is not PEM ({err})"))?;
    if certificates.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(pem)
}

/// A cheap-to-clone handle to Redis.
#[derive(Clone)]
pub enum RedisClient {
    Multiplexed(ConnectionManager),
    Pooled(Pool),
    Cluster(ClusterConnection),
}

/// One connection for one operation.
pub enum RedisConn {
    Multiplexed(ConnectionManager),
    Pooled(deadpool_redis::Connection),
    Cluster(ClusterConnection),
}

impl RedisClient {
    /// A handle for `url`; no connection is made until the first command.
    pub fn new(url: &str, options: &RedisOptions) -> Result<Self, BackendError> {
        let target = RedisTarget::parse(url)
            .map_err(|err| BackendError::Config(format!("REDIS_URL {err}")))?;
        if target.tls {
            // redis builds its rustls config from the process-wide crypto provider, and this
            // build has two (ring, aws-lc): name one, the aws-lc the tokens already use.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let certs = options.ca_pem.clone().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
        if target.cluster {
            return Ok(Self::Cluster(cluster_connection(&target, certs)?));
        }
        let client = match certs {
            Some(certs) => redis::Client::build_with_tls(url, certs)?,
            None => redis::Client::open(url)?,
        };
        match options.access {
            RedisAccess::Multiplexed => {
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
            RedisAccess::Pooled => pool(client, options.pool_size),
        }
    }

    /// A connection for one operation: a clone of the shared one, or a pool checkout.
    pub async fn conn(&self) -> Result<RedisConn, BackendError> {
        match self {
            Self::Multiplexed(manager) => Ok(RedisConn::Multiplexed(manager.clone())),
            Self::Cluster(cluster) => Ok(RedisConn::Cluster(cluster.clone())),
            Self::Pooled(pool) => pool
                .get()
                .await
                .map(RedisConn::Pooled)
                .map_err(|err| BackendError::Pool(err.to_string())),
        }
    }

    /// Answers when Redis does (every primary, for a cluster).
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

/// A pool of connections built like `client`'s (TLS and CA included).
fn pool(client: redis::Client, size: usize) -> Result<RedisClient, BackendError> {
    let manager = Manager::new(client.get_connection_info().clone())?;
    let mut config = PoolConfig::new(size);
    config.timeouts.wait = Some(TIMEOUT);
    config.timeouts.create = Some(TIMEOUT);
    config.timeouts.recycle = Some(TIMEOUT);
    Pool::builder(manager)
        .config(config)
        .runtime(Runtime::Tokio1)
        .build()
        .map(RedisClient::Pooled)
        .map_err(|err| BackendError::Pool(err.to_string()))
}

/// The cluster connection: it learns the slots from the nodes named, then follows MOVED
/// answers and failovers by itself.
fn cluster_connection(
    target: &RedisTarget,
    certs: Option<TlsCertificates>,
) -> Result<ClusterConnection, BackendError> {
    let mut builder = ClusterClientBuilder::new(target.nodes.iter().map(String::as_str))
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        // Bounded by the response timeout overall: while a slot has no primary (a failover),
        // requests fail within it (503) instead of queueing behind long retry waits.
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(250);
    if let Some(certs) = certs {
        builder = builder.certs(certs);
    }
    Ok(builder
        .build()?
        .get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new()))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Multiplexed(conn) => conn.req_packed_command(cmd),
            Self::Pooled(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
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
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Multiplexed(conn) => conn.get_db(),
            Self::Pooled(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_or_a_cluster_in_clear_or_over_tls() {
        let single = RedisTarget::parse("redis://:pw@cache:6379/2").unwrap();
        assert!(!single.cluster && !single.tls);
        assert_eq!(single.to_string(), "Redis at cache:6379");
        let tls = RedisTarget::parse("rediss://cache.example.com:6380").unwrap();
        assert!(tls.tls && !tls.cluster);
        assert_eq!(tls.to_string(), "Redis over TLS at cache.example.com:6380");
        let cluster = RedisTarget::parse("rediss+cluster://app:s3cret@a:7000, b:7001").unwrap();
        assert!(cluster.cluster && cluster.tls);
        assert_eq!(cluster.node_count(), 2);
        assert_eq!(cluster.nodes[1], "rediss://app:s3cret@b:7001");
        let shown = cluster.to_string();
        assert_eq!(shown, "Redis Cluster over TLS at a:7000, b:7001");
        assert!(!format!("{cluster:?}").contains("s3cret"));
    }

    #[test]
    fn unusable_urls_are_refused() {
        for url in [
            "cache:6379",
            "http://cache",
            "rediss://cache/#insecure",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/0",
            "redis+cluster://a:1?protocol=resp3",
        ] {
            assert!(RedisTarget::parse(url).is_err(), "{url}");
        }
    }
}
