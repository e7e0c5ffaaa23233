//! The second factor's rows: a user's TOTP factor and recovery codes. Every change that must
//! happen once (a time step accepted, a recovery code spent) is one conditional statement, so
//! of two instances racing with the same code exactly one succeeds.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, Set, TransactionTrait, sea_query::Expr,
};
use uuid::Uuid;

use super::entities::{recovery_code, totp_factor, user};

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Queries of `totp_factors` and `recovery_codes`.
pub struct Mfa<'a> {
    conn: &'a DatabaseConnection,
}

impl<'a> Mfa<'a> {
    pub(super) fn new(conn: &'a DatabaseConnection) -> Self {
        Self { conn }
    }

    pub async fn factor(&self, user_id: Uuid) -> Result<Option<totp_factor::Model>, DbErr> {
        totp_factor::Entity::find_by_id(user_id)
            .one(self.conn)
            .await
    }

    /// Starts an enrollment: a pending factor in place of any earlier pending one. `false` if
    /// the user has a confirmed factor (it is not replaced).
    pub async fn start(&self, user_id: Uuid, secret_sealed: String) -> Result<bool, DbErr> {
        let txn = self.conn.begin().await?;
        let deleted = totp_factor::Entity::delete_many()
            .filter(totp_factor::Column::UserId.eq(user_id))
            .filter(totp_factor::Column::ConfirmedAt.is_null())
            .exec(&txn)
            .await?;
        let confirmed = deleted.rows_affected == 0 && self.exists(&txn, user_id).await?;
        if confirmed {
            return Ok(false);
        }
        let factor = totp_factor::ActiveModel {
            user_id: Set(user_id),
            secret_sealed: Set(secret_sealed),
            last_step: Set(None),
            created_at: Set(now()),
            confirmed_at: Set(None),
        };
        factor.insert(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }

    async fn exists(&self, conn: &impl ConnectionTrait, user_id: Uuid) -> Result<bool, DbErr> {
        Ok(totp_factor::Entity::find_by_id(user_id)
            .one(conn)
            .await?
            .is_some())
    }

    /// Confirms the pending factor with the step of its first code, turns the second factor on
    /// and stores the recovery codes. `false` if there was no pending factor (confirmed
    /// meanwhile, or none).
    pub async fn confirm(
        &self,
        user_id: Uuid,
        step: i64,
        code_hashes: Vec<String>,
    ) -> Result<bool, DbErr> {
        let txn = self.conn.begin().await?;
        let at = now();
        let confirmed = totp_factor::Entity::update_many()
            .col_expr(totp_factor::Column::ConfirmedAt, Expr::value(Some(at)))
            .col_expr(totp_factor::Column::LastStep, Expr::value(Some(step)))
            .filter(totp_factor::Column::UserId.eq(user_id))
            .filter(totp_factor::Column::ConfirmedAt.is_null())
            .exec(&txn)
            .await?;
        if confirmed.rows_affected != 1 {
            return Ok(false);
        }
        set_enabled(&txn, user_id, Some(at)).await?;
        replace_codes(&txn, user_id, code_hashes).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Accepts time step `step` of the confirmed factor if no later-or-equal step was accepted
    /// before: a code works once, on every instance.
    pub async fn spend_step(&self, user_id: Uuid, step: i64) -> Result<bool, DbErr> {
        let updated = totp_factor::Entity::update_many()
            .col_expr(totp_factor::Column::LastStep, Expr::value(Some(step)))
            .filter(totp_factor::Column::UserId.eq(user_id))
            .filter(totp_factor::Column::ConfirmedAt.is_not_null())
            .filter(
                sea_orm::Condition::any()
                    .add(totp_factor::Column::LastStep.is_null())
                    .add(totp_factor::Column::LastStep.lt(step)),
            )
            .exec(self.conn)
            .await?;
        Ok(updated.rows_affected == 1)
    }

    /// Spends one recovery code: `false` if the user has no such unused code.
    pub async fn spend_recovery_code(&self, user_id: Uuid, code_hash: &str) -> Result<bool, DbErr> {
        let deleted = recovery_code::Entity::delete_many()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .filter(recovery_code::Column::CodeHash.eq(code_hash))
            .exec(self.conn)
            .await?;
        Ok(deleted.rows_affected == 1)
    }

    /// The user's unused recovery codes: how many.
    pub async fn recovery_codes_left(&self, user_id: Uuid) -> Result<u64, DbErr> {
        use sea_orm::PaginatorTrait;
        recovery_code::Entity::find()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .count(self.conn)
            .await
    }

    /// New recovery codes in place of every old one.
    pub async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        code_hashes: Vec<String>,
    ) -> Result<(), DbErr> {
        let txn = self.conn.begin().await?;
        replace_codes(&txn, user_id, code_hashes).await?;
        txn.commit().await
    }

    /// Removes the factor and the recovery codes and turns the second factor off. `false` if
    /// there was nothing to remove.
    pub async fn remove(&self, user_id: Uuid) -> Result<bool, DbErr> {
        let txn = self.conn.begin().await?;
        let factors = totp_factor::Entity::delete_many()
            .filter(totp_factor::Column::UserId.eq(user_id))
            .exec(&txn)
            .await?;
        recovery_code::Entity::delete_many()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .exec(&txn)
            .await?;
        let was_enabled = set_enabled(&txn, user_id, None).await?;
        txn.commit().await?;
        Ok(factors.rows_affected > 0 || was_enabled)
    }

    /// Every factor, for re-sealing under a new key.
    pub async fn all_factors(&self) -> Result<Vec<totp_factor::Model>, DbErr> {
        totp_factor::Entity::find().all(self.conn).await
    }

    /// Replaces a factor's sealed secret if it is still `old` (not changed meanwhile).
    pub async fn reseal(&self, user_id: Uuid, old: &str, new: String) -> Result<bool, DbErr> {
        let updated = totp_factor::Entity::update_many()
            .col_expr(totp_factor::Column::SecretSealed, Expr::value(new))
            .filter(totp_factor::Column::UserId.eq(user_id))
            .filter(totp_factor::Column::SecretSealed.eq(old))
            .exec(self.conn)
            .await?;
        Ok(updated.rows_affected == 1)
    }
}

/// Sets `users.mfa_enabled_at`; whether it was set before.
async fn set_enabled(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
    at: Option<DateTime<Utc>>,
) -> Result<bool, DbErr> {
    let was = user::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .is_some_and(|u| u.mfa_enabled_at.is_some());
    user::Entity::update_many()
        .col_expr(user::Column::MfaEnabledAt, Expr::value(at))
        .col_expr(user::Column::UpdatedAt, Expr::value(now()))
        .filter(user::Column::Id.eq(user_id))
        .exec(conn)
        .await?;
    Ok(was)
}

async fn replace_codes(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
    code_hashes: Vec<String>,
) -> Result<(), DbErr> {
    recovery_code::Entity::delete_many()
        .filter(recovery_code::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    let at = now();
    let rows = code_hashes
        .into_iter()
        .map(|code_hash| recovery_code::ActiveModel {
            user_id: Set(user_id),
            code_hash: Set(code_hash),
            created_at: Set(at),
        });
    recovery_code::Entity::insert_many(rows).exec(conn).await?;
    Ok(())
}
