//! The database: connecting, migrating, and the queries the flows use. Queries return
//! `DbErr`, never HTTP types: the layers above decide what a failure means to a client.

pub mod audit;
pub mod entities;
pub mod links;
pub mod mfa;
pub mod outbox;
pub mod pooler;
pub mod reads;
pub mod users;

use std::{path::Path, time::Duration};

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, DatabaseConnection, DbErr, QuerySelect, Select,
    sea_query::{Expr, IntoColumnRef},
};
use uuid::Uuid;

use self::{
    audit::AuditEvents, links::LinkTokens, mfa::Mfa, outbox::Outbox, reads::Reads, users::Users,
};

/// The service's one database handle: the queries of each table go through its repository
/// ([`Database::users`], [`Database::audit`]), which picks the connection a query runs on.
/// Cheap to clone.
#[derive(Clone)]
pub struct Database {
    conn: DatabaseConnection,
    reads: Reads,
}

impl Database {
    /// Connects (see [`connect`]) and prepares the hot path's reads, once a pooler in between
    /// is known not to swap prepared statements between connections ([`pooler`]).
    pub async fn connect(url: &str, pool_size: Option<u32>) -> Result<Self, pooler::PoolerError> {
        pooler::check_prepared_statements(url).await?;
        let conn = connect(url, pool_size).await?;
        let reads = Reads::new(url, &conn)?;
        Ok(Self { conn, reads })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        migrate(&self.conn).await
    }

    pub fn users(&self) -> Users<'_> {
        Users::new(&self.conn, &self.reads)
    }

    pub fn audit(&self) -> AuditEvents<'_> {
        AuditEvents::new(&self.conn)
    }

    pub fn links(&self) -> LinkTokens<'_> {
        LinkTokens::new(&self.conn)
    }

    pub fn mfa(&self) -> Mfa<'_> {
        Mfa::new(&self.conn)
    }

    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(&self.conn)
    }

    /// Answers when every connection pool can reach the database.
    pub async fn ping(&self) -> Result<(), DbErr> {
        tokio::try_join!(self.conn.ping(), self.reads.ping()).map(|_| ())
    }

    /// SeaORM's connection, for maintenance and tests that query tables directly.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The hot path's read connections (see [`reads`]).
    pub fn reads(&self) -> &Reads {
        &self.reads
    }
}

/// Matches a capped count counts at most; past it the count is `COUNT_CAP + 1`.
pub const COUNT_CAP: u64 = 10_000;

/// Where a page of a listing starts. Skipping reads and throws away every row before the page,
/// so deep pages get slower as the table grows; starting after the previous page's last sort
/// key (keyset) reads only the page, through the index the listing is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStart {
    Skip(u64),
    /// After the row with this time and id, in the listing's order.
    After(DateTime<Utc>, Uuid),
}

impl PageStart {
    /// `query`, ordered by `(time, id)` (ascending, or descending with `newest_first`), from
    /// this start and at most `limit` rows. The keyset condition is one row comparison, which
    /// PostgreSQL answers from a `(time, id)` index.
    fn apply<E: sea_orm::EntityTrait>(
        self,
        query: Select<E>,
        (time, id): (impl IntoColumnRef + Copy, impl IntoColumnRef + Copy),
        newest_first: bool,
        limit: u64,
    ) -> Select<E> {
        use sea_orm::{
            QueryFilter, QueryOrder,
            sea_query::{ExprTrait, Order},
        };
        let order = if newest_first {
            Order::Desc
        } else {
            Order::Asc
        };
        let query = query
            .order_by(Expr::col(time), order.clone())
            .order_by(Expr::col(id), order);
        let query = match self {
            Self::Skip(rows) => query.offset(rows),
            Self::After(at, after_id) => {
                let key = Expr::tuple([Expr::col(time), Expr::col(id)]);
                let from = Expr::tuple([Expr::value(at), Expr::value(after_id)]);
                query.filter(if newest_first {
                    key.lt(from)
                } else {
                    key.gt(from)
                })
            }
        };
        query.limit(limit)
    }
}

/// Connects to `url` (PostgreSQL or SQLite) with at most `pool_size` connections (default:
/// [`default_postgres_pool_size`], or 8 for SQLite). For a SQLite file, its folder is created first
/// so that a first `cargo run` in an empty directory works.
pub async fn connect(url: &str, pool_size: Option<u32>) -> Result<DatabaseConnection, DbErr> {
    if let Some(path) = sqlite_file(url)
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|err| DbErr::Custom(format!("creating {}: {err}", dir.display())))?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(pool_size.unwrap_or(if url.starts_with("sqlite") {
            8
        } else {
            default_postgres_pool_size()
        }))
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection on every checkout by default: one more round trip for
        // each query, the guard's user load included. Only a connection idle long enough to
        // have been dropped by the server or a proxy is checked first.
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        // Statement logging would put bound values (password hashes) into logs.
        .sqlx_logging(false);
    sea_orm::Database::connect(options).await
}

/// PostgreSQL connections per pool unless `DATABASE_POOL_SIZE` says otherwise: twice the
/// cores, at least 4. A query holds its connection for a round trip only, so a few connections
/// keep an instance's cores busy; more only add PostgreSQL backends to wake up and switch
/// between.
pub fn default_postgres_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores * 2).unwrap_or(u32::MAX).max(4)
}

/// Whether `err` means the database is out of reach (down, restarting, its connections
/// broken or the pool exhausted) rather than a bad query: a retry later can succeed, so the
/// client gets 503, not 500. A prepared statement lost on its connection is logged with the
/// likely cause, a connection pooler, which the error alone does not name.
pub fn is_unavailable(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match err {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx_err))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx_err)) => {
            if pooler::lost_statement(sqlx_err) {
                tracing::warn!(
                    fix = pooler::FIX,
                    "a prepared statement went missing or was taken on its database \
                     connection: a connection pooler in transaction mode that does not track \
                     prepared statements is in between"
                );
            }
            matches!(
                **sqlx_err,
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ) || reads::breaks_connection(sqlx_err)
                // SQLite's single writer was busy (concurrent writes in the embedded
                // default): a retry will do.
                || sqlx_err.to_string().contains("database is locked")
        }
        other => other.to_string().contains("database is locked"),
    }
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    let pending = Migrator::get_pending_migrations(db).await?.len();
    Migrator::up(db, None).await?;
    if pending > 0 {
        tracing::info!(applied = pending, "database migrated");
    }
    Ok(())
}

/// The folder of a SQLite database file (`None` for PostgreSQL or an in-memory database): where
/// the embedded default keeps what else it stores on disk.
pub fn sqlite_dir(url: &str) -> Option<std::path::PathBuf> {
    sqlite_file(url).map(|file| {
        Path::new(file)
            .parent()
            .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf)
    })
}

/// The database of `url` in words, without its password.
pub fn describe(url: &str) -> String {
    match sqlite_file(url) {
        Some(path) => format!("SQLite file {path}"),
        None if url.starts_with("sqlite") => "SQLite in memory".into(),
        None => {
            // Host, port and database only: whatever precedes `@` may hold a password.
            let target = url.rsplit_once('@').map_or_else(
                || url.split_once("://").map_or(url, |(_, rest)| rest),
                |(_, rest)| rest,
            );
            format!(
                "PostgreSQL at {}",
                target.split('?').next().unwrap_or(target)
            )
        }
    }
}

/// The file path of a `sqlite://path?...` URL, if it names a file.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}
