//! What a signed-in user changes about their own account: the name, the password, and the
//! account's existence.

use serde_json::json;

use super::{AccountError, Accounts, Caller, validate::Validator};
use crate::{
    audit::{Event, EventType},
    client::ClientInfo,
    db::{
        entities::user,
        users::{AdminChange, ChangeOutcome},
    },
};

impl Accounts {
    /// Changes the caller's name.
    pub async fn rename(
        &self,
        caller: Caller,
        name: Option<String>,
    ) -> Result<user::Model, AccountError> {
        let mut v = Validator::new();
        let name = v.name("name", name);
        let name = v.finish(name)?;
        Ok(self.db.users().update_name(caller.user, name).await?)
    }

    /// Changes the caller's password. Every other session is revoked; this one stays.
    pub async fn change_password(
        &self,
        caller: Caller,
        current: Option<String>,
        new: Option<String>,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        let mut v = Validator::new();
        let current = v.given_password("current_password", current);
        let new = v.new_password("new_password", new);
        let (current, new) = v.finish(current.zip(new))?;
        self.confirm_password(&caller.user, "current_password", current)
            .await?;
        let hash = self.passwords.hash(new.into()).await?;
        let (id, keep) = (caller.user.id, Some(caller.session_id));
        // Whoever else holds a session may be the reason for the change: end them all. Before
        // the change (if the store is down nothing changes and the client can retry), and
        // after it, for a login that raced with the change. Login itself re-checks the hash.
        self.sessions.revoke_all(id, keep).await?;
        let user = self
            .db
            .users()
            .update_password_hash(caller.user, hash)
            .await?;
        let revoked = self.sessions.revoke_all(id, keep).await?;
        tracing::info!(user_id = %user.id, revoked, "password changed");
        let event = Event::new(EventType::PasswordChanged, Some(user.id), keep)
            .detail(json!({"other_sessions_revoked": revoked}));
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Deletes the caller's account, confirmed with its password; every session is revoked.
    /// The last active admin cannot delete itself.
    pub async fn delete_account(
        &self,
        caller: &Caller,
        password: Option<String>,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        let mut v = Validator::new();
        let password = v.given_password("password", password);
        let password = v.finish(password)?;
        self.confirm_password(&caller.user, "password", password)
            .await?;
        let user_id = caller.user.id;
        match self
            .db
            .users()
            .change_guarding_last_admin(user_id, AdminChange::Delete)
            .await?
        {
            ChangeOutcome::Deleted | ChangeOutcome::NotFound => {}
            ChangeOutcome::LastAdmin => return Err(AccountError::LastAdmin),
            ChangeOutcome::Updated(_) => {
                return Err(anyhow::anyhow!("delete reported an update").into());
            }
        }
        self.sessions.revoke_all(user_id, None).await?;
        tracing::info!(user_id = %user_id, "account deleted");
        let event = Event::new(
            EventType::UserDeleted,
            Some(user_id),
            Some(caller.session_id),
        )
        .detail(json!({"by": "self"}));
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Checks the caller's password; a wrong one is a field error, so a client does not
    /// mistake it for an expired token. Limited per user and counted in the account's login
    /// backoff, like a login: a stolen session must not become a password-guessing oracle,
    /// nor keep every hashing slot busy.
    pub(super) async fn confirm_password(
        &self,
        user: &user::Model,
        field: &str,
        password: String,
    ) -> Result<(), AccountError> {
        let attempt = self
            .limits
            .check_password_check(&user.id.to_string(), &user.email)
            .await?;
        let stored = Some(user.password_hash.expose().to_owned());
        if self.passwords.verify(password.into(), stored).await? {
            self.limits.login_succeeded(attempt).await?;
            return Ok(());
        }
        self.limits.login_failed(&user.email).await?;
        Err(Validator::incorrect(field))
    }
}
