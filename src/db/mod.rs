//! The database: connecting, migrating, and the queries the API uses.

pub mod audit;
pub mod entities;
pub mod reads;
pub mod users;

use std::{path::Path, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

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
    Database::connect(options).await
}

/// PostgreSQL connections per pool unless `DATABASE_POOL_SIZE` says otherwise: twice the
/// cores, at least 4. A query holds its connection for a round trip only, so a few connections
/// keep an instance's cores busy; more only add PostgreSQL backends to wake up and switch
/// between (bench/README.md measured 32 against 4: more CPU per request, not more requests).
pub fn default_postgres_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores * 2).unwrap_or(u32::MAX).max(4)
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// The file path of a `sqlite://path?...` URL, if it names a file.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}
