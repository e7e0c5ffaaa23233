//! `/api/v1/admin/users`: account administration, for admins only.

use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{
    ApiTags,
    error::{Failure, error_set},
    guard::{Admin, RequireRole},
    json_body::JsonBody,
    request::{Text, client, text},
    users::UserResponse,
};
use crate::{
    accounts::{AdminUpdate, Page, PageQuery},
    db::entities::{audit_event, user},
    state::AppState,
};

error_set!(
    /// What the admin listings can answer.
    AdminListErrors: [GUARD, SERVER], ValidationFailed, Forbidden
);
error_set!(
    /// What reading one user can answer.
    AdminGetErrors: [GUARD, SERVER], MalformedRequest, Forbidden, NotFound
);
error_set!(
    /// What changing a user can answer.
    AdminUpdateErrors: [BODY, GUARD, SERVER], CsrfRejected, Forbidden, NotFound, LastAdmin
);
error_set!(
    /// What deleting a user can answer.
    AdminDeleteErrors: [GUARD, SERVER], MalformedRequest, PayloadTooLarge, CsrfRejected,
    Forbidden, NotFound, LastAdmin
);
error_set!(
    /// What revoking a user's sessions can answer.
    AdminRevokeErrors: [GUARD, SERVER], MalformedRequest, PayloadTooLarge, CsrfRejected,
    Forbidden, NotFound
);

/// A user as admins see it: the public view plus `disabled`.
#[derive(Debug, Clone, Object)]
pub struct AdminUserResponse {
    #[oai(flatten)]
    pub user: UserResponse,
    /// A disabled account cannot log in and its tokens are refused.
    pub disabled: bool,
}

impl From<user::Model> for AdminUserResponse {
    fn from(user: user::Model) -> Self {
        Self {
            disabled: user.disabled,
            user: user.into(),
        }
    }
}

/// `{"user": AdminUserResponse}`.
#[derive(Debug, Clone, Object)]
pub struct AdminUserEnvelope {
    pub user: AdminUserResponse,
}

/// One page of users.
#[derive(Debug, Clone, Object)]
pub struct UserPage {
    pub users: Vec<AdminUserResponse>,
    /// The page number, from 1.
    pub page: i64,
    pub per_page: i64,
    /// How many users match the filter: all of them on numbered pages; with `after`, counted
    /// up to 10,000.
    pub total: u64,
    /// Whether more than `total` users match (with `after`, counting stops at 10,000).
    pub total_capped: bool,
    /// Pass as `after` for the following page (reads only that page, however deep); absent on
    /// the last page.
    pub next: Option<String>,
}

/// Changes to an account; at least one field.
#[derive(Object)]
pub struct AdminUpdateRequest {
    /// `user` or `admin`.
    pub role: Option<Text>,
    /// `true` disables the account: its sessions are revoked and it cannot log in.
    pub disabled: Option<bool>,
}

#[derive(ApiResponse)]
pub enum UserPageResult {
    /// The page.
    #[oai(status = 200)]
    Ok(Json<UserPage>),
}

#[derive(ApiResponse)]
pub enum AdminUserResult {
    /// The user.
    #[oai(status = 200)]
    Ok(Json<AdminUserEnvelope>),
}

#[derive(ApiResponse)]
pub enum AdminNoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

/// One audit event.
#[derive(Debug, Clone, Object)]
pub struct AuditEventResponse {
    pub id: Uuid,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub event_type: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Event-specific facts, e.g. `{"by": admin id, "from": "user", "to": "admin"}`.
    pub detail: Option<serde_json::Value>,
}

impl From<audit_event::Model> for AuditEventResponse {
    fn from(event: audit_event::Model) -> Self {
        Self {
            id: event.id,
            occurred_at: event.occurred_at,
            event_type: event.event_type,
            user_id: event.user_id,
            session_id: event.session_id,
            ip: event.ip,
            user_agent: event.user_agent,
            detail: event.detail.and_then(|d| serde_json::from_str(&d).ok()),
        }
    }
}

/// One page of audit events, newest first.
#[derive(Debug, Clone, Object)]
pub struct AuditPage {
    pub events: Vec<AuditEventResponse>,
    pub page: i64,
    pub per_page: i64,
    /// How many events match, counted up to 10,000.
    pub total: u64,
    /// Whether more than `total` events match (counting stops at 10,000).
    pub total_capped: bool,
    /// Pass as `after` for the following page (reads only that page, however deep); absent on
    /// the last page.
    pub next: Option<String>,
}

#[derive(ApiResponse)]
pub enum AuditPageResult {
    /// The page.
    #[oai(status = 200)]
    Ok(Json<AuditPage>),
}

impl UserPage {
    fn new(page: Page<user::Model>) -> Self {
        Self {
            users: page.items.into_iter().map(Into::into).collect(),
            page: page.page,
            per_page: page.per_page,
            total: page.total,
            total_capped: page.total_capped,
            next: page.next,
        }
    }
}

impl AuditPage {
    fn new(page: Page<audit_event::Model>) -> Self {
        Self {
            events: page.items.into_iter().map(Into::into).collect(),
            page: page.page,
            per_page: page.per_page,
            total: page.total,
            total_capped: page.total_capped,
            next: page.next,
        }
    }
}

