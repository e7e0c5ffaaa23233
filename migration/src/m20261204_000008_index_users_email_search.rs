use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The admin listing's email filter matches a substring (`LIKE '%text%'`), which a b-tree
/// cannot serve: on PostgreSQL a trigram index (pg_trgm, shipped with PostgreSQL and trusted
/// since 13) keeps it from reading every user. Where the extension cannot be created (not
/// installed, or no right to), the migration goes on without the index and the search scans.
const UP: &str = r#"
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX IF NOT EXISTS idx_users_email_trgm ON users USING gin (email gin_trgm_ops);
EXCEPTION WHEN undefined_file OR insufficient_privilege THEN
    RAISE WARNING 'pg_trgm is not available (%): the admin email search will scan the users table', SQLERRM;
END
$$;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        // The extension stays: other schemas may use it.
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_users_email_trgm")
            .await?;
        Ok(())
    }
}
