//! The client's part of a pick: "weighted two choices" between two entries of
//! the daemon's list, by the client's own requests in flight.
//!
//! Sources: M. Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing", IEEE TPDS 12(10), 2001 (two random candidates, keep the less
//! loaded: exponentially shorter queues than one random choice); the
//! weighted form follows Envoy's least-request balancer with unequal weights
//! (Envoy docs, "Weighted least request": candidates compared by
//! `weight / (active_requests + 1)^bias`; here `bias = 1` and the `+ 1` is
//! the daemon's `choice_prior`, see below) and finagle's "P2C least loaded";
//! the idea that the
//! client's in-flight count is the per-request signal a central balancer
//! lacks between reports is Prequal's (B. Wydrowski et al., "Load is not what
//! you should balance: Introducing Prequal", NSDI '24: requests in flight
//! are the most current load signal).
//!
//! The daemon's list stays the plan: the first candidate is the list's next
//! entry (the round robin over the weighted period), the second is an entry
//! drawn uniformly from the period (so by weight), and the client keeps the
//! first unless the second has *strictly* fewer requests in flight per
//! share, counting `prior` more on each:
//! `(b + prior) / share_b < (a + prior) / share_a`.
//! - `prior = 0`: with nothing in flight the client follows the list exactly,
//!   so the daemon's shares hold at light load; the pair only disagrees when
//!   this client already waits on the first candidate more than on the
//!   second, i.e. when that backend has been slow for it since the last
//!   report.
//! - `prior = 1` (Envoy's `active + 1`): two idle candidates are ranked by
//!   their shares, so the larger (faster) backend wins while this client sees
//!   it idle, and a slow backend is used only when the fast ones already hold
//!   this client's calls. Fast backends with headroom then take more than
//!   their capacity share and slow ones less: Prequal's point that latency,
//!   not only load, decides the tail. The bound is each client's own
//!   in-flight count, so it also moves more load onto the fast backends than
//!   capacity shares would when many clients each see little of it.
//!
//! The daemon sends the prior only where the plan's weights differ by at
//! least [`PRIOR_SPREAD`] ([`effective_prior`]): on a uniform farm the
//! ranking would be measurement noise.
//!
//! The rule is a pure function here so `lb-client` (the real pick) and
//! `lb-sim` (the model) make the same decision.

/// How many list entries a pick compares: [`FOLLOW`] or [`TWO`].
pub type Choices = u32;

/// Follow the list's order exactly (every policy but `load_aware` by default).
pub const FOLLOW: Choices = 1;

/// Weighted two choices (the `load_aware` default).
pub const TWO: Choices = 2;

/// The default `choice_prior`.
pub const DEFAULT_PRIOR: u32 = 1;

/// The prior applies only when the largest weight is at least this many
/// times the smallest: below it the farm is taken as uniform.
pub const PRIOR_SPREAD: f64 = 2.0;

/// The prior a plan sends with `weights` (positive, one per server): the
/// configured one where the weights really differ, 0 where they are within
/// [`PRIOR_SPREAD`] of each other. On a uniform farm the weights differ only
/// by measurement noise, and a prior would rank idle backends by that noise
/// (one of three identical backends taking 40 % at light load); with 0 the
/// list's shares hold.
///
/// ```
/// use lb_core::policy::choice::effective_prior;
/// assert_eq!(effective_prior(&[1.1, 0.9, 1.0], 1), 0); // noise
/// assert_eq!(effective_prior(&[2.0, 2.0, 0.5], 1), 1); // 4× apart
/// ```
pub fn effective_prior(weights: &[f64], prior: u32) -> u32 {
    let valid = weights
        .iter()
        .copied()
        .filter(|w| w.is_finite() && *w > 0.0);
    let (lo, hi) = valid.fold((f64::INFINITY, 0.0f64), |(lo, hi), w| {
        (lo.min(w), hi.max(w))
    });
    if hi > 0.0 && hi >= PRIOR_SPREAD * lo {
        prior
    } else {
        0
    }
}

