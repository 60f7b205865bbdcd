//! When to re-plan a service, and whether to push the result: the one
//! scheduler the daemon's engine and the simulator both run.
//!
//! Two kinds of change:
//! - **urgent**: membership (register, expire, a broken stream), operator
//!   settings, an ejection or a circuit opening. Planned at the next
//!   opportunity and pushed if the list a client would see changed at all.
//! - **damped**: a load report (for policies that plan on load, when load
//!   shedding adapts to it, or when consistent hashing spills keyed calls
//!   off a server past its bound), client stats (for policies that plan on
//!   outcomes), and time alone while a weight ramps (slow start) or load is
//!   shed. Planned at most once per the policy's `min_plan_interval`, and
//!   pushed only if some weight moved by more than its `hysteresis`, so a
//!   central view does not herd every client after each noisy report.
//!
//! A plan is never pushed when it equals the current one ([`should_publish`]),
//! and a service that never published anything does not start with an empty
//! list that says nothing (no servers, rules or cluster modes).
//!
//! Time is a parameter; the caller decides when to call [`Replanner::run`]
//! (the daemon: after every batch of commands and on its sweep tick; the
//! simulator: at [`Replanner::next_due`]).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::cluster::ClusterConfig;
use crate::policy::{shed, ServicePlan};
use crate::registry::{Evaluated, Registry};

/// What the scheduler knows of each service: which changed, and when each
/// was last planned.
#[derive(Debug, Default)]
pub struct Replanner {
    /// Plan at the next opportunity, push on any list change.
    urgent: BTreeSet<String>,
    /// Plan once the damping interval allows, push past hysteresis.
    dirty: BTreeSet<String>,
    /// When each service was last planned.
    last_plan: HashMap<String, Instant>,
}

/// How a list version is made: the daemon's generation (persisted, one more
/// at every start) in the high 32 bits and a counter of the plans published
/// since that start in the low 32, so versions keep growing across restarts.
/// Shown to operators as `generation.sequence` ([`show_version`]).
pub const SEQUENCE_BITS: u32 = 32;

/// The version before the first one a daemon of `generation` publishes.
pub fn first_version(generation: u64) -> u64 {
    generation << SEQUENCE_BITS
}

/// A version as operators read it: `generation.sequence` (`3.17`, the 17th
/// plan published since the daemon's third start). 0 (nothing published) is
/// `-`.
pub fn show_version(version: u64) -> String {
    if version == 0 {
        return "-".into();
    }
    let sequence = version & ((1u64 << SEQUENCE_BITS) - 1);
    format!("{}.{sequence}", version >> SEQUENCE_BITS)
}

/// A plan as clients get it: the plan and the version it was published as
/// (versions only grow, so a client can ignore an older list).
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// Strictly increasing per publisher.
    pub version: u64,
    /// The plan.
    pub plan: ServicePlan,
}

/// A plan the scheduler made, and how to judge it against the current one.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The service.
    pub service: String,
    /// Its new plan.
    pub plan: ServicePlan,
    /// `None` for an urgent plan (push any change); for a damped one, the
    /// policy's hysteresis (push only past it).
    pub hysteresis: Option<f64>,
}

impl Replanner {
    /// Nothing to plan yet.
    pub fn new() -> Self {
        Replanner::default()
    }

    /// Membership or operator settings of `service` changed: plan at once.
    pub fn changed(&mut self, service: &str) {
        self.urgent.insert(service.to_string());
    }

    /// A backend of `service` reported its load; `circuit` says whether the
    /// report opened or closed its circuit (a list change).
    pub fn load_reported(&mut self, registry: &Registry, service: &str, circuit: bool) {
        let p = registry.policy(service);
        if circuit {
            self.changed(service);
        } else if p.kind.uses_load() || shed::adaptive(&p.shed) || p.spills_keys() {
            self.dirty.insert(service.to_string());
        }
    }

    /// A client of `service` reported call outcomes; `ejected` says whether
    /// outlier detection ejected an instance because of them (a run of
    /// consecutive failures). Latency estimates move with each report.
    pub fn stats_reported(&mut self, registry: &Registry, service: &str, ejected: bool) {
        let p = registry.policy(service);
        if ejected {
            self.changed(service);
        } else if p.kind.uses_stats() || p.outcome.enabled {
            self.dirty.insert(service.to_string());
        }
    }

