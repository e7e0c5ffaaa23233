//! `/api/v1/admin/users`: account administration, for admins only.

use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde_json::json;
use uuid::Uuid;

use super::{
    ApiTags,
    request::{Text, text},
    users::UserResponse,
    validate::{Validator, has_control_chars},
};
use crate::{
    audit::{Event, EventType},
    auth::guard::{Admin, RequireRole},
    db::{
        self,
        audit::AuditFilter,
        entities::{
            audit_event,
            user::{self, Role},
        },
        users::{self, AdminChange, ChangeOutcome, UserFilter},
    },
    error::{ApiError, ErrorCode},
    state::AppState,
};

/// Largest page size.
pub const MAX_PER_PAGE: i64 = 100;
/// Largest page number: keeps `(page - 1) * per_page` far inside what the database accepts.
pub const MAX_PAGE: i64 = 10_000_000;
const DEFAULT_PER_PAGE: i64 = 20;

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
    /// How many users match the filter in all.
    pub total: u64,
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

fn role_field(v: &mut Validator, field: &str, value: Option<String>) -> Option<Role> {
    let value = value?;
    let role = Role::parse(&value);
    if role.is_none() {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        v.fail(field, format!("must be one of {}", names.join(", ")));
    }
    role
}

/// A whole-number query parameter within `range`; absent means `default`. Anything else,
/// including numbers too large for 64 bits, is a field error (422), never a 400 or 500.
fn bounded(
    v: &mut Validator,
    field: &str,
    raw: Option<String>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Option<i64> {
    let Some(raw) = raw else {
        return Some(default);
    };
    match raw.trim().parse::<i64>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ if *range.end() == i64::MAX => {
            v.fail(
                field,
                format!("must be a whole number of at least {}", range.start()),
            );
            None
        }
        _ => {
            v.fail(
                field,
                format!(
                    "must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }
}

/// `page` (from 1) and `per_page` (1 to 100, default 20) query parameters.
fn pagination(
    v: &mut Validator,
    page: Option<String>,
    per_page: Option<String>,
) -> Option<(i64, i64)> {
    let page = bounded(v, "page", page, 1, 1..=MAX_PAGE);
    let per_page = bounded(v, "per_page", per_page, DEFAULT_PER_PAGE, 1..=MAX_PER_PAGE);
    page.zip(per_page)
}

pub fn last_admin() -> ApiError {
    ApiError::new(
        ErrorCode::LastAdmin,
        "this would leave no active admin: promote another admin first",
    )
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
    pub total: u64,
}

#[derive(ApiResponse)]
pub enum AuditPageResult {
    /// The page.
    #[oai(status = 200)]
    Ok(Json<AuditPage>),
}

pub struct AdminApi;

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// List users, oldest first, optionally filtered by an email substring and by role.
    /// `page` starts at 1; `per_page` is 1 to 100 (default 20); other values are 422.
    #[oai(path = "/users", method = "get", operation_id = "admin_list_users")]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        _admin: RequireRole<Admin>,
        /// Page number, from 1 (default 1).
        page: Query<Option<String>>,
        /// Page size, 1 to 100 (default 20).
        per_page: Query<Option<String>>,
        /// Only users whose email contains this text.
        email: Query<Option<String>>,
        /// Only users with this role: `user` or `admin`.
        role: Query<Option<String>>,
    ) -> Result<UserPageResult, ApiError> {
        let mut v = Validator::new();
        let paging = pagination(&mut v, page.0, per_page.0);
        let role = role_field(&mut v, "role", role.0);
        let email = email
            .0
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty());
        if email.as_deref().is_some_and(has_control_chars) {
            v.fail("email", "must not contain control characters");
        }
        let (page, per_page) = v.finish(paging)?;
        let filter = UserFilter {
            email_contains: email,
            role,
        };
        // Both are positive here; a page past the end is simply empty.
        let (found, total) = users::list(
            &state.db,
            &filter,
            page.unsigned_abs(),
            per_page.unsigned_abs(),
        )
        .await?;
        Ok(UserPageResult::Ok(Json(UserPage {
            users: found.into_iter().map(Into::into).collect(),
            page,
            per_page,
            total,
        })))
    }

    /// One user.
    #[oai(path = "/users/:id", method = "get", operation_id = "admin_get_user")]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        _admin: RequireRole<Admin>,
        id: Path<Uuid>,
    ) -> Result<AdminUserResult, ApiError> {
        let user = users::find_by_id(&state.db, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        Ok(AdminUserResult::Ok(Json(AdminUserEnvelope {
            user: user.into(),
        })))
    }

    /// Change a user's role or disable/enable it. Disabling revokes all its sessions at once.
    /// Demoting or disabling the last active admin is 409 `last_admin`.
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
        body: Json<AdminUpdateRequest>,
    ) -> Result<AdminUserResult, ApiError> {
        let body = body.0;
        let mut v = Validator::new();
        let role = role_field(&mut v, "role", text(body.role));
        if role.is_none() && body.disabled.is_none() {
            v.fail("role", "give role or disabled (or both)");
        }
        v.finish(Some(()))?;
        let change = AdminChange::Update {
            role,
            disabled: body.disabled,
        };
        let before = users::find_by_id(&state.db, id.0).await?;
        let user = match users::change_guarding_last_admin(&state.db, id.0, change).await? {
            ChangeOutcome::Updated(user) => user,
            ChangeOutcome::NotFound => return Err(ApiError::not_found("no such user")),
            ChangeOutcome::LastAdmin => return Err(last_admin()),
            ChangeOutcome::Deleted => return Err(ApiError::internal("update reported a delete")),
        };
        if user.disabled {
            // The guard already refuses a disabled user's tokens; revoking ends the sessions
            // so they do not come back if the account is enabled again. If the store fails
            // here the client gets 503 and repeats the (idempotent) request; a login racing
            // with the change re-reads the user after creating its session.
            state.sessions.revoke_all(user.id, None).await?;
        }
        tracing::info!(
            admin_id = %admin.auth.user.id,
            user_id = %user.id,
            role = user.role.as_str(),
            disabled = user.disabled,
            "user updated by admin"
        );
        let actor = admin.auth.user.id;
        if let Some(before) = before {
            if before.role != user.role {
                let event = Event::new(EventType::RoleChanged, Some(user.id), None).detail(json!({
                    "by": actor,
                    "from": before.role.as_str(),
                    "to": user.role.as_str(),
                }));
                state.audit.record(req, event).await;
            }
            if before.disabled != user.disabled {
                let kind = if user.disabled {
                    EventType::UserDisabled
                } else {
                    EventType::UserEnabled
                };
                let event = Event::new(kind, Some(user.id), None).detail(json!({"by": actor}));
                state.audit.record(req, event).await;
            }
        }
        Ok(AdminUserResult::Ok(Json(AdminUserEnvelope {
            user: user.into(),
        })))
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
    ) -> Result<AdminNoContent, ApiError> {
        match users::change_guarding_last_admin(&state.db, id.0, AdminChange::Delete).await? {
            ChangeOutcome::Deleted => {}
            ChangeOutcome::NotFound => return Err(ApiError::not_found("no such user")),
            ChangeOutcome::LastAdmin => return Err(last_admin()),
            ChangeOutcome::Updated(_) => {
                return Err(ApiError::internal("delete reported an update"));
            }
        }
        state.sessions.revoke_all(id.0, None).await?;
        tracing::info!(admin_id = %admin.auth.user.id, user_id = %id.0, "user deleted by admin");
        let event = Event::new(EventType::UserDeleted, Some(id.0), None)
            .detail(json!({"by": admin.auth.user.id}));
        state.audit.record(req, event).await;
        Ok(AdminNoContent::Done)
    }

    /// The audit trail, newest first: registrations, logins (succeeded and failed), logouts,
    /// refresh-token reuse, password changes, role changes, disabled/enabled and deleted users.
    /// Filter by `user_id` and `event_type`; `page` from 1, `per_page` 1 to 100.
    #[oai(
        path = "/audit",
        method = "get",
        operation_id = "admin_list_audit_events"
    )]
    async fn audit(
        &self,
        state: poem::web::Data<&AppState>,
        _admin: RequireRole<Admin>,
        /// Page number, from 1 (default 1).
        page: Query<Option<String>>,
        /// Page size, 1 to 100 (default 20).
        per_page: Query<Option<String>>,
        /// Only events of this user.
        user_id: Query<Option<String>>,
        /// Only events of this type, e.g. `login_failed`.
        event_type: Query<Option<String>>,
    ) -> Result<AuditPageResult, ApiError> {
        let mut v = Validator::new();
        let paging = pagination(&mut v, page.0, per_page.0);
        let user_id = match user_id.0 {
            Some(raw) => match Uuid::parse_str(raw.trim()) {
                Ok(id) => Some(id),
                Err(_) => {
                    v.fail("user_id", "must be a UUID");
                    None
                }
            },
            None => None,
        };
        let event_type = match event_type.0 {
            Some(raw) => {
                let known = EventType::iter().find(|kind| kind.as_str() == raw.trim());
                if known.is_none() {
                    v.fail("event_type", "is not a known event type");
                }
                known.map(|kind| kind.as_str().to_owned())
            }
            None => None,
        };
        let (page, per_page) = v.finish(paging)?;
        let filter = AuditFilter {
            user_id,
            event_type,
        };
        let (events, total) = db::audit::list(
            &state.db,
            &filter,
            page.unsigned_abs(),
            per_page.unsigned_abs(),
        )
        .await?;
        Ok(AuditPageResult::Ok(Json(AuditPage {
            events: events.into_iter().map(Into::into).collect(),
            page,
            per_page,
            total,
        })))
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
    ) -> Result<AdminNoContent, ApiError> {
        if users::find_by_id(&state.db, id.0).await?.is_none() {
            return Err(ApiError::not_found("no such user"));
        }
        let revoked = state.sessions.revoke_all(id.0, None).await?;
        tracing::info!(admin_id = %admin.auth.user.id, user_id = %id.0, revoked, "sessions revoked by admin");
        Ok(AdminNoContent::Done)
    }
}
