//! Process CPU utilization, sampled from `/proc/self/stat`.
//!
//! Utilization over an interval is `Δ(utime + stime) / (Δwall × cores)`, so 1.0
//! means every core was busy with this process (the unit of
//! `LoadReport.cpu_utilization`). Fields per proc(5). On other systems, or when
//! `/proc` cannot be read, there is no sample and the reporter sends 0.
//!
//! ```
//! let mut cpu = lb_client::CpuSampler::new();
//! // ... once per load report:
//! let cpu_utilization = cpu.sample().unwrap_or(0.0);
//! assert!(cpu_utilization >= 0.0);
//! ```

use std::time::{Duration, Instant};

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux ABI in use; hard-coded to stay free
/// of the libc crate.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Samples this process's CPU utilization between successive calls. The
/// [`crate::Reporter`]'s default sampler uses one; a custom
/// [`crate::reporter::Sampler`] can too.
///
/// ```
/// let mut cpu = lb_client::CpuSampler::new();
/// let _work: u64 = (0..1_000_000u64).map(std::hint::black_box).sum(); // serve requests ...
/// let used = cpu.sample(); // since `new`; 1.0 = every core busy with this process
/// if std::fs::metadata("/proc/self/stat").is_ok() {
///     assert!(used.is_some_and(|u| u >= 0.0));
/// } // elsewhere: None, and the reporter sends 0
/// ```
#[derive(Debug)]
pub struct CpuSampler {
    last: Option<(u64, Instant)>,
    cores: f64,
}

impl Default for CpuSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSampler {
    /// Starts a sampler; the first [`CpuSampler::sample`] covers the time since.
    ///
    /// ```
    /// let mut cpu = lb_client::CpuSampler::new(); // at start-up
    /// // ... later, once per load report:
    /// let cpu_utilization = cpu.sample().unwrap_or(0.0);
    /// assert!(cpu_utilization >= 0.0);
    /// ```
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuSampler {
            last: read_ticks().map(|t| (t, Instant::now())),
            cores: cores as f64,
        }
    }

    /// Utilization since the previous call (1.0 = all cores busy), or `None` when
    /// `/proc/self/stat` is unavailable or no time has passed.
    ///
    /// ```
    /// let mut cpu = lb_client::CpuSampler::new();
    /// let first = cpu.sample(); // covers the time since `new`
    /// let second = cpu.sample(); // covers the time since `first`
    /// assert_eq!(first.is_some(), second.is_some()); // both None without /proc
    /// ```
    pub fn sample(&mut self) -> Option<f64> {
        let now = Instant::now();
        let ticks = read_ticks()?;
        let prev = self.last.replace((ticks, now));
        let (prev_ticks, prev_at) = prev?;
        utilization(prev_ticks, ticks, now.duration_since(prev_at), self.cores)
    }
}

/// `Δticks / (elapsed × cores)`; `None` when no time has passed.
fn utilization(prev: u64, now: u64, elapsed: Duration, cores: f64) -> Option<f64> {
    let wall = elapsed.as_secs_f64() * cores.max(1.0);
    if wall <= 0.0 {
        return None;
    }
    let busy = now.saturating_sub(prev) as f64 / CLOCK_TICKS_PER_SEC;
    Some(busy / wall)
}

#[cfg(target_os = "linux")]
fn read_ticks() -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

#[cfg(not(target_os = "linux"))]
fn read_ticks() -> Option<u64> {
    None
}

/// `utime + stime` (fields 14 and 15) from a `/proc/<pid>/stat` line.
///
/// Field 2 (`comm`) is parenthesised and may itself contain spaces and `)`, so
/// fields are counted from after the LAST `)`, where field 3 (`state`) starts.
fn parse_stat_ticks(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "12345 (lb-server) S 1 12345 12345 0 -1 4194560 1234 0 0 0 \
                        250 50 0 0 20 0 8 0 123456 1000000 500 18446744073709551615";

    #[test]
    fn parses_utime_plus_stime() {
        assert_eq!(parse_stat_ticks(LINE), Some(300));
    }

    #[test]
    fn comm_with_spaces_and_parens() {
        let line = LINE.replace("(lb-server)", "(my (weird) prog) x)");
        assert_eq!(parse_stat_ticks(&line), Some(300));
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(parse_stat_ticks(""), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks(&LINE.replace(" 250 ", " nope ")), None);
    }

    #[test]
    fn utilization_math() {
        // 200 ticks = 2 CPU-seconds over 1 s on 4 cores = half the machine.
        let u = utilization(100, 300, Duration::from_secs(1), 4.0);
        assert_eq!(u, Some(0.5));
        assert_eq!(utilization(5, 5, Duration::ZERO, 4.0), None);
        // A counter that went backwards (should not happen) reads as idle.
        assert_eq!(utilization(9, 5, Duration::from_secs(1), 1.0), Some(0.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        assert!(read_ticks().is_some());
        let mut s = CpuSampler::new();
        std::thread::sleep(Duration::from_millis(20)); // real wall time is the input here
        let u = s.sample().unwrap();
        assert!((0.0..=64.0).contains(&u), "{u}");
    }
}
