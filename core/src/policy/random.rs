//! `random` and `weighted_random`: per-client random orders, drawn from a
//! seeded RNG so a plan is reproducible.
//!
//! - [`shuffled`]: a uniform random permutation by the Fisher–Yates shuffle in
//!   Durstenfeld's in-place form (Knuth, *TAOCP* vol. 2, §3.4.2, Algorithm P):
//!   for `i` from the end down to 1, swap entry `i` with a uniformly chosen
//!   entry in `0..=i`.
//! - [`sample`]: `len` independent draws with probability proportional to the
//!   weights ("roulette wheel" selection): prefix sums of the weights, a uniform
//!   `u ∈ [0, total)`, and a binary search for the first prefix sum above `u`.
//!   `O(n)` setup and `O(log n)` per draw, which is plenty for list lengths of at
//!   most a few thousand (Vose's alias method would give `O(1)` draws at the
//!   cost of more setup and code). Weights are scaled by the largest first, so
//!   the total never overflows; zero, negative and non-finite weights are never
//!   drawn.
//! - [`client_seed`]: a seed for one client's draw on one plan, from SplitMix64
//!   (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//!   OOPSLA 2014; Vigna's `splitmix64.c`). The finalizer is a bijection on
//!   `u64`, so `mix(mix(plan_version) ^ client_seq)` gives every client of a
//!   plan a distinct seed, and each client a distinct seed on every new plan
//!   version: every plan re-draws, and clients differ.
//!
//! The randomness is injected: callers seed an RNG (e.g.
//! `StdRng::seed_from_u64(client_seed(version, seq))`), so the same plan
//! version and client always get the same list.

use rand::Rng;

/// `random`: a uniformly shuffled copy of `order` (Fisher–Yates), from `rng`.
pub fn shuffled<R: Rng + ?Sized>(order: &[u32], rng: &mut R) -> Vec<u32> {
    let mut out = order.to_vec();
    for i in (1..out.len()).rev() {
        let j = rng.random_range(0..=i);
        out.swap(i, j);
    }
    out
}

/// `weighted_random`: `len` entries drawn independently with probability
/// proportional to `weights` (index `i` = server `i`), by prefix sums and
/// binary search. Zero, negative and non-finite weights are never drawn; if no
/// weight is positive, returns an empty list.
pub fn sample<R: Rng + ?Sized>(weights: &[f64], len: usize, rng: &mut R) -> Vec<u32> {
    let valid = |w: f64| w.is_finite() && w > 0.0;
    let max = weights
        .iter()
        .copied()
        .filter(|&w| valid(w))
        .fold(0.0, f64::max);
    if max <= 0.0 || len == 0 {
        return Vec::new();
    }
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut total = 0.0;
    let mut last = 0usize;
    for (i, &w) in weights.iter().enumerate() {
        if valid(w) && w / max > 0.0 {
            total += w / max;
            last = i;
        }
        cumulative.push(total);
    }
    // Every valid weight could still underflow to 0 after scaling only if it is
    // below max × 2^-1074, and `max` itself scales to 1, so `total >= 1`.
    (0..len)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            // First prefix sum strictly above u: zero-weight entries repeat the
            // previous sum and can never be that first one.
            let i = cumulative.partition_point(|&c| c <= u);
            // Rounding can put u at the very top; that is the last drawable entry.
            i.min(last) as u32
        })
        .collect()
}

