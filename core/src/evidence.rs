//! Client evidence: what each client reported about each instance over one
//! interval, and how much of it the daemon believes.
//!
//! Anyone who can open a `Subscribe` stream can send `ClientStats`, so the
//! daemon must not let one client's reports decide alone. Every piece of
//! client-reported evidence that changes a list (outlier ejection, the
//! outcome weights, the `fastest_response` latency estimates) goes through
//! one rule, with `m` = the policy's `stats_min_clients` (default 2):
//!
//! > **An instance moves only as far as `m` distinct clients agree.**
//!
//! Precisely, per instance, over the clients that reported on it (counts per
//! interval, [`INTERVAL`]; latencies against each client's latest report):
//!
//! 1. **Counts are capped at the `m`-th largest.** Each client's count of
//!    finished calls, of failed calls and of successful calls counts for at
//!    most the `m`-th largest such count among the clients ([`capped_sum`]).
//!    With fewer than `m` clients the `m`-th largest is 0: the interval
//!    shows nothing. A client that reports 10⁹ failures counts as many as
//!    the `m`-th most-failing client saw, so failures that fewer than `m`
//!    clients saw count for nothing. These capped counts feed the
//!    failure-percentage and success-rate detectors and the outcome weights.
//! 2. **A run of consecutive failures ejects only when `m` clients have one
//!    at once** (in [`crate::health`]): the `m`-th longest current run must
//!    reach the threshold.
//! 3. **A latency estimate moves only as far as `m` clients agree.** Each
//!    report is judged as it arrives, against every client's latest report
//!    on the instance from the last [`INTERVAL`] (this one included,
//!    [`Ledger::latency`]): `T` is the report's mean latency, `L` the `m`-th
//!    lowest and `U` the `m`-th highest of the latest means (at least `m`
//!    clients report at most `L`, at least `m` at least `U`). With at least
//!    `2m − 1` clients `L ≤ U`, and the sample is `clamp(T, L, U)`
//!    ([`Latency::sample`]). With fewer, `L > U`, and the sample for an
//!    estimate standing at `v` is `clamp(T, min(v, L), max(v, U))`: it rises
//!    above `v` only when all but `m − 1` clients report more, only up to
//!    `U`, and falls likewise only down to `L`; when the clients disagree on
//!    the direction it stays at `v`. The sample weighs as the report's call
//!    count capped at the `m`-th largest of the latest counts (rule 1).
//!
//! With `m = 1` the caps are the largest counts and `L`, `U` the extremes
//! (so `T` itself), and everything is believed as reported: the behaviour
//! before this rule. Latency estimates and the interval detectors then see
//! exactly what they saw before; outcome weights take an interval's counts
//! at once at its end rather than message by message (the same steps,
//! unless a weight reaches its floor or its ceiling within an interval);
//! and a run of consecutive failures counts only the failures its own
//! client reported since the last ejection (it counted every client's).
//!
//! # What one lying client can do (m = 2)
//!
//! Say at most `m − 1` clients lie (one, by default) and the others report
//! what they saw. Then, per instance and interval:
//! - **Ejection needs an honest witness.** A lying client's failures count
//!   for at most as many as the most-failing honest client reported, so it
//!   can at most double the failure evidence, and with no honest client
//!   reporting a failure the instance shows none: no failure-percentage or
//!   success-rate ejection, and no consecutive-failure ejection unless an
//!   honest client has a run of its own at the threshold. **With a single
//!   client in total, client stats eject nothing**; a broken backend stream
//!   or an expired lease still removes an instance at once, and the
//!   utilization circuit breaker (the backend's own report) still works.
//! - **Hiding failures is bounded the same way:** a liar's finished calls
//!   count for at most as many as the busiest honest client's, so it can at
//!   most halve an instance's believed failure percentage (and lift its
//!   success rate as much), not hide a failing instance behind any volume.
//! - **Outcome weights:** a liar adds at most as many failures (successes)
//!   as the most-failing (most-succeeding) honest client reported, so it
//!   cannot lower the weight of an instance no honest client saw fail, nor
//!   lift one no honest client saw succeed.
//! - **Latency (`fastest_response`'s estimates): no effect beyond the
//!   honest clients' own disagreement.** Let `lo`/`hi` be the lowest and
//!   highest honest report. With `L ≤ U`, at least `m` clients
//!   report at most `L` and at least `m` at least `L`, so an honest one does
//!   each: `L`, and likewise `U`, lie in `[lo, hi]`, and so does the sample.
//!   With `L > U`, if the sample rises above `v`, `m` clients report at
//!   least the sample, so an honest one does; if it falls, an honest one
//!   reports at most it. Either way the sample stays in
//!   `[min(v, lo), max(v, hi)]`, and the EWMA (a convex combination of `v`
//!   and the sample) never leaves the hull of its starting value and every
//!   honest report, whatever the liar sends and however often; with `2m − 1`
//!   clients or more it converges into `[lo, hi]` as it would without the
//!   liar. Within the honest range the liar can choose where it goes: if
//!   instance `j`'s honest reports span a factor `Dⱼ = hi/lo` (1 when the
//!   honest clients agree), its weight (`∝ 1/estimate`) moves by at most a
//!   factor `Dⱼ`, and instance `i`'s share of the list by at most
//!   `Dᵢ · maxⱼ Dⱼ` (its own weight's factor times the normalisation's).
//!   With `2m − 1` clients or more and honest clients that agree, the liar
//!   moves nothing. With fewer (two clients, one of them the liar) the liar
//!   can hold an estimate where it is by disagreeing, but not move it. `registry::tests` checks over
//!   arbitrary lies that no report moves an estimate away from its honest
//!   range.
//!
//! Who counts as a client (a *witness*) is decided at the daemon's edge.
//! When the daemon authenticates callers, it is the caller's credential: a
//! token, or the certificate identity bound to one. A credential is one
//! witness however many `client_id`s it declares, so an attacker holding
//! one client token cannot out-vote the others by inventing ids. The price:
//! clients that share one token count as one witness too. Give each group
//! of callers that should count separately its own token (or each workload
//! its own certificate), or, for a service whose callers all share one
//! token you trust, set its `stats_min_clients` to 1. When nobody
//! authenticates (the loopback quick start) the declared `client_id`
//! counts: the rule then bounds what one identity can do, and a caller that
//! subscribes under `m` ids counts as `m` clients.
//!
//! Memory is bounded: each instance tracks at most
//! [`MAX_CLIENTS_PER_INSTANCE`] clients an interval, and the clients past
//! them share one slot ([`OVERFLOW_CLIENT`]), so no number of identities
//! grows the daemon's memory without bound. An attacker who takes the slots
//! first gains nothing it did not already have: its identities count as
//! clients anyway, and the honest clients' calls still count (as one
//! client's).
//!
//! Sources:
//! - Envoy's outlier detection (`config.cluster.v3.OutlierDetection`) and
//!   gRPC's `outlier_detection` policy (gRFC A50) gate their detectors on
//!   volume: `success_rate_request_volume` / `failure_percentage_request_volume`
//!   (calls per host per interval) and `*_minimum_hosts` (hosts with that
//!   volume), and `enforcing_*` / `enforcement_percentage` to enforce only a
//!   fraction of detections. They count calls a proxy made itself, so they
//!   need no rule about who reported them; a lookaside balancer hears them
//!   from its clients, and `stats_min_clients` is the same kind of gate on
//!   the reporters: a minimum number of distinct witnesses.
//! - Capping each contributor at a bound before summing is the
//!   *contribution bounding* of Wilson et al., "Differentially Private SQL
//!   with Bounded User Contribution" (PoPETs 2020): no single user can move
//!   an aggregate by more than the cap. Here the cap is the `m`-th largest
//!   contribution, so it needs no constant and follows the traffic.
//! - Latency rule 3 is the trimming of Dolev, Lynch, Pinter, Stark and
//!   Weihl, "Reaching Approximate Agreement in the Presence of Faults"
//!   (JACM 33(3), 1986): with at most `f` faulty values, dropping the `f`
//!   lowest and `f` highest leaves a range inside the correct values' range.
//!   `L` and `U` are that range for `f = m − 1`. With fewer than `2m − 1`
//!   clients it is empty (`L > U`); the estimate then moves only toward a
//!   value all but `m − 1` clients are on the far side of, and stays put
//!   when the clients disagree on the direction.
//!
//! Our choices: counts are judged per interval (Envoy's and A50's interval,
//! every [`INTERVAL`]), not per message, so a client cannot out-vote others
//! by reporting more often. Latencies are judged per report, so that
//! `fastest_response` follows a change as fast as it did before the rule
//! (judging them per interval cost it two thirds more errors in the
//! simulator's hetero-degrade run); a liar reporting more often moves the
//! estimate more often, but only inside the bounds above. A new instance's
//! first estimate is `clamp(T, L, U)`; with fewer than `2m − 1` clients
//! there is no such value, and it starts from the service's mean estimate
//! instead (as an unmeasured instance is already treated), or waits if no
//! instance has one.
//!
//! Everything here is pure and takes time as a parameter: the registry
//! records each report in a [`Ledger`], asks it for each report's latency
//! sample, and at the end of each interval takes the counts and asks
//! [`believe`] what to make of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often the evidence of an interval is judged (outlier detection,
/// outcome weights, latency estimates): Envoy's `interval`, shorter than its
/// 10 s default because clients report every second.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Default `stats_min_clients`: a single client never decides alone.
pub const DEFAULT_MIN_CLIENTS: u32 = 2;
/// Largest `stats_min_clients` accepted (so that `2m − 1` clients, the
/// latency rule's full range, fit in [`MAX_CLIENTS_PER_INSTANCE`]).
pub const MAX_MIN_CLIENTS: u32 = 32;
/// Most distinct clients tracked per instance and interval (and, for runs of
/// consecutive failures, per instance over two intervals). The first ones to
/// report in an interval get a slot each; later ones add into one shared
/// slot, [`OVERFLOW_CLIENT`]'s, and so count as one client together: their
/// calls still count, capped like any client's. Every client reports every
/// stats interval (1 s by default, half an [`INTERVAL`]), so no one keeps a
/// slot by having reported once. A slot costs about 200 bytes (an id of at
/// most [`crate::model::MAX_ID_LEN`] bytes and its counts), so at most about
/// 25 KiB per instance, whatever the number of client ids.
pub const MAX_CLIENTS_PER_INSTANCE: usize = 128;
const _: () = assert!(2 * MAX_MIN_CLIENTS as usize - 1 <= MAX_CLIENTS_PER_INSTANCE);
/// The slot of the clients past [`MAX_CLIENTS_PER_INSTANCE`] (client ids are
/// never empty, so it is nobody's id).
pub const OVERFLOW_CLIENT: &str = "";

