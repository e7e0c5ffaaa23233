//! Wall-clock time as the stores keep it: Unix seconds for expiries (Redis `EXPIREAT`, token
//! `exp`), Unix milliseconds for rate-limit windows and backoff.

/// Now, in Unix seconds.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