/// SplitMix64's output function applied to `x + γ`.
fn splitmix64(x: u64) -> u64 {
    crate::keyhash::finalise(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// A seed for one client's draw on one plan: mixes the plan version and the
/// client's sequence number (SplitMix64), so every plan re-draws and clients
/// differ.
pub fn client_seed(plan_version: u64, client_seq: u64) -> u64 {
    splitmix64(splitmix64(plan_version) ^ client_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn counts(draws: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &i in draws {
            c[i as usize] += 1;
        }
        c
    }

    /// Pearson's chi-square statistic of `observed` against `weights`.
    fn chi_square(observed: &[u64], weights: &[f64]) -> f64 {
        let n: u64 = observed.iter().sum();
        let total: f64 = weights.iter().sum();
        observed
            .iter()
            .zip(weights)
            .map(|(&o, &w)| {
                let e = n as f64 * w / total;
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn weighted_sample_fits_the_weights() {
        let w = [1.0, 2.0, 3.0, 4.0];
        let draws = sample(&w, 100_000, &mut rng(0x5eed));
        assert_eq!(draws.len(), 100_000);
        let stat = chi_square(&counts(&draws, 4), &w);
        // 99.9% critical value of chi-square with 3 degrees of freedom.
        assert!(stat < 16.27, "chi-square {stat}");
    }

    #[test]
    fn shuffles_are_uniform() {
        // All 6 orders of 3 elements, 60k shuffles: 5 degrees of freedom, 99.9%
        // critical value 20.52.
        let mut seen = std::collections::BTreeMap::new();
        let mut r = rng(42);
        for _ in 0..60_000 {
            *seen.entry(shuffled(&[0, 1, 2], &mut r)).or_insert(0u64) += 1;
        }
        assert_eq!(seen.len(), 6);
        let obs: Vec<u64> = seen.values().copied().collect();
        let stat = chi_square(&obs, &[1.0; 6]);
        assert!(stat < 20.52, "chi-square {stat}");
    }

    #[test]
    fn zero_and_bad_weights_are_never_drawn() {
        let w = [0.0, 3.0, f64::NAN, -1.0, f64::INFINITY, 1.0, 0.0];
        let c = counts(&sample(&w, 10_000, &mut rng(1)), w.len());
        assert_eq!([c[0], c[2], c[3], c[4], c[6]], [0; 5]);
        assert!(c[1] > 2 * c[5] && c[5] > 0, "{c:?}");
        assert!(sample(&[0.0, 0.0], 10, &mut rng(1)).is_empty());
        assert!(sample(&[], 10, &mut rng(1)).is_empty());
        assert!(sample(&[1.0], 0, &mut rng(1)).is_empty());
        // Extreme spreads neither overflow nor draw the unreachable.
        let c = counts(&sample(&[f64::MAX, f64::MAX, 1e-300], 1000, &mut rng(2)), 3);
        assert!(c[0] > 0 && c[1] > 0 && c[2] == 0, "{c:?}");
    }

    #[test]
    fn seeds_differ_per_client_and_per_plan() {
        let order: Vec<u32> = (0..20).collect();
        let draw = |v, c| shuffled(&order, &mut rng(client_seed(v, c)));
        assert_eq!(draw(7, 3), draw(7, 3));
        assert_ne!(draw(7, 3), draw(7, 4));
        assert_ne!(draw(7, 3), draw(8, 3));
        let per_client: HashSet<Vec<u32>> = (0..200).map(|c| draw(1, c)).collect();
        assert_eq!(per_client.len(), 200);
        let per_plan: HashSet<Vec<u32>> = (0..200).map(|v| draw(v, 5)).collect();
        assert_eq!(per_plan.len(), 200);
        let seeds: HashSet<u64> = (0..1000)
            .flat_map(|v| (0..50).map(move |c| client_seed(v, c)))
            .collect();
        assert_eq!(seeds.len(), 50_000);
        // Sampling is reproducible from the seed too.
        let w = [1.0, 5.0, 2.0];
        assert_eq!(
            sample(&w, 50, &mut rng(client_seed(3, 9))),
            sample(&w, 50, &mut rng(client_seed(3, 9)))
        );
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn shuffled_is_a_permutation(order in prop::collection::vec(any::<u32>(), 0..200), seed in any::<u64>()) {
            let mut got = shuffled(&order, &mut rng(seed));
            let mut want = order.clone();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn samples_only_positive_weights(
            w in prop::collection::vec(prop_oneof![Just(0.0), 0.0f64..10.0, any::<f64>()], 0..20),
            len in 0usize..300,
            seed in any::<u64>(),
        ) {
            let s = sample(&w, len, &mut rng(seed));
            let any_valid = w.iter().any(|x| x.is_finite() && *x > 0.0);
            prop_assert_eq!(s.len(), if any_valid { len } else { 0 });
            for i in s {
                let x = w[i as usize];
                prop_assert!(x.is_finite() && x > 0.0, "drew {} with weight {}", i, x);
            }
        }
    }
}
