//! The whole token lifecycle over HTTP: register, login, me (bearer and cookie), refresh, logout.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    backend_tests,
    helpers::{
        TestApp, TestUser, Tokens, assert_error, assert_session_revoked, claims_of, set_cookies,
        status_and_json,
    },
};

// The lifecycle also on the TLS Redis and the Redis Cluster the tests start (API.md 11).
backend_tests!(scale_out full_lifecycle_with_bearer_tokens);

backend_tests!(
    me_works_with_the_access_cookie,
    register_normalises_email_and_rejects_duplicates,
    register_reports_every_broken_rule,
    login_failures_are_indistinguishable,
    patch_me_changes_the_name,
    access_token_claims_follow_the_contract,
    refresh_accepts_the_cookie_when_the_body_is_empty,
);

pub async fn full_lifecycle_with_bearer_tokens(app: TestApp) {
    let user = TestUser::generate();

    // Register
    let (status, body) =
        status_and_json(app.register(&user.name, &user.email, &user.password).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["user"]["email"], user.email);
    assert_eq!(body["user"]["name"], user.name);
    assert_eq!(body["user"]["role"], "user");
    assert!(body["user"].get("password_hash").is_none());
    let registered = body["user"].clone();

    // Login
    let (status, body) = status_and_json(app.login(&user.email, &user.password).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    // Whole seconds until `exp`, counted as the response is built: the full lifetime, or one
    // second less when a second boundary passes between signing and answering.
    let lifetime = |field: &str, full: i64| {
        let left = body[field].as_i64().expect("a number of seconds");
        assert!(
            (full - 1..=full).contains(&left),
            "{field}: {left} of {full}"
        );
    };
    lifetime("expires_in", 900);
    lifetime("refresh_expires_in", 7 * 24 * 3600);
    assert_eq!(body["user"]["email"], user.email);
    let first = Tokens::from_json(&body);

    // Me: the same user, in the same form as the registration's answer (the two are
    // written by different serializers: src/api/json_body.rs)
    let response = app.me(&first.access).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let (status, me) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({ "user": registered }));

    // Refresh: a new pair for the same session
    let (status, body) = status_and_json(app.refresh(&first.refresh).await).await;
    assert_eq!(status, StatusCode::OK);
    let second = Tokens::from_json(&body);
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.access, first.access);
    assert_ne!(second.refresh, first.refresh);
    assert_eq!(app.me(&second.access).await.status(), StatusCode::OK);
    // Rotation: the previous access token stopped working.
    assert_error(
        app.me(&first.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    // Logout
    let response = app.logout(&second.access).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_session_revoked(&app, &second).await;
}

async fn me_works_with_the_access_cookie(app: TestApp) {
    let user = app.signed_in_user().await;
    let response = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("Cookie", format!("access_token={}", user.tokens().access))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["email"], user.email);

    // Bearer wins over the cookie: a bad bearer is not rescued by a good cookie.
    let response = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("Cookie", format!("access_token={}", user.tokens().access))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

async fn register_normalises_email_and_rejects_duplicates(app: TestApp) {
    let user = TestUser::generate();
    let shouted = format!("  {}  ", user.email.to_uppercase());
    let (status, body) =
        status_and_json(app.register("  Ada  ", &shouted, &user.password).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["user"]["email"], user.email);
    assert_eq!(body["user"]["name"], "Ada");

    // The same address in another case is the same account.
    assert_error(
        app.register("Ada", &user.email.to_uppercase(), &user.password)
            .await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;
    // Login with the shouted form works.
    assert_eq!(
        app.login(&shouted, &user.password).await.status(),
        StatusCode::OK
    );
}

async fn register_reports_every_broken_rule(app: TestApp) {
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"name": "   ", "email": "not-an-email", "password": "short", "password_confirm": "other"}),
        )
        .await;
    let body = assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "email", "password", "password_confirm"]);

    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"name": "Ada", "email": "ada@example.com", "password": "long enough", "password_confirm": "long enougH"}),
        )
        .await;
    let body = assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(body["error"]["details"][0]["field"], "password_confirm");
}

async fn login_failures_are_indistinguishable(app: TestApp) {
    let user = app.signed_in_user().await;
    let wrong_password = app.login(&user.email, "wrong password!").await;
    let headers_wrong = wrong_password.headers().get("www-authenticate").cloned();
    let body_wrong = assert_error(
        wrong_password,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let unknown = app.login("nobody@example.com", "wrong password!").await;
    let headers_unknown = unknown.headers().get("www-authenticate").cloned();
    let body_unknown = assert_error(unknown, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(body_wrong, body_unknown);
    // An address no account can have (a NUL byte) gets the same answer, never a 500.
    let nul = app.login("a\u{0}@example.com", "wrong password!").await;
    assert_error(nul, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(headers_wrong, headers_unknown);
    assert_eq!(headers_wrong.unwrap(), "Bearer");
}

async fn patch_me_changes_the_name(app: TestApp) {
    let user = app.signed_in_user().await;
    let response = app
        .client
        .patch(app.url("/api/v1/users/me"))
        .bearer_auth(&user.tokens().access)
        .json(&json!({"name": "  Grace Hopper "}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["name"], "Grace Hopper");
    let (_, me) = status_and_json(app.me(&user.tokens().access).await).await;
    assert_eq!(me["user"]["name"], "Grace Hopper");

    let response = app
        .client
        .patch(app.url("/api/v1/users/me"))
        .bearer_auth(&user.tokens().access)
        .json(&json!({"name": "x".repeat(101)}))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

async fn access_token_claims_follow_the_contract(app: TestApp) {
    let user = app.signed_in_user().await;
    let tokens = user.tokens();
    let header = jsonwebtoken::decode_header(&tokens.access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(app.access_kid().as_str()));
    let claims = claims_of(&tokens.access);
    for claim in [
        "iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "role",
    ] {
        assert!(claims.contains_key(claim), "access token lacks {claim}");
    }
    assert_eq!(claims["sub"], Value::from(user.id.clone().unwrap()));
    assert_eq!(claims["sid"], Value::from(tokens.session_id.clone()));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(!claims.contains_key("typ"));

    let refresh = claims_of(&tokens.refresh);
    assert_eq!(refresh["typ"], "refresh");
    assert_ne!(refresh["jti"], claims["jti"]);
    let refresh_header = jsonwebtoken::decode_header(&tokens.refresh).unwrap();
    assert_eq!(
        refresh_header.kid.as_deref(),
        Some(app.refresh_kid().as_str())
    );
    assert_ne!(refresh_header.kid, header.kid);
}

async fn refresh_accepts_the_cookie_when_the_body_is_empty(app: TestApp) {
    let user = app.signed_in_user().await;
    let cookie = format!("refresh_token={}", user.tokens().refresh);
    // No body at all, an allowed Origin.
    let response = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header("Cookie", &cookie)
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookies = set_cookies(&response);
    assert!(cookies.contains_key("access_token"));
    let (_, body) = status_and_json(response).await;
    let second = Tokens::from_json(&body);

    // `{}` also falls back to the cookie.
    let response = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header("Cookie", format!("refresh_token={}", second.refresh))
        .header("Sec-Fetch-Site", "same-origin")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A token in the body wins over the cookie: a bad body token is not rescued.
    let response = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header("Cookie", format!("refresh_token={}", second.refresh))
        .json(&json!({"refresh_token": "garbage"}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // No token anywhere.
    let response = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
}
