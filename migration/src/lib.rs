//! Latchkey's database schema, as ordered sea-orm migrations.
pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_users;
mod m20261123_000002_create_audit_events;
mod m20261203_000003_index_audit_events_time;
mod m20261203_000004_add_users_email_verified_at;
mod m20261203_000005_create_link_tokens_and_mail_outbox;
mod m20261203_000006_create_totp_factors_and_recovery_codes;
mod m20261204_000007_index_users_listing;
mod m20261204_000008_index_users_email_search;

/// Applies Latchkey's migrations in order; the server runs it at start.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_users::Migration),
            Box::new(m20261123_000002_create_audit_events::Migration),
            Box::new(m20261203_000003_index_audit_events_time::Migration),
            Box::new(m20261203_000004_add_users_email_verified_at::Migration),
            Box::new(m20261203_000005_create_link_tokens_and_mail_outbox::Migration),
            Box::new(m20261203_000006_create_totp_factors_and_recovery_codes::Migration),
            Box::new(m20261204_000007_index_users_listing::Migration),
            Box::new(m20261204_000008_index_users_email_search::Migration),
        ]
    }
}
