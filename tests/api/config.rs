//! Production refuses every unsafe setting at startup, each with a message saying how to fix
//! it (API.md section 7).

use std::collections::HashMap;

use latchkey::{
    auth::keys::{KeyPaths, KeySource},
    config::Settings,
    startup::{Application, StartupError},
    store::redis::RedisAccess,
};

use crate::helpers::{KEYS, PemPair, SHORT_KEYS, inline_keys};

fn production_vars() -> HashMap<String, String> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let b64 = |pem: &str| STANDARD.encode(pem);
    [
        ("APP_ENV", "production".to_owned()),
        ("PUBLIC_URL", "https://auth.example.com".to_owned()),
        (
            "DATABASE_URL",
            "postgres://latchkey@127.0.0.1:1/none".into(),
        ),
        ("REDIS_URL", "redis://127.0.0.1:1".into()),
        (
            "SMTP_URL",
            "smtps://mailer:secret@smtp.example.com:465".into(),
        ),
        ("MAIL_FROM", "Example <no-reply@example.com>".into()),
        ("MFA_ENCRYPTION_KEY", STANDARD.encode([7u8; 32])),
        ("ACCESS_TOKEN_PRIVATE_KEY", b64(&KEYS.access.private_pem)),
        ("ACCESS_TOKEN_PUBLIC_KEY", b64(&KEYS.access.public_pem)),
        ("REFRESH_TOKEN_PRIVATE_KEY", b64(&KEYS.refresh.private_pem)),
        ("REFRESH_TOKEN_PUBLIC_KEY", b64(&KEYS.refresh.public_pem)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn refusal(vars: &HashMap<String, String>) -> String {
    match Settings::from_vars(vars) {
        Ok(_) => panic!("production settings were accepted"),
        Err(err) => err.to_string(),
    }
}

/// Builds the application and returns the refusal; the configured services are unreachable,
/// so a refusal must come before any connection is tried.
async fn build_refusal(mut settings: Settings) -> String {
    // Any free port: tests run side by side.
    settings.http.port = 0;
    match Application::build(settings).await {
        Err(StartupError::Config(err)) => err.to_string(),
        Err(StartupError::Keys(err)) => err.to_string(),
        Err(StartupError::MfaKey(err)) => err.to_string(),
        Err(other) => panic!("expected a configuration refusal, got: {other}"),
        Ok(_) => panic!("production settings were accepted"),
    }
}

fn production_with_keys(keys: KeySource) -> Settings {
    let mut settings = Settings::from_vars(&production_vars()).expect("valid production settings");
    settings.keys.source = keys;
    settings
}

#[test]
fn valid_production_settings_are_accepted() {
    let settings = Settings::from_vars(&production_vars()).expect("accepted");
    assert!(settings.is_production());
    assert!(settings.cookies.secure, "Secure is forced on in production");
    assert!(!settings.keys.generate_missing);
    assert!(settings.http.allowed_origins.is_empty());
    assert_eq!(
        settings.redis.access,
        RedisAccess::Multiplexed,
        "one shared connection unless REDIS_ACCESS=pooled"
    );
    let mut pooled = production_vars();
    pooled.insert("REDIS_ACCESS".into(), "pooled".into());
    let pooled = Settings::from_vars(&pooled).expect("accepted");
    assert_eq!(pooled.redis.access, RedisAccess::Pooled);
}

#[test]
fn production_refuses_a_missing_redis_url() {
    let mut vars = production_vars();
    vars.remove("REDIS_URL");
    let message = refusal(&vars);
    assert!(message.contains("REDIS_URL is not set"), "{message}");
    assert!(
        message.contains("REDIS_URL=redis://"),
        "says how to fix: {message}"
    );
}

#[test]
fn production_refuses_a_missing_database_url() {
    let mut vars = production_vars();
    vars.remove("DATABASE_URL");
    let message = refusal(&vars);
    assert!(message.contains("DATABASE_URL is not set"), "{message}");
    assert!(
        message.contains("postgres://"),
        "says how to fix: {message}"
    );
}

#[test]
fn production_refuses_cookies_that_are_not_secure() {
    let mut vars = production_vars();
    vars.insert("COOKIE_SECURE".into(), "false".into());
    let message = refusal(&vars);
    assert!(
        message.contains("COOKIE_SECURE=false is refused"),
        "{message}"
    );
    assert!(message.contains("TLS"), "{message}");
}

#[test]
fn production_refuses_non_positive_lifetimes() {
    for (var, value) in [
        ("ACCESS_TOKEN_TTL", "0"),
        ("ACCESS_TOKEN_TTL", "-5"),
        ("REFRESH_TOKEN_TTL", "0"),
    ] {
        let mut vars = production_vars();
        vars.insert(var.into(), value.into());
        let message = refusal(&vars);
        assert!(
            message.contains(var) && message.contains("positive"),
            "{message}"
        );
    }
}

#[test]
fn production_refuses_an_access_lifetime_not_shorter_than_refresh() {
    let mut vars = production_vars();
    vars.insert("ACCESS_TOKEN_TTL".into(), "3600".into());
    vars.insert("REFRESH_TOKEN_TTL".into(), "3600".into());
    let message = refusal(&vars);
    assert!(
        message.contains("must be shorter than REFRESH_TOKEN_TTL"),
        "{message}"
    );
}

#[test]
fn production_refuses_sqlite() {
    let mut vars = production_vars();
    vars.insert(
        "DATABASE_URL".into(),
        "sqlite://data/latchkey.db?mode=rwc".into(),
    );
    let message = refusal(&vars);
    assert!(
        message.contains("must be a PostgreSQL URL in production"),
        "{message}"
    );
}

#[test]
fn absurd_lifetimes_prefixes_and_origins_are_refused_everywhere() {
    for (var, value, expected) in [
        ("ACCESS_TOKEN_TTL", "90000", "too long"),
        ("REFRESH_TOKEN_TTL", "99999999999", "too long"),
        ("REDIS_KEY_PREFIX", "app:{x}:", "must not contain braces"),
        (
            "ALLOWED_ORIGINS",
            "https://app.example.com/login",
            "is not an origin",
        ),
        ("ALLOWED_ORIGINS", "app.example.com", "is not an origin"),
        ("TRUSTED_PROXIES", "10.0.0.0/33", "TRUSTED_PROXIES"),
        ("PORT", "http", "PORT"),
        ("REDIS_ACCESS", "cluster", "expected multiplexed or pooled"),
        ("DATABASE_POOL_SIZE", "0", "must be at least 1"),
        ("DATABASE_POOL_SIZE", "many", "DATABASE_POOL_SIZE"),
    ] {
        for production in [true, false] {
            let mut vars = if production {
                production_vars()
            } else {
                HashMap::new()
            };
            vars.insert(var.into(), value.into());
            let message = refusal(&vars);
            assert!(message.contains(expected), "{var}={value}: {message}");
        }
    }
}

#[test]
fn production_refuses_partial_or_broken_env_keys() {
    let mut vars = production_vars();
    vars.remove("REFRESH_TOKEN_PUBLIC_KEY");
    let message = refusal(&vars);
    assert!(
        message.contains("REFRESH_TOKEN_PUBLIC_KEY is not set"),
        "{message}"
    );

    let mut vars = production_vars();
    vars.insert("ACCESS_TOKEN_PRIVATE_KEY".into(), "%%% not base64".into());
    let message = refusal(&vars);
    assert!(message.contains("base64 -w0"), "{message}");
}

#[tokio::test]
async fn production_refuses_missing_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let settings = production_with_keys(KeySource::Files(KeyPaths::in_dir(dir.path())));
    let message = build_refusal(settings).await;
    assert!(message.contains("is missing"), "{message}");
    assert!(message.contains("latchkey keys generate"), "{message}");
    // Production never generates keys on its own.
    assert!(!dir.path().join("access_private.pem").exists());
}

#[tokio::test]
async fn production_refuses_unreadable_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let paths = KeyPaths::in_dir(dir.path());
    for path in paths.all() {
        // A directory where a file should be cannot be read, even by root.
        std::fs::create_dir_all(path).unwrap();
    }
    let message = build_refusal(production_with_keys(KeySource::Files(paths))).await;
    assert!(message.contains("unreadable"), "{message}");
}

