//! The second factor (API.md section 9) through the HTTP API: enrollment, the login's second
//! step, replays, recovery codes, the `mfa_token`'s limits, removal, the admin reset, `amr`,
//! two instances, and the secret sealed in the database. Codes come from the RFC 6238
//! implementation below, written from the RFC, not from the code under test.

use aws_lc_rs::hmac;
use latchkey::db::entities::totp_factor;
use reqwest::{Method, StatusCode};
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::{
    backend_tests,
    helpers::{
        Backend, TestApp, TestUser, Tokens, assert_error, assert_session_revoked, claims_of,
        set_cookies, status_and_json,
    },
};

/// RFC 4648 base32 (no padding), as authenticator apps read the secret.
fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u32, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        let index = ALPHABET.iter().position(|a| *a == c).expect("base32") as u32;
        value = (value << 5) | index;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    out
}

/// RFC 6238 with RFC 4226's dynamic truncation: HMAC-SHA-1, 30 s steps, 6 digits.
fn totp_at(secret: &[u8], unix: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &(unix / 30).to_be_bytes());
    let h = tag.as_ref();
    let offset = usize::from(h[19] & 0x0f);
    let binary = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    format!("{:06}", binary % 1_000_000)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn the_test_totp_matches_the_rfc_6238_vectors() {
    // Appendix B, SHA-1: 8-digit codes 94287082 (T=59) and 07081804 (T=1111111109).
    let secret = b"12345678901234567890";
    assert_eq!(totp_at(secret, 59), "287082");
    assert_eq!(totp_at(secret, 1_111_111_109), "081804");
    assert_eq!(base32_decode("GEZDGNBVGY3TQOJQ"), b"1234567890");
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    access: &str,
    body: Value,
) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(access)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A signed-in user with TOTP on: its secret, the step its confirmation used, and its
/// recovery codes.
struct Enrolled {
    user: TestUser,
    secret: Vec<u8>,
    /// The secret as the enrollment gave it (base32).
    secret_b32: String,
    confirmed_at: u64,
    recovery_codes: Vec<String>,
}

async fn enroll(app: &TestApp) -> Enrolled {
    let user = app.signed_in_user().await;
    let access = user.tokens().access.clone();
    let path = "/api/v1/users/me/mfa/totp";
    let response = call(
        app,
        Method::POST,
        path,
        &access,
        json!({"password": user.password}),
    )
    .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret_b32 = body["secret"].as_str().unwrap().to_owned();
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Latchkey:"), "{uri}");
    assert!(uri.contains(&format!("secret={secret_b32}")), "{uri}");
    assert!(body["qr_svg"].as_str().unwrap().contains("<svg"));
    let secret = base32_decode(&secret_b32);
    assert_eq!(secret.len(), 20);

    let confirm = "/api/v1/users/me/mfa/totp/confirm";
    let wrong = call(
        app,
        Method::POST,
        confirm,
        &access,
        json!({"code": "000000"}),
    )
    .await;
    assert_error(wrong, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let confirmed_at = now();
    let code = totp_at(&secret, confirmed_at);
    let response = call(app, Method::POST, confirm, &access, json!({"code": code})).await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let recovery_codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery_codes.len(), 10);
    Enrolled {
        user,
        secret,
        secret_b32,
        confirmed_at,
        recovery_codes,
    }
}

/// The password step: 202 with an `mfa_token`, no tokens and no cookies.
async fn password_step(app: &TestApp, user: &TestUser) -> String {
    let response = app.login(&user.email, &user.password).await;
    assert!(
        set_cookies(&response).is_empty(),
        "no cookies before the second factor"
    );
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["mfa_required"], true);
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["methods"], json!(["totp", "recovery_code"]));
    assert!(body.get("access_token").is_none());
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn second_step(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/api/v1/auth/mfa", &body).await
}

