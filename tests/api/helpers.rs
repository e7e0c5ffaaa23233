//! `TestApp`: the real server on port 0, on the embedded default (SQLite file + in-process
//! store) or on real PostgreSQL (a fresh database per test) + Redis (a unique key prefix per
//! test). The same test bodies run on both through `backend_tests!`.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use latchkey::{
    auth::keys::{GeneratedPair, InlineKeys, KeyKind, KeyPaths, KeySource, generate_pair},
    config::{RedisSettings, Settings},
    limits::{BackoffPolicy, LimitSettings, Rate},
    startup::Application,
    state::AppState,
    store::redis::{RedisAccess, RedisClient, RedisConn},
};
use reqwest::{Response, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::redis_servers::{CLUSTER, TLS_REDIS};

/// Where a test's server keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file + in-process session store: what `cargo run` starts.
    Embedded,
    /// PostgreSQL + Redis: production's backends.
    PostgresRedis,
    /// PostgreSQL + the TLS Redis the tests start (`rediss://`, a private CA).
    PostgresRedisTls,
    /// PostgreSQL + the Redis Cluster the tests start (`redis+cluster://`).
    PostgresRedisCluster,
}

/// PEM text of one RSA pair.
pub struct PemPair {
    pub private_pem: String,
    pub public_pem: String,
}

impl PemPair {
    fn generate(bits: usize) -> Self {
        let pair = generate_pair(bits).expect("rsa key generation");
        Self {
            private_pem: pair.private_pem.expose_secret().to_owned(),
            public_pem: pair.public_pem,
        }
    }

    pub fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).expect("test key")
    }

    /// The pair in the form `keys::rotate` takes.
    pub fn generated(&self) -> GeneratedPair {
        GeneratedPair {
            private_pem: self.private_pem.clone().into(),
            public_pem: self.public_pem.clone(),
        }
    }

    /// The RFC 7638 `kid` of this pair.
    pub fn kid(&self) -> String {
        latchkey::auth::keys::SigningKey::from_pem(
            KeyKind::Access,
            &self.private_pem,
            Some(&self.public_pem),
        )
        .expect("test key")
        .kid
    }
}

/// Keys a rotation switches to (made once per test run, like `KEYS`).
pub static NEXT_KEYS: LazyLock<(PemPair, PemPair)> =
    LazyLock::new(|| (PemPair::generate(2048), PemPair::generate(2048)));

/// Writes `access` and `refresh` into `dir` as the four files of a single-key setup (what
/// `latchkey keys generate` writes), without generating new RSA keys.
pub fn write_key_dir(dir: &Path, access: &PemPair, refresh: &PemPair) -> KeyPaths {
    let paths = KeyPaths::in_dir(dir);
    std::fs::create_dir_all(dir).expect("key dir");
    for (path, pem) in [
        (&paths.access_private, &access.private_pem),
        (&paths.access_public, &access.public_pem),
        (&paths.refresh_private, &refresh.private_pem),
        (&paths.refresh_public, &refresh.public_pem),
    ] {
        std::fs::write(path, pem).expect("write key file");
    }
    // Private keys readable by their owner alone, as `latchkey keys generate` writes them.
    #[cfg(unix)]
    for path in [&paths.access_private, &paths.refresh_private] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    paths
}

/// Keys made once per test run: RSA generation is slow.
pub struct TestKeys {
    pub access: PemPair,
    pub refresh: PemPair,
    /// A third pair that Latchkey does not know.
    pub stranger: PemPair,
}

pub static KEYS: LazyLock<TestKeys> = LazyLock::new(|| TestKeys {
    access: PemPair::generate(2048),
    refresh: PemPair::generate(2048),
    stranger: PemPair::generate(2048),
});

/// Small keys for the "too short for production" refusal.
pub static SHORT_KEYS: LazyLock<(PemPair, PemPair)> =
    LazyLock::new(|| (PemPair::generate(1024), PemPair::generate(1024)));

pub fn inline_keys(access: &PemPair, refresh: &PemPair) -> KeySource {
    KeySource::Inline(InlineKeys {
        access_private: access.private_pem.clone().into(),
        access_public: access.public_pem.clone(),
        refresh_private: refresh.private_pem.clone().into(),
        refresh_public: refresh.public_pem.clone(),
    })
}

