//! What a newcomer meets first: where `/` leads, and error messages in the client's terms.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    backend_tests,
    helpers::{TestApp, assert_error},
};

backend_tests!(
    the_root_leads_to_the_docs,
    an_empty_body_names_the_fields_it_needs,
    a_field_of_the_wrong_type_is_named_with_the_type_it_takes,
    a_refresh_without_a_token_asks_for_the_refresh_token,
    an_authorization_header_of_another_scheme_is_told_so,
);

async fn the_root_leads_to_the_docs(app: TestApp) {
    let response = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/docs");
}

async fn an_empty_body_names_the_fields_it_needs(app: TestApp) {
    let response = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let body = assert_error(response, StatusCode::BAD_REQUEST, "malformed_request").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("email, password"), "{message}");
    assert!(
        !message.contains("LoginRequest"),
        "no Rust type names: {message}"
    );
}

async fn a_field_of_the_wrong_type_is_named_with_the_type_it_takes(app: TestApp) {
    let response = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": 12, "password": ["x"]}),
        )
        .await;
    let body = assert_error(response, StatusCode::BAD_REQUEST, "malformed_request").await;
    assert_eq!(
        body["error"]["details"],
        json!([
            {"field": "email", "issue": "must be a string"},
            {"field": "password", "issue": "must be a string"},
        ]),
        "{body}"
    );
    let text = body.to_string();
    for internal in ["optional_string", "LoginRequest", "occurred while parsing"] {
        assert!(!text.contains(internal), "{internal} in {text}");
    }
    // A boolean field is named with its own type.
    let admin = app.signed_in_admin().await;
    let response = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{}", admin.user_id())))
        .bearer_auth(&admin.tokens().access)
        .json(&json!({"disabled": "yes"}))
        .send()
        .await
        .unwrap();
    let body = assert_error(response, StatusCode::BAD_REQUEST, "malformed_request").await;
    assert_eq!(
        body["error"]["details"],
        json!([{"field": "disabled", "issue": "must be a boolean"}])
    );
}

async fn a_refresh_without_a_token_asks_for_the_refresh_token(app: TestApp) {
    let response = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .send()
        .await
        .unwrap();
    let body = assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("refresh_token"), "{message}");
    assert!(!message.contains("access_token"), "{message}");
}

async fn an_authorization_header_of_another_scheme_is_told_so(app: TestApp) {
    let user = app.signed_in_user().await;
    for header in [
        "Basic dXNlcjpwYXNz".to_owned(),
        user.tokens().access.clone(),
        format!("Token {}", user.tokens().access),
    ] {
        let response = app
            .client
            .get(app.url("/api/v1/users/me"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        let body = assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("Bearer scheme"), "{message}");
    }
}

/// The embedded default keeps its sessions across a restart (beside the SQLite file): a
/// developer restarting `cargo run` stays signed in, and what was revoked stays revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_restart_keeps_sessions_and_revocations() {
    use latchkey::startup::{Application, SESSION_SNAPSHOT};
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::base_settings();
    settings.database.url =
        format!("sqlite://{}/latchkey.db?mode=rwc", dir.path().display()).into();
    settings.redis.url = None;
    // `cargo run` listens on the same port every time, and so has the same issuer.
    settings.http.public_url = Some("http://127.0.0.1:8000".into());
    let client = reqwest::Client::new();
    let start = |settings: latchkey::config::Settings| async move {
        let app = Application::build(settings).await.unwrap();
        let url = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        (url, stop, running)
    };

    let (url, stop, running) = start(settings.clone()).await;
    let user = crate::helpers::TestUser::generate();
    let register = json!({"name": user.name, "email": user.email,
        "password": user.password, "password_confirm": user.password});
    let login = json!({"email": user.email, "password": user.password});
    let post = |path: String, body: serde_json::Value| client.post(path).json(&body).send();
    assert!(
        post(format!("{url}/api/v1/auth/register"), register)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let body: serde_json::Value = post(format!("{url}/api/v1/auth/login"), login.clone())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    let logout = client
        .post(format!("{url}/api/v1/auth/logout"))
        .bearer_auth(&tokens[1])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let snapshot = dir.path().join(SESSION_SNAPSHOT);
    assert!(snapshot.exists(), "the sessions were kept");

    let (url, stop, running) = start(settings).await;
    assert!(!snapshot.exists(), "read once, then removed");
    let me = |token: String| {
        client
            .get(format!("{url}/api/v1/users/me"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        me(tokens[0].clone()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        me(tokens[1].clone()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "a logged-out session stays logged out"
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
