//! The HTTP surface: the API, the routes beside it, and the middleware every request passes
//! (request id, CORS, security headers, metrics and logs, timeout, body limit, error bodies).

use std::{sync::Arc, time::Instant};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route,
    error::ResponseError,
    http::{HeaderMap, HeaderValue, Method, header},
    middleware::CookieJarManager,
};
use poem_openapi::OperationId;
use tracing::Instrument;

use crate::{
    api::{
        self,
        error::{self, ApiError, DependencyFailure, ErrorCode},
        pages,
    },
    state::AppState,
    telemetry::{metrics::Metrics, request_id},
};

/// Request bodies above this size get 413 before any parsing (API.md section 1).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The whole HTTP surface with its middleware.
pub fn routes(state: AppState) -> impl Endpoint {
    let api = api::service();
    let ui = api.swagger_ui();
    let spec_json = api.spec_endpoint();
    let spec_yaml = api.spec_endpoint_yaml();
    let frame = Arc::new(Frame {
        cors: CorsPolicy::new(&state.settings.http.allowed_origins),
        metrics: state.metrics.clone(),
    });
    let timeout = state.settings.http.request_timeout;
    let beside = Route::new()
        .nest("/docs", ui)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .at("/metrics", poem::get(metrics_endpoint))
        .at("/account/verify-email", poem::get(pages::verify_email))
        .at("/account/reset-password", poem::get(pages::reset_password))
        .at("/account/confirm-email", poem::get(pages::confirm_email))
        .at("/account/account.js", poem::get(pages::script))
        .at("/account/account.css", poem::get(pages::style))
        .at("/", poem::get(root));
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
/// their paths: nested in a `Route` of its own, every API request would be matched twice and
/// its URI rebuilt on the way in.
struct Site<A> {
    api: A,
    beside: Route,
}

/// The metrics label of a path served beside the API, `None` for the API's paths.
fn beside_label(path: &str) -> Option<&'static str> {
    match path {
        "/metrics" => Some("metrics"),
        "/" => Some("root"),
        "/openapi.json" | "/openapi.yaml" => Some("openapi"),
        p if p == "/docs" || p.starts_with("/docs/") => Some("docs"),
        p if p.starts_with("/account/") => Some("account_pages"),
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

/// `GET /`: the API's documentation is where a newcomer wants to land.
#[poem::handler]
fn root() -> poem::web::Redirect {
    poem::web::Redirect::see_other("/docs")
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

/// The metrics label of a method: one of the standard methods, or `other`. Any token is a
/// valid method, so the raw one would let clients create new series without end.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The longest path a log line carries; the rest is cut.
const LOGGED_PATH_CHARS: usize = 256;

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
/// One layer rather than one per limit: poem nests each layer's future in the one outside it,
/// each with its own copy of the request.
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
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| frame.cors.allows(o))
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
    cors_headers(headers, origin, preflight);
    harden(headers, &path);
    record(&frame.metrics, &response, &method, &path, started);
    response
}

/// The CORS answer: only for a listed origin, with credentials.
fn cors_headers(headers: &mut HeaderMap, origin: Option<HeaderValue>, preflight: bool) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else {
        return;
    };
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

/// The security headers of every response.
fn harden(headers: &mut HeaderMap, path: &str) {
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("Referrer-Policy", HeaderValue::from_static("no-referrer"));
    // The API serves JSON only: nothing may be loaded, run or framed. Swagger UI needs its
    // scripts and styles, so /docs keeps the browser defaults; the account pages load their
    // own script and style, nothing else.
    if path.starts_with("/account/") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(pages::CSP),
        );
    } else if !path.starts_with("/docs") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    // Responses of the API may carry tokens or personal data, and the account pages a link's
    // token: no cache may keep them.
    let page = path.starts_with("/account/") && !path.ends_with(".js") && !path.ends_with(".css");
    if path.starts_with("/api/") || page {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The request's metrics and its log line (method, path, status, latency: never headers,
/// bodies or query strings, which may carry credentials).
fn record(metrics: &Metrics, response: &Response, method: &Method, path: &str, started: Instant) {
    let elapsed = started.elapsed();
    let operation = operation_label(response, path);
    let method = method_label(method);
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[operation, method, status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[operation, method])
        .observe(elapsed.as_secs_f64());
    if let Some(DependencyFailure(dependency)) = response.data::<DependencyFailure>() {
        metrics
            .dependency_errors
            .with_label_values(&[dependency])
            .inc();
    }
    let path = path
        .char_indices()
        .nth(LOGGED_PATH_CHARS)
        .map_or(path, |(end, _)| &path[..end]);
    tracing::info!(
        method,
        path = %path,
        operation,
        status = status.as_u16(),
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
}

/// Past the limit, up to this much more of a body is read and dropped before the 413, so a
/// client that is still sending reads the answer rather than a reset connection.
const DRAIN_BYTES: u64 = 1 << 20;
/// How long that draining may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads at most `MAX_BODY_BYTES` of the body before `next` sees the request; a larger body
/// gets 413.
async fn limit_body<E: Endpoint>(next: &E, mut req: Request) -> poem::Result<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        let drained = declared.is_some_and(|len| len <= MAX_BODY_BYTES as u64 + DRAIN_BYTES)
            && drain(req.take_body()).await;
        return Ok(too_large(drained));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        // Boxed: the read's future is larger than the rest of the request's, and a GET
        // (the guard's hot path) would otherwise carry its space.
        match Box::pin(read_limited(req.take_body())).await? {
            Some(bytes) => req.set_body(bytes),
            None => return Ok(too_large(true)),
        }
    }
    Ok(next.call(req).await?.into_response())
}

/// The body, or `None` when it is over the limit (then up to `DRAIN_BYTES` more of it have
/// been read and dropped).
async fn read_limited(body: poem::Body) -> Result<Option<Vec<u8>>, ApiError> {
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(body.into_bytes_stream());
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            ApiError::malformed(format!("the request body could not be read: {err}"))
        })?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            drain_stream(stream).await;
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

/// Reads and drops up to `DRAIN_BYTES` of `body` within `DRAIN_TIME`; whether it all came.
async fn drain(body: poem::Body) -> bool {
    drain_stream(std::pin::pin!(body.into_bytes_stream())).await
}

async fn drain_stream<S, B, E>(mut stream: std::pin::Pin<&mut S>) -> bool
where
    S: futures_util::Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    use futures_util::StreamExt;
    let read_all = async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.as_ref().len() as u64;
            if read > DRAIN_BYTES {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read_all)
        .await
        .unwrap_or(false)
}

/// The 413; with the rest of the body unread the connection is closed after it.
fn too_large(drained: bool) -> Response {
    let mut response = error::payload_too_large().as_response();
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::beside_label;

    #[test]
    fn only_the_root_the_docs_the_spec_and_the_metrics_are_served_beside_the_api() {
        for path in [
            "/",
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
