//! What a run measured, and how it is printed (a Markdown table) and saved
//! (JSON, written by hand with fixed decimals). With the `serde` feature the
//! table's figures ([`Summary`]) read back from that JSON.

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

/// Nearest-rank percentile `q` (0 to 1) of sorted values: the smallest value
/// with at least a fraction `q` of them at or below it; `None` when empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    // The epsilon keeps 0.99 × 1000 (= 990.000…01 in floating point) at rank 990.
    let rank = (q * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Nearest-rank percentile of sorted nanosecond values, in ms (0 when empty).
pub fn percentile_ms(sorted_ns: &[u64], q: f64) -> f64 {
    nearest_rank(sorted_ns, q).map_or(0.0, |ns| ns as f64 / 1e6)
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

/// What the comparison table shows of a [`Report`]: its figures under the
/// names [`Report::to_json`] gives them. With the `serde` feature it reads
/// back from that JSON (other fields ignored), which is how `lb-report`
/// renders the simulator's table in BENCHMARKS.md.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seed of the arrivals.
    pub seed: u64,
    /// Measured run length, s.
    pub duration_s: f64,
    /// Offered load, req/s.
    pub rate: f64,
    /// One per contender, in the order asked.
    pub results: Vec<PolicySummary>,
}

/// One policy's figures in a [`Summary`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub struct PolicySummary {
    /// Contender name.
    pub policy: String,
    /// Median of answered requests, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// [`PolicyResult::errors`].
    pub errors: u64,
    /// Failed without a timeout (0 in JSON written before the field existed).
    #[cfg_attr(feature = "serde", serde(default))]
    pub failed: u64,
    /// Not answered within the timeout.
    pub timeouts: u64,
    /// Most requests waiting on one backend.
    pub max_queue: u64,
    /// [`PolicyResult::share_error`].
    pub share_error: f64,
    /// Per backend, in index order.
    pub backends: Vec<BackendSummary>,
    /// Steady, then after each event.
    pub phases: Vec<PhaseSummary>,
}

/// One backend in a [`PolicySummary`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub struct BackendSummary {
    /// Instance id.
    pub id: String,
    /// Its share of the initial capacity (fraction).
    pub capacity_share: f64,
    /// Its share of the steady phase's requests (fraction).
    pub steady_share: f64,
}

/// One phase in a [`PolicySummary`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub struct PhaseSummary {
    /// Start, s from the start of the measured run.
    pub from_s: f64,
    /// 99th percentile of the answered ones, ms.
    pub p99_ms: f64,
}

impl Summary {
    /// The comparison table as `lb-sim` prints it: a line naming the run,
    /// then a Markdown table with one row per policy.
    pub fn table(&self) -> String {
        let first = self.results.first();
        let caps = first
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| pct(b.capacity_share))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let phases = first
            .map(|r| {
                r.phases
                    .iter()
                    .map(|p| format!("from {}s", p.from_s))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "scenario {}, seed {}, {} s measured, {:.0} req/s offered",
            self.scenario, self.seed, self.duration_s, self.rate
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
            let _ = writeln!(
                t,
                "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {:.3} | {} |",
                r.policy,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.errors,
                r.timeouts,
                r.max_queue,
                shares,
                r.share_error,
                r.p99_by_phase()
            );
        }
        t
    }

    /// The figures of the contender named `name`.
    pub fn policy(&self, name: &str) -> Option<&PolicySummary> {
        self.results.iter().find(|r| r.policy == name)
    }
}

impl PolicySummary {
    /// The p99 of each phase in whole ms: `23 / 870 / 995`.
    pub fn p99_by_phase(&self) -> String {
        self.phases
            .iter()
            .map(|p| format!("{:.0}", p.p99_ms))
            .collect::<Vec<_>>()
            .join(" / ")
    }
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
    /// A Markdown table: one row per policy ([`Summary::table`]).
    pub fn table(&self) -> String {
        self.summary().table()
    }

    /// What the table shows, as the JSON holds it.
    pub fn summary(&self) -> Summary {
        let results = self
            .results
            .iter()
            .map(|r| PolicySummary {
                policy: r.policy.clone(),
                p50_ms: r.p50_ms,
                p99_ms: r.p99_ms,
                p999_ms: r.p999_ms,
                errors: r.errors(),
                failed: r.failed,
                timeouts: r.timeouts,
                max_queue: r.max_queue,
                share_error: r.share_error(),
                backends: r
                    .backends
                    .iter()
                    .map(|b| BackendSummary {
                        id: b.id.clone(),
                        capacity_share: b.capacity_share,
                        steady_share: b.steady_share,
                    })
                    .collect(),
                phases: r
                    .phases
                    .iter()
                    .map(|p| PhaseSummary {
                        from_s: p.from.as_secs_f64(),
                        p99_ms: p.p99_ms,
                    })
                    .collect(),
            })
            .collect();
        Summary {
            scenario: self.scenario.clone(),
            seed: self.seed,
            duration_s: self.duration.as_secs_f64(),
            rate: self.rate,
            results,
        }
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
