//! Every way a token can be wrong gets 401, and nothing else gets through. Forged tokens are
//! variants of a real, live token, so each case breaks exactly one property.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use latchkey::db::entities::user;
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::{Value, json};

use crate::{
    backend_tests,
    helpers::{
        KEYS, TestApp, Tokens, assert_error, claims_of, kid_of, sign_rs256, status_and_json,
    },
};

backend_tests!(
    a_tampered_payload_is_rejected,
    a_signature_by_another_key_is_rejected,
    alg_none_is_rejected,
    hs256_signed_with_the_public_key_is_rejected,
    an_expired_token_is_rejected_as_expired,
    a_token_not_yet_valid_is_rejected,
    a_wrong_issuer_is_rejected,
    a_wrong_audience_is_rejected,
    a_refresh_token_is_not_an_access_token,
    an_access_token_is_not_a_refresh_token,
    a_logged_out_access_token_is_rejected,
    a_deleted_users_token_is_rejected,
    a_disabled_users_token_is_rejected,
    a_correctly_resigned_live_token_is_accepted,
);

// Without a grace window a rotated-away token is reuse at once (the grace window has its own
// tests in sessions.rs).
backend_tests!(with(|s| s.accounts.refresh_grace = Duration::from_secs(0)) => a_rotated_away_refresh_token_is_rejected_and_revokes_the_session);

backend_tests!(with(|s| {
    s.tokens.access_ttl = Duration::from_secs(2);
    s.tokens.refresh_ttl = Duration::from_secs(60);
}) => a_token_past_exp_within_the_leeway_is_reported_expired_not_revoked);

async fn a_token_past_exp_within_the_leeway_is_reported_expired_not_revoked(app: TestApp) {
    let tokens = live_tokens(&app).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // The signature check still accepts it (30 s leeway) but its jti has expired from the
    // store: the client is told to refresh, and refreshing works.
    assert!(app.state.tokens.verify_access(&tokens.access).is_ok());
    assert_error(
        app.me(&tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    )
    .await;
    assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
}

fn access_kid(app: &TestApp) -> String {
    app.access_kid()
}

/// Asserts 401 `invalid_token` with `WWW-Authenticate: Bearer error="invalid_token"`.
async fn assert_rejected(app: &TestApp, token: &str) {
    let response = app.me(token).await;
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        r#"Bearer error="invalid_token""#
    );
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

async fn live_tokens(app: &TestApp) -> Tokens {
    app.signed_in_user().await.tokens().clone()
}

fn with_claim(token: &str, name: &str, value: Value) -> Value {
    let mut claims = claims_of(token);
    claims.insert(name.into(), value);
    Value::Object(claims)
}

async fn a_correctly_resigned_live_token_is_accepted(app: TestApp) {
    // The control for the forgeries below: re-signing the same claims with the real key works,
    // so each rejection is caused by the one property the test changes.
    let tokens = live_tokens(&app).await;
    let claims = Value::Object(claims_of(&tokens.access));
    let token = sign_rs256(&claims, &KEYS.access.encoding_key(), &access_kid(&app));
    assert_eq!(app.me(&token).await.status(), StatusCode::OK);
}

async fn a_tampered_payload_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let mut parts: Vec<String> = tokens.access.split('.').map(str::to_owned).collect();
    let payload = Value::Object(claims_of(&tokens.access));
    let mut tampered = payload.clone();
    tampered["role"] = json!("admin");
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered).unwrap());
    assert_rejected(&app, &parts.join(".")).await;
}

async fn a_signature_by_another_key_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let claims = Value::Object(claims_of(&tokens.access));
    // Same kid, wrong key.
    let forged = sign_rs256(&claims, &KEYS.stranger.encoding_key(), &access_kid(&app));
    assert_rejected(&app, &forged).await;
    // The refresh key is another key too.
    let forged = sign_rs256(&claims, &KEYS.refresh.encoding_key(), &access_kid(&app));
    assert_rejected(&app, &forged).await;
}

async fn alg_none_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let header = json!({"alg": "none", "typ": "JWT", "kid": access_kid(&app)});
    let claims = Value::Object(claims_of(&tokens.access));
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    for token in [
        format!("{}.{}.", encode(&header), encode(&claims)),
        format!("{}.{}", encode(&header), encode(&claims)),
        format!(
            "{}.{}.{}",
            encode(&header),
            encode(&claims),
            tokens.access.split('.').nth(2).unwrap()
        ),
    ] {
        assert_rejected(&app, &token).await;
    }
}

async fn hs256_signed_with_the_public_key_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let claims = Value::Object(claims_of(&tokens.access));
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(access_kid(&app));
    for secret in [
        KEYS.access.public_pem.as_bytes().to_vec(),
        KEYS.access.public_pem.trim().as_bytes().to_vec(),
    ] {
        let forged =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
        assert_rejected(&app, &forged).await;
    }
}

