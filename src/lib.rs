//! Latchkey: a self-hosted authentication service issuing RS256 JWTs with revocable sessions.
//!
//! The layers, top down (each uses only those below it): `cli` (the entry) -> `startup` ->
//! `api` (HTTP adapters) -> `state` -> `accounts` (the flows) -> `mail`, `audit`, `auth`,
//! `session`, `limits`, `db` -> `store`, `client`, `telemetry`; `config` reads the settings
//! each layer defines.

/// Every account flow: register, login, refresh, logout, profile and admin changes, the guard.
pub mod accounts;
/// HTTP endpoints, one `#[OpenApi]` struct per resource, and the HTTP error type.
pub mod api;
/// The account event trail.
pub mod audit;
/// Keys, tokens, password hashing and the CSRF rule.
pub mod auth;
/// The command line: `serve`, `keys`, `migrate`, `user`, `openapi`.
pub mod cli;
/// Who is calling: the client's IP and user agent.
pub mod client;
/// Typed settings, read and validated once.
pub mod config;
/// Database connection, migrations, entities and repositories.
pub mod db;
/// Rate limits and login backoff (Redis or in-process).
pub mod limits;
/// Mail templates, SMTP and the development outbox folder, and the delivery worker.
pub mod mail;
/// Revocable session and token-id storage (Redis or in-process).
pub mod session;
/// Building and running the HTTP application.
pub mod startup;
/// Shared application state handed to every endpoint.
pub mod state;
/// Plumbing the session store and the limits share: Redis, the clock, in-process maps.
pub mod store;
/// Tracing setup, Prometheus metrics and request ids.
pub mod telemetry;
