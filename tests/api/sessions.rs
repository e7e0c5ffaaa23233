//! Sessions and revocation (API.md sections 5 and 6): devices, logout-all, password change,
//! account deletion, race-safe rotation with a grace window, and reuse detection.

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    backend_tests,
    helpers::{
        Backend, TestApp, TestUser, Tokens, assert_error, assert_session_revoked, captured_logs,
        status_and_json,
    },
};

// Revocation also on the TLS Redis and the Redis Cluster the tests start (API.md 11).
backend_tests!(scale_out
    fifty_concurrent_refreshes_with_one_token_get_one_identical_pair,
    logout_all_revokes_every_session_of_the_user_and_no_other,
    deleting_one_session_from_another_device_revokes_exactly_that_one,
);

backend_tests!(
    the_grace_window_covers_only_the_last_rotation,
    a_logged_out_session_has_no_grace,
    password_change_keeps_the_current_session_and_revokes_the_others,
    deleting_the_account_revokes_everything,
    session_list_shows_user_agent_ip_and_the_current_session,
);

backend_tests!(with(|s| s.accounts.refresh_grace = Duration::from_secs(1)) => reuse_after_the_grace_window_revokes_the_session);

backend_tests!(with(|s| {
    s.tokens.access_ttl = Duration::from_secs(2);
    s.tokens.refresh_ttl = Duration::from_secs(3);
}) => the_session_list_drops_expired_sessions);

