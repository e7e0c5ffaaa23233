//! Why a flow did not do what it was asked. The HTTP layer maps each variant to a status and a
//! stable code; the command line prints it.

use sea_orm::DbErr;

use super::validate::FieldError;
use crate::{
    auth::password::PasswordError,
    limits::{LimitError, Limited},
    session::SessionError,
};

/// The error of every flow.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Input that breaks the rules, every broken rule listed.
    #[error("invalid input: {}", list(.0))]
    Invalid(Vec<FieldError>),
    #[error("an account with this email already exists")]
    EmailTaken,
    /// A wrong email or password (never which of the two).
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("this account is disabled")]
    AccountDisabled,
    /// The right password of an account whose address is not proved, under
    /// `EMAIL_VERIFICATION=required`.
    #[error(
        "confirm your email address first: follow the link mailed to you, or ask for a new one"
    )]
    EmailNotVerified,
    /// An emailed link's token that is unknown, used or expired.
    #[error("this link is invalid or has expired: ask for a new one")]
    LinkInvalid,
    /// `EMAIL_FLOWS=off`.
    #[error("the email flows are turned off on this service")]
    EmailFlowsOff,
    /// A wrong, replayed or used-up second-factor code, or an `mfa_token` that is unknown,
    /// expired, used or ended by wrong codes.
    #[error("the second-factor code or the mfa_token is invalid: log in again if it expired")]
    MfaInvalid,
    #[error("a second factor is already enabled: disable it first to enroll a new one")]
    MfaAlreadyEnabled,
    #[error("no second factor is enabled on this account")]
    MfaNotEnabled,
    #[error("no TOTP enrollment is waiting for confirmation: start one first")]
    MfaNotPending,
    #[error("this would leave no active admin: promote another admin first")]
    LastAdmin,
    #[error("no such user")]
    NoSuchUser,
    #[error("no such session")]
    NoSuchSession,
    /// A token that is not valid: bad signature or claims, revoked, or its user gone or disabled.
    #[error("the token is invalid or revoked")]
    InvalidToken,
    #[error("the token has expired")]
    TokenExpired,
    /// A rotated-away refresh token came back; its session has been revoked.
    #[error("this refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    /// Over a rate limit, or an account in backoff.
    #[error("too many requests; retry in {} s", .0.retry_after_secs)]
    RateLimited(Limited),
    /// Every password-hashing slot stayed busy.
    #[error("too many password checks are in progress; retry shortly")]
    Busy,
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error(transparent)]
    Sessions(#[from] SessionError),
    /// The rate limiter's store could not be reached.
    #[error("rate limiter: {0}")]
    Limiter(crate::store::BackendError),
    #[error("internal: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl AccountError {
    /// Whether the caller's request is at fault (as opposed to a dependency or a bug).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            Self::Busy
                | Self::Database(_)
                | Self::Sessions(_)
                | Self::Limiter(_)
                | Self::Internal(_)
        )
    }
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<LimitError> for AccountError {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::Limited(limited) => Self::RateLimited(limited),
            LimitError::Unavailable(err) => Self::Limiter(err),
        }
    }
}

impl From<PasswordError> for AccountError {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::Busy => Self::Busy,
            PasswordError::Internal(err) => Self::Internal(err),
        }
    }
}

impl From<crate::auth::tokens::TokenError> for AccountError {
    fn from(err: crate::auth::tokens::TokenError) -> Self {
        match err {
            crate::auth::tokens::TokenError::Expired => Self::TokenExpired,
            crate::auth::tokens::TokenError::Invalid => Self::InvalidToken,
        }
    }
}
