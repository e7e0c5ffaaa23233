//! The connection the hot path reads through: the guard's user load on every authenticated
//! request, and the user loads of refresh and login.
//!
//! On SQLite it is SeaORM's own pool. On PostgreSQL it is a pool of its own, because SeaORM's
//! pool is sqlx's, and sqlx sends a `Sync` and waits for the answer every time a connection
//! goes back to its pool (`PoolConnection::return_to_pool`), a second round trip for every
//! query that no setting turns off; bench/README.md measures what it costs `GET /users/me`.
//! Queries still go through SeaORM: [`Reads`] is a SeaORM
//! [`ConnectionTrait`], so `Entity::find_by_id(id).one(&reads)` builds the statement and maps
//! the row exactly as on any other connection; only the connection handling is ours, on
//! deadpool.
//!
//! What the ping on release was for is kept:
//! - a connection idle for 30 s or more is pinged before use (as SeaORM's pool is configured
//!   to do on checkout, `test_before_acquire_if_idle_for`), in case the server or a proxy
//!   dropped it;
//! - a connection whose query broke it (I/O, TLS or protocol trouble, or a FATAL error from
//!   PostgreSQL, which then ends the session) is closed instead of going back to the pool,
//!   and a read is tried once more on a new connection, so a database restart costs no
//!   request an error;
//! - a connection whose query was abandoned mid-way (the request was cancelled or timed out)
//!   may be mid-message: it is closed when it is next taken from the pool, instead of
//!   serving the next query.

use std::{str::FromStr, sync::Arc, time::Duration};

use deadpool::{
    Runtime,
    managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult},
};
use futures_util::future::BoxFuture;
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult,
    RuntimeErr, Statement, Values,
    sqlx::{
        self, AssertSqlSafe, ConnectOptions, Connection, PgConnection,
        postgres::{PgConnectOptions, PgSeverity},
    },
};
use sea_query_sqlx::SqlxValues;

/// A pooled connection idle this long is pinged before it is handed out.
const IDLE_BEFORE_CHECK: Duration = Duration::from_secs(30);
/// How long a query may wait for a connection, and a new connection may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the hot path reads: SeaORM's pool, or on PostgreSQL connections not pinged on
/// release. Cheap to clone.
#[derive(Clone)]
pub enum Reads {
    Orm(DatabaseConnection),
    Postgres(PgReadPool),
}

impl Reads {
    /// For `db`, connected to `url`: on PostgreSQL a pool of its own, as large as `db`'s
    /// (`DATABASE_POOL_SIZE`); else `db` itself.
    pub fn new(url: &str, db: &DatabaseConnection) -> Result<Self, DbErr> {
        match db.get_database_backend() {
            DbBackend::Postgres => {
                let size = db
                    .get_postgres_connection_pool()
                    .options()
                    .get_max_connections();
                Ok(Self::Postgres(PgReadPool::new(url, size)?))
            }
            _ => Ok(Self::Orm(db.clone())),
        }
    }

    /// Whether a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), DbErr> {
        match self {
            Self::Orm(db) => db.ping().await,
            Self::Postgres(pool) => pool.run(true, |conn| Box::pin(conn.ping())).await,
        }
    }
}

/// PostgreSQL connections for [`Reads`] (see the module's documentation).
#[derive(Clone)]
pub struct PgReadPool {
    pool: managed::Pool<Manager>,
}

struct Manager {
    options: PgConnectOptions,
}

/// A pooled connection, and whether its last query ran to the end.
struct ReadConnection {
    conn: PgConnection,
    /// False from the start of a query until it returns: still false when the pool gets the
    /// connection back means the query's future was dropped half-way.
    finished: bool,
}

impl managed::Manager for Manager {
    type Type = ReadConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<ReadConnection, sqlx::Error> {
        // Boxed, like the ping below: sqlx's connect future is several KiB, and unboxed it
        // would make every checkout's future (and every query's) that large, to be moved
        // and copied on each request for a path taken once per connection.
        let conn = Box::pin(PgConnection::connect_with(&self.options)).await?;
        Ok(ReadConnection {
            conn,
            finished: true,
        })
    }

    /// Runs when a pooled connection is taken again; an error discards it and the pool takes
    /// or opens another.
    async fn recycle(
        &self,
        read: &mut ReadConnection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if !read.finished {
            return Err(RecycleError::message(
                "its last query was abandoned half-way",
            ));
        }
        if metrics.last_used() >= IDLE_BEFORE_CHECK {
            Box::pin(read.conn.ping())
                .await
                .map_err(RecycleError::Backend)?;
        }
        Ok(())
    }
}

impl PgReadPool {
    /// The most connections the pool opens (`DATABASE_POOL_SIZE`).
    pub fn max_size(&self) -> usize {
        self.pool.status().max_size
    }

