//! Settings are read from the environment once (in `main`), validated once, and then passed
//! around typed. No handler reads the environment; tests build `Settings` directly.
//!
//! Every variable is documented in `app.env.example`. Production refuses unsafe values at
//! startup with a message that says how to fix them; key problems are reported by
//! [`crate::auth::keys`] when the keys are loaded.

use std::{collections::HashMap, fmt, net::IpAddr, path::PathBuf, str::FromStr};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::limits::{LimitSettings, Rate};

/// `APP_ENV`: development is forgiving and self-provisioning; production is strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How requests reach Redis (`REDIS_ACCESS`); see `session::redis_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisAccess {
    /// One shared multiplexed connection (the default): one round trip per operation.
    Multiplexed,
    /// A deadpool-redis checkout per operation, `REDIS_POOL_SIZE` connections at most.
    Pooled,
}

/// Where the RSA key material comes from.
#[derive(Clone)]
pub enum KeySource {
    /// PEM files on disk (`KEYS_DIR` or the individual `*_PATH` variables).
    Files(KeyPaths),
    /// PEM text given directly (decoded from base64 environment variables, or built by tests).
    Inline(InlineKeys),
}

/// The key directory and the paths of the four PEM files of a single-key setup. When the
/// directory holds a `manifest.json` (written by `latchkey keys rotate`), the manifest lists the
/// keys instead and the four paths are not read.
#[derive(Debug, Clone)]
pub struct KeyPaths {
    /// `KEYS_DIR`: where the manifest and rotated keys live.
    pub dir: PathBuf,
    pub access_private: PathBuf,
    pub access_public: PathBuf,
    pub refresh_private: PathBuf,
    pub refresh_public: PathBuf,
}

impl KeyPaths {
    /// The default file names inside a key directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            dir: dir.clone(),
            access_private: dir.join("access_private.pem"),
            access_public: dir.join("access_public.pem"),
            refresh_private: dir.join("refresh_private.pem"),
            refresh_public: dir.join("refresh_public.pem"),
        }
    }

    pub fn all(&self) -> [&PathBuf; 4] {
        [
            &self.access_private,
            &self.access_public,
            &self.refresh_private,
            &self.refresh_public,
        ]
    }
}

/// PEM text of the four keys. The private halves are secrets.
#[derive(Clone)]
pub struct InlineKeys {
    pub access_private: SecretString,
    pub access_public: String,
    pub refresh_private: SecretString,
    pub refresh_public: String,
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Files(paths) => f.debug_tuple("Files").field(paths).finish(),
            KeySource::Inline(_) => f.write_str("Inline([REDACTED])"),
        }
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's recommended minimum for argon2id: m=19456 KiB, t=2, p=1.
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Everything the service needs to run, typed and validated.
#[derive(Clone)]
pub struct Settings {
    pub environment: Environment,
    pub host: String,
    pub port: u16,
    /// The database URL may carry a password: it is a secret and redacted in `Debug`.
    pub database_url: SecretString,
    /// Most connections of each database pool (`DATABASE_POOL_SIZE`): SeaORM's and, on
    /// PostgreSQL, the hot path's reads (`db::reads`); `None`: the backend's default (see
    /// `db::connect`).
    pub database_pool_size: Option<u32>,
    /// `None` selects the in-process session store (development only).
    pub redis_url: Option<SecretString>,
    pub redis_key_prefix: String,
    pub redis_access: RedisAccess,
    pub redis_pool_size: usize,
    pub keys: KeySource,
    /// Development only: create missing key files on start.
    pub generate_missing_keys: bool,
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    pub leeway_secs: u64,
    /// Seconds during which a just-rotated refresh token gets the same new pair again.
    pub refresh_grace_secs: i64,
    pub cookie_secure: bool,
    pub cookie_domain: Option<String>,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub argon2: Argon2Settings,
    pub hash_concurrency: usize,
    /// How long a login may wait for a hashing slot before 503 `busy`.
    pub hash_queue_timeout_ms: u64,
    pub limits: LimitSettings,
    /// Longest time a request may take before 503.
    pub request_timeout_secs: u64,
    pub jwks_max_age_secs: u64,
    /// How often a running instance re-reads its key directory (`KEYS_RELOAD_SECS`).
    pub keys_reload_secs: u64,
    pub log_format: LogFormat,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("environment", &self.environment)
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "database_url",
                &redact_url(self.database_url.expose_secret()),
            )
            .field(
                "redis_url",
                &self
                    .redis_url
                    .as_ref()
                    .map(|url| redact_url(url.expose_secret())),
            )
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl_secs", &self.access_ttl_secs)
            .field("refresh_ttl_secs", &self.refresh_ttl_secs)
            .field("leeway_secs", &self.leeway_secs)
            .field("refresh_grace_secs", &self.refresh_grace_secs)
            .field("cookie_secure", &self.cookie_secure)
            .field("cookie_domain", &self.cookie_domain)
            .field("allowed_origins", &self.allowed_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("argon2", &self.argon2)
            .field("hash_concurrency", &self.hash_concurrency)
            .field("hash_queue_timeout_ms", &self.hash_queue_timeout_ms)
            .field("limits", &self.limits)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("database_pool_size", &self.database_pool_size)
            .field("redis_access", &self.redis_access)
            .field("redis_pool_size", &self.redis_pool_size)
            .field("jwks_max_age_secs", &self.jwks_max_age_secs)
            .field("keys_reload_secs", &self.keys_reload_secs)
            .field("log_format", &self.log_format)
            .finish_non_exhaustive()
    }
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A setting that cannot be accepted, with the fix in the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn invalid(var: &str, value: &str, expected: &str) -> Self {
        Self(format!("{var}={value:?} is invalid: expected {expected}"))
    }
}

