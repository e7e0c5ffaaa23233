//! `/api/v1/auth`: register, login, refresh, logout.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use super::{
    ApiTags,
    request::{OptionalJson, Text, client_ip, text, user_agent},
    users::{UserEnvelope, UserResponse},
    validate::{Validator, has_control_chars, normalize_email},
};
use crate::{
    audit::{Event, EventType},
    auth::{
        cookies::REFRESH_COOKIE,
        csrf,
        guard::Authenticated,
        tokens::{IssuedPair, PairClaims},
    },
    db::{
        entities::user::{self, Role},
        users,
    },
    error::{ApiError, ErrorCode},
    limits::Rule,
    session::{NewSession, RotateOutcome, Rotation},
    state::AppState,
};

/// A new account.
#[derive(Object)]
pub struct RegisterRequest {
    /// Required: trimmed, 1 to 100 characters.
    pub name: Option<Text>,
    /// Required: trimmed and lower-cased, then checked.
    pub email: Option<Text>,
    /// Required: 8 to 128 characters (Unicode scalar values), used exactly as given.
    pub password: Option<Text>,
    /// Required: must equal `password`.
    pub password_confirm: Option<Text>,
}

/// Credentials.
#[derive(Object)]
pub struct LoginRequest {
    /// Required.
    pub email: Option<Text>,
    /// Required.
    pub password: Option<Text>,
}

/// The refresh token, when it is not sent as the `refresh_token` cookie.
#[derive(Object)]
pub struct RefreshRequest {
    /// A refresh token from login or a previous refresh. Wins over the cookie when both exist.
    pub refresh_token: Option<Text>,
}

/// A fresh token pair and the session it belongs to.
#[derive(Debug, Clone, Object)]
pub struct TokenPair {
    /// RS256 JWT for `Authorization: Bearer`; verify it with `/.well-known/jwks.json`.
    pub access_token: String,
    /// RS256 JWT for `/api/v1/auth/refresh`; single use (rotated on every refresh).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
    pub session_id: Uuid,
    pub user: UserResponse,
}

impl TokenPair {
    fn new(pair: IssuedPair, user: user::Model) -> Self {
        let now = chrono::Utc::now().timestamp();
        Self {
            expires_in: pair.access.exp - now,
            refresh_expires_in: pair.refresh.exp - now,
            session_id: pair.access.sid,
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer".into(),
            user: user.into(),
        }
    }
}

#[derive(ApiResponse)]
pub enum RegisterResult {
    /// The account was created. Log in to get tokens.
    #[oai(status = 201)]
    Created(Json<UserEnvelope>),
}

#[derive(ApiResponse)]
pub enum TokenResult {
    /// A new token pair. Also sets the `access_token`, `refresh_token` and `logged_in` cookies.
    #[oai(status = 200)]
    Ok(Json<TokenPair>),
}

#[derive(ApiResponse)]
pub enum LogoutResult {
    /// The session's tokens are revoked and the cookies cleared.
    #[oai(status = 204)]
    LoggedOut,
}

