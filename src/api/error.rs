//! The HTTP error type, its JSON body, the error sets each operation documents, and the
//! mapping of every lower layer's error to a status and a stable code.
//!
//! Policy:
//! - Every error on every route, including ones poem raises itself (unknown path, wrong method,
//!   unparsable JSON, wrong content type, oversized body), leaves as
//!   `{"error": {"code", "message", "details"?}}` with a stable snake_case `code`.
//! - 4xx messages explain what the client can fix. 5xx messages say only "internal error" (or
//!   which dependency is down): the cause chain goes to the log, never to the client.
//! - Authentication failures say nothing about which check failed: `invalid_token` whether the
//!   signature, the issuer or the revocation check refused it. Every 401 carries
//!   `WWW-Authenticate: Bearer` (with `error="invalid_token"` when a token was presented).
//! - Nothing here ever echoes a password, a hash or a token.
//! - Each operation's spec lists only the codes it can answer ([`Failure`] and its
//!   [`ErrorSet`]); in debug builds an undocumented code is logged as an error, which the test
//!   suite fails on.

use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::{LazyLock, Mutex},
};

use poem::{IntoResponse, Response, error::ResponseError, http::StatusCode};
use poem_openapi::{
    ApiResponse, Enum, Object,
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::{ToJSON, Type},
};

use crate::{accounts::AccountError, auth::csrf::CsrfRejected, limits::Limited};

/// Stable machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON, or a field has the wrong type.
    MalformedRequest,
    /// 400: an emailed link's token is unknown, used or expired.
    LinkInvalid,
    /// 401: no credentials were presented.
    MissingToken,
    /// 401: the token is invalid, revoked, or its user is gone or disabled.
    InvalidToken,
    /// 401: the token has expired; refresh it.
    TokenExpired,
    /// 401: wrong email or password.
    InvalidCredentials,
    /// 401: a refresh token was presented again after it had been rotated; the session is revoked.
    RefreshTokenReused,
    /// 401: a wrong, replayed or used second-factor code, or a dead `mfa_token`.
    MfaInvalid,
    /// 403: a cookie-authenticated unsafe request from an origin that is not allowed.
    CsrfRejected,
    /// 403: the account is disabled.
    AccountDisabled,
    /// 403: the right password, but the address is not verified (`EMAIL_VERIFICATION=required`).
    EmailNotVerified,
    /// 403: the caller lacks the role this needs.
    Forbidden,
    /// 404: no such resource or route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: an account with this email exists.
    EmailTaken,
    /// 409: the change would leave no active admin.
    LastAdmin,
    /// 409: a second factor is already enabled.
    MfaAlreadyEnabled,
    /// 409: no second factor is enabled (or no enrollment waits for confirmation).
    MfaNotEnabled,
    /// 413: the request body is larger than 64 KiB.
    PayloadTooLarge,
    /// 415: the request body is not `application/json`.
    UnsupportedMediaType,
    /// 422: well-formed JSON that breaks a rule; see `details`.
    ValidationFailed,
    /// 429: too many requests; see `Retry-After`.
    RateLimited,
    /// 500: an unexpected failure (the cause is logged, not returned).
    InternalError,
    /// 503: a dependency (database or session store) is unavailable; see `Retry-After`.
    ServiceUnavailable,
    /// 503: too many password checks are queued; see `Retry-After`.
    Busy,
}

impl ErrorCode {
    /// What the code means, for the spec's response descriptions.
    fn meaning(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedRequest => "the body is not JSON or has wrong types",
            LinkInvalid => "the link is unknown, used or expired: ask for a new one",
            MissingToken => "no credentials were presented",
            InvalidToken => "the token is invalid or revoked",
            TokenExpired => "the token has expired",
            InvalidCredentials => "wrong email or password",
            RefreshTokenReused => "a rotated-away refresh token; the session is revoked",
            MfaInvalid => "a wrong or used second-factor code, or a dead mfa_token",
            CsrfRejected => "a cookie request from an origin that is not allowed",
            AccountDisabled => "the account is disabled",
            EmailNotVerified => "the address is not verified yet",
            Forbidden => "the caller lacks the role",
            NotFound => "no such resource",
            MethodNotAllowed => "the route does not take this method",
            EmailTaken => "an account has this email",
            LastAdmin => "it would leave no active admin",
            MfaAlreadyEnabled => "a second factor is already enabled",
            MfaNotEnabled => "no second factor is enabled or being set up",
            PayloadTooLarge => "the body is larger than 64 KiB",
            UnsupportedMediaType => "send `Content-Type: application/json`",
            ValidationFailed => "see `details`",
            RateLimited => "see `Retry-After`",
            InternalError => "an unexpected failure",
            ServiceUnavailable => "a dependency is down or the request took too long",
            Busy => "too many password checks are queued",
        }
    }

    fn name(self) -> String {
        self.to_json()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedRequest | LinkInvalid => StatusCode::BAD_REQUEST,
            MissingToken | InvalidToken | TokenExpired | InvalidCredentials
            | RefreshTokenReused | MfaInvalid => StatusCode::UNAUTHORIZED,
            CsrfRejected | AccountDisabled | EmailNotVerified | Forbidden => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            EmailTaken | LastAdmin | MfaAlreadyEnabled | MfaNotEnabled => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceUnavailable | Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One field-level problem.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct FieldError {
    /// The request field, e.g. `email`.
    pub field: String,
    /// What is wrong with it.
    pub issue: String,
}

/// The error object inside every error body.
#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// A human sentence.
    pub message: String,
    /// Field errors, only for `validation_failed`.
    #[oai(skip_serializing_if_is_none)]
    pub details: Option<Vec<FieldError>>,
}

