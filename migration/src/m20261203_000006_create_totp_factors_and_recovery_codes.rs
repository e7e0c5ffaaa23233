use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The second factor: `users.mfa_enabled_at` (read with the user on every request, so the
/// guard needs no join), `totp_factors` (one sealed secret per user, pending until confirmed,
/// with the last accepted time step against replays) and `recovery_codes` (SHA-256 digests).
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(timestamp_with_time_zone_null(Users::MfaEnabledAt))
                    .to_owned(),
            )
            .await?;
        let factors = Table::create()
            .table(TotpFactors::Table)
            .if_not_exists()
            .col(uuid(TotpFactors::UserId).primary_key())
            .col(text(TotpFactors::SecretSealed))
            .col(big_integer_null(TotpFactors::LastStep))
            .col(timestamp_with_time_zone(TotpFactors::CreatedAt))
            .col(timestamp_with_time_zone_null(TotpFactors::ConfirmedAt))
            .foreign_key(&mut owned_by_user(TotpFactors::Table, TotpFactors::UserId))
            .to_owned();
        manager.create_table(factors).await?;
        let codes = Table::create()
            .table(RecoveryCodes::Table)
            .if_not_exists()
            .col(uuid(RecoveryCodes::UserId))
            .col(string_len(RecoveryCodes::CodeHash, 64))
            .col(timestamp_with_time_zone(RecoveryCodes::CreatedAt))
            .primary_key(
                Index::create()
                    .col(RecoveryCodes::UserId)
                    .col(RecoveryCodes::CodeHash),
            )
            .foreign_key(&mut owned_by_user(
                RecoveryCodes::Table,
                RecoveryCodes::UserId,
            ))
            .to_owned();
        manager.create_table(codes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            RecoveryCodes::Table.into_iden(),
            TotpFactors::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::MfaEnabledAt)
                    .to_owned(),
            )
            .await
    }
}

fn owned_by_user(table: impl IntoIden, column: impl IntoIden) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, column)
        .to(Users::Table, Users::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    MfaEnabledAt,
}

#[derive(DeriveIden)]
enum TotpFactors {
    Table,
    UserId,
    SecretSealed,
    LastStep,
    CreatedAt,
    ConfirmedAt,
}

#[derive(DeriveIden)]
enum RecoveryCodes {
    Table,
    UserId,
    CodeHash,
    CreatedAt,
}
