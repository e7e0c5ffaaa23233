//! Building the application from `Settings` and running it. Tests call the same
//! `Application::build` with port 0.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route, Server,
    error::ResponseError,
    http::{HeaderValue, Method, header},
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
    middleware::CookieJarManager,
};

use crate::{
    api,
    audit::Audit,
    auth::{
        cookies::CookiePolicy,
        keys::Keys,
        password::PasswordService,
        tokens::{TokenService, TokenSettings},
    },
    config::{ConfigError, KeySource, Settings},
    db::{self, reads::Reads},
    error::{self, ApiError, DependencyFailure, ErrorCode},
    limits::{LimitStore, Limiter, memory::MemoryLimits, redis::RedisLimits},
    session::{
        SessionStore, StoreError, memory::MemoryStore, redis::RedisStore, redis_client::RedisClient,
    },
    state::{AppState, Services},
    telemetry::{metrics::Metrics, request_id},
};
use poem_openapi::OperationId;
use secrecy::ExposeSecret;
use tracing::Instrument;

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
            // Generating development keys takes a moment: keep it off the async workers.
            tokio::task::spawn_blocking(move || Keys::load(&source, generate))
                .await
                .map_err(anyhow::Error::from)??
        };
        let db = db::connect(
            settings.database_url.expose_secret(),
            settings.database_pool_size,
        )
        .await?;
        db::migrate(&db).await?;
        let reads = Reads::new(settings.database_url.expose_secret(), &db)?;
        let (sessions, limit_store): (Arc<dyn SessionStore>, Arc<dyn LimitStore>) =
            match &settings.redis_url {
                Some(url) => {
                    let redis = RedisClient::new(
                        url.expose_secret(),
                        settings.redis_access,
                        settings.redis_pool_size,
                    )?;
                    let store = RedisStore::new(redis.clone(), &settings.redis_key_prefix);
                    store.ping().await.map_err(|err| {
                        StoreError(format!("cannot reach Redis at REDIS_URL: {}", err.0))
                    })?;
                    let limits = RedisLimits::new(redis, &settings.redis_key_prefix);
                    (Arc::new(store), Arc::new(limits))
                }
                None => {
                    tracing::info!("REDIS_URL unset: sessions and rate limits stay in process");
                    (Arc::new(MemoryStore::new()), Arc::new(MemoryLimits::new()))
                }
            };
        let metrics = Arc::new(Metrics::new());
        let limits = Limiter::new(limit_store, settings.limits.clone(), metrics.clone());
        let tokens = Arc::new(TokenService::new(
            keys,
            TokenSettings {
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                access_ttl_secs: settings.access_ttl_secs,
                refresh_ttl_secs: settings.refresh_ttl_secs,
                leeway_secs: settings.leeway_secs,
            },
        ));
        let passwords = PasswordService::new(
            settings.argon2,
            settings.hash_concurrency,
            std::time::Duration::from_millis(settings.hash_queue_timeout_ms),
            metrics.clone(),
        )?;
        let audit = Audit::new(
            db.clone(),
            metrics.clone(),
            settings.trusted_proxies.clone(),
        );
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
            state: AppState::new(Services {
                db,
                reads,
                sessions,
                tokens,
                passwords,
                limits,
                cookies,
                settings: Arc::new(settings),
                metrics,
                audit,
            }),
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
    /// While serving, a key directory is re-read every `KEYS_RELOAD_SECS`.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let reloader = match &self.state.settings.keys {
            KeySource::Files(_) => Some(tokio::spawn(reload_keys(self.state.clone()))),
            // Keys from the environment cannot change while the process runs.
            KeySource::Inline(_) => None,
        };
        let result = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                routes(self.state),
                shutdown,
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        result
    }
}