/// Every error response body: `{"error": {...}}`.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The error of every endpoint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<FieldError>,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
    /// Whether a token was presented (and refused): selects `error="invalid_token"`.
    pub token_presented: bool,
    /// `RateLimit-*` headers of a 429.
    pub rate_limit: Option<Box<RateLimitInfo>>,
    /// The dependency that failed, for the metrics (`database`, `session store`).
    pub dependency: Option<&'static str>,
}

/// The `RateLimit-*` headers of a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    pub limit: u64,
    pub window_secs: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// Attached to an error response: which dependency failed (read by the metrics middleware).
#[derive(Debug, Clone, Copy)]
pub struct DependencyFailure(pub &'static str);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry_after = match code {
            ErrorCode::RateLimited | ErrorCode::ServiceUnavailable | ErrorCode::Busy => Some(5),
            _ => None,
        };
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after,
            token_presented: matches!(
                code,
                ErrorCode::InvalidToken | ErrorCode::TokenExpired | ErrorCode::RefreshTokenReused
            ),
            rate_limit: None,
            dependency: None,
        }
    }

    pub fn validation(details: Vec<FieldError>) -> Self {
        Self {
            details,
            ..Self::new(
                ErrorCode::ValidationFailed,
                "the request breaks one or more rules; see details",
            )
        }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::MalformedRequest, message)
    }

    pub fn invalid_token() -> Self {
        Self::new(ErrorCode::InvalidToken, "the token is invalid or revoked")
    }

    pub fn missing_token() -> Self {
        Self::new(
            ErrorCode::MissingToken,
            "authentication required: send `Authorization: Bearer <token>` or the access_token cookie",
        )
    }

    /// A refresh without a refresh token.
    pub fn missing_refresh_token() -> Self {
        Self::new(
            ErrorCode::MissingToken,
            "a refresh token is required: send {\"refresh_token\": \"...\"} or the \
             refresh_token cookie",
        )
    }

    /// An `Authorization` header of another scheme than Bearer.
    pub fn wrong_scheme() -> Self {
        Self::new(
            ErrorCode::InvalidToken,
            "the Authorization header must use the Bearer scheme: `Authorization: Bearer <access \
             token>`",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// A 500 whose cause is logged with its whole chain and never shown to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::InternalError, "internal error")
    }

    /// A 503 naming the dependency that is down; the cause is logged.
    pub fn unavailable(dependency: &'static str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(dependency, error = %cause, "dependency unavailable");
        Self {
            dependency: Some(dependency),
            ..Self::new(
                ErrorCode::ServiceUnavailable,
                format!("{dependency} is unavailable; retry shortly"),
            )
        }
    }

    /// A 429 with `Retry-After` and, for a rate, the `RateLimit-*` headers.
    pub fn rate_limited(limited: Limited) -> Self {
        let message = match limited.rate {
            Some(_) => "too many requests; retry after the number of seconds in Retry-After",
            None => {
                "too many failed logins for this account; retry after the number of seconds in \
                 Retry-After"
            }
        };
        Self {
            retry_after: Some(limited.retry_after_secs),
            rate_limit: limited.rate.map(|rate| {
                Box::new(RateLimitInfo {
                    limit: rate.limit,
                    window_secs: rate.window.as_secs(),
                    remaining: 0,
                    reset_secs: limited.retry_after_secs,
                })
            }),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                details: (!self.details.is_empty()).then(|| self.details.clone()),
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.code.status()
    }

    fn as_response(&self) -> Response {
        let body = self.body().to_json_string();
        let mut response = Response::builder()
            .status(self.status())
            .content_type("application/json; charset=utf-8")
            .body(body);
        if self.status() == StatusCode::UNAUTHORIZED {
            let value = if self.token_presented {
                r#"Bearer error="invalid_token""#
            } else {
                "Bearer"
            };
            response
                .headers_mut()
                .insert("WWW-Authenticate", value.parse().expect("static header"));
        }
        if let Some(dependency) = self.dependency {
            response.set_data(DependencyFailure(dependency));
        }
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert("Retry-After", secs.into());
        }
        if let Some(limit) = self.rate_limit.as_deref() {
            headers.insert("RateLimit-Limit", limit.limit.into());
            headers.insert("RateLimit-Remaining", limit.remaining.into());
            headers.insert("RateLimit-Reset", limit.reset_secs.into());
            if let Ok(policy) = format!("{};w={}", limit.limit, limit.window_secs).parse() {
                headers.insert("RateLimit-Policy", policy);
            }
        }
        response
    }
}

