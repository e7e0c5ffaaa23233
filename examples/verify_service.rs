//! A service that trusts Latchkey access tokens without calling Latchkey on each request.
//!
//! Copy this file into your own service. It needs `poem`, `tokio`, `jsonwebtoken` (with
//! `use_pem` and a crypto backend such as `aws_lc_rs`), `reqwest` (`json`; add `rustls-tls`
//! for an https Latchkey), `serde`, `serde_json` and `tracing`.
//!
//! ```sh
//! cargo run                                   # Latchkey on http://127.0.0.1:8000
//! LATCHKEY_URL=http://127.0.0.1:8000 cargo run --example verify_service
//! curl -H "Authorization: Bearer $ACCESS" http://127.0.0.1:8080/protected
//! ```
//!
//! How it verifies (see the README, "Verifying Latchkey tokens from another service"):
//!
//! - The public keys come from Latchkey's `/.well-known/jwks.json`, cached as long as its
//!   `Cache-Control: max-age` says (capped).
//! - A token names its key with `kid`. An unknown `kid` means Latchkey rotated its keys since the
//!   last fetch: the set is fetched again, but at most once per `min_refetch_interval`, so
//!   tokens with made-up `kid`s cannot turn into a flood of requests to Latchkey.
//! - When Latchkey is unreachable, the cached keys keep being used: tokens signed by known keys
//!   keep verifying. A failed fetch is retried at most once per `min_refetch_interval`.
//! - The algorithm is pinned to RS256 before any key is looked up (never taken from the token:
//!   that is how `alg: none` and "HS256 with the public key as secret" forgeries work), and
//!   `iss`, `aud`, `exp` and `nbf` are checked, with a small leeway for clock skew.
//! - Refresh tokens never verify here: their key is not published, and they carry `typ`.
//!
//! Verification alone does not see revocation: a logged-out access token keeps verifying until
//! it expires (15 minutes by default). Services that need revocation at once call Latchkey's
//! `GET /api/v1/users/me` with the token instead.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use poem::{
    EndpointExt, IntoResponse, Request, Response, Route, Server, get, handler,
    http::{StatusCode, header},
    listener::{Acceptor, Listener, TcpListener},
    web::{Data, Json},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock, oneshot};

/// Where Latchkey is and what its tokens must say.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Latchkey's JWKS, e.g. `https://auth.example.com/.well-known/jwks.json`.
    pub jwks_url: String,
    /// Latchkey's `JWT_ISSUER` (default `latchkey`).
    pub issuer: String,
    /// Latchkey's `JWT_AUDIENCE` (default `latchkey`).
    pub audience: String,
    /// Clock-skew allowance for `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// Cache lifetime when the JWKS response has no `max-age`.
    pub default_max_age: Duration,
    /// Longest the key set is trusted without asking again, whatever `max-age` says.
    pub max_max_age: Duration,
    /// Fewest seconds between two fetches caused by unknown `kid`s or failures.
    pub min_refetch_interval: Duration,
    /// Longest a JWKS fetch may take.
    pub fetch_timeout: Duration,
}

impl VerifierConfig {
    /// Defaults for a Latchkey at `base_url` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base_url: &str) -> Self {
        Self {
            jwks_url: format!("{}/.well-known/jwks.json", base_url.trim_end_matches('/')),
            issuer: "latchkey".into(),
            audience: "latchkey".into(),
            leeway_secs: 30,
            default_max_age: Duration::from_secs(300),
            max_max_age: Duration::from_secs(3600),
            min_refetch_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// The claims of a Latchkey access token that this service uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The session id.
    pub sid: String,
    /// `user` or `admin` at the time the token was issued.
    pub role: String,
    pub exp: i64,
    /// Present (`refresh`) only on refresh tokens, which must never pass as access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Not a JWT, a wrong algorithm, a bad signature or claim, or an unknown key.
    Invalid,
    /// Past `exp` (plus the leeway).
    Expired,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyError::Invalid => "the token is invalid",
            VerifyError::Expired => "the token has expired",
        })
    }
}

/// The cached key set.
struct Cache {
    keys: HashMap<String, DecodingKey>,
    /// Until when the set may be used without asking Latchkey again.
    fresh_until: Option<Instant>,
    /// The last fetch attempt, successful or not (for `min_refetch_interval`).
    last_attempt: Option<Instant>,
}

/// A JWKS JSON document, as much of it as we read.
#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// Verifies Latchkey access tokens with a cached JWKS.
pub struct JwksVerifier {
    config: VerifierConfig,
    validation: Validation,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// One fetch at a time; requests that arrive meanwhile wait for its result.
    fetching: Mutex<()>,
    fetches: AtomicU64,
    failed_fetches: AtomicU64,
}

impl JwksVerifier {
    pub fn new(config: VerifierConfig) -> Self {
        // Pinned to RS256 whatever the token header says.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs;
        Self {
            validation,
            http: reqwest::Client::new(),
            cache: RwLock::new(Cache {
                keys: HashMap::new(),
                fresh_until: None,
                last_attempt: None,
            }),
            fetching: Mutex::new(()),
            fetches: AtomicU64::new(0),
            failed_fetches: AtomicU64::new(0),
            config,
        }
    }