/// Re-reads the key directory every `KEYS_RELOAD_SECS`, so a `latchkey keys rotate` (or
/// `prune`) reaches every running instance within that time, without a restart. A failed
/// reload keeps the previous keys (see [`TokenService::reload`]).
async fn reload_keys(state: AppState) {
    let period = std::time::Duration::from_secs(state.settings.keys_reload_secs);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        state.tokens.reload(&state.settings.keys).await;
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
    let frame = Arc::new(Frame {
        cors: CorsPolicy::new(&state.settings.allowed_origins),
        metrics: state.metrics.clone(),
    });
    let timeout = std::time::Duration::from_secs(state.settings.request_timeout_secs);
    let beside = Route::new()
        .nest("/docs", ui)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .at("/metrics", poem::get(metrics_endpoint));
    Site {
        api: api.into_endpoint(),
        beside,
    }
    .with(CookieJarManager::new())
    .around(move |next, req| limit(next, req, timeout))
    .around(move |next, req| frame_request(next, req, frame.clone()))
    .data(state)
}

/// The API, and the few routes beside it (Swagger UI, the spec, the metrics), told apart by
/// their paths. With the API nested in a `Route` of its own, every API request was matched
/// twice (that route's tree, then the API's) and its URI rebuilt on the way in, and its
/// future boxed once more (bench/README.md, change 15).
struct Site<A> {
    api: A,
    beside: Route,
}

/// The metrics label of a path served beside the API, `None` for the API's paths.
fn beside_label(path: &str) -> Option<&'static str> {
    match path {
        "/metrics" => Some("metrics"),
        "/openapi.json" | "/openapi.yaml" => Some("openapi"),
        p if p == "/docs" || p.starts_with("/docs/") => Some("docs"),
        _ => None,
    }
}

impl<A: Endpoint> Endpoint for Site<A> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if beside_label(req.uri().path()).is_some() {
            // Boxed: the router's future would otherwise widen every API request's.
            Box::pin(self.beside.call(req)).await
        } else {
            self.api.call(req).await.map(IntoResponse::into_response)
        }
    }
}

/// Any error of the layers below as the JSON error response it stands for, keeping the
/// operation id poem-openapi attached to it, for the metrics.
fn error_response(err: poem::Error) -> Response {
    let operation = err.data::<OperationId>().copied();
    let mut response = error::from_poem_error(err).as_response();
    if let Some(operation) = operation {
        response.set_data(operation);
    }
    response
}

/// `GET /metrics`: Prometheus text format.
#[poem::handler]
fn metrics_endpoint(state: poem::web::Data<&AppState>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// What the outermost middleware needs.
struct Frame {
    cors: CorsPolicy,
    metrics: Arc<Metrics>,
}

/// The metrics label of a request: its OpenAPI operation id, a static route, or `unmatched`
/// (never the raw path, which would let clients create unbounded label values).
fn operation_label(response: &Response, path: &str) -> &'static str {
    if let Some(OperationId(id)) = response.data::<OperationId>() {
        return id;
    }
    beside_label(path).unwrap_or("unmatched")
}

/// The limits every request is held to: `REQUEST_TIMEOUT_SECS` for the whole request (503
/// past it), and at most `MAX_BODY_BYTES` of body, read before anything parses it (413).
///
/// One layer rather than one per limit: poem nests each layer's future in the one outside
/// it, each keeping its own copy of the request, and the whole nest is moved into a box on
/// every request (bench/README.md, change 14).
async fn limit<E: Endpoint>(
    next: Arc<E>,
    req: Request,
    timeout: std::time::Duration,
) -> poem::Result<Response> {
    match tokio::time::timeout(timeout, limit_body(&*next, req)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            ErrorCode::ServiceUnavailable,
            "the request took too long; retry shortly",
        )
        .into()),
    }
}

/// CORS with an explicit allow-list. poem's `Cors` middleware answers an unlisted origin with
/// an error and, with an empty list, allows every origin (with credentials); neither is what an
/// auth service wants, so the policy is this small one: listed origins get the CORS headers
/// (credentials included), any other origin gets none and its browser blocks the response.
struct CorsPolicy {
    origins: Vec<HeaderValue>,
}

