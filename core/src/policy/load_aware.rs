//! Load-aware weights from backend load reports: gRPC's ORCA-based weighted
//! round robin, plus a queue-length correction.
//!
//! Source: gRFC A58, "`weighted_round_robin` LB policy"
//! (`grpc/proposal`, `A58-client-side-weighted-round-robin-lb-policy.md`). A58
//! computes one weight per backend from its ORCA load report and feeds the
//! weights to a static stride scheduler; we compute the same weights centrally
//! and hand them to the list expansion. Per instance:
//!
//! 1. **Usable?** Only if it has been reporting for at least `blackout`
//!    (`now − reporting_since ≥ blackout`, A58's `blackout_period`, so a fresh
//!    backend's first noisy averages are not trusted) and its latest report is
//!    fresh (`now − reported_at < expiry`, A58's `weight_expiration_period`).
//! 2. **Raw weight** (A58): `qps / (utilization + (eps / qps) × error_penalty)`,
//!    when `qps > 0` and the denominator is `> 0`. *Our extension:*
//!    utilization counts as at least [`UTILIZATION_FLOOR`] (5 %): a nearly idle
//!    backend (one call in a report window) reads as 0.1 % busy, and A58's
//!    formula would make it look a thousand times faster than it is, which
//!    floods it on the next plan. *Our extension:* a report
//!    of an idle backend (`qps = 0`) weighs its full rate from its latest
//!    report with traffic ([`full_rate`]) rather than nothing: A58 would give
//!    it the mean, so a slow backend the clients had stopped using would get
//!    the mean share the moment it went idle, and the plan would oscillate. *Our extension:* when a report
//!    has no `qps` the weight is `static_weight × max(1 − utilization, 0.05)`:
//!    the operator's capacity estimate scaled by the headroom left. (Inverse
//!    utilization would turn the noise of near-idle backends into 10× swings.)
//!    A weight that is not finite and positive makes the instance unusable.
//! 3. **Fill** (A58): instances without a usable weight get the mean of the
//!    usable ones. *Our extensions:* an instance still in its blackout whose
//!    own reports already give a weight *below* the mean gets that weight
//!    (probation: bad news is believed at once, good news only after the
//!    blackout; a backend that joins cold, or comes back slow, does not get
//!    the mean's share while its first reports say it cannot serve it). If
//!    none is usable (all in blackout, stale or idle), the static weights
//!    are used, so a fresh service starts out as weighted round robin rather
//!    than equal shares.
//! 4. **Clamp** (A58's scheduler does the same to bound a single outlier's
//!    share): each weight into `[min_ratio × mean, max_ratio × mean]`.
//! 5. **Backlog** (our extension, `active_weighting`): multiply by
//!    `max(min_ratio, 1 − drain / drain_horizon)` where `drain = active / μ` is
//!    how long the backend's reported backlog takes to drain at its own rate
//!    `μ = qps / utilization` (Little's law). Utilization and qps are averages
//!    over the report window, so they move a window late; a backend that
//!    suddenly slows down shows it *immediately* as a growing backlog in its very
//!    next report, and is throttled until it drains: this is what makes the plan
//!    react within one report interval. Comparing raw active counts across
//!    backends instead (as Dubbo's `LeastActive` and nginx's `least_conn` do, see
//!    [`super::least`]) herds when every client acts on the same snapshot for a
//!    whole report interval; the simulator showed it (`lb-sim`). Reports without
//!    qps have no rate and are left alone.
//! 6. **Normalise** to mean 1.0 with [`normalise`].
//!
//! Nothing here panics or returns a non-finite or non-positive weight, whatever
//! the inputs (negative or non-finite numbers make a report unusable; bad
//! settings are replaced by the defaults, `min_ratio` is capped at 1 and
//! `max_ratio` kept within `[1, 1e6]` so the band always contains the mean).

use std::time::Duration;
use std::time::Instant;

/// Weights below this after normalising are raised to it, so none is zero.
pub const MIN_NORMALISED: f64 = 1e-9;

/// Utilization below this counts as this when weights are derived from it:
/// a near-idle backend's reading is noise.
pub const UTILIZATION_FLOOR: f64 = 0.05;

/// `max_ratio` above this is taken as this (keeps products finite).
pub const MAX_RATIO_LIMIT: f64 = 1e6;

