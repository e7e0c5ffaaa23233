//! Abuse resistance: request rate limits and per-account login backoff.
//!
//! Counters live where the sessions live: in Redis in production, so every instance shares
//! them (one atomic script per check), in process for the embedded default. Limits are checked
//! before any password hashing, so a flood costs a counter increment, not an argon2 run.
//!
//! Backoff is per account (the normalised email): after a few free failures each further
//! failure makes the account wait longer before the next attempt is even considered, up to a
//! cap, and a success resets it. It is not a lockout: the longest wait is short (default 60 s),
//! so an attacker cannot lock a victim out for long, while guessing slows to a crawl.

pub mod memory;
pub mod redis;

use std::{fmt, sync::Arc};

use async_trait::async_trait;

use crate::{
    error::{ApiError, ErrorCode},
    session::StoreError,
    telemetry::metrics::Metrics,
};

/// `N` requests per `window_secs`, counted from the first request of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub window_secs: u64,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, self.window_secs)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `N/SECONDS`, e.g. `5/60`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (limit, window) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not N/SECONDS (e.g. 5/60)"))?;
        let limit: u64 = limit
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: the count must be a whole number"))?;
        let window_secs: u64 = window
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: the window must be a whole number of seconds"))?;
        if limit == 0 || window_secs == 0 {
            return Err(format!("{s:?}: count and window must be at least 1"));
        }
        Ok(Rate { limit, window_secs })
    }
}

/// Every limit the service applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub login_per_ip: Rate,
    pub login_per_account: Rate,
    pub register_per_ip: Rate,
    pub refresh_per_ip: Rate,
    /// Failed logins of an account before backoff starts.
    pub backoff_free_failures: u32,
    /// The first backoff delay; each further failure doubles it.
    pub backoff_base_secs: u64,
    /// The longest backoff delay.
    pub backoff_max_secs: u64,
    /// How long an account's failures are remembered without a new one.
    pub backoff_memory_secs: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            login_per_ip: Rate {
                limit: 20,
                window_secs: 60,
            },
            login_per_account: Rate {
                limit: 5,
                window_secs: 60,
            },
            register_per_ip: Rate {
                limit: 5,
                window_secs: 60,
            },
            refresh_per_ip: Rate {
                limit: 60,
                window_secs: 60,
            },
            backoff_free_failures: 3,
            backoff_base_secs: 1,
            backoff_max_secs: 60,
            backoff_memory_secs: 15 * 60,
        }
    }
}

/// Where the counters live. Every method is one atomic step.
#[async_trait]
pub trait LimitStore: Send + Sync + 'static {
    /// Counts a hit on `key`. The window starts at the key's first hit and lasts `window_secs`.
    /// Returns the count in the current window and the milliseconds until it ends.
    async fn hit(&self, key: &str, window_secs: u64) -> Result<(u64, u64), StoreError>;

    /// Milliseconds the account behind `key` must still wait, if any.
    async fn backoff_wait(&self, key: &str, now_ms: u64) -> Result<Option<u64>, StoreError>;

    /// Records a failure and returns (failures so far, the delay it imposes in ms).
    async fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        policy: &LimitSettings,
    ) -> Result<(u64, u64), StoreError>;

    /// Forgets the failures behind `key`.
    async fn reset(&self, key: &str) -> Result<(), StoreError>;
}

/// The delay after `failures` failures: none for the free ones, then base, 2 x base, 4 x
/// base, ... up to the cap.
pub fn backoff_delay_ms(failures: u64, policy: &LimitSettings) -> u64 {
    let free = u64::from(policy.backoff_free_failures);
    if failures <= free {
        return 0;
    }
    let doublings = (failures - free - 1).min(32) as u32;
    policy
        .backoff_base_secs
        .saturating_mul(1000)
        .saturating_mul(1u64 << doublings)
        .min(policy.backoff_max_secs.saturating_mul(1000))
}

/// Which counter a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    LoginPerIp,
    LoginPerAccount,
    RegisterPerIp,
    RefreshPerIp,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::LoginPerIp => "login-ip",
            Rule::LoginPerAccount => "login-account",
            Rule::RegisterPerIp => "register-ip",
            Rule::RefreshPerIp => "refresh-ip",
        }
    }
}

