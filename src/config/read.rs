//! Settings out of variables, one reader per concern. Rules that compare settings with each
//! other are [`super::rules`]'.

use std::{path::PathBuf, time::Duration};

use super::{
    ConfigError, CookieSettings, DEFAULT_DATABASE_URL, DatabaseSettings, Environment, HttpSettings,
    KeySettings, RedisSettings, Settings, vars::Vars,
};
use crate::{
    accounts::AccountPolicy,
    audit::AuditSettings,
    auth::{
        keys::{InlineKeys, KeyPaths, KeySource},
        password::{Argon2Settings, PasswordSettings},
        tokens::TokenSettings,
    },
    limits::{BackoffPolicy, LimitSettings},
    store::redis::RedisAccess,
    telemetry::LogFormat,
};

pub(super) fn settings(vars: &Vars<'_>) -> Result<Settings, ConfigError> {
    let environment = match vars.get("APP_ENV").as_deref() {
        None | Some("development") | Some("dev") => Environment::Development,
        Some("production") | Some("prod") => Environment::Production,
        Some(other) => {
            let expected = "`development` or `production`";
            return Err(ConfigError::invalid("APP_ENV", other, expected));
        }
    };
    let production = environment == Environment::Production;
    Ok(Settings {
        environment,
        http: http(vars, production)?,
        database: database(vars, production)?,
        redis: redis(vars)?,
        keys: keys(vars, production)?,
        tokens: tokens(vars)?,
        accounts: AccountPolicy {
            refresh_grace: vars.secs_or_zero("REFRESH_REUSE_GRACE", 10)?,
            email: super::email::policy(vars)?,
        },
        cookies: CookieSettings {
            secure: vars.flag("COOKIE_SECURE")?.unwrap_or(production),
            domain: vars.get("COOKIE_DOMAIN"),
        },
        passwords: passwords(vars)?,
        limits: limits(vars)?,
        audit: AuditSettings {
            // 0 keeps every event.
            retention: match vars.number("AUDIT_RETENTION_DAYS", 90u64)? {
                0 => None,
                days => Some(Duration::from_secs(days.saturating_mul(24 * 3600))),
            },
        },
        mail: super::email::mail(vars)?,
        mfa: super::mfa::read(vars),
        log_format: match vars.get("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(ConfigError::invalid("LOG_FORMAT", other, "text or json")),
        },
    })
}

fn http(vars: &Vars<'_>, production: bool) -> Result<HttpSettings, ConfigError> {
    let port: u16 = vars.number("PORT", 8000)?;
    let allowed_origins = match vars.list("ALLOWED_ORIGINS") {
        Some(list) => list,
        // In development the service's own default address may send cookie requests.
        None if !production => vec![
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
        ],
        None => Vec::new(),
    };
    Ok(HttpSettings {
        host: vars.get("HOST").unwrap_or_else(|| "127.0.0.1".into()),
        port,
        public_url: vars
            .get("PUBLIC_URL")
            .map(|url| url.trim_end_matches('/').to_owned()),
        request_timeout: vars.secs("REQUEST_TIMEOUT_SECS", 30)?,
        allowed_origins,
        trusted_proxies: vars.nets("TRUSTED_PROXIES")?,
    })
}

fn database(vars: &Vars<'_>, production: bool) -> Result<DatabaseSettings, ConfigError> {
    let url = match vars.get("DATABASE_URL") {
        Some(url) => url,
        None if production => {
            return Err(ConfigError::Missing {
                var: "DATABASE_URL",
                fix: "production needs a PostgreSQL database, e.g. \
                      DATABASE_URL=postgres://latchkey:PASSWORD@db:5432/latchkey"
                    .into(),
            });
        }
        None => DEFAULT_DATABASE_URL.to_owned(),
    };
    let pool_size = match vars.get("DATABASE_POOL_SIZE") {
        Some(value) => Some(
            value
                .parse()
                .map_err(|_| ConfigError::invalid("DATABASE_POOL_SIZE", &value, "a number"))?,
        ),
        None => None,
    };
    Ok(DatabaseSettings {
        url: url.into(),
        pool_size,
    })
}

fn redis(vars: &Vars<'_>) -> Result<RedisSettings, ConfigError> {
    let access = match vars.get("REDIS_ACCESS").as_deref() {
        None | Some("multiplexed") => RedisAccess::Multiplexed,
        Some("pooled") => RedisAccess::Pooled,
        Some(other) => {
            return Err(ConfigError::invalid(
                "REDIS_ACCESS",
                other,
                "multiplexed or pooled",
            ));
        }
    };
    Ok(RedisSettings {
        url: vars.get("REDIS_URL").map(Into::into),
        key_prefix: vars
            .get("REDIS_KEY_PREFIX")
            .unwrap_or_else(|| "latchkey:".into()),
        access,
        pool_size: vars.number("REDIS_POOL_SIZE", 32)?,
        ca_cert: vars.get("REDIS_CA_CERT").map(PathBuf::from),
    })
}

fn keys(vars: &Vars<'_>, production: bool) -> Result<KeySettings, ConfigError> {
    Ok(KeySettings {
        source: key_source(vars)?,
        generate_missing: !production,
        owner_only: production,
        reload_every: vars.secs("KEYS_RELOAD_SECS", 30)?,
        jwks_max_age: vars.secs_or_zero("JWKS_MAX_AGE", 300)?,
    })
}