fn admin_user(user: user::Model) -> AdminUserResult {
    AdminUserResult::Ok(Json(AdminUserEnvelope { user: user.into() }))
}

pub struct AdminApi;

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// List users, oldest first, optionally filtered by an email substring and by role.
    /// `page` starts at 1; `per_page` is 1 to 100 (default 20); other values are 422. Instead
    /// of `page`, `after` takes the previous page's `next`: deep pages stay as fast as the
    /// first (the answer's `page` then counts from the page the walk started on).
    #[oai(path = "/users", method = "get", operation_id = "admin_list_users")]
    // poem-openapi documents each query parameter from its own argument.
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        _admin: RequireRole<Admin>,
        /// Page number, from 1 (default 1).
        page: Query<Option<String>>,
        /// Page size, 1 to 100 (default 20).
        per_page: Query<Option<String>>,
        /// The previous page's `next`, instead of `page`.
        after: Query<Option<String>>,
        /// Only users whose email contains this text.
        email: Query<Option<String>>,
        /// Only users with this role: `user` or `admin`.
        role: Query<Option<String>>,
    ) -> Result<UserPageResult, Failure<AdminListErrors>> {
        let query = PageQuery {
            page: page.0,
            per_page: per_page.0,
            after: after.0,
        };
        let found = state.accounts.list_users(query, email.0, role.0).await?;
        Ok(UserPageResult::Ok(Json(UserPage::new(found))))
    }

    /// One user.
    #[oai(path = "/users/:id", method = "get", operation_id = "admin_get_user")]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        _admin: RequireRole<Admin>,
        id: Path<Uuid>,
    ) -> Result<AdminUserResult, Failure<AdminGetErrors>> {
        Ok(admin_user(state.accounts.get_user(id.0).await?))
    }

    /// Change a user's role or disable/enable it. Disabling, and any change of role, revokes all
    /// its sessions at once, so no live token carries a role that is no longer true (the new
    /// role comes with the next login). Demoting or disabling the last active admin is 409
    /// `last_admin`.
    #[oai(
        path = "/users/:id",
        method = "patch",
        operation_id = "admin_update_user"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        req: &poem::Request,
        admin: RequireRole<Admin>,
        id: Path<Uuid>,
        body: JsonBody<AdminUpdateRequest>,
    ) -> Result<AdminUserResult, Failure<AdminUpdateErrors>> {
        let update = AdminUpdate {
            role: text(body.0.role),
            disabled: body.0.disabled,
        };
        let client = client(&state, req);
        let user = state
            .accounts
            .update_user(&admin.auth.caller, id.0, update, &client)
            .await?;
        Ok(admin_user(user))
    }

    /// Delete a user and revoke all its sessions. Deleting the last active admin is 409
    /// `last_admin`.
    #[oai(
        path = "/users/:id",
        method = "delete",
        operation_id = "admin_delete_user"
    )]
    async fn delete(
        &self,
        state: poem::web::Data<&AppState>,
        req: &poem::Request,
        admin: RequireRole<Admin>,
        id: Path<Uuid>,
    ) -> Result<AdminNoContent, Failure<AdminDeleteErrors>> {
        let client = client(&state, req);
        state
            .accounts
            .delete_user(&admin.auth.caller, id.0, &client)
            .await?;
        Ok(AdminNoContent::Done)
    }

    /// The audit trail, newest first: registrations, logins (succeeded and failed), logouts,
    /// refresh-token reuse, password changes, role changes, disabled/enabled and deleted users.
    /// Filter by `user_id` and `event_type`; `page` from 1, `per_page` 1 to 100, or `after`
    /// (the previous page's `next`) instead of `page`.
    #[oai(
        path = "/audit",
        method = "get",
        operation_id = "admin_list_audit_events"
    )]
    // poem-openapi documents each query parameter from its own argument.
    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        state: poem::web::Data<&AppState>,
        _admin: RequireRole<Admin>,
        /// Page number, from 1 (default 1).
        page: Query<Option<String>>,
        /// Page size, 1 to 100 (default 20).
        per_page: Query<Option<String>>,
        /// The previous page's `next`, instead of `page`.
        after: Query<Option<String>>,
        /// Only events of this user.
        user_id: Query<Option<String>>,
        /// Only events of this type, e.g. `login_failed`.
        event_type: Query<Option<String>>,
    ) -> Result<AuditPageResult, Failure<AdminListErrors>> {
        let query = PageQuery {
            page: page.0,
            per_page: per_page.0,
            after: after.0,
        };
        let found = state
            .accounts
            .audit_events(query, user_id.0, event_type.0)
            .await?;
        Ok(AuditPageResult::Ok(Json(AuditPage::new(found))))
    }

    /// Revoke every session of a user (all devices); the account stays usable.
    #[oai(
        path = "/users/:id/revoke-sessions",
        method = "post",
        operation_id = "admin_revoke_user_sessions"
    )]
    async fn revoke_sessions(
        &self,
        state: poem::web::Data<&AppState>,
        admin: RequireRole<Admin>,
        id: Path<Uuid>,
    ) -> Result<AdminNoContent, Failure<AdminRevokeErrors>> {
        state
            .accounts
            .revoke_user_sessions(&admin.auth.caller, id.0)
            .await?;
        Ok(AdminNoContent::Done)
    }
}
