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

    /// The checks before a login's hash, in order, as one atomic step: charges the IP, then
    /// (only if the IP is within its limit) the account, then reads the account's backoff.
    /// A store that can do this in one round trip overrides it.
    async fn login_gate(&self, gate: &LoginGate<'_>) -> Result<GateOutcome, StoreError> {
        let (count, reset_ms) = self.hit(gate.ip_key, gate.ip.window_secs).await?;
        if count > gate.ip.limit {
            return Ok(GateOutcome::IpLimited { reset_ms });
        }
        let (count, reset_ms) = self.hit(gate.account_key, gate.account.window_secs).await?;
        if count > gate.account.limit {
            return Ok(GateOutcome::AccountLimited { reset_ms });
        }
        Ok(
            match self.backoff_wait(gate.backoff_key, gate.now_ms).await? {
                Some(wait_ms) => GateOutcome::BackingOff { wait_ms },
                // Without a cheap way to tell whether failures are on record, assume they are.
                None => GateOutcome::Open {
                    failures_on_record: true,
                },
            },
        )
    }
}

/// What `LimitStore::login_gate` checks.
pub struct LoginGate<'a> {
    pub ip_key: &'a str,
    pub ip: Rate,
    pub account_key: &'a str,
    pub account: Rate,
    pub backoff_key: &'a str,
    pub now_ms: u64,
}

/// What `LimitStore::login_gate` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// The IP is over its login limit; the account was not charged.
    IpLimited { reset_ms: u64 },
    /// The account is over its login limit.
    AccountLimited { reset_ms: u64 },
    /// The account must still wait after failed logins.
    BackingOff { wait_ms: u64 },
    /// The login may go on. `failures_on_record`: the account has failures to forget if it
    /// succeeds.
    Open { failures_on_record: bool },
}

/// A login that passed the gate (`Limiter::check_login`).
#[must_use]
pub struct LoginAttempt {
    account: String,
    failures_on_record: bool,
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
        let key = rule_key(rule, subject);
        let (count, reset_ms) = self.store.hit(&key, rate.window_secs).await?;
        if count <= rate.limit {
            return Ok(());
        }
        Err(self.limited(rule, reset_ms))
    }

    /// The checks before a login's hash, in one round trip to the store: the IP's limit, then
    /// the account's (each 429 as from `check`), then the account's backoff (429 with
    /// `Retry-After`).
    pub async fn check_login(&self, ip: &str, account: &str) -> Result<LoginAttempt, ApiError> {
        let (ip_key, account_key) = (
            rule_key(Rule::LoginPerIp, ip),
            rule_key(Rule::LoginPerAccount, account),
        );
        let gate = LoginGate {
            ip_key: &ip_key,
            ip: self.rate(Rule::LoginPerIp),
            account_key: &account_key,
            account: self.rate(Rule::LoginPerAccount),
            backoff_key: &backoff_key(account),
            now_ms: now_ms(),
        };
        match self.store.login_gate(&gate).await? {
            GateOutcome::IpLimited { reset_ms } => Err(self.limited(Rule::LoginPerIp, reset_ms)),
            GateOutcome::AccountLimited { reset_ms } => {
                Err(self.limited(Rule::LoginPerAccount, reset_ms))
            }
            GateOutcome::BackingOff { wait_ms } => Err(self.backing_off(wait_ms)),
            GateOutcome::Open { failures_on_record } => Ok(LoginAttempt {
                account: account.to_owned(),
                failures_on_record,
            }),
        }
    }

    /// The 429 of `rule`, whose window ends in `reset_ms`.
    fn limited(&self, rule: Rule, reset_ms: u64) -> ApiError {
        let rate = self.rate(rule);
        let retry_after = ceil_secs(reset_ms);
        self.metrics
            .rate_limited
            .with_label_values(&[rule.name()])
            .inc();
        tracing::info!(rule = rule.name(), retry_after, "rate limited");
        ApiError {
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
        }
    }

    /// The 429 of an account in backoff after failed logins.
    fn backing_off(&self, wait_ms: u64) -> ApiError {
        let retry_after = ceil_secs(wait_ms);
        self.metrics
            .rate_limited
            .with_label_values(&["login-backoff"])
            .inc();
        tracing::info!(retry_after, "login backoff");
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                ErrorCode::RateLimited,
                "too many failed logins for this account; retry after the number of seconds \
                 in Retry-After",
            )
        }
    }

    /// Records a failed login of `account`.
    pub async fn login_failed(&self, account: &str) -> Result<(), ApiError> {
        self.store
            .record_failure(&backoff_key(account), now_ms(), &self.settings)
            .await?;
        Ok(())
    }

    /// A successful login resets the account's backoff (no round trip when the gate saw no
    /// failures on record; one recorded since is kept, which only errs on the strict side).
    pub async fn login_succeeded(&self, attempt: LoginAttempt) -> Result<(), ApiError> {
        if attempt.failures_on_record {
            self.store.reset(&backoff_key(&attempt.account)).await?;
        }
        Ok(())
    }
}

fn rule_key(rule: Rule, subject: &str) -> String {
    format!("{}:{subject}", rule.name())
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