/// Load-aware weighting settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAware {
    /// How long an instance must have been reporting before its weight is used.
    pub blackout: Duration,
    /// How old a report may be before it is ignored.
    pub expiry: Duration,
    /// A58's `error_utilization_penalty`: how much errors per query count as load.
    pub error_penalty: f64,
    /// Lower bound of a weight, as a fraction of the mean.
    pub min_ratio: f64,
    /// Upper bound of a weight, as a multiple of the mean.
    pub max_ratio: f64,
    /// Whether to correct weights by reported active requests (step 5).
    pub active_weighting: bool,
    /// Step 5's horizon: a backlog that takes this long to drain at the
    /// backend's own rate takes its weight to the floor.
    pub drain_horizon: Duration,
}

impl Default for LoadAware {
    fn default() -> Self {
        LoadAware {
            blackout: Duration::from_secs(10),
            expiry: Duration::from_secs(180),
            error_penalty: 1.0,
            min_ratio: 0.1,
            max_ratio: 10.0,
            active_weighting: true,
            drain_horizon: Duration::from_millis(500),
        }
    }
}

/// One instance's latest load report, as the policy needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Utilization, 1.0 = fully busy (A58 prefers application utilization).
    pub utilization: f64,
    /// Queries per second, if reported.
    pub qps: Option<f64>,
    /// Errors per second, if reported.
    pub eps: Option<f64>,
    /// Requests queued or in service when the report was made.
    pub active_requests: u64,
    /// When this report arrived.
    pub reported_at: Instant,
    /// Since when the instance has been reporting without a gap.
    pub reporting_since: Instant,
    /// The instance's static (or overridden) weight: the fallback when
    /// nothing usable is known, and the capacity scale when qps is absent.
    pub static_weight: f64,
    /// Its full rate from its latest report with traffic ([`full_rate`]):
    /// the weight of an idle report (qps 0).
    pub rate: Option<f64>,
}

/// What a backend would serve fully busy, by Little's law: `qps /
/// utilization`, with utilization taken within `[0.05, 1]` so a near-idle
/// backend's noise does not inflate it. `None` without a positive, finite qps.
pub fn full_rate(qps: Option<f64>, utilization: f64) -> Option<f64> {
    let u = if utilization.is_finite() {
        utilization.clamp(UTILIZATION_FLOOR, 1.0)
    } else {
        1.0
    };
    qps.filter(|q| q.is_finite() && *q > 0.0).map(|q| q / u)
}

/// Normalises positive weights to mean 1.0, in place.
///
/// Entries that are not finite and positive count as missing and get the mean
/// of the others (exactly 1.0 after normalising); if none is valid, all become
/// 1.0. Scales by the largest weight first so sums never overflow, and raises
/// anything that underflows to [`MIN_NORMALISED`]. Shared by [`super::ewma`]
/// and [`super::least`].
pub fn normalise(weights: &mut [f64]) {
    let valid = |x: f64| x.is_finite() && x > 0.0;
    let max = weights
        .iter()
        .copied()
        .filter(|&x| valid(x))
        .fold(0.0, f64::max);
    if max <= 0.0 {
        weights.iter_mut().for_each(|w| *w = 1.0);
        return;
    }
    let (mut sum, mut n) = (0.0, 0usize);
    for &w in weights.iter() {
        if valid(w) {
            sum += w / max;
            n += 1;
        }
    }
    let mean = sum / n as f64;
    for w in weights.iter_mut() {
        *w = if valid(*w) {
            let x = (*w / max) / mean;
            if x.is_finite() {
                x.max(MIN_NORMALISED)
            } else {
                1.0
            }
        } else {
            1.0
        };
    }
}

fn sane(x: f64, default: f64) -> f64 {
    if x.is_finite() && x >= 0.0 {
        x
    } else {
        default
    }
}

