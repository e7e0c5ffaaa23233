//! The guard's flow, in front of every protected endpoint (API.md section 3), after the HTTP
//! layer has found the access token (and checked CSRF for cookies):
//! 1. the JWT is verified (RS256 pinned, access key, iss/aud/exp/nbf, not a refresh token);
//! 2. its `jti` must be live in the session store: this is what makes logout and revocation
//!    immediate, whatever the signature says;
//! 3. the user is loaded by `sub` and must exist and not be disabled. The role comes from this
//!    row, not from the token, so a role change applies on the next request.
//!
//! Any failure is `InvalidToken` (or `TokenExpired`), with no hint which step refused.

use uuid::Uuid;

use super::{AccountError, Accounts};
use crate::{
    auth::tokens::{AccessClaims, TokenError},
    db::entities::user,
    store::clock::now_secs,
};

/// The caller of a protected endpoint: the loaded user and the session its token belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: user::Model,
    pub session_id: Uuid,
    pub claims: AccessClaims,
}

impl Accounts {
    /// The user a token names, if it still exists and is enabled; else the token is invalid.
    pub(super) async fn active_user(&self, id: Uuid) -> Result<user::Model, AccountError> {
        self.db
            .users()
            .find_by_id(id)
            .await?
            .filter(|user| !user.disabled)
            .ok_or(AccountError::InvalidToken)
    }

    /// Runs the guard on an access token.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AccountError> {
        let claims = self.tokens.verify_access(token)?;
        // Revocation: a token whose jti is no longer recorded is dead, even if correctly signed.
        if !self
            .sessions
            .is_access_active(claims.sub, claims.sid, claims.jti)
            .await?
        {
            // Within the verification leeway after `exp` the store has already dropped the jti:
            // that token expired, it was not revoked, and the client should refresh.
            if claims.exp <= now_secs() {
                return Err(TokenError::Expired.into());
            }
            return Err(AccountError::InvalidToken);
        }
        let user = self.active_user(claims.sub).await?;
        Ok(Caller {
            user,
            session_id: claims.sid,
            claims,
        })
    }
}
