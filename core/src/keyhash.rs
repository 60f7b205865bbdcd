//! The 64-bit hash lb uses for request keys and for placing servers.
//!
//! Clients hash a request key with [`hash`] and index the affinity table the
//! daemon streams them with `hash(key) % table.len()`; the daemon places servers
//! with [`hash_seeded`] (`lb-server`'s `policy::chash`). Both sides must agree
//! bit for bit, so the function is specified here precisely enough to
//! reimplement in any language, and the unit tests pin its outputs.
//!
//! # Definition
//!
//! All arithmetic is on unsigned 64-bit integers, wrapping modulo 2^64.
//!
//! 1. **FNV-1a 64** over the key's bytes, in order (Fowler, Noll, Vo; the
//!    parameters are those of the FNV specification, IETF
//!    `draft-eastlake-fnv`, and <http://www.isthe.com/chongo/tech/comp/fnv/>):
//!    ```text
//!    h = 0xcbf29ce484222325                  // offset basis
//!    for each byte b:  h = (h XOR b) * 0x00000100000001b3   // FNV prime
//!    ```
//! 2. **The splitmix64 finaliser** applied to `h` (the output function of
//!    SplitMix64, Steele, Lea, Flood, "Fast Splittable Pseudorandom Number
//!    Generators", OOPSLA 2014, with the constants of Vigna's reference
//!    `splitmix64.c`; no golden-ratio increment is added first):
//!    ```text
//!    z = h
//!    z = (z XOR (z >> 30)) * 0xbf58476d1ce4e5b9
//!    z = (z XOR (z >> 27)) * 0x94d049bb133111eb
//!    z =  z XOR (z >> 31)
//!    ```
//!    `>>` is a logical shift. The result `z` is the hash.
//!
//! FNV alone is fast and spreads short keys well over its low bits, but its high
//! bits depend poorly on the last bytes, and tables are indexed with `% m`; the
//! finaliser is a bijection that makes every output bit depend on every input
//! bit, so `hash(key) % m` is close to uniform for any `m`.
//!
//! [`hash_seeded`]`(seed, bytes)` is `hash` of the 8 little-endian bytes of
//! `seed` followed by `bytes` (so `hash_seeded(s, b) == hash(s.to_le_bytes() ++ b)`).
//!
//! # Test vectors
//!
//! | input | FNV-1a 64 (step 1) | `hash` |
//! |---|---|---|
//! | `""` | `cbf29ce484222325` | `f52a15e9a9b5e89b` |
//! | `"a"` | `af63dc4c8601ec8c` | `02c0bdbf481420f8` |
//! | `"foobar"` | `85944171f73967e8` | `404da9e3b74078c2` |
//! | `"user:42"` | `6c151ea4dcd221c2` | `d68cb863fc5e0c34` |
//!
//! `hash_seeded(0, "")` is `813f0174a2367c13`; `hash_seeded(0xdeadbeef,
//! "backend-7")` is `054a7a73a90abe55`. This is not a cryptographic hash: keys
//! chosen by an adversary can collide on purpose.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 continued from state `h` over `bytes`.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The splitmix64 output function (a bijection on `u64`), also used by the
/// daemon to derive per-client seeds.
pub fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a request key (or any byte string): FNV-1a 64 followed by the
/// splitmix64 finaliser, as defined in the [module docs](self).
pub fn hash(key: &[u8]) -> u64 {
    finalise(fnv1a(FNV_OFFSET_BASIS, key))
}

/// [`hash`] of `seed.to_le_bytes()` followed by `bytes`, without allocating.
///
/// Gives independent-looking hash functions of the same bytes, one per seed
/// (Maglev's offset and skip, a ring's virtual nodes).
pub fn hash_seeded(seed: u64, bytes: &[u8]) -> u64 {
    let h = fnv1a(FNV_OFFSET_BASIS, &seed.to_le_bytes());
    finalise(fnv1a(h, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_published_vectors() {
        // From the FNV specification's test suite.
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn finaliser_matches_splitmix64() {
        // splitmix64.c seeded with 0: its first output is the finaliser applied
        // to the golden-ratio increment.
        assert_eq!(finalise(0x9e3779b97f4a7c15), 0xe220a8397b1dcdaf);
        assert_eq!(
            finalise(0x9e3779b97f4a7c15u64.wrapping_mul(2)),
            0x6e789e6aa1b965f4
        );
    }

    #[test]
    fn pinned_vectors() {
        // Computed independently (a 10-line Python transcription of the module
        // docs). Changing any of these breaks every deployed client's affinity.
        assert_eq!(hash(b""), 0xf52a15e9a9b5e89b);
        assert_eq!(hash(b"a"), 0x02c0bdbf481420f8);
        assert_eq!(hash(b"foobar"), 0x404da9e3b74078c2);
        assert_eq!(hash(b"user:42"), 0xd68cb863fc5e0c34);
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hash(&bytes), 0xef2687f0d4371fe2);
        assert_eq!(hash_seeded(0, b""), 0x813f0174a2367c13);
        assert_eq!(hash_seeded(1, b"a"), 0xb2a81edc870f611d);
        assert_eq!(hash_seeded(0xdeadbeef, b"backend-7"), 0x054a7a73a90abe55);
        assert_eq!(hash_seeded(u64::MAX, b"foobar"), 0xa63d5f60e02929f5);
    }

    #[test]
    fn seeded_is_hash_of_the_concatenation() {
        for (seed, bytes) in [(0u64, &b""[..]), (7, b"x"), (u64::MAX - 3, b"server-12")] {
            let mut cat = seed.to_le_bytes().to_vec();
            cat.extend_from_slice(bytes);
            assert_eq!(hash_seeded(seed, bytes), hash(&cat));
        }
    }

    /// Pearson's χ² statistic of `counts` against a uniform distribution.
    fn chi_squared(counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    #[test]
    fn sequential_keys_spread_uniformly() {
        // 100k sequential integer keys into 16 buckets, by the low bits (`% 16`,
        // how tables are indexed) and by the high bits. With 15 degrees of
        // freedom, χ² exceeds 37.7 with probability 0.001; measured: 25.2 (low)
        // and 6.2 (high).
        let mut low = [0u64; 16];
        let mut high = [0u64; 16];
        for i in 0u64..100_000 {
            let h = hash(&i.to_le_bytes());
            low[(h % 16) as usize] += 1;
            high[(h >> 60) as usize] += 1;
        }
        let (cl, ch) = (chi_squared(&low), chi_squared(&high));
        assert!(cl < 37.7, "low bits χ² = {cl:.1}, counts {low:?}");
        assert!(ch < 37.7, "high bits χ² = {ch:.1}, counts {high:?}");
        // And no bucket is more than 3% off its 6250.
        for c in low.iter().chain(&high) {
            assert!(c.abs_diff(6250) <= 188, "{low:?} {high:?}");
        }
    }
}