/// A58's weight for one report, or our utilization-only fallback; `None` if the
/// report gives no usable weight.
fn raw_weight(r: &Report, error_penalty: f64) -> Option<f64> {
    let u = r.utilization;
    if !(u.is_finite() && u >= 0.0) {
        return None;
    }
    let w = match r.qps {
        // Idle: nothing to measure now; its last measured capacity stands.
        Some(0.0) => r.rate?,
        Some(qps) => {
            if !(qps.is_finite() && qps > 0.0) {
                return None;
            }
            let eps = r.eps.filter(|e| e.is_finite() && *e >= 0.0).unwrap_or(0.0);
            // A near-idle backend's utilization is mostly noise: one call
            // in a window reads as 0.1 % busy and would make it look 1,000×
            // faster than it is. Below the floor it counts as the floor
            // (as in `full_rate`).
            let denom = u.max(UTILIZATION_FLOOR) + eps / qps * error_penalty;
            if !(denom.is_finite() && denom > 0.0) {
                return None;
            }
            qps / denom
        }
        None => sane(r.static_weight, 1.0) * (1.0 - u).max(0.05),
    };
    (w.is_finite() && w > 0.0).then_some(w)
}

/// Load-aware weights, one per entry of `reports`, normalised to mean 1.0.
pub fn weights(p: &LoadAware, reports: &[Option<Report>], now: Instant) -> Vec<f64> {
    weights_or(p, reports, &vec![1.0; reports.len()], now)
}

