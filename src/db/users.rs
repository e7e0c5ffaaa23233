//! The users repository. Reads of the hot path (the guard's, refresh's) go through the read
//! connections; everything else through SeaORM's pool. Callers do not choose.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Set, TransactionTrait,
    sea_query::{Expr, ExprTrait, LikeExpr},
};
use uuid::Uuid;

use super::{
    COUNT_CAP, PageStart,
    entities::user::{self, PasswordHash, Role},
    reads::Reads,
};

/// Now, at the microsecond precision PostgreSQL stores, so every backend returns the same value.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Fields of a new account, already validated and normalised.
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    /// The address is known to be the user's: marked verified at once.
    pub verified: bool,
}

/// Queries of the `users` table.
pub struct Users<'a> {
    conn: &'a DatabaseConnection,
    reads: &'a Reads,
}

impl<'a> Users<'a> {
    pub(super) fn new(conn: &'a DatabaseConnection, reads: &'a Reads) -> Self {
        Self { conn, reads }
    }

    /// Inserts a user. A taken email fails with a unique-constraint `DbErr` (see
    /// [`is_unique_violation`]).
    pub async fn insert(&self, new: NewUser) -> Result<user::Model, DbErr> {
        let now = now();
        user::ActiveModel {
            id: Set(Uuid::new_v4()),
            name: Set(new.name),
            email: Set(new.email),
            password_hash: Set(PasswordHash::new(new.password_hash)),
            role: Set(new.role),
            disabled: Set(false),
            email_verified_at: Set(new.verified.then_some(now)),
            mfa_enabled_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.conn)
        .await
    }

    /// The hot path's load (the guard's, refresh's and login's re-check).
    pub async fn find_by_id(&self, id: Uuid) -> Result<Option<user::Model>, DbErr> {
        user::Entity::find_by_id(id).one(self.reads).await
    }

