//! Slow start: ramp up the weight of an instance that just became active.
//!
//! Source: Envoy's slow start mode (Envoy docs, "Slow start mode" under
//! `intro/arch_overview/upstream/load_balancing/slow_start`, configured by
//! `slow_start_config` of the round robin and least request
//! `load_balancing_policies`). Inside the window an instance's weight is
//! multiplied by
//!
//! ```text
//! factor = max(min_weight_percent / 100, (age / window) ^ (1 / aggression))
//! ```
//!
//! and at or after the window (or with a window of zero, which disables slow
//! start) by `1.0`. `aggression = 1` ramps linearly; `aggression > 1` ramps
//! faster early on, `aggression < 1` slower.
//!
//! Differences from Envoy, deliberate:
//! - Envoy uses `max(age_in_seconds, 1) / window`, so its factor never starts
//!   below `1 s / window`. We use the exact `age / window`, so sub-second windows
//!   work and an instance of age zero gets exactly the minimum.
//! - The result is never below [`ABSOLUTE_FLOOR`] (`1e-3`), even with
//!   `min_weight_percent = 0`: a weight of zero would take the instance out of
//!   the list entirely, and slow start is meant to send it *some* traffic.
//! - Bad settings never panic: a non-finite or non-positive `aggression` is
//!   taken as `1.0`, a non-finite `min_weight_percent` as `10.0`, and
//!   `min_weight_percent` is clamped to `0..=100`.

use std::time::Duration;

/// The smallest factor ever returned, so no weight becomes zero.
pub const ABSOLUTE_FLOOR: f64 = 1e-3;

/// Slow start settings (Envoy's `SlowStartConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// How long the ramp lasts; zero disables slow start.
    pub window: Duration,
    /// Shape of the ramp: the exponent is `1 / aggression`; `1.0` is linear.
    pub aggression: f64,
    /// The factor never goes below this percentage (Envoy's default is 10).
    pub min_weight_percent: f64,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart {
            window: Duration::ZERO,
            aggression: 1.0,
            min_weight_percent: 10.0,
        }
    }
}

/// Multiplier in (0, 1] for an instance that became active `age` ago.
pub fn factor(p: &SlowStart, age: Duration) -> f64 {
    if p.window.is_zero() || age >= p.window {
        return 1.0;
    }
    let aggression = if p.aggression.is_finite() && p.aggression > 0.0 {
        p.aggression
    } else {
        1.0
    };
    let min = if p.min_weight_percent.is_finite() {
        p.min_weight_percent.clamp(0.0, 100.0) / 100.0
    } else {
        0.1
    };
    let time_factor = age.as_secs_f64() / p.window.as_secs_f64();
    let ramp = time_factor.powf(1.0 / aggression);
    let f = if ramp.is_finite() { ramp.max(min) } else { min };
    f.clamp(ABSOLUTE_FLOOR, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ss(window_s: u64, aggression: f64, min: f64) -> SlowStart {
        SlowStart {
            window: Duration::from_secs(window_s),
            aggression,
            min_weight_percent: min,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn envoy_formula_at_known_points() {
        let ms = Duration::from_millis;
        assert!(close(factor(&ss(10, 1.0, 10.0), ms(5000)), 0.5));
        assert!(close(factor(&ss(10, 1.0, 10.0), ms(2500)), 0.25));
        assert!(close(factor(&ss(10, 2.0, 10.0), ms(2500)), 0.5));
        assert!(close(factor(&ss(10, 0.5, 10.0), ms(5000)), 0.25));
        // The minimum: age 0 and early ages.
        assert!(close(factor(&ss(10, 1.0, 10.0), ms(0)), 0.1));
        assert!(close(factor(&ss(10, 1.0, 10.0), ms(500)), 0.1));
        assert!(close(factor(&ss(10, 1.0, 50.0), ms(2000)), 0.5));
    }

    #[test]
    fn outside_the_window_or_disabled_is_one() {
        assert_eq!(factor(&ss(10, 1.0, 10.0), Duration::from_secs(10)), 1.0);
        assert_eq!(factor(&ss(10, 1.0, 10.0), Duration::from_secs(3600)), 1.0);
        assert_eq!(factor(&SlowStart::default(), Duration::ZERO), 1.0);
        assert_eq!(SlowStart::default().window, Duration::ZERO);
    }

    #[test]
    fn never_zero_even_with_no_minimum() {
        assert_eq!(factor(&ss(10, 1.0, 0.0), Duration::ZERO), ABSOLUTE_FLOOR);
        assert!(factor(&ss(10, 1e-300, 0.0), Duration::from_secs(5)) > 0.0);
    }

    #[test]
    fn bad_settings_do_not_panic() {
        let age = Duration::from_secs(5);
        for a in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 1e-300] {
            for m in [f64::NAN, -5.0, 0.0, 500.0, f64::INFINITY] {
                let f = factor(&ss(10, a, m), age);
                assert!(f > 0.0 && f <= 1.0, "a {a} m {m}: {f}");
            }
        }
        // Bad aggression falls back to linear.
        assert!(close(factor(&ss(10, f64::NAN, 10.0), age), 0.5));
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn monotone_and_in_range(
            window_ms in 0u64..100_000,
            aggression in 0.01f64..20.0,
            min in 0.0f64..100.0,
            a in 0u64..200_000,
            b in 0u64..200_000,
        ) {
            let p = SlowStart { window: Duration::from_millis(window_ms), aggression, min_weight_percent: min };
            let (lo, hi) = (a.min(b), a.max(b));
            let f_lo = factor(&p, Duration::from_millis(lo));
            let f_hi = factor(&p, Duration::from_millis(hi));
            prop_assert!(f_lo > 0.0 && f_lo <= 1.0);
            prop_assert!(f_hi > 0.0 && f_hi <= 1.0);
            prop_assert!(f_lo <= f_hi, "{} at {} > {} at {}", f_lo, lo, f_hi, hi);
            prop_assert!(f_lo >= (min / 100.0).min(1.0) - 1e-12);
        }
    }
}
