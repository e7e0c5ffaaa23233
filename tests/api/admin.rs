//! Roles and administration (API.md section 5, admin): the role guard, the admin API, disabling
//! users, and the last-admin rule.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    backend_tests,
    helpers::{
        TestApp, TestUser, Tokens, assert_error, assert_session_revoked, claims_of, status_and_json,
    },
};

backend_tests!(
    a_user_gets_403_on_every_admin_endpoint_and_an_admin_gets_through,
    a_role_change_revokes_the_users_sessions_and_applies_at_the_next_login,
    disabling_a_user_kills_its_live_tokens_and_refuses_its_login,
    the_last_active_admin_cannot_be_demoted_disabled_or_deleted,
    pagination_bounds_are_422_and_pages_filters_and_totals_are_right,
    admin_delete_and_revoke_sessions_end_every_session,
    admin_input_errors_are_clear,
);

pub async fn admin_call(
    app: &TestApp,
    method: Method,
    path: &str,
    access: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(access);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn a_user_gets_403_on_every_admin_endpoint_and_an_admin_gets_through(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let user = app.signed_in_user().await;
    let target = app.signed_in_user().await;
    let id = target.user_id();
    let endpoints = [
        (Method::GET, "/api/v1/admin/users".to_owned(), None),
        (Method::GET, format!("/api/v1/admin/users/{id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/admin/users/{id}"),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::POST,
            format!("/api/v1/admin/users/{id}/revoke-sessions"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/admin/users/{id}"), None),
    ];
    for (method, path, body) in &endpoints {
        let response = admin_call(
            &app,
            method.clone(),
            path,
            &user.tokens().access,
            body.clone(),
        )
        .await;
        assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
        // Without credentials: 401, not 403.
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
    }
    // Nothing happened to the target.
    assert_eq!(
        app.me(&target.tokens().access).await.status(),
        StatusCode::OK
    );

    let expected = [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::NO_CONTENT,
        StatusCode::NO_CONTENT,
    ];
    for ((method, path, body), status) in endpoints.iter().zip(expected) {
        let response = admin_call(
            &app,
            method.clone(),
            path,
            &admin.tokens().access,
            body.clone(),
        )
        .await;
        assert_eq!(response.status(), status, "{method} {path}");
    }
}

/// A role change ends every session of the user: services that trust the token's `role`
/// claim must never see a role that is no longer true. The new role comes with the next login.
async fn a_role_change_revokes_the_users_sessions_and_applies_at_the_next_login(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let user = app.signed_in_user().await;
    let list = |access: String| {
        let app = &app;
        async move { admin_call(app, Method::GET, "/api/v1/admin/users", &access, None).await }
    };
    assert_eq!(
        list(user.tokens().access.clone()).await.status(),
        StatusCode::FORBIDDEN
    );
    let path = format!("/api/v1/admin/users/{}", user.user_id());
    let change = |role: &'static str, access: String| {
        let (app, path) = (&app, path.clone());
        async move {
            let body = Some(json!({"role": role}));
            status_and_json(admin_call(app, Method::PATCH, &path, &access, body).await).await
        }
    };

    let (status, body) = change("admin", admin.tokens().access.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["role"], "admin");
    assert_session_revoked(&app, user.tokens()).await;
    let (status, login) = status_and_json(app.login(&user.email, &user.password).await).await;
    assert_eq!(status, StatusCode::OK);
    let promoted = Tokens::from_json(&login);
    assert_eq!(claims_of(&promoted.access)["role"], "admin");
    assert_eq!(list(promoted.access.clone()).await.status(), StatusCode::OK);

    // Demoted: the admin token that was just issued dies at once.
    let (status, _) = change("user", admin.tokens().access.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_session_revoked(&app, &promoted).await;
    assert_eq!(
        list(promoted.access.clone()).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn disabling_a_user_kills_its_live_tokens_and_refuses_its_login(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let user = app.signed_in_user().await;
    let path = format!("/api/v1/admin/users/{}", user.user_id());
    let (status, body) = status_and_json(
        admin_call(
            &app,
            Method::PATCH,
            &path,
            &admin.tokens().access,
            Some(json!({"disabled": true})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["disabled"], true);

    assert_session_revoked(&app, user.tokens()).await;
    assert_error(
        app.login(&user.email, &user.password).await,
        StatusCode::FORBIDDEN,
        "account_disabled",
    )
    .await;
    // A wrong password still says nothing about the account's state.
    assert_error(
        app.login(&user.email, "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    // Enabled again: login works, the old sessions stay revoked.
    let response = admin_call(
        &app,
        Method::PATCH,
        &path,
        &admin.tokens().access,
        Some(json!({"disabled": false})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::OK
    );
    assert_error(
        app.me(&user.tokens().access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn the_last_active_admin_cannot_be_demoted_disabled_or_deleted(app: TestApp) {
    let first = app.signed_in_user().await;
    app.make_admin(&first).await;
    let own = format!("/api/v1/admin/users/{}", first.user_id());
    let token = first.tokens().access.clone();
    for body in [
        json!({"role": "user"}),
        json!({"disabled": true}),
        json!({"role": "user", "disabled": true}),
    ] {
        let response = admin_call(&app, Method::PATCH, &own, &token, Some(body)).await;
        assert_error(response, StatusCode::CONFLICT, "last_admin").await;
    }
    assert_error(
        admin_call(&app, Method::DELETE, &own, &token, None).await,
        StatusCode::CONFLICT,
        "last_admin",
    )
    .await;
    // Not through the account's own deletion either.
    let response = app
        .client
        .delete(app.url("/api/v1/users/me"))
        .bearer_auth(&token)
        .json(&json!({"password": first.password}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::CONFLICT, "last_admin").await;
    assert_eq!(app.me(&token).await.status(), StatusCode::OK);
    // Keeping the role is fine.
    let response = admin_call(
        &app,
        Method::PATCH,
        &own,
        &token,
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // A disabled admin does not count as active.
    let second = app.signed_in_user().await;
    app.make_admin(&second).await;
    let second_path = format!("/api/v1/admin/users/{}", second.user_id());
    let response = admin_call(
        &app,
        Method::PATCH,
        &second_path,
        &token,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_error(
        admin_call(
            &app,
            Method::PATCH,
            &own,
            &token,
            Some(json!({"role": "user"})),
        )
        .await,
        StatusCode::CONFLICT,
        "last_admin",
    )
    .await;

    // With another active admin, the first may step down.
    let third = app.signed_in_user().await;
    app.make_admin(&third).await;
    let response = admin_call(
        &app,
        Method::PATCH,
        &own,
        &token,
        Some(json!({"role": "user"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let third_path = format!("/api/v1/admin/users/{}", third.user_id());
    assert_error(
        admin_call(
            &app,
            Method::DELETE,
            &third_path,
            &third.tokens().access,
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "last_admin",
    )
    .await;
}

async fn pagination_bounds_are_422_and_pages_filters_and_totals_are_right(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    for query in [
        "page=0",
        "page=-1",
        "per_page=0",
        "per_page=-5",
        "per_page=101",
        "per_page=1000000",
        "per_page=99999999999999999999999",
        "page=abc",
        "per_page=1.5",
        "page=9223372036854775807",
        "page=10000001",
        "role=root",
        "email=%00",
    ] {
        let response = admin_call(
            &app,
            Method::GET,
            &format!("/api/v1/admin/users?{query}"),
            &token,
            None,
        )
        .await;
        let body = assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(body["error"]["details"].is_array(), "{query}: {body}");
    }
    // Five users in all: the admin and four more, two of them with a shared marker.
    let mut emails = vec![admin.email.clone()];
    for marker in ["", "", "zebra", "zebra"] {
        let mut user = TestUser::generate();
        user.email = format!("{marker}{}", user.email);
        app.register(&user.name, &user.email, &user.password).await;
        emails.push(user.email);
    }
    let page = |query: &str| {
        let app = &app;
        let token = token.clone();
        let query = query.to_owned();
        async move {
            let response = admin_call(
                app,
                Method::GET,
                &format!("/api/v1/admin/users?{query}"),
                &token,
                None,
            )
            .await;
            let (status, body) = status_and_json(response).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            body
        }
    };
    let first = page("per_page=2").await;
    assert_eq!(first["total"], 5);
    assert_eq!(first["page"], 1);
    assert_eq!(first["per_page"], 2);
    assert_eq!(first["users"].as_array().unwrap().len(), 2);
    assert_eq!(
        first["users"][0]["email"],
        emails[0].as_str(),
        "oldest first"
    );
    assert!(first["users"][0].get("disabled").is_some());
    let third = page("per_page=2&page=3").await;
    assert_eq!(third["users"].as_array().unwrap().len(), 1);
    let beyond = page("per_page=2&page=4").await;
    assert!(beyond["users"].as_array().unwrap().is_empty());
    assert_eq!(beyond["total"], 5);
    let all = page("per_page=100").await;
    let listed: Vec<&str> = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        emails.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let zebras = page("email=ZEBRA").await;
    assert_eq!(zebras["total"], 2);
    // `%` is matched literally, not as a wildcard.
    assert_eq!(page("email=%25").await["total"], 0);
    let admins = page("role=admin").await;
    assert_eq!(admins["total"], 1);
    assert_eq!(admins["users"][0]["email"], admin.email.as_str());
}

async fn admin_delete_and_revoke_sessions_end_every_session(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();

    let user = app.signed_in_user().await;
    let response = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/admin/users/{}/revoke-sessions", user.user_id()),
        &token,
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.me(&user.tokens().access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::OK,
        "the account stays usable"
    );

    let doomed = app.signed_in_user().await;
    let path = format!("/api/v1/admin/users/{}", doomed.user_id());
    assert_eq!(
        admin_call(&app, Method::DELETE, &path, &token, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_error(
        app.me(&doomed.tokens().access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_error(
        admin_call(&app, Method::GET, &path, &token, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        admin_call(&app, Method::DELETE, &path, &token, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        admin_call(
            &app,
            Method::POST,
            &format!("{path}/revoke-sessions"),
            &token,
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

async fn admin_input_errors_are_clear(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    let path = format!("/api/v1/admin/users/{}", admin.user_id());
    let cases = [
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"role": "root"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"role": 1}),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            json!({"disabled": "yes"}),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
    ];
    for (body, status, code) in cases {
        assert_error(
            admin_call(&app, Method::PATCH, &path, &token, Some(body)).await,
            status,
            code,
        )
        .await;
    }
    assert_error(
        admin_call(
            &app,
            Method::GET,
            "/api/v1/admin/users/not-a-uuid",
            &token,
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "malformed_request",
    )
    .await;
}
