//! The adapter to the real engine: every call the simulator makes into
//! [`Registry`] and [`policy`] is here, so a change of their signatures is
//! fixed in one place.
//!
//! Plays the daemon's part: one service, one stream session per backend,
//! publishing a plan only when the list clients would follow changed.

use std::time::Duration;

use tokio::time::Instant;

use crate::model::{ClientStats, InstanceKey, InstanceOutcomes, InstanceSpec, Load};
use crate::policy::{self, config::ServicePolicy, ServicePlan};
use crate::registry::{Attachment, Registry};

use super::backend::Sample;

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
}

/// The daemon's state for the simulated service.
#[derive(Debug)]
pub struct Engine {
    reg: Registry,
    policy: ServicePolicy,
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
        reg.set_policy(SERVICE, policy.clone());
        Engine {
            reg,
            policy,
            t0,
            current: None,
            version: 0,
            shed_step: report_interval,
        }
    }

    fn at(&self, ns: u64) -> Instant {
        self.t0 + Duration::from_nanos(ns)
    }

    /// The damping interval of load- and outcome-driven re-plans.
    pub fn min_plan_interval(&self) -> Duration {
        self.policy.min_plan_interval
    }

    /// Backend `index` opens its report stream `session` as `id`.
    pub fn register(&mut self, id: &str, index: usize, weight: u32, session: u64, now: u64) {
        let spec = InstanceSpec {
            service: SERVICE.to_string(),
            instance_id: id.to_string(),
            address: format!("10.0.{}.{}:8080", index / 250, index % 250 + 1),
            zone: String::new(),
            weight,
            labels: Default::default(),
            version: String::new(),
            token: String::new(),
        };
        let now = self.at(now);
        self.reg
            .apply_register(spec, TTL, Attachment::Stream { session }, now);
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
        let _ = self.reg.report(&key(id), session, load, now);
    }

    /// One client's stats message.
    pub fn record_stats(&mut self, totals: &[(&str, CallTotals)], now: u64) {
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
        self.reg.record_stats(SERVICE, &stats, now);
    }

    /// The backend's stream broke (it was killed).
    pub fn remove(&mut self, id: &str) {
        self.reg.remove(&key(id));
    }

    /// Plans the service as the daemon does. An `urgent` plan (membership
    /// changed) is published if the list changed; a damped one (load or
    /// outcomes changed) only if some weight also moved past the policy's
    /// hysteresis. Returns the plan to publish, if any, and whether weights
    /// are still ramping (slow start: plan again later even if nothing changes).
    pub fn replan(&mut self, now: u64, urgent: bool) -> (Option<Published>, bool) {
        let now = self.at(now);
        let (plan, ramping) = self.reg.plan(SERVICE, self.shed_step, now);
        if let Some(cur) = &self.current {
            if cur.same_list(&plan) || (!urgent && plan.close_to(cur, self.policy.hysteresis)) {
                return (None, ramping);
            }
        }
        self.version += 1;
        self.current = Some(plan.clone());
        let published = Published {
            version: self.version,
            plan,
        };
        (Some(published), ramping)
    }
}