/// The slot `client` takes among the clients `tracked` for one instance:
/// its own while fewer than [`MAX_CLIENTS_PER_INSTANCE`] are (or it is one of
/// them), else [`OVERFLOW_CLIENT`]'s.
pub fn slot<'a, V>(tracked: &BTreeMap<String, V>, client: &'a str) -> &'a str {
    if tracked.len() < MAX_CLIENTS_PER_INSTANCE || tracked.contains_key(client) {
        client
    } else {
        OVERFLOW_CLIENT
    }
}

/// One client's counts for one instance over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls finished, failed ones included.
    pub finished: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Sum of the finished calls' latencies, µs.
    pub latency_sum_us: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.finished = self.finished.saturating_add(other.finished);
        self.failed = self
            .failed
            .saturating_add(other.failed.min(other.finished))
            .min(self.finished);
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
    }
}

/// One client's latest latency report on one instance.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latest {
    /// Its mean latency, µs.
    mean_us: f64,
    /// Its finished calls.
    finished: u64,
    /// When it arrived.
    at: Instant,
}

/// Each instance's counts of the current interval, per client, and each
/// client's latest latency report from the last [`INTERVAL`].
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    instances: BTreeMap<String, BTreeMap<String, Counts>>,
    latest: BTreeMap<String, BTreeMap<String, Latest>>,
}

