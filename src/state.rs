//! Shared state handed to every endpoint. Cheap to clone: every field is a handle.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{
    audit::Audit,
    auth::{cookies::CookiePolicy, password::PasswordService, tokens::TokenService},
    config::Settings,
    db::reads::Reads,
    limits::Limiter,
    session::SessionStore,
    telemetry::metrics::Metrics,
};

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    /// The hot path's user loads (guard, refresh, login): see `db::reads`.
    pub reads: Reads,
    pub sessions: Arc<dyn SessionStore>,
    pub tokens: Arc<TokenService>,
    pub passwords: PasswordService,
    pub limits: Limiter,
    pub cookies: Arc<CookiePolicy>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub audit: Audit,
}