    fn new(url: &str, pool_size: u32) -> Result<Self, DbErr> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))))?
            // Named in pg_stat_activity apart from SeaORM's pool.
            .application_name("latchkey-reads")
            // Statement logging would put bound values into logs.
            .disable_statement_logging();
        let pool = managed::Pool::builder(Manager { options })
            .max_size(pool_size.max(1) as usize)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| DbErr::Custom(format!("building the read pool: {err}")))?;
        Ok(Self { pool })
    }

    /// Runs `query` on a pooled connection. A connection the attempt broke is closed; with
    /// `retry` (reads, which are safe to repeat), a query whose connection failed runs once
    /// more on a new one. `query` may run twice, so it owns (clones) what it needs.
    async fn run<T, Q>(&self, retry: bool, query: Q) -> Result<T, DbErr>
    where
        Q: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Sync,
    {
        match self.attempt(&query).await {
            Err(Failure::Connection(_)) if retry => {
                // The server dropped the connection (a restart, an idle timeout, a proxy):
                // the idle connections opened before it are likely gone too.
                self.pool.retain(|_, _| false);
                self.attempt(&query).await.map_err(DbErr::from)
            }
            other => other.map_err(DbErr::from),
        }
    }

    async fn attempt<T, Q>(&self, query: &Q) -> Result<T, Failure>
    where
        Q: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Sync,
    {
        let mut read = self.pool.get().await.map_err(Failure::Acquire)?;
        read.finished = false;
        let result = query(&mut read.conn).await;
        read.finished = true;
        match result {
            Ok(value) => Ok(value),
            Err(err) if breaks_connection(&err) => {
                // Closed, never reused.
                drop(Object::take(read));
                Err(Failure::Connection(err))
            }
            Err(err) => Err(Failure::Query(err)),
        }
    }
}

/// Whether `err` leaves its connection unusable: I/O, TLS or protocol trouble, a FATAL
/// error, with which PostgreSQL ends the session (`pg_terminate_backend`, a shutdown), or a
/// prepared statement lost on the server (the connection's statement cache no longer matches
/// it; see [`super::pooler`]).
pub(super) fn breaks_connection(err: &sqlx::Error) -> bool {
    if super::pooler::lost_statement(err) {
        return true;
    }
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => super::pooler::postgres_error(err)
            .is_some_and(|err| matches!(err.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}

/// Why an attempt failed.
enum Failure {
    /// No connection could be had.
    Acquire(PoolError<sqlx::Error>),
    /// The connection broke (it has been closed).
    Connection(sqlx::Error),
    /// PostgreSQL answered with an error, or the answer could not be read.
    Query(sqlx::Error),
}

impl From<Failure> for DbErr {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Acquire(err) => acquire_error(err),
            // A connection failure is the database being unavailable (503), as when SeaORM
            // cannot connect; a query error is an internal error (500).
            Failure::Connection(err) => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))),
            Failure::Query(err) => DbErr::Query(RuntimeErr::SqlxError(Arc::new(err))),
        }
    }
}

fn acquire_error(err: PoolError<sqlx::Error>) -> DbErr {
    match err {
        PoolError::Timeout(_) => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        PoolError::Closed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        PoolError::Backend(err) => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))),
        other => DbErr::Conn(RuntimeErr::Internal(other.to_string())),
    }
}

/// A SeaORM statement as an sqlx query (what SeaORM's own PostgreSQL driver does).
fn query(stmt: Statement) -> sqlx::query::Query<'static, sqlx::Postgres, SqlxValues> {
    let values = stmt.values.unwrap_or(Values(Vec::new()));
    sqlx::query_with(AssertSqlSafe(stmt.sql), SqlxValues(values))
}

#[async_trait::async_trait]
impl ConnectionTrait for PgReadPool {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    /// Not repeated on a connection failure: it may have taken effect.
    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let result = self.run(false, |conn| {
            let stmt = stmt.clone();
            Box::pin(async move { query(stmt).execute(conn).await })
        });
        result.await.map(ExecResult::from)
    }

    /// Not repeated on a connection failure: it may have taken effect.
    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let result = self.run(false, |conn| {
            let sql = sql.to_owned();
            Box::pin(async move { sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await })
        });
        result.await.map(ExecResult::from)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let row = self.run(true, |conn| {
            let stmt = stmt.clone();
            Box::pin(async move { query(stmt).fetch_optional(conn).await })
        });
        Ok(row.await?.map(QueryResult::from))
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let rows = self.run(true, |conn| {
            let stmt = stmt.clone();
            Box::pin(async move { query(stmt).fetch_all(conn).await })
        });
        Ok(rows.await?.into_iter().map(QueryResult::from).collect())
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Reads {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Orm(db) => db.get_database_backend(),
            Self::Postgres(pool) => pool.get_database_backend(),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Orm(db) => db.execute_raw(stmt).await,
            Self::Postgres(pool) => pool.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Orm(db) => db.execute_unprepared(sql).await,
            Self::Postgres(pool) => pool.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Self::Orm(db) => db.query_one_raw(stmt).await,
            Self::Postgres(pool) => pool.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Orm(db) => db.query_all_raw(stmt).await,
            Self::Postgres(pool) => pool.query_all_raw(stmt).await,
        }
    }
}
