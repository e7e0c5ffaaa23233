//! Abuse resistance: request rate limits and per-account login backoff.
//!
//! Counters live where the sessions live: in Redis in production, so every instance shares
//! them (one atomic script per check), in process for the embedded default. Limits are checked
//! before any password hashing, so a flood costs a counter increment, not an argon2 run.
//!
//! Backoff is per account (the normalised email): after a few free failures each further
//! failure makes the account wait longer before the next attempt is even considered, up to a
//! cap, and a success resets it. It is not a lockout: the longest wait is short (default 60 s),
//! so an attacker cannot lock a victim out for long, while guessing slows to a crawl. The delay
//! schedule is computed here, once, and handed to the stores ([`BackoffSchedule`]).

pub mod memory;
pub mod redis;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    store::{BackendError, clock::now_ms},
    telemetry::metrics::Metrics,
};

/// `N` requests per window, counted from the first request of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub window: Duration,
}

impl Rate {
    pub const fn per_secs(limit: u64, secs: u64) -> Self {
        Self {
            limit,
            window: Duration::from_secs(secs),
        }
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, self.window.as_secs())
    }
}

/// Why a rate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("{0:?} is not N/SECONDS (e.g. 5/60)")]
    Shape(String),
    #[error("{0:?}: count and window must be whole numbers of at least 1")]
    Number(String),
}

impl std::str::FromStr for Rate {
    type Err = RateError;

    /// `N/SECONDS`, e.g. `5/60`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (limit, window) = s
            .split_once('/')
            .ok_or_else(|| RateError::Shape(s.to_owned()))?;
        let number = |part: &str| {
            part.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| RateError::Number(s.to_owned()))
        };
        Ok(Rate::per_secs(number(limit)?, number(window)?))
    }
}

/// How failed logins slow an account down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failed logins of an account before backoff starts.
    pub free_failures: u32,
    /// The first delay; each further failure doubles it.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How long an account's failures are remembered without a new one.
    pub memory: Duration,
}

/// Every limit the service applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub login_per_ip: Rate,
    pub login_per_account: Rate,
    pub register_per_ip: Rate,
    pub refresh_per_ip: Rate,
    /// Checks of a signed-in user's password (changing it, deleting the account).
    pub password_check_per_user: Rate,
    /// Link mails asked for (verification, reset, change of address), per address and per IP.
    pub email_per_address: Rate,
    pub email_per_ip: Rate,
    pub backoff: BackoffPolicy,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            login_per_ip: Rate::per_secs(20, 60),
            login_per_account: Rate::per_secs(5, 60),
            register_per_ip: Rate::per_secs(5, 60),
            refresh_per_ip: Rate::per_secs(60, 60),
            password_check_per_user: Rate::per_secs(5, 60),
            email_per_address: Rate::per_secs(5, 3600),
            email_per_ip: Rate::per_secs(20, 3600),
            backoff: BackoffPolicy {
                free_failures: 3,
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                memory: Duration::from_secs(15 * 60),
            },
        }
    }
}

/// The delay each failure imposes, computed once from the policy: entry `i` is the delay after
/// `i + 1` failures, and the last entry holds for every failure after it. Both stores read
/// this table, so the formula has one source: [`backoff_delay_ms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffSchedule {
    pub delays_ms: Vec<u64>,
    /// How long failures are remembered, in seconds.
    pub memory_secs: u64,
}

impl BackoffSchedule {
    pub fn new(policy: &BackoffPolicy) -> Self {
        let mut delays_ms = Vec::new();
        for failures in 1.. {
            let delay = backoff_delay_ms(failures, policy);
            delays_ms.push(delay);
            let cap = u64::try_from(policy.max.as_millis()).unwrap_or(u64::MAX);
            if delay >= cap || failures > u64::from(policy.free_failures) + 64 {
                break;
            }
        }
        Self {
            delays_ms,
            memory_secs: policy.memory.as_secs().max(1),
        }
    }

    /// The delay after `failures` failures.
    pub fn delay_ms(&self, failures: u64) -> u64 {
        let index = usize::try_from(failures.max(1) - 1).unwrap_or(usize::MAX);
        self.delays_ms
            .get(index)
            .or(self.delays_ms.last())
            .copied()
            .unwrap_or(0)
    }
}

/// The delay after `failures` failures: none for the free ones, then base, 2 x base, 4 x
/// base, ... up to the cap.
pub fn backoff_delay_ms(failures: u64, policy: &BackoffPolicy) -> u64 {
    let free = u64::from(policy.free_failures);
    if failures <= free {
        return 0;
    }
    let doublings = (failures - free - 1).min(32) as u32;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ms(policy.base)
        .saturating_mul(1u64 << doublings)
        .min(ms(policy.max))
}

