//! The rules settings must keep, everywhere and (stricter) in production. Each refusal names
//! the variable and says how to fix it.

use std::time::Duration;

use super::{ConfigError, Settings};
use crate::{
    auth::password::Argon2Settings,
    store::redis::{RedisAccess, RedisTarget, read_ca_pem},
};

/// Upper bounds on token lifetimes: beyond them a token is effectively permanent.
pub const MAX_ACCESS_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_REFRESH_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Upper bound on the key directory reload interval (API.md section 2: within 60 s).
pub const MAX_KEYS_RELOAD: Duration = Duration::from_secs(60);
/// Upper bound on the refresh grace window.
pub const MAX_REFRESH_GRACE: Duration = Duration::from_secs(60);
/// Upper bound on the clock-skew leeway: more would keep expired tokens alive.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

pub(super) fn validate(settings: &Settings) -> Result<(), ConfigError> {
    lifetimes(settings)?;
    http(settings)?;
    stores(settings)?;
    hashing(settings)?;
    if settings.is_production() {
        production(settings)?;
    }
    super::mfa::check(settings)?;
    super::email::check(settings)
}

fn lifetimes(settings: &Settings) -> Result<(), ConfigError> {
    let tokens = &settings.tokens;
    let (access, refresh) = (tokens.access_ttl, tokens.refresh_ttl);
    let positive = "a positive number of seconds";
    if access.is_zero() {
        return Err(ConfigError::invalid("ACCESS_TOKEN_TTL", "0", positive));
    }
    if refresh.is_zero() {
        return Err(ConfigError::invalid("REFRESH_TOKEN_TTL", "0", positive));
    }
    if access >= refresh {
        return Err(ConfigError::refused(
            "ACCESS_TOKEN_TTL",
            access.as_secs(),
            format!(
                "must be shorter than REFRESH_TOKEN_TTL ({}): access tokens are the short-lived ones",
                refresh.as_secs()
            ),
        ));
    }
    if access > MAX_ACCESS_TTL {
        return Err(ConfigError::refused(
            "ACCESS_TOKEN_TTL",
            access.as_secs(),
            format!(
                "is too long: access tokens live at most {} seconds (one day); use refresh \
                 tokens for long sessions",
                MAX_ACCESS_TTL.as_secs()
            ),
        ));
    }
    if refresh > MAX_REFRESH_TTL {
        return Err(ConfigError::refused(
            "REFRESH_TOKEN_TTL",
            refresh.as_secs(),
            format!(
                "is too long: at most {} seconds (one year)",
                MAX_REFRESH_TTL.as_secs()
            ),
        ));
    }
    let leeway = settings.tokens.leeway;
    if leeway > MAX_LEEWAY {
        return Err(ConfigError::refused(
            "JWT_LEEWAY",
            leeway.as_secs(),
            format!(
                "is too long: at most {} seconds (default 30); a large leeway keeps expired \
                 tokens valid",
                MAX_LEEWAY.as_secs()
            ),
        ));
    }
    let grace = settings.accounts.refresh_grace;
    if grace > MAX_REFRESH_GRACE {
        return Err(ConfigError::refused(
            "REFRESH_REUSE_GRACE",
            grace.as_secs(),
            format!(
                "must be between 0 (no grace) and {} seconds (default 10): a long window lets a \
                 stolen refresh token ride along",
                MAX_REFRESH_GRACE.as_secs()
            ),
        ));
    }
    let reload = settings.keys.reload_every;
    if reload.is_zero() || reload > MAX_KEYS_RELOAD {
        return Err(ConfigError::refused(
            "KEYS_RELOAD_SECS",
            reload.as_secs(),
            format!(
                "must be between 1 and {} seconds (default 30): running instances must pick up \
                 a key rotation within a minute",
                MAX_KEYS_RELOAD.as_secs()
            ),
        ));
    }
    Ok(())
}

/// `scheme://host[:port]`, nothing else.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

