//! PostgreSQL behind PgBouncer in transaction pooling mode, as managed offerings run it: each
//! test starts its own `pgbouncer` (LATCHKEY_TEST_PGBOUNCER, else the one on the PATH; 1.21
//! or later) in front of the test PostgreSQL. Through one that tracks prepared statements
//! (`max_prepared_statements` above 0) the service runs as on PostgreSQL itself; through one
//! that does not, it refuses to start.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    process::{Child, Command},
    time::Duration,
};

use futures_util::future::join_all;
use latchkey::{
    config::Settings,
    db::pooler::PoolerError,
    startup::{Application, StartupError},
};
use reqwest::StatusCode;
use sea_orm::sqlx::{self, Connection, PgConnection, Row};
use serde_json::Value;

use crate::{
    helpers::{
        Backend, TestApp, TestUser, Tokens, assert_session_revoked, base_settings,
        postgres_admin_url, status_and_json,
    },
    redis_servers::{free_port, spawn},
};

/// Generates, for each test named, `name::postgres_redis`: run where PostgreSQL, Redis and a
/// recent enough `pgbouncer` are.
macro_rules! pgbouncer_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() {
                    crate::require!(PostgresRedis);
                    crate::require!(PgBouncer);
                    super::$name().await;
                }
            }
        )*
    };
}

pgbouncer_tests!(
    the_service_runs_through_pgbouncer_in_transaction_pooling_mode,
    a_pooler_that_does_not_track_prepared_statements_stops_the_startup,
    a_pooler_refusing_the_drivers_startup_parameter_stops_the_startup_with_the_fix,
    a_statement_lost_at_run_time_answers_503_and_logs_the_fix,
);

/// Server connections each database gets from the pooler: fewer than the clients' connections
/// (two pools per instance), so they must be shared.
const SERVER_CONNECTIONS: u32 = 2;

/// The `pgbouncer` the tests start.
pub fn program() -> String {
    std::env::var("LATCHKEY_TEST_PGBOUNCER").unwrap_or_else(|_| "pgbouncer".into())
}

/// `None` when [`program`] runs and is 1.21 or later (the first to track prepared statements
/// in transaction pooling mode), else why not.
pub fn missing() -> Option<String> {
    let program = program();
    let output = Command::new(&program).arg("--version").output();
    let text = match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            return Some(format!(
                "`{program} --version` does not run here (set LATCHKEY_TEST_PGBOUNCER)"
            ));
        }
    };
    let version = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut parts = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    ((major, minor) < (1, 21))
        .then(|| format!("`{program}` is PgBouncer {version}; the tests need 1.21 or later"))
}

/// What a test's pooler is configured with.
struct Config {
    /// `None`: the setting is left out (for versions before it existed).
    max_prepared_statements: Option<u32>,
    /// sqlx sends `extra_float_digits` when it connects; PgBouncer refuses parameters it
    /// neither tracks nor ignores.
    ignore_extra_float_digits: bool,
}

impl Config {
    const TRACKING: Config = Config {
        max_prepared_statements: Some(200),
        ignore_extra_float_digits: true,
    };
}

