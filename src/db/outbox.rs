//! The mail outbox's repository: queueing, claiming (each due mail by one worker only, across
//! instances), and what a delivery attempt leaves behind.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, UpdateMany,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType},
};
use uuid::Uuid;

use super::entities::mail_outbox::{self, Status};

/// Queries of the `mail_outbox` table.
pub struct Outbox<'a> {
    conn: &'a DatabaseConnection,
}

/// Due: pending and its time has come, or claimed by a worker whose lease ran out (it died).
fn due(now: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(
            Condition::all()
                .add(mail_outbox::Column::Status.eq(Status::Pending))
                .add(mail_outbox::Column::NextAttemptAt.lte(now)),
        )
        .add(
            Condition::all()
                .add(mail_outbox::Column::Status.eq(Status::Sending))
                .add(mail_outbox::Column::LockedUntil.lt(now)),
        )
}

impl<'a> Outbox<'a> {
    pub(super) fn new(conn: &'a DatabaseConnection) -> Self {
        Self { conn }
    }

    pub async fn enqueue(&self, mail: mail_outbox::Model) -> Result<(), DbErr> {
        mail_outbox::ActiveModel::from(mail)
            .insert(self.conn)
            .await
            .map(|_| ())
    }

    /// Claims up to `limit` due mails until `lease_until`, counting an attempt for each. One
    /// statement: on PostgreSQL the candidate rows are locked with `SKIP LOCKED` (a concurrent
    /// claim takes other rows, and re-checks these against their new state); SQLite runs one
    /// writer at a time.
    pub async fn claim(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<mail_outbox::Model>, DbErr> {
        let mut candidates = mail_outbox::Entity::find()
            .select_only()
            .column(mail_outbox::Column::Id)
            .filter(due(now))
            .order_by_asc(mail_outbox::Column::NextAttemptAt)
            .limit(limit)
            .into_query();
        if self.conn.get_database_backend() == DatabaseBackend::Postgres {
            candidates.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        mail_outbox::Entity::update_many()
            .col_expr(mail_outbox::Column::Status, Expr::value(Status::Sending))
            .col_expr(
                mail_outbox::Column::LockedUntil,
                Expr::value(Some(lease_until.trunc_subsecs(6))),
            )
            .col_expr(
                mail_outbox::Column::Attempts,
                Expr::col(mail_outbox::Column::Attempts).add(1),
            )
            .filter(mail_outbox::Column::Id.in_subquery(candidates))
            .filter(due(now))
            .exec_with_returning(self.conn)
            .await
    }

    /// The mail was accepted by the server: it leaves the outbox.
    pub async fn delete(&self, id: Uuid) -> Result<(), DbErr> {
        mail_outbox::Entity::delete_by_id(id)
            .exec(self.conn)
            .await
            .map(|_| ())
    }

    /// The attempt failed; the next one is at `next`.
    pub async fn reschedule(
        &self,
        id: Uuid,
        next: DateTime<Utc>,
        error: &str,
    ) -> Result<(), DbErr> {
        attempt_over(id, Status::Pending, error)
            .col_expr(
                mail_outbox::Column::NextAttemptAt,
                Expr::value(next.trunc_subsecs(6)),
            )
            .exec(self.conn)
            .await
            .map(|_| ())
    }

    /// No more attempts: the mail stays for admins to see, without its body (which holds a
    /// link).
    pub async fn bury(&self, id: Uuid, error: &str) -> Result<(), DbErr> {
        attempt_over(id, Status::Dead, error)
            .col_expr(mail_outbox::Column::BodyText, Expr::value(None::<String>))
            .col_expr(mail_outbox::Column::BodyHtml, Expr::value(None::<String>))
            .col_expr(mail_outbox::Column::Link, Expr::value(None::<String>))
            .exec(self.conn)
            .await
            .map(|_| ())
    }

    /// One page of mails in `status` (every status when `None`), oldest first, and how many
    /// there are.
    pub async fn list(
        &self,
        status: Option<Status>,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<mail_outbox::Model>, u64), DbErr> {
        let mut query = mail_outbox::Entity::find();
        if let Some(status) = status {
            query = query.filter(mail_outbox::Column::Status.eq(status));
        }
        let query = query
            .order_by_asc(mail_outbox::Column::CreatedAt)
            .order_by_asc(mail_outbox::Column::Id);
        let total = query.clone().count(self.conn).await?;
        let mails = query
            .offset((page - 1).saturating_mul(per_page))
            .limit(per_page)
            .all(self.conn)
            .await?;
        Ok((mails, total))
    }

    /// Deletes dead mails created before `cutoff`; how many.
    pub async fn delete_dead_before(&self, cutoff: DateTime<Utc>) -> Result<u64, DbErr> {
        let deleted = mail_outbox::Entity::delete_many()
            .filter(mail_outbox::Column::Status.eq(Status::Dead))
            .filter(mail_outbox::Column::CreatedAt.lt(cutoff))
            .exec(self.conn)
            .await?;
        Ok(deleted.rows_affected)
    }
}

/// The column holds 500 characters; SMTP replies can be longer.
fn bounded(error: &str) -> String {
    error.chars().take(500).collect()
}

/// The update that ends a failed attempt of mail `id`: its new status, its lease released, the
/// error kept (bounded).
fn attempt_over(id: Uuid, status: Status, error: &str) -> UpdateMany<mail_outbox::Entity> {
    mail_outbox::Entity::update_many()
        .col_expr(mail_outbox::Column::Status, Expr::value(status))
        .col_expr(
            mail_outbox::Column::LockedUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(mail_outbox::Column::LastError, Expr::value(bounded(error)))
        .filter(mail_outbox::Column::Id.eq(id))
}
