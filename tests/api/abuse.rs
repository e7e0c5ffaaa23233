//! Abuse resistance: rate limits, login backoff, client IPs behind proxies, bounded password
//! hashing, CORS and hardening headers.

use std::time::{Duration, Instant};

use latchkey::limits::Rate;
use reqwest::{Response, StatusCode};
use serde_json::json;

use crate::{
    backend_tests,
    helpers::{Backend, TestApp, TestUser, assert_error, status_and_json},
};

backend_tests!(scale_out with(|s| s.limits.login_per_ip = Rate::per_secs(3, 60)) =>
    the_login_limit_per_ip_answers_429_with_exact_retry_after,
);

backend_tests!(with(|s| s.limits.login_per_ip = Rate::per_secs(3, 60)) =>
    a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing,
);

backend_tests!(scale_out with(|s| s.limits.login_per_account = Rate::per_secs(2, 60)) =>
    the_login_limit_per_account_counts_each_account_apart,
);

backend_tests!(with(|s| {
    s.limits.register_per_ip = Rate::per_secs(2, 60);
    s.limits.refresh_per_ip = Rate::per_secs(2, 60);
}) => register_and_refresh_are_limited_per_ip);

backend_tests!(with(|s| {
    s.limits.login_per_ip = Rate::per_secs(2, 60);
    s.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}) => behind_a_trusted_proxy_the_forwarded_client_ip_is_used);

backend_tests!(scale_out with(|s| {
    s.limits.login_per_ip = Rate::per_secs(2, 60);
    s.limits.login_per_account = Rate::per_secs(3, 60);
    s.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}) => a_login_refused_for_its_ip_does_not_count_against_the_account);

backend_tests!(scale_out with(|s| {
    s.limits.backoff.free_failures = 1;
    s.limits.backoff.base = Duration::from_secs(1);
    s.limits.backoff.max = Duration::from_secs(2);
}) => login_backoff_grows_with_failures_and_resets_on_success);

backend_tests!(with(|s| {
    s.passwords.concurrency = 1;
    s.passwords.queue_timeout = Duration::from_millis(50);
}) => a_login_flood_gets_503_busy_while_authenticated_requests_keep_working);

backend_tests!(
    cors_gives_credentials_headers_to_listed_origins_only,
    every_response_carries_the_hardening_headers,
    login_rehashes_a_password_made_with_old_argon2_parameters,
);

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn login_from(app: &TestApp, email: &str, forwarded_for: Option<&str>) -> Response {
    let mut request = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": "wrong password"}));
    if let Some(xff) = forwarded_for {
        request = request.header("X-Forwarded-For", xff);
    }
    request.send().await.unwrap()
}

/// Asserts a 429 with consistent `Retry-After` and `RateLimit-*` headers; returns Retry-After.
async fn assert_limited(response: Response, limit: u64) -> u64 {
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert_eq!(
        header(&response, "ratelimit-limit").unwrap(),
        limit.to_string()
    );
    assert_eq!(header(&response, "ratelimit-remaining").unwrap(), "0");
    assert_eq!(
        header(&response, "ratelimit-reset").unwrap(),
        retry_after.to_string()
    );
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    retry_after
}