fn tokens(vars: &Vars<'_>) -> Result<TokenSettings, ConfigError> {
    Ok(TokenSettings {
        // Empty: the public URL, once known (see `Settings::resolve_public_url`).
        issuer: vars
            .get("JWT_ISSUER")
            .or_else(|| vars.get("PUBLIC_URL"))
            .map(|issuer| issuer.trim_end_matches('/').to_owned())
            .unwrap_or_default(),
        audience: vars
            .get("JWT_AUDIENCE")
            .unwrap_or_else(|| "latchkey".into()),
        access_ttl: vars.secs("ACCESS_TOKEN_TTL", 15 * 60)?,
        refresh_ttl: vars.secs("REFRESH_TOKEN_TTL", 7 * 24 * 3600)?,
        leeway: vars.secs_or_zero("JWT_LEEWAY", 30)?,
    })
}

fn passwords(vars: &Vars<'_>) -> Result<PasswordSettings, ConfigError> {
    let default = Argon2Settings::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(PasswordSettings {
        argon2: Argon2Settings {
            memory_kib: vars.number("ARGON2_MEMORY_KIB", default.memory_kib)?,
            iterations: vars.number("ARGON2_ITERATIONS", default.iterations)?,
            parallelism: vars.number("ARGON2_PARALLELISM", default.parallelism)?,
        },
        concurrency: vars.number("PASSWORD_HASH_CONCURRENCY", cores)?,
        queue_timeout: std::time::Duration::from_millis(
            vars.number("PASSWORD_HASH_QUEUE_TIMEOUT_MS", 1000)?,
        ),
    })
}

fn limits(vars: &Vars<'_>) -> Result<LimitSettings, ConfigError> {
    let default = LimitSettings::default();
    let backoff = &default.backoff;
    Ok(LimitSettings {
        login_per_ip: vars.rate("RATE_LIMIT_LOGIN_PER_IP", default.login_per_ip)?,
        login_per_account: vars.rate("RATE_LIMIT_LOGIN_PER_ACCOUNT", default.login_per_account)?,
        register_per_ip: vars.rate("RATE_LIMIT_REGISTER_PER_IP", default.register_per_ip)?,
        refresh_per_ip: vars.rate("RATE_LIMIT_REFRESH_PER_IP", default.refresh_per_ip)?,
        password_check_per_user: vars.rate(
            "RATE_LIMIT_PASSWORD_CHECK_PER_USER",
            default.password_check_per_user,
        )?,
        email_per_address: vars.rate("RATE_LIMIT_EMAIL_PER_ADDRESS", default.email_per_address)?,
        email_per_ip: vars.rate("RATE_LIMIT_EMAIL_PER_IP", default.email_per_ip)?,
        backoff: BackoffPolicy {
            free_failures: vars.number("LOGIN_BACKOFF_FREE_FAILURES", backoff.free_failures)?,
            base: vars.secs("LOGIN_BACKOFF_BASE_SECS", backoff.base.as_secs())?,
            max: vars.secs("LOGIN_BACKOFF_MAX_SECS", backoff.max.as_secs())?,
            memory: backoff.memory,
        },
    })
}

/// The four keys given inline (base64 PEM), or the key directory and its file paths.
fn key_source(vars: &Vars<'_>) -> Result<KeySource, ConfigError> {
    const INLINE: [&str; 4] = [
        "ACCESS_TOKEN_PRIVATE_KEY",
        "ACCESS_TOKEN_PUBLIC_KEY",
        "REFRESH_TOKEN_PRIVATE_KEY",
        "REFRESH_TOKEN_PUBLIC_KEY",
    ];
    let given: Vec<Option<String>> = INLINE.iter().map(|name| vars.get(name)).collect();
    if given.iter().any(Option::is_some) {
        let mut pems = Vec::with_capacity(4);
        for (name, value) in INLINE.into_iter().zip(given) {
            let value = value.ok_or_else(|| ConfigError::Missing {
                var: name,
                fix: format!(
                    "when keys come from the environment, all four of {} must be set \
                     (base64-encoded PEM)",
                    INLINE.join(", ")
                ),
            })?;
            pems.push(decode_base64_pem(name, &value)?);
        }
        let mut pems = pems.into_iter();
        let mut next = || pems.next().unwrap_or_default();
        return Ok(KeySource::Inline(InlineKeys {
            access_private: next().into(),
            access_public: next(),
            refresh_private: next().into(),
            refresh_public: next(),
        }));
    }
    let mut paths = KeyPaths::in_dir(vars.get("KEYS_DIR").unwrap_or_else(|| "keys".into()));
    for (name, slot) in [
        ("ACCESS_TOKEN_PRIVATE_KEY_PATH", &mut paths.access_private),
        ("ACCESS_TOKEN_PUBLIC_KEY_PATH", &mut paths.access_public),
        ("REFRESH_TOKEN_PRIVATE_KEY_PATH", &mut paths.refresh_private),
        ("REFRESH_TOKEN_PUBLIC_KEY_PATH", &mut paths.refresh_public),
    ] {
        if let Some(path) = vars.get(name) {
            *slot = PathBuf::from(path);
        }
    }
    Ok(KeySource::Files(paths))
}

fn decode_base64_pem(name: &'static str, value: &str) -> Result<String, ConfigError> {
    use base64::Engine;
    let compact: String = value.split_whitespace().collect();
    let expected = "base64-encoded PEM text: encode the PEM file with `base64 -w0 FILE`";
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| ConfigError::invalid(name, "(not shown)", expected))?;
    String::from_utf8(bytes).map_err(|_| ConfigError::invalid(name, "(not shown)", expected))
}
