//! New accounts: registration by a client, and creation from the command line.

use serde_json::json;

use super::{AccountError, Accounts, validate::Validator};
use crate::{
    audit::{Event, EventType},
    client::ClientInfo,
    db::{
        entities::user::{self, Role},
        users::{NewUser, is_unique_violation},
    },
    limits::Rule,
};

/// A registration as the client sent it: each field as given, checked here.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub name: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub password_confirm: Option<String>,
}

/// An account the command line creates, with the role it chooses.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub name: String,
    pub email: String,
    pub password: String,
    pub role: Role,
    /// The address is known to be the user's (`user create --verified`).
    pub verified: bool,
}

impl Accounts {
    /// Registers a user account. Limited per client IP before anything is hashed, so a flood
    /// costs a counter, not argon2.
    pub async fn register(
        &self,
        form: Registration,
        client: &ClientInfo,
    ) -> Result<user::Model, AccountError> {
        self.limits
            .check(Rule::RegisterPerIp, &client.ip_key())
            .await?;
        // Compared as given, so a short password and a different confirmation are both told.
        let mismatch = matches!(
            (&form.password, &form.password_confirm),
            (Some(password), Some(confirm)) if password != confirm
        );
        let mut v = Validator::new();
        let name = v.name("name", form.name);
        let email = v.email("email", form.email);
        let password = v.new_password("password", form.password);
        v.required("password_confirm", form.password_confirm);
        if mismatch {
            v.fail("password_confirm", "must equal password");
        }
        let ((name, email), password) = v.finish(name.zip(email).zip(password))?;
        let user = self
            .insert_user(name, email, password, Role::User, false)
            .await?;
        tracing::info!(user_id = %user.id, "user registered");
        let event = Event::new(EventType::Registered, Some(user.id), None);
        self.audit.record(client, event).await;
        self.send_verification(&user).await;
        Ok(user)
    }

    /// Creates an account with any role (the command line: this is how the first admin is
    /// made). Audited with the command line as the actor.
    pub async fn create_account(
        &self,
        account: NewAccount,
        client: &ClientInfo,
    ) -> Result<user::Model, AccountError> {
        let mut v = Validator::new();
        let name = v.name("name", Some(account.name));
        let email = v.email("email", Some(account.email));
        let password = v.new_password("password", Some(account.password));
        let ((name, email), password) = v.finish(name.zip(email).zip(password))?;
        let user = self
            .insert_user(name, email, password, account.role, account.verified)
            .await?;
        let detail = json!({"by": "cli", "role": user.role.as_str(), "verified": account.verified});
        let event = Event::new(EventType::Registered, Some(user.id), None).detail(detail);
        self.audit.record(client, event).await;
        Ok(user)
    }

    async fn insert_user(
        &self,
        name: String,
        email: String,
        password: String,
        role: Role,
        verified: bool,
    ) -> Result<user::Model, AccountError> {
        let password_hash = self.passwords.hash(password.into()).await?;
        let new = NewUser {
            name,
            email,
            password_hash,
            role,
            verified,
        };
        match self.db.users().insert(new).await {
            Ok(user) => Ok(user),
            Err(err) if is_unique_violation(&err) => Err(AccountError::EmailTaken),
            Err(err) => Err(err.into()),
        }
    }
}