/// Every log line the service writes during the test run (all tests share one subscriber).
pub static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(|| {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug,latchkey=trace"))
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    buffer
});

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut logs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        logs.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// How many bytes of logs have been captured so far.
fn log_position() -> usize {
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// What must never appear in a log line: a JWT (every token starts with the base64 of
/// `{"typ":"JWT",...` or `{"alg":...`), an argon2 hash, or any password the tests use.
const FORBIDDEN_IN_LOGS: &[&str] = &[
    "eyJ0eXAi",
    "eyJhbGci",
    "$argon2",
    "-Secret!",
    "wrong password",
    "brand new password",
    "an admin password",
    "correct horse",
    // An error code an operation does not document (logged in debug builds).
    "undocumented error code",
];

/// Checks every log line written since `from` (the whole suite is covered: every test's
/// server checks the lines written while it ran).
pub fn assert_no_secrets_logged_since(from: usize) {
    let text = {
        let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&logs[from.min(logs.len())..]).into_owned()
    };
    for line in text.lines() {
        for forbidden in FORBIDDEN_IN_LOGS {
            assert!(
                !line.contains(forbidden),
                "a log line contains {forbidden:?}: {line}"
            );
        }
    }
}

/// A group of tests that needs real services beside the embedded default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// PostgreSQL and Redis: the `postgres_redis` variants and the multi-instance tests.
    PostgresRedis,
    /// Redis alone: the `redis_*` variants of the store contract suites.
    Redis,
    /// A `redis-server` binary the test starts itself (an outage it controls).
    RedisServerBinary,
    /// The TLS Redis the tests start (`redis-server` built with TLS, `redis-cli`).
    RedisTls,
    /// The Redis Cluster the tests start (`redis-server`, `redis-cli --cluster`).
    RedisCluster,
    /// PostgreSQL and the TLS Redis.
    PostgresRedisTls,
    /// PostgreSQL and the Redis Cluster.
    PostgresRedisCluster,
    /// `redis-server` and `redis-cli`, for a Redis Cluster of the test's own.
    OwnRedisCluster,
    /// An `nginx` binary (forward auth through a real reverse proxy).
    Nginx,
    /// Python 3 with PyJWT and cryptography (a verifier outside Rust).
    PyJwt,
    /// Chromium and chromedriver (the account pages in a real browser).
    Browser,
    /// A `pgbouncer` 1.21 or later the tests start in front of PostgreSQL.
    PgBouncer,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::PostgresRedis => "postgres_redis (PostgreSQL + Redis)",
            Group::Redis => "redis_* store contract",
            Group::RedisServerBinary => "own redis-server (Redis outage)",
            Group::RedisTls => "redis_tls store contract (TLS Redis)",
            Group::RedisCluster => "redis_cluster store contract (Redis Cluster)",
            Group::PostgresRedisTls => "postgres_redis_tls (PostgreSQL + TLS Redis)",
            Group::PostgresRedisCluster => "postgres_redis_cluster (PostgreSQL + Redis Cluster)",
            Group::OwnRedisCluster => "own Redis Cluster (failover)",
            Group::Nginx => "nginx forward auth",
            Group::PyJwt => "PyJWT verifier",
            Group::Browser => "headless Chromium",
            Group::PgBouncer => "pgbouncer (transaction pooling)",
        }
    }
}