    /// An interval of client evidence was judged ([`Registry::evaluate_health`]):
    /// ejections and re-admissions are urgent; moved outcome weights or
    /// latency estimates are damped, for the policies that plan on them.
    pub fn evidence_judged(&mut self, registry: &Registry, e: &Evaluated) {
        let p = registry.policy(&e.service);
        if !e.events.is_empty() {
            self.changed(&e.service);
        } else if e.weights && (p.kind.uses_stats() || p.outcome.enabled) {
            self.dirty.insert(e.service.clone());
        }
    }

    /// Whether anything waits to be planned.
    pub fn is_idle(&self) -> bool {
        self.urgent.is_empty() && self.dirty.is_empty()
    }

    /// The earliest instant at or after `now` when [`Replanner::run`] has
    /// something to plan (`None`: nothing is waiting).
    pub fn next_due(&self, registry: &Registry, now: Instant) -> Option<Instant> {
        if !self.urgent.is_empty() {
            return Some(now);
        }
        self.dirty
            .iter()
            .map(|s| match self.last_plan.get(s) {
                Some(t) => now.max(*t + registry.policy(s).min_plan_interval),
                None => now,
            })
            .min()
    }

    /// Plans every urgent service, then every damped one whose interval has
    /// passed, with [`Registry::plan`] (`shed_step`: how often load shedding
    /// steps, the daemon's report interval). A service whose plan moves with
    /// time alone (a ramp, shedding) stays due for a damped re-plan.
    pub fn run(
        &mut self,
        registry: &mut Registry,
        now: Instant,
        shed_step: Duration,
    ) -> Vec<Planned> {
        let mut out = Vec::new();
        for service in std::mem::take(&mut self.urgent) {
            self.dirty.remove(&service);
            out.push(self.plan(registry, service, None, now, shed_step));
        }
        let due: Vec<String> = self
            .dirty
            .iter()
            .filter(|s| {
                let min = registry.policy(s).min_plan_interval;
                self.last_plan
                    .get(*s)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= min)
            })
            .cloned()
            .collect();
        for service in due {
            self.dirty.remove(&service);
            let h = registry.policy(&service).hysteresis;
            out.push(self.plan(registry, service, Some(h), now, shed_step));
        }
        out
    }

    fn plan(
        &mut self,
        registry: &mut Registry,
        service: String,
        hysteresis: Option<f64>,
        now: Instant,
        shed_step: Duration,
    ) -> Planned {
        let (plan, again) = registry.plan(&service, shed_step, now);
        if registry.service(&service).is_none() {
            self.last_plan.remove(&service);
        } else {
            self.last_plan.insert(service.clone(), now);
        }
        if again {
            // Slow start and shedding move the plan with time alone.
            self.dirty.insert(service.clone());
        }
        Planned {
            service,
            plan,
            hysteresis,
        }
    }
}

