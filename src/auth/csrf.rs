//! CSRF defence for cookie-authenticated requests (API.md section 3).
//!
//! A browser attaches cookies to cross-site requests, so a request authenticated by cookie with
//! an unsafe method must prove it comes from an allowed origin: `Origin` (or, without it, the
//! origin of `Referer`) must be listed, or the browser must say `Sec-Fetch-Site: same-origin`.
//! Bearer requests are exempt: a browser never attaches an `Authorization` header by itself.

use poem::{
    Request,
    http::{Method, Uri},
};

use crate::error::{ApiError, ErrorCode};

/// Methods that change state and therefore need the check.
pub fn is_unsafe(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Passes when the request's origin is allowed; otherwise 403 `csrf_rejected`.
pub fn check(req: &Request, allowed_origins: &[String]) -> Result<(), ApiError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site") == Some("same-origin") {
        return Ok(());
    }
    let origin = match header("origin") {
        Some(origin) => Some(origin.trim_end_matches('/').to_owned()),
        None => header("referer").and_then(origin_of),
    };
    match origin {
        Some(origin)
            if allowed_origins
                .iter()
                .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(&origin)) =>
        {
            Ok(())
        }
        _ => Err(ApiError::new(
            ErrorCode::CsrfRejected,
            "cookie-authenticated requests must come from an allowed origin",
        )),
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referer_origin_drops_path_and_query() {
        assert_eq!(
            origin_of("https://app.example.com:8443/a/b?c=d").as_deref(),
            Some("https://app.example.com:8443")
        );
        assert_eq!(origin_of("not a url"), None);
    }
}
