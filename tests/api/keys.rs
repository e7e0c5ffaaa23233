//! Several keys per kind: staged rotation, reload of the key directory, pruning, and the
//! production refusals for every key (API.md sections 2 and 7).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use latchkey::{
    auth::keys::{
        self, KeyKind, KeyPaths, KeySource, Keys, LoadRules, Manifest, ManifestEntry,
        RotationPolicy,
    },
    config::Settings,
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Backend, KEYS, NEXT_KEYS, PemPair, SHORT_KEYS, TestApp, assert_error, captured_logs, claims_of,
    kid_of, status_and_json, write_key_dir,
};

/// A server on a key directory holding `KEYS` as a single-key setup, re-read every second.
pub async fn spawn_on_key_dir(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, tempfile::TempDir, KeyPaths) {
    let dir = tempfile::tempdir().expect("temp dir");
    let paths = write_key_dir(&dir.path().join("keys"), &KEYS.access, &KEYS.refresh);
    let source = KeySource::Files(paths.clone());
    let app = TestApp::spawn_with(backend, move |s| {
        s.keys.source = source;
        s.keys.reload_every = Duration::from_secs(1);
        configure(s);
    })
    .await;
    (app, dir, paths)
}

fn policy(app: &TestApp, kind: KeyKind, delay_secs: i64) -> RotationPolicy {
    let settings = &app.state.settings;
    RotationPolicy {
        delay_secs,
        token_ttl_secs: match kind {
            KeyKind::Access => settings.tokens.access_ttl_secs(),
            KeyKind::Refresh => settings.tokens.refresh_ttl_secs(),
        },
        leeway_secs: settings.tokens.leeway.as_secs() as i64,
    }
}

/// Rotates `kind` of the app's key directory to `pair`, as `latchkey keys rotate` does.
pub fn rotate(
    app: &TestApp,
    paths: &KeyPaths,
    kind: KeyKind,
    pair: &PemPair,
    delay_secs: i64,
) -> ManifestEntry {
    keys::rotate(
        paths,
        kind,
        &pair.generated(),
        &policy(app, kind, delay_secs),
        Utc::now(),
    )
    .expect("rotate")
}

