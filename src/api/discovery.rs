//! For other services: OpenID Connect discovery of the tokens' issuer and keys, the user
//! behind a token (`/userinfo`), and forward auth for reverse proxies
//! (`/api/v1/auth/check`).

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use uuid::Uuid;

use super::{
    ApiTags,
    error::{Failure, error_set},
    guard::{self, Authenticated},
};
use crate::state::AppState;

error_set!(
    /// What userinfo and forward auth can answer besides their success.
    CallerErrors: [GUARD, SERVER], CsrfRejected
);

/// The discovery document (OpenID Connect Discovery 1.0).
#[derive(Debug, Clone, Object)]
pub struct DiscoveryDocument {
    /// `PUBLIC_URL` (or `JWT_ISSUER`): equal to the `iss` of every token.
    pub issuer: String,
    /// The access-token verification keys.
    pub jwks_uri: String,
    pub userinfo_endpoint: String,
    /// Latchkey's login operation. Latchkey issues tokens through its JSON API, not through
    /// OAuth 2.0 redirects; discovery clients require the field.
    pub authorization_endpoint: String,
    /// `token`: login answers with tokens.
    pub response_types_supported: Vec<String>,
    /// `public`: `sub` is the user id, the same for every service.
    pub subject_types_supported: Vec<String>,
    /// `RS256` only.
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// The claims of access tokens and of `/userinfo`.
    pub claims_supported: Vec<String>,
    /// `openid`.
    pub scopes_supported: Vec<String>,
}

/// The signed-in user, as OpenID Connect's userinfo has it.
#[derive(Debug, Clone, Object)]
pub struct UserInfo {
    /// The user id (the tokens' `sub`).
    pub sub: Uuid,
    pub name: String,
    pub email: String,
    pub email_verified: bool,
    /// `user` or `admin`, read from the user's row now.
    pub role: String,
}

#[derive(ApiResponse)]
pub enum DiscoveryResult {
    /// The document; cache it like the JWKS.
    #[oai(status = 200)]
    Ok(
        Json<DiscoveryDocument>,
        #[oai(header = "Cache-Control")] String,
    ),
}

#[derive(ApiResponse)]
pub enum UserInfoResult {
    /// The user the token belongs to.
    #[oai(status = 200)]
    Ok(Json<UserInfo>),
}

#[derive(ApiResponse)]
pub enum CheckResult {
    /// The token is live: the proxy lets the request through, with these headers.
    #[oai(status = 204)]
    Allowed(
        /// The user id.
        #[oai(header = "X-Auth-User-Id")]
        String,
        /// `user` or `admin`, from the user's row.
        #[oai(header = "X-Auth-Role")]
        String,
        /// The session the token belongs to.
        #[oai(header = "X-Auth-Session-Id")]
        String,
        #[oai(header = "X-Auth-Email")] String,
    ),
}

pub struct DiscoveryApi;

#[OpenApi(tag = "ApiTags::Discovery")]
impl DiscoveryApi {
    /// OpenID Connect discovery: the issuer of Latchkey's tokens and where its keys are, so
    /// verifiers configured with the issuer URL alone (Spring's `issuer-uri`, ASP.NET's
    /// `Authority`, jose, Envoy, the `openidconnect` crate) accept its access tokens.
    #[oai(
        path = "/.well-known/openid-configuration",
        method = "get",
        operation_id = "get_openid_configuration"
    )]
    async fn openid_configuration(&self, state: poem::web::Data<&AppState>) -> DiscoveryResult {
        let base = state.settings.public_url();
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        let document = DiscoveryDocument {
            issuer: state.settings.tokens.issuer.clone(),
            jwks_uri: format!("{base}/.well-known/jwks.json"),
            userinfo_endpoint: format!("{base}/userinfo"),
            authorization_endpoint: format!("{base}/api/v1/auth/login"),
            response_types_supported: strings(&["token"]),
            subject_types_supported: strings(&["public"]),
            id_token_signing_alg_values_supported: strings(&["RS256"]),
            claims_supported: strings(&[
                "iss",
                "aud",
                "sub",
                "sid",
                "jti",
                "iat",
                "nbf",
                "exp",
                "role",
                "amr",
                "name",
                "email",
                "email_verified",
            ]),
            scopes_supported: strings(&["openid"]),
        };
        let max_age = state.settings.keys.jwks_max_age.as_secs();
        DiscoveryResult::Ok(Json(document), format!("public, max-age={max_age}"))
    }

    /// The signed-in user (bearer token or the `access_token` cookie), after the full guard:
    /// a revoked token, a disabled or deleted user is 401.
    #[oai(path = "/userinfo", method = "get", operation_id = "get_userinfo")]
    async fn userinfo(&self, auth: Authenticated) -> Result<UserInfoResult, Failure<CallerErrors>> {
        let user = auth.caller.user;
        Ok(UserInfoResult::Ok(Json(UserInfo {
            sub: user.id,
            email_verified: user.email_verified_at.is_some(),
            role: user.role.as_str().to_owned(),
            name: user.name,
            email: user.email,
        })))
    }

    /// Forward auth for reverse proxies (nginx `auth_request`, Traefik ForwardAuth, Envoy
    /// ext_authz): the full guard on the request's bearer token or `access_token` cookie,
    /// revocation included. 204 with `X-Auth-*` headers to pass upstream, else 401. A cookie
    /// with an unsafe original method (`X-Forwarded-Method`, `X-Original-Method`) must also
    /// pass the CSRF check (403 `csrf_rejected`).
    #[oai(
        path = "/api/v1/auth/check",
        method = "get",
        operation_id = "check_auth"
    )]
    async fn check(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
    ) -> Result<CheckResult, Failure<CallerErrors>> {
        let original = ["x-forwarded-method", "x-original-method"]
            .iter()
            .find_map(|name| req.headers().get(*name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| poem::http::Method::from_bytes(v.as_bytes()).ok())
            .unwrap_or_else(|| req.method().clone());
        let caller = guard::authenticate_for(&state, req, &original)
            .await?
            .caller;
        let user = caller.user;
        Ok(CheckResult::Allowed(
            user.id.to_string(),
            user.role.as_str().to_owned(),
            caller.session_id.to_string(),
            user.email,
        ))
    }
}