/// Whether the tests of `group` can run here. Without their services they are skipped, with
/// one line per group on the terminal (written past the test harness's output capture);
/// with `LATCHKEY_TEST_REQUIRE_SERVICES=1` (CI) a missing service fails the test instead.
pub fn available(group: Group) -> bool {
    let missing = match group {
        Group::PostgresRedis => [
            reachable(&postgres_admin_url(), 5432),
            reachable(&redis_url(), 6379),
        ]
        .into_iter()
        .flatten()
        .next(),
        Group::Redis => reachable(&redis_url(), 6379),
        Group::RedisServerBinary => missing_program("redis-server", &["--version"]),
        Group::RedisTls => started(&TLS_REDIS),
        Group::RedisCluster => started(&CLUSTER),
        Group::PostgresRedisTls => {
            reachable(&postgres_admin_url(), 5432).or_else(|| started(&TLS_REDIS))
        }
        Group::PostgresRedisCluster => {
            reachable(&postgres_admin_url(), 5432).or_else(|| started(&CLUSTER))
        }
        Group::OwnRedisCluster => missing_program("redis-server", &["--version"])
            .or_else(|| missing_program("redis-cli", &["--version"])),
        Group::Nginx => missing_program("nginx", &["-v"]),
        Group::PyJwt => missing_program("python3", &["-c", "import jwt, cryptography"]),
        Group::Browser => missing_program(crate::browser::CHROMEDRIVER, &["--version"])
            .or_else(|| missing_program(crate::browser::CHROMIUM, &["--version"])),
        Group::PgBouncer => crate::pgbouncer::missing(),
    };
    let Some(missing) = missing else {
        return true;
    };
    if std::env::var("LATCHKEY_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!(
            "{missing}: LATCHKEY_TEST_REQUIRE_SERVICES=1 makes the {} tests mandatory",
            group.name()
        );
    }
    static NOTED: Mutex<Vec<Group>> = Mutex::new(Vec::new());
    let mut noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
    if !noted.contains(&group) {
        noted.push(group);
        let _ = writeln!(
            std::io::stderr(),
            "note: skipping the {} tests: {missing}. To run them, install PostgreSQL and Redis \
             (README, Tests), point LATCHKEY_TEST_DATABASE_URL / LATCHKEY_TEST_REDIS_URL at \
             yours, or run `bash .ci/run` (which also installs nginx, PyJWT and Chromium, and \
             builds PgBouncer)",
            group.name()
        );
    }
    false
}

/// `None` when the servers of `started` run (starting them if this is the first ask), else
/// why not: the real start is the only reliable probe (a `redis-server` built without TLS
/// says so only when asked to listen with it).
fn started<T>(started: &LazyLock<Result<T, String>>) -> Option<String> {
    started.as_ref().err().cloned()
}

/// `None` when `program args` runs and succeeds, else what is missing.
fn missing_program(program: &str, args: &[&str]) -> Option<String> {
    let ran = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match ran {
        Ok(status) if status.success() => None,
        _ => Some(format!("`{program} {}` does not run here", args.join(" "))),
    }
}

/// `None` when a TCP connection to the URL's host and port opens within a second, else why not.
fn reachable(url: &str, default_port: u16) -> Option<String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(default_port);
    let addrs = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten();
    let open = addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok());
    (!open).then(|| format!("nothing answers at {host}:{port}"))
}

/// Returns from the test when its group's services are missing (see [`available`]).
#[macro_export]
macro_rules! require {
    ($group:ident) => {
        if !$crate::helpers::available($crate::helpers::Group::$group) {
            return;
        }
    };
}