/// Where the counters live. Every method is one atomic step.
#[async_trait]
pub trait LimitStore: Send + Sync + 'static {
    /// Counts a hit on `key`. The window starts at the key's first hit and lasts `window_ms`.
    /// Returns the count in the current window and the milliseconds until it ends.
    async fn hit(&self, key: &str, window_ms: u64) -> Result<(u64, u64), BackendError>;

    /// The checks before a password's hash, in order: charges the outer counter (the
    /// client's IP for a login, the user for a password check), then (only if that is within
    /// its limit) the account's, then reads the account's backoff. The outer charge and the
    /// account's part are each atomic; they may be two steps, as they touch two subjects.
    async fn login_gate(&self, gate: &LoginGate<'_>) -> Result<GateOutcome, BackendError>;

    /// Records a failure and returns (failures so far, the delay it imposes in ms).
    async fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        schedule: &BackoffSchedule,
    ) -> Result<(u64, u64), BackendError>;

    /// Forgets the failures behind `key`.
    async fn reset(&self, key: &str) -> Result<(), BackendError>;
}

/// What `LimitStore::login_gate` checks. `account_key` and `backoff_key` name one subject
/// with one Redis Cluster hash tag (see [`rule_key`]), so a store can update them together.
pub struct LoginGate<'a> {
    /// The outer counter: the client's IP, or the user whose password is checked.
    pub outer_key: &'a str,
    pub outer: Rate,
    pub account_key: &'a str,
    pub account: Rate,
    pub backoff_key: &'a str,
    pub now_ms: u64,
}

/// What `LimitStore::login_gate` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// The outer counter is over its limit; the account was not charged.
    OuterLimited { reset_ms: u64 },
    /// The account is over its login limit.
    AccountLimited { reset_ms: u64 },
    /// The account must still wait after failed logins.
    BackingOff { wait_ms: u64 },
    /// The login may go on. `failures_on_record`: the account has failures to forget if it
    /// succeeds.
    Open { failures_on_record: bool },
}

/// A password check that passed the gate (`Limiter::check_login`, `check_password_check`).
#[must_use]
pub struct LoginAttempt {
    backoff_key: String,
    failures_on_record: bool,
}

/// Which counter a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    LoginPerIp,
    LoginPerAccount,
    RegisterPerIp,
    RefreshPerIp,
    PasswordCheckPerUser,
    EmailPerAddress,
    EmailPerIp,
}

impl Rule {
    /// The rule's name in store keys and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Rule::LoginPerIp => "login-ip",
            Rule::LoginPerAccount => "login-account",
            Rule::RegisterPerIp => "register-ip",
            Rule::RefreshPerIp => "refresh-ip",
            Rule::PasswordCheckPerUser => "password-check-user",
            Rule::EmailPerAddress => "email-address",
            Rule::EmailPerIp => "email-ip",
        }
    }
}

/// A request refused by a limit: how long to wait, and the rate it broke (none for backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
    pub rate: Option<Rate>,
}

/// Why a check did not let a request through.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// Over a limit, or an account in backoff.
    #[error("rate limited for {} s", .0.retry_after_secs)]
    Limited(Limited),
    /// The counters could not be reached.
    #[error("rate limiter: {0}")]
    Unavailable(#[from] BackendError),
}

/// Applies the configured limits.
#[derive(Clone)]
pub struct Limiter {
    store: Arc<dyn LimitStore>,
    settings: Arc<LimitSettings>,
    schedule: Arc<BackoffSchedule>,
    metrics: Arc<Metrics>,
}

