//! The holes a security review and fault tests found (issue 22), each closed and held shut.

use std::time::Duration;

use futures_util::StreamExt;
use latchkey::limits::Rate;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    backend_tests,
    helpers::{TestApp, TestUser, Tokens, assert_error, claims_of, status_and_json},
};

backend_tests!(thousands_of_made_up_methods_leave_the_metrics_bounded);

async fn metrics_text(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// Sends `count` requests, each with a method the server has never seen.
async fn made_up_methods(app: &TestApp, round: usize, count: usize) {
    let methods = (0..count).map(|i| format!("M{round}x{i}{}", "X".repeat(300)));
    futures_util::stream::iter(methods)
        .for_each_concurrent(16, |name| async move {
            let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
            let response = app
                .client
                .request(method, app.url("/api/v1/users/me"))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_client_error(), "{}", response.status());
        })
        .await;
}

async fn thousands_of_made_up_methods_leave_the_metrics_bounded(app: TestApp) {
    // Any token is a valid HTTP method. The first round may add the series of `other` once;
    // a second round of as many new methods must add nothing at all. (The first /metrics
    // call adds its own series, so it comes before either count.)
    metrics_text(&app).await;
    made_up_methods(&app, 1, 3000).await;
    let first = metrics_text(&app).await;
    made_up_methods(&app, 2, 3000).await;
    let second = metrics_text(&app).await;
    assert_eq!(
        first.lines().count(),
        second.lines().count(),
        "3,000 more made-up methods grew /metrics"
    );
    assert!(!second.contains("XXXX"), "a made-up method became a label");
    assert!(second.contains(r#"method="other""#), "{second}");
}

backend_tests!(
    an_overlong_login_email_is_an_unknown_address_with_bounded_traces,
    a_rehash_never_undoes_a_password_change_made_meanwhile,
    a_duplicate_refresh_gets_claims_rebuilt_from_its_own_token,
    every_oversized_body_gets_a_readable_413,
);
backend_tests!(scale_out with(|s| s.limits.password_check_per_user = Rate::per_secs(3, 60)) =>
    password_checks_of_a_signed_in_user_are_limited_per_user);
backend_tests!(scale_out with(|s| {
    s.limits.backoff.free_failures = 1;
    s.limits.backoff.base = Duration::from_secs(30);
}) => wrong_current_passwords_count_toward_the_accounts_login_backoff);
backend_tests!(with(|s| {
    s.limits.login_per_ip = Rate::per_secs(2, 60);
    s.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}) => ipv6_clients_are_limited_by_their_64);

async fn an_overlong_login_email_is_an_unknown_address_with_bounded_traces(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let email = format!("{}@example.com", "a".repeat(60_000));
    assert_error(
        app.login(&email, "some password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let url = app.url("/api/v1/admin/audit?event_type=login_failed");
    let response = app
        .client
        .get(url)
        .bearer_auth(&admin.tokens().access)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let recorded = body["events"][0]["detail"]["email"].as_str().unwrap();
    assert_eq!(
        recorded.chars().count(),
        254,
        "the trail keeps a bounded form"
    );
    assert!(email.starts_with(recorded));
    // The limiter's keys are digests, whatever the client sent.
    if let Some(prefix) = app.redis_prefix() {
        let keys = app.redis_keys().await;
        assert!(!keys.is_empty());
        for key in keys {
            assert!(
                key.len() < prefix.len() + 100,
                "{} bytes: {key:.100}",
                key.len()
            );
        }
    }
}

/// `times` password changes with a wrong current password, each refused as a field error.
async fn wrong_current_passwords(app: &TestApp, user: &TestUser, times: usize) {
    let wrong =
        json!({"current_password": "not the password", "new_password": "brand new password"});
    for _ in 0..times {
        let response = app
            .authed_post(user, "/api/v1/users/me/password", &wrong)
            .await;
        assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
}

async fn password_checks_of_a_signed_in_user_are_limited_per_user(app: TestApp) {
    let user = app.signed_in_user().await;
    wrong_current_passwords(&app, &user, 3).await;
    let wrong =
        json!({"current_password": "not the password", "new_password": "brand new password"});
    let response = app
        .authed_post(&user, "/api/v1/users/me/password", &wrong)
        .await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Deleting the account checks the password too, under the same limit.
    let response = app
        .client
        .delete(app.url("/api/v1/users/me"))
        .bearer_auth(&user.tokens().access)
        .json(&json!({"password": user.password}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

async fn wrong_current_passwords_count_toward_the_accounts_login_backoff(app: TestApp) {
    let user = app.signed_in_user().await;
    wrong_current_passwords(&app, &user, 2).await;
    // One free failure, then 30 s of backoff: for the next check, and for the login form.
    let right = json!({"current_password": user.password, "new_password": "brand new password"});
    let response = app
        .authed_post(&user, "/api/v1/users/me/password", &right)
        .await;
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_error(
        app.login(&user.email, &user.password).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

async fn a_rehash_never_undoes_a_password_change_made_meanwhile(app: TestApp) {
    let user = app.signed_in_user().await;
    // An instance with much costlier parameters: its login verifies the stored hash quickly,
    // then rehashes slowly; the password changes on the first instance in between.
    let costly = app
        .spawn_sibling_with(|s| {
            s.passwords.argon2.memory_kib = 65_536;
            s.passwords.argon2.iterations = 24;
        })
        .await;
    let login = {
        let (email, password) = (user.email.clone(), user.password.clone());
        let costly = &costly;
        async move { costly.login(&email, &password).await }
    };
    let change = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let body = json!({"current_password": user.password, "new_password": "brand new password"});
        app.authed_post(&user, "/api/v1/users/me/password", &body)
            .await
    };
    let (login, change) = tokio::join!(login, change);
    assert_eq!(change.status(), StatusCode::NO_CONTENT);
    // The login proved the old password, which is no longer the account's.
    assert_error(login, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(
        app.login(&user.email, "brand new password").await.status(),
        StatusCode::OK,
        "the change stands"
    );
    assert_error(
        app.login(&user.email, &user.password).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
}

async fn a_duplicate_refresh_gets_claims_rebuilt_from_its_own_token(app: TestApp) {
    let user = app.signed_in_user().await;
    let other = app.signed_in_user().await;
    let first = app.refresh(&user.tokens().refresh).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = Tokens::from_json(&first.json().await.unwrap());
    if let Some(prefix) = app.redis_prefix() {
        // Whoever can write to Redis plants a grace record naming another user, as admin.
        let key = format!(
            "{prefix}{{{}}}:g:{}",
            user.user_id(),
            user.tokens().session_id
        );
        let forged = json!({
            "access": {"sub": other.user_id(), "role": "admin"},
            "refresh": {"sub": other.user_id()},
        });
        app.redis_hset(&key, "payload", &forged.to_string()).await;
        let response = app.refresh(&user.tokens().refresh).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
        return;
    }
    // The duplicate gets the very pair its twin got, for its own user and session.
    let again = app.refresh(&user.tokens().refresh).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again = Tokens::from_json(&again.json().await.unwrap());
    assert_eq!(again.access, first.access);
    assert_eq!(again.refresh, first.refresh);
    let claims = claims_of(&again.access);
    assert_eq!(claims["sub"], user.user_id().to_string());
    assert_eq!(claims["sid"], user.tokens().session_id);
    assert_eq!(claims["role"], "user");
}

async fn every_oversized_body_gets_a_readable_413(app: TestApp) {
    for i in 0..30 {
        // From just over the limit to bodies the client is still sending when the 413 is
        // ready: the server reads and drops up to 1 MiB past the limit first.
        let big = vec![b' '; [66_000, 300_000, 900_000][i % 3]];
        let request = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("content-type", "application/json");
        // Half with a declared length, half streamed without one.
        let request = if i % 2 == 0 {
            request.body(big.clone())
        } else {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
            request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        };
        let response = request
            .send()
            .await
            .expect("an answer, not a reset connection");
        assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
}

async fn ipv6_clients_are_limited_by_their_64(app: TestApp) {
    let login_from = |xff: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/auth/login"))
                .header("x-forwarded-for", xff)
                .json(&json!({"email": "nobody@example.com", "password": "whatever pw"}))
                .send()
                .await
                .unwrap()
        }
    };
    for xff in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
        assert_eq!(login_from(xff).await.status(), StatusCode::UNAUTHORIZED);
    }
    // A third address of the same /64 is the same client.
    let response = login_from("2001:db8:1:2::77").await;
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another /64 is another client.
    assert_eq!(
        login_from("2001:db8:1:3::1").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Every route of the API, as (method, path, body), for a signed-in admin acting on `user`.
fn every_route(user: &TestUser) -> Vec<(reqwest::Method, String, Option<serde_json::Value>)> {
    use reqwest::Method;
    let id = user.user_id();
    let fresh = TestUser::generate();
    vec![
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            Some(json!({
                "name": fresh.name, "email": fresh.email,
                "password": fresh.password, "password_confirm": fresh.password,
            })),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({"email": user.email, "password": user.password})),
        ),
        (
            Method::POST,
            "/api/v1/auth/refresh".into(),
            Some(json!({"refresh_token": user.tokens().refresh})),
        ),
        (Method::GET, "/api/v1/users/me".into(), None),
        (
            Method::PATCH,
            "/api/v1/users/me".into(),
            Some(json!({"name": "New Name"})),
        ),
        (
            Method::POST,
            "/api/v1/users/me/password".into(),
            Some(json!({
                "current_password": "admin's own", "new_password": "brand new password",
            })),
        ),
        (
            Method::DELETE,
            "/api/v1/users/me".into(),
            Some(json!({"password": "admin's own"})),
        ),
        (Method::GET, "/api/v1/auth/sessions".into(), None),
        (
            Method::DELETE,
            format!("/api/v1/auth/sessions/{}", user.tokens().session_id),
            None,
        ),
        (Method::POST, "/api/v1/auth/logout".into(), None),
        (Method::POST, "/api/v1/auth/logout-all".into(), None),
        (Method::GET, "/api/v1/admin/users".into(), None),
        (Method::GET, format!("/api/v1/admin/users/{id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/admin/users/{id}"),
            Some(json!({"disabled": false})),
        ),
        (Method::DELETE, format!("/api/v1/admin/users/{id}"), None),
        (
            Method::POST,
            format!("/api/v1/admin/users/{id}/revoke-sessions"),
            None,
        ),
        (Method::GET, "/api/v1/admin/audit".into(), None),
        (Method::GET, "/health/ready".into(), None),
    ]
}

/// Sends every route at once; each must answer 503 with `Retry-After`.
async fn every_route_is_unavailable(app: &TestApp, admin: &TestUser, user: &TestUser, cut: &str) {
    let calls = every_route(user)
        .into_iter()
        .map(|(method, path, body)| async move {
            let mut request = app
                .client
                .request(method.clone(), app.url(&path))
                .bearer_auth(&admin.tokens().access);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            let (status, body) = status_and_json(response).await;
            (format!("{method} {path}"), status, retry_after, body)
        });
    for (route, status, retry_after, body) in futures_util::future::join_all(calls).await {
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{route} with {cut} cut: {body}"
        );
        assert!(retry_after, "{route} with {cut} cut: no Retry-After");
        assert_eq!(
            body["error"]["code"], "service_unavailable",
            "{route}: {body}"
        );
    }
}

/// Waits until the service answers again (the pools and the Redis connection recover alone).
async fn recovers(app: &TestApp, admin: &TestUser) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = app
            .client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap();
        if ready.status() == StatusCode::OK
            && app.me(&admin.tokens().access).await.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

mod dependencies_cut_mid_run_get_503_on_every_route_then_recover {
    use super::*;
    use crate::{
        helpers::{Backend, postgres_admin_url, redis_url},
        proxy::{Proxy, address_of},
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        let pg = Proxy::start(address_of(&postgres_admin_url(), 5432)).await;
        let redis = Proxy::start(address_of(&redis_url(), 6379)).await;
        let (pg_port, redis_port) = (pg.port, redis.port);
        let app = TestApp::spawn_with(Backend::PostgresRedis, move |s| {
            let to = |url: &str, port| {
                let mut parsed = reqwest::Url::parse(url).unwrap();
                parsed.set_port(Some(port)).unwrap();
                parsed.set_host(Some("127.0.0.1")).unwrap();
                parsed.to_string()
            };
            s.database.url = to(s.database.url.expose(), pg_port).into();
            let redis_url = s.redis.url.as_ref().unwrap().expose().to_owned();
            s.redis.url = Some(to(&redis_url, redis_port).into());
        })
        .await;
        let admin = app.signed_in_admin().await;
        let user = app.signed_in_user().await;

        pg.cut();
        every_route_is_unavailable(&app, &admin, &user, "PostgreSQL").await;
        pg.restore().await;
        recovers(&app, &admin).await;

        redis.cut();
        every_route_is_unavailable(&app, &admin, &user, "Redis").await;
        redis.restore().await;
        recovers(&app, &admin).await;
    }
}

// No purge task of the instance's own, racing the one the test calls.
backend_tests!(with(|s| s.audit.retention = None) => audit_events_past_their_retention_are_purged);

backend_tests!(
    an_instance_purges_old_audit_events_when_it_starts,
    the_audit_listing_counts_at_most_ten_thousand,
);

/// Audit rows written straight into the table, `age` old.
async fn old_events(app: &TestApp, count: usize, age: chrono::Duration) -> Vec<uuid::Uuid> {
    use latchkey::db::entities::audit_event;
    use sea_orm::{ActiveValue::Set, EntityTrait};
    let at = chrono::Utc::now() - age;
    let ids: Vec<uuid::Uuid> = (0..count).map(|_| uuid::Uuid::new_v4()).collect();
    for chunk in ids.chunks(500) {
        let rows = chunk.iter().map(|id| audit_event::ActiveModel {
            id: Set(*id),
            occurred_at: Set(at),
            event_type: Set("login_failed".into()),
            user_id: Set(None),
            session_id: Set(None),
            ip: Set(Some("203.0.113.9".into())),
            user_agent: Set(None),
            detail: Set(None),
        });
        audit_event::Entity::insert_many(rows)
            .exec(app.state.db.connection())
            .await
            .unwrap();
    }
    ids
}

async fn event_exists(app: &TestApp, id: uuid::Uuid) -> bool {
    use latchkey::db::entities::audit_event;
    use sea_orm::EntityTrait;
    audit_event::Entity::find_by_id(id)
        .one(app.state.db.connection())
        .await
        .unwrap()
        .is_some()
}

async fn audit_events_past_their_retention_are_purged(app: TestApp) {
    let old = old_events(&app, 3, chrono::Duration::days(91)).await;
    let recent = old_events(&app, 2, chrono::Duration::days(89)).await;
    let retention = Duration::from_secs(90 * 24 * 3600);
    let deleted = app.state.accounts.purge_audit(retention).await.unwrap();
    assert_eq!(deleted, 3);
    for id in old {
        assert!(!event_exists(&app, id).await);
    }
    for id in recent {
        assert!(event_exists(&app, id).await);
    }
}

async fn an_instance_purges_old_audit_events_when_it_starts(app: TestApp) {
    assert_eq!(
        app.state.settings.audit.retention,
        Some(Duration::from_secs(90 * 24 * 3600)),
        "AUDIT_RETENTION_DAYS defaults to 90"
    );
    let old = old_events(&app, 1, chrono::Duration::days(120)).await[0];
    let _sibling = app.spawn_sibling().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while event_exists(&app, old).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the old event is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn the_audit_listing_counts_at_most_ten_thousand(app: TestApp) {
    let admin = app.signed_in_admin().await;
    old_events(&app, 10_050, chrono::Duration::days(1)).await;
    let url = app.url("/api/v1/admin/audit?event_type=login_failed&per_page=5");
    let response = app
        .client
        .get(url)
        .bearer_auth(&admin.tokens().access)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 10_000);
    assert_eq!(body["total_capped"], true);
    assert_eq!(body["events"].as_array().unwrap().len(), 5);
}
