//! The one integration test binary. Every `backend_tests!` test runs twice: on the embedded
//! default (`::embedded`) and on PostgreSQL + Redis (`::postgres_redis`).

mod helpers;

mod abuse;
mod admin;
mod architecture;
mod cli;
mod config;
mod cookies;
mod database;
mod first_run;
mod hardening;
mod health_and_docs;
mod keys;
mod lifecycle;
mod limit_store;
mod malformed;
mod observability;
mod proxy;
mod secrets;
mod session_store;
mod sessions;
mod token_security;
mod verifier;

/// The verifier example other services copy, driven by `verifier.rs` (its `main` is unused here).
#[allow(dead_code)]
#[path = "../../examples/verify_service.rs"]
mod verify_service;
