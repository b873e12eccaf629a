//! Owns wall-clock milliseconds, the unit of every `*_ms` timestamp in the messages.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_ms() -> i64 {
    ms_since_epoch(SystemTime::now())
}

/// Milliseconds from the Unix epoch to `t` (0 if `t` is before it).
pub fn ms_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
