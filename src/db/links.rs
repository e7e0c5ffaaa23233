//! The emailed links' tokens, and what spending one changes, each in one transaction: the
//! token row is deleted (`DELETE ... RETURNING`) in the transaction that applies its effect, so
//! of two concurrent uses exactly one finds the row, and a failed effect leaves it unspent.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, Set, TransactionTrait,
};
use uuid::Uuid;

use super::entities::{
    link_token::{self, Purpose},
    mail_outbox, user,
};

/// What spending a token changes.
pub enum Effect {
    /// The address is proved.
    VerifyEmail,
    /// A new password hash; the address is proved too (the link reached it).
    ResetPassword { password_hash: String },
    /// The address becomes the token's (a unique violation if it was taken meanwhile).
    ChangeEmail,
}

impl Effect {
    fn purpose(&self) -> Purpose {
        match self {
            Effect::VerifyEmail => Purpose::VerifyEmail,
            Effect::ResetPassword { .. } => Purpose::ResetPassword,
            Effect::ChangeEmail => Purpose::ChangeEmail,
        }
    }
}

/// Queries of the `link_tokens` table.
pub struct LinkTokens<'a> {
    conn: &'a DatabaseConnection,
}

impl<'a> LinkTokens<'a> {
    pub(super) fn new(conn: &'a DatabaseConnection) -> Self {
        Self { conn }
    }

    /// Stores `token` in place of the user's earlier token of the same purpose (a newer
    /// request voids the older link) and queues `mails`, all or nothing.
    pub async fn issue(
        &self,
        token: link_token::Model,
        mails: Vec<mail_outbox::Model>,
    ) -> Result<(), DbErr> {
        let txn = self.conn.begin().await?;
        link_token::Entity::delete_many()
            .filter(link_token::Column::UserId.eq(token.user_id))
            .filter(link_token::Column::Purpose.eq(token.purpose))
            .exec(&txn)
            .await?;
        link_token::ActiveModel::from(token).insert(&txn).await?;
        for mail in mails {
            mail_outbox::ActiveModel::from(mail).insert(&txn).await?;
        }
        txn.commit().await
    }

    /// The unspent, unexpired token with this digest, without spending it.
    pub async fn find_live(
        &self,
        token_hash: &str,
        purpose: Purpose,
        now: DateTime<Utc>,
    ) -> Result<Option<link_token::Model>, DbErr> {
        link_token::Entity::find_by_id(token_hash.to_owned())
            .filter(link_token::Column::Purpose.eq(purpose))
            .filter(link_token::Column::ExpiresAt.gt(now))
            .one(self.conn)
            .await
    }

    /// Spends the live token with this digest and applies `effect` to its user; the user as
    /// changed, or `None` when no such token is live (unknown, used, expired, or its user
    /// gone).
    pub async fn spend(
        &self,
        token_hash: &str,
        effect: Effect,
        now: DateTime<Utc>,
    ) -> Result<Option<user::Model>, DbErr> {
        let txn = self.conn.begin().await?;
        let spent = link_token::Entity::delete_many()
            .filter(link_token::Column::TokenHash.eq(token_hash))
            .filter(link_token::Column::Purpose.eq(effect.purpose()))
            .filter(link_token::Column::ExpiresAt.gt(now))
            .exec_with_returning(&txn)
            .await?;
        let Some(token) = spent.into_iter().next() else {
            return Ok(None);
        };
        let Some(user) = user::Entity::find_by_id(token.user_id).one(&txn).await? else {
            return Ok(None);
        };
        let user = apply(&txn, user, &token, effect, now).await?;
        txn.commit().await?;
        Ok(Some(user))
    }

    /// Deletes the tokens that expired before `now`; how many.
    pub async fn delete_expired(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let deleted = link_token::Entity::delete_many()
            .filter(link_token::Column::ExpiresAt.lte(now))
            .exec(self.conn)
            .await?;
        Ok(deleted.rows_affected)
    }

    /// Voids every token of `user_id` (its password was reset: older links must not outlive
    /// it).
    pub async fn delete_for_user(&self, user_id: Uuid) -> Result<u64, DbErr> {
        let deleted = link_token::Entity::delete_many()
            .filter(link_token::Column::UserId.eq(user_id))
            .exec(self.conn)
            .await?;
        Ok(deleted.rows_affected)
    }
}

async fn apply(
    txn: &DatabaseTransaction,
    user: user::Model,
    token: &link_token::Model,
    effect: Effect,
    now: DateTime<Utc>,
) -> Result<user::Model, DbErr> {
    let now = now.trunc_subsecs(6);
    // The link proves the address it was mailed to, which may no longer be the account's.
    let proves_current = user.email == token.email;
    let mut active: user::ActiveModel = user.into();
    match effect {
        Effect::VerifyEmail => {}
        Effect::ResetPassword { password_hash } => {
            active.password_hash = Set(user::PasswordHash::new(password_hash));
        }
        Effect::ChangeEmail => active.email = Set(token.email.clone()),
    }
    if proves_current || matches!(token.purpose, Purpose::ChangeEmail) {
        active.email_verified_at = Set(Some(now));
    }
    active.updated_at = Set(now);
    active.update(txn).await
}
