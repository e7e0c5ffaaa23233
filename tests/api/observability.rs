//! Metrics, request ids and the audit trail.

use std::collections::HashMap;
use std::time::Duration;

use latchkey::limits::Rate;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    backend_tests,
    helpers::{
        TEST_USER_AGENT, TestApp, TestUser, Tokens, assert_error, captured_logs, status_and_json,
    },
};

backend_tests!(with(|s| {
    s.accounts.refresh_grace = Duration::from_secs(0);
    s.limits.login_per_account = Rate::per_secs(3, 60);
}) => metrics_count_a_scripted_sequence_exactly);

backend_tests!(with(|s| s.accounts.refresh_grace = Duration::from_secs(0)) => every_audit_event_type_is_recorded_with_its_fields);

backend_tests!(
    request_ids_are_echoed_generated_and_logged,
    the_audit_trail_is_admin_only_paginated_and_filtered,
);

/// Parses the Prometheus text format into (name, labels) -> value.
fn parse_metrics(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((name.to_owned(), labels, value))
        })
        .collect()
}

fn metric(
    series: &[(String, HashMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    series
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn metrics_count_a_scripted_sequence_exactly(app: TestApp) {
    let user = TestUser::generate();
    assert_eq!(
        app.register(&user.name, &user.email, &user.password)
            .await
            .status(),
        StatusCode::CREATED
    );
    let (status, body) = status_and_json(app.login(&user.email, &user.password).await).await;
    assert_eq!(status, StatusCode::OK);
    let first = Tokens::from_json(&body);
    for _ in 0..2 {
        assert_eq!(
            app.login(&user.email, "wrong password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The per-account limit (3/60) refuses the fourth attempt.
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(app.refresh(&first.refresh).await.status(), StatusCode::OK);
    assert_error(
        app.refresh(&first.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_error(
        app.refresh("garbage").await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.client
            .get(app.url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let series = parse_metrics(&response.text().await.unwrap());
    let expect = |name: &str, labels: &[(&str, &str)], value: f64| {
        assert_eq!(metric(&series, name, labels), value, "{name} {labels:?}");
    };
    expect("latchkey_logins_total", &[("result", "ok")], 1.0);
    expect("latchkey_logins_total", &[("result", "failed")], 2.0);
    expect("latchkey_logins_total", &[("result", "disabled")], 0.0);
    expect(
        "latchkey_rate_limited_total",
        &[("rule", "login-account")],
        1.0,
    );
    expect("latchkey_refreshes_total", &[("result", "ok")], 1.0);
    expect("latchkey_refreshes_total", &[("result", "reused")], 1.0);
    expect("latchkey_refreshes_total", &[("result", "rejected")], 1.0);
    expect(
        "latchkey_http_requests_total",
        &[
            ("operation", "register"),
            ("method", "POST"),
            ("status", "201"),
        ],
        1.0,
    );
    expect(
        "latchkey_http_requests_total",
        &[("operation", "login"), ("status", "200")],
        1.0,
    );
    expect(
        "latchkey_http_requests_total",
        &[("operation", "login"), ("status", "401")],
        2.0,
    );
    expect(
        "latchkey_http_requests_total",
        &[("operation", "login"), ("status", "429")],
        1.0,
    );
    expect(
        "latchkey_http_requests_total",
        &[("operation", "refresh")],
        3.0,
    );
    expect(
        "latchkey_http_requests_total",
        &[("operation", "unmatched"), ("status", "404")],
        1.0,
    );
    expect(
        "latchkey_http_request_duration_seconds_count",
        &[("operation", "login")],
        4.0,
    );
    // register + login + 2 failed logins hashed; the limited attempt never reached hashing.
    expect("latchkey_password_hash_wait_seconds_count", &[], 4.0);
    expect("latchkey_password_hash_queue_depth", &[], 0.0);
    expect("latchkey_password_hash_rejected_total", &[], 0.0);
    expect("latchkey_audit_write_failures_total", &[], 0.0);
    expect("latchkey_dependency_errors_total", &[], 0.0);
}

async fn request_ids_are_echoed_generated_and_logged(app: TestApp) {
    let response = app
        .client
        .get(app.url("/health/live"))
        .header("X-Request-Id", "trace-abc.123_x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc.123_x");

    let response = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    // Something that could forge log lines is replaced.
    let response = app
        .client
        .get(app.url("/health/live"))
        .header("X-Request-Id", "evil id\" status=200")
        .send()
        .await
        .unwrap();
    let replaced = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(replaced).is_ok(), "{replaced}");

    let logs = captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("trace-abc.123_x") && l.contains("health_live")),
        "the request's log line carries its id"
    );
    assert!(logs.contains(&generated));
}

async fn audit_events(app: &TestApp, admin: &str, query: &str) -> Value {
    let response = app
        .client
        .get(app.url(&format!("/api/v1/admin/audit?{query}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

async fn every_audit_event_type_is_recorded_with_its_fields(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    let user = app.signed_in_user().await;
    let uid = user.id.clone().unwrap();
    let sid = user.tokens().session_id.clone();

    // login_failed: wrong password and unknown email.
    app.login(&user.email, "wrong password").await;
    app.login("ghost@example.com", "wrong password").await;
    // refresh reuse (no grace window in this test).
    let (_, body) = status_and_json(app.refresh(&user.tokens().refresh).await).await;
    let rotated = Tokens::from_json(&body);
    app.refresh(&user.tokens().refresh).await;
    // logout, logout-all, password change on fresh sessions.
    let (_, body) = status_and_json(app.login(&user.email, &user.password).await).await;
    let second = Tokens::from_json(&body);
    assert_eq!(
        app.logout(&second.access).await.status(),
        StatusCode::NO_CONTENT
    );
    let (_, body) = status_and_json(app.login(&user.email, &user.password).await).await;
    let third = Tokens::from_json(&body);
    let post = |path: &str, access: &str, body: Value| {
        app.client
            .post(app.url(path))
            .bearer_auth(access)
            .json(&body)
            .send()
    };
    let response = post(
        "/api/v1/users/me/password",
        &third.access,
        json!({"current_password": user.password, "new_password": "a brand new password"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        post("/api/v1/auth/logout-all", &third.access, json!({}))
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    // Admin changes: role, disable, enable, delete.
    let path = format!("/api/v1/admin/users/{uid}");
    for change in [
        json!({"role": "admin"}),
        json!({"disabled": true}),
        json!({"disabled": false}),
    ] {
        let response = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&token)
            .json(&change)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // And a user deleting itself.
    let quitter = app.signed_in_user().await;
    let response = app
        .client
        .delete(app.url("/api/v1/users/me"))
        .bearer_auth(&quitter.tokens().access)
        .json(&json!({"password": quitter.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let page = audit_events(&app, &token, &format!("user_id={uid}&per_page=100")).await;
    let events = page["events"].as_array().unwrap();
    let of =
        |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event_type"] == kind).collect() };
    for event in events {
        assert_eq!(event["user_id"], uid.as_str());
        assert_eq!(event["ip"], "127.0.0.1");
        assert_eq!(event["user_agent"], TEST_USER_AGENT);
        assert!(
            chrono::DateTime::parse_from_rfc3339(event["occurred_at"].as_str().unwrap()).is_ok()
        );
    }
    assert_eq!(of("registered").len(), 1);
    let logins = of("login_succeeded");
    assert_eq!(logins.len(), 3);
    assert!(logins.iter().any(|e| e["session_id"] == sid.as_str()));
    let failed = of("login_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["detail"]["reason"], "wrong_password");
    assert_eq!(failed[0]["detail"]["email"], user.email.as_str());
    assert_eq!(
        of("refresh_reuse_detected")[0]["session_id"],
        rotated.session_id.as_str()
    );
    assert_eq!(of("logout")[0]["session_id"], second.session_id.as_str());
    assert_eq!(of("logout_all")[0]["session_id"], third.session_id.as_str());
    assert_eq!(
        of("password_changed")[0]["session_id"],
        third.session_id.as_str()
    );
    let role = of("role_changed");
    assert_eq!(role[0]["detail"]["from"], "user");
    assert_eq!(role[0]["detail"]["to"], "admin");
    assert_eq!(role[0]["detail"]["by"], admin.id.clone().unwrap().as_str());
    assert_eq!(of("user_disabled").len(), 1);
    assert_eq!(of("user_enabled").len(), 1);
    assert_eq!(
        of("user_deleted")[0]["detail"]["by"],
        admin.id.clone().unwrap().as_str()
    );
    // Nothing secret in any event.
    let text = page.to_string();
    assert!(!text.contains(&user.password) && !text.contains("argon2") && !text.contains("eyJ"));

    // The unknown email is recorded without a user.
    let ghosts = audit_events(&app, &token, "event_type=login_failed&per_page=100").await;
    assert!(ghosts["events"].as_array().unwrap().iter().any(|e| {
        e["user_id"].is_null()
            && e["detail"]["email"] == "ghost@example.com"
            && e["detail"]["reason"] == "unknown_email"
    }));
    let quit = audit_events(
        &app,
        &token,
        &format!("user_id={}", quitter.id.clone().unwrap()),
    )
    .await;
    assert!(
        quit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "user_deleted" && e["detail"]["by"] == "self")
    );
}

async fn the_audit_trail_is_admin_only_paginated_and_filtered(app: TestApp) {
    let admin = app.signed_in_admin().await;
    let token = admin.tokens().access.clone();
    let user = app.signed_in_user().await;
    let response = app
        .client
        .get(app.url("/api/v1/admin/audit"))
        .bearer_auth(&user.tokens().access)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;

    // Two registrations and two logins so far; newest first.
    let page = audit_events(&app, &token, "per_page=1").await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["event_type"], "login_succeeded");
    assert_eq!(
        page["events"][0]["user_id"],
        user.id.clone().unwrap().as_str()
    );
    let registered = audit_events(&app, &token, "event_type=registered").await;
    assert_eq!(registered["total"], 2);
    for query in [
        "event_type=nope",
        "user_id=not-a-uuid",
        "per_page=0",
        "page=0",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/api/v1/admin/audit?{query}")))
            .bearer_auth(&token)
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
}