async fn an_expired_token_is_rejected_as_expired(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let now = chrono::Utc::now().timestamp();
    // Beyond the 30 s leeway.
    let claims = with_claim(&tokens.access, "exp", json!(now - 120));
    let token = sign_rs256(&claims, &KEYS.access.encoding_key(), &access_kid(&app));
    let response = app.me(&token).await;
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        r#"Bearer error="invalid_token""#
    );
    assert_error(response, StatusCode::UNAUTHORIZED, "token_expired").await;
}

async fn a_token_not_yet_valid_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let now = chrono::Utc::now().timestamp();
    let claims = with_claim(&tokens.access, "nbf", json!(now + 600));
    let token = sign_rs256(&claims, &KEYS.access.encoding_key(), &access_kid(&app));
    assert_rejected(&app, &token).await;
}

async fn a_wrong_issuer_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let claims = with_claim(&tokens.access, "iss", json!("someone-else"));
    let token = sign_rs256(&claims, &KEYS.access.encoding_key(), &access_kid(&app));
    assert_rejected(&app, &token).await;
}

async fn a_wrong_audience_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let claims = with_claim(&tokens.access, "aud", json!("another-api"));
    let token = sign_rs256(&claims, &KEYS.access.encoding_key(), &access_kid(&app));
    assert_rejected(&app, &token).await;
}

async fn a_refresh_token_is_not_an_access_token(app: TestApp) {
    let tokens = live_tokens(&app).await;
    assert_rejected(&app, &tokens.refresh).await;
    // Even signed by the access key, `typ: refresh` is refused.
    let claims = Value::Object(claims_of(&tokens.refresh));
    let token = sign_rs256(&claims, &KEYS.access.encoding_key(), &access_kid(&app));
    assert_rejected(&app, &token).await;
}

async fn an_access_token_is_not_a_refresh_token(app: TestApp) {
    let tokens = live_tokens(&app).await;
    assert_error(
        app.refresh(&tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // Signed by the refresh key but without `typ: refresh`: still refused.
    let claims = Value::Object(claims_of(&tokens.access));
    let refresh_kid = app.refresh_kid();
    let token = sign_rs256(&claims, &KEYS.refresh.encoding_key(), &refresh_kid);
    assert_error(
        app.refresh(&token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // The session is untouched by these attempts.
    assert_eq!(app.me(&tokens.access).await.status(), StatusCode::OK);
}

async fn a_logged_out_access_token_is_rejected(app: TestApp) {
    let tokens = live_tokens(&app).await;
    assert_eq!(
        app.logout(&tokens.access).await.status(),
        StatusCode::NO_CONTENT
    );
    // The signature is still valid and the token unexpired: only revocation stops it.
    assert!(app.state.tokens.verify_access(&tokens.access).is_ok());
    assert_rejected(&app, &tokens.access).await;
    assert_error(
        app.logout(&tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn a_rotated_away_refresh_token_is_rejected_and_revokes_the_session(app: TestApp) {
    let tokens = live_tokens(&app).await;
    let (status, body) = status_and_json(app.refresh(&tokens.refresh).await).await;
    assert_eq!(status, StatusCode::OK);
    let rotated = Tokens::from_json(&body);
    assert_eq!(kid_of(&rotated.refresh), kid_of(&tokens.refresh));

    assert_error(
        app.refresh(&tokens.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    // Reuse revokes the whole session: the newest pair is dead too.
    assert_rejected(&app, &rotated.access).await;
    assert_error(
        app.refresh(&rotated.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn a_deleted_users_token_is_rejected(app: TestApp) {
    let user = app.signed_in_user().await;
    user::Entity::delete_by_id(user.user_id())
        .exec(app.state.db.connection())
        .await
        .unwrap();
    assert_rejected(&app, &user.tokens().access).await;
    assert_error(
        app.refresh(&user.tokens().refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn a_disabled_users_token_is_rejected(app: TestApp) {
    let user = app.signed_in_user().await;
    let row = user::Entity::find_by_id(user.user_id())
        .one(app.state.db.connection())
        .await
        .unwrap()
        .unwrap();
    let mut active: user::ActiveModel = row.into();
    active.disabled = Set(true);
    active.update(app.state.db.connection()).await.unwrap();
    assert_rejected(&app, &user.tokens().access).await;
    assert_error(
        app.refresh(&user.tokens().refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // The right password of a disabled account: 403 account_disabled.
    assert_error(
        app.login(&user.email, &user.password).await,
        StatusCode::FORBIDDEN,
        "account_disabled",
    )
    .await;
}
