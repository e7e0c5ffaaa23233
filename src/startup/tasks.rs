//! What runs beside the HTTP server: the key directory's reload, and waiting for the signal
//! to stop.

use tokio::task::JoinSet;

use crate::{auth::keys::KeySource, state::AppState};

/// Starts the background tasks of a running instance; they end when the set is dropped or
/// aborted.
pub fn spawn(state: &AppState) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    // Keys from the environment cannot change while the process runs.
    if let KeySource::Files(_) = &state.settings.keys.source {
        tasks.spawn(reload_keys(state.clone()));
    }
    tasks
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
        state.tokens.reload(&state.settings.keys.source).await;
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