impl CorsPolicy {
    fn new(allowed: &[String]) -> Self {
        Self {
            origins: allowed
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
                .collect(),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }
}

const CORS_ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE";
const CORS_ALLOW_HEADERS: &str = "Authorization, Content-Type";
const CORS_EXPOSE_HEADERS: &str =
    "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy";

/// The outermost layer: a request id (from `X-Request-Id` or new, echoed back and on every log
/// line of the request), CORS, security headers, metrics, and one log line per request
/// (method, path, status, latency: never headers, bodies or query strings, which may carry
/// credentials).
async fn frame_request<E: Endpoint>(
    next: Arc<E>,
    req: Request,
    frame: Arc<Frame>,
) -> poem::Result<Response> {
    let request_id = request_id::for_request(&req);
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default()
    );
    let mut response = cors_and_harden(next, req, &frame).instrument(span).await;
    response
        .headers_mut()
        .insert(request_id::HEADER, request_id);
    Ok(response)
}

async fn cors_and_harden<E: Endpoint>(next: Arc<E>, req: Request, frame: &Frame) -> Response {
    let cors = &frame.cors;
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| cors.allows(o))
        .cloned();
    let preflight = method == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        Response::builder()
            .status(poem::http::StatusCode::NO_CONTENT)
            .finish()
    } else {
        match next.call(req).await {
            Ok(response) => response.into_response(),
            Err(err) => error_response(err),
        }
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(CORS_ALLOW_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_ALLOW_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        } else {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSE_HEADERS),
            );
        }
    }
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("Referrer-Policy", HeaderValue::from_static("no-referrer"));
    // The API serves JSON only: nothing may be loaded, run or framed. Swagger UI needs its
    // scripts and styles, so /docs keeps the browser defaults.
    if !path.starts_with("/docs") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    // Responses of the API may carry tokens or personal data: no cache may keep them.
    if path.starts_with("/api/") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let elapsed = started.elapsed();
    let operation = operation_label(&response, &path);
    let status = response.status();
    frame
        .metrics
        .http_requests
        .with_label_values(&[operation, method.as_str(), status.as_str()])
        .inc();
    frame
        .metrics
        .http_duration
        .with_label_values(&[operation, method.as_str()])
        .observe(elapsed.as_secs_f64());
    if let Some(DependencyFailure(dependency)) = response.data::<DependencyFailure>() {
        frame
            .metrics
            .dependency_errors
            .with_label_values(&[dependency])
            .inc();
    }
    tracing::info!(
        %method,
        path = %path,
        operation,
        status = status.as_u16(),
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

/// Reads at most `MAX_BODY_BYTES` of the body before `next` sees the request.
async fn limit_body<E: Endpoint>(next: &E, mut req: Request) -> poem::Result<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(error::payload_too_large().into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        // Boxed: the read's future is larger than the rest of the request's, and a GET
        // (the guard's hot path) would otherwise carry its space.
        let bytes = Box::pin(req.take_body().into_bytes_limit(MAX_BODY_BYTES))
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

#[cfg(test)]
mod tests {
    use super::beside_label;

    #[test]
    fn only_the_docs_the_spec_and_the_metrics_are_served_beside_the_api() {
        for path in [
            "/docs",
            "/docs/",
            "/docs/index.html",
            "/openapi.json",
            "/openapi.yaml",
            "/metrics",
        ] {
            assert!(beside_label(path).is_some(), "{path}");
        }
        for path in [
            "/",
            "/docsx",
            "/metrics/x",
            "/openapi.jsonx",
            "/api/v1/users/me",
            "/health/live",
            "/.well-known/jwks.json",
        ] {
            assert_eq!(beside_label(path), None, "{path}");
        }
    }
}
