//! The `totp_factors` table: one TOTP secret per user, sealed (see `auth::mfa::SecretBox`).

use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "totp_factors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// AES-256-GCM under `MFA_ENCRYPTION_KEY`, bound to the user.
    pub secret_sealed: String,
    /// The last time step (Unix seconds / 30) accepted: that step and older ones are refused,
    /// so a code works once.
    pub last_step: Option<i64>,
    pub created_at: DateTimeUtc,
    /// `None` while the enrollment waits for its first code.
    pub confirmed_at: Option<DateTimeUtc>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpFactor")
            .field("user_id", &self.user_id)
            .field("confirmed_at", &self.confirmed_at)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
