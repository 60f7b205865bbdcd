//! Runs a property: proptest's runner with a fixed seed per property (CI
//! runs are reproducible), a case count CI can afford, and knobs for longer
//! runs (`scripts/proptest-long.sh`, `scripts/fuzz.sh`):
//!
//! - `LB_PROPTEST_CASES`: cases per property (per batch with a time budget);
//! - `LB_PROPTEST_SECONDS`: run batches until this many seconds have passed;
//! - `LB_PROPTEST_SEED`: another seed (any u64), to explore other cases.
//!
//! Each property prints one line (shown with `--nocapture`):
//! `proptest NAME: N cases in T s (seed S): accepted …`, which the scripts add up.

use std::cell::RefCell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

use crate::wire::Tally;

/// How long a failure is shrunk, in ms.
const SHRINK_MS: u32 = 60_000;

/// The default seed: the same cases in every CI run.
const SEED: u64 = 0x6c62_2d68_6f73_7469;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
    )
}

/// splitmix64: spreads one u64 into many well-mixed ones.
fn mix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ChaCha seed of `name`'s batch `batch` under `seed`.
fn rng(seed: u64, name: &str, batch: u64) -> TestRng {
    // FNV-1a of the name, so properties draw different cases.
    let mut x = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) ^ seed
        ^ batch.wrapping_mul(0xa076_1d64_78bd_642f);
    let bytes: Vec<u8> = (0..4).flat_map(|_| mix(&mut x).to_le_bytes()).collect();
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Checks `test` on `ci_cases` values of `strategy` (or as the knobs say);
/// `test` panics on a broken contract and tallies what became of the value.
/// A failure is shrunk to a minimal value and reported with it.
pub fn check<S>(name: &str, ci_cases: u32, strategy: S, test: impl Fn(S::Value) -> Tally)
where
    S: Strategy,
    S::Value: Debug,
{
    let seed = env::<u64>("LB_PROPTEST_SEED").unwrap_or(SEED);
    let cases = env::<u32>("LB_PROPTEST_CASES").unwrap_or(ci_cases).max(1);
    let budget = env::<f64>("LB_PROPTEST_SECONDS").map(Duration::from_secs_f64);
    let start = Instant::now();
    let tally = RefCell::new(Tally::default());
    let mut ran: u64 = 0;
    for batch in 0.. {
        let config = Config {
            cases,
            failure_persistence: None,
            // Values can be megabytes: shrinking is bounded, and a failure
            // is reported with the smallest value found in that time.
            max_shrink_time: SHRINK_MS,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng(seed, name, batch));
        let result = runner.run(&strategy, |v| {
            let t = test(v);
            tally.borrow_mut().add(t);
            Ok(())
        });
        match result {
            Ok(()) => ran += u64::from(cases),
            Err(TestError::Fail(why, value)) => panic!(
                "{name} (seed {seed:#x}, batch {batch}): {why}\nminimal failing input: {value:#?}"
            ),
            Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
        }
        if budget.is_none_or(|b| start.elapsed() >= b) {
            break;
        }
    }
    let t = tally.into_inner();
    println!(
        "proptest {name}: {ran} cases in {:.2} s (seed {seed:#x}): accepted {}, refused {}, \
         out of order {}, conflict {}, undecodable {}, framing {}",
        start.elapsed().as_secs_f64(),
        t.accepted,
        t.refused,
        t.out_of_order,
        t.conflict,
        t.undecodable,
        t.framing,
    );
}
