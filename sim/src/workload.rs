//! The offered load: open-loop Poisson arrivals, generated once per run and
//! replayed identically for every policy (common random numbers).
//!
//! Each arrival carries everything random about the request: its time, its
//! client, its key (hash policies) and its *work*, a unit-mean exponential
//! draw. A backend serves it in `work × service_ms`, so the same request costs
//! the same on a given backend under every policy and the comparison between
//! policies is not blurred by different service-time draws.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::scenario::Scenario;

/// One request as offered by the load generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Virtual time, ns since the start (warm-up included).
    pub at: u64,
    /// Which client sends it.
    pub client: u32,
    /// Request key for hash policies.
    pub key: u64,
    /// Unit-mean exponential service demand.
    pub work: f64,
}

/// A run's arrivals, in time order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workload {
    /// Arrivals sorted by `at`.
    pub arrivals: Vec<Arrival>,
}

/// Independent RNG streams derived from one seed (splitmix64 of seed and stream).
pub fn stream_rng(seed: u64, stream: u64) -> StdRng {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// The RNG stream of arrivals.
pub const ARRIVAL_STREAM: u64 = 1;

/// An exponential draw of mean `mean` by inversion: `-mean × ln(1 − U)`.
pub fn exponential(rng: &mut impl Rng, mean: f64) -> f64 {
    let u: f64 = rng.random();
    -mean * (1.0 - u).ln()
}

/// Poisson arrivals at `rate` per second from time 0 until `span`, in time
/// order: each gap is an exponential draw from `rng`, and after it
/// `request(at_ns, rng)` draws the rest of that request from the same stream.
/// The simulator and the real benchmark's load generator (`lb-loadgen`) both
/// plan their arrivals with it.
pub fn poisson<R: Rng, T>(
    rng: &mut R,
    rate: f64,
    span: Duration,
    mut request: impl FnMut(u64, &mut R) -> T,
) -> Vec<T> {
    let end = span.as_nanos() as f64;
    let mean_gap_ns = 1e9 / rate;
    let mut arrivals = Vec::with_capacity((end / mean_gap_ns * 1.1) as usize + 16);
    let mut t = 0.0;
    loop {
        t += exponential(rng, mean_gap_ns);
        if t >= end {
            break;
        }
        arrivals.push(request(t as u64, rng));
    }
    arrivals
}

/// The cumulative distribution of Zipf's law over `n` keys with exponent
/// `s` (key `k` weighs `1 / (k + 1)^s`), or empty for `s ≤ 0` (uniform).
fn zipf_cdf(n: u64, s: f64) -> Vec<f64> {
    if !(s.is_finite() && s > 0.0) {
        return Vec::new();
    }
    let mut cdf: Vec<f64> = (1..=n)
        .scan(0.0, |acc, k| {
            *acc += (k as f64).powf(-s);
            Some(*acc)
        })
        .collect();
    let total = cdf.last().copied().unwrap_or(1.0);
    cdf.iter_mut().for_each(|c| *c /= total);
    cdf
}

impl Workload {
    /// Poisson arrivals at `scenario.rate()` over warm-up + duration, each sent
    /// by a uniformly chosen client.
    pub fn generate(scenario: &Scenario, seed: u64) -> Self {
        let mut rng = stream_rng(seed, ARRIVAL_STREAM);
        let clients = scenario.clients.max(1);
        let key_space = scenario.key_space.max(1);
        let zipf = zipf_cdf(key_space, scenario.key_zipf_s);
        let arrivals = poisson(
            &mut rng,
            scenario.rate(),
            scenario.warmup + scenario.duration,
            |at, rng| Arrival {
                at,
                client: rng.random_range(0..clients),
                key: if zipf.is_empty() {
                    rng.random_range(0..key_space)
                } else {
                    let u: f64 = rng.random();
                    zipf.partition_point(|&c| c < u).min(zipf.len() - 1) as u64
                },
                work: exponential(rng, 1.0),
            },
        );
        Workload { arrivals }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_mean_matches() {
        let mut rng = stream_rng(7, 0);
        let n = 200_000;
        let mean = (0..n).map(|_| exponential(&mut rng, 20.0)).sum::<f64>() / n as f64;
        // Standard error is 20/sqrt(n) ≈ 0.045 ms; allow ~5 of them.
        assert!((mean - 20.0).abs() < 0.25, "mean {mean}");
    }

    #[test]
    fn arrivals_have_the_offered_rate_and_are_reproducible() {
        let s = Scenario::hetero_degrade(Duration::from_secs(10));
        let w = Workload::generate(&s, 1);
        let expected = 1960.0 * 13.0;
        let n = w.arrivals.len() as f64;
        assert!((n - expected).abs() < 4.0 * expected.sqrt(), "{n}");
        assert!(w.arrivals.windows(2).all(|p| p[0].at <= p[1].at));
        assert_eq!(w, Workload::generate(&s, 1));
        assert_ne!(w, Workload::generate(&s, 2));
    }
}
