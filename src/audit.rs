//! The audit trail: account events stored in the database with time, user, session, IP and
//! user agent, for security teams (`GET /api/v1/admin/audit`).
//!
//! Writing an event never fails the user's request, and never fails silently either: a failed
//! write is logged with the event type and counted in `audit_write_failures_total`.

use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use poem::Request;
use sea_orm::DatabaseConnection;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    api::request::{client_ip, user_agent},
    db::{self, entities::audit_event},
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
}

impl EventType {
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

/// Records events.
#[derive(Clone)]
pub struct Audit {
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    trusted_proxies: Arc<Vec<ipnet::IpNet>>,
}

impl Audit {
    pub fn new(
        db: DatabaseConnection,
        metrics: Arc<Metrics>,
        trusted_proxies: Vec<ipnet::IpNet>,
    ) -> Self {
        Self {
            db,
            metrics,
            trusted_proxies: Arc::new(trusted_proxies),
        }
    }

    /// Stores `event` with the request's client IP and user agent.
    pub async fn record(&self, req: &Request, event: Event) {
        let row = audit_event::Model {
            id: Uuid::new_v4(),
            occurred_at: Utc::now().trunc_subsecs(6),
            event_type: event.kind.as_str().to_owned(),
            user_id: event.user_id,
            session_id: event.session_id,
            ip: client_ip(req, &self.trusted_proxies).map(|ip| ip.to_string()),
            user_agent: user_agent(req),
            detail: event.detail.map(|d| d.to_string()),
        };
        if let Err(err) = db::audit::insert(&self.db, row).await {
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