pub fn postgres_admin_url() -> String {
    std::env::var("LATCHKEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("LATCHKEY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Settings for a test server on `backend`, before any backend resources exist.
pub fn base_settings() -> Settings {
    let mut settings = Settings::development(inline_keys(&KEYS.access, &KEYS.refresh));
    settings.http.port = 0;
    settings.http.allowed_origins = vec!["https://app.example.com".into()];
    // No verification mail on every registration: the email tests turn it on.
    settings.accounts.email.verification = latchkey::accounts::Verification::Off;
    // Tests sign in many users from 127.0.0.1: limits only where a test asks for them.
    let generous = Rate::per_secs(100_000, 60);
    let defaults = LimitSettings::default();
    settings.limits = LimitSettings {
        login_per_ip: generous,
        login_per_account: generous,
        register_per_ip: generous,
        refresh_per_ip: generous,
        password_check_per_user: generous,
        email_per_address: generous,
        email_per_ip: generous,
        backoff: BackoffPolicy {
            free_failures: 1000,
            ..defaults.backoff
        },
    };
    settings
}

/// Which Redis the tests reach: the one at `LATCHKEY_TEST_REDIS_URL`, or one they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisKind {
    Plain,
    Tls,
    Cluster,
}

impl RedisKind {
    /// Its `REDIS_URL` and the CA to trust (`REDIS_CA_CERT`). Call after `require!`.
    pub fn server(self) -> (String, Option<PathBuf>) {
        let not_started = |err: &String| -> ! { panic!("{self:?} Redis did not start: {err}") };
        match self {
            RedisKind::Plain => (redis_url(), None),
            RedisKind::Tls => match &*TLS_REDIS {
                Ok(tls) => (tls.url.clone(), Some(tls.ca.clone())),
                Err(err) => not_started(err),
            },
            RedisKind::Cluster => match &*CLUSTER {
                Ok(cluster) => (cluster.url(), cluster.ca()),
                Err(err) => not_started(err),
            },
        }
    }

    /// A handle to it, built as the service builds its own.
    pub fn client(self, access: RedisAccess) -> RedisClient {
        let (url, ca) = self.server();
        let settings = RedisSettings {
            url: Some(url.clone().into()),
            key_prefix: String::new(),
            access,
            pool_size: 4,
            ca_cert: ca,
        };
        RedisClient::new(&url, &settings.options().expect("the CA")).expect("redis client")
    }
}

impl Backend {
    fn redis(self) -> Option<RedisKind> {
        match self {
            Backend::Embedded => None,
            Backend::PostgresRedis => Some(RedisKind::Plain),
            Backend::PostgresRedisTls => Some(RedisKind::Tls),
            Backend::PostgresRedisCluster => Some(RedisKind::Cluster),
        }
    }
}

/// Resources a test owns on the real services, removed when the test ends.
struct Provisioned {
    database: Option<String>,
    /// The Redis settings, key prefix included, of a test on Redis.
    redis: Option<RedisSettings>,
    _dir: tempfile::TempDir,
}

impl Provisioned {
    async fn new(backend: Backend, settings: &mut Settings) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Development mail (`.eml` files) stays inside the test's directory.
        settings.mail.outbox_dir = Some(dir.path().join("outbox"));
        let Some(redis) = backend.redis() else {
            settings.database.url =
                format!("sqlite://{}/latchkey.db?mode=rwc", dir.path().display()).into();
            settings.redis.url = None;
            return Self {
                database: None,
                redis: None,
                _dir: dir,
            };
        };
        let database = Self::create_database(settings).await;
        let (url, ca_cert) = redis.server();
        settings.redis.url = Some(url.into());
        settings.redis.ca_cert = ca_cert;
        settings.redis.key_prefix = format!("latchkey-test:{}:", Uuid::new_v4().simple());
        Self {
            database: Some(database),
            redis: Some(settings.redis.clone()),
            _dir: dir,
        }
    }

    /// A fresh PostgreSQL database, named in `settings`.
    async fn create_database(settings: &mut Settings) -> String {
        let admin_url = postgres_admin_url();
        let name = format!("latchkey_test_{}", Uuid::new_v4().simple());
        let admin = Database::connect(&admin_url).await.unwrap_or_else(|err| {
            panic!(
                "PostgreSQL at {admin_url} is needed for the postgres_redis tests \
                 (set LATCHKEY_TEST_DATABASE_URL): {err}"
            )
        });
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .expect("database url with a path");
        settings.database.url = format!("{base}/{name}").into();
        name
    }

    /// Nothing of its own: an instance on another's resources.
    fn none() -> Self {
        Self {
            database: None,
            redis: None,
            _dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

/// Every key under the prefix of `redis`, on whichever Redis it names.
async fn keys_under_prefix(redis: &RedisSettings) -> Result<(RedisConn, Vec<String>), String> {
    let url = redis.url.as_ref().ok_or("no Redis")?;
    let options = redis.options().map_err(|e| e.to_string())?;
    let client = RedisClient::new(url.expose(), &options).map_err(|e| e.to_string())?;
    let mut conn = client.conn().await.map_err(|e| e.to_string())?;
    let keys = redis::cmd("KEYS")
        .arg(format!("{}*", redis.key_prefix))
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok((conn, keys))
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        let database = self.database.take();
        let redis = self.redis.take();
        if database.is_none() && redis.is_none() {
            return;
        }
        // Drop cannot await: clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                if let Some(name) = database
                    && let Ok(admin) = Database::connect(&postgres_admin_url()).await
                {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    admin.close().await.ok();
                }
                if let Some(redis) = redis
                    && let Ok((mut conn, keys)) = keys_under_prefix(&redis).await
                    && !keys.is_empty()
                {
                    let _: Result<i64, _> =
                        redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The `User-Agent` of the test client.
pub const TEST_USER_AGENT: &str = "latchkey-tests/1.0";

/// A running server and a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    log_start: usize,
    shutdown: Option<oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    // Declared last: dropped after the server has been told to stop.
    _provisioned: Provisioned,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if !std::thread::panicking() {
            assert_no_secrets_logged_since(self.log_start);
        }
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with settings adjusted by `configure` (after the backend is provisioned).
    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Self {
        LazyLock::force(&LOGS);
        let mut settings = base_settings();
        let provisioned = Provisioned::new(backend, &mut settings).await;
        configure(&mut settings);
        Self::start(settings, provisioned).await
    }

    async fn start(settings: Settings, provisioned: Provisioned) -> Self {
        let log_start = log_position();
        let app = Application::build(settings.clone())
            .await
            .expect("the test application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel();
        let running = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            address,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(TEST_USER_AGENT)
                .build()
                .expect("http client"),
            state,
            log_start,
            shutdown: Some(tx),
            running: Some(running),
            _provisioned: provisioned,
        }
    }

    /// Stops this instance (its background tasks with it) and starts it again on the same
    /// database and store, as a process restart does.
    pub async fn restart(mut self) -> TestApp {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.expect("server task").expect("server stops");
        }
        let provisioned = std::mem::replace(&mut self._provisioned, Provisioned::none());
        Self::start((*self.state.settings).clone(), provisioned).await
    }

    /// Where this instance writes development mail (`.eml` files).
    pub fn outbox_dir(&self) -> std::path::PathBuf {
        self.state
            .settings
            .mail
            .outbox_dir
            .clone()
            .expect("a test outbox")
    }

    /// A second instance with the same settings: the same database and session store (on the
    /// PostgreSQL + Redis backend they are shared, as between production instances).
    pub async fn spawn_sibling(&self) -> TestApp {
        self.spawn_sibling_with(|_| {}).await
    }

    /// A second instance on the same backends, with some settings changed.
    pub async fn spawn_sibling_with(&self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        // The first instance's settings as it resolved them: the same public URL and issuer,
        // as instances behind one load balancer share.
        let mut settings = (*self.state.settings).clone();
        configure(&mut settings);
        Self::start(settings, Provisioned::none()).await
    }

    /// The `kid` of the access key signing now.
    pub fn access_kid(&self) -> String {
        self.state
            .tokens
            .keys()
            .current(KeyKind::Access)
            .expect("an access key signs")
            .kid
            .clone()
    }

    /// The `kid` of the refresh key signing now.
    pub fn refresh_kid(&self) -> String {
        self.state
            .tokens
            .keys()
            .current(KeyKind::Refresh)
            .expect("a refresh key signs")
            .kid
            .clone()
    }

    /// The `kid`s the JWKS publishes now.
    pub async fn jwks_kids(&self) -> Vec<String> {
        let body: Value = self
            .client
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("jwks json");
        body["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, name: &str, email: &str, password: &str) -> Response {
        self.post_json(
            "/api/v1/auth/register",
            &json!({"name": name, "email": email, "password": password, "password_confirm": password}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": refresh_token}),
        )
        .await
    }

    pub async fn me(&self, access_token: &str) -> Response {
        self.client
            .get(self.url("/api/v1/users/me"))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("request")
    }

    /// A JSON POST with the user's bearer token.
    pub async fn authed_post(&self, user: &TestUser, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&user.tokens().access)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// The Redis key prefix of this server, when its store is Redis.
    pub fn redis_prefix(&self) -> Option<String> {
        let redis = &self.state.settings.redis;
        redis.url.as_ref().map(|_| redis.key_prefix.clone())
    }

    async fn redis_conn(&self) -> RedisConn {
        let redis = &self.state.settings.redis;
        let url = redis.url.as_ref().expect("a Redis server");
        RedisClient::new(url.expose(), &redis.options().expect("the CA"))
            .expect("redis url")
            .conn()
            .await
            .expect("redis connection")
    }

    /// Every Redis key under this server's prefix.
    pub async fn redis_keys(&self) -> Vec<String> {
        keys_under_prefix(&self.state.settings.redis)
            .await
            .expect("KEYS")
            .1
    }

    /// The remaining time to live of a Redis key, in seconds (-2: no such key).
    pub async fn redis_ttl(&self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut self.redis_conn().await)
            .await
            .expect("TTL")
    }

    /// Writes one field of a Redis hash, as someone with access to Redis could.
    pub async fn redis_hset(&self, key: &str, field: &str, value: &str) {
        let _: i64 = redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query_async(&mut self.redis_conn().await)
            .await
            .expect("HSET");
    }

    pub async fn logout(&self, access_token: &str) -> Response {
        self.client
            .post(self.url("/api/v1/auth/logout"))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("request")
    }

    /// Gives an existing user the admin role (the role is read from the row on every request).
    pub async fn make_admin(&self, user: &TestUser) {
        self.state
            .db
            .users()
            .set_role(&user.email, latchkey::db::entities::user::Role::Admin)
            .await
            .expect("set role")
            .expect("user exists");
    }

    /// Registers and logs in a fresh user, then makes it an admin.
    pub async fn signed_in_admin(&self) -> TestUser {
        let admin = self.signed_in_user().await;
        self.make_admin(&admin).await;
        admin
    }

    /// Registers and logs in a fresh user.
    pub async fn signed_in_user(&self) -> TestUser {
        let user = TestUser::generate();
        let response = self.register(&user.name, &user.email, &user.password).await;
        assert_eq!(response.status(), StatusCode::CREATED, "register");
        let response = self.login(&user.email, &user.password).await;
        assert_eq!(response.status(), StatusCode::OK, "login");
        let body: Value = response.json().await.expect("token pair");
        TestUser {
            tokens: Some(Tokens::from_json(&body)),
            id: body["user"]["id"].as_str().map(str::to_owned),
            ..user
        }
    }
}

/// A user the test made, with the tokens of its latest login or refresh.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub email: String,
    pub password: String,
    pub id: Option<String>,
    pub tokens: Option<Tokens>,
}

impl TestUser {
    pub fn generate() -> Self {
        let tag = Uuid::new_v4().simple().to_string();
        Self {
            name: format!("User {}", &tag[..8]),
            email: format!("user-{}@example.com", &tag[..12]),
            password: format!("pw-{tag}-Secret!"),
            id: None,
            tokens: None,
        }
    }

    pub fn tokens(&self) -> &Tokens {
        self.tokens.as_ref().expect("signed in")
    }

    pub fn user_id(&self) -> Uuid {
        self.id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok())
            .expect("user id")
    }
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
}

impl Tokens {
    pub fn from_json(body: &Value) -> Self {
        Self {
            access: body["access_token"].as_str().expect("access_token").into(),
            refresh: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .into(),
            session_id: body["session_id"].as_str().expect("session_id").into(),
        }
    }
}

/// The claims of a token, read without verification (to forge variants of real tokens).
pub fn claims_of(token: &str) -> serde_json::Map<String, Value> {
    jsonwebtoken::dangerous::insecure_decode_claims(token).expect("readable claims")
}

/// The `kid` a token carries.
pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

/// Signs `claims` with RS256 and `key`, with the given `kid`.
pub fn sign_rs256(claims: &Value, key: &EncodingKey, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// Status and parsed JSON body of a response.
pub async fn status_and_json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
    (status, body)
}

/// Asserts the contract's error shape and code.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    let (actual, body) = status_and_json(response).await;
    assert_eq!(actual, status, "status (body {body})");
    assert_eq!(body["error"]["code"], code, "error code (body {body})");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a message (body {body})"
    );
    body
}

