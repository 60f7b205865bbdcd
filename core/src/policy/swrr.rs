//! Smooth weighted round robin, expanded into an ordered list.
//!
//! Source: nginx's smooth weighted round-robin (`ngx_http_upstream_get_peer` in
//! `src/http/ngx_http_upstream_round_robin.c`, introduced in nginx 1.3.1, 2012).
//! Every step each server's `current` grows by its weight, the server with the
//! largest `current` is picked (the first one on ties) and its `current` drops by
//! the total. Over `T = Σw` steps each server is picked exactly `w` times and the
//! state returns to zero, so one period is the list we stream; clients loop it.
//!
//! Before expanding, weights are divided by their GCD (so `2,4,6` becomes the
//! 6-entry list for `1,2,3`) and, when the period would still exceed the list
//! cap, scaled down by largest remainder with a floor of 1 (every instance keeps
//! at least one entry). [`Expansion::max_share_error`] reports how far the
//! resulting shares are from the intended ones.
//!
//! Guarantees (checked by the property tests below): exact shares over one
//! period; in any cyclic window of `L` entries a server with share `p` appears
//! `L·p ± 2` times; a server's longest cyclic run is at most `2·⌈w/(T−w)⌉ + 1`,
//! where `⌈w/(T−w)⌉` is the shortest possible longest run.

/// An ordered list of server indices and what it costs in accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// Indices into the input weights, in the order to use them.
    pub order: Vec<u32>,
    /// The weights actually expanded (after GCD reduction and capping).
    pub weights: Vec<u64>,
    /// Largest |intended share − listed share| over all servers, as a fraction.
    pub max_share_error: f64,
}

/// Greatest common divisor (Euclid).
pub(crate) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Divides by the GCD and, if the sum still exceeds `max_len` (raised to the
/// number of servers if smaller), scales down by largest remainder, floor 1.
/// Zero weights stay zero (those servers get no entry).
pub fn reduce(weights: &[u32], max_len: usize) -> Vec<u64> {
    let w: Vec<u64> = weights.iter().map(|&x| u64::from(x)).collect();
    let g = w.iter().copied().fold(0, gcd);
    if g == 0 {
        return w;
    }
    let mut w: Vec<u64> = w.iter().map(|x| x / g).collect();
    let positive = w.iter().filter(|&&x| x > 0).count() as u64;
    let cap = (max_len as u64).max(positive);
    let sum: u64 = w.iter().sum();
    if sum <= cap {
        return w;
    }
    // Servers whose ideal share of the cap is below one entry get exactly one;
    // the rest share what is left. Repeat until no scaled weight drops below 1.
    let mut floored = vec![false; w.len()];
    loop {
        let fixed = floored.iter().filter(|&&f| f).count() as u64;
        let budget = cap - fixed;
        let rest: u64 = w
            .iter()
            .zip(&floored)
            .filter(|(_, &f)| !f)
            .map(|(x, _)| *x)
            .sum();
        let mut newly = false;
        for (i, &x) in w.iter().enumerate() {
            if !floored[i] && x > 0 && (x as f64) * (budget as f64) / (rest as f64) < 1.0 {
                floored[i] = true;
                newly = true;
            }
        }
        if newly {
            continue;
        }
        let mut out = vec![0u64; w.len()];
        let mut rems: Vec<(f64, usize)> = Vec::new();
        let mut used = fixed;
        for (i, &x) in w.iter().enumerate() {
            if x == 0 {
                continue;
            }
            if floored[i] {
                out[i] = 1;
                continue;
            }
            let ideal = (x as f64) * (budget as f64) / (rest as f64);
            out[i] = ideal.floor() as u64;
            used += out[i];
            rems.push((ideal - ideal.floor(), i));
        }
        // Largest remainders first; index breaks ties so the result is deterministic.
        rems.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in rems.into_iter().take(cap.saturating_sub(used) as usize) {
            out[i] += 1;
        }
        let g = out.iter().copied().fold(0, gcd).max(1);
        w = out.iter().map(|x| x / g).collect();
        return w;
    }
}

/// One period of nginx's smooth weighted round robin over `weights`.
pub fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i128; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            current[i] += i128::from(w);
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= i128::from(total);
        order.push(best as u32);
    }
    order
}

