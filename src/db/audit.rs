//! The audit trail's repository.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, Set,
};
use uuid::Uuid;

use super::{COUNT_CAP, PageStart, entities::audit_event};

/// Which events to list.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub user_id: Option<Uuid>,
    pub event_type: Option<String>,
}

/// Queries of the `audit_events` table.
pub struct AuditEvents<'a> {
    conn: &'a DatabaseConnection,
}

impl<'a> AuditEvents<'a> {
    pub(super) fn new(conn: &'a DatabaseConnection) -> Self {
        Self { conn }
    }

    pub async fn insert(&self, event: audit_event::Model) -> Result<audit_event::Model, DbErr> {
        audit_event::ActiveModel {
            id: Set(event.id),
            occurred_at: Set(event.occurred_at),
            event_type: Set(event.event_type),
            user_id: Set(event.user_id),
            session_id: Set(event.session_id),
            ip: Set(event.ip),
            user_agent: Set(event.user_agent),
            detail: Set(event.detail),
        }
        .insert(self.conn)
        .await
    }

    /// Deletes the events that occurred before `cutoff`; how many.
    pub async fn delete_before(&self, cutoff: DateTime<Utc>) -> Result<u64, DbErr> {
        let deleted = audit_event::Entity::delete_many()
            .filter(audit_event::Column::OccurredAt.lt(cutoff))
            .exec(self.conn)
            .await?;
        Ok(deleted.rows_affected)
    }

    /// One page of events, newest first, and how many match, counted up to [`COUNT_CAP`]
    /// (counting every match would read the whole trail on each call).
    pub async fn list(
        &self,
        filter: &AuditFilter,
        start: PageStart,
        limit: u64,
    ) -> Result<(Vec<audit_event::Model>, u64), DbErr> {
        let mut query = audit_event::Entity::find();
        if let Some(user_id) = filter.user_id {
            query = query.filter(audit_event::Column::UserId.eq(user_id));
        }
        if let Some(event_type) = &filter.event_type {
            query = query.filter(audit_event::Column::EventType.eq(event_type.as_str()));
        }
        let total = query.clone().limit(COUNT_CAP + 1).count(self.conn).await?;
        let key = (audit_event::Column::OccurredAt, audit_event::Column::Id);
        let events = start.apply(query, key, true, limit).all(self.conn).await?;
        Ok((events, total))
    }
}
