//! The flows of an account: register, log in, refresh, log out, change what the user may
//! change, and what admins do. Each is a method of [`Accounts`] over the stores below it
//! (database, session store, limits, password hashing, tokens, audit); each takes a
//! [`ClientInfo`](crate::client::ClientInfo), never an HTTP request, so the HTTP API and the
//! command line run the same code. Errors are [`AccountError`]s.

mod admin;
mod email;
mod error;
mod guard;
mod links;
mod login;
mod mfa;
mod paging;
mod profile;
mod refresh;
mod register;
mod sessions;
pub mod validate;

use std::{sync::Arc, time::Duration};

pub use self::{
    admin::AdminUpdate,
    email::LinkRequest,
    error::AccountError,
    guard::Caller,
    links::{EmailPolicy, Verification},
    login::SignedIn,
    mfa::{CHALLENGE_SECS, LoginOutcome, MfaChallenge, Proof},
    paging::{Page, PageQuery},
    refresh::RefreshKind,
    register::{NewAccount, Registration},
};
use crate::{
    audit::Audit,
    auth::{mfa::SecretBox, password::PasswordService, tokens::TokenService},
    db::Database,
    limits::Limiter,
    mail::MailQueue,
    session::{SessionStore, challenge::ChallengeStore},
    telemetry::metrics::Metrics,
};

/// What the flows need beyond their stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPolicy {
    /// How long a just-rotated refresh token still gets the same new pair
    /// (`REFRESH_REUSE_GRACE`); zero turns the grace window off.
    pub refresh_grace: Duration,
    pub email: EmailPolicy,
}

/// The stores and services the flows run on.
pub struct Stores {
    pub db: Database,
    pub sessions: Arc<dyn SessionStore>,
    pub limits: Limiter,
    pub passwords: PasswordService,
    pub tokens: Arc<TokenService>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// Wakes the mail worker when a flow queues a mail.
    pub mail_queue: MailQueue,
    /// Logins waiting for their second factor.
    pub challenges: Arc<dyn ChallengeStore>,
    pub mfa: MfaSetup,
}

/// What TOTP needs: the key its secrets are sealed with, and the issuer name authenticator
/// apps show.
#[derive(Clone)]
pub struct MfaSetup {
    pub secrets: Arc<SecretBox>,
    pub issuer: String,
}

/// Every account flow.
pub struct Accounts {
    db: Database,
    sessions: Arc<dyn SessionStore>,
    limits: Limiter,
    passwords: PasswordService,
    tokens: Arc<TokenService>,
    audit: Audit,
    metrics: Arc<Metrics>,
    mail_queue: MailQueue,
    challenges: Arc<dyn ChallengeStore>,
    mfa: MfaSetup,
    policy: AccountPolicy,
}

impl Accounts {
    pub fn new(stores: Stores, policy: AccountPolicy) -> Self {
        Self {
            db: stores.db,
            sessions: stores.sessions,
            limits: stores.limits,
            passwords: stores.passwords,
            tokens: stores.tokens,
            audit: stores.audit,
            metrics: stores.metrics,
            mail_queue: stores.mail_queue,
            challenges: stores.challenges,
            mfa: stores.mfa,
            policy,
        }
    }

    /// Deletes the audit events older than `retention`; how many.
    pub async fn purge_audit(&self, retention: Duration) -> Result<u64, AccountError> {
        Ok(self.audit.purge(retention).await?)
    }

    /// Which of the service's dependencies are down: `database`, `session_store`.
    pub async fn dependencies_down(&self) -> Vec<&'static str> {
        let (db, store) = tokio::join!(self.db.ping(), self.sessions.ping());
        let mut down = Vec::new();
        if let Err(err) = db {
            tracing::warn!(error = %err, "readiness: database down");
            down.push("database");
        }
        if let Err(err) = store {
            tracing::warn!(error = %err, "readiness: session store down");
            down.push("session_store");
        }
        down
    }
}
