//! Shared state handed to every endpoint: one `Arc` around the service's handles.

use std::{ops::Deref, sync::Arc};

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

/// What every endpoint can reach, as one `Arc`: poem attaches a clone of it to every request,
/// and a clone of the handles themselves took ~20 reference-count updates and a copy of all
/// of them each time (bench/README.md, change 17). Fields read through `Deref`
/// (`state.tokens`).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The service's handles.
pub struct Services {
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