// The challenge store on every kind of Redis, TLS and cluster included.
backend_tests!(scale_out
    enrollment_turns_on_a_second_step_whose_tokens_say_otp,
    an_mfa_token_dies_after_five_wrong_codes_and_wrong_codes_slow_the_account,
);

backend_tests!(
    a_totp_code_works_once,
    recovery_codes_work_once_and_can_be_replaced,
    disabling_needs_the_password_and_a_code,
    an_admin_reset_removes_the_factor_and_ends_the_sessions,
    the_secret_is_sealed_in_the_database,
    a_password_change_or_a_disable_ends_a_waiting_second_step,
);

async fn enrollment_turns_on_a_second_step_whose_tokens_say_otp(app: TestApp) {
    let plain = app.signed_in_user().await;
    assert_eq!(claims_of(&plain.tokens().access)["amr"], json!(["pwd"]));
    let enrolled = enroll(&app).await;
    let user = &enrolled.user;
    let me: Value = app.me(&user.tokens().access).await.json().await.unwrap();
    assert_eq!(me["user"]["mfa_enabled"], true);
    let again = call(
        &app,
        Method::POST,
        "/api/v1/users/me/mfa/totp",
        &user.tokens().access,
        json!({"password": user.password}),
    )
    .await;
    assert_error(again, StatusCode::CONFLICT, "mfa_already_enabled").await;

    let token = password_step(&app, user).await;
    // The next step's code (the confirmation spent this one).
    let code = totp_at(&enrolled.secret, enrolled.confirmed_at + 30);
    let response = second_step(&app, json!({"mfa_token": token, "code": code})).await;
    let cookies = set_cookies(&response);
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(cookies.contains_key("access_token") && cookies.contains_key("refresh_token"));
    let tokens = Tokens::from_json(&body);
    assert_eq!(body["user"]["mfa_enabled"], true);
    assert_eq!(claims_of(&tokens.access)["amr"], json!(["pwd", "otp"]));
    assert_eq!(app.me(&tokens.access).await.status(), StatusCode::OK);
    // A refresh keeps how the session was signed in to.
    let (status, body) = status_and_json(app.refresh(&tokens.refresh).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refreshed = Tokens::from_json(&body);
    assert_eq!(claims_of(&refreshed.access)["amr"], json!(["pwd", "otp"]));
    assert_eq!(claims_of(&refreshed.refresh)["amr"], json!(["pwd", "otp"]));
    // The token is single use.
    let reuse = second_step(&app, json!({"mfa_token": token, "code": code})).await;
    assert_error(reuse, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
}

async fn a_totp_code_works_once(app: TestApp) {
    let enrolled = enroll(&app).await;
    let user = &enrolled.user;
    // The confirmation's own code, replayed at login.
    let token = password_step(&app, user).await;
    let confirmed = totp_at(&enrolled.secret, enrolled.confirmed_at);
    let replay = second_step(&app, json!({"mfa_token": token, "code": confirmed})).await;
    assert_error(replay, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
    // The next code works once; at two logins at the same time, exactly one gets in.
    let next = totp_at(&enrolled.secret, enrolled.confirmed_at + 30);
    let (first, second) = (
        password_step(&app, user).await,
        password_step(&app, user).await,
    );
    let (a, b) = tokio::join!(
        second_step(&app, json!({"mfa_token": first, "code": next})),
        second_step(&app, json!({"mfa_token": second, "code": next})),
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED]);
    // Wrong shapes are wrong codes, not errors.
    let token = password_step(&app, user).await;
    for code in ["12345", "abcdef", "1234567", ""] {
        let response = second_step(&app, json!({"mfa_token": token, "code": code})).await;
        let (status, body) = status_and_json(response).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{code:?}: {status} {body}"
        );
    }
}

async fn recovery_codes_work_once_and_can_be_replaced(app: TestApp) {
    let enrolled = enroll(&app).await;
    let (user, codes) = (&enrolled.user, &enrolled.recovery_codes);
    let token = password_step(&app, user).await;
    let response = second_step(&app, json!({"mfa_token": token, "recovery_code": codes[0]})).await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["amr"],
        json!(["pwd", "otp"])
    );
    let token = password_step(&app, user).await;
    let used = second_step(&app, json!({"mfa_token": token, "recovery_code": codes[0]})).await;
    assert_error(used, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
    // Typed loosely: no dashes, upper case.
    let loose = codes[1].replace('-', "").to_uppercase();
    let token = password_step(&app, user).await;
    let response = second_step(&app, json!({"mfa_token": token, "recovery_code": loose})).await;
    assert_eq!(response.status(), StatusCode::OK);

    let path = "/api/v1/users/me/mfa/recovery-codes";
    let access = &user.tokens().access;
    let body = json!({"password": user.password, "code": codes[2]});
    let (status, body) = status_and_json(call(&app, Method::POST, path, access, body).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fresh = body["recovery_codes"][0].as_str().unwrap().to_owned();
    for old in [&codes[3], &fresh] {
        let token = password_step(&app, user).await;
        let response = second_step(&app, json!({"mfa_token": token, "recovery_code": old})).await;
        let expected = if *old == fresh {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(response.status(), expected, "{old}");
    }
}

async fn an_mfa_token_dies_after_five_wrong_codes_and_wrong_codes_slow_the_account(app: TestApp) {
    let app = app
        .spawn_sibling_with(|s| s.limits.backoff.free_failures = 3)
        .await;
    let enrolled = enroll(&app).await;
    let user = &enrolled.user;
    let good = totp_at(&enrolled.secret, enrolled.confirmed_at + 30);
    let token = password_step(&app, user).await;
    if let Some(prefix) = app.redis_prefix() {
        // Five minutes in the store, under the token's digest (never the token itself).
        let keys: Vec<String> = app
            .redis_keys()
            .await
            .into_iter()
            .filter(|k| k.starts_with(&format!("{prefix}mfa:")))
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(!keys[0].contains(&token));
        let ttl = app.redis_ttl(&keys[0]).await;
        assert!((290..=300).contains(&ttl), "{ttl}");
    }
    for _ in 0..5 {
        let wrong = second_step(&app, json!({"mfa_token": token, "code": "000000"})).await;
        assert_error(wrong, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
    }
    let dead = second_step(&app, json!({"mfa_token": token, "code": good})).await;
    assert_error(dead, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
    let unknown = second_step(&app, json!({"mfa_token": "made-up", "code": good})).await;
    assert_error(unknown, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
    // Five wrong codes are five failures of the account: its next password login waits.
    let slowed = app.login(&user.email, &user.password).await;
    assert!(slowed.headers().contains_key("retry-after"));
    assert_error(slowed, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Both or neither of code and recovery_code is a field error.
    let both = second_step(
        &app,
        json!({"mfa_token": token, "code": good, "recovery_code": "x"}),
    )
    .await;
    assert_error(both, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    if let Some(prefix) = app.redis_prefix() {
        let keys = app.redis_keys().await;
        assert!(
            keys.iter()
                .all(|k| !k.starts_with(&format!("{prefix}mfa:"))),
            "{keys:?}"
        );
    }
}

async fn disabling_needs_the_password_and_a_code(app: TestApp) {
    let enrolled = enroll(&app).await;
    let user = &enrolled.user;
    let (path, access) = ("/api/v1/users/me/mfa/totp", &user.tokens().access);
    let wrong_code = json!({"password": user.password, "code": "000000"});
    let response = call(&app, Method::DELETE, path, access, wrong_code).await;
    let body = assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(body["error"]["details"][0]["field"], "code");
    let wrong_password = json!({"password": "wrong password", "code": enrolled.recovery_codes[0]});
    let response = call(&app, Method::DELETE, path, access, wrong_password).await;
    let body = assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(body["error"]["details"][0]["field"], "password");

    let code = totp_at(&enrolled.secret, enrolled.confirmed_at + 30);
    let body = json!({"password": user.password, "code": code});
    assert_eq!(
        call(&app, Method::DELETE, path, access, body.clone())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let again = call(&app, Method::DELETE, path, access, body).await;
    assert_error(again, StatusCode::CONFLICT, "mfa_not_enabled").await;
    let (status, body) = status_and_json(app.login(&user.email, &user.password).await).await;
    assert_eq!(status, StatusCode::OK, "no second step any more");
    assert_eq!(body["user"]["mfa_enabled"], false);
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["amr"],
        json!(["pwd"])
    );
    let confirm = call(
        &app,
        Method::POST,
        "/api/v1/users/me/mfa/totp/confirm",
        access,
        json!({"code": "123456"}),
    )
    .await;
    assert_error(confirm, StatusCode::CONFLICT, "mfa_not_enabled").await;
}

async fn an_admin_reset_removes_the_factor_and_ends_the_sessions(app: TestApp) {
    let enrolled = enroll(&app).await;
    let user = &enrolled.user;
    let path = format!("/api/v1/admin/users/{}/reset-mfa", user.user_id());
    let stranger = app.signed_in_user().await;
    let refused = call(
        &app,
        Method::POST,
        &path,
        &stranger.tokens().access,
        json!({}),
    )
    .await;
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;

    let admin = app.signed_in_admin().await;
    let response = call(&app, Method::POST, &path, &admin.tokens().access, json!({})).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_session_revoked(&app, user.tokens()).await;
    let (status, body) = status_and_json(app.login(&user.email, &user.password).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["mfa_enabled"], false);

    let unknown = format!("/api/v1/admin/users/{}/reset-mfa", uuid::Uuid::new_v4());
    let missing = call(
        &app,
        Method::POST,
        &unknown,
        &admin.tokens().access,
        json!({}),
    )
    .await;
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    let query = format!(
        "/api/v1/admin/audit?user_id={}&event_type=mfa_reset",
        user.user_id()
    );
    let audit = app
        .client
        .get(app.url(&query))
        .bearer_auth(&admin.tokens().access)
        .send()
        .await
        .unwrap();
    let (_, audit) = status_and_json(audit).await;
    assert_eq!(
        audit["events"][0]["detail"]["by"],
        admin.id.clone().unwrap()
    );
}

async fn the_secret_is_sealed_in_the_database(app: TestApp) {
    use latchkey::auth::mfa::SecretBox;
    let enrolled = enroll(&app).await;
    let row = totp_factor::Entity::find_by_id(enrolled.user.user_id())
        .one(app.state.db.connection())
        .await
        .unwrap()
        .unwrap();
    let hex: String = enrolled.secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!row.secret_sealed.contains(&hex));
    assert!(!row.secret_sealed.contains(&enrolled.secret_b32[..16]));
    let other = SecretBox::new(&SecretBox::generate_key(), None).unwrap();
    assert!(
        other
            .open(enrolled.user.user_id(), &row.secret_sealed)
            .is_err(),
        "another key opens nothing"
    );
    let key = app.state.settings.mfa.key.clone().expect("a key");
    let right = SecretBox::new(&key, None).unwrap();
    assert_eq!(
        right
            .open(enrolled.user.user_id(), &row.secret_sealed)
            .unwrap(),
        enrolled.secret
    );
    // Recovery codes are stored as digests only.
    use latchkey::db::entities::recovery_code;
    let stored = recovery_code::Entity::find()
        .all(app.state.db.connection())
        .await
        .unwrap();
    let plain = enrolled.recovery_codes[0].replace('-', "");
    assert!(stored.iter().all(|c| !c.code_hash.contains(&plain)));
}

async fn a_password_change_or_a_disable_ends_a_waiting_second_step(app: TestApp) {
    let enrolled = enroll(&app).await;
    let user = &enrolled.user;
    let code = totp_at(&enrolled.secret, enrolled.confirmed_at + 30);
    let token = password_step(&app, user).await;
    let change = json!({"current_password": user.password, "new_password": "a changed password"});
    let path = "/api/v1/users/me/password";
    let response = call(&app, Method::POST, path, &user.tokens().access, change).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let stale = second_step(&app, json!({"mfa_token": token, "code": code})).await;
    assert_error(stale, StatusCode::UNAUTHORIZED, "mfa_invalid").await;

    let response = app.login(&user.email, "a changed password").await;
    let token = status_and_json(response).await.1["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = app.signed_in_admin().await;
    let path = format!("/api/v1/admin/users/{}", user.user_id());
    let response = call(
        &app,
        Method::PATCH,
        &path,
        &admin.tokens().access,
        json!({"disabled": true}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let disabled = second_step(&app, json!({"mfa_token": token, "code": code})).await;
    assert_error(disabled, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
}

/// A login's second step started on one instance finishes on another (shared store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_started_on_one_instance_finishes_on_another() {
    crate::require!(PostgresRedis);
    let app = TestApp::spawn(Backend::PostgresRedis).await;
    let sibling = app.spawn_sibling().await;
    let enrolled = enroll(&app).await;
    let token = password_step(&app, &enrolled.user).await;
    let code = totp_at(&enrolled.secret, enrolled.confirmed_at + 30);
    let response = second_step(&sibling, json!({"mfa_token": token, "code": code})).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The step is spent for both.
    let token = password_step(&sibling, &enrolled.user).await;
    let replay = second_step(&app, json!({"mfa_token": token, "code": code})).await;
    assert_error(replay, StatusCode::UNAUTHORIZED, "mfa_invalid").await;
}

/// The command line: re-sealing every secret after a key rotation (the runbook in the
/// README), and an operator's reset of a user's second factor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mfa_key_rotates_with_reseal_and_the_cli_resets_a_factor() {
    use latchkey::auth::mfa::SecretBox;
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cli.db?mode=rwc", dir.path().display());
    let (old, new) = (SecretBox::generate_key(), SecretBox::generate_key());
    let with_key = |key: &secrecy::SecretString, previous: Option<&secrecy::SecretString>| {
        let (url, key) = (url.clone(), key.clone());
        let previous = previous.cloned();
        move |s: &mut latchkey::config::Settings| {
            s.database.url = url.into();
            s.mfa.key = Some(key);
            s.mfa.previous_key = previous;
        }
    };
    let app = TestApp::spawn_with(Backend::Embedded, with_key(&old, None)).await;
    let enrolled = enroll(&app).await;
    drop(app);

    let env = [
        ("DATABASE_URL", url.as_str()),
        ("MFA_ENCRYPTION_KEY", new.expose_secret()),
        ("MFA_ENCRYPTION_KEY_PREVIOUS", old.expose_secret()),
    ];
    let output = crate::cli::latchkey(dir.path(), &["mfa", "reseal"], &env, "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("1 TOTP secret(s) re-sealed"), "{stdout}");

    // The new key alone opens the secret now.
    let app = TestApp::spawn_with(Backend::Embedded, with_key(&new, None)).await;
    let token = password_step(&app, &enrolled.user).await;
    let code = totp_at(&enrolled.secret, enrolled.confirmed_at + 30);
    let response = second_step(&app, json!({"mfa_token": token, "code": code})).await;
    assert_eq!(response.status(), StatusCode::OK);

    let args = ["user", "reset-mfa", "--email", &enrolled.user.email];
    let output = crate::cli::latchkey(dir.path(), &args, &env[..1], "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, body) = status_and_json(
        app.login(&enrolled.user.email, &enrolled.user.password)
            .await,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "no second step after the reset: {body}"
    );
    let output = crate::cli::latchkey(
        dir.path(),
        &["user", "reset-mfa", "--email", "nobody@example.com"],
        &env[..1],
        "",
    );
    assert!(!output.status.success());
}
