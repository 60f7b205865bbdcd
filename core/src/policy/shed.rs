//! Load shedding: the fraction of a service's calls its clients should drop
//! when the whole service is over its utilization target.
//!
//! Sources:
//! - gRPC's grpclb protocol (`grpc/grpc`, `src/proto/grpc/lb/v1/load_balancer.proto`,
//!   `Server.drop`): a server list may contain *drop entries*; a client whose
//!   round robin lands on one fails that call locally, without touching a
//!   backend, and counts it in `ClientStats.calls_finished_with_drop`. The
//!   fraction of drop entries in the list is the fraction of calls shed, so
//!   the daemon sheds by adding [`drop_entries`] entries to a period.
//! - Multiplicative admission control, as in the Google SRE book, chapter 21
//!   "Handling Overload", *Client-side throttling*: clients reject a fraction
//!   of requests locally, computed from how much the backend has been
//!   accepting, so overload is cut at the source instead of by the backend
//!   spending work on requests it will fail. The multiplicative adjustment is
//!   the "multiplicative decrease" half of AIMD (TCP congestion control,
//!   RFC 5681), made proportional.
//! - The backlog signal follows CoDel (Nichols and Jacobson, "Controlling Queue
//!   Delay", ACM Queue 10(5), 2012; RFC 8289): judge overload by how long
//!   requests wait, not by how busy the server is. A server that is 100 % busy
//!   with short queues is doing its best work; one whose queue keeps growing is
//!   overloaded, and utilization (which stops at 1) cannot tell the two apart.
//!
//! Each step the controller turns what the backends reported into a
//! *pressure* `p`, 1 meaning "exactly at the limit", from up to two terms:
//!
//! ```text
//! utilization term  u / target             (when target > 0) u = mean reported utilization
//! backlog term      backlog / delay        (when delay > 0)  backlog = Σ active / Σ μ
//! p = the larger of the terms in use
//! ```
//!
//! `backlog` is how long the service's reported requests (queued and in
//! service) take to drain at the rate the backends serve fully busy,
//! `μ = qps / utilization` (Little's law, as in [`super::load_aware`]). When
//! the admitted load exceeds what the service can serve it grows without
//! bound, whatever the utilization says; below that it stays near the mean
//! service time. So a `delay` target sheds only what the service cannot
//! serve, while a utilization target keeps headroom and sheds earlier.
//!
//! The controller works on the admitted fraction `a = 1 − drop`:
//!
//! ```text
//! a*   = min(1, a / p)                the admission that would bring p to 1
//!                                      (each term scales with admitted load), 1 when p = 0
//! a'   = a + smoothing × (a* − a)     EWMA, so one noisy report does not swing it
//! drop = clamp(1 − a', 0, max_drop)   and drops below MIN_DROP snap to 0
//! ```
//!
//! With utilization proportional to admitted load (`u = L × a` for an offered
//! load `L` in units of capacity) and only the utilization term, `a* = target /
//! L` whatever `a` is, so `a` converges geometrically (factor `1 − smoothing`
//! per step) to the admission that puts utilization exactly at target; when
//! `p < 1`, the drop decays toward 0 by the same factor, reaching exactly 0
//! once it is below [`MIN_DROP`]. The backlog term is an integrator: it rises
//! while the service is over capacity, so the drop settles where the backlog
//! stops growing, at about the excess offered load, and the backlog stays
//! near `delay`. `max_drop` keeps some traffic flowing however bad the
//! reports look (a service reporting absurd utilization must not black-hole).
//!
//! Robustness: with neither a positive target nor a positive delay shedding is
//! off (drop 0); a term whose input is missing, not finite or negative is left
//! out, and with no term left the drop is unchanged; a non-finite or negative
//! previous drop counts as 0; a non-finite `max_drop` means the default and it
//! is clamped to `0..=MAX_DROP_LIMIT`; a smoothing outside `(0, 1]` means the
//! default.

use std::time::Duration;

use crate::model::FieldError;

/// Drops below this are rounded to none, so shedding really ends.
pub const MIN_DROP: f64 = 1e-3;
/// The largest drop fraction ever used (a drop of 1 would need infinitely
/// many drop entries).
pub const MAX_DROP_LIMIT: f64 = 0.99;

const DEFAULT_MAX_DROP: f64 = 0.9;
const DEFAULT_SMOOTHING: f64 = 0.5;