#[tokio::test]
async fn production_refuses_keys_shorter_than_2048_bits() {
    let (short_access, short_refresh) = &*SHORT_KEYS;
    let message = build_refusal(production_with_keys(inline_keys(
        short_access,
        short_refresh,
    )))
    .await;
    assert!(message.contains("1024 bits"), "{message}");
    assert!(message.contains("at least 2048"), "{message}");
}

#[tokio::test]
async fn production_refuses_the_same_pair_for_access_and_refresh() {
    let message = build_refusal(production_with_keys(inline_keys(
        &KEYS.access,
        &KEYS.access,
    )))
    .await;
    assert!(
        message.contains("the access and refresh key pairs are the same"),
        "{message}"
    );
}

#[tokio::test]
async fn production_refuses_a_public_key_that_does_not_match_its_private_key() {
    let mismatched = PemPair {
        private_pem: KEYS.refresh.private_pem.clone(),
        public_pem: KEYS.stranger.public_pem.clone(),
    };
    let message = build_refusal(production_with_keys(inline_keys(&KEYS.access, &mismatched))).await;
    assert!(
        message.contains("refresh public key does not match"),
        "{message}"
    );
}

#[tokio::test]
async fn development_generates_missing_keys_into_the_key_dir() {
    let dir = tempfile::tempdir().unwrap();
    let paths = KeyPaths::in_dir(dir.path().join("keys"));
    let keys = tokio::task::spawn_blocking({
        let source = KeySource::Files(paths.clone());
        let rules = latchkey::auth::keys::LoadRules {
            generate_missing: true,
            owner_only: true,
        };
        move || latchkey::auth::keys::Keys::load(&source, rules)
    })
    .await
    .unwrap()
    .expect("generated");
    use latchkey::auth::keys::KeyKind;
    assert_ne!(
        keys.current(KeyKind::Access).unwrap().kid,
        keys.current(KeyKind::Refresh).unwrap().kid
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&paths.access_private)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are 0600");
    }
    // A second generation without --force refuses to overwrite.
    let again = latchkey::auth::keys::generate_key_dir(&dir.path().join("keys"), 2048, false);
    assert!(again.unwrap_err().to_string().contains("--force"));
}

