//! A request id per request: taken from `X-Request-Id` when it is a sane token, generated
//! otherwise, echoed back in the response and attached to every log line of the request.

use poem::Request;

pub const HEADER: &str = "x-request-id";

/// The client's id if it is 1-128 characters of `[A-Za-z0-9._-]` (anything else could smuggle
/// text into logs), else a new UUID.
pub fn for_request(req: &Request) -> String {
    req.headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}
