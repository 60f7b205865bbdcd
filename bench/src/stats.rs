//! Summary statistics of samples and the rounding of reported figures.
//!
//! Two percentile definitions are in use, and a figure keeps the one it was
//! first published with:
//! - **nearest rank** ([`nearest_rank`], [`percentile_ms`], the simulator's):
//!   the smallest sample with at least a fraction `q` of them at or below it.
//!   `lb-loadgen` (and so `lb-bench`) and `lb-hop` use it.
//! - **rounded index** ([`p50_p99_max`]): the sample at index
//!   round((n − 1) × q) of the sorted samples. `lb-probe` and `lb-cp-bench`
//!   use it. It can differ from nearest rank by one sample: of 20 samples,
//!   its median is the 11th, nearest rank's the 10th.

pub use lb_sim::metrics::{nearest_rank, percentile_ms};

/// p50, p99 and max of `v`, by rounded index (see the module docs); NaN when
/// `v` is empty.
pub fn p50_p99_max(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99), v[v.len() - 1])
}

/// `x` rounded to `digits` decimals, as the results report it.
pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_definitions_differ_where_the_docs_say() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(p50_p99_max(&v), (11.0, 20.0, 20.0));
        assert_eq!(nearest_rank(&v, 0.5), Some(10.0));
        assert_eq!(nearest_rank(&v, 0.99), Some(20.0));
        assert!(p50_p99_max(&[]).0.is_nan());
        assert_eq!(nearest_rank::<f64>(&[], 0.5), None);
        let ns: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&ns, 0.99), 990.0);
    }

    #[test]
    fn rounding() {
        assert_eq!(round(1.23456, 3), 1.235);
        assert_eq!(round(1.25, 1), 1.3);
        assert_eq!(round(1234.5, 0), 1235.0);
    }
}
