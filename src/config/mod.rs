//! Settings are read from the environment once (in `main`), validated once, and then passed
//! around typed: durations as `Duration`, rates as `Rate`, each concern in a struct of its own.
//! No handler reads the environment; tests build `Settings` directly.
//!
//! Every variable is documented in `app.env.example`. Production refuses unsafe values at
//! startup with a message that says how to fix them ([`rules`]); key problems are reported by
//! [`crate::auth::keys`] when the keys are loaded.

mod email;
mod mfa;
mod read;
mod rules;
mod vars;

use std::{collections::HashMap, fmt, time::Duration};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

pub use self::mfa::MfaSettings;
pub use self::rules::{MAX_ACCESS_TTL, MAX_KEYS_RELOAD, MAX_REFRESH_GRACE, MAX_REFRESH_TTL};
use crate::{
    accounts::AccountPolicy,
    audit::AuditSettings,
    auth::{
        keys::{KeySource, LoadRules},
        password::PasswordSettings,
        tokens::TokenSettings,
    },
    limits::LimitSettings,
    mail::DeliverySettings,
    store::{
        BackendError,
        redis::{RedisAccess, RedisOptions, read_ca_pem},
    },
    telemetry::LogFormat,
};

/// `APP_ENV`: development is forgiving and self-provisioning; production is strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// A URL that may carry a password: a secret, shown with the password replaced by `***`.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url.into())
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.into())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(self.expose()))
    }
}

/// Where and how the service listens, and what it believes about its clients.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    /// The service's external base URL (`PUBLIC_URL`), without a trailing slash: the issuer
    /// of its tokens by default, and the base of the URLs it hands out (discovery, mail
    /// links). `None` until resolved in development: `http://HOST:PORT`.
    pub public_url: Option<String>,
    /// Longest time a request may take before 503 (`REQUEST_TIMEOUT_SECS`).
    pub request_timeout: Duration,
    /// Origins allowed to send cookie-authenticated unsafe requests, and to read answers.
    pub allowed_origins: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// The database.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretUrl,
    /// Most connections of each pool (`DATABASE_POOL_SIZE`); `None`: the backend's default
    /// (see `db::connect`).
    pub pool_size: Option<u32>,
}

/// Redis, when sessions and limits live there.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `None` selects the in-process stores (development only).
    pub url: Option<SecretUrl>,
    /// Prefix of every key (`REDIS_KEY_PREFIX`).
    pub key_prefix: String,
    pub access: RedisAccess,
    /// Most connections with `REDIS_ACCESS=pooled`.
    pub pool_size: usize,
    /// A PEM bundle of the private CA that signed Redis's TLS certificate (`REDIS_CA_CERT`);
    /// `None`: the system's CAs.
    pub ca_cert: Option<std::path::PathBuf>,
}

impl RedisSettings {
    /// How to connect: the access pattern and the CA bundle (read now).
    pub fn options(&self) -> Result<RedisOptions, BackendError> {
        let ca_pem = match &self.ca_cert {
            Some(path) => Some(read_ca_pem(path).map_err(|why| {
                BackendError::Config(format!("REDIS_CA_CERT={}: {why}", path.display()))
            })?),
            None => None,
        };
        Ok(RedisOptions {
            access: self.access,
            pool_size: self.pool_size,
            ca_pem,
        })
    }
}

/// The RSA keys and their publication.
#[derive(Debug, Clone)]
pub struct KeySettings {
    pub source: KeySource,
    /// Development only: create missing key files on start.
    pub generate_missing: bool,
    /// Production: refuse private key files their group or others may read.
    pub owner_only: bool,
    /// How often a running instance re-reads its key directory (`KEYS_RELOAD_SECS`).
    pub reload_every: Duration,
    /// `Cache-Control: max-age` of the JWKS (`JWKS_MAX_AGE`).
    pub jwks_max_age: Duration,
}

