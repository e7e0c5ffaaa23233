//! The emailed links: their tokens (random, stored only as digests) and the mails that carry
//! them, queued in the transaction that stores the token.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{SubsecRound, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AccountError, Accounts};
use crate::{
    db::entities::{
        link_token::{self, Purpose},
        mail_outbox::{self, Status},
        user,
    },
    mail::templates::{self, Context, Kind},
};

/// How the account's address is checked (`EMAIL_VERIFICATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// No verification mail; `email_verified` only changes through a reset or a change.
    Off,
    /// Registration mails a link; unverified accounts log in all the same.
    Optional,
    /// As `Optional`, and the right password of an unverified account gets 403.
    Required,
}

/// The email flows' settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailPolicy {
    /// `EMAIL_FLOWS`: off, no flow sends mail and their endpoints answer 404.
    pub enabled: bool,
    pub verification: Verification,
    pub verify_ttl: Duration,
    pub reset_ttl: Duration,
    pub change_ttl: Duration,
    /// Where links point: `EMAIL_LINK_BASE`, else `{PUBLIC_URL}/account` (filled in at start).
    pub link_base: String,
}

impl Default for EmailPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            verification: Verification::Optional,
            verify_ttl: Duration::from_secs(86_400),
            reset_ttl: Duration::from_secs(1_800),
            change_ttl: Duration::from_secs(3_600),
            link_base: String::new(),
        }
    }
}

/// 32 random bytes, base64url: what a link carries.
pub(super) fn new_token() -> Result<String, AccountError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| AccountError::Internal(anyhow::anyhow!("no randomness for a link token")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored of a token: its SHA-256, hex.
pub(super) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A link mail to send.
pub(super) struct LinkMail<'a> {
    pub user: &'a user::Model,
    pub purpose: Purpose,
    /// The address the mail goes to, which the link proves.
    pub to: &'a str,
}

impl Accounts {
    /// Stores a new token for `link` (voiding the user's earlier one of its purpose) and queues
    /// its mail, plus `also` (e.g. a notice to the old address), in one transaction.
    pub(super) async fn send_link(
        &self,
        link: LinkMail<'_>,
        also: Vec<mail_outbox::Model>,
    ) -> Result<(), AccountError> {
        let policy = &self.policy.email;
        let (kind, page, ttl) = match link.purpose {
            Purpose::VerifyEmail => (Kind::VerifyEmail, "verify-email", policy.verify_ttl),
            Purpose::ResetPassword => (Kind::ResetPassword, "reset-password", policy.reset_ttl),
            Purpose::ChangeEmail => (Kind::ChangeEmail, "confirm-email", policy.change_ttl),
        };
        let token = new_token()?;
        let url = format!("{}/{page}?token={token}", policy.link_base);
        let mail = self.mail_to(link.user, link.to, kind, Some(&url), ttl, None)?;
        let now = Utc::now().trunc_subsecs(6);
        let row = link_token::Model {
            token_hash: token_hash(&token),
            user_id: link.user.id,
            purpose: link.purpose,
            email: link.to.to_owned(),
            created_at: now,
            expires_at: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
        };
        let mut mails = vec![mail];
        mails.extend(also);
        self.db.links().issue(row, mails).await?;
        self.mail_queue.queued();
        Ok(())
    }

    /// An outbox row for `kind` to `to`, rendered now.
    pub(super) fn mail_to(
        &self,
        user: &user::Model,
        to: &str,
        kind: Kind,
        link: Option<&str>,
        ttl: Duration,
        new_email: Option<&str>,
    ) -> Result<mail_outbox::Model, AccountError> {
        let service = self.service_name();
        let context = Context {
            name: &user.name,
            email: to,
            new_email,
            link,
            lifetime: ttl,
            service: &service,
        };
        let rendered = templates::render(kind, &context)
            .map_err(|err| AccountError::Internal(anyhow::anyhow!("mail template: {err}")))?;
        let now = Utc::now().trunc_subsecs(6);
        Ok(mail_outbox::Model {
            id: Uuid::new_v4(),
            user_id: Some(user.id),
            kind: kind.as_str().to_owned(),
            recipient: to.to_owned(),
            subject: rendered.subject,
            body_text: Some(rendered.text),
            body_html: Some(rendered.html),
            link: link.map(str::to_owned),
            status: Status::Pending,
            attempts: 0,
            next_attempt_at: now,
            locked_until: None,
            last_error: None,
            created_at: now,
        })
    }

    /// The name mails call the service by: the host of the links.
    fn service_name(&self) -> String {
        let base = &self.policy.email.link_base;
        let host = base.split("://").nth(1).unwrap_or(base);
        host.split('/').next().unwrap_or(host).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_stored_as_their_digest() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes, base64url without padding");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        let digest = token_hash(&a);
        assert_eq!(digest.len(), 64);
        assert!(!digest.contains(&a));
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