    /// Verifies an access token and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Invalid)?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::Invalid);
        }
        let kid = header.kid.ok_or(VerifyError::Invalid)?;
        let key = self.key(&kid).await.ok_or(VerifyError::Invalid)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                _ => VerifyError::Invalid,
            })?
            .claims;
        if claims.typ.is_some() {
            return Err(VerifyError::Invalid);
        }
        Ok(claims)
    }

    /// The key named `kid`: from the cache while it is fresh; otherwise (stale cache, or a `kid`
    /// the cache does not know) after one fetch, if the last attempt is old enough. A failed
    /// fetch leaves the cached keys in place.
    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        {
            let cache = self.cache.read().await;
            let fresh = cache.fresh_until.is_some_and(|t| Instant::now() < t);
            if let Some(key) = cache.keys.get(kid)
                && fresh
            {
                return Some(key.clone());
            }
        }
        self.refetch().await;
        self.cache.read().await.keys.get(kid).cloned()
    }

    /// Fetches the key set unless a fetch was attempted less than `min_refetch_interval` ago.
    async fn refetch(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(last) = self.cache.read().await.last_attempt
            && last.elapsed() < self.config.min_refetch_interval
        {
            return;
        }
        let started = Instant::now();
        let result = self.fetch().await;
        let mut cache = self.cache.write().await;
        cache.last_attempt = Some(started);
        match result {
            Ok((keys, max_age)) => {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                cache.keys = keys;
                cache.fresh_until = Some(started + max_age);
            }
            Err(err) => {
                self.failed_fetches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %err,
                    cached_keys = cache.keys.len(),
                    "cannot fetch Latchkey's JWKS: using the cached keys"
                );
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, DecodingKey>, Duration), String> {
        let response = self
            .http
            .get(&self.config.jwks_url)
            .timeout(self.config.fetch_timeout)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|err| err.to_string())?;
        let max_age = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age)
            .unwrap_or(self.config.default_max_age)
            .min(self.config.max_max_age);
        let set: JwkSet = response.json().await.map_err(|err| err.to_string())?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            // Only RSA signature keys for RS256; anything else in the set is ignored.
            let usable = jwk.kty == "RSA"
                && jwk.alg.as_deref().is_none_or(|alg| alg == "RS256")
                && jwk.use_.as_deref().is_none_or(|u| u == "sig");
            if let (true, Some(kid), Some(n), Some(e)) = (usable, jwk.kid, jwk.n, jwk.e)
                && let Ok(key) = DecodingKey::from_rsa_components(&n, &e)
            {
                keys.insert(kid, key);
            }
        }
        if keys.is_empty() {
            return Err("the JWKS holds no usable RS256 key".into());
        }
        Ok((keys, max_age))
    }

    /// Successful and failed JWKS fetches so far, and the number of cached keys.
    pub async fn stats(&self) -> (u64, u64, usize) {
        (
            self.fetches.load(Ordering::Relaxed),
            self.failed_fetches.load(Ordering::Relaxed),
            self.cache.read().await.keys.len(),
        )
    }
}

/// `max-age` of a `Cache-Control` value; `no-store`/`no-cache` mean zero.
fn cache_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            max_age = seconds
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

/// `GET /protected`: needs `Authorization: Bearer <Latchkey access token>`.
#[handler]
async fn protected(req: &Request, verifier: Data<&Arc<JwksVerifier>>) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return unauthorized("Bearer", "missing_token", "a bearer token is required");
    };
    match verifier.verify(token).await {
        Ok(claims) => Json(claims).into_response(),
        Err(err) => {
            let code = match err {
                VerifyError::Expired => "token_expired",
                VerifyError::Invalid => "invalid_token",
            };
            unauthorized(r#"Bearer error="invalid_token""#, code, &err.to_string())
        }
    }
}

fn unauthorized(challenge: &'static str, code: &str, message: &str) -> Response {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::WWW_AUTHENTICATE, challenge)
        .content_type("application/json")
        .body(serde_json::json!({"error": {"code": code, "message": message}}).to_string())
}

/// `GET /health`: the state of the key cache.
#[handler]
async fn health(verifier: Data<&Arc<JwksVerifier>>) -> Json<serde_json::Value> {
    let (fetches, failed_fetches, cached_keys) = verifier.stats().await;
    Json(serde_json::json!({
        "jwks_fetches": fetches,
        "jwks_failed_fetches": failed_fetches,
        "cached_keys": cached_keys,
    }))
}

/// A running service; dropping it stops it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops the service and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds `listen` (port 0 picks a free port) and serves the example's routes.
pub async fn serve(config: VerifierConfig, listen: &str) -> std::io::Result<Running> {
    let verifier = Arc::new(JwksVerifier::new(config));
    let acceptor = TcpListener::bind(listen.to_owned()).into_acceptor().await?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or_else(|| std::io::Error::other("no local address"))?;
    let app = Route::new()
        .at("/protected", get(protected))
        .at("/health", get(health))
        .data(verifier);
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(
        Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app,
            async {
                let _ = rx.await;
            },
            Some(Duration::from_secs(5)),
        ),
    );
    Ok(Running {
        addr,
        shutdown: Some(tx),
        server: Some(server),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let mut config = VerifierConfig::new(&var("LATCHKEY_URL", "http://127.0.0.1:8000"));
    config.issuer = var("LATCHKEY_ISSUER", "latchkey");
    config.audience = var("LATCHKEY_AUDIENCE", "latchkey");
    let running = serve(config, &var("LISTEN", "127.0.0.1:8080")).await?;
    println!("verify_service on http://{}/protected", running.addr);
    tokio::signal::ctrl_c().await?;
    running.stop().await;
    Ok(())
}