impl KeySettings {
    /// How the keys are loaded under these settings.
    pub fn load_rules(&self) -> LoadRules {
        LoadRules {
            generate_missing: self.generate_missing,
            owner_only: self.owner_only,
        }
    }
}

/// Browser cookies.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// `Secure` on the access and `logged_in` cookies (forced on in production).
    pub secure: bool,
    pub domain: Option<String>,
}

/// Everything the service needs to run, typed and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub keys: KeySettings,
    pub tokens: TokenSettings,
    pub accounts: AccountPolicy,
    pub cookies: CookieSettings,
    pub passwords: PasswordSettings,
    pub limits: LimitSettings,
    pub audit: AuditSettings,
    pub mail: MailSettings,
    pub mfa: MfaSettings,
    pub log_format: LogFormat,
}

/// How mail leaves the service.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `SMTP_URL`. Unset (development only): each mail is an `.eml` file in `outbox_dir`.
    pub smtp_url: Option<SecretUrl>,
    /// The development outbox folder; `None`: `outbox/` beside the SQLite file, else
    /// `data/outbox`.
    pub outbox_dir: Option<std::path::PathBuf>,
    pub delivery: DeliverySettings,
}

/// A setting that cannot be accepted, with the fix in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is invalid: expected {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{var} is not set: {fix}")]
    Missing { var: &'static str, fix: String },
    #[error("{var}={value} {why}")]
    Refused {
        var: &'static str,
        value: String,
        why: String,
    },
}

impl ConfigError {
    fn invalid(var: &'static str, value: &str, expected: &'static str) -> Self {
        Self::Invalid {
            var,
            value: value.to_owned(),
            expected,
        }
    }

    fn refused(var: &'static str, value: impl fmt::Display, why: impl Into<String>) -> Self {
        Self::Refused {
            var,
            value: value.to_string(),
            why: why.into(),
        }
    }
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
        let settings = read::settings(&vars::Vars(vars))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Development defaults with the given key source: what tests start from.
    pub fn development(keys: KeySource) -> Self {
        let mut settings =
            Self::from_vars(&HashMap::new()).expect("the built-in development defaults are valid");
        settings.keys.source = keys;
        settings.keys.generate_missing = false;
        settings
    }

    /// Checks the rules that do not need the keys themselves. Called by `from_vars`, and again
    /// by `Application::build` so hand-built settings get the same scrutiny.
    pub fn validate(&self) -> Result<(), ConfigError> {
        rules::validate(self)
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// Fills in the development defaults that depend on where the service listens: the public
    /// URL (`http://HOST:PORT`, with the port actually bound when one is given) and the issuer
    /// when `JWT_ISSUER` and `PUBLIC_URL` are unset.
    pub fn resolve_public_url(&mut self, bound: Option<std::net::SocketAddr>) {
        let http = &mut self.http;
        if http.public_url.is_none() {
            let port = bound.map_or(http.port, |addr| addr.port());
            let host = match http.host.as_str() {
                "0.0.0.0" | "::" | "[::]" => "localhost".to_owned(),
                host if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
                host => host.to_owned(),
            };
            http.public_url = Some(format!("http://{host}:{port}"));
        }
        if self.tokens.issuer.is_empty() {
            self.tokens.issuer = http.public_url.clone().unwrap_or_default();
        }
        let links = &mut self.accounts.email.link_base;
        if links.is_empty() {
            *links = format!("{}/account", http.public_url.as_deref().unwrap_or_default());
        }
    }

    /// The public URL (resolved: see [`Settings::resolve_public_url`]).
    pub fn public_url(&self) -> &str {
        self.http.public_url.as_deref().unwrap_or_default()
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

    #[test]
    fn settings_debug_shows_no_secret() {
        let mut vars = HashMap::new();
        vars.insert(
            "DATABASE_URL".to_owned(),
            "postgres://app:s3cret@db/x".to_owned(),
        );
        let settings = Settings::from_vars(&vars).unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("app:***@db"), "{debug}");
    }
}