async fn the_login_limit_per_ip_answers_429_with_exact_retry_after(app: TestApp) {
    let started = Instant::now();
    for i in 0..3 {
        let response = login_from(&app, &format!("nobody{i}@example.com"), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = login_from(&app, "someone-else@example.com", None).await;
    let retry_after = assert_limited(response, 3).await;
    // The window opened with the first request: what is left of its 60 s, rounded up.
    let elapsed = started.elapsed().as_secs();
    assert!(
        retry_after <= 60 && retry_after >= 60 - elapsed - 1,
        "Retry-After {retry_after} after {elapsed} s"
    );
    // Even the right password is not checked while limited.
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn the_login_limit_per_account_counts_each_account_apart(app: TestApp) {
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    for _ in 0..2 {
        assert_eq!(
            login_from(&app, &user.email, None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The same account in another case is the same key.
    let shouted = user.email.to_uppercase();
    assert_limited(login_from(&app, &shouted, None).await, 2).await;
    // Another account from the same IP is not affected.
    assert_eq!(
        login_from(&app, "another@example.com", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn register_and_refresh_are_limited_per_ip(app: TestApp) {
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let user = TestUser::generate();
        assert_eq!(
            app.register(&user.name, &user.email, &user.password)
                .await
                .status(),
            StatusCode::CREATED
        );
        let (_, body) = status_and_json(app.login(&user.email, &user.password).await).await;
        tokens.push(crate::helpers::Tokens::from_json(&body));
    }
    let user = TestUser::generate();
    assert_limited(
        app.register(&user.name, &user.email, &user.password).await,
        2,
    )
    .await;

    for t in &tokens {
        assert_eq!(app.refresh(&t.refresh).await.status(), StatusCode::OK);
    }
    assert_limited(app.refresh(&tokens[0].refresh).await, 2).await;
}

async fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(app: TestApp) {
    // The peer (127.0.0.1) is not a trusted proxy: the header is ignored, every request counts
    // against the peer.
    for xff in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let response = login_from(&app, "nobody@example.com", Some(xff)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_limited(
        login_from(&app, "nobody@example.com", Some("203.0.113.4")).await,
        3,
    )
    .await;
    assert_limited(login_from(&app, "nobody@example.com", None).await, 3).await;
}

async fn behind_a_trusted_proxy_the_forwarded_client_ip_is_used(app: TestApp) {
    for _ in 0..2 {
        let response = login_from(&app, "nobody@example.com", Some("203.0.113.1")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_limited(
        login_from(&app, "nobody@example.com", Some("203.0.113.1")).await,
        2,
    )
    .await;
    // Another client behind the same proxy has its own budget; hops are read from the right,
    // past trusted ones.
    let response = login_from(&app, "nobody@example.com", Some("198.51.100.7, 127.0.0.1")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The session records the client, not the proxy.
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    let response = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("X-Forwarded-For", "192.0.2.44")
        .json(&json!({"email": user.email, "password": user.password}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap();
    let response = app
        .client
        .get(app.url("/api/v1/auth/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    let (_, sessions) = status_and_json(response).await;
    assert_eq!(sessions["sessions"][0]["ip"], "192.0.2.44");
}

/// An attacker whose IP is over its limit cannot go on using up the victim's account limit:
/// the gate charges the account only for attempts the IP limit let through.
async fn a_login_refused_for_its_ip_does_not_count_against_the_account(app: TestApp) {
    let victim = "victim@example.com";
    let attacker = Some("198.51.100.1");
    for _ in 0..2 {
        let response = login_from(&app, victim, attacker).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for _ in 0..5 {
        assert_limited(login_from(&app, victim, attacker).await, 2).await;
    }
    // The account was charged 2 of its 3: one more attempt from elsewhere is still heard...
    let response = login_from(&app, victim, Some("198.51.100.2")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // ...and the next one is over the account's limit.
    assert_limited(login_from(&app, victim, Some("198.51.100.3")).await, 3).await;
}

async fn login_backoff_grows_with_failures_and_resets_on_success(app: TestApp) {
    let user = TestUser::generate();
    app.register(&user.name, &user.email, &user.password).await;
    let attempt = |password: &'static str| {
        let app = &app;
        let email = user.email.clone();
        async move { app.login(&email, password).await }
    };
    // One free failure, then 1 s, then 2 s (the cap).
    assert_eq!(attempt("wrong 1").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("wrong 2").await.status(), StatusCode::UNAUTHORIZED);
    let response = attempt("wrong 3").await;
    assert_eq!(header(&response, "retry-after").as_deref(), Some("1"));
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(attempt("wrong 4").await.status(), StatusCode::UNAUTHORIZED);
    let response = attempt("wrong 5").await;
    assert_eq!(header(&response, "retry-after").as_deref(), Some("2"));
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Even the right password waits: the check comes before hashing.
    assert_eq!(
        attempt_with(&app, &user.email, &user.password)
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        attempt_with(&app, &user.email, &user.password)
            .await
            .status(),
        StatusCode::OK
    );
    // Reset: the next failure is free again.
    assert_eq!(attempt("wrong 6").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("wrong 7").await.status(), StatusCode::UNAUTHORIZED);
    // Another account was never affected.
    assert_eq!(
        login_from(&app, "someone@example.com", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn attempt_with(app: &TestApp, email: &str, password: &str) -> Response {
    app.login(email, password).await
}

async fn a_login_flood_gets_503_busy_while_authenticated_requests_keep_working(app: TestApp) {
    let user = app.signed_in_user().await;
    let access = user.tokens().access.clone();
    let mut flood = Vec::new();
    for i in 0..60 {
        let client = app.client.clone();
        let url = app.url("/api/v1/auth/login");
        flood.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .post(url)
                .json(&json!({"email": format!("flood{i}@example.com"), "password": "wrong password"}))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            let (status, body) = status_and_json(response).await;
            (status, body, retry_after, started.elapsed())
        }));
    }
    // Token verification does not wait for hashing.
    for _ in 0..10 {
        assert_eq!(app.me(&access).await.status(), StatusCode::OK);
    }
    let mut busy = 0;
    for task in flood {
        let (status, body, retry_after, elapsed) = task.await.unwrap();
        match status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(body["error"]["code"], "busy", "{body}");
                assert!(retry_after, "503 carries Retry-After");
                // Turned away after the short queue timeout, not after a long wait.
                assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        busy > 0,
        "with one hashing slot, some of 60 concurrent logins are turned away"
    );
    assert_eq!(app.me(&access).await.status(), StatusCode::OK);
}

async fn cors_gives_credentials_headers_to_listed_origins_only(app: TestApp) {
    let response = app
        .client
        .get(app.url("/health/live"))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(header(&response, "vary").unwrap().contains("Origin"));

    let response = app
        .client
        .get(app.url("/health/live"))
        .header("Origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    assert_eq!(header(&response, "access-control-allow-credentials"), None);

    // Preflight.
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/users/me"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PATCH")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let response = preflight("https://app.example.com").await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert!(
        header(&response, "access-control-allow-methods")
            .unwrap()
            .contains("PATCH")
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let response = preflight("https://evil.example.net").await.unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    assert_eq!(header(&response, "access-control-allow-methods"), None);
}

async fn every_response_carries_the_hardening_headers(app: TestApp) {
    let user = app.signed_in_user().await;
    let api = app.me(&user.tokens().access).await;
    assert_eq!(header(&api, "cache-control").as_deref(), Some("no-store"));
    let login = app.login(&user.email, &user.password).await;
    assert_eq!(
        header(&login, "cache-control").as_deref(),
        Some("no-store"),
        "token responses"
    );
    for response in [
        api,
        login,
        app.client.get(app.url("/nope")).send().await.unwrap(),
    ] {
        assert_eq!(
            header(&response, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(
            header(&response, "content-security-policy").as_deref(),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
    }
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(
        header(&docs, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        header(&docs, "content-security-policy"),
        None,
        "Swagger UI needs its scripts"
    );
}

async fn login_rehashes_a_password_made_with_old_argon2_parameters(app: TestApp) {
    let user = app.signed_in_user().await;
    let stored = |app: &TestApp| {
        let db = app.state.db.clone();
        let email = user.email.clone();
        async move {
            db.users()
                .find_by_email(&email)
                .await
                .unwrap()
                .unwrap()
                .password_hash
                .expose()
                .to_owned()
        }
    };
    assert!(stored(&app).await.contains("m=19456,t=2,p=1"));
    // An instance with new parameters on the same database.
    let upgraded = app
        .spawn_sibling_with(|s| {
            s.passwords.argon2.memory_kib = 8192;
            s.passwords.argon2.iterations = 3;
        })
        .await;
    assert_eq!(
        upgraded.login(&user.email, &user.password).await.status(),
        StatusCode::OK
    );
    assert!(stored(&upgraded).await.contains("m=8192,t=3,p=1"));
    // The old instance still verifies it: parameters travel with the hash.
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::OK
    );
}

mod a_limit_hit_on_one_instance_is_seen_by_the_other {
    use super::*;

    /// A limit hit on instance A is seen by instance B: the counters live in the shared Redis.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        let a = TestApp::spawn_with(Backend::PostgresRedis, |s| {
            s.limits.login_per_ip = Rate::per_secs(2, 60)
        })
        .await;
        let b = a.spawn_sibling().await;
        assert_eq!(
            login_from(&a, "x@example.com", None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            login_from(&b, "y@example.com", None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_limited(login_from(&a, "z@example.com", None).await, 2).await;
        assert_limited(login_from(&b, "z@example.com", None).await, 2).await;
    }
}

/// A request that takes longer than REQUEST_TIMEOUT_SECS is answered 503, never left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_with_503() {
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.passwords.concurrency = 1;
        s.passwords.queue_timeout = Duration::from_millis(60_000);
        s.http.request_timeout = Duration::from_secs(1);
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = app.client.clone();
        let url = app.url("/api/v1/auth/login");
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(
                    &json!({"email": format!("slow{i}@example.com"), "password": "wrong password"}),
                )
                .send()
                .await
                .unwrap();
            status_and_json(response).await
        }));
    }
    let mut timed_out = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
            timed_out += 1;
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        }
    }
    assert!(
        timed_out > 0,
        "200 serialised argon2 checks take longer than 1 s"
    );
}