/// An absolute http(s) URL with a host and no query or fragment.
pub(super) fn is_base_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.starts_with('/')
        && !rest.contains(['?', '#', ' ', '@'])
}

/// `http://localhost`, `http://127.0.0.1` or `http://[::1]` (any port or path): browsers treat
/// these as secure contexts, and nothing off the machine can reach them.
pub(super) fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix("[::1]") {
        Some(port) => return port.is_empty() || port.starts_with(':'),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "localhost" | "127.0.0.1")
}

fn http(settings: &Settings) -> Result<(), ConfigError> {
    if let Some(url) = &settings.http.public_url
        && !is_base_url(url)
    {
        return Err(ConfigError::refused(
            "PUBLIC_URL",
            url,
            "is not a base URL: write scheme://host[:port][/path], e.g. \
             https://auth.example.com",
        ));
    }
    for origin in &settings.http.allowed_origins {
        if !is_origin(origin) {
            return Err(ConfigError::refused(
                "ALLOWED_ORIGINS",
                origin,
                "is not an origin: write scheme://host[:port] with no path, e.g. \
                 https://app.example.com",
            ));
        }
    }
    if settings.http.request_timeout.is_zero() {
        return Err(ConfigError::refused(
            "REQUEST_TIMEOUT_SECS",
            0,
            "must be at least 1",
        ));
    }
    Ok(())
}

fn stores(settings: &Settings) -> Result<(), ConfigError> {
    redis(settings)?;
    let prefix = &settings.redis.key_prefix;
    if prefix.contains(['{', '}']) {
        return Err(ConfigError::refused(
            "REDIS_KEY_PREFIX",
            prefix,
            "must not contain braces: Latchkey adds its own Redis Cluster hash tags",
        ));
    }
    if settings.database.pool_size == Some(0) {
        return Err(ConfigError::refused(
            "DATABASE_POOL_SIZE",
            0,
            "must be at least 1",
        ));
    }
    if settings.redis.pool_size == 0 {
        return Err(ConfigError::refused(
            "REDIS_POOL_SIZE",
            0,
            "must be at least 1",
        ));
    }
    let backoff = &settings.limits.backoff;
    if backoff.max < backoff.base {
        return Err(ConfigError::refused(
            "LOGIN_BACKOFF_BASE_SECS",
            backoff.base.as_secs(),
            "must be at most LOGIN_BACKOFF_MAX_SECS",
        ));
    }
    Ok(())
}

/// `REDIS_URL` readable as one of its forms, and `REDIS_CA_CERT` only beside TLS, readable.
fn redis(settings: &Settings) -> Result<(), ConfigError> {
    let redis = &settings.redis;
    let target = match &redis.url {
        Some(url) => Some(RedisTarget::parse(url.expose()).map_err(|err| {
            ConfigError::refused("REDIS_URL", format!("{url:?}"), err.to_string())
        })?),
        None => None,
    };
    if let Some(target) = &target
        && target.cluster
        && redis.access == RedisAccess::Pooled
    {
        return Err(ConfigError::refused(
            "REDIS_ACCESS",
            "pooled",
            "does not apply to a Redis Cluster, whose one shared connection multiplexes onto \
             every node: remove REDIS_ACCESS",
        ));
    }
    let Some(path) = &redis.ca_cert else {
        return Ok(());
    };
    if !target.as_ref().is_some_and(|target| target.tls) {
        return Err(ConfigError::refused(
            "REDIS_CA_CERT",
            path.display(),
            "is set, but REDIS_URL does not use TLS: write rediss://... (or \
             rediss+cluster://...), or remove REDIS_CA_CERT",
        ));
    }
    read_ca_pem(path).map(drop).map_err(|why| {
        ConfigError::refused(
            "REDIS_CA_CERT",
            path.display(),
            format!(
                "{why}: point it at a readable PEM file holding the certificate of the CA that \
                 signed Redis's certificate (-----BEGIN CERTIFICATE-----)"
            ),
        )
    })
}

