//! `/api/v1/auth/sessions`: the signed-in user's devices, and revoking one of them.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use super::{
    ApiTags,
    cookies::CookiePolicy,
    error::{Failure, error_set},
    guard::Authenticated,
};
use crate::{session::SessionInfo, state::AppState};

error_set!(
    /// What listing sessions can answer.
    ListSessionsErrors: [GUARD, SERVER]
);
error_set!(
    /// What revoking a session can answer.
    RevokeSessionErrors: [GUARD, SERVER], MalformedRequest, PayloadTooLarge, CsrfRejected,
    NotFound
);

/// One login on one device.
#[derive(Debug, Clone, Object)]
pub struct SessionResponse {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The last login, refresh or authenticated request (recorded at most once a minute).
    pub last_used_at: DateTime<Utc>,
    /// When the session ends unless refreshed.
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    /// The client IP at login (see `TRUSTED_PROXIES`).
    pub ip: Option<String>,
    /// Whether this is the session of the token making the request.
    pub current: bool,
}

fn time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

impl SessionResponse {
    fn new(info: SessionInfo, current: Uuid) -> Self {
        Self {
            current: info.id == current,
            id: info.id,
            created_at: time(info.created_at),
            last_used_at: time(info.last_used_at),
            expires_at: time(info.expires_at),
            user_agent: info.user_agent,
            ip: info.ip,
        }
    }
}

/// `{"sessions": [...]}`, newest first.
#[derive(Debug, Clone, Object)]
pub struct SessionList {
    pub sessions: Vec<SessionResponse>,
}

#[derive(ApiResponse)]
pub enum SessionListResult {
    /// The live sessions; expired ones are not listed.
    #[oai(status = 200)]
    Ok(Json<SessionList>),
}

#[derive(ApiResponse)]
pub enum RevokeSessionResult {
    /// The session and all its tokens are revoked.
    #[oai(status = 204)]
    Revoked,
}

pub struct SessionsApi;

#[OpenApi(prefix_path = "/api/v1/auth", tag = "ApiTags::Sessions")]
impl SessionsApi {
    /// The signed-in user's live sessions (one per login and device).
    #[oai(path = "/sessions", method = "get", operation_id = "list_sessions")]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Authenticated,
    ) -> Result<SessionListResult, Failure<ListSessionsErrors>> {
        let sessions = state
            .accounts
            .list_sessions(&auth.caller)
            .await?
            .into_iter()
            .map(|info| SessionResponse::new(info, auth.caller.session_id))
            .collect();
        Ok(SessionListResult::Ok(Json(SessionList { sessions })))
    }

    /// Revoke one of the signed-in user's sessions (e.g. a lost device). 404 `not_found` for
    /// a session that is not the caller's. Revoking the current session also clears its
    /// cookies.
    #[oai(
        path = "/sessions/:id",
        method = "delete",
        operation_id = "revoke_session"
    )]
    async fn revoke(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
        id: Path<Uuid>,
    ) -> Result<RevokeSessionResult, Failure<RevokeSessionErrors>> {
        state.accounts.revoke_session(&auth.caller, id.0).await?;
        if id.0 == auth.caller.session_id {
            CookiePolicy::of(&state.settings).clear_session(req.cookie());
        }
        Ok(RevokeSessionResult::Revoked)
    }
}
