//! Shared state handed to every endpoint: one `Arc` around the service's handles.

use std::{ops::Deref, path::PathBuf, sync::Arc};

use crate::{
    accounts::Accounts,
    auth::tokens::TokenService,
    config::Settings,
    db::Database,
    mail::{MailQueue, Mailer},
    session::memory::MemoryStore,
    telemetry::metrics::Metrics,
};

/// What every endpoint can reach, as one `Arc`: poem attaches a clone of it to every request,
/// so a clone must be one reference count, not one per handle. Fields read through `Deref`
/// (`state.accounts`).
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
    /// Every account flow.
    pub accounts: Accounts,
    /// The keys and tokens, for the JWKS and the key reloads.
    pub tokens: Arc<TokenService>,
    /// The database (the same handle the flows use), for maintenance and tests.
    pub db: Database,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// The embedded default's in-process sessions and the file they are kept in between runs.
    pub session_snapshot: Option<(Arc<MemoryStore>, PathBuf)>,
    /// Where the delivery worker sends mail (`None`: no worker, as for a command, or with
    /// `EMAIL_FLOWS=off`), and how flows wake it.
    pub mailer: Option<Arc<Mailer>>,
    pub mail_queue: MailQueue,
}
