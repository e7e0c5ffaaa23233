//! Building the application from `Settings` and running it. Tests call the same
//! `Application::build` with port 0.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server,
    error::ResponseError,
    http::{HeaderValue, Method, header},
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
    middleware::CookieJarManager,
};

use crate::{
    api,
    auth::{
        cookies::CookiePolicy,
        keys::Keys,
        password::PasswordService,
        tokens::{TokenService, TokenSettings},
    },
    config::{ConfigError, Settings},
    db,
    error::{self, ApiError},
    session::{SessionStore, StoreError, memory::MemoryStore, redis::RedisStore},
    state::AppState,
};
use secrecy::ExposeSecret;

/// Request bodies above this size get 413 before any parsing (API.md section 1).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why the service refused to start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration refused: {0}")]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

/// A built, bound, not yet running service.
pub struct Application {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Validates settings, loads keys, connects and migrates the database, connects the
    /// session store and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.validate()?;
        let keys = {
            let source = settings.keys.clone();
            let generate = settings.generate_missing_keys;
            let production = settings.is_production();
            // Generating development keys takes a moment: keep it off the async workers.
            tokio::task::spawn_blocking(move || Keys::load(&source, generate, production))
                .await
                .map_err(anyhow::Error::from)??
        };
        let db = db::connect(settings.database_url.expose_secret()).await?;
        db::migrate(&db).await?;
        let sessions: Arc<dyn SessionStore> = match &settings.redis_url {
            Some(url) => {
                let store = RedisStore::new(
                    url.expose_secret(),
                    &settings.redis_key_prefix,
                    settings.redis_pool_size,
                )?;
                store.ping().await.map_err(|err| {
                    StoreError(format!("cannot reach Redis at REDIS_URL: {}", err.0))
                })?;
                Arc::new(store)
            }
            None => {
                tracing::info!("REDIS_URL unset: using the in-process session store");
                Arc::new(MemoryStore::new())
            }
        };
        let tokens = Arc::new(TokenService::new(
            Arc::new(keys),
            TokenSettings {
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                access_ttl_secs: settings.access_ttl_secs,
                refresh_ttl_secs: settings.refresh_ttl_secs,
                leeway_secs: settings.leeway_secs,
            },
        ));
        let passwords = PasswordService::new(settings.argon2, settings.hash_concurrency)?;
        let cookies = Arc::new(CookiePolicy {
            secure: settings.cookie_secure,
            domain: settings.cookie_domain.clone(),
            access_ttl_secs: settings.access_ttl_secs,
            refresh_ttl_secs: settings.refresh_ttl_secs,
        });
        if settings.is_production() && settings.allowed_origins.is_empty() {
            tracing::warn!(
                "ALLOWED_ORIGINS is empty: browsers can use cookies only for safe requests \
                 (every cookie-authenticated POST/PATCH/DELETE, cookie refresh included, gets 403)"
            );
        }
        let addr = if settings.host.contains(':') && !settings.host.starts_with('[') {
            format!("[{}]:{}", settings.host, settings.port)
        } else {
            format!("{}:{}", settings.host, settings.port)
        };
        let acceptor = TcpListener::bind(addr.clone())
            .into_acceptor()
            .await
            .map_err(|source| StartupError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| StartupError::Other(anyhow::anyhow!("no local address for {addr}")))?;
        Ok(Self {
            acceptor,
            local_addr,
            state: AppState {
                db,
                sessions,
                tokens,
                passwords,
                cookies,
                settings: Arc::new(settings),
            },
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
        tracing::info!(addr = %self.local_addr, "latchkey listening");
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests (at most 10 s).
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                routes(self.state),
                shutdown,
                Some(std::time::Duration::from_secs(10)),
            )
            .await
    }
}

/// Completes on SIGTERM (what orchestrators send) or Ctrl-C.
async fn shutdown_signal() {
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

/// The whole HTTP surface with its middleware.
pub fn routes(state: AppState) -> impl Endpoint {
    let api = api::service();
    let ui = api.swagger_ui();
    let spec_json = api.spec_endpoint();
    let spec_yaml = api.spec_endpoint_yaml();
    Route::new()
        .nest("/", api)
        .nest("/docs", ui)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .with(CookieJarManager::new())
        .around(limit_body)
        .catch_all_error(|err| async move { error::from_poem_error(err).as_response() })
        .around(harden_and_log)
        .data(state)
}

/// Reads at most `MAX_BODY_BYTES` of the body before anything parses it.
async fn limit_body<E: Endpoint>(next: Arc<E>, mut req: Request) -> poem::Result<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(error::payload_too_large().into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let body = req.take_body();
        let bytes = body
            .into_bytes_limit(MAX_BODY_BYTES)
            .await
            .map_err(|err| match err {
                poem::error::ReadBodyError::PayloadTooLarge => error::payload_too_large(),
                other => {
                    ApiError::malformed(format!("the request body could not be read: {other}"))
                }
            })?;
        req.set_body(bytes);
    }
    Ok(next.call(req).await?.into_response())
}

/// Security headers on every response, and one log line per request (method, path, status,
/// latency: never headers, bodies or query strings, which may carry credentials).
async fn harden_and_log<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut response = next.call(req).await?.into_response();
    let headers = response.headers_mut();
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    // Responses of the API may carry tokens or personal data: no cache may keep them.
    if path.starts_with("/api/") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    tracing::info!(
        %method,
        path = %path,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "request"
    );
    Ok(response)
}
