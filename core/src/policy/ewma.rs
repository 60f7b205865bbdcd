//! Latency EWMA for `fastest_response`: an exponentially weighted moving average
//! of each instance's response time, decayed by wall time, and weights
//! proportional to its inverse.
//!
//! Source: tower's `tower/src/load/peak_ewma.rs` (itself after Finagle's
//! `PeakEwma` load metric). Like tower, the smoothing factor depends on the time
//! since the last update rather than on a sample count, so the estimate has a
//! fixed *time* constant `τ = decay` whatever the traffic:
//!
//! ```text
//! α_t    = 1 − exp(−Δt / τ)
//! value' = value + α (mean − value)
//! ```
//!
//! Differences from tower, and why:
//! - **Batches, not single responses.** Backends and clients report once per
//!   interval: `count` calls with a mean latency. A batch of many calls is
//!   stronger evidence than one call, so it counts as `k = √min(count, 64)`
//!   updates of `α_t` each: `α = 1 − (1 − α_t)^k = 1 − exp(−k Δt / τ)`. The
//!   square root is the standard-error argument (a mean over `n` calls is `√n`
//!   times less noisy); the cap at 64 calls (`k ≤ 8`) is because calls in one
//!   interval are correlated (same GC pause, same queue), so more of them are not
//!   more independent evidence. So `decay` is the time constant for a trickle of
//!   single calls; a busy instance (≥ 64 calls per report) forgets 8× faster.
//!   A batch with `count = 0` or a non-finite or negative mean is ignored.
//! - **No peak.** tower jumps straight to any sample above the estimate (the
//!   "peak" in PeakEWMA); our samples are already interval means, and the
//!   `count` weighting above lets a busy slow instance move fast anyway.
//! - **Relaxation toward a prior.** [`LatencyEwma::estimate`] decays the stored
//!   value toward `prior_us` (e.g. the service mean) with the same time constant
//!   while no new samples arrive: `prior + (value − prior) · exp(−Δt / τ)`. An
//!   instance that had one slow sample therefore drifts back toward the pack,
//!   gets traffic again and is re-measured, instead of being starved forever
//!   (tower gets the same effect from a decaying estimate plus a pending-request
//!   penalty).
//!
//! [`weights`] turns estimates into `fastest_response` weights `∝ 1 / estimate`,
//! normalised to mean 1. Estimates below 1 ns are taken as 1 ns so nothing is
//! infinite. `decay = 0` means "no memory": the newest batch is the estimate,
//! and the estimate snaps to the prior as soon as time has passed.

use std::time::Duration;
use std::time::Instant;

/// Batches larger than this count as this many calls.
pub const MAX_BATCH_CALLS: u64 = 64;

/// Estimates below this many microseconds are treated as this (1 ns).
pub const MIN_ESTIMATE_US: f64 = 1e-3;

/// A latency estimate in microseconds, with the instant it was last updated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyEwma {
    /// Current estimate; NaN when no valid sample has been folded in yet.
    value_us: f64,
    /// When `value_us` was last updated.
    updated: Instant,
}

fn valid_latency(us: f64) -> bool {
    us.is_finite() && us >= 0.0
}

/// The fraction of the old value kept after `dt`: `exp(−dt / decay)`.
fn kept(dt: Duration, decay: Duration, weight: f64) -> f64 {
    if decay.is_zero() {
        return if dt.is_zero() { 1.0 } else { 0.0 };
    }
    let x = weight * dt.as_secs_f64() / decay.as_secs_f64();
    if x.is_finite() {
        (-x).exp()
    } else {
        0.0
    }
}

impl LatencyEwma {
    /// Starts from a first batch's mean latency. A non-finite or negative mean
    /// leaves the estimate empty: the first valid [`observe`](Self::observe)
    /// sets it, and until then [`estimate`](Self::estimate) is the prior.
    pub fn new(first_mean_us: f64, now: Instant) -> Self {
        LatencyEwma {
            value_us: if valid_latency(first_mean_us) {
                first_mean_us
            } else {
                f64::NAN
            },
            updated: now,
        }
    }

    /// Folds in `count` calls whose mean latency was `mean_us`, observed at `now`.
    ///
    /// `α = 1 − exp(−k · Δt / decay)` with `k = √min(count, 64)` (see the module
    /// docs). Ignores `count == 0` and non-finite or negative means. A `now`
    /// earlier than the last update counts as `Δt = 0`.
    pub fn observe(&mut self, mean_us: f64, count: u64, now: Instant, decay: Duration) {
        if count == 0 || !valid_latency(mean_us) {
            return;
        }
        if !self.value_us.is_finite() {
            self.value_us = mean_us;
            self.updated = now;
            return;
        }
        let dt = now.saturating_duration_since(self.updated);
        let k = (count.min(MAX_BATCH_CALLS) as f64).sqrt();
        let keep = kept(dt, decay, k);
        self.value_us = mean_us + (self.value_us - mean_us) * keep;
        self.updated = self.updated.max(now);
    }