async fn login_as(app: &TestApp, user: &TestUser, agent: &str) -> Tokens {
    let response = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("User-Agent", agent)
        .json(&json!({"email": user.email, "password": user.password}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Tokens::from_json(&body)
}

async fn sessions_of(app: &TestApp, access: &str) -> Vec<Value> {
    let response = app
        .client
        .get(app.url("/api/v1/auth/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["sessions"].as_array().unwrap().clone()
}

async fn post_with(
    app: &TestApp,
    path: &str,
    access: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).bearer_auth(access);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn fifty_concurrent_refreshes_with_one_token_get_one_identical_pair(app: TestApp) {
    let user = app.signed_in_user().await;
    let old = user.tokens().clone();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = app.client.clone();
        let url = app.url("/api/v1/auth/refresh");
        let token = old.refresh.clone();
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"refresh_token": token}))
                .send()
                .await
                .unwrap();
            status_and_json(response).await
        }));
    }
    let mut pairs = HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "every duplicate inside the window gets 200: {body}"
        );
        pairs.insert((
            body["access_token"].as_str().unwrap().to_owned(),
            body["refresh_token"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(pairs.len(), 1, "all 50 answers carry the identical pair");
    let (access, refresh) = pairs.into_iter().next().unwrap();
    // The session keeps working: the new pair is live, the old access token is not.
    assert_eq!(app.me(&access).await.status(), StatusCode::OK);
    assert_error(
        app.me(&old.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let sessions = sessions_of(&app, &access).await;
    assert_eq!(sessions.len(), 1, "one session, no extra pair stored");
    let (status, body) = status_and_json(app.refresh(&refresh).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        app.me(body["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

async fn reuse_after_the_grace_window_revokes_the_session(app: TestApp) {
    let user = app.signed_in_user().await;
    let first = user.tokens().clone();
    let (status, body) = status_and_json(app.refresh(&first.refresh).await).await;
    assert_eq!(status, StatusCode::OK);
    let second = Tokens::from_json(&body);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

    assert_error(
        app.refresh(&first.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    // The session's current tokens fail too.
    assert_session_revoked(&app, &second).await;
    // A warning event names the user and the session.
    let logs = captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("refresh token reuse detected") && l.contains(&second.session_id))
        .expect("a reuse warning for this session");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&user.id.clone().unwrap()), "{line}");
}

async fn the_grace_window_covers_only_the_last_rotation(app: TestApp) {
    let user = app.signed_in_user().await;
    let a = user.tokens().clone();
    let (_, body) = status_and_json(app.refresh(&a.refresh).await).await;
    let b = Tokens::from_json(&body);
    // A again, inside the window, from another client: the same pair B.
    let response = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header("User-Agent", "another tab")
        .header("X-Forwarded-For", "198.51.100.9")
        .json(&json!({"refresh_token": a.refresh}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Tokens::from_json(&body).access, b.access);
    assert_eq!(Tokens::from_json(&body).refresh, b.refresh);
    // B rotates to C; A is now two rotations back: reuse, whole session revoked.
    let (_, body) = status_and_json(app.refresh(&b.refresh).await).await;
    let c = Tokens::from_json(&body);
    assert_error(
        app.refresh(&a.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_error(
        app.me(&c.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn a_logged_out_session_has_no_grace(app: TestApp) {
    let user = app.signed_in_user().await;
    let a = user.tokens().clone();
    let (_, body) = status_and_json(app.refresh(&a.refresh).await).await;
    let b = Tokens::from_json(&body);
    assert_eq!(app.logout(&b.access).await.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.refresh(&a.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_error(
        app.refresh(&b.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn logout_all_revokes_every_session_of_the_user_and_no_other(app: TestApp) {
    let user = app.signed_in_user().await;
    let phone = login_as(&app, &user, "phone").await;
    let laptop = login_as(&app, &user, "laptop").await;
    let other = app.signed_in_user().await;

    let response = post_with(&app, "/api/v1/auth/logout-all", &phone.access, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for tokens in [user.tokens(), &phone, &laptop] {
        assert_session_revoked(&app, tokens).await;
    }
    assert_eq!(
        app.me(&other.tokens().access).await.status(),
        StatusCode::OK
    );
    // The user can log in again.
    let fresh = login_as(&app, &user, "phone").await;
    assert_eq!(app.me(&fresh.access).await.status(), StatusCode::OK);
}

async fn deleting_one_session_from_another_device_revokes_exactly_that_one(app: TestApp) {
    let user = app.signed_in_user().await;
    let phone = login_as(&app, &user, "phone").await;
    let laptop = login_as(&app, &user, "laptop").await;

    let response = app
        .client
        .delete(app.url(&format!("/api/v1/auth/sessions/{}", phone.session_id)))
        .bearer_auth(&laptop.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_session_revoked(&app, &phone).await;
    assert_eq!(app.me(&laptop.access).await.status(), StatusCode::OK);
    assert_eq!(app.me(&user.tokens().access).await.status(), StatusCode::OK);

    // Another user's session, or an unknown id: 404, and nothing is revoked.
    let other = app.signed_in_user().await;
    for id in [
        other.tokens().session_id.clone(),
        uuid::Uuid::new_v4().to_string(),
    ] {
        let response = app
            .client
            .delete(app.url(&format!("/api/v1/auth/sessions/{id}")))
            .bearer_auth(&laptop.access)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(
        app.me(&other.tokens().access).await.status(),
        StatusCode::OK
    );
}

async fn password_change_keeps_the_current_session_and_revokes_the_others(app: TestApp) {
    let user = app.signed_in_user().await;
    let other_device = login_as(&app, &user, "other").await;
    let current = user.tokens();

    // A wrong current password changes nothing.
    let response = post_with(
        &app,
        "/api/v1/users/me/password",
        &current.access,
        Some(json!({"current_password": "not it at all", "new_password": "a brand new password"})),
    )
    .await;
    let body = assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(body["error"]["details"][0]["field"], "current_password");
    assert_eq!(app.me(&other_device.access).await.status(), StatusCode::OK);

    let response = post_with(
        &app,
        "/api/v1/users/me/password",
        &current.access,
        Some(json!({"current_password": user.password, "new_password": "a brand new password"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(&current.access).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&current.refresh).await.status(), StatusCode::OK);
    assert_session_revoked(&app, &other_device).await;
    assert_error(
        app.login(&user.email, &user.password).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        app.login(&user.email, "a brand new password")
            .await
            .status(),
        StatusCode::OK
    );
}

async fn deleting_the_account_revokes_everything(app: TestApp) {
    let user = app.signed_in_user().await;
    let other_device = login_as(&app, &user, "other").await;
    let delete = |password: &str| {
        app.client
            .delete(app.url("/api/v1/users/me"))
            .bearer_auth(&user.tokens().access)
            .json(&json!({"password": password}))
            .send()
    };
    let response = delete("wrong password!").await.unwrap();
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(app.me(&user.tokens().access).await.status(), StatusCode::OK);

    let response = delete(&user.password).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.me(&user.tokens().access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_error(
        app.me(&other_device.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_error(
        app.login(&user.email, &user.password).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    // The email is free again.
    assert_eq!(
        app.register(&user.name, &user.email, &user.password)
            .await
            .status(),
        StatusCode::CREATED
    );
}

async fn session_list_shows_user_agent_ip_and_the_current_session(app: TestApp) {
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    let phone = login_as(&app, &user, "Phone/1.0").await;
    let laptop = login_as(&app, &user, "Laptop/2.0").await;
    let sessions = sessions_of(&app, &laptop.access).await;
    assert_eq!(sessions.len(), 2);
    let find = |sessions: &[Value], id: &str| {
        sessions
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .expect("listed")
    };
    let laptop_view = find(&sessions, &laptop.session_id);
    assert_eq!(laptop_view["current"], true);
    assert_eq!(laptop_view["user_agent"], "Laptop/2.0");
    assert_eq!(laptop_view["ip"], "127.0.0.1");
    let phone_view = find(&sessions, &phone.session_id);
    assert_eq!(phone_view["current"], false);
    assert_eq!(phone_view["user_agent"], "Phone/1.0");
    for session in &sessions {
        for field in ["created_at", "last_used_at", "expires_at"] {
            let value = session[field].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(value).is_ok(),
                "{field}: {value}"
            );
        }
    }
    // From the phone, the phone is current.
    let sessions = sessions_of(&app, &phone.access).await;
    assert_eq!(find(&sessions, &phone.session_id)["current"], true);
    assert_eq!(find(&sessions, &laptop.session_id)["current"], false);
}

async fn the_session_list_drops_expired_sessions(app: TestApp) {
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    let old = login_as(&app, &user, "old").await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let fresh = login_as(&app, &user, "fresh").await;
    let sessions = sessions_of(&app, &fresh.access).await;
    let ids: Vec<&str> = sessions.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [fresh.session_id.as_str()]);
    assert_ne!(old.session_id, fresh.session_id);
}

mod a_logout_on_one_instance_is_rejected_on_the_other_at_once {
    use super::*;

    /// Two instances sharing one Redis and one PostgreSQL: a logout on A is rejected on B on the
    /// very next request (no per-instance revocation cache).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        let a = TestApp::spawn(Backend::PostgresRedis).await;
        let b = a.spawn_sibling().await;
        let user = a.signed_in_user().await;
        let tokens = user.tokens();
        assert_eq!(b.me(&tokens.access).await.status(), StatusCode::OK);
        assert_eq!(
            a.logout(&tokens.access).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_error(
            b.me(&tokens.access).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_error(
            b.refresh(&tokens.refresh).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;

        // And a rotation on B retires the access token on A.
        let other = b.signed_in_user().await;
        let (status, _) = status_and_json(b.refresh(&other.tokens().refresh).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_error(
            a.me(&other.tokens().access).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
}
