//! Daemon settings (built by `main.rs` from flags; tests build them directly).

use std::path::PathBuf;
use std::time::Duration;

use crate::policy::{PolicyKind, DEFAULT_MAX_LIST_LEN};

/// How often backends report by default: the load-driven policies react
/// within one report, and the simulator showed 250 ms halving hetero-degrade's
/// p99 after a backend slows down compared with 1 s (see BENCHMARKS.md).
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// Everything `run` needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where sled keeps its files.
    pub data_dir: PathBuf,
    /// How often backends should report load.
    pub report_interval: Duration,
    /// TTL for registrations that do not ask for one (stream silence or lease).
    pub default_ttl: Duration,
    /// After a restart, how long persisted instances stay listed while their
    /// backends reconnect.
    pub restore_grace: Duration,
    /// How often clients should send call statistics.
    pub stats_interval: Duration,
    /// Policy of services nobody set one for.
    pub default_policy: PolicyKind,
    /// Default cap on a list's length for services without a policy override.
    pub max_list_len: u32,
    /// How long a graceful shutdown waits for open streams and calls.
    pub drain_timeout: Duration,
    /// How long a new stream may take to send its first message.
    pub first_message_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Config {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            report_interval: DEFAULT_REPORT_INTERVAL,
            default_ttl: Duration::from_secs(5),
            restore_grace: Duration::from_secs(15),
            stats_interval: Duration::from_millis(1000),
            default_policy: PolicyKind::default(),
            max_list_len: DEFAULT_MAX_LIST_LEN,
            drain_timeout: Duration::from_secs(5),
            first_message_timeout: Duration::from_secs(10),
            metrics_listen: None,
        }
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare number is milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by ms, s, m or h"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
