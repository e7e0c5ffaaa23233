//! `/api/v1/auth`: register, login, refresh, logout.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use uuid::Uuid;

use super::{
    ApiTags,
    cookies::{CookiePolicy, REFRESH_COOKIE},
    error::{ApiError, Failure, error_set},
    guard::Authenticated,
    json_body::JsonBody,
    request::{OptionalJson, Text, client, provenance, text},
    users::{UserEnvelope, UserResponse},
};
use crate::{
    accounts::{LoginOutcome, MfaChallenge, Registration, SignedIn},
    auth::csrf,
    state::AppState,
};

error_set!(
    /// What registering can answer.
    RegisterErrors: [BODY, SERVER], EmailTaken, RateLimited, Busy
);
error_set!(
    /// What logging in can answer.
    LoginErrors: [BODY, SERVER], InvalidCredentials, AccountDisabled, EmailNotVerified,
    RateLimited, Busy
);
error_set!(
    /// What a refresh can answer.
    RefreshErrors: [GUARD, SERVER], MalformedRequest, PayloadTooLarge, UnsupportedMediaType,
    RefreshTokenReused, CsrfRejected, RateLimited
);
error_set!(
    /// What logging out can answer.
    LogoutErrors: [GUARD, SERVER], PayloadTooLarge, CsrfRejected
);

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
    fn new(signed_in: SignedIn) -> Self {
        let (pair, user) = (signed_in.pair, signed_in.user);
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

impl TokenResult {
    /// The answer to a login or refresh: the pair in the body and in the cookies.
    pub(super) fn signed_in(state: &AppState, req: &Request, signed_in: SignedIn) -> Self {
        let pair = &signed_in.pair;
        CookiePolicy::of(&state.settings).set_session(
            req.cookie(),
            &pair.access_token,
            &pair.refresh_token,
        );
        Self::Ok(Json(TokenPair::new(signed_in)))
    }
}

/// A login that waits for its second factor.
#[derive(Debug, Clone, Object)]
pub struct MfaRequired {
    /// Always `true`.
    pub mfa_required: bool,
    /// Opaque, single use: send it with a code to `POST /api/v1/auth/mfa`. Dies after 5 wrong
    /// codes.
    pub mfa_token: String,
    /// Seconds the `mfa_token` lives (300).
    pub expires_in: i64,
    /// `totp` (a code from the authenticator app) and `recovery_code`.
    pub methods: Vec<String>,
}

impl MfaRequired {
    fn new(challenge: MfaChallenge) -> Self {
        Self {
            mfa_required: true,
            mfa_token: challenge.mfa_token,
            expires_in: challenge.expires_in,
            methods: vec!["totp".into(), "recovery_code".into()],
        }
    }
}

#[derive(ApiResponse)]
pub enum LoginResult {
    /// A new token pair. Also sets the `access_token`, `refresh_token` and `logged_in` cookies.
    #[oai(status = 200)]
    Ok(Json<TokenPair>),
    /// The password is right and the account has a second factor: finish the login with
    /// `POST /api/v1/auth/mfa`.
    #[oai(status = 202)]
    SecondFactor(Json<MfaRequired>),
}

#[derive(ApiResponse)]
pub enum LogoutResult {
    /// The session's tokens are revoked and the cookies cleared.
    #[oai(status = 204)]
    LoggedOut,
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
        body: JsonBody<RegisterRequest>,
    ) -> Result<RegisterResult, Failure<RegisterErrors>> {
        let body = body.0;
        let form = Registration {
            name: text(body.name),
            email: text(body.email),
            password: text(body.password),
            password_confirm: text(body.password_confirm),
        };
        let user = state.accounts.register(form, &client(&state, req)).await?;
        Ok(RegisterResult::Created(Json(user.into())))
    }

    /// Log in with email and password.
    ///
    /// Starts a new session (one per device) and returns its token pair; browsers also get the
    /// cookies. An account with a second factor gets 202 with an `mfa_token` instead (no
    /// tokens, no cookies, no session yet): finish with `POST /api/v1/auth/mfa`. A wrong password and an unknown email get the same 401 `invalid_credentials`
    /// after the same amount of work. The right password of a disabled account gets 403
    /// `account_disabled`; of an unverified one under `EMAIL_VERIFICATION=required`, 403
    /// `email_not_verified`.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<LoginRequest>,
    ) -> Result<LoginResult, Failure<LoginErrors>> {
        let (email, password) = (text(body.0.email), text(body.0.password));
        let outcome = state
            .accounts
            .login(email, password, &client(&state, req))
            .await?;
        Ok(match outcome {
            LoginOutcome::SignedIn(signed_in) => {
                let TokenResult::Ok(pair) = TokenResult::signed_in(&state, req, *signed_in);
                LoginResult::Ok(pair)
            }
            LoginOutcome::SecondFactor(challenge) => {
                LoginResult::SecondFactor(Json(MfaRequired::new(challenge)))
            }
        })
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
    ) -> Result<TokenResult, Failure<RefreshErrors>> {
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
                    .ok_or_else(ApiError::missing_refresh_token)?;
                // The browser attached this cookie by itself: make sure the page is ours.
                csrf::check(provenance(req), &state.settings.http.allowed_origins)?;
                cookie
            }
        };
        let (signed_in, _) = state.accounts.refresh(&token, &client(&state, req)).await?;
        Ok(TokenResult::signed_in(&state, req, signed_in))
    }

    /// Log out of every session of the signed-in user (every device): all their tokens are
    /// revoked and this client's cookies cleared.
    #[oai(path = "/logout-all", method = "post", operation_id = "logout_all")]
    async fn logout_all(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
    ) -> Result<LogoutResult, Failure<LogoutErrors>> {
        let client = client(&state, req);
        state.accounts.logout_all(&auth.caller, &client).await?;
        CookiePolicy::of(&state.settings).clear_session(req.cookie());
        Ok(LogoutResult::LoggedOut)
    }

    /// Log out of the current session: its tokens are revoked and the cookies cleared.
    #[oai(path = "/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
    ) -> Result<LogoutResult, Failure<LogoutErrors>> {
        let client = client(&state, req);
        state.accounts.logout(&auth.caller, &client).await?;
        CookiePolicy::of(&state.settings).clear_session(req.cookie());
        Ok(LogoutResult::LoggedOut)
    }
}
