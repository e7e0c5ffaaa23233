//! Connection poolers between Latchkey and PostgreSQL (PgBouncer and the like).
//!
//! sqlx prepares every query as a named statement (`sqlx_s_1`, `sqlx_s_2`, ... on each
//! connection) and runs it later by name, with no setting to avoid it. A pooler in transaction
//! pooling mode hands each transaction a server connection of its own choosing; unless it
//! tracks prepared statements itself, a statement prepared through one server connection is
//! missing on the next, taken there by another client (`already exists`), or, worst, another
//! client's statement of the same name runs with this query's parameters. So before anything
//! runs, [`check_prepared_statements`] proves that statements stay with their connection; a
//! statement lost later ([`lost_statement`]) makes its query answer 503, and the hot path's
//! reads close that connection and read again on a new one.

use std::{str::FromStr, sync::Arc, time::Duration};

use sea_orm::{
    DbErr, RuntimeErr,
    sqlx::{
        self, ConnectOptions, Connection, PgConnection, Row,
        postgres::{PgConnectOptions, PgDatabaseError},
    },
};

/// What makes a pooler safe, for the messages that find one that is not.
pub const FIX: &str = "use PgBouncer 1.21 or later with `max_prepared_statements` above 0 (200 \
                       is its default since 1.22), or its session pooling (`pool_mode = \
                       session`), or point DATABASE_URL at PostgreSQL itself";

/// How long the whole check may take: a pooler queues queries while its server connections
/// are busy (a pool of one makes the second client wait for the first's commit).
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the second connection may wait for a server connection while the first holds
/// one in a transaction.
const PIN_WAIT: Duration = Duration::from_secs(1);

/// Rounds of the two clients running their statements in turn.
const ROUNDS: usize = 4;

/// Why the check refused the database at `DATABASE_URL`.
#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    /// Prepared statements move between connections: queries could run the wrong statement.
    #[error(
        "DATABASE_URL leads to a connection pooler that mixes up prepared statements between \
         client connections ({symptom}). Latchkey's driver prepares every query as a named \
         statement and runs it later by name, so through it a query can fail or run another \
         connection's statement. To fix: {FIX}"
    )]
    StatementsMixed { symptom: String },
    /// A pooler refused a parameter the driver sends when it connects.
    #[error(
        "the connection pooler at DATABASE_URL refused the connection: {message}. The driver \
         always sends `extra_float_digits`, which is safe to drop: set \
         `ignore_startup_parameters = extra_float_digits` in pgbouncer.ini. Any other \
         parameter comes from DATABASE_URL (`options`): remove it there rather than have the \
         pooler ignore it, which would drop its effect"
    )]
    StartupParameter { message: String },
    /// The database could not be reached, or answered with an unrelated error.
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// Whether `err` says a prepared statement went missing (`26000`) or its name was already
/// taken (`42P05`) on the server: what a pooler that moves statements between connections
/// causes. sqlx's statement cache on that connection no longer matches its server.
pub fn lost_statement(err: &sqlx::Error) -> bool {
    postgres_error(err).is_some_and(|err| matches!(err.code(), "26000" | "42P05"))
}

/// PostgreSQL's own error report in `err`, if it is one.
pub(super) fn postgres_error(err: &sqlx::Error) -> Option<&PgDatabaseError> {
    match err {
        sqlx::Error::Database(err) => err.try_downcast_ref::<PgDatabaseError>(),
        _ => None,
    }
}

/// Proves, on PostgreSQL, that a prepared statement stays with the connection that prepared
/// it, as it does on PostgreSQL itself and through a pooler that tracks statements. Two new
/// connections (each numbering its statements from `sqlx_s_1`) prepare different statements
/// of the same parameter types, the second while the first holds a transaction (so a pooler
/// puts them on different server connections), then run them in turn: through a pooler that
/// does not track statements one of them fails or answers with the other's result.
pub async fn check_prepared_statements(url: &str) -> Result<(), PoolerError> {
    if !url.starts_with("postgres") {
        return Ok(());
    }
    let options = PgConnectOptions::from_str(url)
        .map_err(database_error)?
        .application_name("latchkey-check")
        .disable_statement_logging();
    tokio::time::timeout(CHECK_TIMEOUT, check(&options))
        .await
        .unwrap_or_else(|_| {
            Err(PoolerError::Database(DbErr::Conn(RuntimeErr::Internal(format!(
                "the database did not answer the prepared-statement check within {CHECK_TIMEOUT:?}"
            )))))
        })
}

async fn check(options: &PgConnectOptions) -> Result<(), PoolerError> {
    let mut first = connect(options).await?;
    let mut second = connect(options).await?;
    let result = probe(&mut first, &mut second).await;
    let _ = tokio::join!(first.close(), second.close());
    result
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, PoolerError> {
    match PgConnection::connect_with(options).await {
        Ok(conn) => Ok(conn),
        Err(err) if err.to_string().contains("unsupported startup parameter") => {
            Err(PoolerError::StartupParameter {
                message: err.to_string(),
            })
        }
        Err(err) => Err(PoolerError::Database(DbErr::Conn(RuntimeErr::SqlxError(
            Arc::new(err),
        )))),
    }
}

/// The two statements: the same parameter and result types, different answers.
const FIRST: &str = "SELECT $1::int4";
const SECOND: &str = "SELECT -$1::int4";

async fn probe(first: &mut PgConnection, second: &mut PgConnection) -> Result<(), PoolerError> {
    ask(first, FIRST, 7).await?;
    sqlx::raw_sql("BEGIN")
        .execute(&mut *first)
        .await
        .map_err(database_error)?;
    // The second prepares while the first holds its server connection, so a pooler gives it
    // another. A pooler with a single server connection makes it wait for the commit: its
    // query is then left pending (not cancelled) and finished after the commit.
    {
        let asked = ask(second, SECOND, -7);
        tokio::pin!(asked);
        let early = tokio::time::timeout(PIN_WAIT, &mut asked).await;
        sqlx::raw_sql("COMMIT")
            .execute(&mut *first)
            .await
            .map_err(database_error)?;
        match early {
            Ok(answered) => answered?,
            Err(_) => asked.await?,
        }
    }
    for _ in 0..ROUNDS {
        ask(first, FIRST, 7).await?;
        ask(second, SECOND, -7).await?;
    }
    Ok(())
}

/// Runs `sql` (a prepared statement, cached by sqlx after its first run) with 7, expecting
/// `expected`.
async fn ask(conn: &mut PgConnection, sql: &'static str, expected: i32) -> Result<(), PoolerError> {
    let mixed = |symptom: String| PoolerError::StatementsMixed { symptom };
    let row = match sqlx::query(sql).bind(7_i32).fetch_one(conn).await {
        Ok(row) => row,
        // A statement missing, taken, or another of the same name with other parameters.
        Err(err) => {
            return Err(match postgres_error(&err) {
                Some(pg) if lost_statement(&err) || pg.message().contains("prepared statement") => {
                    mixed(format!(
                        "`{sql}` failed: {} (SQLSTATE {})",
                        pg.message(),
                        pg.code()
                    ))
                }
                _ => database_error(err),
            });
        }
    };
    match row.try_get::<i32, _>(0) {
        Ok(value) if value == expected => Ok(()),
        Ok(value) => Err(mixed(format!(
            "`{sql}` with 7 answered {value}: another connection's statement ran"
        ))),
        Err(err) => Err(mixed(format!("`{sql}`: {err}"))),
    }
}

fn database_error(err: sqlx::Error) -> PoolerError {
    PoolerError::Database(DbErr::Query(RuntimeErr::SqlxError(Arc::new(err))))
}
