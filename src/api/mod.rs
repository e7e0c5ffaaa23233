//! The HTTP API: one `#[OpenApi]` struct per resource, combined into one service. Handlers
//! are thin adapters over [`crate::accounts`]: they parse, call a flow, map its error
//! ([`error`]) and set cookies ([`cookies`]); [`guard`] is the extractor of protected routes.

pub mod admin;
pub mod admin_mail;
pub mod auth;
pub mod cookies;
pub mod discovery;
pub mod email;
pub mod error;
pub mod guard;
pub mod health;
pub mod json_body;
pub mod jwks;
pub mod mfa;
pub mod pages;
pub mod request;
pub mod sessions;
pub mod users;

use poem_openapi::{OpenApiService, Tags};

/// Groups of operations in the spec.
#[derive(Tags)]
pub enum ApiTags {
    /// Registration, login, token refresh and logout; email verification and password reset.
    Auth,
    /// The signed-in user's sessions (devices).
    Sessions,
    /// The signed-in user's own account.
    Users,
    /// Public keys for verifying access tokens elsewhere.
    Keys,
    /// For other services: discovery, userinfo and forward auth for reverse proxies.
    Discovery,
    /// Account administration (admins only).
    Admin,
    /// Liveness and readiness probes.
    Health,
}

/// The API description that tells what a client may rely on (also in `openapi/`).
const DESCRIPTION: &str = "Latchkey issues RS256-signed JWTs: a short-lived access token and a \
long-lived refresh token, each signed with its own RSA key, each revocable through its `jti`.\n\n\
Send the access token as `Authorization: Bearer <token>`, or let a browser send the \
`access_token` cookie. Other services verify access tokens with the keys at \
`/.well-known/jwks.json`.\n\n\
Every error has the body `{\"error\": {\"code\", \"message\", \"details\"?}}` with a stable `code` \
(see `ErrorCode`). Emails are trimmed and lower-cased; names are trimmed, 1-100 characters; \
passwords are 8-128 characters, never trimmed. Request bodies above 64 KiB get 413. \
Missing required fields are reported as 422 `validation_failed` with a `details` entry per field; \
bodies that are not JSON, or fields of the wrong type, are 400 `malformed_request`.";

/// Every endpoint as one OpenAPI service.
pub type Api = (
    auth::AuthApi,
    email::EmailApi,
    mfa::MfaApi,
    sessions::SessionsApi,
    users::UsersApi,
    admin::AdminApi,
    admin_mail::AdminMailApi,
    jwks::JwksApi,
    discovery::DiscoveryApi,
    health::HealthApi,
);

pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (
            auth::AuthApi,
            email::EmailApi,
            mfa::MfaApi,
            sessions::SessionsApi,
            users::UsersApi,
            admin::AdminApi,
            admin_mail::AdminMailApi,
            jwks::JwksApi,
            discovery::DiscoveryApi,
            health::HealthApi,
        ),
        "Latchkey",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
}

/// The spec as JSON, as served at `/openapi.json` and committed in `openapi/openapi.json`.
pub fn spec_json() -> String {
    service().spec()
}

/// The spec as YAML, as served at `/openapi.yaml` and committed in `openapi/openapi.yaml`.
pub fn spec_yaml() -> String {
    service().spec_yaml()
}
