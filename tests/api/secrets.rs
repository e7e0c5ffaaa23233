//! No response body and no log line ever contains a password or a password hash.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    backend_tests,
    helpers::{TestApp, TestUser, Tokens, captured_logs, status_and_json},
};

backend_tests!(no_response_or_log_line_contains_a_password_or_its_hash);

async fn no_response_or_log_line_contains_a_password_or_its_hash(app: TestApp) {
    let user = TestUser::generate();
    let mut bodies = Vec::new();
    let mut record = |(status, body): (StatusCode, serde_json::Value)| {
        bodies.push(body.to_string());
        status
    };

    assert_eq!(
        record(status_and_json(app.register(&user.name, &user.email, &user.password).await).await),
        StatusCode::CREATED
    );
    // Duplicate registration, wrong password, right password.
    record(status_and_json(app.register(&user.name, &user.email, &user.password).await).await);
    record(status_and_json(app.login(&user.email, &format!("{}x", user.password)).await).await);
    let login = status_and_json(app.login(&user.email, &user.password).await).await;
    let tokens = Tokens::from_json(&login.1);
    assert_eq!(record(login), StatusCode::OK);
    record(status_and_json(app.me(&tokens.access).await).await);
    // Wrong-typed and invalid payloads carrying the password.
    record(
        status_and_json(
            app.post_json(
                "/api/v1/auth/login",
                &json!({"email": user.email, "password": [user.password]}),
            )
            .await,
        )
        .await,
    );
    record(
        status_and_json(
            app.post_json(
                "/api/v1/auth/login",
                &json!({"email": [user.password], "password": user.password}),
            )
            .await,
        )
        .await,
    );
    record(status_and_json(app.post_json("/api/v1/auth/register", &json!({"name": user.password, "email": user.password, "password": user.password, "password_confirm": "x"})).await).await);
    record(status_and_json(app.refresh(&tokens.refresh).await).await);

    let stored = app
        .state
        .db
        .users()
        .find_by_email(&user.email)
        .await
        .unwrap()
        .expect("stored user");
    assert!(
        stored
            .password_hash
            .expose()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    let hash_tail = stored
        .password_hash
        .expose()
        .rsplit('$')
        .next()
        .unwrap()
        .to_owned();

    for body in &bodies {
        assert!(
            !body.contains(&user.password),
            "a response echoed the password: {body}"
        );
        assert!(
            !body.contains(&hash_tail),
            "a response carried the hash: {body}"
        );
        assert!(
            !body.contains("argon2"),
            "a response carried a hash: {body}"
        );
    }
    let logs = captured_logs();
    assert!(logs.contains("login succeeded"), "logs were captured");
    assert!(
        !logs.contains(&user.password),
        "a log line contains the password"
    );
    assert!(
        !logs.contains(&hash_tail),
        "a log line contains the password hash"
    );
    assert!(
        !logs.contains(&tokens.access),
        "a log line contains an access token"
    );
    assert!(
        !logs.contains(&tokens.refresh),
        "a log line contains a refresh token"
    );
}

backend_tests!(a_debug_printed_user_or_caller_shows_no_hash);

async fn a_debug_printed_user_or_caller_shows_no_hash(app: TestApp) {
    let user = app.signed_in_user().await;
    let stored = app
        .state
        .db
        .users()
        .find_by_email(&user.email)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.password_hash.expose().starts_with("$argon2id$"));
    let printed = format!("{stored:?}");
    assert!(!printed.contains("$argon2"), "{printed}");
    let caller = app
        .state
        .accounts
        .authenticate(&user.tokens().access)
        .await
        .unwrap();
    let printed = format!("{caller:#?}");
    assert!(!printed.contains("$argon2"), "{printed}");
    assert!(printed.contains("[redacted]"), "{printed}");
}
