//! The three account pages that emailed links open (`/account/verify-email`,
//! `/account/reset-password`, `/account/confirm-email`): small server-rendered forms whose
//! script (served from here, the only one their Content-Security-Policy allows) sends the
//! token to the API. Opening a page spends nothing: a mail scanner following the link leaves
//! it usable.

use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, context};
use poem::{
    Response, handler,
    http::{StatusCode, header},
    web::Query,
};
use serde::Deserialize;

static PAGES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    let sources = [
        (
            "layout.html",
            include_str!("../../templates/account/layout.html"),
        ),
        (
            "verify-email.html",
            include_str!("../../templates/account/verify-email.html"),
        ),
        (
            "reset-password.html",
            include_str!("../../templates/account/reset-password.html"),
        ),
        (
            "confirm-email.html",
            include_str!("../../templates/account/confirm-email.html"),
        ),
    ];
    for (name, source) in sources {
        if let Err(err) = env.add_template(name, source) {
            tracing::error!(template = name, error = %err, "broken account page template");
        }
    }
    env
});

/// The link's query: its token.
#[derive(Deserialize)]
pub struct LinkQuery {
    token: Option<String>,
}

/// The longest token a page echoes: real ones are 43 characters.
const MAX_TOKEN_CHARS: usize = 128;

fn page(name: &str, title: &str, query: Result<Query<LinkQuery>, poem::Error>) -> Response {
    let token = query
        .ok()
        .and_then(|q| q.0.token)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_CHARS);
    let rendered = PAGES
        .get_template(name)
        .and_then(|t| t.render(context! { title => title, token => token }));
    match rendered {
        Ok(html) => Response::builder()
            .content_type("text/html; charset=utf-8")
            .body(html),
        Err(err) => {
            tracing::error!(page = name, error = %err, "account page");
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .content_type("text/plain; charset=utf-8")
                .body("internal error")
        }
    }
}

/// `GET /account/verify-email?token=...`
#[handler]
pub fn verify_email(query: Result<Query<LinkQuery>, poem::Error>) -> Response {
    page("verify-email.html", "Confirm your email address", query)
}

/// `GET /account/reset-password?token=...`
#[handler]
pub fn reset_password(query: Result<Query<LinkQuery>, poem::Error>) -> Response {
    page("reset-password.html", "Choose a new password", query)
}

/// `GET /account/confirm-email?token=...`
#[handler]
pub fn confirm_email(query: Result<Query<LinkQuery>, poem::Error>) -> Response {
    page(
        "confirm-email.html",
        "Confirm your new email address",
        query,
    )
}

/// `GET /account/account.js`
#[handler]
pub fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../templates/account/account.js"),
    )
}

/// `GET /account/account.css`
#[handler]
pub fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../templates/account/account.css"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "public, max-age=3600")
        .body(body)
}

/// The pages' Content-Security-Policy: their own script, style and API only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
                       frame-ancestors 'none'";