/// Asserts that both tokens of a session are refused: 401 `invalid_token`.
pub async fn assert_session_revoked(app: &TestApp, tokens: &Tokens) {
    assert_error(
        app.me(&tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_error(
        app.refresh(&tokens.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

/// `Set-Cookie` headers of a response, by cookie name.
pub fn set_cookies(response: &Response) -> HashMap<String, String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let name = v.split('=').next()?.trim().to_owned();
            Some((name, v.to_owned()))
        })
        .collect()
}

/// The attributes of a `Set-Cookie` header, lower-cased names, without the name=value pair.
pub fn cookie_attributes(header: &str) -> HashMap<String, String> {
    header
        .split(';')
        .skip(1)
        .map(|part| {
            let part = part.trim();
            match part.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_owned()),
                None => (part.to_ascii_lowercase(), String::new()),
            }
        })
        .collect()
}

/// The value of a `Set-Cookie` header.
pub fn cookie_value(header: &str) -> String {
    header
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// Generates, for each test function named, one test per backend:
/// `name::embedded` and `name::postgres_redis`; with `scale_out` first, also
/// `name::postgres_redis_tls` and `name::postgres_redis_cluster` (the Redis servers the tests
/// start). `with(configure)` adjusts the settings of every variant.
#[macro_export]
macro_rules! backend_tests {
    (@mod $name:ident, $configure:expr, [$($variant:ident: $backend:ident),*]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Embedded, $configure).await).await;
            }

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $variant() {
                    $crate::require!($backend);
                    super::$name($crate::helpers::TestApp::spawn_with($crate::helpers::Backend::$backend, $configure).await).await;
                }
            )*
        }
    };
    (scale_out with($configure:expr) => $($name:ident),* $(,)?) => {
        $(
            $crate::backend_tests!(@mod $name, $configure, [
                postgres_redis: PostgresRedis,
                postgres_redis_tls: PostgresRedisTls,
                postgres_redis_cluster: PostgresRedisCluster
            ]);
        )*
    };
    (scale_out $($name:ident),* $(,)?) => {
        $crate::backend_tests!(scale_out with(|_| {}) => $($name),*);
    };
    (with($configure:expr) => $($name:ident),* $(,)?) => {
        $(
            $crate::backend_tests!(@mod $name, $configure, [postgres_redis: PostgresRedis]);
        )*
    };
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!(with(|_| {}) => $($name),*);
    };
}

