//! SeaORM entities, one module per table.

pub mod audit_event;
pub mod link_token;
pub mod mail_outbox;
pub mod recovery_code;
pub mod totp_factor;
pub mod user;
