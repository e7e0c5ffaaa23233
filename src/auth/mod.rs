//! What decides who a caller is, below the HTTP layer: keys, tokens, password hashing and the
//! CSRF rule. Nothing here knows HTTP frameworks.

pub mod csrf;
pub mod keys;
pub mod mfa;
pub mod password;
pub mod rs256;
pub mod tokens;