/// Waits (at most 10 s) until the running app holds the key `kid`.
pub async fn wait_for_reload(app: &TestApp, kind: KeyKind, kid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.tokens.keys().find(kind, kid).is_none() {
        assert!(Instant::now() < deadline, "the key {kid} was never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn sleep_until(t: DateTime<Utc>) {
    let wait = (t - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
}

crate::per_backend_tests!(
    tokens_signed_before_a_rotation_keep_verifying_after_it,
    a_new_key_is_in_the_jwks_before_it_signs_anything,
    after_the_switch_new_tokens_carry_the_new_kid,
    prune_removes_only_keys_whose_tokens_have_all_expired,
    a_broken_key_directory_keeps_the_previous_keys,
);

async fn tokens_signed_before_a_rotation_keep_verifying_after_it(backend: Backend) {
    let (app, _dir, paths) = spawn_on_key_dir(backend, |_| {}).await;
    let user = app.signed_in_user().await;
    let old = user.tokens().clone();
    assert_eq!(kid_of(&old.access), KEYS.access.kid());
    assert_eq!(kid_of(&old.refresh), KEYS.refresh.kid());

    // Both kinds rotate, taking over at once.
    let access = rotate(&app, &paths, KeyKind::Access, &NEXT_KEYS.0, 0);
    let refresh = rotate(&app, &paths, KeyKind::Refresh, &NEXT_KEYS.1, 0);
    wait_for_reload(&app, KeyKind::Access, &access.kid).await;
    wait_for_reload(&app, KeyKind::Refresh, &refresh.kid).await;
    assert_eq!(app.access_kid(), access.kid);

    // The old access token still works, and the old refresh token still refreshes.
    let (status, body) = status_and_json(app.me(&old.access).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = status_and_json(app.refresh(&old.refresh).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_access = body["access_token"].as_str().unwrap();
    assert_eq!(kid_of(new_access), access.kid);
    assert_eq!(kid_of(body["refresh_token"].as_str().unwrap()), refresh.kid);
    assert_eq!(app.me(new_access).await.status(), StatusCode::OK);
    // The replaced access key stays published while its tokens may be valid; refresh keys
    // are never published.
    let published = app.jwks_kids().await;
    assert!(published.contains(&KEYS.access.kid()), "{published:?}");
    assert!(published.contains(&access.kid), "{published:?}");
    assert!(!published.contains(&refresh.kid), "{published:?}");
    assert!(!published.contains(&KEYS.refresh.kid()), "{published:?}");
}

async fn a_new_key_is_in_the_jwks_before_it_signs_anything(backend: Backend) {
    let (app, _dir, paths) = spawn_on_key_dir(backend, |_| {}).await;
    let entry = rotate(&app, &paths, KeyKind::Access, &NEXT_KEYS.0, 6);
    // Published within a reload, well before it signs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if app.jwks_kids().await.contains(&entry.kid) {
            break;
        }
        assert!(Instant::now() < deadline, "the new key was never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = Utc::now();
    assert!(
        seen < entry.signs_from,
        "the JWKS published the key at {seen}, before it signs at {}",
        entry.signs_from
    );
    // Meanwhile every token is signed by the old key: nothing carries the new kid yet.
    let user = app.signed_in_user().await;
    let iat = claims_of(&user.tokens().access)["iat"].as_i64().unwrap();
    assert!(iat < entry.signs_from.timestamp());
    assert_eq!(kid_of(&user.tokens().access), KEYS.access.kid());
    let published = app.jwks_kids().await;
    assert_eq!(published.len(), 2, "{published:?}");
}

async fn after_the_switch_new_tokens_carry_the_new_kid(backend: Backend) {
    let (app, _dir, paths) = spawn_on_key_dir(backend, |_| {}).await;
    let before = app.signed_in_user().await;
    let untouched = app.signed_in_user().await;
    let entry = rotate(&app, &paths, KeyKind::Access, &NEXT_KEYS.0, 2);
    wait_for_reload(&app, KeyKind::Access, &entry.kid).await;
    sleep_until(entry.signs_from).await;

    let after = app.signed_in_user().await;
    assert_eq!(kid_of(&after.tokens().access), entry.kid);
    // A session from before the switch gets the new kid on its next refresh.
    let (status, body) = status_and_json(app.refresh(&before.tokens().refresh).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(kid_of(body["access_token"].as_str().unwrap()), entry.kid);
    // Both generations verify (the refresh above revoked `before`'s old access token, by
    // design; `untouched` keeps its pre-switch token).
    assert_eq!(kid_of(&untouched.tokens().access), KEYS.access.kid());
    assert_eq!(
        app.me(&untouched.tokens().access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&after.tokens().access).await.status(),
        StatusCode::OK
    );
}

async fn prune_removes_only_keys_whose_tokens_have_all_expired(backend: Backend) {
    let (app, _dir, paths) = spawn_on_key_dir(backend, |_| {}).await;
    let user = app.signed_in_user().await;
    let old = user.tokens().clone();
    let entry = rotate(&app, &paths, KeyKind::Access, &NEXT_KEYS.0, 0);
    wait_for_reload(&app, KeyKind::Access, &entry.kid).await;

    let manifest = Manifest::read(&paths.dir).unwrap();
    let retired = manifest
        .keys
        .iter()
        .find(|k| k.kid == KEYS.access.kid())
        .expect("the old access key is in the manifest");
    let retires_at = retired.retires_at.expect("the replaced key retires");
    // Retirement waits for the last token the old key signed, leeway included.
    let exp = claims_of(&old.access)["exp"].as_i64().unwrap();
    let leeway = app.state.settings.tokens.leeway.as_secs() as i64;
    assert!(
        retires_at.timestamp() >= exp + leeway,
        "retires at {retires_at}, but a token verifies until {}",
        exp + leeway
    );

    // Before that moment nothing is pruned, so the old token keeps working.
    let removed = keys::prune(&paths, retires_at - chrono::Duration::seconds(1)).unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert!(paths.access_private.exists());
    assert_eq!(app.me(&old.access).await.status(), StatusCode::OK);

    // At it, only the old access key goes: not the new one, not the refresh key.
    let removed = keys::prune(&paths, retires_at).unwrap();
    assert_eq!(
        removed.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        vec![KEYS.access.kid()]
    );
    assert!(!paths.access_private.exists());
    assert!(!paths.access_public.exists());
    assert!(paths.refresh_private.exists());
    let left = Manifest::read(&paths.dir).unwrap();
    assert_eq!(left.keys.len(), 2);
    assert!(paths.dir.join(&entry.private_key).exists());

    // The running service drops the pruned key: it leaves the JWKS, and a token naming it
    // (an unknown kid now) is rejected, although its signature and lifetime are fine.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app
        .state
        .tokens
        .keys()
        .find(KeyKind::Access, &KEYS.access.kid())
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the pruned key was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.jwks_kids().await, vec![entry.kid.clone()]);
    assert_error(
        app.me(&old.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // The refresh key was not touched: the session refreshes onto the new access key.
    let (status, body) = status_and_json(app.refresh(&old.refresh).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(kid_of(body["access_token"].as_str().unwrap()), entry.kid);
}

async fn a_broken_key_directory_keeps_the_previous_keys(backend: Backend) {
    let (app, _dir, paths) = spawn_on_key_dir(backend, |_| {}).await;
    let user = app.signed_in_user().await;
    let entry = rotate(&app, &paths, KeyKind::Access, &NEXT_KEYS.0, 0);
    wait_for_reload(&app, KeyKind::Access, &entry.kid).await;
    let published = app.jwks_kids().await;

    // An operator breaks the new key's file.
    std::fs::write(paths.dir.join(&entry.private_key), "not a key").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let broken = paths.dir.join(&entry.private_key).display().to_string();
    while !captured_logs()
        .lines()
        .any(|l| l.contains("key reload failed") && l.contains(&broken))
    {
        assert!(Instant::now() < deadline, "no reload error was logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Nothing changed for clients.
    assert_eq!(app.jwks_kids().await, published);
    assert_eq!(app.me(&user.tokens().access).await.status(), StatusCode::OK);
    let again = app.signed_in_user().await;
    assert_eq!(kid_of(&again.tokens().access), entry.kid);
    assert_eq!(
        app.me(&again.tokens().access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_is_rejected_even_with_a_valid_signature() {
    let (app, _dir, paths) = spawn_on_key_dir(Backend::Embedded, |_| {}).await;
    let user = app.signed_in_user().await;
    // A token whose header names a key of the wrong kind, or no key we hold.
    let claims: Value = Value::Object(claims_of(&user.tokens().access));
    for kid in [KEYS.refresh.kid(), NEXT_KEYS.0.kid(), "nope".to_owned()] {
        let token = crate::helpers::sign_rs256(&claims, &KEYS.access.encoding_key(), &kid);
        assert_error(
            app.me(&token).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    // Once the key is in the set (pending, not signing yet), a token it signed verifies by kid.
    let entry = rotate(&app, &paths, KeyKind::Access, &NEXT_KEYS.0, 3600);
    wait_for_reload(&app, KeyKind::Access, &entry.kid).await;
    let token = crate::helpers::sign_rs256(&claims, &NEXT_KEYS.0.encoding_key(), &entry.kid);
    assert_eq!(app.me(&token).await.status(), StatusCode::OK);
    // ...but not when it names another key.
    let token =
        crate::helpers::sign_rs256(&claims, &NEXT_KEYS.0.encoding_key(), &KEYS.access.kid());
    assert_error(
        app.me(&token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_environment_are_a_single_key_setup() {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let vars = [
        ("ACCESS_TOKEN_PRIVATE_KEY", &KEYS.access.private_pem),
        ("ACCESS_TOKEN_PUBLIC_KEY", &KEYS.access.public_pem),
        ("REFRESH_TOKEN_PRIVATE_KEY", &KEYS.refresh.private_pem),
        ("REFRESH_TOKEN_PUBLIC_KEY", &KEYS.refresh.public_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), STANDARD.encode(v)))
    .collect();
    let env_keys = Settings::from_vars(&vars).expect("settings").keys.source;
    let app = TestApp::spawn_with(Backend::Embedded, move |s| s.keys.source = env_keys).await;
    assert_eq!(app.jwks_kids().await, vec![KEYS.access.kid()]);
    assert_eq!(app.state.tokens.keys().all(KeyKind::Access).len(), 1);
    assert_eq!(app.state.tokens.keys().all(KeyKind::Refresh).len(), 1);
    let user = app.signed_in_user().await;
    assert_eq!(kid_of(&user.tokens().access), KEYS.access.kid());
    assert_eq!(kid_of(&user.tokens().refresh), KEYS.refresh.kid());
    assert_eq!(app.me(&user.tokens().access).await.status(), StatusCode::OK);
}

fn load(paths: &KeyPaths) -> Result<Keys, String> {
    let rules = LoadRules {
        generate_missing: false,
        owner_only: true,
    };
    Keys::load(&KeySource::Files(paths.clone()), rules).map_err(|e| e.to_string())
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
    let mut manifest = Manifest::read(dir).unwrap();
    edit(&mut manifest);
    manifest.write(dir).unwrap();
}

#[test]
fn production_refusals_hold_for_every_key_in_the_manifest() {
    let policy = RotationPolicy {
        delay_secs: 0,
        token_ttl_secs: 900,
        leeway_secs: 30,
    };
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_key_dir(&dir.path().join("keys"), &KEYS.access, &KEYS.refresh);
        (dir, paths)
    };

    // A good rotated directory loads, in production too.
    let (_dir, paths) = fresh();
    keys::rotate(
        &paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &policy,
        Utc::now(),
    )
    .unwrap();
    let keys = load(&paths).expect("a valid rotated directory");
    assert_eq!(keys.all(KeyKind::Access).len(), 2);

    // A short key: `keys rotate` refuses it at once, in every environment (aws-lc cannot sign
    // with an RSA key under 2048 bits), and nothing is written.
    let (_dir, paths) = fresh();
    let message = keys::rotate(
        &paths,
        KeyKind::Refresh,
        &SHORT_KEYS.0.generated(),
        &policy,
        Utc::now(),
    )
    .expect_err("refused")
    .to_string();
    assert!(
        message.contains("1024 bits") && message.contains("at least 2048"),
        "{message}"
    );
    assert!(load(&paths).is_ok(), "the directory is untouched");

    // The same pair listed for both kinds.
    let (_dir, paths) = fresh();
    keys::rotate(
        &paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &policy,
        Utc::now(),
    )
    .unwrap();
    edit_manifest(&paths.dir, |m| {
        let mut copy = m.keys[2].clone();
        copy.kind = KeyKind::Refresh;
        m.keys.push(copy);
    });
    let message = load(&paths).err().expect("refused");
    assert!(
        message.contains("the access and refresh key pairs are the same"),
        "{message}"
    );

    // A public key that does not match its private key.
    let (_dir, paths) = fresh();
    let entry = keys::rotate(
        &paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &policy,
        Utc::now(),
    )
    .unwrap();
    std::fs::write(paths.dir.join(&entry.public_key), &KEYS.stranger.public_pem).unwrap();
    let message = load(&paths).err().expect("refused");
    assert!(
        message.contains("access public key does not match"),
        "{message}"
    );

    // A missing file, and a file replaced behind the manifest's back.
    let (_dir, paths) = fresh();
    let entry = keys::rotate(
        &paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &policy,
        Utc::now(),
    )
    .unwrap();
    std::fs::remove_file(paths.dir.join(&entry.private_key)).unwrap();
    let message = load(&paths).err().expect("refused");
    assert!(message.contains("unreadable"), "{message}");
    std::fs::write(
        paths.dir.join(&entry.private_key),
        &KEYS.stranger.private_pem,
    )
    .unwrap();
    std::fs::write(paths.dir.join(&entry.public_key), &KEYS.stranger.public_pem).unwrap();
    // Written anew, the private file is readable by others: production refuses that first.
    let message = load(&paths).err().expect("refused");
    assert!(
        message.contains("its group or others can read it"),
        "{message}"
    );
    assert!(message.contains("chmod 600"), "{message}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = paths.dir.join(&entry.private_key);
        std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let message = load(&paths).err().expect("refused");
    assert!(message.contains("not the"), "{message}");

    // A manifest that is not JSON, and one where no key signs yet.
    let (_dir, paths) = fresh();
    keys::rotate(
        &paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &policy,
        Utc::now(),
    )
    .unwrap();
    edit_manifest(&paths.dir, |m| {
        for key in &mut m.keys {
            key.signs_from = Utc::now() + chrono::Duration::hours(1);
        }
    });
    let message = load(&paths).err().expect("refused");
    assert!(message.contains("signs yet"), "{message}");
    std::fs::write(paths.dir.join(keys::MANIFEST_FILE), "{ not json").unwrap();
    let message = load(&paths).err().expect("refused");
    assert!(message.contains("not a valid key manifest"), "{message}");
}

#[test]
fn rotation_schedules_retirement_and_list_shows_each_state() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_key_dir(&dir.path().join("keys"), &KEYS.access, &KEYS.refresh);
    let now = Utc::now();
    let policy = RotationPolicy {
        delay_secs: 360,
        token_ttl_secs: 900,
        leeway_secs: 30,
    };
    let entry = keys::rotate(
        &paths,
        KeyKind::Access,
        &NEXT_KEYS.0.generated(),
        &policy,
        now,
    )
    .unwrap();
    assert_eq!(entry.signs_from.timestamp(), now.timestamp() + 360);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.dir.join(&entry.private_key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "rotated private keys are 0600");
    }
    let manifest = Manifest::read(&paths.dir).unwrap();
    let old = manifest
        .keys
        .iter()
        .position(|k| k.kid == KEYS.access.kid())
        .unwrap();
    let new = manifest
        .keys
        .iter()
        .position(|k| k.kid == entry.kid)
        .unwrap();
    let refresh = manifest
        .keys
        .iter()
        .position(|k| k.kid == KEYS.refresh.kid())
        .unwrap();
    assert_eq!(
        manifest.keys[old].retires_at.unwrap().timestamp(),
        now.timestamp() + 360 + 900 + 30
    );
    assert_eq!(manifest.keys[refresh].retires_at, None);

    use latchkey::auth::keys::KeyState::*;
    let at = |secs: i64| now + chrono::Duration::seconds(secs);
    assert_eq!(manifest.state(old, at(0)), Signing);
    assert_eq!(manifest.state(new, at(0)), Pending);
    assert_eq!(manifest.state(old, at(361)), Retiring);
    assert_eq!(manifest.state(new, at(361)), Signing);
    assert_eq!(manifest.state(old, at(360 + 930 + 1)), Expired);
    assert_eq!(manifest.state(refresh, at(100_000)), Signing);

    let table = latchkey::cli::list_keys(&manifest, at(0));
    assert!(
        table.contains("pending") && table.contains("signing"),
        "{table}"
    );
    assert!(table.contains(&entry.kid), "{table}");

    // The loaded set: the old key signs until the switch, then the new one.
    let keys = load(&paths).unwrap();
    assert_eq!(
        keys.signing_at(KeyKind::Access, now.timestamp())
            .unwrap()
            .kid,
        KEYS.access.kid()
    );
    assert_eq!(
        keys.signing_at(KeyKind::Access, now.timestamp() + 360)
            .unwrap()
            .kid,
        entry.kid
    );

    // `keys generate` no longer applies to a rotating directory.
    let refused = keys::generate_key_dir(&paths.dir, 2048, true)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("keys rotate"), "{refused}");
}
