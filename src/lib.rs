//! Latchkey: a self-hosted authentication service issuing RS256 JWTs with revocable sessions.

/// HTTP endpoints, one `#[OpenApi]` struct per resource.
pub mod api;
/// The account event trail.
pub mod audit;
/// Tokens, keys, password hashing and the request guard.
pub mod auth;
/// The command line: `serve`, `keys`, `migrate`, `user`, `openapi`.
pub mod cli;
/// Typed settings, read and validated once.
pub mod config;
/// Database connection, migrations, entities and queries.
pub mod db;
/// The one API error type and its JSON body.
pub mod error;
/// Rate limits and login backoff (Redis or in-process).
pub mod limits;
/// Revocable session and token-id storage (Redis or in-process).
pub mod session;
/// Building and running the HTTP application.
pub mod startup;
/// Shared application state handed to every endpoint.
pub mod state;
/// Tracing setup, Prometheus metrics and request ids.
pub mod telemetry;