mod database_pool_size_bounds_the_connections_of_an_instance {

    #[tokio::test]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        use crate::helpers::{Backend, TestApp};
        let sized =
            TestApp::spawn_with(Backend::PostgresRedis, |s| s.database.pool_size = Some(3)).await;
        let pool = sized.state.db.connection().get_postgres_connection_pool();
        assert_eq!(pool.options().get_max_connections(), 3);
        // The hot path's reads have a pool of their own, of the same size.
        let latchkey::db::reads::Reads::Postgres(reads) = sized.state.db.reads() else {
            panic!("PostgreSQL reads go through their own pool");
        };
        assert_eq!(reads.max_size(), 3);
        let default = TestApp::spawn(Backend::PostgresRedis).await;
        let pool = default.state.db.connection().get_postgres_connection_pool();
        assert_eq!(
            pool.options().get_max_connections(),
            latchkey::db::default_postgres_pool_size()
        );
        assert!(latchkey::db::default_postgres_pool_size() >= 4);
        // A pool of 3 serves many more concurrent requests than it has connections.
        let user = sized.signed_in_user().await;
        let token = user.tokens().access.clone();
        let answers = futures_util::future::join_all((0..24).map(|_| sized.me(&token))).await;
        assert!(
            answers
                .iter()
                .all(|r| r.status() == reqwest::StatusCode::OK)
        );
    }
}

#[test]
fn production_refuses_cheap_argon2_parameters_and_a_long_leeway() {
    for (var, value, expected) in [
        (
            "ARGON2_MEMORY_KIB",
            "8192",
            "below the production minimum of 19456",
        ),
        (
            "ARGON2_ITERATIONS",
            "1",
            "below the production minimum of 2",
        ),
    ] {
        let mut vars = production_vars();
        vars.insert(var.into(), value.into());
        let message = refusal(&vars);
        assert!(message.contains(expected), "{var}={value}: {message}");
        // Development accepts them (fast tests and laptops).
        let mut vars = HashMap::new();
        vars.insert(var.to_owned(), value.to_owned());
        assert!(
            Settings::from_vars(&vars).is_ok(),
            "{var}={value} in development"
        );
    }
    for production in [true, false] {
        let mut vars = if production {
            production_vars()
        } else {
            HashMap::new()
        };
        vars.insert("JWT_LEEWAY".into(), "3600".into());
        let message = refusal(&vars);
        assert!(message.contains("JWT_LEEWAY=3600 is too long"), "{message}");
    }
}

