//! The audit trail: account events stored in the database with time, user, session, IP and
//! user agent, for security teams (`GET /api/v1/admin/audit`).
//!
//! Writing an event never fails the user's request, and never fails silently either: a failed
//! write is logged with the event type and counted in `audit_write_failures_total`.

use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    client::ClientInfo,
    db::{Database, entities::audit_event},
    telemetry::metrics::Metrics,
};

/// The kinds of audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Registered,
    LoginSucceeded,
    LoginFailed,
    Logout,
    LogoutAll,
    RefreshReuseDetected,
    PasswordChanged,
    RoleChanged,
    UserDisabled,
    UserEnabled,
    UserDeleted,
    EmailVerificationRequested,
    EmailVerified,
    PasswordResetRequested,
    PasswordReset,
    EmailChangeRequested,
    EmailChanged,
    MailSent,
    MailDeliveryFailed,
    MfaEnrollmentStarted,
    MfaEnabled,
    MfaRecoveryCodesRegenerated,
    MfaDisabled,
    MfaReset,
    LoginMfaRequired,
    MfaSucceeded,
    MfaFailed,
}

impl EventType {
    /// The event type named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::iter().find(|kind| kind.as_str() == name)
    }

    /// Every event type.
    pub fn iter() -> impl Iterator<Item = EventType> {
        [
            EventType::Registered,
            EventType::LoginSucceeded,
            EventType::LoginFailed,
            EventType::Logout,
            EventType::LogoutAll,
            EventType::RefreshReuseDetected,
            EventType::PasswordChanged,
            EventType::RoleChanged,
            EventType::UserDisabled,
            EventType::UserEnabled,
            EventType::UserDeleted,
            EventType::EmailVerificationRequested,
            EventType::EmailVerified,
            EventType::PasswordResetRequested,
            EventType::PasswordReset,
            EventType::EmailChangeRequested,
            EventType::EmailChanged,
            EventType::MailSent,
            EventType::MailDeliveryFailed,
            EventType::MfaEnrollmentStarted,
            EventType::MfaEnabled,
            EventType::MfaRecoveryCodesRegenerated,
            EventType::MfaDisabled,
            EventType::MfaReset,
            EventType::LoginMfaRequired,
            EventType::MfaSucceeded,
            EventType::MfaFailed,
        ]
        .into_iter()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Registered => "registered",
            EventType::LoginSucceeded => "login_succeeded",
            EventType::LoginFailed => "login_failed",
            EventType::Logout => "logout",
            EventType::LogoutAll => "logout_all",
            EventType::RefreshReuseDetected => "refresh_reuse_detected",
            EventType::PasswordChanged => "password_changed",
            EventType::RoleChanged => "role_changed",
            EventType::UserDisabled => "user_disabled",
            EventType::UserEnabled => "user_enabled",
            EventType::UserDeleted => "user_deleted",
            EventType::EmailVerificationRequested => "email_verification_requested",
            EventType::EmailVerified => "email_verified",
            EventType::PasswordResetRequested => "password_reset_requested",
            EventType::PasswordReset => "password_reset",
            EventType::EmailChangeRequested => "email_change_requested",
            EventType::EmailChanged => "email_changed",
            EventType::MailSent => "mail_sent",
            EventType::MailDeliveryFailed => "mail_delivery_failed",
            EventType::MfaEnrollmentStarted => "mfa_enrollment_started",
            EventType::MfaEnabled => "mfa_enabled",
            EventType::MfaRecoveryCodesRegenerated => "mfa_recovery_codes_regenerated",
            EventType::MfaDisabled => "mfa_disabled",
            EventType::MfaReset => "mfa_reset",
            EventType::LoginMfaRequired => "login_mfa_required",
            EventType::MfaSucceeded => "mfa_succeeded",
            EventType::MfaFailed => "mfa_failed",
        }
    }
}

/// One event to record.
pub struct Event {
    pub kind: EventType,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    /// Event-specific facts (e.g. the acting admin, the new role). Never secrets.
    pub detail: Option<Value>,
}

impl Event {
    pub fn new(kind: EventType, user_id: Option<Uuid>, session_id: Option<Uuid>) -> Self {
        Self {
            kind,
            user_id,
            session_id,
            detail: None,
        }
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// How long the trail keeps events (`AUDIT_RETENTION_DAYS`): failed logins carry the
/// addresses people typed, which should not be kept forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    /// `None`: keep every event.
    pub retention: Option<std::time::Duration>,
}

/// Records events.
#[derive(Clone)]
pub struct Audit {
    db: Database,
    metrics: Arc<Metrics>,
}

impl Audit {
    pub fn new(db: Database, metrics: Arc<Metrics>) -> Self {
        Self { db, metrics }
    }

    /// Deletes the events older than `retention`; how many.
    pub async fn purge(&self, retention: std::time::Duration) -> Result<u64, sea_orm::DbErr> {
        let age = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now()
            .checked_sub_signed(age)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        self.db.audit().delete_before(cutoff).await
    }

    /// Stores `event` with the client's IP and user agent.
    pub async fn record(&self, client: &ClientInfo, event: Event) {
        let row = audit_event::Model {
            id: Uuid::new_v4(),
            occurred_at: Utc::now().trunc_subsecs(6),
            event_type: event.kind.as_str().to_owned(),
            user_id: event.user_id,
            session_id: event.session_id,
            ip: client.ip.map(|ip| ip.to_string()),
            user_agent: client.user_agent.clone(),
            detail: event.detail.map(|d| d.to_string()),
        };
        if let Err(err) = self.db.audit().insert(row).await {
            self.metrics.audit_failures.inc();
            tracing::error!(
                event = event.kind.as_str(),
                user_id = ?event.user_id,
                error = %err,
                "audit event could not be stored"
            );
        }
    }
}
