//! The wall clock, read in one place. The sans-I/O parts (SMTP, ticket key
//! ring, session cache) never read it: their callers pass the time in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Unix seconds as SQLite keeps them.
pub fn unix_now() -> i64 {
    i64::try_from(unix_secs()).unwrap_or(i64::MAX)
}