#[tokio::test]
async fn production_refuses_private_key_files_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let paths = crate::helpers::write_key_dir(dir.path(), &KEYS.access, &KEYS.refresh);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&paths.refresh_private, loose).unwrap();
    }
    let message = build_refusal(production_with_keys(KeySource::Files(paths.clone()))).await;
    assert!(
        message.contains("refresh_private.pem has mode 644"),
        "{message}"
    );
    assert!(message.contains("chmod 600"), "{message}");
}

#[test]
fn production_needs_an_https_public_url_which_is_the_default_issuer() {
    let mut vars = production_vars();
    vars.remove("PUBLIC_URL");
    let message = refusal(&vars);
    assert!(
        message.contains("PUBLIC_URL") && message.contains("https://"),
        "{message}"
    );
    for refused in [
        "http://auth.example.com",
        "http://localhost.example.com",
        "http://127.0.0.1.example.com:8000",
        "auth.example.com",
        "https://auth.example.com/?next=x",
    ] {
        vars.insert("PUBLIC_URL".into(), refused.into());
        let message = refusal(&vars);
        assert!(message.contains("PUBLIC_URL"), "{refused}: {message}");
    }
    // Loopback http is a secure context for browsers (the docker-compose demo on localhost).
    for accepted in [
        "http://localhost:8000",
        "http://127.0.0.1:8000/auth",
        "http://[::1]:8000",
    ] {
        vars.insert("PUBLIC_URL".into(), accepted.into());
        let settings = Settings::from_vars(&vars).unwrap_or_else(|e| panic!("{accepted}: {e}"));
        assert_eq!(settings.tokens.issuer, accepted);
    }

    vars.insert("PUBLIC_URL".into(), "https://auth.example.com/".into());
    let settings = Settings::from_vars(&vars).expect("accepted");
    assert_eq!(settings.public_url(), "https://auth.example.com");
    assert_eq!(
        settings.tokens.issuer, "https://auth.example.com",
        "no trailing slash"
    );
    vars.insert("JWT_ISSUER".into(), "latchkey".into());
    let settings = Settings::from_vars(&vars).expect("accepted");
    assert_eq!(
        settings.tokens.issuer, "latchkey",
        "JWT_ISSUER keeps old tokens valid"
    );
}

#[test]
fn production_needs_secure_smtp_and_a_sender_unless_email_flows_are_off() {
    let mut vars = production_vars();
    vars.remove("SMTP_URL");
    let message = refusal(&vars);
    assert!(
        message.contains("SMTP_URL") && message.contains("EMAIL_FLOWS=off"),
        "{message}"
    );
    vars.insert("EMAIL_FLOWS".into(), "off".into());
    let settings = Settings::from_vars(&vars).expect("no mail needed with EMAIL_FLOWS=off");
    assert!(!settings.accounts.email.enabled);
    vars.insert("EMAIL_VERIFICATION".into(), "required".into());
    assert!(refusal(&vars).contains("EMAIL_VERIFICATION"));
    vars.remove("EMAIL_FLOWS");
    vars.remove("EMAIL_VERIFICATION");

    for (url, accepted) in [
        ("smtp://mailer:secret@smtp.example.com:25", false),
        ("smtp://smtp.example.com:587?tls=opportunistic", false),
        ("smtp://smtp.example.com:587?tls=required", true),
        ("smtps://smtp.example.com", true),
        ("smtp://127.0.0.1:25", true),
        ("smtp://localhost:2525", true),
        ("not a url", false),
    ] {
        vars.insert("SMTP_URL".into(), url.into());
        match Settings::from_vars(&vars) {
            Ok(_) => assert!(accepted, "{url} was accepted"),
            Err(err) => {
                let message = err.to_string();
                assert!(!accepted, "{url}: {message}");
                assert!(message.contains("SMTP_URL"), "{message}");
                assert!(
                    !message.contains("secret"),
                    "the password is not echoed: {message}"
                );
            }
        }
    }
    vars.insert("SMTP_URL".into(), "smtps://smtp.example.com".into());
    vars.remove("MAIL_FROM");
    assert!(refusal(&vars).contains("MAIL_FROM"));
    vars.insert("MAIL_FROM".into(), "not a mailbox".into());
    assert!(refusal(&vars).contains("MAIL_FROM"));
    vars.insert("MAIL_FROM".into(), "Example <no-reply@example.com>".into());
    vars.insert(
        "EMAIL_LINK_BASE".into(),
        "http://app.example.com/account".into(),
    );
    assert!(refusal(&vars).contains("EMAIL_LINK_BASE"));
    vars.insert(
        "EMAIL_LINK_BASE".into(),
        "https://app.example.com/account/".into(),
    );
    let settings = Settings::from_vars(&vars).unwrap();
    assert_eq!(
        settings.accounts.email.link_base,
        "https://app.example.com/account"
    );
}

