//! Cookie attributes (API.md section 4) and the CSRF rule for cookie-authenticated requests
//! (section 3).

use std::collections::HashMap;

use reqwest::StatusCode;

use crate::{
    backend_tests,
    helpers::{
        Backend, TestApp, TestUser, Tokens, assert_error, cookie_attributes, cookie_value,
        set_cookies, status_and_json,
    },
};

backend_tests!(
    login_sets_the_three_cookies_with_exact_attributes,
    refresh_sets_new_cookies_with_the_same_attributes,
    logout_clears_the_three_cookies,
    cookie_requests_with_unsafe_methods_need_an_allowed_origin,
    cookie_refresh_needs_an_allowed_origin,
    bearer_requests_are_exempt_from_the_csrf_check,
);

fn expect(attrs: &HashMap<String, String>, expected: &[(&str, &str)], absent: &[&str]) {
    for (name, value) in expected {
        assert_eq!(
            attrs.get(*name).map(String::as_str),
            Some(*value),
            "attribute {name} in {attrs:?}"
        );
    }
    for name in absent {
        assert!(
            !attrs.contains_key(*name),
            "attribute {name} must be absent in {attrs:?}"
        );
    }
}

fn assert_session_cookies(cookies: &HashMap<String, String>, tokens: &Tokens, secure: bool) {
    let access = &cookies["access_token"];
    assert_eq!(cookie_value(access), tokens.access);
    let attrs = cookie_attributes(access);
    expect(
        &attrs,
        &[
            ("httponly", ""),
            ("samesite", "Lax"),
            ("path", "/"),
            ("max-age", "900"),
        ],
        &["domain"],
    );
    assert_eq!(attrs.contains_key("secure"), secure, "access Secure flag");

    let refresh = &cookies["refresh_token"];
    assert_eq!(cookie_value(refresh), tokens.refresh);
    expect(
        &cookie_attributes(refresh),
        &[
            ("httponly", ""),
            ("secure", ""),
            ("samesite", "Strict"),
            ("path", "/api/v1/auth"),
            ("max-age", "604800"),
        ],
        &["domain"],
    );

    let logged_in = &cookies["logged_in"];
    assert_eq!(cookie_value(logged_in), "true");
    let attrs = cookie_attributes(logged_in);
    expect(
        &attrs,
        &[("samesite", "Lax"), ("path", "/"), ("max-age", "900")],
        &["httponly", "domain"],
    );
    assert_eq!(
        attrs.contains_key("secure"),
        secure,
        "logged_in Secure flag"
    );
}

async fn login_sets_the_three_cookies_with_exact_attributes(app: TestApp) {
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    let response = app.login(&user.email, &user.password).await;
    let cookies = set_cookies(&response);
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    let (_, body) = status_and_json(response).await;
    assert_session_cookies(&cookies, &Tokens::from_json(&body), false);
}

async fn refresh_sets_new_cookies_with_the_same_attributes(app: TestApp) {
    let user = app.signed_in_user().await;
    let response = app.refresh(&user.tokens().refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookies = set_cookies(&response);
    let (_, body) = status_and_json(response).await;
    assert_session_cookies(&cookies, &Tokens::from_json(&body), false);
}

async fn logout_clears_the_three_cookies(app: TestApp) {
    let user = app.signed_in_user().await;
    let response = app.logout(&user.tokens().access).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cookies = set_cookies(&response);
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    for (name, path) in [
        ("access_token", "/"),
        ("refresh_token", "/api/v1/auth"),
        ("logged_in", "/"),
    ] {
        let header = &cookies[name];
        assert_eq!(cookie_value(header), "", "{name} emptied");
        let attrs = cookie_attributes(header);
        expect(&attrs, &[("path", path), ("max-age", "0")], &["domain"]);
        assert!(
            attrs.get("expires").is_some_and(|e| e.contains("1970")),
            "{name} expires in the past: {header}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_cookie_setting_adds_secure_to_the_access_cookies() {
    let app = TestApp::spawn_with(Backend::Embedded, |s| s.cookies.secure = true).await;
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    let response = app.login(&user.email, &user.password).await;
    let cookies = set_cookies(&response);
    let (_, body) = status_and_json(response).await;
    assert_session_cookies(&cookies, &Tokens::from_json(&body), true);
}

async fn cookie_requests_with_unsafe_methods_need_an_allowed_origin(app: TestApp) {
    let user = app.signed_in_user().await;
    let cookie = format!("access_token={}", user.tokens().access);
    let patch = |origin: Option<(&'static str, &'static str)>| {
        let mut request = app
            .client
            .patch(app.url("/api/v1/users/me"))
            .header("Cookie", &cookie)
            .json(&serde_json::json!({"name": "Changed"}));
        if let Some((name, value)) = origin {
            request = request.header(name, value);
        }
        request.send()
    };
    // No origin information at all.
    assert_error(
        patch(None).await.unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_rejected",
    )
    .await;
    // A foreign origin.
    assert_error(
        patch(Some(("Origin", "https://evil.example.net")))
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_rejected",
    )
    .await;
    // A foreign Referer, and a cross-site fetch.
    assert_error(
        patch(Some(("Referer", "https://evil.example.net/page")))
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_rejected",
    )
    .await;
    assert_error(
        patch(Some(("Sec-Fetch-Site", "cross-site"))).await.unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_rejected",
    )
    .await;
    // The name did not change.
    let (_, me) = status_and_json(app.me(&user.tokens().access).await).await;
    assert_eq!(me["user"]["name"], user.name);

    // Allowed: listed Origin, listed Referer origin, same-origin fetch.
    for allowed in [
        ("Origin", "https://app.example.com"),
        ("Referer", "https://app.example.com/settings?tab=1"),
        ("Sec-Fetch-Site", "same-origin"),
    ] {
        let response = patch(Some(allowed)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{allowed:?}");
    }
    // Safe methods need no origin.
    let response = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Logout by cookie is an unsafe request too.
    let response = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::FORBIDDEN, "csrf_rejected").await;
    assert_eq!(app.me(&user.tokens().access).await.status(), StatusCode::OK);
}

async fn cookie_refresh_needs_an_allowed_origin(app: TestApp) {
    let user = app.signed_in_user().await;
    let cookie = format!("refresh_token={}", user.tokens().refresh);
    let response = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header("Cookie", &cookie)
        .header("Origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::FORBIDDEN, "csrf_rejected").await;
    // The refused attempt did not consume the token.
    assert_eq!(
        app.refresh(&user.tokens().refresh).await.status(),
        StatusCode::OK
    );
}

async fn bearer_requests_are_exempt_from_the_csrf_check(app: TestApp) {
    let user = app.signed_in_user().await;
    let response = app
        .client
        .patch(app.url("/api/v1/users/me"))
        .bearer_auth(&user.tokens().access)
        .header("Origin", "https://evil.example.net")
        .json(&serde_json::json!({"name": "Bearer Changed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
