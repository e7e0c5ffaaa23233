//! The database connections of the hot path (`db::reads`): on PostgreSQL the guard's user
//! loads go through connections of their own, which sqlx does not ping on every release.

use std::time::{Duration, Instant};

use latchkey::db::reads::Reads;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::helpers::{Backend, TestApp};

/// Runs `sql`, which yields one `bigint` column `n`, on the test database.
async fn count(app: &TestApp, sql: &str) -> i64 {
    let statement = Statement::from_string(DbBackend::Postgres, sql);
    let row = app
        .state
        .db
        .connection()
        .query_one_raw(statement)
        .await
        .expect("query");
    row.expect("one row").try_get("", "n").expect("n")
}

/// The hot path's connections to this test's database, by their `application_name`.
async fn read_connections(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT count(*)::bigint AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'latchkey-reads'",
    )
    .await
}

mod on_postgres_the_guard_loads_users_through_connections_of_its_own {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        let embedded = TestApp::spawn(Backend::Embedded).await;
        assert!(
            matches!(embedded.state.db.reads(), Reads::Orm(_)),
            "SQLite: SeaORM's pool"
        );

        let app = TestApp::spawn(Backend::PostgresRedis).await;
        assert!(matches!(app.state.db.reads(), Reads::Postgres(_)));
        let user = app.signed_in_user().await;

        let response = app.me(&user.tokens().access).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert!(read_connections(&app).await >= 1);
    }
}

mod a_read_whose_connection_the_database_ended_runs_again_on_a_new_one {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        // Arrange: a signed-in user and open read connections.
        let app = TestApp::spawn(Backend::PostgresRedis).await;
        let user = app.signed_in_user().await;
        let token = &user.tokens().access;
        let warm_up = futures_util::future::join_all((0..4).map(|_| app.me(token))).await;
        assert!(warm_up.iter().all(|r| r.status() == StatusCode::OK));
        let before = read_connections(&app).await;
        assert!(before >= 1);

        // Act: PostgreSQL ends every one of them (as a restart or an idle timeout would).
        let ended = count(
            &app,
            "SELECT count(*)::bigint AS n FROM (SELECT pg_terminate_backend(pid) FROM \
             pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'latchkey-reads') AS ended",
        )
        .await;
        assert_eq!(ended, before);

        // Assert: no request sees it. Each broken connection is closed, not reused, and the read
        // runs again on a new connection.
        for _ in 0..6 {
            let response = app.me(token).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert!(read_connections(&app).await >= 1);
    }
}

mod a_connection_whose_query_was_abandoned_half_way_serves_no_further_query {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        // Arrange: one read connection, busy with a query whose caller gives up (as when a
        // request is cancelled or times out).
        let app =
            TestApp::spawn_with(Backend::PostgresRedis, |s| s.database.pool_size = Some(1)).await;
        let slow = Statement::from_string(DbBackend::Postgres, "SELECT pg_sleep(5)::text AS n");
        let abandoned = tokio::time::timeout(
            Duration::from_millis(300),
            app.state.db.reads().query_one_raw(slow),
        )
        .await;
        assert!(abandoned.is_err(), "the slow query was cut off");

        // Act
        let started = Instant::now();
        let quick = Statement::from_string(DbBackend::Postgres, "SELECT 7::bigint AS n");
        let row = app.state.db.reads().query_one_raw(quick).await;

        // Assert: the answer comes from a new connection, not after the abandoned query's
        // answer on the old one (which would take the rest of its 5 s).
        let n: i64 = row
            .expect("query")
            .expect("row")
            .try_get("", "n")
            .expect("n");
        assert_eq!(n, 7);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "waited {:?} behind the abandoned query",
            started.elapsed()
        );
    }
}