/// An interval's evidence: instance id → client id → counts.
pub type Interval = BTreeMap<String, BTreeMap<String, Counts>>;

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Adds what `client` reported about `instance` (`failed` is cut to
    /// `finished`). Past [`MAX_CLIENTS_PER_INSTANCE`] clients, a new client's
    /// counts go to [`OVERFLOW_CLIENT`].
    pub fn record(&mut self, instance: &str, client: &str, counts: Counts) {
        if counts == Counts::default() {
            return;
        }
        let clients = self.instances.entry(instance.to_string()).or_default();
        clients
            .entry(slot(clients, client).to_string())
            .or_default()
            .add(counts);
    }

    /// Takes in `client`'s latest report of `counts` about `instance`, at
    /// `now`, and judges its mean latency under rule 3 with `m` =
    /// `min_clients` against every client's latest report from the last
    /// [`INTERVAL`]. `None` when the report finished no calls or fewer than
    /// `m` clients have a latest report. Clients past
    /// [`MAX_CLIENTS_PER_INSTANCE`] share a slot, as in [`Ledger::record`].
    pub fn latency(
        &mut self,
        instance: &str,
        client: &str,
        counts: Counts,
        min_clients: u32,
        now: Instant,
    ) -> Option<Latency> {
        if counts.finished == 0 {
            return None;
        }
        let mean_us = counts.latency_sum_us as f64 / counts.finished as f64;
        let latest = self.latest.entry(instance.to_string()).or_default();
        latest.retain(|_, l| now.saturating_duration_since(l.at) <= INTERVAL);
        let slot = slot(latest, client).to_string();
        latest.insert(
            slot,
            Latest {
                mean_us,
                finished: counts.finished,
                at: now,
            },
        );
        let means: Vec<f64> = latest.values().map(|l| l.mean_us).collect();
        let (low_us, high_us) = mth_extremes(&means, min_clients)?;
        let finished: Vec<u64> = latest.values().map(|l| l.finished).collect();
        Some(Latency {
            mean_us,
            low_us,
            high_us,
            calls: counts.finished.min(mth_largest(&finished, min_clients)),
        })
    }

    /// Drops what was recorded about `instance` (it left, or moved).
    pub fn forget(&mut self, instance: &str) {
        self.instances.remove(instance);
        self.latest.remove(instance);
    }

    /// Ends the interval: its counts, leaving none; latest latency reports
    /// older than an [`INTERVAL`] at `now` are dropped.
    pub fn take(&mut self, now: Instant) -> Interval {
        self.latest.retain(|_, clients| {
            clients.retain(|_, l| now.saturating_duration_since(l.at) <= INTERVAL);
            !clients.is_empty()
        });
        std::mem::take(&mut self.instances)
    }

    /// No counts recorded this interval.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

/// The `m`-th largest of `values` (0 when there are fewer than `m`; `m = 0`
/// is taken as 1).
pub fn mth_largest(values: &[u64], m: u32) -> u64 {
    let m = m.max(1) as usize;
    if values.len() < m {
        return 0;
    }
    let mut v = values.to_vec();
    let (_, x, _) = v.select_nth_unstable_by(m - 1, |a, b| b.cmp(a));
    *x
}

/// `Σ min(vᵢ, c)` with `c` the `m`-th largest value: no value counts for
/// more than `m − 1` others reach (0 with fewer than `m` values).
pub fn capped_sum(values: &[u64], m: u32) -> u64 {
    let cap = mth_largest(values, m);
    values
        .iter()
        .fold(0u64, |s, &v| s.saturating_add(v.min(cap)))
}

/// The `m`-th smallest and `m`-th largest of `values` (`None` with fewer
/// than `m`).
fn mth_extremes(values: &[f64], m: u32) -> Option<(f64, f64)> {
    let m = m.max(1) as usize;
    if values.len() < m {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some((v[m - 1], v[v.len() - m]))
}

/// What one report's latency is believed to say (rule 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// `T`: the report's mean latency, µs.
    pub mean_us: f64,
    /// `L`: the `m`-th lowest client mean; at least `m` clients report at
    /// most this.
    pub low_us: f64,
    /// `U`: the `m`-th highest client mean; at least `m` clients report at
    /// least this.
    pub high_us: f64,
    /// The report's call count, capped at the `m`-th largest of the latest
    /// reports' (how much the EWMA trusts the sample).
    pub calls: u64,
}

impl Latency {
    /// The sample an estimate standing at `current` takes from this
    /// interval: `clamp(T, L, U)` when `L ≤ U` (at least `2m − 1` clients),
    /// else `clamp(T, min(v, L), max(v, U))`, which rises above `v` only as
    /// far as `m` clients report at least, and falls only as far as `m`
    /// report at most.
    ///
    /// With `L > U`, an instance with no estimate starts from `prior` (the
    /// service's mean estimate) as if that were its estimate, and with no
    /// prior either there is no sample (`None`).
    pub fn sample(&self, current: Option<f64>, prior: Option<f64>) -> Option<f64> {
        let valid = |x: &f64| x.is_finite() && *x >= 0.0;
        let (t, lo, hi) = (self.mean_us, self.low_us, self.high_us);
        if ![t, lo, hi].iter().all(valid) {
            return None;
        }
        if lo <= hi {
            return Some(t.clamp(lo, hi));
        }
        current
            .filter(valid)
            .or(prior.filter(valid))
            .map(|v| t.clamp(v.min(lo), v.max(hi)))
    }
}

/// What the daemon believes of one instance's interval: the capped counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Belief {
    /// Clients that reported on the instance.
    pub clients: usize,
    /// Finished calls, capped per client.
    pub finished: u64,
    /// Failed calls, capped per client (never above `finished`).
    pub failed: u64,
    /// Successful calls, capped per client.
    pub succeeded: u64,
}

