//! The `latchkey` binary itself: key generation, the first admin, and startup refusals.

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use reqwest::StatusCode;

use crate::helpers::{Backend, TestApp, status_and_json};

/// Runs the binary in `dir` with only `env` set, `stdin` piped in.
pub fn latchkey(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run latchkey");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("latchkey output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_create_makes_the_first_admin_who_can_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cli.db?mode=rwc", dir.path().display());
    let output = latchkey(
        dir.path(),
        &[
            "user",
            "create",
            "--email",
            " Root@Example.COM ",
            "--name",
            "Root",
            "--role",
            "admin",
            "--verified",
        ],
        &[("DATABASE_URL", &url)],
        "an admin password\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("root@example.com (admin"), "{stdout}");
    assert!(stdout.contains("address verified"), "{stdout}");

    let app = TestApp::spawn_with(Backend::Embedded, |s| s.database.url = url.clone().into()).await;
    let (status, body) =
        status_and_json(app.login("root@example.com", "an admin password").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["role"], "admin");
    assert_eq!(body["user"]["email_verified"], true, "--verified");

    // An operator changes a role; the change applies to the next login's token and the
    // user row at once.
    let output = latchkey(
        dir.path(),
        &[
            "user",
            "set-role",
            "--email",
            "ROOT@example.com",
            "--role",
            "user",
        ],
        &[("DATABASE_URL", &url)],
        "",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("root@example.com is now user"));
    let (_, me) = status_and_json(app.me(body["access_token"].as_str().unwrap()).await).await;
    assert_eq!(me["user"]["role"], "user");
    let output = latchkey(
        dir.path(),
        &[
            "user",
            "set-role",
            "--email",
            "nobody@example.com",
            "--role",
            "admin",
        ],
        &[("DATABASE_URL", &url)],
        "",
    );
    assert!(!output.status.success());

    // The same email again is refused.
    let output = latchkey(
        dir.path(),
        &[
            "user",
            "create",
            "--email",
            "root@example.com",
            "--name",
            "Again",
        ],
        &[("DATABASE_URL", &url)],
        "another password\n",
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}

#[test]
fn user_create_refuses_a_short_password_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cli.db?mode=rwc", dir.path().display());
    let output = latchkey(
        dir.path(),
        &["user", "create", "--email", "a@example.com", "--name", "A"],
        &[("DATABASE_URL", &url)],
        "short\n",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("password: must be at least 8 characters"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("FieldError"),
        "no Rust debug output: {stderr}"
    );
    assert!(
        !stderr.contains("short"),
        "the password is not echoed: {stderr}"
    );

    // Nothing at all on standard input is its own mistake, said as such.
    let output = latchkey(
        dir.path(),
        &["user", "create", "--email", "a@example.com", "--name", "A"],
        &[("DATABASE_URL", &url)],
        "",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no password on standard input"), "{stderr}");
}

#[test]
fn keys_generate_writes_0600_private_keys_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let output = latchkey(
        dir.path(),
        &["keys", "generate", "--dir", "k", "--bits", "2048"],
        &[],
        "",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let keys = dir.path().join("k");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for name in ["access_private.pem", "refresh_private.pem", "mfa.key"] {
            let mode = std::fs::metadata(keys.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
    // A fresh directory lists both keys with the dates they were made.
    let output = latchkey(dir.path(), &["keys", "list", "--dir", "k"], &[], "");
    let listed = String::from_utf8_lossy(&output.stdout);
    let year = chrono::Utc::now().format("%Y-").to_string();
    for kind in ["access", "refresh"] {
        let line = listed.lines().find(|l| l.starts_with(kind)).expect(kind);
        assert!(line.contains("signing"), "{listed}");
        assert_eq!(
            line.matches(&year).count(),
            2,
            "created and signs-from dates: {listed}"
        );
    }

    let before = std::fs::read(keys.join("access_private.pem")).unwrap();
    let mfa_key = std::fs::read(keys.join("mfa.key")).unwrap();
    // A container's first start generates, every later one finds the keys and goes on.
    let output = latchkey(
        dir.path(),
        &["keys", "generate", "--dir", "k", "--if-missing"],
        &[],
        "",
    );
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("nothing to do"));
    assert_eq!(
        std::fs::read(keys.join("access_private.pem")).unwrap(),
        before
    );
    let output = latchkey(dir.path(), &["keys", "generate", "--dir", "k"], &[], "");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(keys.join("access_private.pem")).unwrap(),
        before
    );

    let output = latchkey(
        dir.path(),
        &["keys", "generate", "--dir", "k", "--force"],
        &[],
        "",
    );
    assert!(output.status.success());
    assert_ne!(
        std::fs::read(keys.join("access_private.pem")).unwrap(),
        before
    );
    // The MFA key survives --force (replacing it would lose every enrolled secret), and a key
    // directory from before it existed gets one with --if-missing.
    assert_eq!(std::fs::read(keys.join("mfa.key")).unwrap(), mfa_key);
    std::fs::remove_file(keys.join("mfa.key")).unwrap();
    let output = latchkey(
        dir.path(),
        &["keys", "generate", "--dir", "k", "--if-missing"],
        &[],
        "",
    );
    assert!(output.status.success());
    let key = std::fs::read_to_string(keys.join("mfa.key")).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .unwrap();
    assert_eq!(bytes.len(), 32);
}

#[test]
fn production_startup_refusal_exits_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let output = latchkey(
        dir.path(),
        &["serve"],
        &[
            ("APP_ENV", "production"),
            ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
        ],
        "",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("REDIS_URL is not set"), "{stderr}");
    assert_eq!(
        stderr.matches("REDIS_URL is not set").count(),
        1,
        "said once: {stderr}"
    );
    // Nothing was created in the working directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn openapi_command_prints_the_committed_spec() {
    let dir = tempfile::tempdir().unwrap();
    let output = latchkey(dir.path(), &["openapi"], &[], "");
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json"))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), committed);
}

/// The README's key rotation runbook, command by command.
#[test]
fn keys_rotate_list_and_prune_follow_the_runbook() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = latchkey(dir.path(), args, env, "");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["keys", "generate", "--dir", "keys"], &[]);
    let old = latchkey::auth::keys::Manifest::read_or_describe(
        &latchkey::auth::keys::KeyPaths::in_dir(dir.path().join("keys")),
    )
    .unwrap();
    let old_access = old.keys[0].kid.clone();

    // Default delay: JWKS_MAX_AGE (300) + 60 seconds before the new key signs.
    let before = chrono::Utc::now().timestamp();
    let out = run(
        &["keys", "rotate", "--kind", "refresh", "--dir", "keys"],
        &[],
    );
    assert!(out.contains("added refresh key"), "{out}");
    let manifest = latchkey::auth::keys::Manifest::read(&dir.path().join("keys")).unwrap();
    let new_refresh = manifest.keys.last().unwrap().clone();
    let delay = new_refresh.signs_from.timestamp() - before;
    assert!((359..=362).contains(&delay), "delay {delay}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys").join(&new_refresh.private_key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let list = run(&["keys", "list", "--dir", "keys"], &[]);
    let line = |kid: &str| {
        list.lines()
            .find(|l| l.contains(kid))
            .unwrap_or_else(|| panic!("{kid} in {list}"))
            .to_owned()
    };
    assert!(line(&new_refresh.kid).contains("pending"), "{list}");
    assert!(line(&old_access).contains("signing"), "{list}");

    // An access rotation that takes over at once, with one-second tokens and no leeway: the
    // old key retires a second later and prune removes it (and only it).
    let short = [("ACCESS_TOKEN_TTL", "1"), ("JWT_LEEWAY", "0")];
    run(
        &[
            "keys", "rotate", "--kind", "access", "--dir", "keys", "--delay", "0",
        ],
        &short,
    );
    let list = run(&["keys", "list", "--dir", "keys"], &[]);
    assert!(
        list.lines()
            .find(|l| l.contains(&old_access))
            .is_some_and(|l| l.contains("retiring") || l.contains("expired")),
        "{list}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = run(&["keys", "prune", "--dir", "keys"], &[]);
    assert!(
        out.contains(&format!("removed access key {old_access}")),
        "{out}"
    );
    assert!(!dir.path().join("keys/access_private.pem").exists());
    let list = run(&["keys", "list", "--dir", "keys"], &[]);
    assert!(!list.contains(&old_access), "{list}");
    assert!(list.contains(&new_refresh.kid), "{list}");
    let out = run(&["keys", "prune", "--dir", "keys"], &[]);
    assert!(out.contains("nothing to prune"), "{out}");

    // `keys generate` does not overwrite a rotating directory, even with --force.
    let output = latchkey(
        dir.path(),
        &["keys", "generate", "--dir", "keys", "--force"],
        &[],
        "",
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("keys rotate"));
}

mod set_role_from_the_command_line_revokes_the_users_sessions {
    use super::*;

    /// The command line changes a role through the same flow as the admin API: the user's live
    /// tokens (in the shared Redis) die at once, so none carries the old role.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        let app = TestApp::spawn(Backend::PostgresRedis).await;
        let user = app.signed_in_user().await;
        assert_eq!(app.me(&user.tokens().access).await.status(), StatusCode::OK);
        let settings = &app.state.settings;
        let dir = tempfile::tempdir().unwrap();
        let output = latchkey(
            dir.path(),
            &[
                "user",
                "set-role",
                "--email",
                &user.email,
                "--role",
                "admin",
            ],
            &[
                ("DATABASE_URL", settings.database.url.expose()),
                ("REDIS_URL", settings.redis.url.as_ref().unwrap().expose()),
                ("REDIS_KEY_PREFIX", &settings.redis.key_prefix),
            ],
            "",
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        crate::helpers::assert_session_revoked(&app, user.tokens()).await;
    }
}

/// What the command line does to accounts is in the audit trail, with `cli` as the actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_made_and_changed_from_the_command_line_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cli.db?mode=rwc", dir.path().display());
    let env = [("DATABASE_URL", url.as_str())];
    for (email, role) in [("root@example.com", "admin"), ("bob@example.com", "user")] {
        let args = [
            "user", "create", "--email", email, "--name", "Someone", "--role", role,
        ];
        let output = latchkey(dir.path(), &args, &env, "an admin password\n");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let args = [
        "user",
        "set-role",
        "--email",
        "bob@example.com",
        "--role",
        "admin",
    ];
    let output = latchkey(dir.path(), &args, &env, "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let app = TestApp::spawn_with(Backend::Embedded, |s| s.database.url = url.clone().into()).await;
    let (_, login) =
        status_and_json(app.login("root@example.com", "an admin password").await).await;
    let token = login["access_token"].as_str().unwrap();
    let response = app
        .client
        .get(app.url("/api/v1/admin/audit?per_page=100"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["events"].as_array().unwrap();
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["event_type"] == kind)
            .collect::<Vec<_>>()
    };
    let registered = of("registered");
    assert_eq!(registered.len(), 2, "{body}");
    assert!(
        registered.iter().all(|e| e["detail"]["by"] == "cli"),
        "{body}"
    );
    assert!(registered.iter().any(|e| e["detail"]["role"] == "admin"));
    let changed = of("role_changed");
    assert_eq!(changed.len(), 1, "{body}");
    assert_eq!(changed[0]["detail"]["by"], "cli");
    assert_eq!(changed[0]["detail"]["from"], "user");
    assert_eq!(changed[0]["detail"]["to"], "admin");
}
