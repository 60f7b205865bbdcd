//! Jittered exponential backoff for reconnecting to the daemon.
//!
//! "Full jitter" from Marc Brooker, *Exponential Backoff And Jitter* (AWS
//! Architecture Blog, 2015): the delay before attempt `n` is uniform in
//! `[0, min(max, initial * multiplier^n)]`. Spreading reconnects over the whole
//! window keeps a fleet of clients from reconnecting in lockstep after a daemon
//! restart. Pure: the caller passes the RNG (seeded per client).
//!
//! ```
//! use std::time::Duration;
//! use rand::{rngs::StdRng, SeedableRng};
//! let backoff = lb_client::Backoff::default(); // 100 ms, doubling to 5 s
//! let mut rng = StdRng::seed_from_u64(7); // per client
//! let waits: Vec<Duration> = (0..8).map(|attempt| backoff.delay(attempt, &mut rng)).collect();
//! assert!(waits.iter().all(|w| *w <= Duration::from_secs(5)));
//! ```

use std::time::Duration;

/// Reconnect backoff parameters: [`ClientOptions::backoff`] and
/// [`ReporterOptions::backoff`] (the default: 100 ms doubling to 5 s).
///
/// [`ClientOptions::backoff`]: crate::ClientOptions::backoff
/// [`ReporterOptions::backoff`]: crate::ReporterOptions::backoff
///
/// ```
/// use std::time::Duration;
/// use lb_client::{Backoff, ClientOptions};
///
/// let default = Backoff::default();
/// assert_eq!(default.ceiling(0), Duration::from_millis(100));
/// // Reconnect sooner, and never wait more than a second:
/// let fast = Backoff {
///     initial: Duration::from_millis(10),
///     max: Duration::from_secs(1),
///     multiplier: 2.0,
/// };
/// let options = ClientOptions { backoff: fast, ..ClientOptions::new("127.0.0.1:7400") };
/// assert_eq!(options.backoff.ceiling(10), Duration::from_secs(1));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Growth of the ceiling per attempt (values below 1 or NaN act as 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The ceiling for `attempt` (0-based): `min(max, initial * multiplier^attempt)`.
    /// Never overflows: a huge attempt just yields `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = lb_client::Backoff::default(); // 100 ms, doubling, up to 5 s
    /// assert_eq!(b.ceiling(0), Duration::from_millis(100));
    /// assert_eq!(b.ceiling(3), Duration::from_millis(800));
    /// assert_eq!(b.ceiling(6), Duration::from_secs(5)); // 6.4 s, capped
    /// assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
    /// ```
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let m = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let secs = self.initial.as_secs_f64() * m.powf(f64::from(attempt));
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// A delay uniform in `[0, ceiling(attempt)]` ("full jitter"), drawn
    /// from `rng`: seed it per client, so a fleet spreads its reconnects.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rand::{rngs::StdRng, SeedableRng};
    ///
    /// let b = lb_client::Backoff::default();
    /// let mut rng = StdRng::seed_from_u64(42); // e.g. a hash of the client id
    /// for attempt in 0..5 {
    ///     let wait = b.delay(attempt, &mut rng);
    ///     assert!(wait <= b.ceiling(attempt));
    /// }
    /// ```
    pub fn delay(&self, attempt: u32, rng: &mut impl rand::Rng) -> Duration {
        let cap = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn delays_stay_within_the_ceiling() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..20 {
            for _ in 0..100 {
                assert!(b.delay(attempt, &mut rng) <= b.ceiling(attempt));
            }
        }
    }

    #[test]
    fn ceiling_grows_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_secs(5)); // 6.4s capped
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn huge_attempt_and_odd_parameters_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(1);
        let b = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            multiplier: f64::INFINITY,
        };
        let _ = b.delay(u32::MAX, &mut rng);
        let b = Backoff {
            multiplier: f64::NAN,
            ..Backoff::default()
        };
        assert_eq!(b.ceiling(1000), Duration::from_millis(100));
        let zero = Backoff {
            initial: Duration::ZERO,
            ..Backoff::default()
        };
        assert_eq!(zero.delay(5, &mut rng), Duration::ZERO);
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(3);
        let d: Vec<Duration> = (0..50).map(|_| b.delay(4, &mut rng)).collect();
        let min = d.iter().min().copied().unwrap_or_default();
        let max = d.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_millis(500), "{min:?}..{max:?}");
    }
}
