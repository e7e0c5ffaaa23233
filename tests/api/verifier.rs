//! `examples/verify_service.rs`, the verifier other services copy, against a real Latchkey:
//! both are real HTTP servers on port 0.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use latchkey::auth::keys::{self, KeyKind, RotationPolicy};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{
        Backend, KEYS, NEXT_KEYS, TestApp, claims_of, kid_of, sign_rs256, status_and_json,
        write_key_dir,
    },
    verify_service::{Running, VerifierConfig, serve},
};

async fn start_verifier(app: &TestApp, min_refetch: Duration) -> Running {
    let mut config = VerifierConfig::new(&app.address);
    config.min_refetch_interval = min_refetch;
    serve(config, "127.0.0.1:0").await.expect("verifier starts")
}

async fn call(running: &Running, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(format!("http://{}/protected", running.addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    status_and_json(request.send().await.expect("request")).await
}

/// (successful fetches, failed fetches) of the verifier's JWKS cache.
async fn fetches(running: &Running) -> (u64, u64) {
    let body: Value = reqwest::get(format!("http://{}/health", running.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        body["jwks_fetches"].as_u64().unwrap(),
        body["jwks_failed_fetches"].as_u64().unwrap(),
    )
}

async fn assert_refused(running: &Running, token: &str, code: &str) {
    let response = reqwest::Client::new()
        .get(format!("http://{}/protected", running.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        r#"Bearer error="invalid_token""#
    );
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_example_accepts_latchkey_tokens_and_rejects_forgeries() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let verifier = start_verifier(&app, Duration::from_millis(200)).await;
    let user = app.signed_in_user().await;
    let access = user.tokens().access.clone();

    let (status, body) = call(&verifier, Some(&access)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], user.user_id().to_string());
    assert_eq!(body["sid"], user.tokens().session_id);
    assert_eq!(body["role"], "user");

    let (status, body) = call(&verifier, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "missing_token");

    // Tampered: the payload says admin, the signature is the original one.
    let mut parts: Vec<String> = access.split('.').map(str::to_owned).collect();
    let mut claims = claims_of(&access);
    claims.insert("role".into(), json!("admin"));
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    assert_refused(&verifier, &parts.join("."), "invalid_token").await;
    assert_refused(&verifier, "not-a-jwt", "invalid_token").await;

    // Correctly signed by Latchkey's key, but with claims a verifier must refuse.
    let kid = app.access_kid();
    let now = Utc::now().timestamp();
    let base = Value::Object(claims_of(&access));
    let with = |changes: Value| {
        let mut claims = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            claims[k] = v.clone();
        }
        sign_rs256(&claims, &KEYS.access.encoding_key(), &kid)
    };
    // The unchanged claims re-signed pass: the refusals below are about the changes.
    assert_eq!(
        call(&verifier, Some(&with(json!({})))).await.0,
        StatusCode::OK
    );
    assert_refused(
        &verifier,
        &with(json!({"iat": now - 3600, "nbf": now - 3600, "exp": now - 120})),
        "token_expired",
    )
    .await;
    assert_refused(
        &verifier,
        &with(json!({"iss": "https://evil.example"})),
        "invalid_token",
    )
    .await;
    assert_refused(
        &verifier,
        &with(json!({"aud": "another-service"})),
        "invalid_token",
    )
    .await;
    assert_refused(&verifier, &with(json!({"nbf": now + 600})), "invalid_token").await;
    assert_refused(&verifier, &with(json!({"typ": "refresh"})), "invalid_token").await;
    // Another key under Latchkey's kid; a refresh token (its key is not published).
    let forged = sign_rs256(&base, &KEYS.stranger.encoding_key(), &kid);
    assert_refused(&verifier, &forged, "invalid_token").await;
    assert_refused(&verifier, &user.tokens().refresh, "invalid_token").await;
    // `alg` is pinned: HS256 keyed with the public key, and `none`.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &header,
        &base,
        &jsonwebtoken::EncodingKey::from_secret(KEYS.access.public_pem.as_bytes()),
    )
    .unwrap();
    assert_refused(&verifier, &hs256, "invalid_token").await;
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
        parts[1]
    );
    assert_refused(&verifier, &none, "invalid_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_example_refetches_the_jwks_on_a_new_kid() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_key_dir(&dir.path().join("keys"), &KEYS.access, &KEYS.refresh);
    let source = latchkey::auth::keys::KeySource::Files(paths.clone());
    let app = TestApp::spawn_with(Backend::Embedded, move |s| {
        s.keys.source = source;
        s.keys.reload_every = Duration::from_secs(1);
        // The verifier may cache for an hour: only an unknown kid makes it ask again.
        s.keys.jwks_max_age = Duration::from_secs(3600);
    })
    .await;
    let refetch_limit = Duration::from_secs(1);
    let verifier = start_verifier(&app, refetch_limit).await;
    let first = app.signed_in_user().await;
    assert_eq!(
        call(&verifier, Some(&first.tokens().access)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&verifier, Some(&first.tokens().access)).await.0,
        StatusCode::OK
    );
    assert_eq!(fetches(&verifier).await, (1, 0), "cached after one fetch");

    // Latchkey rotates and signs with the new key at once (no publication delay: the
    // verifier's cached set cannot know the new kid).
    let entry = keys::rotate(
        &paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &RotationPolicy {
            delay_secs: 0,
            token_ttl_secs: 900,
            leeway_secs: 30,
        },
        Utc::now(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.access_kid() != entry.kid {
        assert!(
            Instant::now() < deadline,
            "the rotation was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = app.signed_in_user().await;
    assert_eq!(kid_of(&second.tokens().access), entry.kid);
    tokio::time::sleep(refetch_limit).await;

    let (status, body) = call(&verifier, Some(&second.tokens().access)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        fetches(&verifier).await,
        (2, 0),
        "one refetch for the new kid"
    );
    // The old key's tokens still verify from the refetched set.
    assert_eq!(
        call(&verifier, Some(&first.tokens().access)).await.0,
        StatusCode::OK
    );

    // Made-up kids do not each cause a fetch: at most one per interval.
    let claims = Value::Object(claims_of(&second.tokens().access));
    for i in 0..5 {
        let token = sign_rs256(
            &claims,
            &KEYS.stranger.encoding_key(),
            &format!("made-up-{i}"),
        );
        assert_refused(&verifier, &token, "invalid_token").await;
    }
    let (ok, failed) = fetches(&verifier).await;
    assert!(ok + failed <= 3, "{ok} fetches, {failed} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_example_keeps_working_from_cache_while_latchkey_is_stopped() {
    // A one-second max-age: the cache goes stale quickly, and must still be used.
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.keys.jwks_max_age = Duration::from_secs(1)
    })
    .await;
    let verifier = start_verifier(&app, Duration::from_millis(200)).await;
    let user = app.signed_in_user().await;
    let access = user.tokens().access.clone();
    assert_eq!(call(&verifier, Some(&access)).await.0, StatusCode::OK);
    assert_eq!(fetches(&verifier).await, (1, 0));

    let jwks = app.url("/.well-known/jwks.json");
    drop(app);
    let deadline = Instant::now() + Duration::from_secs(15);
    while reqwest::Client::new().get(&jwks).send().await.is_ok() {
        assert!(Instant::now() < deadline, "Latchkey never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Stale cache, Latchkey down: the fetch fails and the cached key still verifies.
    let (status, body) = call(&verifier, Some(&access)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (ok, failed) = fetches(&verifier).await;
    assert_eq!(ok, 1);
    assert!(failed >= 1, "a refetch was attempted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&verifier, Some(&access)).await.0, StatusCode::OK);
    // ...and forgeries are still refused.
    let forged = sign_rs256(
        &Value::Object(claims_of(&access)),
        &KEYS.stranger.encoding_key(),
        &kid_of(&access),
    );
    assert_refused(&verifier, &forged, "invalid_token").await;
    verifier.stop().await;
}
