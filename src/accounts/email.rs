//! The email flows (API.md section 8): proving an address, resetting a forgotten password, and
//! changing the address. A request for a link answers the same whether or not the address has
//! an account; spending a link is one transaction, so a link works once.

use chrono::Utc;
use serde_json::json;

use super::{
    AccountError, Accounts, Caller,
    links::{LinkMail, Verification, token_hash},
    validate::{Validator, could_be_an_account, normalize_email},
};
use crate::{
    audit::{Event, EventType},
    client::ClientInfo,
    db::{
        entities::{link_token::Purpose, user},
        links::Effect,
        users::is_unique_violation,
    },
    limits::Rule,
    mail::templates::Kind,
};

/// Which link a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRequest {
    VerifyEmail,
    ResetPassword,
}

impl Accounts {
    /// Mails a link to `email` if an account there may get one: an unverified one for
    /// `VerifyEmail`, an enabled one for `ResetPassword`. Answers the same either way.
    pub async fn request_link(
        &self,
        request: LinkRequest,
        email: Option<String>,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        self.email_flows_on()?;
        let mut v = Validator::new();
        let email = v.required("email", email).map(|e| normalize_email(&e));
        let email = v.finish(email)?;
        self.limit_email(client, &email).await?;
        let user = if could_be_an_account(&email) {
            self.db.users().find_by_email(&email).await?
        } else {
            None
        };
        let (purpose, event) = match request {
            LinkRequest::VerifyEmail => {
                (Purpose::VerifyEmail, EventType::EmailVerificationRequested)
            }
            LinkRequest::ResetPassword => {
                (Purpose::ResetPassword, EventType::PasswordResetRequested)
            }
        };
        let eligible = user.as_ref().filter(|u| match request {
            LinkRequest::VerifyEmail => {
                u.email_verified_at.is_none()
                    && !u.disabled
                    && self.policy.email.verification != Verification::Off
            }
            LinkRequest::ResetPassword => !u.disabled,
        });
        if let Some(user) = eligible {
            let link = LinkMail {
                user,
                purpose,
                to: &user.email,
            };
            self.send_link(link, Vec::new()).await?;
        }
        tracing::info!(
            sent = eligible.is_some(),
            purpose = purpose.as_str(),
            "link requested"
        );
        let detail = json!({"mail_queued": eligible.is_some()});
        let event = Event::new(event, user.map(|u| u.id), None).detail(detail);
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Proves the address a verification link was mailed to.
    pub async fn verify_email(
        &self,
        token: Option<String>,
        client: &ClientInfo,
    ) -> Result<user::Model, AccountError> {
        self.email_flows_on()?;
        let hash = self.given_token(token)?;
        let user = self
            .db
            .links()
            .spend(&hash, Effect::VerifyEmail, Utc::now())
            .await?
            .ok_or(AccountError::LinkInvalid)?;
        tracing::info!(user_id = %user.id, "email verified");
        let event = Event::new(EventType::EmailVerified, Some(user.id), None);
        self.audit.record(client, event).await;
        Ok(user)
    }

    /// Sets a new password from a reset link: every session of the user ends, every other link
    /// dies, and the address counts as proved.
    pub async fn reset_password(
        &self,
        token: Option<String>,
        new_password: Option<String>,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        self.email_flows_on()?;
        let mut v = Validator::new();
        let token = v.required("token", token);
        let password = v.new_password("new_password", new_password);
        let (token, password) = v.finish(token.zip(password))?;
        let hash = token_hash(&token);
        // Checked before hashing: a made-up token costs a lookup, not an argon2 run.
        let links = self.db.links();
        let live = links
            .find_live(&hash, Purpose::ResetPassword, Utc::now())
            .await?;
        let live = live.ok_or(AccountError::LinkInvalid)?;
        let password_hash = self.passwords.hash(password.into()).await?;
        // Sessions end before the change too: if the store is down, nothing changes.
        self.sessions.revoke_all(live.user_id, None).await?;
        let effect = Effect::ResetPassword { password_hash };
        let spent = self.db.links().spend(&hash, effect, Utc::now()).await?;
        let user = spent.ok_or(AccountError::LinkInvalid)?;
        let revoked = self.sessions.revoke_all(user.id, None).await?;
        self.db.links().delete_for_user(user.id).await?;
        tracing::info!(user_id = %user.id, revoked, "password reset");
        let event = Event::new(EventType::PasswordReset, Some(user.id), None)
            .detail(json!({"sessions_revoked": revoked}));
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Asks to change the caller's address: a link to the new address, a notice to the old
    /// one. Nothing changes until the link is used.
    pub async fn request_email_change(
        &self,
        caller: &Caller,
        new_email: Option<String>,
        password: Option<String>,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        self.email_flows_on()?;
        let mut v = Validator::new();
        let new_email = v.email("new_email", new_email);
        let password = v.given_password("password", password);
        if new_email.as_deref() == Some(caller.user.email.as_str()) {
            v.fail("new_email", "is already the account's address");
        }
        let (new_email, password) = v.finish(new_email.zip(password))?;
        self.limit_email(client, &new_email).await?;
        self.confirm_password(&caller.user, "password", password)
            .await?;
        if self.db.users().find_by_email(&new_email).await?.is_some() {
            return Err(AccountError::EmailTaken);
        }
        let user = &caller.user;
        let ttl = self.policy.email.change_ttl;
        let notice = self.mail_to(
            user,
            &user.email,
            Kind::EmailChangeNotice,
            None,
            ttl,
            Some(&new_email),
        )?;
        let link = LinkMail {
            user,
            purpose: Purpose::ChangeEmail,
            to: &new_email,
        };
        self.send_link(link, vec![notice]).await?;
        tracing::info!(user_id = %user.id, "email change requested");
        let event = Event::new(
            EventType::EmailChangeRequested,
            Some(user.id),
            Some(caller.session_id),
        );
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Makes the address of a change-of-address link the account's, proved.
    pub async fn confirm_email_change(
        &self,
        token: Option<String>,
        client: &ClientInfo,
    ) -> Result<user::Model, AccountError> {
        self.email_flows_on()?;
        let hash = self.given_token(token)?;
        let user = match self
            .db
            .links()
            .spend(&hash, Effect::ChangeEmail, Utc::now())
            .await
        {
            Ok(user) => user.ok_or(AccountError::LinkInvalid)?,
            Err(err) if is_unique_violation(&err) => return Err(AccountError::EmailTaken),
            Err(err) => return Err(err.into()),
        };
        tracing::info!(user_id = %user.id, "email changed");
        let event = Event::new(EventType::EmailChanged, Some(user.id), None);
        self.audit.record(client, event).await;
        Ok(user)
    }

    /// Mails the link to prove a new account's address, unless verification is off. A failure
    /// is logged: the account exists, and the user can ask for another link.
    pub(super) async fn send_verification(&self, user: &user::Model) {
        let policy = &self.policy.email;
        if !policy.enabled || policy.verification == Verification::Off {
            return;
        }
        let link = LinkMail {
            user,
            purpose: Purpose::VerifyEmail,
            to: &user.email,
        };
        if let Err(err) = self.send_link(link, Vec::new()).await {
            tracing::warn!(user_id = %user.id, error = %err, "cannot queue the verification mail");
        }
    }

    /// Whether the right password of `user` may log in under `EMAIL_VERIFICATION`.
    pub(super) fn login_needs_verification(&self, user: &user::Model) -> bool {
        self.policy.email.verification == Verification::Required && user.email_verified_at.is_none()
    }

    /// Deletes expired link tokens and dead mails older than a month; how many rows.
    pub async fn purge_links_and_dead_mail(&self) -> Result<u64, AccountError> {
        let now = Utc::now();
        let links = self.db.links().delete_expired(now).await?;
        let month_ago = now - chrono::Duration::days(30);
        let mails = self.db.outbox().delete_dead_before(month_ago).await?;
        Ok(links + mails)
    }

    fn email_flows_on(&self) -> Result<(), AccountError> {
        if self.policy.email.enabled {
            Ok(())
        } else {
            Err(AccountError::EmailFlowsOff)
        }
    }

    fn given_token(&self, token: Option<String>) -> Result<String, AccountError> {
        let mut v = Validator::new();
        let token = v.required("token", token);
        Ok(token_hash(&v.finish(token)?))
    }

    /// The per-IP and per-address limits of the link requests.
    async fn limit_email(&self, client: &ClientInfo, email: &str) -> Result<(), AccountError> {
        self.limits
            .check(Rule::EmailPerIp, &client.ip_key())
            .await?;
        self.limits.check(Rule::EmailPerAddress, email).await?;
        Ok(())
    }
}