/// Load shedding settings of one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShedConfig {
    /// Aggregate utilization target, `(0, 1]`; 0 = off (the default).
    pub target: f64,
    /// Backlog target: shed when the service's reported requests would take
    /// longer than this to drain; zero = off (the default).
    pub delay: Duration,
    /// Largest fraction of calls ever dropped (default 0.9).
    pub max_drop: f64,
    /// EWMA weight of the new estimate, `(0, 1]` (default 0.5).
    pub smoothing: f64,
    /// Operator-directed drops: at least this fraction is always dropped,
    /// `0..=MAX_DROP_LIMIT`, with or without a target (default 0). Envoy's
    /// `drop_overloads` and a grpclb balancer's fixed drop entries serve the
    /// same purpose: shed a known share during an incident.
    pub floor: f64,
}

impl Default for ShedConfig {
    fn default() -> Self {
        ShedConfig {
            target: 0.0,
            delay: Duration::ZERO,
            max_drop: DEFAULT_MAX_DROP,
            smoothing: DEFAULT_SMOOTHING,
            floor: 0.0,
        }
    }
}

impl ShedConfig {
    /// Checks every field's range; the field names are the struct's.
    pub fn check(&self) -> Result<(), FieldError> {
        let t = self.target;
        if !t.is_finite() || !(0.0..=1.0).contains(&t) {
            return Err(FieldError::new(
                "target",
                format!("{t} is outside (0, 1] (0 = off)"),
            ));
        }
        let m = self.max_drop;
        if !m.is_finite() || !(0.0..=MAX_DROP_LIMIT).contains(&m) {
            return Err(FieldError::new(
                "max_drop",
                format!("{m} is outside 0..={MAX_DROP_LIMIT}"),
            ));
        }
        let f = self.floor;
        if !f.is_finite() || !(0.0..=MAX_DROP_LIMIT).contains(&f) {
            return Err(FieldError::new(
                "floor",
                format!("{f} is outside 0..={MAX_DROP_LIMIT}"),
            ));
        }
        let s = self.smoothing;
        if !(s > 0.0 && s <= 1.0) {
            return Err(FieldError::new(
                "smoothing",
                format!("{s} is outside (0, 1]"),
            ));
        }
        Ok(())
    }
}

/// What the controller sees of a service at one step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Signal {
    /// Mean reported utilization of the instances with a fresh report.
    pub utilization: Option<f64>,
    /// Seconds the reported backlog takes to drain (see the module docs).
    pub backlog: Option<f64>,
}

/// The utilization target, if one is set (finite and positive).
fn utilization_target(cfg: &ShedConfig) -> Option<f64> {
    Some(cfg.target).filter(|t| t.is_finite() && *t > 0.0)
}

/// Whether `cfg` sheds by load at all (a floor alone needs no controller).
pub fn adaptive(cfg: &ShedConfig) -> bool {
    utilization_target(cfg).is_some() || !cfg.delay.is_zero()
}

/// The pressure of `seen` against `cfg`'s limits (1 = at the limit), or
/// `None` when no term in use has a usable input.
pub fn pressure(seen: Signal, cfg: &ShedConfig) -> Option<f64> {
    let usable = |x: Option<f64>| x.filter(|v| v.is_finite() && *v >= 0.0);
    let by_utilization =
        utilization_target(cfg).and_then(|t| usable(seen.utilization).map(|u| u / t));
    let by_backlog = if cfg.delay.is_zero() {
        None
    } else {
        usable(seen.backlog).map(|b| b / cfg.delay.as_secs_f64())
    };
    match (by_utilization, by_backlog) {
        (Some(u), Some(b)) => Some(u.max(b)),
        (one, other) => one.or(other),
    }
    .filter(|p| p.is_finite())
}

/// The next drop fraction, from the previous one and what the backends
/// reported (see the module docs). Always in `[0, max_drop]`.
pub fn next_drop(prev: f64, seen: Signal, cfg: &ShedConfig) -> f64 {
    if !adaptive(cfg) {
        return 0.0;
    }
    let max_drop = if cfg.max_drop.is_finite() {
        cfg.max_drop.clamp(0.0, MAX_DROP_LIMIT)
    } else {
        DEFAULT_MAX_DROP
    };
    let smoothing = if cfg.smoothing.is_finite() && cfg.smoothing > 0.0 {
        cfg.smoothing.min(1.0)
    } else {
        DEFAULT_SMOOTHING
    };
    let prev = if prev.is_finite() {
        prev.clamp(0.0, max_drop)
    } else {
        0.0
    };
    let Some(p) = pressure(seen, cfg) else {
        return prev;
    };
    let admitted = 1.0 - prev;
    let wanted = if p > 0.0 {
        (admitted / p).min(1.0)
    } else {
        1.0
    };
    let next = admitted + smoothing * (wanted - admitted);
    let drop = (1.0 - next).clamp(0.0, max_drop);
    if drop < MIN_DROP {
        0.0
    } else {
        drop
    }
}

