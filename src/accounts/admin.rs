//! What admins do to accounts: list, read, change role or disabled, delete, revoke sessions,
//! read the audit trail. The command line's role change runs here too.

use serde_json::json;
use uuid::Uuid;

use super::{
    AccountError, Accounts, Caller,
    paging::{Count, Page, PageQuery, Paging, paging},
    validate::{Validator, has_control_chars, normalize_email},
};
use crate::{
    audit::{Event, EventType},
    client::ClientInfo,
    db::{
        PageStart,
        audit::AuditFilter,
        entities::{
            audit_event,
            mail_outbox::{self, Status},
            user::{self, Role},
        },
        users::{AdminChange, ChangeOutcome, UserFilter},
    },
};

/// An admin's change to an account, as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct AdminUpdate {
    pub role: Option<String>,
    pub disabled: Option<bool>,
}

impl Accounts {
    /// A page of users, oldest first, filtered by an email substring and a role.
    pub async fn list_users(
        &self,
        query: PageQuery,
        email: Option<String>,
        role: Option<String>,
    ) -> Result<Page<user::Model>, AccountError> {
        let mut v = Validator::new();
        let paging = paging(&mut v, query);
        let role = role_field(&mut v, "role", role);
        let email = email.map(|e| normalize_email(&e)).filter(|e| !e.is_empty());
        if email.as_deref().is_some_and(has_control_chars) {
            v.fail("email", "must not contain control characters");
        }
        let paging = v.finish(paging)?;
        let filter = UserFilter {
            email_contains: email,
            role,
        };
        // Numbered pages count every match (a page list needs the last page); a walk by
        // `after` counts up to the cap, or each of its pages would recount the whole table.
        let capped = matches!(paging.start, PageStart::After(..));
        let users = self.db.users();
        let (rows, n) = users
            .list(&filter, paging.start, paging.limit(), capped)
            .await?;
        let count = if capped {
            Count::Capped(n)
        } else {
            Count::Exact(n)
        };
        Ok(paging.page(rows, count, |u| (u.created_at, u.id)))
    }

    /// A page of audit events, newest first, filtered by user id and event type.
    pub async fn audit_events(
        &self,
        query: PageQuery,
        user_id: Option<String>,
        event_type: Option<String>,
    ) -> Result<Page<audit_event::Model>, AccountError> {
        let mut v = Validator::new();
        let paging = paging(&mut v, query);
        let user_id = user_id.and_then(|raw| {
            let id = Uuid::parse_str(raw.trim()).ok();
            if id.is_none() {
                v.fail("user_id", "must be a UUID");
            }
            id
        });
        let event_type = event_type.and_then(|raw| {
            let known = EventType::parse(raw.trim());
            if known.is_none() {
                v.fail("event_type", "is not a known event type");
            }
            known.map(|kind| kind.as_str().to_owned())
        });
        let paging = v.finish(paging)?;
        let filter = AuditFilter {
            user_id,
            event_type,
        };
        let audit = self.db.audit();
        let (rows, n) = audit.list(&filter, paging.start, paging.limit()).await?;
        Ok(paging.page(rows, Count::Capped(n), |e| (e.occurred_at, e.id)))
    }

    /// A page of the mail outbox, oldest first: what is waiting, and what failed for good
    /// (`status`: `pending`, `sending` or `dead`).
    pub async fn mail_outbox(
        &self,
        query: PageQuery,
        status: Option<String>,
    ) -> Result<Page<mail_outbox::Model>, AccountError> {
        let mut v = Validator::new();
        // The outbox stays small (sent mails leave it): page numbers only.
        let paging = paging(
            &mut v,
            PageQuery {
                after: None,
                ..query
            },
        );
        let status = status.and_then(|raw| {
            let known = [Status::Pending, Status::Sending, Status::Dead]
                .into_iter()
                .find(|s| s.as_str() == raw.trim());
            if known.is_none() {
                v.fail("status", "must be pending, sending or dead");
            }
            known
        });
        let Paging { page, per_page, .. } = v.finish(paging)?;
        let (page_no, size) = (page.unsigned_abs(), per_page.unsigned_abs());
        let (items, total) = self.db.outbox().list(status, page_no, size).await?;
        Ok(Page {
            items,
            page,
            per_page,
            total,
            total_capped: false,
            next: None,
        })
    }

    /// One user.
    pub async fn get_user(&self, id: Uuid) -> Result<user::Model, AccountError> {
        self.db
            .users()
            .find_by_id(id)
            .await?
            .ok_or(AccountError::NoSuchUser)
    }

