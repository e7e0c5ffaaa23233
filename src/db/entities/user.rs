//! The `users` table.

use sea_orm::entity::prelude::*;

/// What an account may do. Stored as text with a CHECK constraint; add a variant here and in a
/// migration that widens the constraint to extend it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum Role {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "admin")]
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Every role, for messages and documentation.
    pub const ALL: [Role; 2] = [Role::User, Role::Admin];
}

/// An argon2id PHC string. Its `Debug` never shows it, so a model that is logged or printed
/// does not carry the hash along.
#[derive(Clone, PartialEq, Eq, DeriveValueType)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for the password check.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash([redacted])")
    }
}

/// A registered account. `password_hash` never leaves the service: API responses are built
/// from the API's `UserResponse`, not from this.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    #[sea_orm(unique)]
    pub email: String,
    pub password_hash: PasswordHash,
    pub role: Role,
    pub disabled: bool,
    /// When the address was proved; `None` while it is not.
    pub email_verified_at: Option<DateTimeUtc>,
    /// When a second factor (TOTP) was confirmed; `None` without one.
    pub mfa_enabled_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
