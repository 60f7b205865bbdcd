//! Poisson arrivals whose rate is a step function of time: the offered load
//! of a scenario with `load` events (a flash crowd and its end).
//!
//! Within a segment of constant rate the arrivals are [`lb_sim::workload::poisson`]'s
//! (exponential gaps, each arrival's other draws after its gap, one RNG
//! stream); at a step the gap still pending is dropped and drawing starts
//! again at the step with the new rate. The exponential gap is memoryless, so
//! this is exactly a Poisson process whose intensity is the step function (a
//! non-homogeneous Poisson process with piecewise-constant intensity), and it
//! is a pure function of the seed and the steps: every policy gets the same
//! arrivals. With no step it is `poisson` itself, so a scenario without `load`
//! events keeps the arrivals it always had.

use std::time::Duration;

use lb_sim::workload::poisson;
use rand::Rng;

/// From `at` (since the start of the arrivals) on, the rate is `rate` per
/// second, until the next step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStep {
    /// When the new rate starts.
    pub at: Duration,
    /// Arrivals per second from then on (0: none).
    pub rate: f64,
}

/// The constant-rate segments `(from, to, rate)` that cover `0..span`: `base`
/// until the first step, then each step's rate until the next. Steps are taken
/// in time order (of two at the same instant, the later one given wins);
/// steps at or after `span` change nothing.
pub fn segments(base: f64, steps: &[RateStep], span: Duration) -> Vec<(Duration, Duration, f64)> {
    let mut steps: Vec<RateStep> = steps.iter().copied().filter(|s| s.at < span).collect();
    steps.sort_by_key(|s| s.at); // stable: the later one given wins a tie
    let mut out = Vec::with_capacity(steps.len() + 1);
    let (mut from, mut rate) = (Duration::ZERO, base);
    for s in steps {
        if s.at > from {
            out.push((from, s.at, rate));
            from = s.at;
        }
        rate = s.rate;
    }
    out.push((from, span, rate));
    out
}

/// Poisson arrivals from 0 until `span` at `base` per second, changing at
/// each step (see the module docs), in time order. `request(at_ns, rng)` draws
/// the rest of an arrival from the same stream, as in `poisson`. A segment
/// whose rate is not positive and finite has no arrivals and draws nothing.
pub fn piecewise_poisson<R: Rng, T>(
    rng: &mut R,
    base: f64,
    steps: &[RateStep],
    span: Duration,
    mut request: impl FnMut(u64, &mut R) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    for (from, to, rate) in segments(base, steps, span) {
        if !(rate.is_finite() && rate > 0.0) {
            continue;
        }
        let offset = from.as_nanos() as u64;
        out.extend(poisson(rng, rate, to - from, |at, rng| {
            request(offset + at, rng)
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_sim::workload::{exponential, stream_rng};

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn segments_cover_the_span_in_order() {
        let steps = [
            RateStep {
                at: secs(6.0),
                rate: 500.0,
            },
            RateStep {
                at: secs(4.0),
                rate: 3000.0,
            },
            RateStep {
                at: secs(4.0),
                rate: 2000.0,
            }, // same instant: the later one wins
            RateStep {
                at: secs(12.0),
                rate: 9.0,
            }, // after the span: ignored
        ];
        assert_eq!(
            segments(1000.0, &steps, secs(10.0)),
            [
                (secs(0.0), secs(4.0), 1000.0),
                (secs(4.0), secs(6.0), 2000.0),
                (secs(6.0), secs(10.0), 500.0),
            ]
        );
        let at_zero = [RateStep {
            at: secs(0.0),
            rate: 7.0,
        }];
        assert_eq!(
            segments(1.0, &at_zero, secs(1.0)),
            [(secs(0.0), secs(1.0), 7.0)]
        );
    }

    #[test]
    fn each_segment_gets_its_rate_and_the_seed_fixes_the_arrivals() {
        let steps = [
            RateStep {
                at: secs(4.0),
                rate: 3000.0,
            },
            RateStep {
                at: secs(6.0),
                rate: 500.0,
            },
        ];
        let span = secs(10.0);
        let draw = |seed| {
            let mut rng = stream_rng(seed, 1);
            piecewise_poisson(&mut rng, 1000.0, &steps, span, |at, rng| {
                (at, exponential(rng, 1.0))
            })
        };
        let a = draw(1);
        assert_eq!(a, draw(1), "same seed, same arrivals");
        assert_ne!(a, draw(2));
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
        for (from, to, rate) in segments(1000.0, &steps, span) {
            let (f, t) = (from.as_nanos() as u64, to.as_nanos() as u64);
            let n = a.iter().filter(|(at, _)| (f..t).contains(at)).count() as f64;
            let mean = rate * (to - from).as_secs_f64();
            // Poisson: standard deviation sqrt(mean); allow 5 of them.
            assert!(
                (n - mean).abs() < 5.0 * mean.sqrt(),
                "{n} arrivals in {from:?}..{to:?}, expected {mean}"
            );
        }
    }

    #[test]
    fn without_steps_it_is_lb_sims_poisson() {
        let span = secs(3.0);
        let mut r1 = stream_rng(9, 1);
        let mut r2 = stream_rng(9, 1);
        let a = piecewise_poisson(&mut r1, 800.0, &[], span, |at, rng| {
            (at, rng.random::<u32>())
        });
        let b = poisson(&mut r2, 800.0, span, |at, rng| (at, rng.random::<u32>()));
        assert_eq!(a, b);
    }

    #[test]
    fn a_zero_rate_segment_is_empty() {
        let steps = [
            RateStep {
                at: secs(1.0),
                rate: 0.0,
            },
            RateStep {
                at: secs(2.0),
                rate: 100.0,
            },
        ];
        let mut rng = stream_rng(3, 1);
        let a = piecewise_poisson(&mut rng, 100.0, &steps, secs(3.0), |at, _| at);
        assert!(!a
            .iter()
            .any(|&at| (1_000_000_000..2_000_000_000).contains(&at)));
        assert!(a.iter().any(|&at| at >= 2_000_000_000));
    }
}