/// The rate-limit key of the client: its IP (see `TRUSTED_PROXIES`).
fn ip_key(state: &AppState, req: &Request) -> String {
    client_ip(req, &state.settings.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub struct AuthApi;

#[OpenApi(prefix_path = "/api/v1/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create an account.
    ///
    /// 409 `email_taken` when the email is registered; 422 `validation_failed` with a
    /// `details` entry per broken rule.
    #[oai(path = "/register", method = "post", operation_id = "register")]
    async fn register(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: Json<RegisterRequest>,
    ) -> Result<RegisterResult, ApiError> {
        // Before anything is hashed: a flood costs a counter, not argon2.
        state
            .limits
            .check(Rule::RegisterPerIp, &ip_key(&state, req))
            .await?;
        let body = body.0;
        let mut v = Validator::new();
        let name = v.name("name", text(body.name));
        let email = v.email("email", text(body.email));
        let password = v.new_password("password", text(body.password));
        let confirm = v.required("password_confirm", text(body.password_confirm));
        if let (Some(password), Some(confirm)) = (&password, &confirm)
            && password != confirm
        {
            v.fail("password_confirm", "must equal password");
        }
        let ((name, email), password) = v.finish(name.zip(email).zip(password))?;
        let password_hash = state.passwords.hash(password.into()).await?;
        let created = users::insert(
            &state.db,
            users::NewUser {
                name,
                email,
                password_hash,
                role: Role::User,
            },
        )
        .await;
        match created {
            Ok(user) => {
                tracing::info!(user_id = %user.id, "user registered");
                let event = Event::new(EventType::Registered, Some(user.id), None);
                state.audit.record(req, event).await;
                Ok(RegisterResult::Created(Json(user.into())))
            }
            Err(err) if users::is_unique_violation(&err) => Err(ApiError::new(
                ErrorCode::EmailTaken,
                "an account with this email already exists",
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// Log in with email and password.
    ///
    /// Starts a new session (one per device) and returns its token pair; browsers also get the
    /// cookies. A wrong password and an unknown email get the same 401 `invalid_credentials`
    /// after the same amount of work. The right password of a disabled account gets 403
    /// `account_disabled`.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: Json<LoginRequest>,
    ) -> Result<TokenResult, ApiError> {
        let body = body.0;
        let mut v = Validator::new();
        let email = v
            .required("email", text(body.email))
            .map(|email| normalize_email(&email));
        let password = v.given_password("password", text(body.password));
        let (email, password) = v.finish(email.zip(password))?;

        // Limits and backoff come before any hashing.
        let limits = &state.limits;
        let attempt = limits.check_login(&ip_key(&state, req), &email).await?;

        // An address no account can have (control characters would also break PostgreSQL
        // text) is simply unknown: same answer, same cost.
        let user = if has_control_chars(&email) {
            None
        } else {
            users::find_by_email(&state.db, &email).await?
        };
        // An unknown email is checked against a dummy hash so both failures cost the same.
        let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
        let password: SecretString = password.into();
        let valid = state
            .passwords
            .verify(password.clone(), stored_hash)
            .await?;
        let user = match user {
            Some(user) if valid => user,
            other => {
                tracing::info!("login failed");
                state.metrics.logins.with_label_values(&["failed"]).inc();
                let reason = if other.is_some() {
                    "wrong_password"
                } else {
                    "unknown_email"
                };
                let event = Event::new(EventType::LoginFailed, other.map(|u| u.id), None)
                    .detail(json!({"email": email, "reason": reason}));
                state.audit.record(req, event).await;
                limits.login_failed(&email).await?;
                return Err(ApiError::new(
                    ErrorCode::InvalidCredentials,
                    "wrong email or password",
                ));
            }
        };
        limits.login_succeeded(attempt).await?;
        let user = if state.passwords.needs_rehash(&user.password_hash) {
            // The configured argon2 cost changed since this hash was made: upgrade it now that
            // the password is at hand.
            let hash = state.passwords.hash(password).await?;
            tracing::info!(user_id = %user.id, "password rehashed with the current parameters");
            users::update_password_hash(&state.db, user, hash).await?
        } else {
            user
        };
        if user.disabled {
            state.metrics.logins.with_label_values(&["disabled"]).inc();
            let event = Event::new(EventType::LoginFailed, Some(user.id), None)
                .detail(json!({"email": email, "reason": "disabled"}));
            state.audit.record(req, event).await;
            return Err(ApiError::new(
                ErrorCode::AccountDisabled,
                "this account is disabled",
            ));
        }

        let session_id = Uuid::new_v4();
        let pair = state
            .tokens
            .issue_pair(user.id, user.role.as_str(), session_id)
            .await?;
        let ip = client_ip(req, &state.settings.trusted_proxies);
        state
            .sessions
            .create(NewSession::for_pair(
                &pair,
                user_agent(req),
                ip.map(|ip| ip.to_string()),
            ))
            .await?;
        // A password change or a disable that completed while this login was hashing has
        // already revoked every session; make sure this one does not slip past it.
        let current = users::find_by_id(&state.reads, user.id).await?;
        if current.as_ref().is_none_or(|c| {
            c.password_hash != user.password_hash || c.disabled || c.role != user.role
        }) {
            state.sessions.revoke(user.id, session_id).await?;
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "wrong email or password",
            ));
        }
        tracing::info!(user_id = %user.id, session_id = %session_id, "login succeeded");
        state.metrics.logins.with_label_values(&["ok"]).inc();
        let event = Event::new(EventType::LoginSucceeded, Some(user.id), Some(session_id));
        state.audit.record(req, event).await;
        state
            .cookies
            .set_session(req.cookie(), &pair.access_token, &pair.refresh_token);
        Ok(TokenResult::Ok(Json(TokenPair::new(pair, user))))
    }

    /// Exchange a refresh token for a new pair (rotation).
    ///
    /// The refresh token comes from the JSON body `{refresh_token}` or, when the body is
    /// absent, empty or `{}`, from the `refresh_token` cookie (then the CSRF check applies).
    /// The presented refresh token and the session's previous access token stop working.
    /// The same refresh token presented again within the grace window (`REFRESH_REUSE_GRACE`,
    /// default 10 s) after its rotation gets the same new pair back (two tabs refreshing at
    /// once). Presented later, or two rotations back, it is reuse: the whole session is revoked
    /// and the answer is 401 `refresh_token_reused`.
    #[oai(path = "/refresh", method = "post", operation_id = "refresh")]
    async fn refresh(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: OptionalJson<RefreshRequest>,
    ) -> Result<TokenResult, ApiError> {
        let result = refresh_pair(&state, req, body).await;
        let label = match &result {
            Ok((_, kind)) => *kind,
            Err(err) if err.code == ErrorCode::RefreshTokenReused => "reused",
            Err(err) if err.code.status().is_client_error() => "rejected",
            Err(_) => "error",
        };
        state.metrics.refreshes.with_label_values(&[label]).inc();
        result.map(|(tokens, _)| tokens)
    }

    /// Log out of every session of the signed-in user (every device): all their tokens are
    /// revoked and this client's cookies cleared.
    #[oai(path = "/logout-all", method = "post", operation_id = "logout_all")]
    async fn logout_all(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
    ) -> Result<LogoutResult, ApiError> {
        let revoked = state.sessions.revoke_all(auth.user.id, None).await?;
        tracing::info!(user_id = %auth.user.id, revoked, "logout-all");
        let event = Event::new(
            EventType::LogoutAll,
            Some(auth.user.id),
            Some(auth.session_id),
        )
        .detail(json!({"sessions_revoked": revoked}));
        state.audit.record(req, event).await;
        state.cookies.clear_session(req.cookie());
        Ok(LogoutResult::LoggedOut)
    }

    /// Log out of the current session: its tokens are revoked and the cookies cleared.
    #[oai(path = "/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
    ) -> Result<LogoutResult, ApiError> {
        state.sessions.revoke(auth.user.id, auth.session_id).await?;
        tracing::info!(user_id = %auth.user.id, session_id = %auth.session_id, "logout");
        let event = Event::new(EventType::Logout, Some(auth.user.id), Some(auth.session_id));
        state.audit.record(req, event).await;
        state.cookies.clear_session(req.cookie());
        Ok(LogoutResult::LoggedOut)
    }
}

/// The refresh itself; the answer and whether it was a rotation (`ok`) or a grace-window
/// duplicate (`grace`).
async fn refresh_pair(
    state: &AppState,
    req: &Request,
    body: OptionalJson<RefreshRequest>,
) -> Result<(TokenResult, &'static str), ApiError> {
    state
        .limits
        .check(Rule::RefreshPerIp, &ip_key(state, req))
        .await?;
    let from_body = body
        .0
        .and_then(|b| text(b.refresh_token))
        .filter(|t| !t.is_empty());
    let token = match from_body {
        Some(token) => token,
        None => {
            let cookie = req
                .cookie()
                .get(REFRESH_COOKIE)
                .map(|c| c.value_str().to_owned())
                .filter(|t| !t.is_empty())
                .ok_or_else(ApiError::missing_token)?;
            // The browser attached this cookie by itself: make sure the page is ours.
            csrf::check(req, &state.settings.allowed_origins)?;
            cookie
        }
    };
    let claims = state.tokens.verify_refresh(&token)?;
    let user = users::find_by_id(&state.reads, claims.sub)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(ApiError::invalid_token)?;
    let pair = state
        .tokens
        .issue_pair(user.id, user.role.as_str(), claims.sid)
        .await?;
    let grace_payload = serde_json::to_string(&PairClaims {
        access: pair.access.clone(),
        refresh: pair.refresh.clone(),
    })
    .map_err(anyhow::Error::from)?;
    // One atomic step in the store: only the session's current refresh token rotates.
    let outcome = state
        .sessions
        .rotate(Rotation {
            user_id: user.id,
            session_id: claims.sid,
            presented_refresh_jti: claims.jti,
            new_access_jti: pair.access.jti,
            new_access_exp: pair.access.exp,
            new_refresh_jti: pair.refresh.jti,
            new_refresh_exp: pair.refresh.exp,
            now: pair.access.iat,
            grace_secs: state.settings.refresh_grace_secs,
            grace_payload,
        })
        .await?;
    let (pair, kind) = match outcome {
        RotateOutcome::Rotated => (pair, "ok"),
        RotateOutcome::Grace(payload) => {
            // A concurrent duplicate (two tabs): answer with the pair the winner got; the
            // pair signed above was never stored, so it never works.
            let claims: PairClaims = serde_json::from_str(&payload).map_err(anyhow::Error::from)?;
            (state.tokens.sign_pair(claims).await?, "grace")
        }
        RotateOutcome::Reused => {
            tracing::warn!(
                user_id = %user.id,
                session_id = %claims.sid,
                "refresh token reuse detected: session revoked"
            );
            let event = Event::new(
                EventType::RefreshReuseDetected,
                Some(user.id),
                Some(claims.sid),
            );
            state.audit.record(req, event).await;
            return Err(ApiError::new(
                ErrorCode::RefreshTokenReused,
                "this refresh token was already used; the session has been revoked",
            ));
        }
        RotateOutcome::Unknown => return Err(ApiError::invalid_token()),
    };
    state
        .cookies
        .set_session(req.cookie(), &pair.access_token, &pair.refresh_token);
    Ok((TokenResult::Ok(Json(TokenPair::new(pair, user))), kind))
}