/// Integer weights for computed (real-valued) `weights`: the shortest period
/// of at most `max_len` entries in which every server's share is within
/// `precision` of its intended one (Webster's rounding, every server at least
/// one entry). Load-driven weights are estimates that move with every report,
/// so listing them to a part in a thousand buys nothing but longer lists, and
/// every subscriber decodes its list on every push. `precision` 0, or no
/// period short enough, gives the `max_len`-entry rounding.
///
/// Source: Webster / Sainte-Laguë apportionment (round each quota to the
/// nearest integer); the search for the shortest period that meets a bound is
/// ours.
pub fn shortest(weights: &[f64], max_len: usize, precision: f64) -> Vec<u32> {
    let sum: f64 = weights.iter().sum();
    let round = |len: usize| -> Vec<u32> {
        weights
            .iter()
            .map(|&x| {
                let q = if sum > 0.0 { x / sum } else { 0.0 };
                (q * len as f64).round().clamp(1.0, f64::from(u32::MAX)) as u32
            })
            .collect()
    };
    if precision > 0.0 && sum > 0.0 {
        for len in weights.len().max(1)..max_len {
            let ints = round(len);
            let total: f64 = ints.iter().map(|&k| f64::from(k)).sum();
            let worst = weights
                .iter()
                .zip(&ints)
                .map(|(&x, &k)| (x / sum - f64::from(k) / total).abs())
                .fold(0.0, f64::max);
            if worst <= precision {
                return ints;
            }
        }
    }
    round(max_len)
}

