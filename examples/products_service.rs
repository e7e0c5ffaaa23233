//! A products service that trusts Latchkey access tokens, knowing only Latchkey's issuer URL:
//! the seeds' products API (list and read for anyone, create for any signed-in user, change and
//! delete for the product's owner or an admin), with its own SQLite database through SeaORM.
//!
//! Copy what you need into your own service. It uses `poem`, `poem-openapi`, `sea-orm`
//! (`sqlx-sqlite`, `runtime-tokio-rustls`, `macros`, `with-uuid`, `with-chrono`), `tokio`,
//! `jsonwebtoken` (with `use_pem` and a crypto backend such as `aws_lc_rs`), `reqwest`
//! (`json`; add `rustls-tls` for an https Latchkey), `serde`, `serde_json` and `tracing`.
//!
//! ```sh
//! cargo run                                     # Latchkey on http://127.0.0.1:8000
//! LATCHKEY_ISSUER=http://127.0.0.1:8000 cargo run --example products_service
//! curl -X POST http://127.0.0.1:8080/api/v1/products -H "Authorization: Bearer $ACCESS" \
//!   -H 'Content-Type: application/json' -d '{"name": "Tea", "price_cents": 450}'
//! ```
//!
//! How it verifies tokens (see the README, "Other services"):
//!
//! - From the issuer URL alone: `{issuer}/.well-known/openid-configuration` names the issuer
//!   (checked) and the JWKS; the keys are cached as long as the JWKS's `Cache-Control:
//!   max-age` says (capped).
//! - A token names its key with `kid`. An unknown `kid` means Latchkey rotated its keys since the
//!   last fetch: the set is fetched again, but at most once per `min_refetch_interval`, so
//!   tokens with made-up `kid`s cannot turn into a flood of requests to Latchkey. A key that
//!   Latchkey no longer publishes stops verifying once the set is fetched again.
//! - When Latchkey is unreachable, the cached keys keep being used.
//! - The algorithm is pinned to RS256 before any key is looked up (never taken from the token:
//!   that is how `alg: none` and "HS256 with the public key as secret" forgeries work), and
//!   `iss`, `aud`, `exp` and `nbf` are checked, with a small leeway for clock skew.
//! - Refresh tokens never verify here: their key is not published, and they carry `typ`.
//!
//! Verification alone does not see revocation: a logged-out access token keeps verifying until
//! it expires (15 minutes by default). Where that matters, ask Latchkey (`GET /userinfo` or the
//! forward-auth endpoint `GET /api/v1/auth/check`).

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
    EndpointExt, Request, Route, Server,
    http::{StatusCode, header},
    listener::{Acceptor, Listener, TcpListener},
};
use poem_openapi::{
    ApiResponse, Object, OpenApi, OpenApiService, SecurityScheme,
    auth::Bearer,
    param::{Path, Query},
    payload::Json,
};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryOrder, QuerySelect, Schema, Set,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock, oneshot};
use uuid::Uuid;

// ---- Verifying Latchkey's tokens ----------------------------------------------------------------

/// Where Latchkey is and what its tokens must say.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Latchkey's issuer: its `PUBLIC_URL` (or `JWT_ISSUER`), e.g. `https://auth.example.com`.
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
    /// Longest a fetch may take.
    pub fetch_timeout: Duration,
}