/// Judges one instance's interval under [the rule](self) with `m` =
/// `min_clients`.
pub fn believe(clients: &BTreeMap<String, Counts>, min_clients: u32) -> Belief {
    let m = min_clients.max(1);
    let finished: Vec<u64> = clients.values().map(|c| c.finished).collect();
    let failed: Vec<u64> = clients.values().map(|c| c.failed.min(c.finished)).collect();
    let succeeded: Vec<u64> = clients
        .values()
        .map(|c| c.finished - c.failed.min(c.finished))
        .collect();
    Belief {
        clients: clients.len(),
        finished: capped_sum(&finished, m),
        failed: capped_sum(&failed, m),
        succeeded: capped_sum(&succeeded, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(finished: u64, failed: u64, mean_us: u64) -> Counts {
        Counts {
            finished,
            failed,
            latency_sum_us: finished * mean_us,
        }
    }

    fn clients(cs: &[(&str, Counts)]) -> BTreeMap<String, Counts> {
        cs.iter().map(|(id, c)| (id.to_string(), *c)).collect()
    }

    #[test]
    fn mth_largest_and_capped_sum() {
        assert_eq!(mth_largest(&[5, 1, 9], 1), 9);
        assert_eq!(mth_largest(&[5, 1, 9], 2), 5);
        assert_eq!(mth_largest(&[5, 1, 9], 3), 1);
        assert_eq!(mth_largest(&[5, 1, 9], 4), 0, "fewer than m");
        assert_eq!(mth_largest(&[7], 0), 7, "m = 0 is 1");
        assert_eq!(capped_sum(&[1000, 10, 10], 2), 30);
        assert_eq!(capped_sum(&[1000, 10, 10], 1), 1020);
        assert_eq!(capped_sum(&[1000], 2), 0, "one client alone counts nothing");
        assert_eq!(capped_sum(&[u64::MAX, u64::MAX, u64::MAX], 2), u64::MAX);
    }

    #[test]
    fn one_client_alone_shows_nothing_two_agreeing_show_everything() {
        let alone = believe(&clients(&[("mallory", counts(100, 100, 10))]), 2);
        assert_eq!(
            alone,
            Belief {
                clients: 1,
                finished: 0,
                failed: 0,
                succeeded: 0,
            }
        );
        let two = believe(
            &clients(&[("a", counts(50, 50, 10)), ("b", counts(50, 50, 30))]),
            2,
        );
        assert_eq!((two.finished, two.failed, two.succeeded), (100, 100, 0));
        // m = 1 believes one client as reported.
        let one = believe(&clients(&[("mallory", counts(100, 100, 10))]), 1);
        assert_eq!((one.finished, one.failed), (100, 100));
    }

    /// Feeds `reports` to a fresh ledger at one instant; the last one's
    /// judgement.
    fn judge(reports: &[(&str, Counts)], m: u32) -> Option<Latency> {
        let (mut l, t0) = (Ledger::new(), Instant::now());
        reports
            .iter()
            .map(|(c, n)| l.latency("i", c, *n, m, t0))
            .last()
            .flatten()
    }

    #[test]
    fn a_liar_counts_no_more_than_the_busiest_honest_client() {
        let b = believe(
            &clients(&[
                ("mallory", counts(1_000_000, 1_000_000, 1)),
                ("alice", counts(100, 2, 10)),
                ("bob", counts(80, 0, 10)),
            ]),
            2,
        );
        // Each count capped at its second largest: finished at alice's 100,
        // failed at alice's 2, successes at bob's 80.
        assert_eq!(b.finished, 100 + 100 + 80);
        assert_eq!(b.failed, 2 + 2);
        assert_eq!(b.succeeded, 80 + 80);
    }

    #[test]
    fn latency_moves_only_as_far_as_m_clients_agree() {
        let lat = |cs: &[(&str, Counts)]| judge(cs, 2).expect("judged");
        assert_eq!(judge(&[("mallory", counts(9, 0, 1))], 2), None, "alone");
        assert_eq!(
            judge(&[("a", counts(9, 0, 1)), ("b", counts(0, 0, 0))], 2),
            None
        );
        // Three clients: [L, U] is the middle report; the liar's 10⁹ µs is
        // trimmed whatever the estimate was, and its calls count as alice's.
        let three = lat(&[
            ("alice", counts(100, 0, 1000)),
            ("bob", counts(100, 0, 1200)),
            ("mallory", counts(1000, 0, 1_000_000_000)),
        ]);
        assert_eq!((three.low_us, three.high_us), (1200.0, 1200.0));
        assert_eq!((three.mean_us, three.calls), (1e9, 100));
        assert_eq!(three.sample(None, None), Some(1200.0));
        assert_eq!(three.sample(Some(5.0), None), Some(1200.0));
        assert_eq!(three.sample(Some(1e12), None), Some(1200.0));
        // Two clients (L > U): the estimate moves toward a report only when
        // both are on that side, and only as far as the nearer one.
        let two = lat(&[
            ("mallory", counts(100, 0, 1_000_000_000)),
            ("alice", counts(100, 0, 1000)),
        ]);
        assert_eq!((two.low_us, two.high_us), (1e9, 1000.0));
        assert_eq!(
            two.sample(Some(500.0), None),
            Some(1000.0),
            "both say slower"
        );
        assert_eq!(
            two.sample(Some(2000.0), None),
            Some(2000.0),
            "they disagree"
        );
        assert_eq!(two.sample(Some(2e9), None), Some(1e9), "both say faster");
        // A new instance starts from the prior, or waits.
        assert_eq!(two.sample(None, Some(800.0)), Some(1000.0));
        assert_eq!(two.sample(None, Some(1500.0)), Some(1500.0));
        assert_eq!(two.sample(None, None), None);
        // m = 1: each report as it is.
        let one = judge(&[("a", counts(1, 0, 100)), ("b", counts(3, 0, 200))], 1).unwrap();
        assert_eq!((one.sample(Some(1e6), None), one.calls), (Some(200.0), 3));
        // Latest reports last an interval: after it, a client alone again.
        let (mut l, t0) = (Ledger::new(), Instant::now());
        assert_eq!(l.latency("i", "a", counts(1, 0, 100), 2, t0), None);
        assert!(l
            .latency("i", "b", counts(1, 0, 100), 2, t0 + INTERVAL)
            .is_some());
        assert_eq!(
            l.latency(
                "i",
                "b",
                counts(1, 0, 100),
                2,
                t0 + INTERVAL * 2 + Duration::from_millis(1)
            ),
            None
        );
        l.forget("i");
        l.take(t0);
        assert!(l.latest.is_empty());
    }

    #[test]
    fn ledger_adds_per_client_and_bounds_the_clients() {
        let mut l = Ledger::new();
        l.record("i", "a", counts(3, 1, 10));
        l.record("i", "a", counts(2, 5, 10)); // failed cut to finished
        l.record("i", "b", Counts::default()); // nothing: no entry
        for n in 0..MAX_CLIENTS_PER_INSTANCE + 5 {
            l.record("j", &format!("c{n}"), counts(1, 1, 1));
        }
        let taken = l.take(Instant::now());
        assert!(l.is_empty());
        assert_eq!(
            taken["i"],
            clients(&[(
                "a",
                Counts {
                    finished: 5,
                    failed: 3,
                    latency_sum_us: 50
                }
            )])
        );
        assert_eq!(taken["j"].len(), MAX_CLIENTS_PER_INSTANCE + 1);
        assert_eq!(taken["j"][OVERFLOW_CLIENT].finished, 5);
        let mut l = Ledger::new();
        l.record("i", "a", counts(1, 0, 1));
        l.forget("i");
        assert!(l.is_empty());
    }

    fn arb_counts() -> impl Strategy<Value = Counts> {
        (0u64..1000, 0u64..1000, 0u64..10_000_000).prop_map(|(n, f, sum)| Counts {
            finished: n,
            failed: f.min(n),
            latency_sum_us: if n == 0 { 0 } else { sum },
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// One liar among honest clients adds at most the largest honest
        /// count to any capped count, never hides honest evidence, and never
        /// moves a latency sample outside `[min(v, lo), max(v, hi)]` (inside
        /// `[lo, hi]` with enough clients), whichever report comes last.
        #[test]
        fn one_liar_is_bounded(
            honest in prop::collection::vec(arb_counts(), 0..6),
            lie in (any::<u64>(), any::<u64>(), any::<u64>()),
            liar_at in 0usize..6,
            v in prop_oneof![Just(None), (0.0f64..1e7).prop_map(Some)],
            prior in prop_oneof![Just(None), (0.0f64..1e7).prop_map(Some)],
        ) {
            let liar = Counts { finished: lie.0, failed: lie.1 % lie.0.saturating_add(1), latency_sum_us: lie.2 };
            let mut hs: BTreeMap<String, Counts> = honest
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("h{i}"), *c))
                .collect();
            let without = believe(&hs, 2);
            hs.insert("liar".into(), liar);
            let with = believe(&hs, 2);
            let sum = |f: fn(&Counts) -> u64| honest.iter().map(f).sum::<u64>();
            let max = |f: fn(&Counts) -> u64| honest.iter().map(f).max().unwrap_or(0);
            prop_assert!(with.failed <= sum(|c| c.failed) + max(|c| c.failed));
            prop_assert!(with.finished <= sum(|c| c.finished) + max(|c| c.finished));
            prop_assert!(with.failed >= without.failed);
            prop_assert!(with.succeeded >= without.succeeded);
            prop_assert!(with.finished >= without.finished);
            let honest_failed = sum(|c| c.failed);
            if honest_failed == 0 {
                prop_assert_eq!(with.failed, 0, "no honest failure, no failure");
            }
            prop_assert!(with.failed <= with.finished);
            let mut reports: Vec<(String, Counts)> =
                hs.iter().filter(|(id, _)| *id != "liar").map(|(id, c)| (id.clone(), *c)).collect();
            reports.insert(liar_at.min(reports.len()), ("liar".into(), liar));
            let reports: Vec<(&str, Counts)> = reports.iter().map(|(id, c)| (id.as_str(), *c)).collect();
            if let Some(lat) = judge(&reports, 2) {
                let means: Vec<f64> = honest
                    .iter()
                    .filter(|c| c.finished > 0)
                    .map(|c| c.latency_sum_us as f64 / c.finished as f64)
                    .collect();
                if lat.low_us <= lat.high_us && !means.is_empty() {
                    // Enough clients: the sample is inside the honest range.
                    let s = lat.sample(v, prior).expect("a sample");
                    let lo = means.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    prop_assert!(s >= lo && s <= hi, "{} outside honest [{}, {}]", s, lo, hi);
                }
                if let Some(s) = lat.sample(v, prior) {
                    let start = v.or(prior);
                    let lo = means.iter().copied().chain(start).fold(f64::INFINITY, f64::min);
                    let hi = means.iter().copied().chain(start).fold(f64::NEG_INFINITY, f64::max);
                    prop_assert!(s >= lo && s <= hi, "{} outside [{}, {}]", s, lo, hi);
                }
            }
        }
    }
}
