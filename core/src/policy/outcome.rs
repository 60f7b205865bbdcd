//! Dynamic weights from call outcomes: errors lower an instance's weight,
//! successes raise it back.
//!
//! Source: the `efficientWeight` of the course notes on load balancing this
//! project started from (the "weighted round robin" demonstration). There every instance
//! carries three numbers: `weight` (configured), `currentWeight` (the smooth
//! weighted round robin state, see [`super::swrr`]) and `efficientWeight`, the
//! weight actually used in the round robin. Each call's `Done` callback moves
//! `efficientWeight` down by one on an error and up by one on a success, so a
//! failing instance gets fewer picks and earns them back as it recovers. The same
//! idea appears as nginx's `effective_weight` (lowered by `weight / max_fails`
//! on a failure in `ngx_http_upstream_free_round_robin_peer`, raised by one per
//! pick in `ngx_http_upstream_get_peer`). nginx's `max_fails`/`fail_timeout` is
//! the on/off version (a server with `max_fails` failures within `fail_timeout`
//! is skipped for `fail_timeout`); Dubbo's `LeastActiveLoadBalance` reacts to
//! trouble only indirectly, through growing in-flight counts (see
//! [`super::least`]).
//!
//! Here the daemon does the bookkeeping centrally, per report, instead of per
//! call with atomics (the course notes complain about exactly that):
//!
//! ```text
//! efficient' = clamp(efficient + (successes × success_step − failures × failure_step) × base,
//!                    floor, base)
//! floor      = max(base × floor_ratio, 1e-3)      (never above base)
//! ```
//!
//! Steps are fractions of the configured weight `base` (the course notes remark that
//! ±1 should depend on the weight's scale). Within one report the order of the
//! calls is unknown, so the net change is applied and clamped once. The floor
//! keeps a failing instance in the list with a trickle of traffic, which is what
//! lets it prove it has recovered.
//!
//! Robustness: counts are converted with `as f64` (exact enough, never overflows);
//! steps are clamped to `[0, 1]` (one event can never move more than the whole
//! range anyway), a non-finite `floor_ratio` is taken as the default and clamped
//! to `[0, 1]`, a non-finite or non-positive `base` is taken as `1.0`, and a
//! non-finite `efficient` restarts from `base`. The result is always finite and
//! in `[floor, base]`.

/// The smallest efficient weight ever returned (before capping at `base`).
pub const ABSOLUTE_FLOOR: f64 = 1e-3;

/// Outcome-driven weight settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutcomeWeights {
    /// Whether outcomes adjust weights at all; when off, [`update`] returns `base`.
    pub enabled: bool,
    /// Lowest efficient weight as a fraction of the configured one.
    pub floor_ratio: f64,
    /// How much one failure lowers the weight, as a fraction of `base`.
    pub failure_step: f64,
    /// How much one success raises the weight, as a fraction of `base`.
    pub success_step: f64,
}

impl Default for OutcomeWeights {
    fn default() -> Self {
        OutcomeWeights {
            enabled: false,
            floor_ratio: 0.05,
            failure_step: 0.10,
            success_step: 0.01,
        }
    }
}

fn sane_base(base: f64) -> f64 {
    if base.is_finite() && base > 0.0 {
        base
    } else {
        1.0
    }
}

fn sane_fraction(x: f64, default: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        default
    }
}

/// The lowest efficient weight for configured weight `base`.
pub fn floor(p: &OutcomeWeights, base: f64) -> f64 {
    let base = sane_base(base);
    let ratio = sane_fraction(p.floor_ratio, OutcomeWeights::default().floor_ratio);
    (base * ratio).max(ABSOLUTE_FLOOR).min(base)
}

/// New efficient weight after `successes` and `failures` were reported, for an
/// instance whose configured weight is `base` (>= 1).
///
/// Each failure lowers by `failure_step × base`, each success raises by
/// `success_step × base`; the result is clamped to `[floor, base]` where
/// `floor = max(base × floor_ratio, 1e-3)`. A non-finite `efficient` is taken as
/// `base`, an out-of-range one is clamped first.
pub fn update(p: &OutcomeWeights, base: f64, efficient: f64, successes: u64, failures: u64) -> f64 {
    let base = sane_base(base);
    if !p.enabled {
        return base;
    }
    let lo = floor(p, base);
    let start = if efficient.is_finite() {
        efficient.clamp(lo, base)
    } else {
        base
    };
    // Work in units of `base` so nothing overflows: each term is at most
    // u64::MAX × 1.0 ≈ 1.8e19, and their difference is finite.
    let up = successes as f64 * sane_fraction(p.success_step, 0.0);
    let down = failures as f64 * sane_fraction(p.failure_step, 0.0);
    let frac = (start / base + (up - down)).clamp(lo / base, 1.0);
    (frac * base).clamp(lo, base)
}

