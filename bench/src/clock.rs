//! Wall-clock time as the tools pass it between processes: `lb-bench` tells
//! `lb-loadgen` when to start and `lb-backend` when to degrade, in
//! milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
