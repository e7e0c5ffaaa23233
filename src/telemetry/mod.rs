//! Tracing subscriber setup: text for people, JSON for log pipelines (`LOG_FORMAT`).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    // poem's own "listening" line would repeat the service's, and the migrator's line per
    // migration the service's one line about them.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,poem::server=warn,sea_orm_migration=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .try_init(),
        LogFormat::Json => registry.with(fmt::layer().json()).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

pub mod metrics;
pub mod request_id;