/// A `pgbouncer` in transaction pooling mode in front of the test PostgreSQL, for every
/// database on it; killed when dropped.
struct PgBouncer {
    child: Child,
    port: u16,
    user: String,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts `program` with `config` on a free port (a port taken meanwhile by someone else
    /// makes it exit: it is started again on another).
    async fn start(program: &str, config: &Config) -> Self {
        let admin = reqwest::Url::parse(&postgres_admin_url()).expect("the PostgreSQL URL");
        let user = admin.username().to_owned();
        let dir = tempfile::tempdir().expect("temp dir");
        // PgBouncer refuses to run as root: it then switches to `nobody`, which must read
        // its files and write its log.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let password = admin.password().unwrap_or_default();
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )
        .expect("auth file");
        for _ in 0..5 {
            let port = free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(&ini, ini_text(&admin, &user, port, dir.path(), config)).unwrap();
            let mut command = Command::new(program);
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                command.args(["-u", "nobody"]);
            }
            command.arg(&ini);
            let mut child = spawn(command).expect("pgbouncer starts");
            if listening(&mut child, port).await {
                return Self {
                    child,
                    port,
                    user,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("pgbouncer.log"));
        panic!("pgbouncer did not start: {}", log.unwrap_or_default());
    }

    /// `settings` with their database reached through this pooler.
    fn route(&self, settings: &mut Settings) {
        let mut url = reqwest::Url::parse(settings.database.url.expose()).expect("database url");
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        settings.database.url = url.to_string().into();
        // Each instance's two pools of 4 outnumber the pooler's server connections.
        settings.database.pool_size = Some(4);
    }

    /// Adds `line` to the configuration (a setting given again wins) and reloads it.
    async fn reconfigure(&self, line: &str) {
        let ini = self.dir.path().join("pgbouncer.ini");
        let text = std::fs::read_to_string(&ini).expect("pgbouncer.ini");
        std::fs::write(&ini, format!("{text}{line}\n")).expect("pgbouncer.ini");
        let mut console = self.console().await;
        sqlx::raw_sql("RELOAD")
            .execute(&mut console)
            .await
            .expect("RELOAD");
        console.close().await.ok();
    }

    /// A connection to PgBouncer's admin console, which speaks the simple query protocol only.
    async fn console(&self) -> PgConnection {
        let url = format!("postgres://{}@127.0.0.1:{}/pgbouncer", self.user, self.port);
        PgConnection::connect(&url)
            .await
            .expect("the admin console")
    }

    /// The rows of `SHOW what` on PgBouncer's admin console, for `database`, as text.
    async fn show(&self, what: &str, database: &str) -> Vec<HashMap<String, String>> {
        let mut console = self.console().await;
        // The console answers in text.
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SHOW {what}")))
            .fetch_all(&mut console)
            .await
            .expect("SHOW");
        let rows = rows.iter().map(|row| {
            use sqlx::Column;
            row.columns()
                .iter()
                .map(|column| {
                    let value: Option<String> = row.try_get_unchecked(column.ordinal()).unwrap();
                    (column.name().to_owned(), value.unwrap_or_default())
                })
                .collect::<HashMap<_, _>>()
        });
        let rows = rows.filter(|row| row["database"] == database).collect();
        console.close().await.ok();
        rows
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `child` accepts connections on `port`; false if it exited first (its port was
/// taken) or never listened.
async fn listening(child: &mut Child, port: u16) -> bool {
    for _ in 0..200 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// The pooler's configuration: every database of the test PostgreSQL (`*`), transaction
/// pooling, [`SERVER_CONNECTIONS`] server connections per database.
fn ini_text(
    admin: &reqwest::Url,
    user: &str,
    port: u16,
    dir: &std::path::Path,
    config: &Config,
) -> String {
    let host = admin.host_str().unwrap_or("127.0.0.1");
    let server_port = admin.port().unwrap_or(5432);
    let mut text = format!(
        "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {dir}/users.txt\nadmin_users = {user}\n\
         pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\n\
         logfile = {dir}/pgbouncer.log\n",
        dir = dir.display()
    );
    if let Some(max) = config.max_prepared_statements {
        text.push_str(&format!("max_prepared_statements = {max}\n"));
    }
    if config.ignore_extra_float_digits {
        text.push_str("ignore_startup_parameters = extra_float_digits\n");
    }
    text
}

/// The database `app` uses (on PostgreSQL).
fn database_name(app: &TestApp) -> String {
    let url = reqwest::Url::parse(app.state.settings.database.url.expose()).expect("url");
    url.path().trim_start_matches('/').to_owned()
}

/// Settings that reach the test PostgreSQL (its admin database) through `bouncer`, no Redis.
fn settings_through(bouncer: &PgBouncer, dir: &tempfile::TempDir) -> Settings {
    let mut settings = base_settings();
    settings.mail.outbox_dir = Some(dir.path().join("outbox"));
    settings.database.url = postgres_admin_url().into();
    bouncer.route(&mut settings);
    settings
}

/// Why the service refused to start through `bouncer`.
async fn refusal_through(bouncer: &PgBouncer) -> StartupError {
    let dir = tempfile::tempdir().expect("temp dir");
    match Application::build(settings_through(bouncer, &dir)).await {
        Ok(_) => panic!("the service started through a pooler it cannot run behind"),
        Err(err) => err,
    }
}

/// The refusal as `latchkey` prints it: the error, then each of its causes.
fn printed(err: &StartupError) -> String {
    let causes = std::iter::successors(Some(err as &dyn std::error::Error), |e| e.source());
    causes
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Registers and logs in `count` users, alternating between the instances.
async fn signed_in_users(instances: [&TestApp; 2], count: usize) -> Vec<TestUser> {
    let mut users = Vec::new();
    for i in 0..count {
        users.push(instances[i % 2].signed_in_user().await);
    }
    users
}

/// `me` for `readers` 50 times and a refresh of each of `refreshers`, all at once and spread
/// over both instances. Every answer must be its own user's: a statement run for another
/// connection would show up here as another user's row. Returns the refreshed pairs.
async fn concurrent_traffic(
    instances: [&TestApp; 2],
    readers: &[TestUser],
    refreshers: &[TestUser],
) -> Vec<Tokens> {
    let reads = (0..50).map(|i| {
        let user = &readers[i % readers.len()];
        async move { (user, instances[i % 2].me(&user.tokens().access).await) }
    });
    let refreshes = refreshers.iter().enumerate().map(|(i, user)| async move {
        (
            user,
            instances[(i + 1) % 2].refresh(&user.tokens().refresh).await,
        )
    });
    let (reads, refreshes) = tokio::join!(join_all(reads), join_all(refreshes));
    for (user, response) in reads {
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user"]["email"], user.email, "another user's row");
        assert_eq!(body["user"]["id"].as_str(), user.id.as_deref());
    }
    let mut pairs = Vec::new();
    for (user, response) in refreshes {
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user"]["email"], user.email, "another user's row");
        let pair = Tokens::from_json(&body);
        assert_eq!(pair.session_id, user.tokens().session_id);
        pairs.push(pair);
    }
    pairs
}

/// An admin (made through the pooler) reads a user and the user's logins from the other
/// instance.
async fn admin_reads_through_the_other_instance(instances: [&TestApp; 2], user: &TestUser) {
    let admin = instances[0].signed_in_admin().await;
    let get = |path: String| {
        let request = instances[1].client.get(instances[1].url(&path));
        request.bearer_auth(admin.tokens().access.clone()).send()
    };
    let id = user.user_id();
    let (status, body) =
        status_and_json(get(format!("/api/v1/admin/users/{id}")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], user.email, "{body}");
    let path = format!("/api/v1/admin/audit?user_id={id}&event_type=login_succeeded");
    let (status, body) = status_and_json(get(path).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["events"].as_array().expect("events");
    assert!(!events.is_empty(), "{body}");
    assert!(
        events.iter().all(|e| e["user_id"] == id.to_string()),
        "{body}"
    );
}

/// The HTTP lifecycle and concurrent traffic on two instances, every query through one
/// pooler in transaction pooling mode whose two server connections the instances'
/// connections share.
async fn the_service_runs_through_pgbouncer_in_transaction_pooling_mode() {
    let bouncer = PgBouncer::start(&program(), &Config::TRACKING).await;
    let app = TestApp::spawn_with(Backend::PostgresRedis, |s| bouncer.route(s)).await;
    let sibling = app.spawn_sibling().await;
    let instances = [&app, &sibling];

    // The lifecycle test, on a third instance through the same pooler.
    crate::lifecycle::full_lifecycle_with_bearer_tokens(app.spawn_sibling().await).await;

    let users = signed_in_users(instances, 8).await;
    let (readers, refreshers) = users.split_at(4);
    let pairs = concurrent_traffic(instances, readers, refreshers).await;
    for (pair, user) in pairs.iter().zip(refreshers) {
        let (status, body) = status_and_json(app.me(&pair.access).await).await;
        assert_eq!(
            (status, &body["user"]["email"]),
            (StatusCode::OK, &Value::from(user.email.clone()))
        );
    }
    admin_reads_through_the_other_instance(instances, &readers[0]).await;
    let response = sibling.logout(&readers[1].tokens().access).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_session_revoked(&app, readers[1].tokens()).await;

    assert_multiplexed(&bouncer, &database_name(&app)).await;
}

/// PgBouncer's own account: the instances' connections (clients) shared at most
/// [`SERVER_CONNECTIONS`] server connections, and the statements they prepared were
/// prepared on the servers as needed.
async fn assert_multiplexed(bouncer: &PgBouncer, database: &str) {
    let number = |row: &HashMap<String, String>, column: &str| -> u64 {
        row[column]
            .parse()
            .unwrap_or_else(|_| panic!("{column}: {row:?}"))
    };
    let pools = bouncer.show("POOLS", database).await;
    let pool = pools.first().expect("a pool for the test database");
    let clients = number(pool, "cl_active") + number(pool, "cl_waiting");
    let servers: u64 = ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
        .iter()
        .map(|column| number(pool, column))
        .sum();
    let stats = bouncer.show("STATS", database).await;
    let stats = stats.first().expect("stats for the test database");
    let transactions = number(stats, "total_xact_count");
    println!(
        "pgbouncer: {clients} client connections on {servers} server connections; \
         {transactions} transactions, {} client parses, {} server parses, {} binds",
        number(stats, "total_client_parse_count"),
        number(stats, "total_server_parse_count"),
        number(stats, "total_bind_count"),
    );
    assert!(servers <= u64::from(SERVER_CONNECTIONS), "{pool:?}");
    assert!(clients > servers, "no sharing: {pool:?}");
    assert!(transactions > 100, "{stats:?}");
}

/// Through a pooler that does not track prepared statements (PgBouncer before 1.21, or with
/// `max_prepared_statements = 0`), the service refuses to start and says how to fix it.
/// LATCHKEY_TEST_OLD_PGBOUNCER names an older PgBouncer to try as well (Debian 12's 1.18).
async fn a_pooler_that_does_not_track_prepared_statements_stops_the_startup() {
    let mut poolers = vec![(
        program(),
        Config {
            max_prepared_statements: Some(0),
            ..Config::TRACKING
        },
    )];
    if let Ok(old) = std::env::var("LATCHKEY_TEST_OLD_PGBOUNCER") {
        let config = Config {
            max_prepared_statements: None,
            ..Config::TRACKING
        };
        poolers.push((old, config));
    }
    for (program, config) in poolers {
        let bouncer = PgBouncer::start(&program, &config).await;
        let refusal = refusal_through(&bouncer).await;
        let message = printed(&refusal);
        println!("{program}: {message}");
        let StartupError::Pooler(PoolerError::StatementsMixed { symptom }) = refusal else {
            panic!("expected the pooler refusal, got: {message}");
        };
        assert!(
            symptom.contains("another connection's statement ran")
                || symptom.contains("(SQLSTATE 42P05)")
                || symptom.contains("(SQLSTATE 26000)"),
            "{symptom}"
        );
        for fix in [
            "PgBouncer 1.21 or later with `max_prepared_statements` above 0",
            "`pool_mode = session`",
            "point DATABASE_URL at PostgreSQL itself",
        ] {
            assert!(message.contains(fix), "{message}");
        }
    }
}

/// A pooler that refuses the parameter the driver sets when it connects: the refusal names
/// the setting that lets it through.
async fn a_pooler_refusing_the_drivers_startup_parameter_stops_the_startup_with_the_fix() {
    let config = Config {
        ignore_extra_float_digits: false,
        ..Config::TRACKING
    };
    let bouncer = PgBouncer::start(&program(), &config).await;
    let refusal = refusal_through(&bouncer).await;
    let message = printed(&refusal);
    assert!(
        matches!(
            refusal,
            StartupError::Pooler(PoolerError::StartupParameter { .. })
        ),
        "{message}"
    );
    assert!(message.contains("extra_float_digits"), "{message}");
    assert!(message.contains("ignore_startup_parameters"), "{message}");
}

/// A pooler that stops tracking prepared statements while the service runs: a query whose
/// statement went missing answers 503 with `Retry-After`, not 500, and the log names the
/// likely cause and its fix.
async fn a_statement_lost_at_run_time_answers_503_and_logs_the_fix() {
    let bouncer = PgBouncer::start(&program(), &Config::TRACKING).await;
    let app = TestApp::spawn_with(Backend::PostgresRedis, |s| {
        bouncer.route(s);
        // One connection per pool: the statements prepared below are those used after.
        s.database.pool_size = Some(1);
    })
    .await;
    let user = app.signed_in_user().await;
    let rename = |name: &'static str| {
        let request = app.client.patch(app.url("/api/v1/users/me"));
        let request = request.bearer_auth(&user.tokens().access);
        request.json(&serde_json::json!({ "name": name })).send()
    };
    assert_eq!(rename("Before").await.unwrap().status(), StatusCode::OK);

    bouncer.reconfigure("max_prepared_statements = 0").await;
    let response = rename("After").await.unwrap();

    let retry_after = response.headers().contains_key("retry-after");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry_after, "no Retry-After");
    assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    let logs = crate::helpers::captured_logs();
    let hint = logs
        .lines()
        .find(|line| line.contains("a prepared statement went missing"));
    assert!(
        hint.is_some_and(|line| line.contains("max_prepared_statements` above 0")),
        "no hint in the log"
    );
}
