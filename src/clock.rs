//! The wall clock as the rest of tokengate reads it: seconds and milliseconds since the Unix
//! epoch. A leaf: it imports no other module, so the store, the history and the audit trail
//! can all stamp records without importing each other. A clock set before 1970 reads 0.

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
