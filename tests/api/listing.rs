//! The admin listings at any depth: `after` (keyset) pages walk every user and every audit
//! event exactly once, in the same order as numbered pages, and stay put when rows before them
//! are deleted; malformed cursors are 422.

use chrono::{TimeZone, Utc};
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use serde_json::Value;

use crate::{
    admin::admin_call,
    backend_tests,
    helpers::{TestApp, TestUser, assert_error, status_and_json},
};
use latchkey::db::entities::{
    audit_event,
    user::{self, PasswordHash, Role},
};

backend_tests!(
    keyset_pages_walk_every_user_once_in_order_and_stay_put_after_deletes,
    keyset_pages_walk_the_audit_trail_newest_first,
    malformed_cursors_and_page_with_after_are_422,
    numbered_user_pages_count_every_user_and_walks_by_after_count_up_to_ten_thousand,
);

async fn list(app: &TestApp, token: &str, path: &str) -> Value {
    let response = admin_call(app, Method::GET, path, token, None).await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// Every page from the first, following `next`; each page's `page` number is checked.
async fn walk(app: &TestApp, token: &str, base: &str, field: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut path = base.to_owned();
    loop {
        let body = list(app, token, &path).await;
        assert_eq!(body["page"], pages.len() + 1, "{path}: {body}");
        pages.push(ids(&body, field));
        match body["next"].as_str() {
            Some(next) => path = format!("{base}&after={next}"),
            None => return pages,
        }
        assert!(pages.len() < 100, "the walk does not end");
    }
}

fn ids(body: &Value, field: &str) -> Vec<String> {
    body[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn keyset_pages_walk_every_user_once_in_order_and_stay_put_after_deletes(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    let mut emails = Vec::new();
    for _ in 0..9 {
        let user = TestUser::generate();
        app.register(&user.name, &user.email, &user.password).await;
        emails.push(user.email);
    }
    // Five users created in the same instant: the id orders them, and a page boundary falls
    // among them.
    let same = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    user::Entity::update_many()
        .col_expr(user::Column::CreatedAt, Expr::value(same))
        .filter(user::Column::Email.is_in(emails[2..7].to_vec()))
        .exec(app.state.db.connection())
        .await
        .unwrap();

    let all = ids(
        &list(&app, &token, "/api/v1/admin/users?per_page=100").await,
        "users",
    );
    assert_eq!(all.len(), 10);
    let pages = walk(&app, &token, "/api/v1/admin/users?per_page=3", "users").await;
    assert_eq!(pages.len(), 4, "10 users in pages of 3");
    assert_eq!(
        pages.concat(),
        all,
        "each user once, in the listing's order"
    );
    for (n, page) in pages.iter().enumerate() {
        let numbered = list(
            &app,
            &token,
            &format!("/api/v1/admin/users?per_page=3&page={}", n + 1),
        )
        .await;
        assert_eq!(&ids(&numbered, "users"), page, "page {}", n + 1);
    }
    let users_only = walk(
        &app,
        &token,
        "/api/v1/admin/users?per_page=4&role=user",
        "users",
    )
    .await;
    let admin_id = admin.user_id().to_string();
    let not_admin: Vec<String> = all.iter().filter(|id| **id != admin_id).cloned().collect();
    assert_eq!(
        users_only.concat(),
        not_admin,
        "the filter holds on every page"
    );

    // A user of the first page deleted: the second page by cursor is still the same users,
    // while the numbered second page shifts by one.
    let first = list(&app, &token, "/api/v1/admin/users?per_page=3").await;
    let next = first["next"].as_str().unwrap().to_owned();
    let doomed = &pages[0][1];
    let path = format!("/api/v1/admin/users/{doomed}");
    let response = admin_call(&app, Method::DELETE, &path, &token, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let second = list(
        &app,
        &token,
        &format!("/api/v1/admin/users?per_page=3&after={next}"),
    )
    .await;
    assert_eq!(ids(&second, "users"), pages[1]);
    assert_eq!(second["total"], 9);
    let numbered = list(&app, &token, "/api/v1/admin/users?per_page=3&page=2").await;
    assert_eq!(
        ids(&numbered, "users")[0],
        pages[1][1],
        "numbered pages shift by one"
    );
}

async fn keyset_pages_walk_the_audit_trail_newest_first(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    for _ in 0..4 {
        let user = app.signed_in_user().await;
        app.login(&user.email, "wrong password").await;
    }
    // Several events at one instant, so the id breaks the tie across a page boundary.
    let same = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let events = audit_event::Entity::find()
        .all(app.state.db.connection())
        .await
        .unwrap();
    let tied: Vec<_> = events.iter().take(6).map(|e| e.id).collect();
    audit_event::Entity::update_many()
        .col_expr(audit_event::Column::OccurredAt, Expr::value(same))
        .filter(audit_event::Column::Id.is_in(tied))
        .exec(app.state.db.connection())
        .await
        .unwrap();

    let all = ids(
        &list(&app, &token, "/api/v1/admin/audit?per_page=100").await,
        "events",
    );
    assert_eq!(all.len(), events.len());
    assert!(
        all.len() >= 13,
        "registrations, logins and failures: {}",
        all.len()
    );
    let pages = walk(&app, &token, "/api/v1/admin/audit?per_page=4", "events").await;
    assert_eq!(pages.len(), all.len().div_ceil(4));
    assert_eq!(pages.concat(), all, "each event once, newest first");

    let failures = walk(
        &app,
        &token,
        "/api/v1/admin/audit?per_page=2&event_type=login_failed",
        "events",
    )
    .await;
    assert_eq!(failures.concat().len(), 4, "the filter holds on every page");
}

async fn malformed_cursors_and_page_with_after_are_422(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    app.signed_in_user().await;
    let first = list(&app, &token, "/api/v1/admin/users?per_page=1").await;
    let next = first["next"].as_str().expect("a next page").to_owned();
    let long = "A".repeat(5000);
    for listing in ["users", "audit"] {
        for query in [
            format!("page=2&after={next}"),
            "after=".to_owned(),
            "after=not-a-cursor".to_owned(),
            "after=%00".to_owned(),
            // Cut inside the id.
            format!("after={}", &next[..next.len() - 6]),
            format!("after={long}"),
        ] {
            let path = format!("/api/v1/admin/{listing}?{query}");
            let response = admin_call(&app, Method::GET, &path, &token, None).await;
            let body = assert_error(
                response,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            )
            .await;
            assert_eq!(
                body["error"]["details"][0]["field"], "after",
                "{path}: {body}"
            );
        }
    }
}

/// `n` users stored directly (registering them over HTTP would take minutes of argon2).
async fn stored_users(app: &TestApp, n: usize) {
    use sea_orm::ActiveValue::Set;
    let at = Utc::now() - chrono::Duration::days(1);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let rows = chunk.iter().map(|i| user::ActiveModel {
            id: Set(uuid::Uuid::new_v4()),
            name: Set(format!("Stored {i}")),
            email: Set(format!("stored-{i}@example.com")),
            password_hash: Set(PasswordHash::new("not a usable hash".into())),
            role: Set(Role::User),
            disabled: Set(false),
            email_verified_at: Set(None),
            mfa_enabled_at: Set(None),
            created_at: Set(at),
            updated_at: Set(at),
        });
        user::Entity::insert_many(rows)
            .exec(app.state.db.connection())
            .await
            .unwrap();
    }
}

async fn numbered_user_pages_count_every_user_and_walks_by_after_count_up_to_ten_thousand(
    app: TestApp,
) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    stored_users(&app, 10_050).await;
    let first = list(&app, &token, "/api/v1/admin/users?per_page=5").await;
    assert_eq!(first["total"], 10_051, "a page list needs the exact count");
    assert_eq!(first["total_capped"], false);
    let next = first["next"].as_str().unwrap();
    let path = format!("/api/v1/admin/users?per_page=5&after={next}");
    let second = list(&app, &token, &path).await;
    assert_eq!(second["total"], 10_000);
    assert_eq!(second["total_capped"], true);
    assert_eq!(second["page"], 2);
    assert_eq!(second["users"].as_array().unwrap().len(), 5);
    // A filter matching fewer than the cap is counted exactly on either kind of page.
    let path = format!("/api/v1/admin/users?per_page=5&after={next}&email=stored-100");
    let filtered = list(&app, &token, &path).await;
    // stored-100, stored-1000 to -1009 and stored-10000 to -10049.
    assert_eq!(filtered["total"], 61);
    assert_eq!(filtered["total_capped"], false);
}

mod on_postgres_the_email_search_uses_its_trigram_index {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

    use crate::helpers::{Backend, TestApp};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        let app = TestApp::spawn(Backend::PostgresRedis).await;
        super::stored_users(&app, 2_000).await;
        let db = app.state.db.connection();
        db.execute_unprepared("ANALYZE users").await.unwrap();
        // The listing's filter as the repository writes it; on a table this small the planner
        // may prefer a scan, so scans are priced out for this one transaction.
        let txn = db.begin().await.unwrap();
        txn.execute_unprepared("SET LOCAL enable_seqscan = off")
            .await
            .unwrap();
        let plan = Statement::from_string(
            DbBackend::Postgres,
            "EXPLAIN SELECT id FROM users WHERE email LIKE '%stored-1234@%' ESCAPE '\\'",
        );
        let rows = txn.query_all_raw(plan).await.unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|row| row.try_get_by_index::<String>(0).unwrap())
            .collect();
        txn.rollback().await.unwrap();
        assert!(
            plan.iter()
                .any(|line| line.contains("idx_users_email_trgm")),
            "{plan:#?}"
        );
    }
}