/// Reduces, caps and expands `weights` into one smooth period.
pub fn expand(weights: &[u32], max_len: usize) -> Expansion {
    let reduced = reduce(weights, max_len);
    let order = smooth_sequence(&reduced);
    let want: u64 = weights.iter().map(|&x| u64::from(x)).sum();
    let got: u64 = reduced.iter().sum();
    let max_share_error = if want == 0 || got == 0 {
        0.0
    } else {
        weights
            .iter()
            .zip(&reduced)
            .map(|(&w, &r)| (w as f64 / want as f64 - r as f64 / got as f64).abs())
            .fold(0.0, f64::max)
    };
    Expansion {
        order,
        weights: reduced,
        max_share_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(order: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &i in order {
            c[i as usize] += 1;
        }
        c
    }

    #[test]
    fn nginx_example() {
        // nginx's own documentation example: weights 5,1,1 give a a b a c a a.
        let e = expand(&[5, 1, 1], 1024);
        assert_eq!(e.order, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn shortest_period_within_precision() {
        // Capacity-like weights: exact in 14 entries.
        assert_eq!(
            shortest(&[0.8, 0.8, 0.4, 0.4, 0.2, 0.2], 1024, 0.002),
            [4, 4, 2, 2, 1, 1]
        );
        // Noisy estimates of the same: a short period, each share within 0.2 %.
        let w = [0.2861, 0.2807, 0.1452, 0.1409, 0.0741, 0.0730];
        let ints = shortest(&w, 1024, 0.002);
        let total: u32 = ints.iter().sum();
        assert!(total < 200, "period {total}");
        let sum: f64 = w.iter().sum();
        for (x, k) in w.iter().zip(&ints) {
            assert!((x / sum - f64::from(*k) / f64::from(total)).abs() <= 0.002);
        }
        // Precision 0: always the full-length rounding.
        let full = shortest(&w, 1024, 0.0);
        assert!(full.iter().sum::<u32>() >= 1020);
        // A tiny weight keeps one entry; equal weights need one entry each.
        assert_eq!(shortest(&[1.0, 1.0, 1.0, 1.0], 1024, 0.002), [1, 1, 1, 1]);
        assert!(shortest(&[1.0, 1e-9], 16, 0.002).iter().all(|&k| k >= 1));
    }

    #[test]
    fn gcd_reduction() {
        let e = expand(&[2, 4, 6], 1024);
        assert_eq!(e.weights, vec![1, 2, 3]);
        assert_eq!(e.order.len(), 6);
        assert_eq!(e.max_share_error, 0.0);
    }

    #[test]
    fn capped_lists_keep_everyone_and_report_the_error() {
        let e = expand(&[10_000, 1, 1, 1], 100);
        assert!(e.order.len() <= 100, "{}", e.order.len());
        assert_eq!(counts(&e.order, 4)[1..], [1, 1, 1]);
        assert!(e.max_share_error > 0.0 && e.max_share_error < 0.03);
        // More servers than the cap: one entry each.
        let e = expand(&[3; 50], 10);
        assert_eq!(e.order.len(), 50);
    }

    #[test]
    fn zero_weights_get_nothing() {
        let e = expand(&[0, 2, 0], 10);
        assert_eq!(e.order, vec![1]);
        assert!(expand(&[], 10).order.is_empty());
        assert!(expand(&[0, 0], 10).order.is_empty());
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn exact_shares_over_one_period(w in prop::collection::vec(1u32..200, 1..12)) {
            let e = expand(&w, 100_000);
            let g = w.iter().map(|&x| u64::from(x)).fold(0, gcd);
            let c = counts(&e.order, w.len());
            for (i, &x) in w.iter().enumerate() {
                prop_assert_eq!(c[i], u64::from(x) / g);
            }
            prop_assert_eq!(e.max_share_error, 0.0);
        }

        #[test]
        fn smooth_in_every_cyclic_window(w in prop::collection::vec(1u32..60, 2..10)) {
            let e = expand(&w, 100_000);
            let t = e.order.len();
            let doubled: Vec<u32> = e.order.iter().chain(&e.order).copied().collect();
            for (i, &wi) in e.weights.iter().enumerate() {
                let p = wi as f64 / t as f64;
                let mut pre = vec![0i64; 2 * t + 1];
                for (k, &x) in doubled.iter().enumerate() {
                    pre[k + 1] = pre[k] + i64::from(x as usize == i);
                }
                for start in 0..t {
                    for len in 1..t {
                        let got = (pre[start + len] - pre[start]) as f64;
                        prop_assert!((got - len as f64 * p).abs() <= 2.0,
                            "server {} window {}+{}: {} vs {:.2}", i, start, len, got, len as f64 * p);
                    }
                }
                if wi as usize != t {
                    let fair = wi.div_ceil(t as u64 - wi);
                    let mut run = 0u64;
                    let mut longest = 0u64;
                    for &x in &doubled {
                        run = if x as usize == i { run + 1 } else { 0 };
                        longest = longest.max(run);
                    }
                    prop_assert!(longest <= 2 * fair + 1, "server {} run {} fair {}", i, longest, fair);
                }
            }
        }

        #[test]
        fn capping_bounds_length_and_error(w in prop::collection::vec(1u32..=10_000, 1..40), cap in 40usize..2000) {
            let e = expand(&w, cap);
            prop_assert!(e.order.len() <= cap);
            let c = counts(&e.order, w.len());
            prop_assert!(c.iter().all(|&x| x >= 1));
            // Reported error is the real one.
            let want: f64 = w.iter().map(|&x| x as f64).sum();
            let real = w.iter().zip(&c).map(|(&x, &k)| (x as f64 / want - k as f64 / e.order.len() as f64).abs()).fold(0.0, f64::max);
            prop_assert!((real - e.max_share_error).abs() < 1e-9);
        }
    }
}