impl VerifierConfig {
    /// Defaults for the Latchkey whose issuer is `issuer`.
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').into(),
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
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
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

/// The cached key set, and where it comes from.
struct Cache {
    /// The JWKS URL, from the discovery document (fetched once).
    jwks_uri: Option<String>,
    keys: HashMap<String, DecodingKey>,
    /// Until when the set may be used without asking Latchkey again.
    fresh_until: Option<Instant>,
    /// The last fetch attempt, successful or not (for `min_refetch_interval`).
    last_attempt: Option<Instant>,
}

/// The discovery document, as much of it as we read.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
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

/// Verifies Latchkey access tokens with a cached JWKS found through discovery.
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
                jwks_uri: None,
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
        let jwks_uri = self.cache.read().await.jwks_uri.clone();
        let result = self.fetch(jwks_uri).await;
        let mut cache = self.cache.write().await;
        cache.last_attempt = Some(started);
        match result {
            Ok((jwks_uri, keys, max_age)) => {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                cache.jwks_uri = Some(jwks_uri);
                cache.keys = keys;
                cache.fresh_until = Some(started + max_age);
            }
            Err(err) => {
                self.failed_fetches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %err,
                    cached_keys = cache.keys.len(),
                    "cannot fetch Latchkey's keys: using the cached ones"
                );
            }
        }
    }

    /// The JWKS URL from discovery (once), then the keys and how long to keep them.
    async fn fetch(
        &self,
        jwks_uri: Option<String>,
    ) -> Result<(String, HashMap<String, DecodingKey>, Duration), String> {
        let jwks_uri = match jwks_uri {
            Some(uri) => uri,
            None => self.discover().await?,
        };
        let response = self.get(&jwks_uri).await?;
        let max_age = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age)
            .unwrap_or(self.config.default_max_age)
            .min(self.config.max_max_age);
        let set: JwkSet = response.json().await.map_err(|err| err.to_string())?;
        let keys = usable_keys(set);
        if keys.is_empty() {
            return Err("the JWKS holds no usable RS256 key".into());
        }
        Ok((jwks_uri, keys, max_age))
    }

    /// The JWKS URL the issuer's discovery document names; its issuer must be ours.
    async fn discover(&self) -> Result<String, String> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let discovery: Discovery = self
            .get(&url)
            .await?
            .json()
            .await
            .map_err(|err| err.to_string())?;
        if discovery.issuer != self.config.issuer {
            return Err(format!(
                "the discovery document names issuer {:?}",
                discovery.issuer
            ));
        }
        Ok(discovery.jwks_uri)
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, String> {
        self.http
            .get(url)
            .timeout(self.config.fetch_timeout)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|err| err.to_string())
    }

    /// Successful and failed key fetches so far, and the number of cached keys.
    pub async fn stats(&self) -> (u64, u64, usize) {
        (
            self.fetches.load(Ordering::Relaxed),
            self.failed_fetches.load(Ordering::Relaxed),
            self.cache.read().await.keys.len(),
        )
    }
}

/// The RSA signature keys for RS256 of a set; anything else in it is ignored.
fn usable_keys(set: JwkSet) -> HashMap<String, DecodingKey> {
    let mut keys = HashMap::new();
    for jwk in set.keys {
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|alg| alg == "RS256")
            && jwk.use_.as_deref().is_none_or(|u| u == "sig");
        if let (true, Some(kid), Some(n), Some(e)) = (usable, jwk.kid, jwk.n, jwk.e)
            && let Ok(key) = DecodingKey::from_rsa_components(&n, &e)
        {
            keys.insert(kid, key);
        }
    }
    keys
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

// ---- The products database ------------------------------------------------------------------

/// The `products` table.
pub mod product {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "products")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The Latchkey user (`sub`) who created it.
        pub owner_id: Uuid,
        pub name: String,
        pub price_cents: i64,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Opens (and creates, if new) the products database.
pub async fn open_database(url: &str) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let db = Database::connect(url).await?;
    let backend = db.get_database_backend();
    let mut create = Schema::new(backend).create_table_from_entity(product::Entity);
    create.if_not_exists();
    db.execute(&create).await?;
    Ok(db)
}

// ---- The HTTP API ---------------------------------------------------------------------------

/// Every error: `{"error": {"code", "message"}}`, as Latchkey answers.
#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

fn error(code: &str, message: &str) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
        },
    })
}

