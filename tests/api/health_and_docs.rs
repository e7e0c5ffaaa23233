//! Probes, the JWKS, Swagger UI, and the committed OpenAPI spec.

use std::path::Path;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    backend_tests,
    helpers::{Backend, KEYS, TestApp, assert_error, status_and_json},
};

backend_tests!(
    health_probes_answer,
    jwks_publishes_only_the_access_key,
    docs_and_spec_are_served,
);

async fn health_probes_answer(app: TestApp) {
    let (status, body) = status_and_json(
        app.client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = status_and_json(
        app.client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

async fn jwks_publishes_only_the_access_key(app: TestApp) {
    let response = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("cache-control").unwrap(),
        "public, max-age=300"
    );
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["kid"], app.access_kid().as_str());
    // The published key verifies a real access token.
    let user = app.signed_in_user().await;
    let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["latchkey"]);
    validation.set_issuer(&[&app.state.settings.tokens.issuer]);
    let verified = jsonwebtoken::decode::<Value>(&user.tokens().access, &decoding, &validation);
    assert!(verified.is_ok(), "{verified:?}");
    // ...and is the configured access key; the refresh key is not published.
    let access_public = rsa_modulus(&KEYS.access.public_pem);
    assert_eq!(key["n"].as_str().unwrap(), access_public);
    assert_ne!(key["kid"], app.refresh_kid().as_str());
}

fn rsa_modulus(public_pem: &str) -> String {
    use rsa::{RsaPublicKey, pkcs8::DecodePublicKey, traits::PublicKeyParts};
    let key = RsaPublicKey::from_public_key_pem(public_pem).unwrap();
    URL_SAFE_NO_PAD.encode(key.n().to_bytes_be())
}

async fn docs_and_spec_are_served(app: TestApp) {
    let response = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("swagger"));

    let (status, served) = status_and_json(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(spec_path("openapi.json")).unwrap()).unwrap();
    assert_eq!(served, committed, "the served spec is the committed one");

    let response = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().starts_with("openapi: 3"));

    // Protected routes document both credentials; error codes are listed.
    let me = &served["paths"]["/api/v1/users/me"]["get"];
    let schemes: Vec<&str> = me["security"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s.as_object().unwrap().keys().map(String::as_str))
        .collect();
    assert_eq!(schemes, ["BearerAuth", "CookieAuth"]);
    // Each operation lists only the statuses it can answer.
    let statuses = |operation: &Value| -> Vec<String> {
        operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(statuses(me), ["200", "401", "500", "503"]);
    let login = &served["paths"]["/api/v1/auth/login"]["post"];
    assert_eq!(
        statuses(login),
        [
            "200", "202", "400", "401", "403", "413", "415", "422", "429", "500", "503"
        ]
    );
    assert!(
        login["responses"]["401"]["description"]
            .as_str()
            .unwrap()
            .contains("`invalid_credentials`"),
        "{login}"
    );
    let ready = &served["paths"]["/health/ready"]["get"];
    assert_eq!(statuses(ready), ["200", "503"]);
    let codes = served["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap();
    for code in [
        "malformed_request",
        "invalid_token",
        "csrf_rejected",
        "validation_failed",
        "payload_too_large",
    ] {
        assert!(codes.iter().any(|c| c == code), "{code} listed");
    }
    // An unauthenticated call to a documented protected route.
    assert_error(
        app.client
            .get(app.url("/api/v1/users/me"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_session_store_when_redis_is_down() {
    crate::require!(RedisServerBinary);
    let mut redis = crate::redis_servers::OwnRedis::start();
    let url = redis.url.clone();
    let app = TestApp::spawn_with(Backend::Embedded, |s| s.redis.url = Some(url.into())).await;
    let ready = || app.client.get(app.url("/health/ready")).send();
    assert_eq!(ready().await.unwrap().status(), StatusCode::OK);
    let user = app.signed_in_user().await;

    redis.stop();
    let response = ready().await.unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let body = assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(body["error"]["details"][0]["field"], "session_store");
    assert_eq!(
        body["error"]["details"].as_array().unwrap().len(),
        1,
        "the database is up"
    );
    // Liveness does not depend on the store.
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    // A protected request cannot check revocation: 503, never a pass and never a 500.
    let response = app.me(&user.tokens().access).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
}

/// After Redis comes back (empty: it keeps nothing on disk), the service works again without a
/// restart, whichever way it reaches Redis: the shared multiplexed connection reconnects, the
/// pool replaces its dead connections.
async fn service_recovers_when_redis_comes_back(access: latchkey::store::redis::RedisAccess) {
    crate::require!(RedisServerBinary);
    let mut redis = crate::redis_servers::OwnRedis::start();
    let url = redis.url.clone();
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.redis.url = Some(url.into());
        s.redis.access = access;
    })
    .await;
    let before = app.signed_in_user().await;
    assert_eq!(
        app.me(&before.tokens().access).await.status(),
        StatusCode::OK
    );

    redis.stop();
    let down = app.me(&before.tokens().access).await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);

    redis.restart();
    // The first requests after the restart may still meet the dead connection.
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        ready = app
            .client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status();
        if ready == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, StatusCode::OK, "readiness after Redis came back");
    // The new Redis is empty: the old session is gone (401, not a pass), new logins work.
    let old = app.me(&before.tokens().access).await;
    assert_error(old, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let after = app.signed_in_user().await;
    assert_eq!(
        app.me(&after.tokens().access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_recovers_when_redis_comes_back_multiplexed() {
    service_recovers_when_redis_comes_back(latchkey::store::redis::RedisAccess::Multiplexed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_recovers_when_redis_comes_back_pooled() {
    service_recovers_when_redis_comes_back(latchkey::store::redis::RedisAccess::Pooled).await;
}

fn spec_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("openapi")
        .join(name)
}

/// The committed spec matches the generated one. `UPDATE_OPENAPI=1 cargo test` rewrites it.
#[test]
fn committed_openapi_spec_is_up_to_date() {
    let generated = [
        ("openapi.json", format!("{}\n", latchkey::api::spec_json())),
        ("openapi.yaml", latchkey::api::spec_yaml()),
    ];
    let update = std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1");
    for (name, content) in generated {
        let path = spec_path(name);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == content,
            "openapi/{name} is out of date: run `UPDATE_OPENAPI=1 cargo test committed_openapi_spec` and commit it"
        );
    }
}
