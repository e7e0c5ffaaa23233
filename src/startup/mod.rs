//! Building the application from `Settings` and running it. Tests call the same
//! `Application::build` with port 0; the command line builds the same [`Services`].

mod http;
pub mod mfa;
mod tasks;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};

pub use self::http::{MAX_BODY_BYTES, routes};
use crate::{
    accounts::{Accounts, Stores},
    audit::Audit,
    auth::{
        keys::{KeyError, KeySource, Keys},
        password::PasswordService,
        tokens::TokenService,
    },
    config::{ConfigError, Settings},
    db::Database,
    limits::{LimitStore, Limiter, memory::MemoryLimits, redis::RedisLimits},
    mail::{MailError, MailQueue, Mailer},
    session::{
        SessionStore,
        challenge::{ChallengeStore, MemoryChallenges, RedisChallenges},
        memory::MemoryStore,
        redis::RedisStore,
    },
    state::{AppState, Services},
    store::{
        BackendError,
        redis::{RedisClient, RedisTarget},
    },
    telemetry::metrics::Metrics,
};

/// Why the service refused to start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    // The messages name the stage only: the cause is the source, and `{:#}` prints the chain.
    #[error("configuration refused")]
    Config(#[from] ConfigError),
    #[error("keys refused")]
    Keys(#[from] KeyError),
    #[error("database")]
    Database(#[from] sea_orm::DbErr),
    #[error("database")]
    Pooler(#[from] crate::db::pooler::PoolerError),
    #[error("cannot reach Redis at REDIS_URL")]
    Redis(#[from] BackendError),
    #[error("mail")]
    Mail(#[from] MailError),
    #[error("the MFA key")]
    MfaKey(#[from] mfa::MfaKeyError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What the services are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The HTTP service: in the embedded default it takes over the sessions kept from its
    /// last run.
    Serve,
    /// One command of the command line: it leaves them for the service.
    Command,
}

/// Validates settings, loads keys, connects and migrates the database and connects the
/// session store and the limits: everything but the listener.
pub async fn services(mut settings: Settings, purpose: Purpose) -> Result<Services, StartupError> {
    settings.validate()?;
    settings.resolve_public_url(None);
    let mfa = mfa::setup(&mut settings)?;
    let keys = {
        let source = settings.keys.source.clone();
        let rules = settings.keys.load_rules();
        // Generating development keys takes a moment: keep it off the async workers.
        tokio::task::spawn_blocking(move || Keys::load(&source, rules))
            .await
            .map_err(anyhow::Error::from)??
    };
    let db = Database::connect(settings.database.url.expose(), settings.database.pool_size).await?;
    db.migrate().await?;
    let metrics = Arc::new(Metrics::new());
    let backends = stores(&settings, purpose).await?;
    let tokens = Arc::new(TokenService::new(keys, settings.tokens.clone()));
    let mailer = match purpose {
        Purpose::Serve if settings.accounts.email.enabled => Some(Arc::new(mailer(&settings)?)),
        _ => None,
    };
    let mail_queue = MailQueue::new();
    let stores = Stores {
        db: db.clone(),
        sessions: backends.sessions,
        limits: Limiter::new(backends.limits, settings.limits.clone(), metrics.clone()),
        passwords: PasswordService::new(&settings.passwords, metrics.clone())?,
        tokens: tokens.clone(),
        audit: Audit::new(db.clone(), metrics.clone()),
        metrics: metrics.clone(),
        mail_queue: mail_queue.clone(),
        challenges: backends.challenges,
        mfa,
    };
    Ok(Services {
        accounts: Accounts::new(stores, settings.accounts.clone()),
        tokens,
        db,
        settings: Arc::new(settings),
        metrics,
        session_snapshot: backends.snapshot,
        mailer,
        mail_queue,
    })
}

/// SMTP when `SMTP_URL` is set; else (development) `.eml` files in the outbox folder.
fn mailer(settings: &Settings) -> Result<Mailer, MailError> {
    let from = &settings.mail.delivery.from;
    match &settings.mail.smtp_url {
        Some(url) => Mailer::smtp(url.expose(), from, crate::mail::SMTP_TIMEOUT),
        None => {
            let dir = settings.mail.outbox_dir.clone().unwrap_or_else(|| {
                crate::db::sqlite_dir(settings.database.url.expose())
                    .unwrap_or_else(|| "data".into())
                    .join("outbox")
            });
            Mailer::files(&dir, from)
        }
    }
}

/// What lives in Redis, or in process in the embedded default.
struct Backends {
    sessions: Arc<dyn SessionStore>,
    limits: Arc<dyn LimitStore>,
    challenges: Arc<dyn ChallengeStore>,
    /// The in-process sessions and the file that keeps them across restarts.
    snapshot: Option<(Arc<MemoryStore>, PathBuf)>,
}

/// The session store, the limit store and the second-factor challenges: in Redis when
/// `REDIS_URL` is set, else in process (the sessions then kept beside a SQLite file between
/// runs, so a restart of `cargo run` signs nobody out).
async fn stores(settings: &Settings, purpose: Purpose) -> Result<Backends, StartupError> {
    let Some(url) = &settings.redis.url else {
        tracing::debug!("REDIS_URL unset: sessions and rate limits stay in process");
        let snapshot = crate::db::sqlite_dir(settings.database.url.expose())
            .filter(|_| purpose == Purpose::Serve)
            .map(|dir| dir.join(SESSION_SNAPSHOT));
        let sessions = Arc::new(match &snapshot {
            Some(path) => MemoryStore::restore(path),
            None => MemoryStore::new(),
        });
        return Ok(Backends {
            snapshot: snapshot.map(|path| (sessions.clone(), path)),
            sessions,
            limits: Arc::new(MemoryLimits::new()),
            challenges: Arc::new(MemoryChallenges::new()),
        });
    };
    let redis = RedisClient::new(url.expose(), &settings.redis.options()?)?;
    redis.ping().await?;
    let prefix = &settings.redis.key_prefix;
    Ok(Backends {
        sessions: Arc::new(RedisStore::new(redis.clone(), prefix)),
        limits: Arc::new(RedisLimits::new(redis.clone(), prefix)),
        challenges: Arc::new(RedisChallenges::new(redis, prefix)),
        snapshot: None,
    })
}

/// The file beside the SQLite database that keeps the in-process sessions between runs.
pub const SESSION_SNAPSHOT: &str = "sessions.json";

/// A built, bound, not yet running service.
pub struct Application {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Builds the [`services`] and binds the listener (port 0 picks a free port).
    pub async fn build(mut settings: Settings) -> Result<Self, StartupError> {
        settings.validate()?;
        let http = &settings.http;
        if settings.is_production() && http.allowed_origins.is_empty() {
            tracing::warn!(
                "ALLOWED_ORIGINS is empty: browsers can use cookies only for safe requests \
                 (every cookie-authenticated POST/PATCH/DELETE, cookie refresh included, gets 403)"
            );
        }
        let addr = if http.host.contains(':') && !http.host.starts_with('[') {
            format!("[{}]:{}", http.host, http.port)
        } else {
            format!("{}:{}", http.host, http.port)
        };
        let bind_error = |source| StartupError::Bind {
            addr: addr.clone(),
            source,
        };
        let acceptor = TcpListener::bind(addr.clone())
            .into_acceptor()
            .await
            .map_err(bind_error)?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| StartupError::Other(anyhow::anyhow!("no local address for {addr}")))?;
        // The port is known now (port 0 picks one): the development public URL names it.
        settings.resolve_public_url(Some(local_addr));
        let services = services(settings, Purpose::Serve).await?;
        Ok(Self {
            acceptor,
            local_addr,
            state: AppState::new(services),
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests.
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(tasks::shutdown_signal()).await
    }

    /// What a person starting the service needs to know: where it listens, where the docs
    /// are, what it stores where, and, in development, not to expose it.
    pub fn banner(&self) -> String {
        let settings = &self.state.settings;
        let url = format!("http://{}", self.local_addr);
        let keys = match &settings.keys.source {
            KeySource::Files(paths) => {
                let dir = std::path::absolute(&paths.dir).unwrap_or_else(|_| paths.dir.clone());
                let generated = self.state.tokens.keys().generated();
                let note = if generated {
                    " (NEW development keys, generated now)"
                } else {
                    ""
                };
                format!("{}{note}", dir.display())
            }
            KeySource::Inline(_) => "from the environment (base64 PEM)".into(),
        };
        let sessions = match &settings.redis.url {
            Some(url) => {
                let target = RedisTarget::parse(url.expose())
                    .map_or_else(|_| format!("Redis {url:?}"), |target| target.to_string());
                match &settings.redis.ca_cert {
                    Some(ca) => format!("{target} (CA {})", ca.display()),
                    None => target,
                }
            }
            None => "in process (kept across restarts beside the database file)".into(),
        };
        let mode = if settings.is_production() {
            "production"
        } else {
            "development mode: do not expose this instance (README, Production notes)"
        };
        let mail = match &self.state.mailer {
            Some(mailer) => mailer.describe().to_owned(),
            None => "off (EMAIL_FLOWS=off)".into(),
        };
        format!(
            "Latchkey {} ({mode})\n  listening  {url}\n  API docs   {url}/docs\n  database   {}\n  \
             sessions   {sessions}\n  keys       {keys}\n  mail       {mail}\n",
            env!("CARGO_PKG_VERSION"),
            crate::db::describe(settings.database.url.expose()),
        )
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests (at most 10 s).
    /// Background tasks (the key directory's reload) run meanwhile.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let mut background = tasks::spawn(&self.state);
        let state = self.state.clone();
        let result = poem::Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                routes(self.state),
                shutdown,
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
        background.abort_all();
        if let Some((sessions, path)) = &state.session_snapshot {
            match sessions.save(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "sessions kept for the next start")
                }
                Err(err) => tracing::warn!(error = %err, "cannot keep the sessions: they end here"),
            }
        }
        result
    }
}