/// Generates, for each contract test named, one test per store: `memory` (the in-process store
/// `$memory`) and, built by `$redis(kind, access)`, `redis_multiplexed` and `redis_pooled` (the
/// Redis at `LATCHKEY_TEST_REDIS_URL`), `redis_tls` and `redis_tls_pooled` (the TLS Redis the
/// tests start), `redis_cluster` (the Redis Cluster they start).
#[macro_export]
macro_rules! store_contract {
    (@redis $name:ident, $redis:ident, $variant:ident, $group:ident, $kind:ident, $access:ident) => {
        #[tokio::test]
        async fn $variant() {
            $crate::require!($group);
            let access = latchkey::store::redis::RedisAccess::$access;
            super::$name(super::$redis($crate::helpers::RedisKind::$kind, access)).await;
        }
    };
    ($memory:expr, $redis:ident => $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn memory() {
                    super::$name(std::sync::Arc::new($memory)).await;
                }

                $crate::store_contract!(@redis $name, $redis, redis_multiplexed, Redis, Plain, Multiplexed);
                $crate::store_contract!(@redis $name, $redis, redis_pooled, Redis, Plain, Pooled);
                $crate::store_contract!(@redis $name, $redis, redis_tls, RedisTls, Tls, Multiplexed);
                $crate::store_contract!(@redis $name, $redis, redis_tls_pooled, RedisTls, Tls, Pooled);
                $crate::store_contract!(@redis $name, $redis, redis_cluster, RedisCluster, Cluster, Multiplexed);
            }
        )*
    };
}

/// Generates, for each test function taking a `Backend` (it builds its own instances), one
/// test per backend.
#[macro_export]
macro_rules! per_backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$name($crate::helpers::Backend::Embedded).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() {
                    $crate::require!(PostgresRedis);
                    super::$name($crate::helpers::Backend::PostgresRedis).await;
                }
            }
        )*
    };
}