/// Whether `new` should replace `current` (the plan clients hold, if any):
/// not when a client would see the same list, nor, for a damped plan, when
/// every weight is within `hysteresis` of the current one; and a first plan
/// only if it says something (servers, rules or cluster modes).
pub fn should_publish(
    current: Option<&ServicePlan>,
    new: &ServicePlan,
    hysteresis: Option<f64>,
) -> bool {
    match current {
        Some(cur) => !cur.same_list(new) && !hysteresis.is_some_and(|h| new.close_to(cur, h)),
        None => {
            !new.servers.is_empty()
                || !new.rules.is_empty()
                || *new.cluster != ClusterConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_show_as_generation_and_sequence() {
        assert_eq!(show_version(first_version(3) + 17), "3.17");
        assert_eq!(show_version(4_294_967_307), "1.11");
        assert_eq!(show_version(0), "-");
        assert!(first_version(2) > first_version(1) + u64::from(u32::MAX));
    }
    use crate::model::{InstanceSpec, Load};
    use crate::policy::{PolicyKind, ServicePolicy};
    use crate::registry::Attachment;

    const S: &str = "svc";
    const STEP: Duration = Duration::from_millis(250);

    fn spec(id: &str) -> InstanceSpec {
        InstanceSpec::new(S, id, "127.0.0.1:9")
    }

    fn registry(kind: PolicyKind, now: Instant) -> Registry {
        let mut r = Registry::new();
        let mut p = ServicePolicy::with_kind(kind);
        p.load_aware.blackout = Duration::ZERO;
        r.set_policy(S, p);
        for (session, id) in [(1, "a"), (2, "b")] {
            r.apply_register(
                spec(id),
                Duration::from_secs(60),
                Attachment::Stream { session },
                now,
            );
        }
        r
    }

    fn busy(active: u64) -> Load {
        Load {
            cpu_utilization: 0.5,
            active_requests: active,
            qps: Some(100.0),
            ..Load::default()
        }
    }

    #[test]
    fn urgent_changes_are_planned_at_once_and_pushed_on_any_change() {
        let t0 = Instant::now();
        let mut reg = registry(PolicyKind::RoundRobin, t0);
        let mut r = Replanner::new();
        assert_eq!(r.next_due(&reg, t0), None);
        r.changed(S);
        assert_eq!(r.next_due(&reg, t0), Some(t0));
        let planned = r.run(&mut reg, t0, STEP);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].hysteresis, None);
        assert!(should_publish(None, &planned[0].plan, None));
        assert!(!should_publish(
            Some(&planned[0].plan),
            &planned[0].plan,
            None
        ));
        assert!(r.is_idle());
    }

    #[test]
    fn load_reports_replan_only_policies_that_use_them_and_are_damped() {
        let t0 = Instant::now();
        let reg = registry(PolicyKind::RoundRobin, t0);
        let mut r = Replanner::new();
        r.load_reported(&reg, S, false);
        assert!(r.is_idle(), "round robin ignores load");
        r.load_reported(&reg, S, true);
        assert_eq!(r.next_due(&reg, t0), Some(t0), "a circuit change is urgent");

        let mut reg = registry(PolicyKind::LoadAware, t0);
        let mut r = Replanner::new();
        r.changed(S);
        r.run(&mut reg, t0, STEP);
        let a = spec("a").key();
        reg.report(&a, 1, busy(4), t0).expect("a reports");
        r.load_reported(&reg, S, false);
        let min = reg.policy(S).min_plan_interval;
        assert_eq!(r.next_due(&reg, t0), Some(t0 + min));
        assert!(r.run(&mut reg, t0 + min / 2, STEP).is_empty(), "too soon");
        let planned = r.run(&mut reg, t0 + min, STEP);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].hysteresis, Some(reg.policy(S).hysteresis));
    }

    #[test]
    fn stats_replan_outcome_driven_policies_and_ejections() {
        let t0 = Instant::now();
        let reg = registry(PolicyKind::LoadAware, t0);
        let mut r = Replanner::new();
        r.stats_reported(&reg, S, false);
        assert!(r.is_idle());
        r.stats_reported(&reg, S, true);
        assert!(!r.is_idle());
        let reg = registry(PolicyKind::FastestResponse, t0);
        let mut r = Replanner::new();
        r.stats_reported(&reg, S, false);
        assert_eq!(r.next_due(&reg, t0), Some(t0));

        let judged = |events: Vec<crate::health::Event>, weights| Evaluated {
            service: S.to_string(),
            events,
            weights,
        };
        let ejected = crate::health::Event::Readmitted { id: "a".into() };
        let reg = registry(PolicyKind::LoadAware, t0);
        let mut r = Replanner::new();
        r.evidence_judged(&reg, &judged(vec![], true));
        assert!(r.is_idle(), "load_aware does not plan on outcomes");
        r.evidence_judged(&reg, &judged(vec![ejected.clone()], false));
        assert_eq!(r.next_due(&reg, t0), Some(t0), "a list change is urgent");
        let reg = registry(PolicyKind::FastestResponse, t0);
        let mut r = Replanner::new();
        r.evidence_judged(&reg, &judged(vec![], false));
        assert!(r.is_idle(), "nothing moved");
        r.evidence_judged(&reg, &judged(vec![], true));
        assert_eq!(r.next_due(&reg, t0), Some(t0));
    }

    #[test]
    fn small_weight_moves_are_not_pushed_but_list_changes_are() {
        let t0 = Instant::now();
        let mut reg = registry(PolicyKind::LoadAware, t0);
        let (a, b) = (spec("a").key(), spec("b").key());
        reg.report(&a, 1, busy(4), t0).expect("a");
        reg.report(&b, 2, busy(4), t0).expect("b");
        let before = reg.plan(S, STEP, t0).0;
        reg.report(&b, 2, busy(5), t0).expect("b");
        let wobble = reg.plan(S, STEP, t0).0;
        assert!(!should_publish(Some(&before), &wobble, Some(0.5)));
        assert!(should_publish(Some(&before), &wobble, None));
        reg.remove(&b);
        let gone = reg.plan(S, STEP, t0).0;
        assert!(should_publish(Some(&before), &gone, Some(0.5)));
        assert!(!should_publish(None, &ServicePlan::default(), None));
    }
}