fn hashing(settings: &Settings) -> Result<(), ConfigError> {
    let passwords = &settings.passwords;
    if passwords.concurrency == 0 {
        return Err(ConfigError::refused(
            "PASSWORD_HASH_CONCURRENCY",
            0,
            "must be at least 1",
        ));
    }
    let argon2 = passwords.argon2;
    argon2::Params::new(
        argon2.memory_kib,
        argon2.iterations,
        argon2.parallelism,
        None,
    )
    .map_err(|err| {
        ConfigError::refused(
            "ARGON2_MEMORY_KIB",
            argon2.memory_kib,
            format!(
                "(with ARGON2_ITERATIONS={} and ARGON2_PARALLELISM={}) are not valid argon2 \
                 parameters ({err}); the defaults are 19456 / 2 / 1",
                argon2.iterations, argon2.parallelism
            ),
        )
    })?;
    Ok(())
}

/// Production names its external https URL.
fn public_url(settings: &Settings) -> Result<(), ConfigError> {
    match &settings.http.public_url {
        None => {
            return Err(ConfigError::Missing {
                var: "PUBLIC_URL",
                fix: "production needs the service's external https URL (the tokens' issuer, \
                      the base of discovery and mail links), e.g. \
                      PUBLIC_URL=https://auth.example.com"
                    .into(),
            });
        }
        Some(url) if !url.starts_with("https://") && !is_loopback_http(url) => {
            return Err(ConfigError::refused(
                "PUBLIC_URL",
                url,
                "must be https in production (or http on localhost): tokens and links name \
                 it, and browsers reach it",
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

/// Production hashes at least at OWASP's minimum for argon2id (the defaults): cheaper
/// parameters make stolen hashes cheap to crack.
fn argon2_floor(settings: &Settings) -> Result<(), ConfigError> {
    let (given, floor) = (settings.passwords.argon2, Argon2Settings::default());
    let refuse = |var, value: u32, min: u32| {
        ConfigError::refused(
            var,
            value,
            format!("is below the production minimum of {min}: use at least 19456 / 2 / 1"),
        )
    };
    if given.memory_kib < floor.memory_kib {
        return Err(refuse(
            "ARGON2_MEMORY_KIB",
            given.memory_kib,
            floor.memory_kib,
        ));
    }
    if given.iterations < floor.iterations {
        return Err(refuse(
            "ARGON2_ITERATIONS",
            given.iterations,
            floor.iterations,
        ));
    }
    Ok(())
}

fn production(settings: &Settings) -> Result<(), ConfigError> {
    if settings.redis.url.is_none() {
        return Err(ConfigError::Missing {
            var: "REDIS_URL",
            fix: "production needs Redis so that every instance shares revocation state, e.g. \
                  REDIS_URL=redis://redis:6379"
                .into(),
        });
    }
    if !settings.database.url.expose().starts_with("postgres") {
        return Err(ConfigError::refused(
            "DATABASE_URL",
            format!("{:?}", settings.database.url),
            "must be a PostgreSQL URL in production (SQLite cannot be shared by several \
             instances), e.g. postgres://latchkey:PASSWORD@db:5432/latchkey",
        ));
    }
    if !settings.cookies.secure {
        return Err(ConfigError::refused(
            "COOKIE_SECURE",
            false,
            "is refused in production: token cookies must only travel over HTTPS. Remove \
             COOKIE_SECURE or set it to true, and serve Latchkey behind TLS",
        ));
    }
    argon2_floor(settings)?;
    public_url(settings)?;
    if settings.keys.generate_missing {
        return Err(ConfigError::Missing {
            var: "ACCESS_TOKEN_PRIVATE_KEY_PATH",
            fix: "production never generates keys: provide them with `latchkey keys generate` \
                  ahead of time"
                .into(),
        });
    }
    Ok(())
}
