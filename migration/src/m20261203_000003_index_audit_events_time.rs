use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The admin listing's unfiltered order (newest first) and the retention purge both walk the
/// trail by time: an index on it keeps them fast at millions of rows.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_events_time")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::OccurredAt)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_audit_events_time")
                    .table(AuditEvents::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OccurredAt,
}
