//! Zipf-distributed request keys, for the keyed scenarios (`[keys]`).
//!
//! Key rank `k` in `1..=n` has probability `k^-s / H(n, s)`, with
//! `H(n, s) = Σ_{j=1..n} j^-s` (Zipf's law; the usual model of key and object
//! popularity, e.g. Breslau et al., "Web Caching and Zipf-like
//! Distributions", INFOCOM 1999). Sampling is by inversion over the exact
//! cumulative distribution, a table of `n` floats searched in `O(log n)`: no
//! approximation, any `s ≥ 0` (0 is uniform), and one uniform draw per key,
//! so a seeded RNG gives the same keys every time.

use std::fmt;

use rand::Rng;

/// Largest key count accepted (the table is 8 bytes a key).
pub const MAX_KEYS: u32 = 10_000_000;

/// A Zipf distribution over the ranks `1..=n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cdf[k - 1]` = P(rank ≤ k); the last entry is exactly 1.
    cdf: Vec<f64>,
    s: f64,
}

/// Why a [`Zipf`] cannot be built.
#[derive(Debug, Clone, PartialEq)]
pub enum ZipfError {
    /// `count` is 0 or above [`MAX_KEYS`]: use 1..=10,000,000 keys.
    Count(u32),
    /// The exponent is negative, NaN or infinite: use a finite `s ≥ 0`
    /// (about 1 for web-like popularity).
    Exponent(f64),
}

impl fmt::Display for ZipfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZipfError::Count(n) => write!(f, "key count {n}: use 1..={MAX_KEYS}"),
            ZipfError::Exponent(s) => write!(f, "zipf_s {s}: use a finite exponent >= 0"),
        }
    }
}

impl std::error::Error for ZipfError {}

impl Zipf {
    /// The distribution of `n` keys with exponent `s`.
    pub fn new(n: u32, s: f64) -> Result<Zipf, ZipfError> {
        if n == 0 || n > MAX_KEYS {
            return Err(ZipfError::Count(n));
        }
        if !(s.is_finite() && s >= 0.0) {
            return Err(ZipfError::Exponent(s));
        }
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += f64::from(k).powf(-s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Ok(Zipf { cdf, s })
    }

    /// Number of keys.
    pub fn len(&self) -> u32 {
        self.cdf.len() as u32
    }

    /// Always false: a distribution has at least one key.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The exponent.
    pub fn exponent(&self) -> f64 {
        self.s
    }

    /// P(rank = k), 0 outside `1..=n`.
    pub fn pmf(&self, k: u32) -> f64 {
        match k {
            0 => 0.0,
            1 => self.cdf[0],
            k if k <= self.len() => self.cdf[k as usize - 1] - self.cdf[k as usize - 2],
            _ => 0.0,
        }
    }

    /// P(rank ≤ k): the share of requests the `k` most popular keys draw.
    pub fn top(&self, k: u32) -> f64 {
        match k {
            0 => 0.0,
            k => self.cdf[(k.min(self.len()) - 1) as usize],
        }
    }

    /// One rank in `1..=n`.
    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        let u: f64 = rng.random();
        // The first rank whose cumulative probability exceeds u.
        let i = self.cdf.partition_point(|&c| c <= u);
        (i.min(self.cdf.len() - 1) + 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_sim::workload::stream_rng;

    #[test]
    fn the_pmf_is_zipfs() {
        let z = Zipf::new(10_000, 1.1).unwrap();
        let h: f64 = (1..=10_000).map(|k| f64::from(k).powf(-1.1)).sum();
        assert!((z.pmf(1) - 1.0 / h).abs() < 1e-12);
        assert!((z.pmf(7) - 7f64.powf(-1.1) / h).abs() < 1e-12);
        assert!((z.pmf(2) / z.pmf(1) - 2f64.powf(-1.1)).abs() < 1e-9);
        assert_eq!((z.pmf(0), z.pmf(10_001)), (0.0, 0.0));
        assert_eq!(z.top(10_000), 1.0);
        let uniform = Zipf::new(4, 0.0).unwrap();
        assert!((1..=4).all(|k| (uniform.pmf(k) - 0.25).abs() < 1e-12));
    }

    #[test]
    fn samples_follow_the_pmf_and_the_seed() {
        let z = Zipf::new(10_000, 1.1).unwrap();
        let n = 200_000;
        let draw = |seed| {
            let mut rng = stream_rng(seed, 2);
            (0..n).map(|_| z.sample(&mut rng)).collect::<Vec<u32>>()
        };
        let keys = draw(5);
        assert_eq!(keys, draw(5), "same seed, same keys");
        assert_ne!(keys, draw(6));
        assert!(keys.iter().all(|&k| (1..=10_000).contains(&k)));
        for rank in [1, 2, 10] {
            let p = z.pmf(rank);
            let seen = keys.iter().filter(|&&k| k == rank).count() as f64 / f64::from(n);
            // Binomial standard error sqrt(p(1-p)/n); allow 5 of them.
            let se = (p * (1.0 - p) / f64::from(n)).sqrt();
            assert!(
                (seen - p).abs() < 5.0 * se,
                "rank {rank}: seen {seen}, pmf {p}"
            );
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(Zipf::new(0, 1.0).unwrap_err(), ZipfError::Count(0));
        assert!(Zipf::new(MAX_KEYS + 1, 1.0).is_err());
        assert!(Zipf::new(10, -0.5).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
        let one = Zipf::new(1, 3.0).unwrap();
        let mut rng = stream_rng(1, 2);
        assert_eq!(one.sample(&mut rng), 1);
    }
}