#[derive(ApiResponse)]
pub enum Failure {
    /// Not a valid Latchkey access token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// Only the product's owner or an admin may do this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// A field breaks a rule.
    #[oai(status = 422)]
    Invalid(Json<ErrorBody>),
    /// The database failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

impl From<sea_orm::DbErr> for Failure {
    fn from(err: sea_orm::DbErr) -> Self {
        tracing::error!(error = %err, "database");
        Failure::Internal(error("internal_error", "internal error"))
    }
}

fn not_found() -> Failure {
    Failure::NotFound(error("not_found", "no such product"))
}

/// A Latchkey access token, verified by the service itself.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_token")]
pub struct LatchkeyToken(Claims);

async fn check_token(req: &Request, bearer: Bearer) -> poem::Result<Claims> {
    let verifier = req
        .data::<Arc<JwksVerifier>>()
        .ok_or_else(|| poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    verifier.verify(&bearer.token).await.map_err(|err| {
        let code = match err {
            VerifyError::Expired => "token_expired",
            VerifyError::Invalid => "invalid_token",
        };
        let body = serde_json::json!({"error": {"code": code, "message": err.to_string()}});
        poem::Error::from_response(
            poem::Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
                .content_type("application/json")
                .body(body.to_string()),
        )
    })
}

/// A product.
#[derive(Debug, Clone, Object)]
pub struct Product {
    pub id: Uuid,
    /// The user (Latchkey `sub`) who created it.
    pub owner_id: Uuid,
    pub name: String,
    pub price_cents: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<product::Model> for Product {
    fn from(p: product::Model) -> Self {
        Self {
            id: p.id,
            owner_id: p.owner_id,
            name: p.name,
            price_cents: p.price_cents,
            created_at: p.created_at,
        }
    }
}

/// A new product, or the changes to one.
#[derive(Debug, Clone, Object)]
pub struct ProductInput {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
}

/// One page of products, oldest first.
#[derive(Debug, Clone, Object)]
pub struct ProductPage {
    pub products: Vec<Product>,
    pub page: u64,
    pub per_page: u64,
    pub total: u64,
}

#[derive(ApiResponse)]
pub enum ProductResult {
    #[oai(status = 200)]
    Ok(Json<Product>),
    #[oai(status = 201)]
    Created(Json<Product>),
}

#[derive(ApiResponse)]
pub enum PageResult {
    #[oai(status = 200)]
    Ok(Json<ProductPage>),
}

#[derive(ApiResponse)]
pub enum DeletedResult {
    #[oai(status = 204)]
    Deleted,
}

#[derive(ApiResponse)]
pub enum ClaimsResult {
    /// The verified claims of the caller's token.
    #[oai(status = 200)]
    Ok(Json<Claims>),
}

/// The product's owner, or an admin (by the token's `role`), may change it.
fn may_change(claims: &Claims, product: &product::Model) -> bool {
    claims.role == "admin" || claims.sub == product.owner_id.to_string()
}

fn checked_input(input: &ProductInput) -> Result<(), Failure> {
    let name_ok = input
        .name
        .as_deref()
        .is_none_or(|n| !n.trim().is_empty() && n.chars().count() <= 200);
    let price_ok = input.price_cents.is_none_or(|p| p >= 0);
    if name_ok && price_ok {
        Ok(())
    } else {
        let message = "name: 1 to 200 characters; price_cents: 0 or more";
        Err(Failure::Invalid(error("validation_failed", message)))
    }
}

pub struct ProductsApi {
    db: DatabaseConnection,
}

#[OpenApi(prefix_path = "/api/v1")]
impl ProductsApi {
    /// Every product, oldest first; `page` from 1, `per_page` 1 to 100 (default 20). Public.
    #[oai(path = "/products", method = "get")]
    async fn list(
        &self,
        page: Query<Option<u64>>,
        per_page: Query<Option<u64>>,
    ) -> Result<PageResult, Failure> {
        let page = page.0.unwrap_or(1).max(1);
        let per_page = per_page.0.unwrap_or(20).clamp(1, 100);
        let query = product::Entity::find()
            .order_by_asc(product::Column::CreatedAt)
            .order_by_asc(product::Column::Id);
        let total = query.clone().count(&self.db).await?;
        let products = query
            .offset((page - 1).saturating_mul(per_page))
            .limit(per_page)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect();
        Ok(PageResult::Ok(Json(ProductPage {
            products,
            page,
            per_page,
            total,
        })))
    }

    /// One product. Public.
    #[oai(path = "/products/:id", method = "get")]
    async fn get(&self, id: Path<Uuid>) -> Result<ProductResult, Failure> {
        let found = product::Entity::find_by_id(id.0).one(&self.db).await?;
        Ok(ProductResult::Ok(Json(found.ok_or_else(not_found)?.into())))
    }

    /// Create a product, owned by the caller. Any signed-in user.
    #[oai(path = "/products", method = "post")]
    async fn create(
        &self,
        auth: LatchkeyToken,
        body: Json<ProductInput>,
    ) -> Result<ProductResult, Failure> {
        checked_input(&body.0)?;
        let (Some(name), Some(price_cents)) = (body.0.name, body.0.price_cents) else {
            let message = "name and price_cents are required";
            return Err(Failure::Invalid(error("validation_failed", message)));
        };
        let owner_id = Uuid::parse_str(&auth.0.sub).map_err(|_| not_found())?;
        let created = product::ActiveModel {
            id: Set(Uuid::new_v4()),
            owner_id: Set(owner_id),
            name: Set(name.trim().to_owned()),
            price_cents: Set(price_cents),
            created_at: Set(chrono::Utc::now()),
        }
        .insert(&self.db)
        .await?;
        Ok(ProductResult::Created(Json(created.into())))
    }

    /// Change a product: its owner, or an admin.
    #[oai(path = "/products/:id", method = "patch")]
    async fn update(
        &self,
        auth: LatchkeyToken,
        id: Path<Uuid>,
        body: Json<ProductInput>,
    ) -> Result<ProductResult, Failure> {
        checked_input(&body.0)?;
        let found = product::Entity::find_by_id(id.0).one(&self.db).await?;
        let found = found.ok_or_else(not_found)?;
        if !may_change(&auth.0, &found) {
            let message = "only the product's owner or an admin may change it";
            return Err(Failure::Forbidden(error("forbidden", message)));
        }
        let mut active: product::ActiveModel = found.into();
        if let Some(name) = body.0.name {
            active.name = Set(name.trim().to_owned());
        }
        if let Some(price) = body.0.price_cents {
            active.price_cents = Set(price);
        }
        Ok(ProductResult::Ok(Json(
            active.update(&self.db).await?.into(),
        )))
    }

    /// Delete a product: its owner, or an admin.
    #[oai(path = "/products/:id", method = "delete")]
    async fn delete(&self, auth: LatchkeyToken, id: Path<Uuid>) -> Result<DeletedResult, Failure> {
        let found = product::Entity::find_by_id(id.0).one(&self.db).await?;
        let found = found.ok_or_else(not_found)?;
        if !may_change(&auth.0, &found) {
            let message = "only the product's owner or an admin may delete it";
            return Err(Failure::Forbidden(error("forbidden", message)));
        }
        product::Entity::delete_by_id(found.id)
            .exec(&self.db)
            .await?;
        Ok(DeletedResult::Deleted)
    }

    /// The verified claims of the caller's token (for checking a setup).
    #[oai(path = "/whoami", method = "get")]
    async fn whoami(&self, auth: LatchkeyToken) -> ClaimsResult {
        ClaimsResult::Ok(Json(auth.0))
    }
}

/// `GET /health`: the state of the key cache.
#[poem::handler]
async fn health(
    verifier: poem::web::Data<&Arc<JwksVerifier>>,
) -> poem::web::Json<serde_json::Value> {
    let (fetches, failed_fetches, cached_keys) = verifier.stats().await;
    poem::web::Json(serde_json::json!({
        "jwks_fetches": fetches,
        "jwks_failed_fetches": failed_fetches,
        "cached_keys": cached_keys,
    }))
}

/// Errors poem-openapi raises before a handler runs (no token, a malformed id or body) answer
/// in the same JSON shape as the handlers' errors.
async fn json_error(err: poem::Error) -> poem::Response {
    let (status, code) = if err.is::<poem_openapi::error::AuthorizationError>() {
        (StatusCode::UNAUTHORIZED, "missing_token")
    } else if err.has_source() && err.status() == StatusCode::BAD_REQUEST {
        (StatusCode::BAD_REQUEST, "invalid_request")
    } else {
        return err.into_response();
    };
    let message = match code {
        "missing_token" => "send a Latchkey access token: Authorization: Bearer <token>".into(),
        _ => err.to_string(),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = poem::Response::builder()
        .status(status)
        .content_type("application/json");
    if status == StatusCode::UNAUTHORIZED {
        response = response.header(header::WWW_AUTHENTICATE, "Bearer");
    }
    response.body(body.to_string())
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

/// Opens the database at `database_url`, binds `listen` (port 0 picks a free port) and serves
/// the products API (`/api/v1/...`, its spec at `/openapi.json`) and `/health`.
pub async fn serve(
    config: VerifierConfig,
    database_url: &str,
    listen: &str,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let verifier = Arc::new(JwksVerifier::new(config));
    let db = open_database(database_url).await?;
    let api = OpenApiService::new(ProductsApi { db }, "Products", "1.0");
    let spec = api.spec_endpoint();
    let acceptor = TcpListener::bind(listen.to_owned()).into_acceptor().await?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or_else(|| std::io::Error::other("no local address"))?;
    let app = Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .at("/health", poem::get(health))
        .data(verifier)
        .catch_all_error(json_error);
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
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt::init();
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let mut config = VerifierConfig::new(&var("LATCHKEY_ISSUER", "http://127.0.0.1:8000"));
    config.audience = var("LATCHKEY_AUDIENCE", "latchkey");
    let database = var("PRODUCTS_DATABASE_URL", "sqlite://products.db?mode=rwc");
    let running = serve(config, &database, &var("LISTEN", "127.0.0.1:8080")).await?;
    println!(
        "products_service on http://{}/api/v1/products",
        running.addr
    );
    tokio::signal::ctrl_c().await?;
    running.stop().await;
    Ok(())
}
