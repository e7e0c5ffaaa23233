//! User queries. They return `DbErr`, never HTTP types: the API layer decides what a failure
//! means to a client.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set,
};
use uuid::Uuid;

use super::entities::user;

/// The role every new account gets.
pub const DEFAULT_ROLE: &str = "user";

/// Now, at the microsecond precision PostgreSQL stores, so every backend returns the same value.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Fields of a new account, already validated and normalised.
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
}

/// Inserts a user. A taken email fails with a unique-constraint `DbErr` (see
/// [`is_unique_violation`]).
pub async fn insert(db: &DatabaseConnection, new: NewUser) -> Result<user::Model, DbErr> {
    let now = now();
    user::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(new.name),
        email: Set(new.email),
        password_hash: Set(new.password_hash),
        role: Set(new.role),
        disabled: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
}

pub async fn find_by_id(db: &DatabaseConnection, id: Uuid) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find_by_id(id).one(db).await
}

/// Looks a user up by an already-normalised email.
pub async fn find_by_email(
    db: &DatabaseConnection,
    email: &str,
) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find()
        .filter(user::Column::Email.eq(email))
        .one(db)
        .await
}

pub async fn update_name(
    db: &DatabaseConnection,
    user: user::Model,
    name: String,
) -> Result<user::Model, DbErr> {
    let mut active: user::ActiveModel = user.into();
    active.name = Set(name);
    active.updated_at = Set(now());
    active.update(db).await
}

pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<bool, DbErr> {
    Ok(user::Entity::delete_by_id(id).exec(db).await?.rows_affected > 0)
}

/// Sets the role of the account with this email; `None` if there is none.
pub async fn set_role(
    db: &DatabaseConnection,
    email: &str,
    role: &str,
) -> Result<Option<user::Model>, DbErr> {
    let Some(found) = find_by_email(db, email).await? else {
        return Ok(None);
    };
    let mut active: user::ActiveModel = found.into();
    active.role = Set(role.to_owned());
    active.updated_at = Set(now());
    active.update(db).await.map(Some)
}

/// Does this error say a unique constraint (the email) was violated? Works on SQLite and
/// PostgreSQL alike.
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
