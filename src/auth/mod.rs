//! Everything that decides who a request is: keys, tokens, passwords, cookies, CSRF and the
//! guard that protected endpoints declare.

pub mod cookies;
pub mod csrf;
pub mod guard;
pub mod keys;
pub mod password;
pub mod rs256;
pub mod tokens;