/// The multiplier `efficient / base`, in (0, 1].
///
/// A non-finite `efficient` counts as `base` (factor 1); one outside
/// `[min(1e-3, base), base]` is clamped into it.
pub fn factor(base: f64, efficient: f64) -> f64 {
    let base = sane_base(base);
    if !efficient.is_finite() {
        return 1.0;
    }
    let e = efficient.clamp(ABSOLUTE_FLOOR.min(base), base);
    (e / base).clamp(f64::MIN_POSITIVE, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn on() -> OutcomeWeights {
        OutcomeWeights {
            enabled: true,
            ..OutcomeWeights::default()
        }
    }

    #[test]
    fn disabled_is_the_configured_weight() {
        let p = OutcomeWeights::default();
        assert!(!p.enabled);
        assert_eq!(update(&p, 100.0, 10.0, 0, 1000), 100.0);
    }

    #[test]
    fn steps_are_fractions_of_base() {
        let p = on();
        assert!((update(&p, 100.0, 100.0, 0, 1) - 90.0).abs() < 1e-9);
        assert!((update(&p, 100.0, 50.0, 1, 0) - 51.0).abs() < 1e-9);
        // Net change within one report: 10 successes (+10) and 1 failure (−10).
        assert!((update(&p, 100.0, 50.0, 10, 1) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn failing_instance_drops_to_floor_and_recovers() {
        let p = on();
        let base = 100.0;
        let mut e = base;
        for _ in 0..20 {
            e = update(&p, base, e, 0, 1);
        }
        assert_eq!(e, floor(&p, base));
        assert!((e - 5.0).abs() < 1e-9);
        assert!((factor(base, e) - 0.05).abs() < 1e-12);
        // 95 successes, one per report, bring it back to exactly base.
        let mut reports = 0;
        while e < base {
            e = update(&p, base, e, 1, 0);
            reports += 1;
            assert!(reports <= 200, "never recovered: {e}");
        }
        assert_eq!(e, base);
        assert!((95..=96).contains(&reports), "{reports}");
        assert_eq!(factor(base, e), 1.0);
    }

    #[test]
    fn garbage_in_is_clamped() {
        let p = on();
        assert_eq!(update(&p, 10.0, f64::NAN, 0, 0), 10.0);
        assert_eq!(update(&p, 10.0, f64::INFINITY, 0, 0), 10.0);
        assert_eq!(update(&p, 10.0, 1e300, 0, 0), 10.0);
        assert_eq!(update(&p, 10.0, 0.0, 0, 0), 0.5);
        assert_eq!(update(&p, 10.0, -3.0, 0, 0), 0.5);
        assert_eq!(update(&p, f64::NAN, 1.0, 0, 0), 1.0);
        assert_eq!(update(&p, 10.0, 5.0, u64::MAX, u64::MAX), 0.5);
        assert_eq!(update(&p, 10.0, 5.0, u64::MAX, 0), 10.0);
        let tiny = OutcomeWeights {
            floor_ratio: 0.0,
            ..on()
        };
        assert_eq!(update(&tiny, 1.0, 1.0, 0, u64::MAX), ABSOLUTE_FLOOR);
        let wild = OutcomeWeights {
            enabled: true,
            floor_ratio: f64::NAN,
            failure_step: f64::INFINITY,
            success_step: -1.0,
        };
        let w = update(&wild, 10.0, 5.0, 7, 7);
        assert!(w.is_finite() && w > 0.0 && w <= 10.0);
        assert_eq!(factor(f64::NAN, 1.0), 1.0);
        assert_eq!(factor(0.0, 0.0), ABSOLUTE_FLOOR);
        assert_eq!(factor(10.0, f64::NAN), 1.0);
        assert!(factor(10.0, 0.0) > 0.0);
        assert_eq!(factor(10.0, 20.0), 1.0);
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn stays_in_range_under_any_outcomes(
            base in prop_oneof![1.0f64..10_000.0, Just(1.0), Just(1e9)],
            floor_ratio in 0.0f64..1.0,
            failure_step in 0.0f64..1.0,
            success_step in 0.0f64..1.0,
            start in prop_oneof![any::<f64>(), Just(f64::NAN), Just(0.0)],
            reports in prop::collection::vec(
                (prop_oneof![0u64..100, any::<u64>(), Just(u64::MAX)],
                 prop_oneof![0u64..100, any::<u64>(), Just(u64::MAX)]),
                0..40),
        ) {
            let p = OutcomeWeights { enabled: true, floor_ratio, failure_step, success_step };
            let lo = floor(&p, base);
            prop_assert!(lo > 0.0 && lo <= base);
            let mut e = start;
            for (s, f) in reports {
                e = update(&p, base, e, s, f);
                prop_assert!(e.is_finite());
                prop_assert!(e >= lo && e <= base, "{} not in [{}, {}]", e, lo, base);
                let k = factor(base, e);
                prop_assert!(k > 0.0 && k <= 1.0);
            }
        }

        #[test]
        fn more_failures_never_weigh_more(
            base in 1.0f64..1000.0,
            start in 0.0f64..1000.0,
            s in 0u64..1000,
            f1 in 0u64..1000,
            extra in 0u64..1000,
        ) {
            let p = on();
            let a = update(&p, base, start, s, f1);
            let b = update(&p, base, start, s, f1 + extra);
            prop_assert!(b <= a, "{} failures: {}, {} failures: {}", f1, a, f1 + extra, b);
        }
    }
}