/// [`weights`], with `statics[i]` as the static weight of an instance that
/// has never reported (a static instance, a registration before its first
/// report): the fallback when nothing usable is known.
pub fn weights_or(
    p: &LoadAware,
    reports: &[Option<Report>],
    statics: &[f64],
    now: Instant,
) -> Vec<f64> {
    let d = LoadAware::default();
    let penalty = sane(p.error_penalty, d.error_penalty);
    // The band must contain the mean and stay finite when multiplied out.
    let min_ratio = sane(p.min_ratio, d.min_ratio).min(1.0);
    let max_ratio = sane(p.max_ratio, d.max_ratio).clamp(1.0, MAX_RATIO_LIMIT);
    let fresh = |r: &Report| now.saturating_duration_since(r.reported_at) < p.expiry;

    // Steps 1–2: each fresh report's own weight, and whether it is out of
    // its blackout.
    let own: Vec<Option<(f64, bool)>> = reports
        .iter()
        .map(|r| {
            let r = r.as_ref().filter(|r| fresh(r))?;
            let warmed = now.saturating_duration_since(r.reporting_since) >= p.blackout;
            raw_weight(r, penalty).map(|w| (w, warmed))
        })
        .collect();
    // Pre-scaled by the largest, so the mean cannot overflow.
    let max = own.iter().flatten().map(|&(w, _)| w).fold(0.0, f64::max);
    let usable: Vec<f64> = own
        .iter()
        .flatten()
        .filter(|&&(_, warmed)| warmed)
        .map(|&(w, _)| w / max)
        .collect();
    let mut w: Vec<f64> = if usable.is_empty() {
        reports
            .iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(r) => sane(r.static_weight, 1.0),
                None => sane(statics.get(i).copied().unwrap_or(1.0), 1.0),
            })
            .collect()
    } else {
        // Step 3: fill with the mean; an instance in its blackout gets the
        // lower of the mean and its own weight (probation). Step 4: clamp to
        // the band around the mean.
        let mean = usable.iter().sum::<f64>() / usable.len() as f64;
        let (lo, hi) = (min_ratio * mean, max_ratio * mean);
        own.iter()
            .map(|x| match *x {
                Some((x, true)) => (x / max).clamp(lo, hi),
                Some((x, false)) => (x / max).clamp(lo, mean),
                None => mean,
            })
            .collect()
    };

    // Step 5: backlog correction (Little's law). A backend's rate is
    // μ = qps / utilization (what it would serve fully busy); its backlog of
    // `active` requests takes active/μ to drain. The weight is scaled by
    // 1 − drain_time / horizon (floored at min_ratio): ordinary queues move it
    // by a few percent, a real backlog (a backend that slowed down, or one
    // overloaded while it was warming up) throttles it until it has drained.
    // Unlike comparing raw active counts across backends, this does not flip
    // every client onto whichever backend looked idlest in the last snapshot.
    if p.active_weighting {
        let horizon = p.drain_horizon.as_secs_f64();
        for (wi, r) in w.iter_mut().zip(reports) {
            let Some(r) = r.as_ref().filter(|r| fresh(r)) else {
                continue;
            };
            let Some(rate) = full_rate(r.qps, r.utilization) else {
                continue;
            };
            let drain = r.active_requests as f64 / rate;
            let m = if horizon > 0.0 {
                (1.0 - drain / horizon).max(min_ratio)
            } else {
                1.0
            };
            if m.is_finite() {
                *wi *= m;
            }
        }
    }

    // Step 6. A weight pushed to zero (min_ratio 0, underflow) stays the smallest.
    for x in &mut w {
        *x = x.max(f64::MIN_POSITIVE);
    }
    normalise(&mut w);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    /// A report made at `now` by an instance reporting for an hour.
    fn rep(now: Instant, utilization: f64, qps: Option<f64>, active: u64) -> Option<Report> {
        Some(Report {
            utilization,
            qps,
            eps: None,
            active_requests: active,
            reported_at: now,
            reporting_since: now - s(3600),
            static_weight: 1.0,
            rate: None,
        })
    }

    fn ratio(w: &[f64], i: usize, j: usize) -> f64 {
        w[i] / w[j]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn instances_that_never_reported_keep_their_static_weights_when_nothing_is_known() {
        // Static instances (or fresh registrations) with weights 1 and 3:
        // a fresh service starts out as weighted round robin.
        let w = weights_or(
            &LoadAware::default(),
            &[None, None],
            &[1.0, 3.0],
            Instant::now(),
        );
        assert!((w[1] / w[0] - 3.0).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn a58_weights_inverse_to_utilization() {
        let now = Instant::now() + s(7200);
        let p = LoadAware::default();
        // No backlog, so step 5 leaves A58's weights alone.
        let r = [
            rep(now, 0.2, Some(100.0), 0),
            rep(now, 0.4, Some(100.0), 0),
            rep(now, 0.8, Some(100.0), 0),
        ];
        let w = weights(&p, &r, now);
        assert!(close(ratio(&w, 0, 2), 4.0), "{w:?}");
        assert!(close(ratio(&w, 1, 2), 2.0), "{w:?}");
        assert!(close(w.iter().sum::<f64>(), 3.0));
        // Without qps: static weight × headroom (0.8 : 0.6 : 0.2).
        let r = [
            rep(now, 0.2, None, 3),
            rep(now, 0.4, None, 3),
            rep(now, 0.8, None, 3),
        ];
        let w = weights(&p, &r, now);
        assert!(close(ratio(&w, 0, 2), 4.0), "{w:?}");
        assert!(close(ratio(&w, 1, 2), 3.0), "{w:?}");
        // qps counts too: twice the throughput at the same utilization, twice the weight.
        let r = [rep(now, 0.5, Some(200.0), 0), rep(now, 0.5, Some(100.0), 0)];
        assert!(close(ratio(&weights(&p, &r, now), 0, 1), 2.0));
    }

    #[test]
    fn blackout_and_expiry_get_the_mean() {
        let now = Instant::now() + s(7200);
        let p = LoadAware {
            active_weighting: false,
            ..LoadAware::default()
        };
        let mut young = rep(now, 0.1, None, 0).unwrap();
        young.reporting_since = now - s(5);
        let mut stale = rep(now, 0.1, None, 0).unwrap();
        stale.reported_at = now - s(181);
        let r = [
            rep(now, 0.2, None, 0),
            rep(now, 0.4, None, 0),
            Some(young),
            Some(stale),
            None,
        ];
        let w = weights(&p, &r, now);
        let mean = (w[0] + w[1]) / 2.0;
        for i in 2..5 {
            assert!(close(w[i], mean), "{i}: {w:?}");
        }
        assert!(close(ratio(&w, 0, 1), 0.8 / 0.6));
        // Just past the blackout, the young one counts.
        young.reporting_since = now - s(10);
        let w = weights(&p, &[rep(now, 0.2, None, 0), Some(young)], now);
        assert!(close(ratio(&w, 1, 0), 0.9 / 0.8), "{w:?}");
        // Nothing usable: the static weights.
        assert_eq!(weights(&p, &[None, Some(stale)], now), vec![1.0, 1.0]);
        let mut heavy = stale;
        heavy.static_weight = 3.0;
        let w = weights(&p, &[Some(stale), Some(heavy)], now);
        assert!(close(ratio(&w, 1, 0), 3.0), "{w:?}");
        assert!(weights(&p, &[], now).is_empty());
    }

    #[test]
    fn blackout_believes_bad_news_at_once_and_good_news_later() {
        let now = Instant::now() + s(7200);
        let p = LoadAware {
            active_weighting: false,
            ..LoadAware::default()
        };
        let joined = |qps: f64, util: f64| {
            let mut r = rep(now, util, Some(qps), 0).unwrap();
            r.reporting_since = now - Duration::from_millis(500);
            Some(r)
        };
        // Two warm backends at 100 qps full rate; a joiner that serves a
        // quarter of that (a cold cache): its own weight, not the mean.
        let warm = [rep(now, 0.5, Some(50.0), 0), rep(now, 0.5, Some(50.0), 0)];
        let w = weights(&p, &[warm[0], warm[1], joined(25.0, 1.0)], now);
        assert!(close(ratio(&w, 2, 0), 0.25), "{w:?}");
        // A joiner that looks 4× faster: the mean until its blackout ends ...
        let w = weights(&p, &[warm[0], warm[1], joined(100.0, 0.25)], now);
        assert!(close(ratio(&w, 2, 0), 1.0), "{w:?}");
        // ... and never below the band's floor.
        let w = weights(&p, &[warm[0], warm[1], joined(0.1, 1.0)], now);
        assert!(close(ratio(&w, 2, 0), p.min_ratio), "{w:?}");
    }

    #[test]
    fn an_idle_backend_keeps_its_measured_capacity() {
        let now = Instant::now() + s(7200);
        let p = LoadAware {
            active_weighting: false,
            ..LoadAware::default()
        };
        // Full rates 400, 400 and 40; the slow one has gone idle.
        let mut idle = rep(now, 0.0, Some(0.0), 0).unwrap();
        idle.rate = Some(40.0);
        let r = [
            rep(now, 0.5, Some(200.0), 0),
            rep(now, 0.5, Some(200.0), 0),
            Some(idle),
        ];
        let w = weights(&p, &r, now);
        assert!(close(ratio(&w, 2, 0), 0.1), "{w:?}");
        // Without a measured rate it is unknown: the mean (A58).
        let mut unknown = idle;
        unknown.rate = None;
        let w = weights(&p, &[r[0], r[1], Some(unknown)], now);
        assert!(close(ratio(&w, 2, 0), 1.0), "{w:?}");
    }

    #[test]
    fn outliers_are_clamped_to_the_band() {
        let now = Instant::now() + s(7200);
        let p = LoadAware {
            active_weighting: false,
            ..LoadAware::default()
        };
        // Raw weights 1000 and 19 × 50: mean 97.5, so the big one is capped at
        // 975 (10× mean) and the small ones are inside the band.
        let mut r = vec![rep(now, 1.0, Some(50.0), 0); 20];
        r[0] = rep(now, 1.0, Some(1000.0), 0);
        let w = weights(&p, &r, now);
        assert!(close(ratio(&w, 0, 1), 975.0 / 50.0), "{w:?}");
        // Raw 1000 and 19 × 1: mean 50.95, the big one capped at 509.5 and the
        // small ones raised to 5.095 (0.1× mean).
        let mut r = vec![rep(now, 1.0, Some(1.0), 0); 20];
        r[0] = rep(now, 1.0, Some(1000.0), 0);
        let w = weights(&p, &r, now);
        assert!(close(ratio(&w, 0, 1), 100.0), "{w:?}");
        // With a narrower band the ratio is the band's width.
        let narrow = LoadAware {
            min_ratio: 0.5,
            max_ratio: 2.0,
            ..p
        };
        let w = weights(&narrow, &r, now);
        assert!(close(ratio(&w, 0, 1), 4.0), "{w:?}");
    }

    #[test]
    fn reacts_within_one_report_interval() {
        let p = LoadAware::default();
        let t = Instant::now() + s(7200);
        let before = weights(
            &p,
            &[
                rep(t, 0.5, Some(100.0), 2),
                rep(t, 0.5, Some(100.0), 2),
                rep(t, 0.5, Some(100.0), 2),
            ],
            t,
        );
        assert!(before.iter().all(|&x| close(x, 1.0)), "{before:?}");
        // One interval later backend 2 has slowed down: its averages have
        // barely moved yet (utilization 0.5 → 0.6, qps 100 → 90), but its
        // backlog has: 60 requests at ~150/s take 0.4 s of a 0.5 s horizon.
        let t1 = t + s(1);
        let after = weights(
            &p,
            &[
                rep(t1, 0.5, Some(100.0), 2),
                rep(t1, 0.5, Some(100.0), 2),
                rep(t1, 0.6, Some(90.0), 60),
            ],
            t1,
        );
        let drop = ratio(&before, 2, 0) / ratio(&after, 2, 0);
        assert!(drop >= 3.0, "dropped only {drop}×: {after:?}");
        assert!(close(after[0], after[1]));
        // Without the correction it would not have moved.
        let off = LoadAware {
            active_weighting: false,
            ..p
        };
        let w = weights(
            &off,
            &[rep(t1, 0.5, Some(100.0), 2), rep(t1, 0.5, Some(100.0), 40)],
            t1,
        );
        assert!(close(w[0], w[1]));
    }

    #[test]
    fn errors_lower_the_weight() {
        let now = Instant::now() + s(7200);
        let p = LoadAware::default();
        let mut bad = rep(now, 0.5, Some(100.0), 0).unwrap();
        bad.eps = Some(50.0);
        let w = weights(&p, &[rep(now, 0.5, Some(100.0), 0), Some(bad)], now);
        // 100 / (0.5 + 0.5 × 1.0) = 100 vs 200.
        assert!(close(ratio(&w, 0, 1), 2.0), "{w:?}");
        let harsh = LoadAware {
            error_penalty: 3.0,
            ..p
        };
        let w = weights(&harsh, &[rep(now, 0.5, Some(100.0), 0), Some(bad)], now);
        assert!(close(ratio(&w, 0, 1), 4.0), "{w:?}");
    }

    #[test]
    fn garbage_reports_are_unusable_not_fatal() {
        let now = Instant::now() + s(7200);
        let p = LoadAware {
            active_weighting: false,
            ..LoadAware::default()
        };
        for (u, q) in [
            (f64::NAN, None),
            (-1.0, None),
            (0.5, Some(0.0)),
            (0.5, Some(f64::INFINITY)),
        ] {
            let w = weights(&p, &[rep(now, 0.5, None, 0), rep(now, u, q, 0)], now);
            assert_eq!(w, vec![1.0, 1.0], "{u} {q:?}");
        }
        let wild = LoadAware {
            error_penalty: f64::NAN,
            min_ratio: f64::INFINITY,
            max_ratio: -1.0,
            ..LoadAware::default()
        };
        let w = weights(
            &wild,
            &[rep(now, 0.2, None, 0), rep(now, 0.8, None, 9)],
            now,
        );
        assert!(w.iter().all(|x| x.is_finite() && *x > 0.0), "{w:?}");
    }

    fn arb_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0f64..2.0,
            Just(0.0),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(-1.0),
            any::<f64>().prop_filter("NaN-free", |x| !x.is_nan()),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn always_finite_positive_and_same_length(
            rs in prop::collection::vec(
                prop::option::of((
                    arb_f64(),
                    prop::option::of(arb_f64()),
                    prop::option::of(arb_f64()),
                    prop_oneof![0u64..100, any::<u64>()],
                    0u64..400,
                    0u64..400,
                )),
                0..12),
            blackout in 0u64..60,
            expiry in 0u64..400,
            penalty in arb_f64(),
            min_ratio in arb_f64(),
            max_ratio in arb_f64(),
            active_weighting in any::<bool>(),
        ) {
            let now = Instant::now() + s(1000);
            let reports: Vec<Option<Report>> = rs.iter().map(|r| r.map(|(u, q, e, a, ago, since)| Report {
                utilization: u,
                qps: q,
                eps: e,
                active_requests: a,
                reported_at: now - s(ago),
                reporting_since: now - s(since),
                static_weight: 1.0,
                rate: q.and_then(|q| full_rate(Some(q * 2.0), u)),
            })).collect();
            let p = LoadAware {
                blackout: s(blackout),
                expiry: s(expiry),
                error_penalty: penalty,
                min_ratio,
                max_ratio,
                active_weighting,
                drain_horizon: Duration::from_millis(500),
            };
            let w = weights(&p, &reports, now);
            prop_assert_eq!(w.len(), reports.len());
            prop_assert!(w.iter().all(|x| x.is_finite() && *x > 0.0), "{:?}", w);
            if !w.is_empty() {
                let mean = w.iter().sum::<f64>() / w.len() as f64;
                prop_assert!((mean - 1.0).abs() < 1e-6, "{}", mean);
            }
        }
    }
}
