//! The client-side peer: tower's power-of-two-choices balancer over Peak-EWMA
//! load, running inside each client on that client's own calls only.
//!
//! A transcription of tower 0.5's `balance/p2c/service.rs` (pick two distinct
//! ready endpoints uniformly, `sample_floyd2`, keep the one with the lower
//! load; ties go to the first) and `load/peak_ewma.rs` (derived from Finagle's
//! `PeakEwma`):
//!
//! - cost = rtt_estimate × (pending + 1);
//! - on a response whose RTT is above the estimate, the estimate jumps to it
//!   (the peak); otherwise it moves towards it with weight `1 − e^(−Δt/decay)`,
//!   Δt being the time since the estimate was last touched;
//! - reading the load first decays the estimate towards zero the same way
//!   (an update with a zero RTT), so idle endpoints get tried again;
//! - an endpoint starts at `default_rtt`.
//!
//! Every finished call updates the estimate, failures included (tower's
//! `Handle` is dropped whatever the outcome); a timed-out call counts with the
//! timeout as its RTT. Defaults are linkerd2-proxy's: decay 10 s, default RTT 30 ms.

use rand::Rng;

/// Peak-EWMA decay.
pub const DEFAULT_DECAY_NS: f64 = 10e9;
/// Estimate of an endpoint not yet measured.
pub const DEFAULT_RTT_NS: f64 = 30e6;

/// One endpoint's Peak-EWMA state, as one client sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    rtt_ns: f64,
    update_at: u64,
    /// Calls sent and not finished.
    pub pending: u32,
}

impl PeakEwma {
    /// A fresh endpoint at `now`.
    pub fn new(now: u64) -> Self {
        PeakEwma {
            rtt_ns: DEFAULT_RTT_NS,
            update_at: now,
            pending: 0,
        }
    }

    /// The current estimate, ns.
    pub fn rtt_ns(&self) -> f64 {
        self.rtt_ns
    }

    /// tower's `RttEstimate::update`.
    pub fn update(&mut self, rtt_ns: f64, now: u64, decay_ns: f64) -> f64 {
        if self.rtt_ns < rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_sub(self.update_at) as f64;
            let decay = (-elapsed / decay_ns).exp();
            self.rtt_ns = self.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        self.update_at = now;
        self.rtt_ns
    }

    /// tower's `PeakEwma::load`: decays the estimate, then `estimate × (pending + 1)`.
    pub fn cost(&mut self, now: u64, decay_ns: f64) -> f64 {
        let estimate = self.update(0.0, now, decay_ns);
        estimate * f64::from(self.pending + 1)
    }
}

/// Two distinct indices in `0..len`, uniformly (Floyd's algorithm for k = 2,
/// tower's `sample_floyd2`). `len` must be at least 2.
pub fn sample2(rng: &mut impl Rng, len: usize) -> [usize; 2] {
    debug_assert!(len >= 2);
    let a = rng.random_range(0..len - 1);
    let b = rng.random_range(0..len);
    let a = if a == b { len - 1 } else { a };
    [a, b]
}

/// Picks among `ready` (indices into `ewma`) by power of two choices.
pub fn pick(
    ewma: &mut [PeakEwma],
    ready: &[usize],
    rng: &mut impl Rng,
    now: u64,
    decay_ns: f64,
) -> Option<usize> {
    match ready.len() {
        0 => None,
        1 => Some(ready[0]),
        len => {
            let [a, b] = sample2(rng, len);
            let (a, b) = (ready[a], ready[b]);
            let ca = ewma[a].cost(now, decay_ns);
            let cb = ewma[b].cost(now, decay_ns);
            Some(if ca <= cb { a } else { b })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::stream_rng;

    #[test]
    fn peak_then_decay() {
        let mut e = PeakEwma::new(0);
        // A slower response is taken at once.
        assert_eq!(e.update(100e6, 1, DEFAULT_DECAY_NS), 100e6);
        // After one decay period a fast response pulls it 63 % of the way.
        let v = e.update(0.0, 1 + DEFAULT_DECAY_NS as u64, DEFAULT_DECAY_NS);
        assert!((v - 100e6 * (-1.0f64).exp()).abs() < 1.0, "{v}");
        e.pending = 3;
        let c = e.cost(1 + DEFAULT_DECAY_NS as u64, DEFAULT_DECAY_NS);
        assert!((c - 4.0 * v).abs() < 1.0);
    }

    #[test]
    fn sample2_is_distinct_and_covers_pairs() {
        let mut rng = stream_rng(3, 0);
        let mut seen = [[0u32; 4]; 4];
        for _ in 0..10_000 {
            let [a, b] = sample2(&mut rng, 4);
            assert_ne!(a, b);
            seen[a][b] += 1;
        }
        for (a, row) in seen.iter().enumerate() {
            for (b, &n) in row.iter().enumerate() {
                assert!(a == b || n > 600, "{a},{b}: {n}");
            }
        }
    }

    #[test]
    fn picks_the_cheaper_of_two() {
        let mut rng = stream_rng(3, 0);
        let mut e = [PeakEwma::new(0), PeakEwma::new(0)];
        e[0].pending = 5;
        for _ in 0..10 {
            assert_eq!(
                pick(&mut e, &[0, 1], &mut rng, 0, DEFAULT_DECAY_NS),
                Some(1)
            );
        }
    }
}
