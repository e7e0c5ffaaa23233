//! The `mail_outbox` table: mails waiting for the delivery worker. A sent mail's row is
//! deleted; one that kept failing stays, `dead`, without its body, for admins to see.

use sea_orm::entity::prelude::*;

/// Where a mail is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(10))")]
pub enum Status {
    /// Waiting for `next_attempt_at`.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Claimed by a worker until `locked_until`; a worker that died leaves it to be reclaimed.
    #[sea_orm(string_value = "sending")]
    Sending,
    /// Every attempt failed, or the server refused it for good.
    #[sea_orm(string_value = "dead")]
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sending => "sending",
            Status::Dead => "dead",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mail_outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    /// Which template: `verify_email`, `reset_password`, `change_email`, `email_changed`.
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    /// The mail's link, if it has one (logged when mail goes to the development outbox).
    pub link: Option<String>,
    pub status: Status,
    /// Attempts started so far (a claim counts as one).
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    pub locked_until: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
