//! A signed-in user's sessions: logging out of one or all, listing them, revoking one.

use serde_json::json;
use uuid::Uuid;

use super::{AccountError, Accounts, Caller};
use crate::{
    audit::{Event, EventType},
    client::ClientInfo,
    session::SessionInfo,
};

impl Accounts {
    /// Ends the caller's current session: its tokens are revoked.
    pub async fn logout(&self, caller: &Caller, client: &ClientInfo) -> Result<(), AccountError> {
        let (user_id, session_id) = (caller.user.id, caller.session_id);
        self.sessions.revoke(user_id, session_id).await?;
        tracing::info!(user_id = %user_id, session_id = %session_id, "logout");
        let event = Event::new(EventType::Logout, Some(user_id), Some(session_id));
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Ends every session of the caller (every device).
    pub async fn logout_all(
        &self,
        caller: &Caller,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        let user_id = caller.user.id;
        let revoked = self.sessions.revoke_all(user_id, None).await?;
        tracing::info!(user_id = %user_id, revoked, "logout-all");
        let event = Event::new(EventType::LogoutAll, Some(user_id), Some(caller.session_id))
            .detail(json!({"sessions_revoked": revoked}));
        self.audit.record(client, event).await;
        Ok(())
    }

    /// The caller's live sessions, newest first.
    pub async fn list_sessions(&self, caller: &Caller) -> Result<Vec<SessionInfo>, AccountError> {
        Ok(self.sessions.list(caller.user.id).await?)
    }

    /// Revokes one of the caller's sessions (a lost device). `NoSuchSession` for a session that
    /// is not the caller's.
    pub async fn revoke_session(&self, caller: &Caller, id: Uuid) -> Result<(), AccountError> {
        if !self.sessions.revoke(caller.user.id, id).await? {
            return Err(AccountError::NoSuchSession);
        }
        tracing::info!(user_id = %caller.user.id, session_id = %id, "session revoked");
        Ok(())
    }
}
