//! The guard as poem extractors: an endpoint declares [`Authenticated`] (or
//! [`RequireRole<Admin>`]) and runs only for a caller the guard let through.
//!
//! Here the HTTP part: credentials (`Authorization: Bearer` first, otherwise the `access_token`
//! cookie) and, for a cookie with an unsafe method, the CSRF check. The rest (the JWT, its `jti`
//! in the session store, the user's row) is [`Accounts::authenticate`](crate::accounts::Accounts).

use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaSecurityScheme, Registry},
};

use super::{cookies::ACCESS_COOKIE, error::ApiError, request::provenance};
use crate::{accounts::Caller, auth::csrf, db::entities::user::Role, state::AppState};

/// Name of the bearer security scheme in the OpenAPI spec.
pub const BEARER_SCHEME: &str = "BearerAuth";
/// Name of the cookie security scheme in the OpenAPI spec.
pub const COOKIE_SCHEME: &str = "CookieAuth";

/// How the access token arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Bearer,
    Cookie,
}

/// The caller of a protected endpoint, and how its token arrived.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub caller: Caller,
    pub source: CredentialSource,
}

/// The access token of a request and where it came from; `None` when there is none at all.
pub fn access_token(req: &Request) -> Result<Option<(String, CredentialSource)>, ApiError> {
    if let Some(value) = req.headers().get(poem::http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ApiError::invalid_token())?;
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::wrong_scheme());
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(ApiError::invalid_token());
        }
        return Ok(Some((token.to_owned(), CredentialSource::Bearer)));
    }
    Ok(req
        .cookie()
        .get(ACCESS_COOKIE)
        .map(|cookie| cookie.value_str().to_owned())
        .filter(|value| !value.is_empty())
        .map(|value| (value, CredentialSource::Cookie)))
}

/// Runs the whole guard for a request.
pub async fn authenticate(state: &AppState, req: &Request) -> Result<Authenticated, ApiError> {
    authenticate_for(state, req, req.method()).await
}

/// The guard for a request made with `method` (forward auth checks the proxied request's).
pub async fn authenticate_for(
    state: &AppState,
    req: &Request,
    method: &poem::http::Method,
) -> Result<Authenticated, ApiError> {
    let (token, source) = access_token(req)?.ok_or_else(ApiError::missing_token)?;
    if source == CredentialSource::Cookie && csrf::is_unsafe(method) {
        csrf::check(provenance(req), &state.settings.http.allowed_origins)?;
    }
    let caller = state.accounts.authenticate(&token).await?;
    Ok(Authenticated { caller, source })
}

/// The application state poem attached to the request.
fn app_state(req: &Request) -> Result<&AppState, ApiError> {
    req.data::<AppState>()
        .ok_or_else(|| ApiError::internal("AppState missing from request data"))
}

/// An HTTP bearer (JWT) security scheme for the spec.
fn bearer_scheme(description: &'static str) -> MetaSecurityScheme {
    MetaSecurityScheme {
        ty: "http",
        description: Some(description),
        name: None,
        key_in: None,
        scheme: Some("bearer"),
        bearer_format: Some("JWT"),
        flows: None,
        openid_connect_url: None,
    }
}

impl<'a> ApiExtractor<'a> for Authenticated {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            BEARER_SCHEME,
            bearer_scheme(
                "An access token from login or refresh: `Authorization: Bearer <token>`.",
            ),
        );
        registry.create_security_scheme(
            COOKIE_SCHEME,
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some(
                    "The `access_token` cookie set by login and refresh (browsers). Unsafe \
                     methods also need an allowed `Origin`/`Referer` or \
                     `Sec-Fetch-Site: same-origin` (CSRF check).",
                ),
                name: Some(ACCESS_COOKIE),
                key_in: Some("cookie"),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BEARER_SCHEME, COOKIE_SCHEME]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(authenticate(app_state(req)?, req).await?)
    }
}

/// A role an endpoint requires, with the name of the security scheme that documents it.
pub trait RequiredRole: Send + Sync + 'static {
    const ROLE: Role;
    const SCHEME: &'static str;
    const DESCRIPTION: &'static str;
}

/// Marker: the endpoint needs `role = admin`.
pub struct Admin;

impl RequiredRole for Admin {
    const ROLE: Role = Role::Admin;
    const SCHEME: &'static str = "AdminAuth";
    const DESCRIPTION: &'static str = "An access token (bearer, or the `access_token` cookie with \
        the CSRF rule) of a user whose role is `admin`. The role is read from the user's row on \
        every request, so a promotion or demotion applies at once. Other users get 403 `forbidden`.";
}

/// The guard plus a role check: an endpoint declares `caller: RequireRole<Admin>` and runs only
/// for admins. The role comes from the loaded user row, never from the token's `role` claim.
pub struct RequireRole<R: RequiredRole> {
    pub auth: Authenticated,
    _role: std::marker::PhantomData<R>,
}

impl<'a, R: RequiredRole> ApiExtractor<'a> for RequireRole<R> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(R::SCHEME, bearer_scheme(R::DESCRIPTION));
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![R::SCHEME]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let auth = authenticate(app_state(req)?, req).await?;
        if auth.caller.user.role != R::ROLE {
            let message = format!("this needs the {} role", R::ROLE.as_str());
            return Err(ApiError::new(super::error::ErrorCode::Forbidden, message).into());
        }
        Ok(Self {
            auth,
            _role: std::marker::PhantomData,
        })
    }
}
