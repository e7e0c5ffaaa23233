//! Logging in with email and password: limits and backoff first, then the password check (the
//! same work for an unknown address), then a new session, re-checked against changes that
//! raced with it.

use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use super::{
    AccountError, Accounts, LoginOutcome,
    validate::{Validator, bounded_email, could_be_an_account, normalize_email},
};
use crate::{
    audit::{Event, EventType},
    auth::tokens::{Amr, IssuedPair, PairSubject},
    client::ClientInfo,
    db::entities::user,
    session::NewSession,
};

/// A new or refreshed session: its token pair and its user.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub pair: IssuedPair,
    pub user: user::Model,
}

impl Accounts {
    /// Logs in: a new session (one per device) with its first token pair, or, for an account
    /// with a second factor, the challenge that `finish_login` completes. A wrong password and
    /// an unknown email fail alike, after the same amount of work.
    pub async fn login(
        &self,
        email: Option<String>,
        password: Option<String>,
        client: &ClientInfo,
    ) -> Result<LoginOutcome, AccountError> {
        let mut v = Validator::new();
        let email = v
            .required("email", email)
            .map(|email| normalize_email(&email));
        let password = v.given_password("password", password);
        let (email, password) = v.finish(email.zip(password))?;
        // Limits and backoff come before any hashing.
        let attempt = self.limits.check_login(&client.ip_key(), &email).await?;
        let user = self
            .check_password(&email, password.clone(), client)
            .await?;
        self.limits.login_succeeded(attempt).await?;
        let user = self.rehash_if_needed(user, password).await?;
        if user.disabled {
            self.metrics.logins.with_label_values(&["disabled"]).inc();
            let detail = json!({"email": email, "reason": "disabled"});
            let event = Event::new(EventType::LoginFailed, Some(user.id), None).detail(detail);
            self.audit.record(client, event).await;
            return Err(AccountError::AccountDisabled);
        }
        if self.login_needs_verification(&user) {
            self.metrics.logins.with_label_values(&["unverified"]).inc();
            let detail = json!({"email": email, "reason": "email_not_verified"});
            let event = Event::new(EventType::LoginFailed, Some(user.id), None).detail(detail);
            self.audit.record(client, event).await;
            return Err(AccountError::EmailNotVerified);
        }
        if user.mfa_enabled_at.is_some() {
            let challenge = self.start_challenge(&user, client).await?;
            return Ok(LoginOutcome::SecondFactor(challenge));
        }
        let signed_in = self.start_session(user, Amr::Password, client).await?;
        let (user_id, session_id) = (signed_in.user.id, signed_in.pair.access.sid);
        tracing::info!(user_id = %user_id, session_id = %session_id, "login succeeded");
        self.metrics.logins.with_label_values(&["ok"]).inc();
        let event = Event::new(EventType::LoginSucceeded, Some(user_id), Some(session_id));
        self.audit.record(client, event).await;
        Ok(LoginOutcome::SignedIn(Box::new(signed_in)))
    }

    /// The account of `email` if `password` is its password. A failure is recorded (metrics,
    /// audit, the account's backoff) and reported as `InvalidCredentials` either way.
    async fn check_password(
        &self,
        email: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<user::Model, AccountError> {
        // An address no account can have (too long, or with control characters) is simply
        // unknown, without a lookup: same answer, same cost.
        let user = if could_be_an_account(email) {
            self.db.users().find_by_email(email).await?
        } else {
            None
        };
        // An unknown email is checked against a dummy hash so both failures cost the same.
        let stored_hash = user.as_ref().map(|u| u.password_hash.expose().to_owned());
        let valid = self.passwords.verify(password.into(), stored_hash).await?;
        match user {
            Some(user) if valid => Ok(user),
            other => {
                tracing::info!("login failed");
                self.metrics.logins.with_label_values(&["failed"]).inc();
                let reason = if other.is_some() {
                    "wrong_password"
                } else {
                    "unknown_email"
                };
                let detail = json!({"email": bounded_email(email), "reason": reason});
                let event =
                    Event::new(EventType::LoginFailed, other.map(|u| u.id), None).detail(detail);
                self.audit.record(client, event).await;
                self.limits.login_failed(email).await?;
                Err(AccountError::InvalidCredentials)
            }
        }
    }

    /// The configured argon2 cost changed since this hash was made: upgrade it now that the
    /// password is at hand, unless the password changed since it was checked (then this login
    /// fails: it proved the old password).
    async fn rehash_if_needed(
        &self,
        user: user::Model,
        password: String,
    ) -> Result<user::Model, AccountError> {
        if !self.passwords.needs_rehash(user.password_hash.expose()) {
            return Ok(user);
        }
        let hash = self.passwords.hash(SecretString::from(password)).await?;
        let id = user.id;
        match self.db.users().replace_password_hash(user, hash).await? {
            Some(user) => {
                tracing::info!(user_id = %id, "password rehashed with the current parameters");
                Ok(user)
            }
            None => {
                tracing::info!(user_id = %id, "the password changed during the login's rehash");
                Err(AccountError::InvalidCredentials)
            }
        }
    }

    /// A new session for `user`, signed in to as `amr` says, with its first pair.
    pub(super) async fn start_session(
        &self,
        user: user::Model,
        amr: Amr,
        client: &ClientInfo,
    ) -> Result<SignedIn, AccountError> {
        let session_id = Uuid::new_v4();
        let subject = PairSubject {
            user_id: user.id,
            role: user.role.as_str(),
            sid: session_id,
            amr,
        };
        let pair = self.tokens.issue_pair(&subject).await?;
        let session = NewSession {
            id: session_id,
            user_id: user.id,
            user_agent: client.user_agent.clone(),
            ip: client.ip.map(|ip| ip.to_string()),
            created_at: pair.access.iat,
            access_jti: pair.access.jti,
            access_exp: pair.access.exp,
            refresh_jti: pair.refresh.jti,
            refresh_exp: pair.refresh.exp,
        };
        self.sessions.create(session).await?;
        // A password change or a disable that completed while this login was hashing has
        // already revoked every session; make sure this one does not slip past it.
        let current = self.db.users().find_by_id(user.id).await?;
        if current.as_ref().is_none_or(|c| {
            c.password_hash != user.password_hash || c.disabled || c.role != user.role
        }) {
            self.sessions.revoke(user.id, session_id).await?;
            return Err(AccountError::InvalidCredentials);
        }
        Ok(SignedIn { pair, user })
    }
}