/// Whole seconds, rounded up, so a client that waits `Retry-After` is never early.
fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl Limiter {
    pub fn new(store: Arc<dyn LimitStore>, settings: LimitSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            schedule: Arc::new(BackoffSchedule::new(&settings.backoff)),
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
            Rule::PasswordCheckPerUser => self.settings.password_check_per_user,
            Rule::EmailPerAddress => self.settings.email_per_address,
            Rule::EmailPerIp => self.settings.email_per_ip,
        }
    }

    /// Charges one request to `rule` for `subject` (an IP or an email).
    pub async fn check(&self, rule: Rule, subject: &str) -> Result<(), LimitError> {
        let rate = self.rate(rule);
        let (count, reset_ms) = self
            .store
            .hit(&rule_key(rule, subject), rate.window_ms())
            .await?;
        if count <= rate.limit {
            return Ok(());
        }
        Err(self.limited(rule, reset_ms))
    }

    /// The checks before a login's hash: the IP's limit, then the account's, then the
    /// account's backoff.
    pub async fn check_login(&self, ip: &str, account: &str) -> Result<LoginAttempt, LimitError> {
        self.gate(Rule::LoginPerIp, ip, account).await
    }

    /// The same checks before a signed-in user's password is checked (to change it, to delete
    /// the account): the user's own limit, then the account's login limit and backoff, so
    /// guesses through a stolen session count with guesses at the login form.
    pub async fn check_password_check(
        &self,
        user: &str,
        account: &str,
    ) -> Result<LoginAttempt, LimitError> {
        self.gate(Rule::PasswordCheckPerUser, user, account).await
    }

    async fn gate(
        &self,
        outer: Rule,
        subject: &str,
        account: &str,
    ) -> Result<LoginAttempt, LimitError> {
        let (outer_key, account_key) = (
            rule_key(outer, subject),
            rule_key(Rule::LoginPerAccount, account),
        );
        let backoff_key = backoff_key(account);
        let gate = LoginGate {
            outer_key: &outer_key,
            outer: self.rate(outer),
            account_key: &account_key,
            account: self.rate(Rule::LoginPerAccount),
            backoff_key: &backoff_key,
            now_ms: now_ms(),
        };
        match self.store.login_gate(&gate).await? {
            GateOutcome::OuterLimited { reset_ms } => Err(self.limited(outer, reset_ms)),
            GateOutcome::AccountLimited { reset_ms } => {
                Err(self.limited(Rule::LoginPerAccount, reset_ms))
            }
            GateOutcome::BackingOff { wait_ms } => Err(self.backing_off(wait_ms)),
            GateOutcome::Open { failures_on_record } => Ok(LoginAttempt {
                backoff_key,
                failures_on_record,
            }),
        }
    }

    /// The refusal of `rule`, whose window ends in `reset_ms`.
    fn limited(&self, rule: Rule, reset_ms: u64) -> LimitError {
        let retry_after_secs = ceil_secs(reset_ms);
        self.metrics
            .rate_limited
            .with_label_values(&[rule.name()])
            .inc();
        tracing::info!(rule = rule.name(), retry_after_secs, "rate limited");
        LimitError::Limited(Limited {
            retry_after_secs,
            rate: Some(self.rate(rule)),
        })
    }

    /// The refusal of an account in backoff after failed logins.
    fn backing_off(&self, wait_ms: u64) -> LimitError {
        let retry_after_secs = ceil_secs(wait_ms);
        self.metrics
            .rate_limited
            .with_label_values(&["login-backoff"])
            .inc();
        tracing::info!(retry_after_secs, "login backoff");
        LimitError::Limited(Limited {
            retry_after_secs,
            rate: None,
        })
    }

    /// Records a wrong password for `account` (at login or in a password check).
    pub async fn login_failed(&self, account: &str) -> Result<(), LimitError> {
        self.store
            .record_failure(&backoff_key(account), now_ms(), &self.schedule)
            .await?;
        Ok(())
    }

    /// A successful login resets the account's backoff (no round trip when the gate saw no
    /// failures on record; one recorded since is kept, which only errs on the strict side).
    pub async fn login_succeeded(&self, attempt: LoginAttempt) -> Result<(), LimitError> {
        if attempt.failures_on_record {
            self.store.reset(&attempt.backoff_key).await?;
        }
        Ok(())
    }
}

/// The store key of `subject` (an IP, a user id, an email) under `rule`: a digest, so client
/// input of any length makes a key of the same small size. The digest in braces is a Redis
/// Cluster hash tag: every key of one subject (its counters, its backoff) is in one slot.
fn rule_key(rule: Rule, subject: &str) -> String {
    format!("{}:{{{}}}", rule.name(), digest(subject))
}

fn backoff_key(account: &str) -> String {
    format!("backoff:{{{}}}", digest(account))
}

/// 128 bits of SHA-256, base64url: collisions between subjects are out of reach.
fn digest(subject: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use sha2::{Digest, Sha256};
    URL_SAFE_NO_PAD.encode(&Sha256::digest(subject.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_after_the_free_failures_up_to_the_cap() {
        let policy = LimitSettings::default().backoff;
        let schedule = BackoffSchedule::new(&policy);
        let delays: Vec<u64> = (1..=12).map(|f| schedule.delay_ms(f)).collect();
        assert_eq!(
            delays,
            [
                0, 0, 0, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000
            ]
        );
        let formula: Vec<u64> = (1..=12).map(|f| backoff_delay_ms(f, &policy)).collect();
        assert_eq!(delays, formula);
        assert_eq!(schedule.delay_ms(1_000_000), 60_000);
    }

    #[test]
    fn rates_parse_as_count_per_seconds() {
        assert_eq!("5/60".parse::<Rate>(), Ok(Rate::per_secs(5, 60)));
        assert!("5".parse::<Rate>().is_err());
        assert!("0/60".parse::<Rate>().is_err());
        assert!("5/x".parse::<Rate>().is_err());
    }
}
