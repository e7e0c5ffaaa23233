//! The one integration test binary. Every `backend_tests!` test runs twice: on the embedded
//! default (`::embedded`) and on PostgreSQL + Redis (`::postgres_redis`).

mod helpers;

mod abuse;
mod admin;
mod architecture;
mod browser;
mod cli;
mod config;
mod cookies;
mod database;
mod discovery;
mod email;
mod first_run;
mod hardening;
mod health_and_docs;
mod keys;
mod lifecycle;
mod limit_store;
mod listing;
mod malformed;
mod mfa;
mod observability;
mod pgbouncer;
mod products;
mod proxy;
mod redis_servers;
mod scale_out;
mod secrets;
mod session_store;
mod sessions;
mod smtp;
mod token_security;

/// The example service other services copy, driven by `products.rs` (its `main` is unused here).
#[allow(dead_code)]
#[path = "../../examples/products_service.rs"]
mod products_service;