/// The drop fraction in force: the controller's `adaptive` drop, raised to
/// the operator's floor (a floor that is not finite counts as 0).
pub fn with_floor(adaptive: f64, cfg: &ShedConfig) -> f64 {
    let floor = if cfg.floor.is_finite() {
        cfg.floor.clamp(0.0, MAX_DROP_LIMIT)
    } else {
        0.0
    };
    adaptive.max(floor)
}

/// Drop entries to add to a period of `n` entries so that drops are the
/// fraction `drop` of the new period: `round(n × drop / (1 − drop))`.
/// 0 for an empty period or a drop that is not finite and positive; `drop` is
/// capped at [`MAX_DROP_LIMIT`].
pub fn drop_entries(n: usize, drop: f64) -> usize {
    if n == 0 || !drop.is_finite() || drop <= 0.0 {
        return 0;
    }
    let d = drop.min(MAX_DROP_LIMIT);
    // Finite and at most 99 n: the cast saturates at worst.
    (n as f64 * d / (1.0 - d)).round() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn util(u: f64) -> Signal {
        Signal {
            utilization: Some(u),
            backlog: None,
        }
    }

    fn backlog(seconds: f64) -> Signal {
        Signal {
            utilization: Some(1.0),
            backlog: Some(seconds),
        }
    }

    fn cfg(target: f64) -> ShedConfig {
        ShedConfig {
            target,
            ..ShedConfig::default()
        }
    }

    /// Runs the controller against a service whose utilization is
    /// `offered × (1 − drop) / capacity`, returning the final drop.
    fn settle(mut drop: f64, offered: f64, capacity: f64, cfg: &ShedConfig, steps: usize) -> f64 {
        for _ in 0..steps {
            drop = next_drop(drop, util(offered * (1.0 - drop) / capacity), cfg);
        }
        drop
    }

    #[test]
    fn the_floor_raises_the_drop_and_is_checked() {
        let mut c = cfg(0.0);
        assert_eq!(with_floor(0.1, &c), 0.1);
        c.floor = 0.25;
        assert_eq!(with_floor(0.0, &c), 0.25);
        assert_eq!(with_floor(0.4, &c), 0.4);
        c.floor = f64::NAN;
        assert_eq!(with_floor(0.1, &c), 0.1);
        assert_eq!(c.check().unwrap_err().field, "floor");
        c.floor = 1.0;
        assert_eq!(with_floor(0.0, &c), MAX_DROP_LIMIT);
        assert_eq!(c.check().unwrap_err().field, "floor");
    }

    #[test]
    fn off_by_default() {
        assert_eq!(ShedConfig::default().target, 0.0);
        assert_eq!(next_drop(0.5, util(3.0), &ShedConfig::default()), 0.0);
        assert_eq!(ShedConfig::default().check(), Ok(()));
    }

    #[test]
    fn converges_to_target_and_recovers() {
        let c = cfg(0.8);
        for offered in [1.0, 1.2, 2.0, 4.0, 7.0] {
            let drop = settle(0.0, offered, 1.0, &c, 40);
            let u = offered * (1.0 - drop);
            assert!(
                (u - 0.8).abs() <= 0.05 * 0.8,
                "offered {offered}: drop {drop} u {u}"
            );
            // Steady: another step barely moves it.
            assert!((next_drop(drop, util(u), &c) - drop).abs() < 1e-6);
            // Load falls below the target: back to exactly no drops.
            let back = settle(drop, 0.5, 1.0, &c, 20);
            assert_eq!(back, 0.0, "offered {offered}");
        }
        // Capacity in other units.
        let drop = settle(0.0, 300.0, 100.0, &cfg(0.6), 40);
        assert!((300.0 * (1.0 - drop) / 100.0 - 0.6).abs() <= 0.03);
    }

    #[test]
    fn known_steps() {
        let c = cfg(0.8);
        // u = 1.6 with nothing dropped: wants half admitted; smoothing 0.5 → 0.75.
        assert!((next_drop(0.0, util(1.6), &c) - 0.25).abs() < 1e-12);
        // At target: unchanged.
        assert!((next_drop(0.25, util(0.8), &c) - 0.25).abs() < 1e-12);
        // Below target: halves toward 0.
        assert!((next_drop(0.4, util(0.1), &c) - 0.2).abs() < 1e-12);
        // Idle: decays too.
        assert!((next_drop(0.4, util(0.0), &c) - 0.2).abs() < 1e-12);
        // Never above max_drop.
        assert_eq!(settle(0.0, 100.0, 1.0, &c, 50), 0.9);
    }

    fn by_delay(ms: u64) -> ShedConfig {
        ShedConfig {
            delay: Duration::from_millis(ms),
            ..ShedConfig::default()
        }
    }

    #[test]
    fn backlog_known_steps() {
        let c = by_delay(100);
        assert!(adaptive(&c) && !adaptive(&ShedConfig::default()));
        // Twice the delay: wants half admitted; smoothing 0.5 → 0.75.
        assert!((next_drop(0.0, backlog(0.2), &c) - 0.25).abs() < 1e-12);
        // At the delay: unchanged, however busy.
        assert!((next_drop(0.25, backlog(0.1), &c) - 0.25).abs() < 1e-12);
        // Well under it: the drop decays (a* = min(1, 0.6 / 0.5) = 1).
        assert!((next_drop(0.4, backlog(0.05), &c) - 0.2).abs() < 1e-12);
        // Utilization alone never sheds when only the delay is set.
        let busy = Signal {
            utilization: Some(1.0),
            backlog: Some(0.0),
        };
        assert_eq!(next_drop(0.0, busy, &c), 0.0);
        // Both terms: the larger pressure wins.
        let both = ShedConfig { target: 0.8, ..c };
        let seen = Signal {
            utilization: Some(0.4),
            backlog: Some(0.2),
        };
        assert_eq!(pressure(seen, &both), Some(2.0));
        let seen = Signal {
            utilization: Some(1.6),
            backlog: Some(0.05),
        };
        assert_eq!(pressure(seen, &both), Some(2.0));
        // A missing or bad term is left out; with none left, no change.
        let seen = Signal {
            utilization: Some(1.6),
            backlog: Some(f64::NAN),
        };
        assert_eq!(pressure(seen, &both), Some(2.0));
        assert_eq!(pressure(Signal::default(), &both), None);
        assert_eq!(next_drop(0.3, Signal::default(), &c), 0.3);
        assert_eq!(next_drop(0.3, backlog(-1.0), &c), 0.3);
        assert_eq!(next_drop(0.3, backlog(f64::INFINITY), &c), 0.3);
    }

    /// A fluid model of an overloaded service: work arrives at `offered` ×
    /// the admitted fraction (in units of capacity) and is served at 1; the
    /// backlog the controller sees is the queued work plus one mean service
    /// time in progress. Stepped every 250 ms, like the daemon's reports.
    #[test]
    fn backlog_sheds_the_excess_and_keeps_the_queue_near_the_delay() {
        let c = by_delay(100);
        let (service, dt) = (0.02, 0.25);
        for offered in [1.1, 1.3, 2.0, 4.0] {
            let (mut drop, mut queued, mut admitted_sum, mut worst) = (0.0, 0.0f64, 0.0, 0.0f64);
            let steps = 400;
            for step in 0..steps {
                let admitted = offered * (1.0 - drop);
                queued = (queued + (admitted - 1.0) * dt).max(0.0);
                if step >= steps / 2 {
                    admitted_sum += admitted;
                    worst = worst.max(queued);
                }
                drop = next_drop(drop, backlog(queued + service), &c);
            }
            let mean_admitted = admitted_sum / (steps / 2) as f64;
            // Admits the capacity on average (within 5 %): sheds about the
            // excess only.
            assert!(
                (mean_admitted - 1.0).abs() <= 0.05,
                "offered {offered}: admitted {mean_admitted}"
            );
            // The queue stays near the delay; the loop's swing grows with
            // the overload (its gain is the offered load), yet even 4× over
            // capacity it stays well inside a 1 s deadline.
            let bound = if offered <= 2.0 { 0.2 } else { 0.5 };
            assert!(worst <= bound, "offered {offered}: queue {worst} s");
            // Load falls under capacity: the queue drains and drops end.
            for _ in 0..100 {
                let admitted = 0.7 * (1.0 - drop);
                queued = (queued + (admitted - 1.0) * dt).max(0.0);
                drop = next_drop(drop, backlog(queued + service), &c);
            }
            assert_eq!(drop, 0.0, "offered {offered}");
        }
    }

    #[test]
    fn bad_inputs_are_safe() {
        let c = cfg(0.8);
        assert_eq!(next_drop(0.3, util(f64::NAN), &c), 0.3, "no change");
        assert_eq!(next_drop(0.3, util(f64::INFINITY), &c), 0.3);
        assert_eq!(next_drop(0.3, util(-1.0), &c), 0.3);
        assert_eq!(
            next_drop(f64::NAN, util(0.5), &c),
            0.0,
            "bad prev counts as 0"
        );
        assert_eq!(next_drop(-0.5, util(0.5), &c), 0.0);
        assert_eq!(
            next_drop(5.0, util(f64::NAN), &c),
            0.9,
            "prev clamped to max_drop"
        );
        for t in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            assert_eq!(next_drop(0.5, util(2.0), &cfg(t)), 0.0, "target {t}: off");
        }
        let weird = ShedConfig {
            target: 0.8,
            delay: Duration::ZERO,
            max_drop: f64::NAN,
            smoothing: f64::NAN,
            floor: 0.0,
        };
        assert!(
            (next_drop(0.0, util(1.6), &weird) - 0.25).abs() < 1e-12,
            "defaults"
        );
        let too_much = ShedConfig { max_drop: 5.0, ..c };
        assert_eq!(settle(0.0, 1e9, 1.0, &too_much, 100), MAX_DROP_LIMIT);
        assert_eq!(drop_entries(10, f64::NAN), 0);
        assert_eq!(drop_entries(10, -0.2), 0);
        assert_eq!(drop_entries(10, 1.0), 990);
        assert_eq!(drop_entries(10, f64::INFINITY), 0);
        assert_eq!(drop_entries(0, 0.5), 0);
    }

    #[test]
    fn drop_entry_counts() {
        assert_eq!(drop_entries(10, 0.5), 10);
        assert_eq!(drop_entries(9, 0.25), 3);
        assert_eq!(drop_entries(4, 0.9), 36);
        assert_eq!(drop_entries(100, 0.0), 0);
        assert_eq!(drop_entries(100, 0.001), 0);
    }

    #[test]
    fn config_check_names_the_field() {
        let field = |c: ShedConfig| c.check().map_err(|e| e.field);
        assert_eq!(field(cfg(0.8)), Ok(()));
        assert_eq!(field(cfg(1.5)), Err("target".into()));
        assert_eq!(field(cfg(f64::NAN)), Err("target".into()));
        let c = cfg(0.8);
        assert_eq!(
            field(ShedConfig { max_drop: 1.0, ..c }),
            Err("max_drop".into())
        );
        assert_eq!(
            field(ShedConfig {
                max_drop: -0.1,
                ..c
            }),
            Err("max_drop".into())
        );
        assert_eq!(
            field(ShedConfig {
                smoothing: 0.0,
                ..c
            }),
            Err("smoothing".into())
        );
        assert_eq!(
            field(ShedConfig {
                smoothing: 1.5,
                ..c
            }),
            Err("smoothing".into())
        );
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn drop_entries_hit_the_fraction(n in 1usize..5000, drop in 0.0f64..0.99) {
            let k = drop_entries(n, drop);
            let total = (n + k) as f64;
            let got = k as f64 / total;
            prop_assert!((got - drop).abs() <= 1.0 / total, "n {} drop {} k {} got {}", n, drop, k, got);
        }

        #[test]
        fn always_in_range(
            prev in prop_oneof![-1.0f64..2.0, Just(f64::NAN), Just(f64::INFINITY)],
            u in prop_oneof![0.0f64..20.0, Just(f64::NAN), Just(-1.0), Just(f64::INFINITY)],
            target in 0.0f64..1.0,
            max_drop in 0.0f64..0.99,
            smoothing in 0.01f64..1.0,
        ) {
            let c = ShedConfig { target, max_drop, smoothing, floor: 0.0, ..ShedConfig::default() };
            let d = next_drop(prev, util(u), &c);
            prop_assert!(d.is_finite() && d >= 0.0 && d <= max_drop, "{}", d);
        }

        #[test]
        fn settles_within_five_percent(
            target in 0.3f64..=1.0,
            // Offered load from just over target to the most max_drop can shed.
            over in 1.01f64..9.5,
            smoothing in 0.2f64..=1.0,
            start in 0.0f64..0.9,
        ) {
            let c = ShedConfig { target, max_drop: 0.9, smoothing, floor: 0.0, ..ShedConfig::default() };
            let offered = target * over;
            let drop = settle(start, offered, 1.0, &c, 200);
            let u = offered * (1.0 - drop);
            prop_assert!((u - target).abs() <= 0.05 * target, "drop {} u {}", drop, u);
            let back = settle(drop, target * 0.5, 1.0, &c, 200);
            prop_assert_eq!(back, 0.0);
        }
    }
}
