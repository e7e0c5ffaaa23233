//! CSRF defence for cookie-authenticated requests (API.md section 3).
//!
//! A browser attaches cookies to cross-site requests, so a request authenticated by cookie with
//! an unsafe method must prove it comes from an allowed origin: `Origin` (or, without it, the
//! origin of `Referer`) must be listed, or the browser must say `Sec-Fetch-Site: same-origin`.
//! Bearer requests are exempt: a browser never attaches an `Authorization` header by itself.

use http::{Method, Uri};

/// The request headers the check reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Provenance<'a> {
    pub sec_fetch_site: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
}

/// A cookie-authenticated unsafe request that did not come from an allowed origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cookie-authenticated requests must come from an allowed origin")]
pub struct CsrfRejected;

/// Methods that change state and therefore need the check.
pub fn is_unsafe(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Passes when the request's origin is allowed.
pub fn check(request: Provenance<'_>, allowed_origins: &[String]) -> Result<(), CsrfRejected> {
    if request.sec_fetch_site == Some("same-origin") {
        return Ok(());
    }
    let origin = match request.origin {
        Some(origin) => Some(origin.trim_end_matches('/').to_owned()),
        None => request.referer.and_then(origin_of),
    };
    match origin {
        Some(origin)
            if allowed_origins
                .iter()
                .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(&origin)) =>
        {
            Ok(())
        }
        _ => Err(CsrfRejected),
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

    #[test]
    fn only_listed_origins_or_same_origin_fetches_pass() {
        let allowed = ["https://app.example.com".to_owned()];
        let with = |origin, referer, site| Provenance {
            sec_fetch_site: site,
            origin,
            referer,
        };
        assert!(check(with(Some("https://app.example.com/"), None, None), &allowed).is_ok());
        assert!(
            check(
                with(None, Some("https://app.example.com/x"), None),
                &allowed
            )
            .is_ok()
        );
        assert!(check(with(None, None, Some("same-origin")), &allowed).is_ok());
        assert!(check(with(Some("https://evil.example"), None, None), &allowed).is_err());
        assert!(check(with(None, None, Some("cross-site")), &allowed).is_err());
        assert!(check(with(None, None, None), &allowed).is_err());
    }
}