    /// The estimate at `now`, relaxed toward `prior_us` with the same time
    /// constant since the last update. A non-finite or negative prior disables
    /// relaxation; with no sample yet the estimate is the prior itself.
    pub fn estimate(&self, now: Instant, decay: Duration, prior_us: f64) -> f64 {
        let has_prior = valid_latency(prior_us);
        if !self.value_us.is_finite() {
            return prior_us;
        }
        if !has_prior {
            return self.value_us;
        }
        let dt = now.saturating_duration_since(self.updated);
        prior_us + (self.value_us - prior_us) * kept(dt, decay, 1.0)
    }

    /// The stored estimate, not relaxed toward any prior (`None` before the
    /// first valid sample).
    pub fn value(&self) -> Option<f64> {
        self.value_us.is_finite().then_some(self.value_us)
    }

    /// The last update's instant.
    pub fn updated(&self) -> Instant {
        self.updated
    }
}

/// `fastest_response` weights: proportional to `1 / estimate`, normalised so
/// the mean is 1.0. `None` (no data yet), or a non-finite or negative estimate,
/// gets the mean of the others, which is 1.0 after normalising (and all are
/// 1.0 if none has data).
pub fn weights(estimates_us: &[Option<f64>]) -> Vec<f64> {
    let mut raw: Vec<f64> = estimates_us
        .iter()
        .map(|e| match e {
            Some(us) if valid_latency(*us) => 1.0 / us.max(MIN_ESTIMATE_US),
            _ => f64::NAN,
        })
        .collect();
    super::load_aware::normalise(&mut raw);
    raw
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DECAY: Duration = Duration::from_secs(5);

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn converges_toward_a_constant_input() {
        let t0 = Instant::now();
        let mut e = LatencyEwma::new(10_000.0, t0);
        let mut last = f64::INFINITY;
        for i in 1..=60 {
            e.observe(1_000.0, 10, t0 + ms(1000 * i), DECAY);
            let v = e.estimate(t0 + ms(1000 * i), DECAY, 1_000.0);
            assert!(v <= last && v >= 1_000.0, "step {i}: {v}");
            last = v;
        }
        assert!((last - 1_000.0).abs() < 1.0, "{last}");
    }

    #[test]
    fn time_constant_matches_decay() {
        // One single-call batch one decay period later keeps exp(−1) of the old value.
        let t0 = Instant::now();
        let mut e = LatencyEwma::new(0.0, t0);
        e.observe(1_000.0, 1, t0 + DECAY, DECAY);
        let v = e.estimate(t0 + DECAY, DECAY, f64::NAN);
        assert!((v - 1_000.0 * (1.0 - (-1.0f64).exp())).abs() < 1e-6, "{v}");
    }

    #[test]
    fn a_batch_counts_more_than_one_call() {
        let t0 = Instant::now();
        let mut one = LatencyEwma::new(100.0, t0);
        let mut many = one;
        one.observe(1_000.0, 1, t0 + ms(500), DECAY);
        many.observe(1_000.0, 1_000, t0 + ms(500), DECAY);
        let (a, b) = (
            one.estimate(t0 + ms(500), DECAY, f64::NAN),
            many.estimate(t0 + ms(500), DECAY, f64::NAN),
        );
        assert!(b > a && a > 100.0, "{a} {b}");
        // Capped: 64 and 1000 calls weigh the same.
        let mut cap = LatencyEwma::new(100.0, t0);
        cap.observe(1_000.0, 64, t0 + ms(500), DECAY);
        assert_eq!(cap, many);
    }

    #[test]
    fn one_slow_sample_relaxes_back_to_the_prior() {
        let t0 = Instant::now();
        let prior = 1_000.0;
        let mut e = LatencyEwma::new(prior, t0);
        // A long gap, then one very slow call: the estimate jumps up...
        let t1 = t0 + ms(60_000);
        e.observe(100_000.0, 1, t1, DECAY);
        let high = e.estimate(t1, DECAY, prior);
        assert!(high > 50_000.0, "{high}");
        // ...and with no more samples drifts back over a few decay periods.
        let mut last = high;
        for periods in 1..=5u32 {
            let v = e.estimate(t1 + DECAY * periods, DECAY, prior);
            assert!(v < last, "{v} !< {last}");
            last = v;
        }
        assert!(last < prior * 1.7, "{last}");
        let much_later = e.estimate(t1 + DECAY * 20, DECAY, prior);
        assert!((much_later - prior).abs() < 1.0, "{much_later}");
        // As a weight: starts starved, ends close to its peer's.
        let w = weights(&[Some(prior), Some(e.estimate(t1, DECAY, prior))]);
        assert!(w[1] < 0.05, "{w:?}");
        let w = weights(&[Some(prior), Some(much_later)]);
        assert!((w[0] - w[1]).abs() < 0.01, "{w:?}");
    }

    #[test]
    fn bad_samples_are_ignored() {
        let t0 = Instant::now();
        let mut e = LatencyEwma::new(f64::NAN, t0);
        assert_eq!(e.estimate(t0, DECAY, 7.0), 7.0);
        e.observe(-1.0, 5, t0 + ms(10), DECAY);
        e.observe(f64::INFINITY, 5, t0 + ms(10), DECAY);
        e.observe(50.0, 0, t0 + ms(10), DECAY);
        assert_eq!(e.estimate(t0, DECAY, 7.0), 7.0);
        e.observe(50.0, 1, t0 + ms(10), DECAY);
        assert_eq!(e.estimate(t0 + ms(10), DECAY, f64::NAN), 50.0);
        // Zero decay: newest batch wins, then snaps to the prior.
        e.observe(80.0, 1, t0 + ms(20), Duration::ZERO);
        assert_eq!(e.estimate(t0 + ms(20), Duration::ZERO, 7.0), 80.0);
        assert_eq!(e.estimate(t0 + ms(21), Duration::ZERO, 7.0), 7.0);
        // Time going backwards is Δt = 0.
        e.observe(1e6, 1, t0, DECAY);
        assert_eq!(e.updated(), t0 + ms(20));
    }

    #[test]
    fn weights_inverse_to_latency_and_none_gets_the_mean() {
        let w = weights(&[Some(10.0), Some(20.0), None]);
        assert!((w[0] / w[1] - 2.0).abs() < 1e-12, "{w:?}");
        assert!((w[2] - (w[0] + w[1]) / 2.0).abs() < 1e-12, "{w:?}");
        assert!((w.iter().sum::<f64>() / 3.0 - 1.0).abs() < 1e-12);
        assert_eq!(weights(&[None, None]), vec![1.0, 1.0]);
        assert!(weights(&[]).is_empty());
        let w = weights(&[Some(0.0), Some(f64::MAX), Some(f64::NAN), Some(-1.0)]);
        assert!(w.iter().all(|x| x.is_finite() && *x > 0.0), "{w:?}");
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn estimate_stays_within_the_inputs(
            first in 0.0f64..1e7,
            prior in 0.0f64..1e7,
            batches in prop::collection::vec((0.0f64..1e7, 0u64..1000, 0u64..20_000), 0..30),
            decay_ms in 0u64..30_000,
            read_after in 0u64..100_000,
        ) {
            let decay = Duration::from_millis(decay_ms);
            let t0 = Instant::now();
            let mut e = LatencyEwma::new(first, t0);
            let (mut lo, mut hi) = (first.min(prior), first.max(prior));
            let mut t = t0;
            for (mean, count, gap) in batches {
                t += Duration::from_millis(gap);
                e.observe(mean, count, t, decay);
                if count > 0 {
                    lo = lo.min(mean);
                    hi = hi.max(mean);
                }
            }
            let v = e.estimate(t + Duration::from_millis(read_after), decay, prior);
            prop_assert!(v.is_finite());
            prop_assert!(v >= lo * (1.0 - 1e-12) && v <= hi * (1.0 + 1e-12), "{} not in [{}, {}]", v, lo, hi);
        }

        #[test]
        fn weights_are_finite_positive_mean_one(
            est in prop::collection::vec(
                prop_oneof![Just(None), (0.0f64..1e12).prop_map(Some), any::<f64>().prop_map(Some)],
                0..20),
        ) {
            let w = weights(&est);
            prop_assert_eq!(w.len(), est.len());
            prop_assert!(w.iter().all(|x| x.is_finite() && *x > 0.0), "{:?}", w);
            if !w.is_empty() {
                let mean = w.iter().sum::<f64>() / w.len() as f64;
                prop_assert!((mean - 1.0).abs() < 1e-6, "{}", mean);
            }
        }
    }
}