/// Whether to take the second candidate over the first: `b` has strictly
/// fewer requests in flight per share than `a`, each counted with `prior`
/// more. Shares are the candidates' entries in the period (a share of 0
/// counts as 1, so nothing divides by zero). Compared by
/// cross-multiplication in `u128`, so it is exact and never overflows.
///
/// ```
/// use lb_core::policy::choice::prefer_second;
/// assert!(!prefer_second(0, 1, 0, 1, 0)); // a tie keeps the list's entry
/// assert!(prefer_second(1, 1, 0, 1, 0)); // the client waits on a, not on b
/// assert!(!prefer_second(1, 3, 1, 1, 0)); // a has 3 shares: 1/3 < 1
/// assert!(prefer_second(4, 3, 1, 1, 0)); // 4/3 > 1
/// // With a prior of 1, two idle candidates are ranked by share:
/// assert!(!prefer_second(0, 1, 0, 3, 0));
/// assert!(prefer_second(0, 1, 0, 3, 1));
/// ```
pub fn prefer_second(
    a_in_flight: u64,
    a_share: u32,
    b_in_flight: u64,
    b_share: u32,
    prior: u32,
) -> bool {
    let (sa, sb) = (u128::from(a_share.max(1)), u128::from(b_share.max(1)));
    let (a, b) = (
        u128::from(a_in_flight) + u128::from(prior),
        u128::from(b_in_flight) + u128::from(prior),
    );
    b * sa < a * sb
}

/// What a client compares under `choices`: each server's entry count in
/// `order` (`table[i]` = how often server `i` appears; indices at or past
/// `servers` are ignored), or an empty table when picks follow the order:
/// `choices` below [`TWO`], or fewer than two distinct servers to choose
/// between.
///
/// ```
/// use lb_core::policy::choice::{share_table, FOLLOW, TWO};
/// assert_eq!(share_table(TWO, &[0, 1, 0, 2, 0], 3), vec![3, 1, 1]);
/// assert!(share_table(FOLLOW, &[0, 1, 0, 2, 0], 3).is_empty());
/// assert!(share_table(TWO, &[2, 2, 2], 3).is_empty()); // nothing to choose
/// ```
pub fn share_table(choices: Choices, order: &[u32], servers: usize) -> Vec<u32> {
    let distinct = order
        .first()
        .is_some_and(|&f| order.iter().any(|&i| i != f));
    if choices < TWO || !distinct {
        return Vec::new();
    }
    let mut s = vec![0u32; servers];
    for &i in order {
        if let Some(x) = s.get_mut(i as usize) {
            *x = x.saturating_add(1);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ties_and_idle_backends_follow_the_list() {
        for share in [1, 2, 7] {
            assert!(!prefer_second(0, 1, 0, share, 0));
            assert!(!prefer_second(0, share, 0, 1, 0));
            assert!(!prefer_second(3, share, 3, share, 1));
        }
    }

    #[test]
    fn a_prior_ranks_idle_candidates_by_share_until_calls_pile_up() {
        // b has 4 entries to a's 1: with a prior of 1, b wins while it holds
        // fewer than 4 × (a's calls + 1) − 1 of the client's calls.
        assert!(prefer_second(0, 1, 2, 4, 1)); // (2+1)/4 < (0+1)/1
        assert!(!prefer_second(0, 1, 3, 4, 1)); // (3+1)/4 = 1: a tie keeps a
        assert!(!prefer_second(0, 1, 2, 4, 0)); // without the prior: 2/4 > 0
    }

    #[test]
    fn zero_shares_count_as_one() {
        assert!(prefer_second(2, 0, 1, 0, 0));
        assert!(!prefer_second(1, 0, 1, 0, 0));
    }

    proptest! {
        /// Never both ways, and never away from a candidate with nothing in flight.
        #[test]
        fn antisymmetric_and_never_leaves_an_idle_first(
            a in 0u64..u64::MAX, sa in 0u32..u32::MAX, b in 0u64..u64::MAX, sb in 0u32..u32::MAX,
            prior in 0u32..16,
        ) {
            prop_assert!(!(prefer_second(a, sa, b, sb, prior) && prefer_second(b, sb, a, sa, prior)));
            prop_assert!(!prefer_second(0, sa, b, sb, 0));
            // Matches the exact rational comparison.
            let (fa, fb) = ((a as f64 + f64::from(prior)) / f64::from(sa.max(1)), (b as f64 + f64::from(prior)) / f64::from(sb.max(1)));
            if (fb - fa).abs() > 1e-6 * fa.max(fb) {
                prop_assert_eq!(prefer_second(a, sa, b, sb, prior), fb < fa);
            }
        }
    }
}
