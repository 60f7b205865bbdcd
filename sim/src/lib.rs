//! A deterministic, virtual-time simulator of lb: the real registry, policy
//! engine and re-plan scheduler, with modelled backends and clients, to
//! compare policies before the real benchmark (the project's benchmark
//! scenarios, family A: a heterogeneous farm whose fast backend degrades).
//!
//! What is real and what is modelled:
//! - **real** (from `lb-core`, as the daemon runs them): the registry
//!   (registration, load reports, client stats judged per client under
//!   `lb_core::evidence`'s rule, each client its own `client_id`), the
//!   re-plan scheduler
//!   (`lb_core::replan`: membership changes planned and published at once,
//!   load- and outcome-driven re-plans at most every `min_plan_interval` and
//!   published only past the policy's `hysteresis`, nothing published unless
//!   the list changed) and the policy engine (`plan`, `client_order`); all
//!   called from [`engine`], the only adapter;
//! - **modelled**: backends ([`backend`]: `slots` workers, FIFO queue,
//!   exponential service times, a load report every `report_interval`),
//!   clients (round robin over their own list, a new list restarting at its
//!   first entry, and under `client_choices=2` lb-client's weighted two
//!   choices by the client's own requests in flight, with lb-core's
//!   `policy::choice` rule; stats every `stats_interval`), the network (a plan reaches
//!   the clients after `propagation`; requests take no time to travel) and
//!   the load ([`workload`]: open-loop Poisson arrivals, generated once and
//!   replayed for every policy).
//!
//! Not modelled: the daemon's outlier detection (the interval detectors are
//! not run, and simulated clients do not report failure runs), the store
//! (so neither a daemon restart nor the warm restart's load snapshot: the
//! `balancer-restart` benchmark measures those with real processes), and the
//! time planning itself takes.
//!
//! A client's deadline cancels its request on the backend (removed from the
//! queue or its slot freed), as gRPC cancellation does. A killed backend fails
//! what it holds at once, and requests sent to it fail at once until the
//! clients hold a plan without it.
//!
//! Besides every [`PolicyKind`], the `p2c_peak_ewma` contender runs tower's
//! power of two choices over Peak-EWMA inside each client ([`p2c`]), using
//! the plans only for membership: the strongest client-side peer.
//!
//! # Layout
//! - [`scenario`]: backends, clients, load and timed events; `hetero-degrade`.
//! - [`workload`]: Poisson arrivals (also `lb-loadgen`'s) and the exponential
//!   sampler; seeded RNG streams.
//! - [`backend`]: the backend queue model and its load report.
//! - [`p2c`]: tower's p2c + Peak-EWMA, per client.
//! - [`engine`]: the adapter to lb-core (registry, re-plan scheduler, policies).
//! - [`metrics`]: results, percentiles, the table (also `lb-report`'s) and
//!   the JSON.
//! - `driver`: the event loop.

#![forbid(unsafe_code)]

pub mod backend;
mod driver;
pub mod engine;
pub mod metrics;
pub mod p2c;
pub mod scenario;
pub mod workload;

pub use metrics::{BackendResult, PhaseResult, PolicyResult, Report};
pub use scenario::{BackendSpec, Event, EventKind, Scenario};
pub use workload::{Arrival, Workload};

use lb_core::policy::{PolicyKind, ServicePolicy, ALL_POLICIES};

/// Name of the client-side peer contender.
pub const P2C_PEAK_EWMA: &str = "p2c_peak_ewma";

/// How clients choose a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSide {
    /// Follow the daemon's list (round robin, or the affinity table for a key).
    List,
    /// tower's p2c over each client's own Peak-EWMA estimates; the list only
    /// says who is a member.
    P2cPeakEwma,
}

/// The static weights backends register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticWeights {
    /// Every backend weight 1.
    Equal,
    /// Proportional to true capacity (`slots / service_ms`), as the lowest
    /// capacity: the best a static configuration can do.
    Capacity,
}

/// One row of the comparison: a policy on the daemon plus the client behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Contender {
    /// Row name.
    pub name: String,
    /// The service's policy on the daemon.
    pub policy: ServicePolicy,
    /// What clients do with the plan.
    pub client: ClientSide,
    /// Static weights of the backends.
    pub weights: StaticWeights,
}

