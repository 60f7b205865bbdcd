//! `least_connections` and `least_active`: weights from the number of requests
//! each backend reports as in flight.
//!
//! Sources: nginx's `least_conn` (`ngx_http_upstream_least_conn_module`, which
//! picks the peer with the smallest `conns / weight`) and Dubbo's
//! `LeastActiveLoadBalance` (`org.apache.dubbo.rpc.cluster.loadbalance`, which
//! picks among the invokers with the fewest active calls, by weight on ties).
//! Both decide per request on the caller's own counters. A lookaside balancer
//! streams a list instead, so we turn the same preference into weights that the
//! list expansion then honours, using the backends' reported active requests:
//!
//! ```text
//! least_connections:  w_i = 1 / (1 + active_i)              (static weights ignored)
//! least_active:       w_i = static_i / (1 + active_i)        (Dubbo with weights)
//! ```
//!
//! The `+ 1` keeps idle backends finite and makes the preference soft: a backend
//! with 0 in flight gets 3× the share of one with 2, not all the traffic, so a
//! list that lives for a whole report interval does not herd every client onto
//! the currently idlest backend. Instances without a report (`None`) are assumed
//! to carry the mean active count of those that reported (0 if none did). A
//! static weight of 0 (the registry refuses it) is taken as 1 so every output
//! is positive. Results are normalised to mean 1.0
//! ([`super::load_aware::normalise`]).

use super::load_aware::normalise;

/// Active counts as f64, with `None` replaced by the mean of the reported ones.
fn filled(active: &[Option<u64>]) -> Vec<f64> {
    let known: Vec<f64> = active.iter().flatten().map(|&a| a as f64).collect();
    let mean = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    active
        .iter()
        .map(|a| a.map_or(mean, |a| a as f64))
        .collect()
}

/// `least_connections`: `w_i = 1 / (1 + active_i)`, ignoring static weights
/// (fewest outstanding wins). Normalised to mean 1.
pub fn least_connections(active: &[Option<u64>]) -> Vec<f64> {
    let mut w: Vec<f64> = filled(active).iter().map(|a| 1.0 / (1.0 + a)).collect();
    normalise(&mut w);
    w
}

/// `least_active` (Dubbo's LeastActive with weights): `w_i = static_i / (1 +
/// active_i)`. Normalised to mean 1. `static_weights` and `active` are matched
/// by index; missing static weights count as 1, extra ones are ignored.
pub fn least_active(static_weights: &[u32], active: &[Option<u64>]) -> Vec<f64> {
    let mut w: Vec<f64> = filled(active)
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let s = static_weights.get(i).copied().unwrap_or(1).max(1);
            f64::from(s) / (1.0 + a)
        })
        .collect();
    normalise(&mut w);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn fewer_in_flight_more_weight() {
        let w = least_connections(&[Some(0), Some(1), Some(3)]);
        // 1 : 1/2 : 1/4
        assert!(close(w[0] / w[1], 2.0) && close(w[1] / w[2], 2.0), "{w:?}");
        assert!(close(w.iter().sum::<f64>(), 3.0));
    }

    #[test]
    fn equal_loads_equal_or_static_weights() {
        assert_eq!(least_connections(&[Some(5); 4]), vec![1.0; 4]);
        let w = least_active(&[1, 2, 3], &[Some(5); 3]);
        assert!(
            close(w[0], 0.5) && close(w[1], 1.0) && close(w[2], 1.5),
            "{w:?}"
        );
        // least_connections ignores static weights.
        assert_eq!(least_connections(&[Some(7), Some(7)]), vec![1.0, 1.0]);
    }

    #[test]
    fn static_weights_and_load_combine() {
        // Weight 4 with 3 in flight = weight 1 idle.
        let w = least_active(&[4, 1], &[Some(3), Some(0)]);
        assert!(close(w[0], w[1]), "{w:?}");
    }

    #[test]
    fn missing_reports_get_the_mean_load() {
        // Mean of 0 and 4 is 2: weight 1/3, between 1 and 1/5.
        let w = least_connections(&[Some(0), Some(4), None]);
        assert!(
            close(w[0] / w[2], 3.0) && close(w[2] / w[1], 5.0 / 3.0),
            "{w:?}"
        );
        assert_eq!(least_connections(&[None, None]), vec![1.0, 1.0]);
        let w = least_active(&[1, 3], &[None, None]);
        assert!(close(w[1] / w[0], 3.0));
        assert!(least_connections(&[]).is_empty());
        assert!(least_active(&[], &[]).is_empty());
    }

    #[test]
    fn extremes_do_not_break() {
        let w = least_connections(&[Some(u64::MAX), Some(0), None]);
        assert!(w.iter().all(|x| x.is_finite() && *x > 0.0), "{w:?}");
        assert!(w[0] < w[1]);
        let w = least_active(&[0, u32::MAX], &[Some(u64::MAX), Some(0)]);
        assert!(w.iter().all(|x| x.is_finite() && *x > 0.0), "{w:?}");
        // Mismatched lengths: output follows `active`.
        assert_eq!(least_active(&[2], &[Some(1), Some(1)]).len(), 2);
    }

    fn arb_active() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            Just(None),
            (0u64..50).prop_map(Some),
            any::<u64>().prop_map(Some)
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn more_active_never_weighs_more(
            active in prop::collection::vec(arb_active(), 1..12),
            statics in prop::collection::vec(1u32..100, 12),
            pick in any::<prop::sample::Index>(),
            extra in prop_oneof![1u64..10, 1u64..1_000_000],
        ) {
            let i = pick.index(active.len());
            let statics = &statics[..active.len()];
            let mut more = active.clone();
            more[i] = Some(active[i].unwrap_or(0).saturating_add(extra));
            // The instance's own weight does not rise...
            for (a, b) in [
                (least_connections(&active), least_connections(&more)),
                (least_active(statics, &active), least_active(statics, &more)),
            ] {
                if active[i].is_some() {
                    prop_assert!(b[i] <= a[i] * (1.0 + 1e-9), "{} -> {}", a[i], b[i]);
                }
                prop_assert!(b.iter().all(|x| x.is_finite() && *x > 0.0));
                prop_assert_eq!(b.len(), active.len());
            }
            // ...and within one vector a busier instance never outweighs an idler one
            // (with equal static weights).
            let w = least_connections(&more);
            let eq = least_active(&vec![7; more.len()], &more);
            let f = |a: &Option<u64>| a.map(|x| x as f64);
            for j in 0..more.len() {
                for k in 0..more.len() {
                    if let (Some(aj), Some(ak)) = (f(&more[j]), f(&more[k])) {
                        if aj > ak {
                            prop_assert!(w[j] <= w[k] * (1.0 + 1e-9));
                            prop_assert!(eq[j] <= eq[k] * (1.0 + 1e-9));
                        }
                    }
                }
            }
        }
    }
}
