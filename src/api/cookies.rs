//! The three browser cookies (API.md section 4), all built here and nowhere else.
//!
//! - `access_token`: HttpOnly (scripts cannot steal it), SameSite=Lax, Path=/.
//! - `refresh_token`: HttpOnly, always Secure, SameSite=Strict, and Path=/api/v1/auth so the
//!   browser sends it only to the auth endpoints, never to the rest of the API.
//! - `logged_in=true`: readable by scripts so a page can tell it has a session without
//!   being able to read any token.

use std::time::Duration;

use poem::web::cookie::{Cookie, CookieJar, SameSite};

use crate::config::Settings;

pub const ACCESS_COOKIE: &str = "access_token";
pub const REFRESH_COOKIE: &str = "refresh_token";
pub const LOGGED_IN_COOKIE: &str = "logged_in";
pub const REFRESH_COOKIE_PATH: &str = "/api/v1/auth";

/// Cookie attributes from the settings.
#[derive(Debug, Clone, Copy)]
pub struct CookiePolicy<'a> {
    /// `COOKIE_SECURE` (forced on in production).
    pub secure: bool,
    pub domain: Option<&'a str>,
    /// Lifetimes of the access and refresh cookies: those of their tokens.
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl<'a> CookiePolicy<'a> {
    /// The policy the settings describe.
    pub fn of(settings: &'a Settings) -> Self {
        Self {
            secure: settings.cookies.secure,
            domain: settings.cookies.domain.as_deref(),
            access_ttl: settings.tokens.access_ttl,
            refresh_ttl: settings.tokens.refresh_ttl,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Access,
    Refresh,
    LoggedIn,
}

impl CookiePolicy<'_> {
    fn build(&self, kind: Kind, value: &str, max_age: Option<Duration>) -> Cookie {
        let (name, path, same_site, http_only, secure) = match kind {
            Kind::Access => (ACCESS_COOKIE, "/", SameSite::Lax, true, self.secure),
            // The refresh cookie is the long-lived credential: Secure regardless of
            // COOKIE_SECURE (browsers accept Secure cookies from http://localhost).
            Kind::Refresh => (
                REFRESH_COOKIE,
                REFRESH_COOKIE_PATH,
                SameSite::Strict,
                true,
                true,
            ),
            Kind::LoggedIn => (LOGGED_IN_COOKIE, "/", SameSite::Lax, false, self.secure),
        };
        let mut cookie = Cookie::new_with_str(name, value);
        cookie.set_path(path);
        cookie.set_same_site(same_site);
        cookie.set_http_only(http_only);
        cookie.set_secure(secure);
        if let Some(domain) = self.domain {
            cookie.set_domain(domain);
        }
        match max_age {
            Some(max_age) => cookie.set_max_age(max_age),
            None => {
                // An expired cookie with the same name, Path and Domain deletes it.
                cookie.set_max_age(Duration::ZERO);
                cookie.set_expires(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
            }
        }
        cookie
    }

    /// Sets the three cookies after a login or a refresh.
    pub fn set_session(&self, jar: &CookieJar, access_token: &str, refresh_token: &str) {
        jar.add(self.build(Kind::Access, access_token, Some(self.access_ttl)));
        jar.add(self.build(Kind::Refresh, refresh_token, Some(self.refresh_ttl)));
        jar.add(self.build(Kind::LoggedIn, "true", Some(self.access_ttl)));
    }

    /// Clears the three cookies (logout, logout-all).
    pub fn clear_session(&self, jar: &CookieJar) {
        for kind in [Kind::Access, Kind::Refresh, Kind::LoggedIn] {
            jar.add(self.build(kind, "", None));
        }
    }
}