#[test]
fn email_lifetimes_and_verification_mode_are_read_and_checked() {
    let mut vars = production_vars();
    for (var, value) in [
        ("EMAIL_VERIFY_TTL", "60"),
        ("PASSWORD_RESET_TTL", "1"),
        ("EMAIL_CHANGE_TTL", "7200"),
        ("EMAIL_VERIFICATION", "required"),
    ] {
        vars.insert(var.into(), value.into());
    }
    let settings = Settings::from_vars(&vars).unwrap();
    let email = &settings.accounts.email;
    assert_eq!(email.verify_ttl.as_secs(), 60);
    assert_eq!(email.reset_ttl.as_secs(), 1);
    assert_eq!(email.change_ttl.as_secs(), 7200);
    assert_eq!(
        email.verification,
        latchkey::accounts::Verification::Required
    );
    assert_eq!(
        email.link_base, "https://auth.example.com/account",
        "PUBLIC_URL/account"
    );
    for (var, value) in [
        ("EMAIL_VERIFICATION", "sometimes"),
        ("PASSWORD_RESET_TTL", "0"),
        ("EMAIL_VERIFY_TTL", "-5"),
        ("MAIL_MAX_ATTEMPTS", "0"),
    ] {
        let mut vars = vars.clone();
        vars.insert(var.into(), value.into());
        assert!(refusal(&vars).contains(var), "{var}={value}");
    }
}

