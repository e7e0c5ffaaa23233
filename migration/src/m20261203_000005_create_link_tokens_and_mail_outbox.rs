use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `link_tokens`: the emailed links' tokens, only as SHA-256 digests, one per user and purpose.
/// `mail_outbox`: mails waiting for the delivery worker (rows leave once sent).
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LinkTokens::Table)
                    .if_not_exists()
                    .col(string_len(LinkTokens::TokenHash, 64).primary_key())
                    .col(uuid(LinkTokens::UserId))
                    .col(string_len(LinkTokens::Purpose, 20))
                    .col(string_len(LinkTokens::Email, 320))
                    .col(timestamp_with_time_zone(LinkTokens::CreatedAt))
                    .col(timestamp_with_time_zone(LinkTokens::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(LinkTokens::Table, LinkTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_link_tokens_user_purpose")
                    .table(LinkTokens::Table)
                    .col(LinkTokens::UserId)
                    .col(LinkTokens::Purpose)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MailOutbox::Table)
                    .if_not_exists()
                    .col(uuid(MailOutbox::Id).primary_key())
                    .col(uuid_null(MailOutbox::UserId))
                    .col(string_len(MailOutbox::Kind, 20))
                    .col(string_len(MailOutbox::Recipient, 320))
                    .col(string_len(MailOutbox::Subject, 200))
                    // The rendered parts (they hold the link): erased once the mail is dead.
                    .col(text_null(MailOutbox::BodyText))
                    .col(text_null(MailOutbox::BodyHtml))
                    // The link alone, for the development log (the outbox folder).
                    .col(text_null(MailOutbox::Link))
                    .col(string_len(MailOutbox::Status, 10))
                    .col(integer(MailOutbox::Attempts))
                    .col(timestamp_with_time_zone(MailOutbox::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(MailOutbox::LockedUntil))
                    .col(string_len_null(MailOutbox::LastError, 500))
                    .col(timestamp_with_time_zone(MailOutbox::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(MailOutbox::Table, MailOutbox::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_mail_outbox_status_next")
                    .table(MailOutbox::Table)
                    .col(MailOutbox::Status)
                    .col(MailOutbox::NextAttemptAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(MailOutbox::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(LinkTokens::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum LinkTokens {
    Table,
    TokenHash,
    UserId,
    Purpose,
    Email,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    Id,
    UserId,
    Kind,
    Recipient,
    Subject,
    BodyText,
    BodyHtml,
    Link,
    Status,
    Attempts,
    NextAttemptAt,
    LockedUntil,
    LastError,
    CreatedAt,
}