    /// Looks a user up by an already-normalised email.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<user::Model>, DbErr> {
        user::Entity::find()
            .filter(user::Column::Email.eq(email))
            .one(self.conn)
            .await
    }

    pub async fn update_name(&self, user: user::Model, name: String) -> Result<user::Model, DbErr> {
        let mut active: user::ActiveModel = user.into();
        active.name = Set(name);
        active.updated_at = Set(now());
        active.update(self.conn).await
    }

    pub async fn update_password_hash(
        &self,
        user: user::Model,
        password_hash: String,
    ) -> Result<user::Model, DbErr> {
        let mut active: user::ActiveModel = user.into();
        active.password_hash = Set(PasswordHash::new(password_hash));
        active.updated_at = Set(now());
        active.update(self.conn).await
    }

    /// Replaces the hash of `user` only if it is still the one `user` was read with: a rehash
    /// after a login must not undo a password change committed meanwhile. `None` when the
    /// stored hash has changed (or the user is gone).
    pub async fn replace_password_hash(
        &self,
        user: user::Model,
        password_hash: String,
    ) -> Result<Option<user::Model>, DbErr> {
        let now = now();
        let new = PasswordHash::new(password_hash);
        let updated = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(new.clone()))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(user.id))
            .filter(user::Column::PasswordHash.eq(user.password_hash.clone()))
            .exec(self.conn)
            .await?;
        let user = user::Model {
            password_hash: new,
            updated_at: now,
            ..user
        };
        Ok((updated.rows_affected == 1).then_some(user))
    }

    pub async fn delete(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(user::Entity::delete_by_id(id)
            .exec(self.conn)
            .await?
            .rows_affected
            > 0)
    }

    /// Sets the role of the account with this email; `None` if there is none.
    pub async fn set_role(&self, email: &str, role: Role) -> Result<Option<user::Model>, DbErr> {
        let Some(found) = self.find_by_email(email).await? else {
            return Ok(None);
        };
        let mut active: user::ActiveModel = found.into();
        active.role = Set(role);
        active.updated_at = Set(now());
        active.update(self.conn).await.map(Some)
    }

    /// One page of users, oldest first, and the number of users matching the filter (with
    /// `capped`, counted up to [`COUNT_CAP`]).
    pub async fn list(
        &self,
        filter: &UserFilter,
        start: PageStart,
        limit: u64,
        capped: bool,
    ) -> Result<(Vec<user::Model>, u64), DbErr> {
        let mut query = user::Entity::find();
        if let Some(part) = &filter.email_contains {
            // The client's text is matched literally: `%` and `_` are escaped.
            let escaped = part
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            query = query.filter(
                Expr::col(user::Column::Email)
                    .like(LikeExpr::new(format!("%{escaped}%")).escape('\\')),
            );
        }
        if let Some(role) = filter.role {
            query = query.filter(user::Column::Role.eq(role));
        }
        let total = match capped {
            true => query.clone().limit(COUNT_CAP + 1).count(self.conn).await?,
            false => query.clone().count(self.conn).await?,
        };
        let key = (user::Column::CreatedAt, user::Column::Id);
        let users = start.apply(query, key, false, limit).all(self.conn).await?;
        Ok((users, total))
    }

    /// Applies `change` unless it would leave no active (enabled) admin. The active admins are
    /// read and the change written in one transaction; on PostgreSQL the admin rows are locked
    /// (`FOR UPDATE`), so two admins demoting each other at once cannot both succeed. SQLite
    /// serialises writers on its own.
    pub async fn change_guarding_last_admin(
        &self,
        id: Uuid,
        change: AdminChange,
    ) -> Result<ChangeOutcome, DbErr> {
        let txn = self.conn.begin().await?;
        let mut admins = user::Entity::find()
            .filter(user::Column::Role.eq(Role::Admin))
            .filter(user::Column::Disabled.eq(false));
        if txn.get_database_backend() == DatabaseBackend::Postgres {
            admins = admins.lock_exclusive();
        }
        let active_admins: Vec<Uuid> = admins.all(&txn).await?.into_iter().map(|u| u.id).collect();
        let Some(target) = user::Entity::find_by_id(id).one(&txn).await? else {
            return Ok(ChangeOutcome::NotFound);
        };
        let stays_active_admin = match change {
            AdminChange::Delete => false,
            AdminChange::Update { role, disabled } => {
                role.unwrap_or(target.role) == Role::Admin && !disabled.unwrap_or(target.disabled)
            }
        };
        if active_admins.contains(&id) && !stays_active_admin && active_admins.len() <= 1 {
            return Ok(ChangeOutcome::LastAdmin);
        }
        let outcome = match change {
            AdminChange::Delete => {
                user::Entity::delete_by_id(id).exec(&txn).await?;
                ChangeOutcome::Deleted
            }
            AdminChange::Update { role, disabled } => {
                let mut active: user::ActiveModel = target.into();
                if let Some(role) = role {
                    active.role = Set(role);
                }
                if let Some(disabled) = disabled {
                    active.disabled = Set(disabled);
                }
                active.updated_at = Set(now());
                ChangeOutcome::Updated(active.update(&txn).await?)
            }
        };
        txn.commit().await?;
        Ok(outcome)
    }
}

/// Does this error say a unique constraint (the email) was violated? Works on SQLite and
/// PostgreSQL alike.
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Which users to list.
#[derive(Debug, Default, Clone)]
pub struct UserFilter {
    /// A substring of the (lower-case) email.
    pub email_contains: Option<String>,
    pub role: Option<Role>,
}

/// A change an administrator makes to an account.
#[derive(Debug, Clone, Copy)]
pub enum AdminChange {
    Update {
        role: Option<Role>,
        disabled: Option<bool>,
    },
    Delete,
}

/// What an [`AdminChange`] did.
#[derive(Debug, Clone)]
pub enum ChangeOutcome {
    Updated(user::Model),
    Deleted,
    NotFound,
    /// Refused: it would leave no active admin.
    LastAdmin,
}