impl Contender {
    /// `kind` with default parameters; `weighted_round_robin` gets capacity
    /// weights (the benchmark plan's "weighted" row), every other policy weight 1.
    pub fn policy(kind: PolicyKind) -> Self {
        Contender {
            name: kind.name().to_string(),
            policy: ServicePolicy::with_kind(kind),
            client: ClientSide::List,
            weights: if kind == PolicyKind::WeightedRoundRobin {
                StaticWeights::Capacity
            } else {
                StaticWeights::Equal
            },
        }
    }

    /// tower's p2c + Peak-EWMA inside each client.
    pub fn p2c_peak_ewma() -> Self {
        Contender {
            name: P2C_PEAK_EWMA.to_string(),
            policy: ServicePolicy::with_kind(PolicyKind::RoundRobin),
            client: ClientSide::P2cPeakEwma,
            weights: StaticWeights::Equal,
        }
    }

    /// A contender by name: a policy name or `p2c_peak_ewma`.
    pub fn by_name(name: &str) -> Option<Self> {
        if name == P2C_PEAK_EWMA {
            return Some(Contender::p2c_peak_ewma());
        }
        PolicyKind::parse(name).map(Contender::policy)
    }

    /// Every policy, then the client-side peer.
    pub fn all() -> Vec<Self> {
        ALL_POLICIES
            .into_iter()
            .map(Contender::policy)
            .chain([Contender::p2c_peak_ewma()])
            .collect()
    }
}

/// Runs one contender over a given workload. `seed` feeds the clients' own
/// randomness (p2c); the workload carries everything else random.
pub fn run_workload(
    scenario: &Scenario,
    contender: &Contender,
    workload: &Workload,
    seed: u64,
) -> PolicyResult {
    driver::run(scenario, contender, workload, seed)
}

/// Runs one contender on the scenario's arrivals for `seed`.
pub fn run(scenario: &Scenario, contender: &Contender, seed: u64) -> PolicyResult {
    run_workload(
        scenario,
        contender,
        &Workload::generate(scenario, seed),
        seed,
    )
}

/// Runs every contender on the same arrivals.
pub fn compare(scenario: &Scenario, contenders: &[Contender], seed: u64) -> Report {
    let workload = Workload::generate(scenario, seed);
    Report {
        scenario: scenario.name.clone(),
        seed,
        duration: scenario.duration,
        rate: scenario.rate(),
        results: contenders
            .iter()
            .map(|c| run_workload(scenario, c, &workload, seed))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    #[test]
    fn latency_includes_queueing() {
        // One backend with one slot, 10 ms service; a request at 10 ms and one
        // at 12 ms (the plan reaches clients at 1 ms). The second waits 8 ms.
        let mut s = Scenario::new(
            "one-slot",
            vec![BackendSpec {
                slots: 1,
                service_ms: 10.0,
            }],
            Duration::from_secs(1),
        );
        s.warmup = Duration::ZERO;
        s.clients = 1;
        let at = |t: u64| Arrival {
            at: t * MS,
            client: 0,
            key: 0,
            work: 1.0,
        };
        let w = Workload {
            arrivals: vec![at(10), at(12)],
        };
        let r = run_workload(&s, &Contender::by_name("round_robin").unwrap(), &w, 1);
        assert_eq!(r.ok, 2);
        assert_eq!(r.p50_ms, 10.0);
        assert_eq!(r.max_ms, 18.0, "8 ms wait + 10 ms service");
        assert_eq!(r.max_queue, 1);
        assert_eq!(r.errors(), 0);
    }

    #[test]
    fn same_seed_same_results() {
        let mut s = Scenario::hetero_degrade(Duration::from_secs(2));
        s.warmup = Duration::from_secs(1);
        let cs = [
            Contender::by_name("load_aware").unwrap(),
            Contender::p2c_peak_ewma(),
        ];
        let a = compare(&s, &cs, 7);
        let b = compare(&s, &cs, 7);
        assert_eq!(a, b);
        assert_eq!(a.to_json(), b.to_json());
        assert_ne!(a, compare(&s, &cs, 8));
    }

    #[test]
    fn every_contender_has_a_name() {
        let all = Contender::all();
        assert_eq!(all.len(), ALL_POLICIES.len() + 1);
        for c in &all {
            assert_eq!(Contender::by_name(&c.name).as_ref(), Some(c));
        }
        let w = Contender::by_name("weighted_round_robin").unwrap();
        assert_eq!(w.weights, StaticWeights::Capacity);
    }
}