/// The codes an operation can answer, documented in its spec entry.
pub trait ErrorSet: Send + Sync + 'static {
    fn codes() -> Vec<ErrorCode>;
}

/// What an operation that reads a JSON body can answer about it.
pub const BODY: &[ErrorCode] = &[
    ErrorCode::MalformedRequest,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::ValidationFailed,
];
/// What the guard of a protected operation can answer.
pub const GUARD: &[ErrorCode] = &[
    ErrorCode::MissingToken,
    ErrorCode::InvalidToken,
    ErrorCode::TokenExpired,
];
/// What any operation that reaches a dependency can answer.
pub const SERVER: &[ErrorCode] = &[ErrorCode::InternalError, ErrorCode::ServiceUnavailable];

/// Declares an [`ErrorSet`]: `error_set!(Name: [GROUP, ...], Code, ...)`, the groups above
/// and the operation's own codes.
macro_rules! error_set {
    ($(#[$doc:meta])* $name:ident: [$($group:ident),*] $(, $code:ident)* $(,)?) => {
        $(#[$doc])*
        pub enum $name {}

        impl $crate::api::error::ErrorSet for $name {
            fn codes() -> Vec<$crate::api::error::ErrorCode> {
                #[allow(unused_mut)]
                let mut codes: Vec<$crate::api::error::ErrorCode> =
                    vec![$($crate::api::error::ErrorCode::$code),*];
                $(codes.extend_from_slice($crate::api::error::$group);)*
                codes
            }
        }
    };
}
pub(crate) use error_set;

/// The error of an operation that can answer the codes of `S`: an [`ApiError`] whose spec
/// entry lists only those.
pub struct Failure<S: ErrorSet> {
    pub error: ApiError,
    set: PhantomData<S>,
}

impl<S: ErrorSet> Failure<S> {
    fn new(error: ApiError) -> Self {
        #[cfg(debug_assertions)]
        if !S::codes().contains(&error.code) {
            tracing::error!(code = ?error.code, "undocumented error code for this operation");
        }
        Self {
            error,
            set: PhantomData,
        }
    }
}

impl<S: ErrorSet> From<ApiError> for Failure<S> {
    fn from(error: ApiError) -> Self {
        Self::new(error)
    }
}

impl<S: ErrorSet> From<AccountError> for Failure<S> {
    fn from(error: AccountError) -> Self {
        Self::new(error.into())
    }
}

impl<S: ErrorSet> From<CsrfRejected> for Failure<S> {
    fn from(error: CsrfRejected) -> Self {
        Self::new(error.into())
    }
}

impl<S: ErrorSet> From<Failure<S>> for poem::Error {
    fn from(failure: Failure<S>) -> Self {
        failure.error.into()
    }
}

impl<S: ErrorSet> IntoResponse for Failure<S> {
    fn into_response(self) -> Response {
        self.error.as_response()
    }
}

/// One response per status of `S`, each describing its codes, with the `ErrorBody` schema.
impl<S: ErrorSet> ApiResponse for Failure<S> {
    fn meta() -> MetaResponses {
        let codes = S::codes();
        let mut statuses: Vec<u16> = codes.iter().map(|c| c.status().as_u16()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        let responses = statuses
            .into_iter()
            .map(|status| MetaResponse {
                description: describe(status, &codes),
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "application/json; charset=utf-8",
                    schema: ErrorBody::schema_ref(),
                }],
                headers: vec![],
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// The description of one status of an error set: its codes and what each means, plus the
/// headers the status carries. Interned: the spec's descriptions are `&'static str`, and
/// there are as many as there are distinct (status, codes) pairs.
fn describe(status: u16, codes: &[ErrorCode]) -> &'static str {
    static TEXTS: LazyLock<Mutex<HashMap<String, &'static str>>> = LazyLock::new(Default::default);
    let mut codes: Vec<ErrorCode> = codes.to_vec();
    codes.sort_by_key(|c| *c as usize);
    codes.dedup();
    let mut text: Vec<String> = codes
        .iter()
        .filter(|c| c.status().as_u16() == status)
        .map(|c| format!("`{}`: {}", c.name(), c.meaning()))
        .collect();
    match status {
        401 => text.push("carries `WWW-Authenticate: Bearer`".into()),
        429 | 503 => text.push("carries `Retry-After`".into()),
        _ => {}
    }
    let text = text.join("; ");
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(interned) = texts.get(&text) {
        return interned;
    }
    let interned: &'static str = Box::leak(text.clone().into_boxed_str());
    texts.insert(text, interned);
    interned
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        if crate::db::is_unavailable(&err) {
            return Self::unavailable("database", err);
        }
        Self {
            dependency: Some("database"),
            ..Self::internal(err)
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> Self {
        use ErrorCode::*;
        let message = err.to_string();
        match err {
            AccountError::Invalid(fields) => Self::validation(
                fields
                    .into_iter()
                    .map(|f| FieldError {
                        field: f.field,
                        issue: f.issue,
                    })
                    .collect(),
            ),
            AccountError::EmailTaken => Self::new(EmailTaken, message),
            AccountError::InvalidCredentials => Self::new(InvalidCredentials, message),
            AccountError::AccountDisabled => Self::new(AccountDisabled, message),
            AccountError::EmailNotVerified => Self::new(EmailNotVerified, message),
            AccountError::LinkInvalid => Self::new(LinkInvalid, message),
            AccountError::EmailFlowsOff => Self::not_found(message),
            AccountError::LastAdmin => Self::new(LastAdmin, message),
            AccountError::MfaInvalid => Self::new(MfaInvalid, message),
            AccountError::MfaAlreadyEnabled => Self::new(MfaAlreadyEnabled, message),
            AccountError::MfaNotEnabled | AccountError::MfaNotPending => {
                Self::new(MfaNotEnabled, message)
            }
            AccountError::NoSuchUser | AccountError::NoSuchSession => Self::not_found(message),
            AccountError::InvalidToken => Self::invalid_token(),
            AccountError::TokenExpired => Self::new(TokenExpired, message),
            AccountError::RefreshTokenReused => Self::new(RefreshTokenReused, message),
            AccountError::RateLimited(limited) => Self::rate_limited(limited),
            AccountError::Busy => Self {
                retry_after: Some(1),
                ..Self::new(Busy, message)
            },
            AccountError::Database(err) => err.into(),
            AccountError::Sessions(err) => Self::unavailable("session store", err),
            AccountError::Limiter(err) => Self::unavailable("rate limiter", err),
            AccountError::Internal(err) => Self::internal(format!("{err:#}")),
        }
    }
}

impl From<CsrfRejected> for ApiError {
    fn from(err: CsrfRejected) -> Self {
        Self::new(ErrorCode::CsrfRejected, err.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::internal(format!("{err:#}"))
    }
}

/// Maps any error poem or poem-openapi raised outside our handlers (routing, content type,
/// JSON parsing, body size) to the one error body.
pub fn from_poem_error(err: poem::Error) -> ApiError {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.clone();
    }
    if err.is::<poem_openapi::error::ContentTypeError>() {
        return ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the request body must be JSON: send `Content-Type: application/json`",
        );
    }
    if let Some(parse) = err.downcast_ref::<poem_openapi::error::ParseRequestPayloadError>() {
        return ApiError::malformed(format!(
            "the request body could not be parsed: {}",
            without_values(&parse.reason)
        ));
    }
    if err.is::<poem_openapi::error::ParseParamError>()
        || err.is::<poem_openapi::error::ParsePathError>()
    {
        return ApiError::malformed(err.to_string());
    }
    match err.status() {
        StatusCode::NOT_FOUND => ApiError::not_found("no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            ErrorCode::MethodNotAllowed,
            "this route does not accept that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the request body must be JSON: send `Content-Type: application/json`",
        ),
        status if status.is_client_error() => ApiError::malformed(err.to_string()),
        _ => ApiError::internal(err.to_string()),
    }
}

/// poem-openapi's parse messages quote the offending value (`..., found "x".`); that value may
/// be a password, so it is cut out.
fn without_values(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(start) = rest.find(", found ") {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        match rest.find(". (occurred") {
            Some(end) => rest = &rest[end..],
            None => {
                rest = "";
                out.push('.');
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn payload_too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        "the request body is larger than 64 KiB",
    )
}
