//! `examples/products_service.rs`, the service other services copy, against a real Latchkey:
//! both are real HTTP servers on port 0, the products service with its own SQLite file.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use latchkey::auth::keys::{self, KeyKind, KeyPaths, KeySource, ManifestEntry, RotationPolicy};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{
        Backend, KEYS, NEXT_KEYS, TestApp, claims_of, kid_of, sign_rs256, status_and_json,
        write_key_dir,
    },
    products_service::{Running, VerifierConfig, serve},
};

/// The products service with its own database, trusting `app` by its issuer URL alone.
struct Products {
    running: Running,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Products {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.running
    }
}

async fn start_verifier(app: &TestApp, min_refetch: Duration) -> Products {
    let issuer = &app.state.settings.tokens.issuer;
    assert_eq!(
        issuer, &app.address,
        "the issuer defaults to the public URL"
    );
    let mut config = VerifierConfig::new(issuer);
    config.min_refetch_interval = min_refetch;
    let dir = tempfile::tempdir().unwrap();
    let database = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("products.db").display()
    );
    let running = serve(config, &database, "127.0.0.1:0")
        .await
        .expect("the products service starts");
    Products { running, _dir: dir }
}

async fn call(running: &Running, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(format!("http://{}/api/v1/whoami", running.addr));
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
        .get(format!("http://{}/api/v1/whoami", running.addr))
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
async fn products_example_accepts_latchkey_tokens_and_rejects_forgeries() {
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
async fn products_example_refetches_the_jwks_on_a_new_kid() {
    // The verifier may cache for an hour: only an unknown kid makes it ask again.
    let (app, paths, _dir) = latchkey_with_key_dir(Duration::from_secs(3600)).await;
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
    let entry = rotate_access_now(&paths, 900, 30);
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
async fn products_example_keeps_working_from_cache_while_latchkey_is_stopped() {
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
    verifier.running.stop().await;
}

/// Latchkey reading its keys from a directory every second, its JWKS cacheable for `max_age`.
async fn latchkey_with_key_dir(max_age: Duration) -> (TestApp, KeyPaths, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_key_dir(&dir.path().join("keys"), &KEYS.access, &KEYS.refresh);
    let source = KeySource::Files(paths.clone());
    let app = TestApp::spawn_with(Backend::Embedded, move |s| {
        s.keys.source = source;
        s.keys.reload_every = Duration::from_secs(1);
        s.keys.jwks_max_age = max_age;
    })
    .await;
    (app, paths, dir)
}

/// A new access key that signs at once; the old one retires after `token_ttl + leeway` seconds.
fn rotate_access_now(paths: &KeyPaths, token_ttl_secs: i64, leeway_secs: i64) -> ManifestEntry {
    let policy = RotationPolicy {
        delay_secs: 0,
        token_ttl_secs,
        leeway_secs,
    };
    keys::rotate(
        paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &policy,
        Utc::now(),
    )
    .unwrap()
}

/// A request to the products API, with an optional bearer token.
async fn products(
    running: &Running,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("http://{}/api/v1{path}", running.addr);
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    if response.status() == StatusCode::NO_CONTENT {
        return (StatusCode::NO_CONTENT, Value::Null);
    }
    status_and_json(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_example_enforces_ownership_with_an_admin_override() {
    use reqwest::Method;
    let app = TestApp::spawn(Backend::Embedded).await;
    let service = start_verifier(&app, Duration::from_millis(200)).await;
    let owner = app.signed_in_user().await;
    let other = app.signed_in_user().await;
    // The role claim is set at login: an admin's token comes from a login after the change.
    let admin = app.signed_in_admin().await;
    let admin_access = {
        let response = app.login(&admin.email, &admin.password).await;
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    };
    assert_eq!(claims_of(&admin_access)["role"], "admin");

    let tea = json!({"name": "Tea", "price_cents": 450});
    let (status, body) =
        products(&service, Method::POST, "/products", None, Some(tea.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "missing_token");
    let owner_access = owner.tokens().access.as_str();
    let (status, created) = products(
        &service,
        Method::POST,
        "/products",
        Some(owner_access),
        Some(tea),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["owner_id"], owner.user_id().to_string());
    let path = format!("/products/{}", created["id"].as_str().unwrap());

    // Anyone reads; the list counts it.
    let (status, read) = products(&service, Method::GET, &path, None, None).await;
    assert_eq!((status, &read["name"]), (StatusCode::OK, &json!("Tea")));
    let (_, page) = products(&service, Method::GET, "/products", None, None).await;
    assert_eq!(page["total"], 1, "{page}");

    // Another signed-in user can neither change nor delete it.
    let other_access = other.tokens().access.as_str();
    let change = json!({"price_cents": 1});
    let (status, body) = products(
        &service,
        Method::PATCH,
        &path,
        Some(other_access),
        Some(change),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = products(&service, Method::DELETE, &path, Some(other_access), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, read) = products(&service, Method::GET, &path, None, None).await;
    assert_eq!(read["price_cents"], 450, "the refused change left no trace");

    // The owner changes it; bad input is refused with a JSON error.
    let change = json!({"price_cents": 500});
    let (status, body) = products(
        &service,
        Method::PATCH,
        &path,
        Some(owner_access),
        Some(change),
    )
    .await;
    assert_eq!(
        (status, &body["price_cents"]),
        (StatusCode::OK, &json!(500))
    );
    let bad = json!({"price_cents": -1});
    let (status, body) = products(
        &service,
        Method::PATCH,
        &path,
        Some(owner_access),
        Some(bad),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let (status, body) = products(&service, Method::GET, "/products/not-a-uuid", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");

    // An admin's token overrides ownership.
    let (status, _) = products(&service, Method::DELETE, &path, Some(&admin_access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = products(&service, Method::GET, &path, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_example_refuses_tokens_of_a_pruned_key() {
    let (app, paths, _dir) = latchkey_with_key_dir(Duration::from_secs(1)).await;
    let verifier = start_verifier(&app, Duration::from_millis(200)).await;
    let old = app.signed_in_user().await;
    assert_eq!(
        call(&verifier, Some(&old.tokens().access)).await.0,
        StatusCode::OK
    );

    // Rotated with no grace (zero token lifetime and leeway), so the old key is prunable at once.
    let entry = rotate_access_now(&paths, 0, 0);
    let pruned = keys::prune(&paths, Utc::now() + chrono::Duration::seconds(2)).unwrap();
    assert_eq!(pruned.len(), 1, "the old access key is pruned");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.jwks_kids().await != vec![entry.kid.clone()] {
        assert!(
            Instant::now() < deadline,
            "Latchkey never dropped the old key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the verifier's one-second cache: its next fetch no longer holds the old key.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = call(&verifier, Some(&old.tokens().access)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token");
    let new = app.signed_in_user().await;
    assert_eq!(kid_of(&new.tokens().access), entry.kid);
    assert_eq!(
        call(&verifier, Some(&new.tokens().access)).await.0,
        StatusCode::OK
    );
}
