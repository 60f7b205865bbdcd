//! What a run measured, and how it is printed (a Markdown table) and saved
//! (JSON, written by hand: the crate has no serde).

use std::fmt::Write as _;
use std::time::Duration;

/// One backend's traffic under one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendResult {
    /// Instance id.
    pub id: String,
    /// Its share of the initial aggregate capacity (0 for a joiner).
    pub capacity_share: f64,
    /// Its share of the requests sent in the steady phase (measured run
    /// before the first event).
    pub steady_share: f64,
    /// Requests sent to it during the measured run.
    pub requests: u64,
    /// Virtual time of the last request sent to it (from the start, warm-up
    /// included), if any.
    pub last_request: Option<Duration>,
}

/// One phase of the measured run (between events).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseResult {
    /// Start, from the start of the measured run.
    pub from: Duration,
    /// Requests that arrived in the phase.
    pub requests: u64,
    /// Median of the answered ones, ms.
    pub p50_ms: f64,
    /// 99th percentile of the answered ones, ms.
    pub p99_ms: f64,
    /// Failed calls and timeouts.
    pub errors: u64,
}

/// One policy's run.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyResult {
    /// Contender name.
    pub policy: String,
    /// Requests that arrived in the measured run.
    pub requests: u64,
    /// Of those, answered in time.
    pub ok: u64,
    /// Latency percentiles of answered requests, ms (arrival to completion,
    /// queueing included).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Slowest answered request, ms.
    pub max_ms: f64,
    /// Mean of answered requests, ms.
    pub mean_ms: f64,
    /// Failed without a timeout: killed backend, empty list, drop entry.
    pub failed: u64,
    /// Not answered within the timeout.
    pub timeouts: u64,
    /// Most requests waiting for a slot on any one backend during the measured run.
    pub max_queue: u64,
    /// Per backend, in index order.
    pub backends: Vec<BackendResult>,
    /// The measured run split at every event (steady, then after each event).
    pub phases: Vec<PhaseResult>,
    /// Plans published over the whole run.
    pub plans: u64,
}

impl PolicyResult {
    /// Failed calls and timeouts.
    pub fn errors(&self) -> u64 {
        self.failed + self.timeouts
    }

    /// Total variation distance between request shares and capacity shares in
    /// the steady phase: 0 = exactly proportional, 1 = disjoint.
    pub fn share_error(&self) -> f64 {
        0.5 * self
            .backends
            .iter()
            .map(|b| (b.steady_share - b.capacity_share).abs())
            .sum::<f64>()
    }
}

/// Nearest-rank percentile of sorted nanosecond values, in ms.
pub fn percentile_ms(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    // The epsilon keeps 0.99 × 1000 (= 990.000…01 in floating point) at rank 990.
    let rank = (q * sorted_ns.len() as f64 - 1e-9).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e6
}

/// Every policy's result for one scenario and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed of the arrivals.
    pub seed: u64,
    /// Measured run length.
    pub duration: Duration,
    /// Offered load, req/s.
    pub rate: f64,
    /// One per contender, in the order asked.
    pub results: Vec<PolicyResult>,
}

fn pct(x: f64) -> String {
    format!("{:.0}", x * 100.0)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

impl Report {
    /// A Markdown table: one row per policy.
    pub fn table(&self) -> String {
        let caps = self
            .results
            .first()
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| pct(b.capacity_share))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let phases = self
            .results
            .first()
            .map(|r| {
                r.phases
                    .iter()
                    .map(|p| format!("from {}s", p.from.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "scenario {}, seed {}, {} s measured, {:.0} req/s offered",
            self.scenario,
            self.seed,
            self.duration.as_secs_f64(),
            self.rate
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| policy | p50 ms | p99 ms | p99.9 ms | errors | timeouts | max queue | share % (capacity: {caps}) | share err | p99 ms by phase ({phases}) |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---|---:|---|");
        for r in &self.results {
            let shares = r
                .backends
                .iter()
                .map(|b| pct(b.steady_share))
                .collect::<Vec<_>>()
                .join(" ");
            let by_phase = r
                .phases
                .iter()
                .map(|p| format!("{:.0}", p.p99_ms))
                .collect::<Vec<_>>()
                .join(" / ");
            let _ = writeln!(
                t,
                "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {:.3} | {} |",
                r.policy,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.errors(),
                r.timeouts,
                r.max_queue,
                shares,
                r.share_error(),
                by_phase
            );
        }
        t
    }

    /// The report as a JSON object.
    pub fn to_json(&self) -> String {
        let mut j = String::new();
        let _ = write!(
            j,
            "{{\"scenario\":{},\"seed\":{},\"duration_s\":{},\"rate\":{},\"results\":[",
            json_str(&self.scenario),
            self.seed,
            json_f64(self.duration.as_secs_f64()),
            json_f64(self.rate)
        );
        for (i, r) in self.results.iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            let _ = write!(
                j,
                "\n{{\"policy\":{},\"requests\":{},\"ok\":{},\"p50_ms\":{},\"p99_ms\":{},\"p999_ms\":{},\"max_ms\":{},\"mean_ms\":{},\"errors\":{},\"failed\":{},\"timeouts\":{},\"max_queue\":{},\"plans\":{},\"share_error\":{},\"backends\":[",
                json_str(&r.policy),
                r.requests,
                r.ok,
                json_f64(r.p50_ms),
                json_f64(r.p99_ms),
                json_f64(r.p999_ms),
                json_f64(r.max_ms),
                json_f64(r.mean_ms),
                r.errors(),
                r.failed,
                r.timeouts,
                r.max_queue,
                r.plans,
                json_f64(r.share_error())
            );
            for (k, b) in r.backends.iter().enumerate() {
                if k > 0 {
                    j.push(',');
                }
                let _ = write!(
                    j,
                    "{{\"id\":{},\"capacity_share\":{},\"steady_share\":{},\"requests\":{}}}",
                    json_str(&b.id),
                    json_f64(b.capacity_share),
                    json_f64(b.steady_share),
                    b.requests
                );
            }
            j.push_str("],\"phases\":[");
            for (k, p) in r.phases.iter().enumerate() {
                if k > 0 {
                    j.push(',');
                }
                let _ = write!(
                    j,
                    "{{\"from_s\":{},\"requests\":{},\"p50_ms\":{},\"p99_ms\":{},\"errors\":{}}}",
                    json_f64(p.from.as_secs_f64()),
                    p.requests,
                    json_f64(p.p50_ms),
                    json_f64(p.p99_ms),
                    p.errors
                );
            }
            j.push_str("]}");
        }
        j.push_str("\n]}\n");
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&v, 0.5), 500.0);
        assert_eq!(percentile_ms(&v, 0.99), 990.0);
        assert_eq!(percentile_ms(&v, 0.999), 999.0);
        assert_eq!(percentile_ms(&v, 1.0), 1000.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        assert_eq!(percentile_ms(&[3_000_000], 0.999), 3.0);
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
