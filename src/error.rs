//! The one API error type.
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

use poem::{Response, error::ResponseError, http::StatusCode};
use poem_openapi::{
    ApiResponse, Enum, Object,
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::{ToJSON, Type},
};

use crate::{auth::tokens::TokenError, limits::RateLimitInfo, session::StoreError};

/// Stable machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON, or a field has the wrong type.
    MalformedRequest,
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
    /// 403: a cookie-authenticated unsafe request from an origin that is not allowed.
    CsrfRejected,
    /// 403: the account is disabled.
    AccountDisabled,
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
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedRequest => StatusCode::BAD_REQUEST,
            MissingToken | InvalidToken | TokenExpired | InvalidCredentials
            | RefreshTokenReused => StatusCode::UNAUTHORIZED,
            CsrfRejected | AccountDisabled | Forbidden => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            EmailTaken | LastAdmin => StatusCode::CONFLICT,
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

/// Lists every error status with the `ErrorBody` schema in the OpenAPI spec.
impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        let statuses: [(u16, &str); 12] = [
            (
                400,
                "malformed_request: the body is not JSON or has wrong types",
            ),
            (
                401,
                "missing_token, invalid_token, token_expired, invalid_credentials or refresh_token_reused; carries `WWW-Authenticate: Bearer`",
            ),
            (403, "csrf_rejected, account_disabled or forbidden"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (409, "email_taken or last_admin"),
            (413, "payload_too_large: bodies are limited to 64 KiB"),
            (
                415,
                "unsupported_media_type: send `Content-Type: application/json`",
            ),
            (422, "validation_failed, with field `details`"),
            (429, "rate_limited; carries `Retry-After`"),
            (500, "internal_error"),
            (
                503,
                "service_unavailable: the database or the session store is down; carries `Retry-After`",
            ),
        ];
        MetaResponses {
            responses: statuses
                .into_iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        match err {
            sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_) => {
                Self::unavailable("database", err)
            }
            // SQLite's single writer was busy (concurrent writes in the embedded default):
            // a retry will do.
            other if other.to_string().contains("database is locked") => {
                Self::unavailable("database", other)
            }
            other => Self {
                dependency: Some("database"),
                ..Self::internal(other)
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::unavailable("session store", err)
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Expired => Self::new(ErrorCode::TokenExpired, "the token has expired"),
            TokenError::Invalid => Self::invalid_token(),
        }
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
