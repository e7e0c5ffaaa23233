//! Refresh-token rotation (API.md section 6): one atomic step in the session store swaps the
//! session's refresh and access `jti`s; a duplicate inside the grace window gets the same
//! pair; an older token is reuse and ends the session.

use super::{AccountError, Accounts, SignedIn};
use crate::{
    audit::{Event, EventType},
    auth::tokens::{PairClaims, PairIds, PairSubject},
    client::ClientInfo,
    limits::Rule,
    session::{RotateOutcome, Rotation},
};

/// How a refresh was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshKind {
    /// The presented token was current: a new pair.
    Rotated,
    /// A duplicate within the grace window: the pair its twin got.
    Grace,
}

impl RefreshKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshKind::Rotated => "ok",
            RefreshKind::Grace => "grace",
        }
    }
}

impl Accounts {
    /// Exchanges a refresh token for a new pair of its session.
    pub async fn refresh(
        &self,
        token: &str,
        client: &ClientInfo,
    ) -> Result<(SignedIn, RefreshKind), AccountError> {
        let result = self.rotate_refresh(token, client).await;
        let label = match &result {
            Ok((_, kind)) => kind.as_str(),
            Err(AccountError::RefreshTokenReused) => "reused",
            Err(err) if err.is_client_error() => "rejected",
            Err(_) => "error",
        };
        self.metrics.refreshes.with_label_values(&[label]).inc();
        result
    }

    async fn rotate_refresh(
        &self,
        token: &str,
        client: &ClientInfo,
    ) -> Result<(SignedIn, RefreshKind), AccountError> {
        self.limits
            .check(Rule::RefreshPerIp, &client.ip_key())
            .await?;
        let claims = self.tokens.verify_refresh(token)?;
        let user = self.active_user(claims.sub).await?;
        // The session keeps how it was signed in to: the refresh token carries it along.
        let subject = PairSubject {
            user_id: user.id,
            role: user.role.as_str(),
            sid: claims.sid,
            amr: claims.amr,
        };
        let pair = self.tokens.issue_pair(&subject).await?;
        // The grace window keeps only the new pair's ids: a duplicate gets its claims rebuilt
        // from its own verified token and the user's row, never read back from the store.
        let grace_payload = PairIds::of(&PairClaims {
            access: pair.access.clone(),
            refresh: pair.refresh.clone(),
        })
        .encode();
        // One atomic step in the store: only the session's current refresh token rotates.
        let grace_secs = i64::try_from(self.policy.refresh_grace.as_secs()).unwrap_or(0);
        let outcome = self
            .sessions
            .rotate(Rotation {
                user_id: user.id,
                session_id: claims.sid,
                presented_refresh_jti: claims.jti,
                new_access_jti: pair.access.jti,
                new_access_exp: pair.access.exp,
                new_refresh_jti: pair.refresh.jti,
                new_refresh_exp: pair.refresh.exp,
                now: pair.access.iat,
                grace_secs,
                grace_payload,
            })
            .await?;
        match outcome {
            RotateOutcome::Rotated => Ok((SignedIn { pair, user }, RefreshKind::Rotated)),
            RotateOutcome::Grace(payload) => {
                // A concurrent duplicate (two tabs): answer with the pair the winner got; the
                // pair signed above was never stored, so it never works.
                let Some(ids) = PairIds::decode(&payload) else {
                    tracing::error!(session_id = %claims.sid, "unreadable grace record in the store");
                    return Err(AccountError::InvalidToken);
                };
                let claims = self.tokens.pair_claims(&subject, ids);
                let pair = self.tokens.sign_pair(claims).await?;
                Ok((SignedIn { pair, user }, RefreshKind::Grace))
            }
            RotateOutcome::Reused => {
                tracing::warn!(
                    user_id = %user.id,
                    session_id = %claims.sid,
                    "refresh token reuse detected: session revoked"
                );
                let event = Event::new(
                    EventType::RefreshReuseDetected,
                    Some(user.id),
                    Some(claims.sid),
                );
                self.audit.record(client, event).await;
                Err(AccountError::RefreshTokenReused)
            }
            RotateOutcome::Unknown => Err(AccountError::InvalidToken),
        }
    }
}
