//! `/api/v1/admin/mail`: the mail outbox as admins see it (no bodies: they hold links).

use chrono::{DateTime, Utc};
use poem_openapi::{ApiResponse, Object, OpenApi, param::Query, payload::Json};
use uuid::Uuid;

use super::{
    ApiTags,
    admin::AdminListErrors,
    error::Failure,
    guard::{Admin, RequireRole},
};
use crate::{
    accounts::{Page, PageQuery},
    db::entities::mail_outbox,
    state::AppState,
};

/// A queued or dead mail.
#[derive(Debug, Clone, Object)]
pub struct MailResponse {
    pub id: Uuid,
    /// The user the mail is about, if the account still exists.
    pub user_id: Option<Uuid>,
    /// `verify_email`, `reset_password`, `change_email` or `email_change_notice`.
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    /// `pending` (waiting for `next_attempt_at`), `sending`, or `dead` (no more attempts).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    /// The last failure, as the mail server or the connection reported it.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<mail_outbox::Model> for MailResponse {
    fn from(mail: mail_outbox::Model) -> Self {
        Self {
            id: mail.id,
            user_id: mail.user_id,
            kind: mail.kind,
            recipient: mail.recipient,
            subject: mail.subject,
            status: mail.status.as_str().to_owned(),
            attempts: mail.attempts,
            next_attempt_at: mail.next_attempt_at,
            last_error: mail.last_error,
            created_at: mail.created_at,
        }
    }
}

/// One page of the outbox, oldest first.
#[derive(Debug, Clone, Object)]
pub struct MailPage {
    pub mails: Vec<MailResponse>,
    pub page: i64,
    pub per_page: i64,
    pub total: u64,
}

#[derive(ApiResponse)]
pub enum MailPageResult {
    /// The page.
    #[oai(status = 200)]
    Ok(Json<MailPage>),
}

impl From<Page<mail_outbox::Model>> for MailPage {
    fn from(page: Page<mail_outbox::Model>) -> Self {
        Self {
            mails: page.items.into_iter().map(Into::into).collect(),
            page: page.page,
            per_page: page.per_page,
            total: page.total,
        }
    }
}

pub struct AdminMailApi;

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminMailApi {
    /// The mail outbox: mails waiting to be sent (`pending`, `sending`) and mails that failed
    /// for good (`dead`, kept 30 days). Sent mails leave the outbox. `page` from 1,
    /// `per_page` 1 to 100.
    #[oai(path = "/mail", method = "get", operation_id = "admin_list_mail")]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        _admin: RequireRole<Admin>,
        /// Page number, from 1 (default 1).
        page: Query<Option<String>>,
        /// Page size, 1 to 100 (default 20).
        per_page: Query<Option<String>>,
        /// Only mails in this state: `pending`, `sending` or `dead`.
        status: Query<Option<String>>,
    ) -> Result<MailPageResult, Failure<AdminListErrors>> {
        let query = PageQuery {
            page: page.0,
            per_page: per_page.0,
            after: None,
        };
        let found = state.accounts.mail_outbox(query, status.0).await?;
        Ok(MailPageResult::Ok(Json(found.into())))
    }
}
