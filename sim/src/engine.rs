//! The adapter to the real core: every call the simulator makes into
//! [`Registry`], [`Replanner`] and [`policy`] is here, so a change of their
//! signatures is fixed in one place.
//!
//! Plays the daemon's part for one service: one stream session per backend,
//! re-planned by the daemon's own scheduler ([`Replanner`]: membership
//! changes at once, load and outcomes damped and past hysteresis) and
//! published by its own rule ([`replan::should_publish`]).

use std::time::{Duration, Instant};

use lb_core::model::{ClientStats, InstanceKey, InstanceOutcomes, InstanceSpec, Load};
use lb_core::policy::{self, ServicePlan, ServicePolicy};
use lb_core::registry::{Attachment, Registry};
use lb_core::replan::{self, Replanner};

use crate::backend::Sample;

/// The simulated service's name.
pub const SERVICE: &str = "sim";

/// Registrations never expire during a run (kills are explicit).
const TTL: Duration = Duration::from_secs(3600);

/// One client's call outcomes for one backend over a stats interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTotals {
    /// Calls sent.
    pub started: u64,
    /// Calls finished, failed ones included.
    pub finished: u64,
    /// Of those, failed (timeouts included).
    pub failed: u64,
    /// Sum of finished calls' latencies, µs.
    pub latency_sum_us: u64,
}

/// A plan as the clients receive it.
#[derive(Debug, Clone)]
pub struct Published {
    /// Increases with every published plan.
    pub version: u64,
    plan: ServicePlan,
}

impl Published {
    /// The plan's distinct servers: instance id and whether it is a drop entry.
    pub fn servers(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.plan
            .servers
            .iter()
            .map(|s| (s.instance_id.as_str(), s.drop))
    }

    /// Subscriber `client_seq`'s list: indices into [`Published::servers`].
    pub fn order_for(&self, client_seq: u64) -> Vec<u32> {
        policy::client_order(&self.plan, self.version, client_seq)
    }

    /// The affinity table of hash policies (indices into the servers), or empty.
    pub fn affinity(&self) -> &[u32] {
        &self.plan.affinity
    }

    /// How clients pick from the list: `client_choices` and `choice_prior`
    /// (see `lb_core::policy::choice`).
    pub fn choice(&self) -> (lb_core::policy::choice::Choices, u32) {
        (self.plan.choices, self.plan.choice_prior)
    }

    /// consistent_hash: the bound on keyed requests in flight per client
    /// (see `lb_core::policy::bounded`), 0 for none.
    pub fn load_bound(&self) -> f64 {
        self.plan.load_bound
    }

    /// consistent_hash: each server's spill fraction for keyed requests (in
    /// [`Published::servers`] order; empty when none spills).
    pub fn key_spill(&self) -> &[f64] {
        &self.plan.spill
    }
}

/// The daemon's state for the simulated service.
#[derive(Debug)]
pub struct Engine {
    reg: Registry,
    replanner: Replanner,
    t0: Instant,
    current: Option<ServicePlan>,
    version: u64,
    /// How often the shedding controller steps (the daemon's report interval).
    shed_step: Duration,
}

fn key(id: &str) -> InstanceKey {
    InstanceKey {
        service: SERVICE.to_string(),
        instance_id: id.to_string(),
    }
}

impl Engine {
    /// A registry whose service uses `policy`; virtual time 0 is `t0`; load
    /// shedding steps once per `report_interval`, as in the daemon.
    pub fn new(policy: ServicePolicy, t0: Instant, report_interval: Duration) -> Self {
        let mut reg = Registry::new();
        reg.set_policy(SERVICE, policy);
        Engine {
            reg,
            replanner: Replanner::new(),
            t0,
            current: None,
            version: 0,
            shed_step: report_interval,
        }
    }

    fn at(&self, ns: u64) -> Instant {
        self.t0 + Duration::from_nanos(ns)
    }

    /// Backend `index` opens its report stream `session` as `id`.
    pub fn register(&mut self, id: &str, index: usize, weight: u32, session: u64, now: u64) {
        let spec = InstanceSpec {
            weight,
            ..InstanceSpec::new(
                SERVICE,
                id,
                format!("10.0.{}.{}:8080", index / 250, index % 250 + 1),
            )
        };
        let now = self.at(now);
        self.reg
            .apply_register(spec, TTL, Attachment::Stream { session }, now);
        self.replanner.changed(SERVICE);
    }

    /// A load report on stream `session`.
    pub fn report(&mut self, id: &str, session: u64, s: Sample, now: u64) {
        let load = Load {
            cpu_utilization: s.utilization,
            active_requests: s.active,
            qps: Some(s.qps),
            eps: Some(s.eps),
            ..Load::default()
        };
        let now = self.at(now);
        // Refused only if the stream no longer owns the instance (it was
        // killed); a dead backend sends nothing, so this cannot happen.
        if let Ok(circuit) = self.reg.report(&key(id), session, load, now) {
            self.replanner.load_reported(&self.reg, SERVICE, circuit);
        }
    }

    /// Client `client`'s stats message.
    pub fn record_stats(&mut self, client: &str, totals: &[(&str, CallTotals)], now: u64) {
        let stats = ClientStats {
            instances: totals
                .iter()
                .map(|(id, t)| InstanceOutcomes {
                    instance_id: id.to_string(),
                    calls_started: t.started,
                    calls_finished: t.finished,
                    calls_failed: t.failed,
                    latency_sum_us: t.latency_sum_us,
                    ..InstanceOutcomes::default()
                })
                .collect(),
            dropped: 0,
            no_backend: 0,
        };
        let now = self.at(now);
        let ejected = self.reg.record_stats(SERVICE, client, &stats, now);
        self.replanner.stats_reported(&self.reg, SERVICE, ejected);
    }

    /// The end of an evidence interval ([`lb_core::evidence::INTERVAL`]):
    /// the clients' counts are judged and move the outcome weights (outlier
    /// detection is not modelled).
    pub fn end_interval(&mut self, now: u64) {
        let now = self.at(now);
        for judged in self.reg.fold_outcomes(now) {
            self.replanner.evidence_judged(&self.reg, &judged);
        }
    }

    /// The backend's stream broke (it was killed).
    pub fn remove(&mut self, id: &str) {
        self.reg.remove(&key(id));
        self.replanner.changed(SERVICE);
    }

    /// When the scheduler next has something to plan, in virtual ns at or
    /// after `now` (`None`: nothing waits).
    pub fn next_due(&self, now: u64) -> Option<u64> {
        let at = self.replanner.next_due(&self.reg, self.at(now))?;
        Some(now + (at - self.at(now)).as_nanos().min(u128::from(u64::MAX)) as u64)
    }

    /// Plans what the scheduler says is due, as the daemon does, and returns
    /// the plan to publish, if any.
    pub fn replan(&mut self, now: u64) -> Option<Published> {
        let now = self.at(now);
        let mut out = None;
        for p in self.replanner.run(&mut self.reg, now, self.shed_step) {
            if !replan::should_publish(self.current.as_ref(), &p.plan, p.hysteresis) {
                continue;
            }
            self.version += 1;
            self.current = Some(p.plan.clone());
            out = Some(Published {
                version: self.version,
                plan: p.plan,
            });
        }
        out
    }
}