/// Upper bounds on token lifetimes: beyond them a token is effectively permanent.
pub const MAX_ACCESS_TTL_SECS: i64 = 24 * 3600;
pub const MAX_REFRESH_TTL_SECS: i64 = 366 * 24 * 3600;
/// Upper bound on the key directory reload interval (API.md section 2: within 60 s).
pub const MAX_KEYS_RELOAD_SECS: u64 = 60;
/// Upper bound on the refresh grace window.
pub const MAX_REFRESH_GRACE_SECS: i64 = 60;

/// `scheme://host[:port]`, nothing else.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

/// The development database: a SQLite file under the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/latchkey.db?mode=rwc";

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Reads settings from a map of variables (the environment, or a test's own map), then
    /// validates them.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let environment = match get("APP_ENV").as_deref() {
            None | Some("development") | Some("dev") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "APP_ENV",
                    other,
                    "`development` or `production`",
                ));
            }
        };
        let production = environment == Environment::Production;
        let port: u16 = parse_or(&get, "PORT", 8000)?;

        let database_url = match get("DATABASE_URL") {
            Some(url) => url,
            None if production => {
                return Err(ConfigError(
                    "DATABASE_URL is not set: production needs a PostgreSQL database, e.g. \
                     DATABASE_URL=postgres://latchkey:PASSWORD@db:5432/latchkey"
                        .into(),
                ));
            }
            None => DEFAULT_DATABASE_URL.to_owned(),
        };
        let redis_url = get("REDIS_URL");

        let keys = key_source(&get)?;
        let cookie_secure = match get("COOKIE_SECURE") {
            Some(value) => parse_bool("COOKIE_SECURE", &value)?,
            None => production,
        };
        let allowed_origins = match get("ALLOWED_ORIGINS") {
            Some(list) => split_list(&list),
            // In development the service's own default address may send cookie requests.
            None if !production => vec![
                format!("http://localhost:{port}"),
                format!("http://127.0.0.1:{port}"),
            ],
            None => Vec::new(),
        };
        let trusted_proxies = match get("TRUSTED_PROXIES") {
            Some(list) => split_list(&list)
                .iter()
                .map(|item| parse_net(item))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(ConfigError::invalid("LOG_FORMAT", other, "text or json")),
        };
        let redis_access = match get("REDIS_ACCESS").as_deref() {
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
        let default_argon2 = Argon2Settings::default();
        let default_limits = LimitSettings::default();
        let settings = Settings {
            environment,
            host: get("HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port,
            database_url: database_url.into(),
            redis_url: redis_url.map(Into::into),
            redis_key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "latchkey:".into()),
            database_pool_size: get("DATABASE_POOL_SIZE")
                .map(|v| {
                    v.parse()
                        .map_err(|_| ConfigError::invalid("DATABASE_POOL_SIZE", &v, "a number"))
                })
                .transpose()?,
            redis_access,
            redis_pool_size: parse_or(&get, "REDIS_POOL_SIZE", 32)?,
            keys,
            generate_missing_keys: !production,
            issuer: get("JWT_ISSUER").unwrap_or_else(|| "latchkey".into()),
            audience: get("JWT_AUDIENCE").unwrap_or_else(|| "latchkey".into()),
            access_ttl_secs: parse_or(&get, "ACCESS_TOKEN_TTL", 15 * 60)?,
            refresh_ttl_secs: parse_or(&get, "REFRESH_TOKEN_TTL", 7 * 24 * 3600)?,
            leeway_secs: parse_or(&get, "JWT_LEEWAY", 30)?,
            refresh_grace_secs: parse_or(&get, "REFRESH_REUSE_GRACE", 10)?,
            cookie_secure,
            cookie_domain: get("COOKIE_DOMAIN"),
            allowed_origins,
            trusted_proxies,
            argon2: Argon2Settings {
                memory_kib: parse_or(&get, "ARGON2_MEMORY_KIB", default_argon2.memory_kib)?,
                iterations: parse_or(&get, "ARGON2_ITERATIONS", default_argon2.iterations)?,
                parallelism: parse_or(&get, "ARGON2_PARALLELISM", default_argon2.parallelism)?,
            },
            hash_concurrency: parse_or(&get, "PASSWORD_HASH_CONCURRENCY", default_parallelism())?,
            hash_queue_timeout_ms: parse_or(&get, "PASSWORD_HASH_QUEUE_TIMEOUT_MS", 1000)?,
            limits: LimitSettings {
                login_per_ip: parse_rate(
                    &get,
                    "RATE_LIMIT_LOGIN_PER_IP",
                    default_limits.login_per_ip,
                )?,
                login_per_account: parse_rate(
                    &get,
                    "RATE_LIMIT_LOGIN_PER_ACCOUNT",
                    default_limits.login_per_account,
                )?,
                register_per_ip: parse_rate(
                    &get,
                    "RATE_LIMIT_REGISTER_PER_IP",
                    default_limits.register_per_ip,
                )?,
                refresh_per_ip: parse_rate(
                    &get,
                    "RATE_LIMIT_REFRESH_PER_IP",
                    default_limits.refresh_per_ip,
                )?,
                backoff_free_failures: parse_or(
                    &get,
                    "LOGIN_BACKOFF_FREE_FAILURES",
                    default_limits.backoff_free_failures,
                )?,
                backoff_base_secs: parse_or(
                    &get,
                    "LOGIN_BACKOFF_BASE_SECS",
                    default_limits.backoff_base_secs,
                )?,
                backoff_max_secs: parse_or(
                    &get,
                    "LOGIN_BACKOFF_MAX_SECS",
                    default_limits.backoff_max_secs,
                )?,
                backoff_memory_secs: default_limits.backoff_memory_secs,
            },
            request_timeout_secs: parse_or(&get, "REQUEST_TIMEOUT_SECS", 30)?,
            jwks_max_age_secs: parse_or(&get, "JWKS_MAX_AGE", 300)?,
            keys_reload_secs: parse_or(&get, "KEYS_RELOAD_SECS", 30)?,
            log_format,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Development defaults with the given key source: what tests start from.
    pub fn development(keys: KeySource) -> Self {
        let mut settings =
            Self::from_vars(&HashMap::new()).expect("the built-in development defaults are valid");
        settings.keys = keys;
        settings.generate_missing_keys = false;
        settings
    }

    /// Checks the rules that do not need the keys themselves. Called by `from_vars`, and again
    /// by `Application::build` so hand-built settings get the same scrutiny.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.access_ttl_secs <= 0 {
            return Err(ConfigError(format!(
                "ACCESS_TOKEN_TTL={} must be a positive number of seconds (default 900)",
                self.access_ttl_secs
            )));
        }
        if self.refresh_ttl_secs <= 0 {
            return Err(ConfigError(format!(
                "REFRESH_TOKEN_TTL={} must be a positive number of seconds (default 604800)",
                self.refresh_ttl_secs
            )));
        }
        if self.access_ttl_secs >= self.refresh_ttl_secs {
            return Err(ConfigError(format!(
                "ACCESS_TOKEN_TTL ({}) must be shorter than REFRESH_TOKEN_TTL ({}): access tokens \
                 are the short-lived ones",
                self.access_ttl_secs, self.refresh_ttl_secs
            )));
        }
        if self.access_ttl_secs > MAX_ACCESS_TTL_SECS {
            return Err(ConfigError(format!(
                "ACCESS_TOKEN_TTL={} is too long: access tokens live at most {MAX_ACCESS_TTL_SECS} \
                 seconds (one day); use refresh tokens for long sessions",
                self.access_ttl_secs
            )));
        }
        if self.refresh_ttl_secs > MAX_REFRESH_TTL_SECS {
            return Err(ConfigError(format!(
                "REFRESH_TOKEN_TTL={} is too long: at most {MAX_REFRESH_TTL_SECS} seconds (one year)",
                self.refresh_ttl_secs
            )));
        }
        if !(0..=MAX_REFRESH_GRACE_SECS).contains(&self.refresh_grace_secs) {
            return Err(ConfigError(format!(
                "REFRESH_REUSE_GRACE={} must be between 0 (no grace) and {MAX_REFRESH_GRACE_SECS} \
                 seconds (default 10): a long window lets a stolen refresh token ride along",
                self.refresh_grace_secs
            )));
        }
        if self.redis_key_prefix.contains(['{', '}']) {
            return Err(ConfigError(format!(
                "REDIS_KEY_PREFIX={:?} must not contain braces: Latchkey adds its own Redis Cluster \
                 hash tags",
                self.redis_key_prefix
            )));
        }
        for origin in &self.allowed_origins {
            if !is_origin(origin) {
                return Err(ConfigError(format!(
                    "ALLOWED_ORIGINS entry {origin:?} is not an origin: write scheme://host[:port] \
                     with no path, e.g. https://app.example.com"
                )));
            }
        }
        if self.hash_concurrency == 0 {
            return Err(ConfigError(
                "PASSWORD_HASH_CONCURRENCY must be at least 1".into(),
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(ConfigError(
                "REQUEST_TIMEOUT_SECS must be at least 1".into(),
            ));
        }
        if self.limits.backoff_base_secs == 0
            || self.limits.backoff_max_secs < self.limits.backoff_base_secs
        {
            return Err(ConfigError(
                "LOGIN_BACKOFF_BASE_SECS must be at least 1 and at most LOGIN_BACKOFF_MAX_SECS"
                    .into(),
            ));
        }
        if !(1..=MAX_KEYS_RELOAD_SECS).contains(&self.keys_reload_secs) {
            return Err(ConfigError(format!(
                "KEYS_RELOAD_SECS={} must be between 1 and {MAX_KEYS_RELOAD_SECS} seconds (default \
                 30): running instances must pick up a key rotation within a minute",
                self.keys_reload_secs
            )));
        }
        if self.database_pool_size == Some(0) {
            return Err(ConfigError("DATABASE_POOL_SIZE must be at least 1".into()));
        }
        if self.redis_pool_size == 0 {
            return Err(ConfigError("REDIS_POOL_SIZE must be at least 1".into()));
        }
        argon2::Params::new(
            self.argon2.memory_kib,
            self.argon2.iterations,
            self.argon2.parallelism,
            None,
        )
        .map_err(|err| {
            ConfigError(format!(
                "ARGON2_MEMORY_KIB / ARGON2_ITERATIONS / ARGON2_PARALLELISM are not valid argon2 \
                 parameters ({err}); the defaults are 19456 / 2 / 1"
            ))
        })?;
        if self.environment == Environment::Production {
            if self.redis_url.is_none() {
                return Err(ConfigError(
                    "REDIS_URL is not set: production needs Redis so that every instance shares \
                     revocation state, e.g. REDIS_URL=redis://redis:6379"
                        .into(),
                ));
            }
            if !self.database_url.expose_secret().starts_with("postgres") {
                return Err(ConfigError(
                    "DATABASE_URL must be a PostgreSQL URL in production (SQLite cannot be shared \
                     by several instances), e.g. postgres://latchkey:PASSWORD@db:5432/latchkey"
                        .into(),
                ));
            }
            if !self.cookie_secure {
                return Err(ConfigError(
                    "COOKIE_SECURE=false is refused in production: token cookies must only travel \
                     over HTTPS. Remove COOKIE_SECURE or set it to true, and serve Latchkey behind TLS"
                        .into(),
                ));
            }
            if self.generate_missing_keys {
                return Err(ConfigError(
                    "production never generates keys: provide them with `latchkey keys generate` \
                     ahead of time"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn key_source(get: &impl Fn(&str) -> Option<String>) -> Result<KeySource, ConfigError> {
    const INLINE: [&str; 4] = [
        "ACCESS_TOKEN_PRIVATE_KEY",
        "ACCESS_TOKEN_PUBLIC_KEY",
        "REFRESH_TOKEN_PRIVATE_KEY",
        "REFRESH_TOKEN_PUBLIC_KEY",
    ];
    let given: Vec<Option<String>> = INLINE.iter().map(|name| get(name)).collect();
    if given.iter().any(Option::is_some) {
        let mut pems = Vec::with_capacity(4);
        for (name, value) in INLINE.iter().zip(given) {
            let value = value.ok_or_else(|| {
                ConfigError(format!(
                    "{name} is not set: when keys come from the environment, all four of {} \
                     must be set (base64-encoded PEM)",
                    INLINE.join(", ")
                ))
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
    let mut paths = KeyPaths::in_dir(get("KEYS_DIR").unwrap_or_else(|| "keys".into()));
    for (name, slot) in [
        ("ACCESS_TOKEN_PRIVATE_KEY_PATH", &mut paths.access_private),
        ("ACCESS_TOKEN_PUBLIC_KEY_PATH", &mut paths.access_public),
        ("REFRESH_TOKEN_PRIVATE_KEY_PATH", &mut paths.refresh_private),
        ("REFRESH_TOKEN_PUBLIC_KEY_PATH", &mut paths.refresh_public),
    ] {
        if let Some(path) = get(name) {
            *slot = PathBuf::from(path);
        }
    }
    Ok(KeySource::Files(paths))
}

fn decode_base64_pem(name: &str, value: &str) -> Result<String, ConfigError> {
    use base64::Engine;
    let compact: String = value.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|err| {
            ConfigError(format!(
                "{name} is not valid base64 ({err}): encode the PEM file with `base64 -w0 FILE`"
            ))
        })?;
    String::from_utf8(bytes).map_err(|_| {
        ConfigError(format!(
            "{name} does not decode to PEM text: encode the PEM file with `base64 -w0 FILE`"
        ))
    })
}

fn parse_or<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> Result<T, ConfigError> {
    match get(name) {
        Some(value) => value
            .parse()
            .map_err(|_| ConfigError::invalid(name, &value, "a number")),
        None => Ok(default),
    }
}

fn parse_rate(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: Rate,
) -> Result<Rate, ConfigError> {
    match get(name) {
        Some(value) => value
            .parse()
            .map_err(|err: String| ConfigError(format!("{name}: {err}"))),
        None => Ok(default),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::invalid(name, value, "true or false")),
    }
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_net(item: &str) -> Result<IpNet, ConfigError> {
    item.parse::<IpNet>()
        .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ConfigError::invalid(
                "TRUSTED_PROXIES",
                item,
                "comma-separated IP addresses or CIDR ranges",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
    }
}
