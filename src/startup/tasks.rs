//! What runs beside the HTTP server: the key directory's reload, and waiting for the signal
//! to stop.

use std::time::Duration;

use tokio::task::JoinSet;

use crate::{audit::Audit, auth::keys::KeySource, mail::Worker, state::AppState};

/// Starts the background tasks of a running instance; they end when the set is dropped or
/// aborted.
pub fn spawn(state: &AppState) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    // Keys from the environment cannot change while the process runs.
    if let KeySource::Files(_) = &state.settings.keys.source {
        tasks.spawn(reload_keys(state.clone()));
    }
    if let Some(retention) = state.settings.audit.retention {
        tasks.spawn(purge_audit(state.clone(), retention));
    }
    if let Some(mailer) = &state.mailer {
        let worker = Worker {
            db: state.db.clone(),
            mailer: mailer.clone(),
            settings: state.settings.mail.delivery.clone(),
            audit: Audit::new(state.db.clone(), state.metrics.clone()),
            metrics: state.metrics.clone(),
            queue: state.mail_queue.clone(),
        };
        tasks.spawn(worker.run());
        tasks.spawn(purge_links(state.clone()));
    }
    tasks
}

/// Deletes expired link tokens and month-old dead mails, at start and then every hour.
async fn purge_links(state: AppState) {
    let mut ticks = tokio::time::interval(PURGE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match state.accounts.purge_links_and_dead_mail().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired links and old dead mails deleted"),
            Err(err) => tracing::warn!(error = %err, "link purge failed; retrying in an hour"),
        }
    }
}

/// How often the audit trail is purged of events past their retention.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes audit events past `AUDIT_RETENTION_DAYS`, at start and then every hour. Several
/// instances may purge at once: each deletes what is old, and deleting twice is harmless.
async fn purge_audit(state: AppState, retention: Duration) {
    let mut ticks = tokio::time::interval(PURGE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match state.accounts.purge_audit(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "audit events past their retention deleted"),
            Err(err) => tracing::warn!(error = %err, "audit purge failed; retrying in an hour"),
        }
    }
}

/// Re-reads the key directory every `KEYS_RELOAD_SECS`, so a `latchkey keys rotate` (or
/// `prune`) reaches every running instance within that time, without a restart. A failed
/// reload keeps the previous keys (see `TokenService::reload`).
async fn reload_keys(state: AppState) {
    let period = state.settings.keys.reload_every;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let keys = &state.settings.keys;
        state.tokens.reload(&keys.source, keys.load_rules()).await;
    }
}

/// Completes on SIGTERM (what orchestrators send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