/// Applies the configured limits.
#[derive(Clone)]
pub struct Limiter {
    store: Arc<dyn LimitStore>,
    settings: Arc<LimitSettings>,
    metrics: Arc<Metrics>,
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Whole seconds, rounded up, so a client that waits `Retry-After` is never early.
fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl Limiter {
    pub fn new(store: Arc<dyn LimitStore>, settings: LimitSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            settings: Arc::new(settings),
            metrics,
        }
    }

    fn rate(&self, rule: Rule) -> Rate {
        match rule {
            Rule::LoginPerIp => self.settings.login_per_ip,
            Rule::LoginPerAccount => self.settings.login_per_account,
            Rule::RegisterPerIp => self.settings.register_per_ip,
            Rule::RefreshPerIp => self.settings.refresh_per_ip,
        }
    }

    /// Charges one request to `rule` for `subject` (an IP or an email); 429 `rate_limited`
    /// with `Retry-After` and `RateLimit-*` headers when over the limit.
    pub async fn check(&self, rule: Rule, subject: &str) -> Result<(), ApiError> {
        let rate = self.rate(rule);
        let key = format!("{}:{subject}", rule.name());
        let (count, reset_ms) = self.store.hit(&key, rate.window_secs).await?;
        if count <= rate.limit {
            return Ok(());
        }
        let retry_after = ceil_secs(reset_ms);
        self.metrics
            .rate_limited
            .with_label_values(&[rule.name()])
            .inc();
        tracing::info!(rule = rule.name(), retry_after, "rate limited");
        Err(ApiError {
            retry_after: Some(retry_after),
            rate_limit: Some(Box::new(RateLimitInfo {
                limit: rate.limit,
                window_secs: rate.window_secs,
                remaining: 0,
                reset_secs: retry_after,
            })),
            ..ApiError::new(
                ErrorCode::RateLimited,
                "too many requests; retry after the number of seconds in Retry-After",
            )
        })
    }

    /// 429 while the account is in backoff after failed logins.
    pub async fn check_backoff(&self, account: &str) -> Result<(), ApiError> {
        match self
            .store
            .backoff_wait(&backoff_key(account), now_ms())
            .await?
        {
            Some(wait_ms) if wait_ms > 0 => {
                let retry_after = ceil_secs(wait_ms);
                self.metrics
                    .rate_limited
                    .with_label_values(&["login-backoff"])
                    .inc();
                tracing::info!(retry_after, "login backoff");
                Err(ApiError {
                    retry_after: Some(retry_after),
                    ..ApiError::new(
                        ErrorCode::RateLimited,
                        "too many failed logins for this account; retry after the number of \
                         seconds in Retry-After",
                    )
                })
            }
            _ => Ok(()),
        }
    }

    /// Records a failed login of `account`.
    pub async fn login_failed(&self, account: &str) -> Result<(), ApiError> {
        self.store
            .record_failure(&backoff_key(account), now_ms(), &self.settings)
            .await?;
        Ok(())
    }

    /// A successful login resets the account's backoff.
    pub async fn login_succeeded(&self, account: &str) -> Result<(), ApiError> {
        self.store.reset(&backoff_key(account)).await?;
        Ok(())
    }
}

fn backoff_key(account: &str) -> String {
    format!("backoff:{account}")
}

/// The `RateLimit-*` headers of a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    pub limit: u64,
    pub window_secs: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_after_the_free_failures_up_to_the_cap() {
        let policy = LimitSettings::default();
        let delays: Vec<u64> = (1..=12).map(|f| backoff_delay_ms(f, &policy)).collect();
        assert_eq!(
            delays,
            [
                0, 0, 0, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000
            ]
        );
    }

    #[test]
    fn rates_parse_as_count_per_seconds() {
        assert_eq!(
            "5/60".parse::<Rate>(),
            Ok(Rate {
                limit: 5,
                window_secs: 60
            })
        );
        assert!("5".parse::<Rate>().is_err());
        assert!("0/60".parse::<Rate>().is_err());
        assert!("5/x".parse::<Rate>().is_err());
    }
}