    /// Changes a user's role or disables/enables it. Disabling revokes all its sessions.
    pub async fn update_user(
        &self,
        admin: &Caller,
        id: Uuid,
        update: AdminUpdate,
        client: &ClientInfo,
    ) -> Result<user::Model, AccountError> {
        let mut v = Validator::new();
        let role = role_field(&mut v, "role", update.role);
        if role.is_none() && update.disabled.is_none() {
            v.fail("role", "give role or disabled (or both)");
        }
        v.finish(Some(()))?;
        let change = AdminChange::Update {
            role,
            disabled: update.disabled,
        };
        let before = self.db.users().find_by_id(id).await?;
        let user = match self
            .db
            .users()
            .change_guarding_last_admin(id, change)
            .await?
        {
            ChangeOutcome::Updated(user) => user,
            ChangeOutcome::NotFound => return Err(AccountError::NoSuchUser),
            ChangeOutcome::LastAdmin => return Err(AccountError::LastAdmin),
            ChangeOutcome::Deleted => {
                return Err(anyhow::anyhow!("update reported a delete").into());
            }
        };
        let role_changed = before.as_ref().is_some_and(|b| b.role != user.role);
        if user.disabled || role_changed {
            // The guard already refuses a disabled user's tokens, and reads the role from the
            // row; revoking ends the sessions so they do not come back if the account is
            // enabled again, and so no live token carries a `role` claim that is no longer
            // true (other services may trust the claim). If the store fails here the client
            // gets 503 and repeats the (idempotent) request; a login racing with the change
            // re-reads the user after creating its session.
            self.sessions.revoke_all(user.id, None).await?;
        }
        tracing::info!(
            admin_id = %admin.user.id,
            user_id = %user.id,
            role = user.role.as_str(),
            disabled = user.disabled,
            "user updated by admin"
        );
        if let Some(before) = before {
            let actor = json!(admin.user.id);
            self.audit_changes(&before, &user, actor, client).await;
        }
        Ok(user)
    }

    /// Records what an update changed: the role, the disabled flag.
    async fn audit_changes(
        &self,
        before: &user::Model,
        after: &user::Model,
        actor: serde_json::Value,
        client: &ClientInfo,
    ) {
        if before.role != after.role {
            let detail = json!({
                "by": actor,
                "from": before.role.as_str(),
                "to": after.role.as_str(),
            });
            let event = Event::new(EventType::RoleChanged, Some(after.id), None).detail(detail);
            self.audit.record(client, event).await;
        }
        if before.disabled != after.disabled {
            let kind = if after.disabled {
                EventType::UserDisabled
            } else {
                EventType::UserEnabled
            };
            let event = Event::new(kind, Some(after.id), None).detail(json!({"by": actor}));
            self.audit.record(client, event).await;
        }
    }

    /// Deletes a user and revokes all its sessions.
    pub async fn delete_user(
        &self,
        admin: &Caller,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        match self
            .db
            .users()
            .change_guarding_last_admin(id, AdminChange::Delete)
            .await?
        {
            ChangeOutcome::Deleted => {}
            ChangeOutcome::NotFound => return Err(AccountError::NoSuchUser),
            ChangeOutcome::LastAdmin => return Err(AccountError::LastAdmin),
            ChangeOutcome::Updated(_) => {
                return Err(anyhow::anyhow!("delete reported an update").into());
            }
        }
        self.sessions.revoke_all(id, None).await?;
        tracing::info!(admin_id = %admin.user.id, user_id = %id, "user deleted by admin");
        let event =
            Event::new(EventType::UserDeleted, Some(id), None).detail(json!({"by": admin.user.id}));
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Revokes every session of a user (all devices); the account stays usable.
    pub async fn revoke_user_sessions(&self, admin: &Caller, id: Uuid) -> Result<(), AccountError> {
        self.get_user(id).await?;
        let revoked = self.sessions.revoke_all(id, None).await?;
        tracing::info!(admin_id = %admin.user.id, user_id = %id, revoked, "sessions revoked by admin");
        Ok(())
    }

    /// The user with this address (the command line's way to name one).
    pub async fn user_by_email(&self, email: &str) -> Result<user::Model, AccountError> {
        let email = normalize_email(email);
        let user = self.db.users().find_by_email(&email).await?;
        user.ok_or(AccountError::NoSuchUser)
    }

    /// Sets the role of the account with this email (the command line), audited with the
    /// command line as the actor.
    pub async fn set_role(
        &self,
        email: &str,
        role: Role,
        client: &ClientInfo,
    ) -> Result<user::Model, AccountError> {
        let before = self.user_by_email(email).await?;
        let user = self
            .db
            .users()
            .set_role(&before.email, role)
            .await?
            .ok_or(AccountError::NoSuchUser)?;
        if before.role != user.role {
            // As for an admin's change: no live token keeps the old role claim.
            self.sessions.revoke_all(user.id, None).await?;
        }
        self.audit_changes(&before, &user, json!("cli"), client)
            .await;
        Ok(user)
    }
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