#[test]
fn production_needs_an_mfa_encryption_key_of_32_bytes() {
    let mut vars = production_vars();
    vars.remove("MFA_ENCRYPTION_KEY");
    let message = refusal(&vars);
    assert!(
        message.contains("MFA_ENCRYPTION_KEY") && message.contains("openssl rand"),
        "{message}"
    );
    for bad in ["c2hvcnQ=", "not base64 at all"] {
        vars.insert("MFA_ENCRYPTION_KEY".into(), bad.into());
        let message = refusal(&vars);
        assert!(message.contains("MFA_ENCRYPTION_KEY"), "{message}");
        assert!(!message.contains(bad), "the key is not echoed: {message}");
    }
    vars.insert(
        "MFA_ENCRYPTION_KEY".into(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
    );
    vars.insert("MFA_ENCRYPTION_KEY_PREVIOUS".into(), "short".into());
    assert!(refusal(&vars).contains("MFA_ENCRYPTION_KEY_PREVIOUS"));
    vars.remove("MFA_ENCRYPTION_KEY_PREVIOUS");
    vars.insert("MFA_ISSUER".into(), "Example: Auth".into());
    assert!(refusal(&vars).contains("MFA_ISSUER"));
    vars.insert("MFA_ISSUER".into(), "Example Auth".into());
    let settings = Settings::from_vars(&vars).unwrap();
    assert_eq!(settings.mfa.issuer, "Example Auth");
    assert!(
        !format!("{settings:?}").contains("AAAAAAAAAAAAAAAA"),
        "the key is not in Debug"
    );
}

#[test]
fn redis_urls_name_one_server_or_a_cluster_in_clear_or_over_tls() {
    for url in [
        "redis://:s3cret@redis:6379/0",
        "rediss://redis.example.com:6380",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
        "rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7000",
        // One seed node is enough to learn the cluster (as a managed service's configuration
        // endpoint is): accepted.
        "redis+cluster://clustercfg.example.com:6379",
    ] {
        let mut vars = production_vars();
        vars.insert("REDIS_URL".into(), url.into());
        let settings = Settings::from_vars(&vars).unwrap_or_else(|err| panic!("{url}: {err}"));
        assert_eq!(settings.redis.url.unwrap().expose(), url);
    }
}

#[test]
fn unusable_redis_urls_are_refused_with_the_forms_that_work() {
    for (url, says) in [
        ("http://redis:6379", "redis+cluster://host:port,host:port"),
        ("rediss://redis:6380/#insecure", "REDIS_CA_CERT"),
        ("redis+cluster://:s3cret@a:7000/0", "no database number"),
        ("redis+cluster://a:7000,,b:7000", "host:port"),
    ] {
        let mut vars = production_vars();
        vars.insert("REDIS_URL".into(), url.into());
        let message = refusal(&vars);
        assert!(message.starts_with("REDIS_URL="), "{message}");
        assert!(message.contains(says), "{url}: {message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}

#[test]
fn a_redis_cluster_is_reached_through_one_shared_connection_only() {
    let mut vars = production_vars();
    vars.insert("REDIS_URL".into(), "redis+cluster://a:7000,b:7000".into());
    vars.insert("REDIS_ACCESS".into(), "pooled".into());
    let message = refusal(&vars);
    assert!(message.contains("REDIS_ACCESS=pooled"), "{message}");
    assert!(message.contains("remove REDIS_ACCESS"), "{message}");
}

#[test]
fn a_redis_ca_bundle_needs_tls_and_a_readable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::redis_servers::TestCerts::write(dir.path()).unwrap();
    let with = |url: &str, ca: &std::path::Path| {
        let mut vars = production_vars();
        vars.insert("REDIS_URL".into(), url.into());
        vars.insert("REDIS_CA_CERT".into(), ca.display().to_string());
        vars
    };
    let settings = Settings::from_vars(&with("rediss://redis:6380", &certs.ca)).expect("accepted");
    assert_eq!(settings.redis.ca_cert.as_deref(), Some(certs.ca.as_path()));
    let cluster = with("rediss+cluster://a:7000,b:7000", &certs.ca);
    Settings::from_vars(&cluster).expect("a TLS cluster takes the CA too");

    // Beside a URL without TLS the CA would be ignored: refused.
    let message = refusal(&with("redis://redis:6379", &certs.ca));
    assert!(message.contains("REDIS_CA_CERT="), "{message}");
    assert!(message.contains("rediss://"), "says how to fix: {message}");

    // A file that is missing, or holds no certificate (a private key, here), is refused with
    // what to put there.
    let missing = dir.path().join("missing.pem");
    for (path, why) in [
        (&missing, "cannot be read"),
        (&certs.key, "holds no certificate"),
    ] {
        let message = refusal(&with("rediss://redis:6380", path));
        assert!(message.contains("REDIS_CA_CERT="), "{message}");
        assert!(message.contains(why), "{message}");
        assert!(
            message.contains("BEGIN CERTIFICATE"),
            "says how to fix: {message}"
        );
    }
}

#[tokio::test]
async fn production_reads_the_mfa_key_file_only_when_it_is_there_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let paths = crate::helpers::write_key_dir(dir.path(), &KEYS.access, &KEYS.refresh);
    let without_env = || {
        let mut settings = production_with_keys(KeySource::Files(paths.clone()));
        settings.mfa.key = None;
        settings
    };
    let message = build_refusal(without_env()).await;
    assert!(
        message.contains("mfa.key does not exist") && message.contains("keys generate"),
        "{message}"
    );
    let key = dir.path().join("mfa.key");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let message = build_refusal(without_env()).await;
        assert!(message.contains("mfa.key has mode 644"), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }
}
