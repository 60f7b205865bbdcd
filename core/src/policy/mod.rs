//! The policy engine: pure functions from a snapshot of one service's instances
//! to the ordered list its clients follow. No sockets, clocks or locks here:
//! `now` is a parameter and randomness comes from seeds.
//!
//! Two stages, so the expensive one is shared:
//! 1. [`plan`] turns the service's candidates and policy into a [`ServicePlan`]
//!    (distinct servers, their effective weights, one ordered period, and for
//!    the hash policies an affinity table), once per change;
//! 2. [`client_order`] gives each subscriber its own arrangement of that
//!    period, so clients do not all start on (or move to) the same server: a
//!    rotation for the smooth policies, a seeded draw for the random ones.
//!
//! Weights flow: base weights from the policy ([`PolicyKind`]) → times the
//! slow-start ramp ([`slow_start`]) → times the outcome factor ([`outcome`]) →
//! normalised to mean 1 → quantised into the shortest period within
//! `list_precision` (at most `max_list_len` entries) and
//! interleaved by smooth weighted round robin ([`swrr`]).
//!
//! Modules: [`config`] (policies and their parameters), [`swrr`] (nginx's
//! smooth WRR), [`random`], [`chash`] (ring and Maglev with bounded load),
//! [`least`] (least connections / least active), [`ewma`] (fastest response),
//! [`load_aware`] (gRPC's ORCA formula), [`outcome`] (dynamic weights from call
//! results), [`slow_start`] (Envoy's ramp), [`shed`] (the drop fraction for
//! load shedding with grpclb drop entries), [`choice`] (the client's
//! weighted two choices between two list entries), [`bounded`] (the client's
//! bound on keyed calls in flight per server), [`view`] (one subscriber's view:
//! routing rules and locality tiers applied).

pub mod bounded;
pub mod chash;
pub mod choice;
pub mod config;
pub mod ewma;
pub mod least;
pub mod load_aware;
pub mod outcome;
pub mod random;
pub mod shed;
pub mod slow_start;
pub mod swrr;
pub mod view;

pub use config::{PolicyChange, PolicyKind, ServicePolicy, ALL_POLICIES, DEFAULT_MAX_LIST_LEN};

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::SeedableRng;
use std::time::Instant;

use crate::cluster::ClusterConfig;
use crate::model::{InstanceSpec, Load};
use crate::routing::Rule;

/// Entries a random policy draws per client when the weighted period is shorter.
const MIN_RANDOM_LEN: usize = 256;

/// A backend's latest load report, and since when it has been reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadState {
    /// The report.
    pub load: Load,
    /// When it arrived.
    pub at: Instant,
    /// Since when this attachment has been reporting without a gap.
    pub since: Instant,
    /// The backend's full rate (`qps / utilization`, see
    /// [`load_aware::full_rate`]) from its latest report with traffic: an
    /// idle report (qps 0) keeps the previous one, so a backend the clients
    /// stopped using keeps its measured capacity instead of looking unknown.
    pub rate: Option<f64>,
}

/// One instance the engine may put in a list (drained ones are never candidates).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// What it registered.
    pub spec: &'a InstanceSpec,
    /// The registered weight, or the operator's override.
    pub weight: u32,
    /// Its latest load report, if any.
    pub load: Option<&'a LoadState>,
    /// Outcome-driven efficient weight, in units of `weight` (equal to it
    /// when all is well).
    pub efficient: f64,
    /// fastest_response: its latency estimate at `now`, µs (`None` before data).
    pub latency_us: Option<f64>,
    /// When it became active (new, or back from a drain), for slow start;
    /// `None` when it is fully warm.
    pub active_since: Option<Instant>,
    /// When outlier detection last re-admitted it (ramped over the policy's
    /// `readmit_window`); `None` if never, or long enough ago.
    pub readmitted: Option<Instant>,
}

/// A distinct server in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanServer {
    /// Instance id.
    pub instance_id: String,
    /// `host:port`.
    pub address: String,
    /// Locality.
    pub zone: String,
    /// Failover tier (0 first).
    pub tier: u32,
    /// A drop entry (load shedding).
    pub drop: bool,
    /// Opaque per-instance token.
    pub token: String,
    /// The instance's labels (routing rules select on them).
    pub labels: BTreeMap<String, String>,
}

impl PlanServer {
    /// The drop entry's server: clients fail calls that land on it.
    pub fn drop_entry() -> PlanServer {
        PlanServer {
            instance_id: String::new(),
            address: String::new(),
            zone: String::new(),
            tier: 0,
            drop: true,
            token: crate::model::DROP_TOKEN.to_string(),
            labels: BTreeMap::new(),
        }
    }
}

/// How each client's order is made from the plan's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrangement {
    /// The smooth period, rotated per client.
    #[default]
    Smooth,
    /// A seeded draw per client and plan, weights as probabilities.
    Random,
}

/// A service's plan: the distinct servers and one period of the order to use them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServicePlan {
    /// Distinct servers, sorted by instance id.
    pub servers: Vec<PlanServer>,
    /// Effective weight of each server, mean 1.0.
    pub weights: Vec<f64>,
    /// Indices into `servers`; duplicates are weight.
    pub order: Vec<u32>,
    /// Hash policies: key-hash slot → index into `servers` (empty otherwise).
    pub affinity: Vec<u32>,
    /// How clients' orders are derived from `order`.
    pub arrangement: Arrangement,
    /// Entries per client for [`Arrangement::Random`].
    pub random_len: usize,
    /// Largest deviation of a listed share from the intended one (fraction).
    pub max_share_error: f64,
    /// Some weight is still ramping (slow start): re-plan later even if
    /// nothing else changes.
    pub ramping: bool,
    /// Load shedding: the fraction of the period that is drop entries.
    pub drop_fraction: f64,
    /// The service's routing rules, in order.
    pub rules: Arc<Vec<Rule>>,
    /// The service's cluster modes.
    pub cluster: Arc<ClusterConfig>,
    /// Per zone: (instances in the list, instances registered), for locality
    /// tiers and their panic threshold.
    pub zones: BTreeMap<String, (usize, usize)>,
    /// Below this healthy fraction a zone's clients use every zone at once.
    pub panic_threshold: f64,
    /// How many list entries a client's pick compares ([`choice`]).
    pub choices: choice::Choices,
    /// Calls a client's pick counts in flight on each candidate besides its own.
    pub choice_prior: u32,
    /// `consistent_hash`: the bound `c` on a server's keyed calls in flight
    /// per client ([`bounded`]); 0 when there is none.
    pub load_bound: f64,
    /// `consistent_hash` with a bound: each server's spill fraction for
    /// keyed calls, in `servers` order ([`bounded::next_spill`]); empty
    /// when none spills.
    pub spill: Vec<f64>,
}

impl ServicePlan {
    /// Whether a client would see the same list (ignores accounting fields).
    pub fn same_list(&self, other: &ServicePlan) -> bool {
        self.same_routing(other)
            && self.servers == other.servers
            && self.order == other.order
            && self.affinity == other.affinity
            && self.arrangement == other.arrangement
            && (self.arrangement == Arrangement::Smooth || self.weights == other.weights)
    }

    /// Same servers and arrangement, and every weight within `hysteresis`
    /// (a fraction) of `other`'s: not worth pushing.
    pub fn close_to(&self, other: &ServicePlan, hysteresis: f64) -> bool {
        self.same_routing(other)
            && self.servers == other.servers
            && self.arrangement == other.arrangement
            && self.affinity == other.affinity
            && self.weights.len() == other.weights.len()
            && self
                .weights
                .iter()
                .zip(&other.weights)
                .all(|(a, b)| (a - b).abs() <= hysteresis * b.abs())
    }

    /// Same rules, cluster modes and locality inputs.
    fn same_routing(&self, other: &ServicePlan) -> bool {
        self.rules == other.rules
            && self.cluster == other.cluster
            && self.choices == other.choices
            && self.choice_prior == other.choice_prior
            && self.load_bound == other.load_bound
            && self.spill == other.spill
            && self.zones == other.zones
            && self.panic_threshold == other.panic_threshold
    }

    /// Each server's share of the calls of a client with no labels, zone or
    /// id, made without request labels: its entries in the period among
    /// those routing leaves in that client's default list. An instance an
    /// exclusive rule reserves gets 0 (its calls come only through its
    /// rule's route), and the others share what is left; drop entries count
    /// as calls. All 0 when the default list is empty.
    pub fn shares(&self) -> Vec<f64> {
        let members = view::default_members(self, &crate::model::ClientIdentity::default());
        let mut c = vec![0u64; self.servers.len()];
        for &i in &self.order {
            if members.get(i as usize).copied().unwrap_or(false) {
                c[i as usize] += 1;
            }
        }
        // Nothing but drop entries left: no instance serves the default list.
        let real = c.iter().zip(&self.servers).any(|(&n, s)| n > 0 && !s.drop);
        let n: u64 = c.iter().sum();
        if !real || n == 0 {
            return vec![0.0; self.servers.len()];
        }
        c.into_iter().map(|x| x as f64 / n as f64).collect()
    }
}

/// The base weights of `kind` for `cands` (sorted), before modifiers.
fn base_weights(cands: &[&Candidate<'_>], policy: &ServicePolicy, now: Instant) -> Vec<f64> {
    let statics: Vec<u32> = cands.iter().map(|c| c.weight).collect();
    let active: Vec<Option<u64>> = cands
        .iter()
        .map(|c| c.load.map(|l| l.load.active_requests))
        .collect();
    match policy.kind {
        PolicyKind::RoundRobin | PolicyKind::Random => vec![1.0; cands.len()],
        PolicyKind::WeightedRoundRobin
        | PolicyKind::WeightedRandom
        | PolicyKind::Hash
        | PolicyKind::ConsistentHash => statics.iter().map(|&w| f64::from(w)).collect(),
        PolicyKind::LeastConnections => least::least_connections(&active),
        PolicyKind::LeastActive => least::least_active(&statics, &active),
        PolicyKind::FastestResponse => {
            let est: Vec<Option<f64>> = cands.iter().map(|c| c.latency_us).collect();
            ewma::weights(&est)
        }
        PolicyKind::LoadAware => {
            let reports: Vec<Option<load_aware::Report>> = cands
                .iter()
                .map(|c| {
                    c.load.map(|l| load_aware::Report {
                        utilization: l.load.cpu_utilization,
                        qps: l.load.qps,
                        eps: l.load.eps,
                        active_requests: l.load.active_requests,
                        reported_at: l.at,
                        reporting_since: l.since,
                        rate: l.rate,
                        static_weight: f64::from(c.weight),
                    })
                })
                .collect();
            let statics: Vec<f64> = statics.iter().map(|&w| f64::from(w)).collect();
            load_aware::weights_or(&policy.load_aware, &reports, &statics, now)
        }
    }
}

/// Computes the plan for one service. `candidates` may come in any order.
pub fn plan(candidates: &[Candidate<'_>], policy: &ServicePolicy, now: Instant) -> ServicePlan {
    plan_shedding(candidates, policy, 0.0, now)
}

/// [`plan`] with load shedding: `drop_fraction` of the period becomes drop
/// entries (a last server with `drop` set), interleaved smoothly.
pub fn plan_shedding(
    candidates: &[Candidate<'_>],
    policy: &ServicePolicy,
    drop_fraction: f64,
    now: Instant,
) -> ServicePlan {
    let mut cands: Vec<&Candidate<'_>> = candidates.iter().collect();
    cands.sort_by(|a, b| a.spec.instance_id.cmp(&b.spec.instance_id));
    let servers: Vec<PlanServer> = cands
        .iter()
        .map(|c| PlanServer {
            instance_id: c.spec.instance_id.clone(),
            address: c.spec.address.clone(),
            zone: c.spec.zone.clone(),
            tier: 0,
            drop: false,
            token: c.spec.effective_token(),
            labels: c.spec.labels.clone(),
        })
        .collect();
    if cands.is_empty() {
        return ServicePlan::default();
    }
    let mut servers = servers;
    let drop_fraction = if drop_fraction.is_finite() {
        drop_fraction.clamp(0.0, shed::MAX_DROP_LIMIT)
    } else {
        0.0
    };
    let base = base_weights(&cands, policy, now);
    let mut ramping = false;
    let mut modified = false;
    let mut w: Vec<f64> = cands
        .iter()
        .zip(&base)
        .map(|(c, &b)| {
            let mut x = b;
            if let Some(since) = c.active_since {
                let f =
                    slow_start::factor(&policy.slow_start, now.saturating_duration_since(since));
                if f < 1.0 {
                    ramping = true;
                    modified = true;
                    x *= f;
                }
            }
            if let Some(since) = c.readmitted {
                let ramp = slow_start::SlowStart {
                    window: policy.readmit_window,
                    ..policy.slow_start
                };
                let f = slow_start::factor(&ramp, now.saturating_duration_since(since));
                if f < 1.0 {
                    ramping = true;
                    modified = true;
                    x *= f;
                }
            }
            if policy.outcome.enabled {
                let f = outcome::factor(f64::from(c.weight), c.efficient);
                if f < 1.0 {
                    modified = true;
                    x *= f;
                }
            }
            x
        })
        .collect();
    load_aware::normalise(&mut w);
    let choice_prior = choice::effective_prior(&w, policy.choice_prior);
    if drop_fraction > 0.0 {
        // The drop server's weight makes it `drop_fraction` of the total.
        let sum: f64 = w.iter().sum();
        w.push(sum * drop_fraction / (1.0 - drop_fraction));
        servers.push(PlanServer::drop_entry());
    }

    let max_len = policy.max_list_len as usize;
    // Static policies with nothing modifying them keep their exact integer
    // weights (1,2,3 → a 6-entry period); everything else is quantised.
    let exact = !modified
        && matches!(
            policy.kind,
            PolicyKind::RoundRobin
                | PolicyKind::WeightedRoundRobin
                | PolicyKind::Random
                | PolicyKind::WeightedRandom
                | PolicyKind::Hash
                | PolicyKind::ConsistentHash
        );
    let exact_ints = exact
        .then(|| {
            let ints: Vec<u32> = base.iter().map(|&x| x.round().max(1.0) as u32).collect();
            if drop_fraction > 0.0 {
                exact_drops(ints, drop_fraction, max_len)
            } else {
                Some(ints)
            }
        })
        .flatten();
    let ints: Vec<u32> = if let Some(ints) = exact_ints {
        ints
    } else {
        swrr::shortest(&w, max_len, policy.list_precision)
    };
    let e = swrr::expand(&ints, max_len);
    let total = e.order.len().max(1) as f64;
    let mut counts = vec![0u64; w.len()];
    for &i in &e.order {
        counts[i as usize] += 1;
    }
    let wsum: f64 = w.iter().sum();
    let max_share_error = w
        .iter()
        .zip(&counts)
        .map(|(&x, &k)| (x / wsum - k as f64 / total).abs())
        .fold(0.0, f64::max);
    let affinity = match policy.kind {
        // Modular hashing over the weighted period.
        PolicyKind::Hash => e.order.clone(),
        PolicyKind::ConsistentHash => {
            let names: Vec<&str> = cands.iter().map(|c| c.spec.instance_id.as_str()).collect();
            let weights: Vec<f64> = cands.iter().map(|c| f64::from(c.weight)).collect();
            chash::build(&policy.chash, &names, &weights)
        }
        _ => Vec::new(),
    };
    let arrangement = match policy.kind {
        PolicyKind::Random | PolicyKind::WeightedRandom => Arrangement::Random,
        _ => Arrangement::Smooth,
    };
    ServicePlan {
        servers,
        weights: w,
        random_len: e.order.len().max(MIN_RANDOM_LEN).min(max_len.max(1)),
        order: e.order,
        affinity,
        arrangement,
        max_share_error,
        ramping,
        drop_fraction,
        choices: policy.client_choices,
        choice_prior,
        load_bound: match policy.kind {
            PolicyKind::ConsistentHash if bounded::is_on(policy.chash.load_bound) => {
                policy.chash.load_bound
            }
            _ => 0.0,
        },
        ..ServicePlan::default()
    }
}

/// Exact integer weights with the drop server's entry count appended: the
/// period scaled by the smallest factor (up to 64, within `max_len`) that
/// puts the drops within 1 % of `drop`, so a static service keeps a short
/// period (weights 1,3,1 at drop 0.5: 5 drop entries in a period of 10).
/// `None` when no factor does (the caller quantises instead).
fn exact_drops(mut ints: Vec<u32>, drop: f64, max_len: usize) -> Option<Vec<u32>> {
    let n: f64 = ints.iter().map(|&x| f64::from(x)).sum();
    let x = n * drop / (1.0 - drop);
    let off = |k: f64| ((k * x) - (k * x).round()).abs() / (k * x);
    let mut k = 1.0;
    while off(k) > 0.01 {
        k += 1.0;
        if k > 64.0 || k * (n + x) > max_len as f64 {
            return None;
        }
    }
    for v in ints.iter_mut() {
        *v = v.saturating_mul(k as u32);
    }
    ints.push((k * x).round().clamp(1.0, f64::from(u32::MAX)) as u32);
    Some(ints)
}

/// The order client number `client_seq` follows for the plan published as
/// `version`: a rotation of the smooth period (by client and version), or a
/// seeded draw (re-drawn for every new version) for the random policies.
pub fn client_order(plan: &ServicePlan, version: u64, client_seq: u64) -> Vec<u32> {
    match plan.arrangement {
        Arrangement::Smooth => {
            // Rotating by the version too: lb-client starts every new list at
            // its first entry, so with frequent re-plans a fixed offset would
            // keep a client on the same few entries of every plan.
            let order = &plan.order;
            let offset = client_offset(client_seq.wrapping_add(version), order.len());
            order[offset..]
                .iter()
                .chain(&order[..offset])
                .copied()
                .collect()
        }
        Arrangement::Random => {
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(random::client_seed(version, client_seq));
            random::sample(&plan.weights, plan.random_len, &mut rng)
        }
    }
}

/// Where subscriber number `seq` starts in a list of `len` entries.
///
/// A Weyl sequence: `seq × stride mod len` with `stride ≈ len / φ` made coprime
/// to `len`, so the first `len` subscribers all start at different entries and
/// any consecutive group of subscribers is spread evenly around the list.
pub fn client_offset(seq: u64, len: usize) -> usize {
    if len <= 1 {
        return 0;
    }
    let len = len as u64;
    let ideal = ((len as f64) * 0.618_033_988_749_895).round() as u64;
    // The coprime stride nearest to len/φ (1 always qualifies, so this ends).
    let stride = (0..len)
        .flat_map(|d| [ideal.saturating_sub(d), ideal + d])
        .find(|&s| s >= 1 && s < len && swrr::gcd(s, len) == 1)
        .unwrap_or(1);
    ((u128::from(seq % len) * u128::from(stride)) % u128::from(len)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn spec(id: &str, w: u32) -> InstanceSpec {
        InstanceSpec {
            weight: w,
            ..InstanceSpec::new("s", id, format!("127.0.0.1:{}", 1000 + w))
        }
    }

    fn cand(s: &InstanceSpec) -> Candidate<'_> {
        Candidate {
            spec: s,
            weight: s.weight,
            load: None,
            efficient: f64::from(s.weight),
            latency_us: None,
            active_since: None,
            readmitted: None,
        }
    }

    fn counts(p: &ServicePlan) -> Vec<usize> {
        (0..p.servers.len())
            .map(|i| p.order.iter().filter(|&&x| x as usize == i).count())
            .collect()
    }

    fn kind(k: PolicyKind) -> ServicePolicy {
        ServicePolicy::with_kind(k)
    }

    #[test]
    fn static_weights_with_drops_keep_a_short_exact_period() {
        assert_eq!(
            exact_drops(vec![1, 3, 1], 0.5, 1024),
            Some(vec![1, 3, 1, 5])
        );
        assert_eq!(
            exact_drops(vec![1, 3, 1], 0.25, 1024),
            Some(vec![3, 9, 3, 5])
        );
        // No short period is within 1 %: the plan quantises instead.
        assert_eq!(exact_drops(vec![1, 1], 0.001, 1024), None);
        assert_eq!(exact_drops(vec![1, 1], 0.2, 2), None);
    }

    #[test]
    fn static_policies_keep_exact_periods() {
        let specs = [spec("c", 3), spec("a", 1), spec("b", 2)];
        let cands: Vec<Candidate<'_>> = specs.iter().map(cand).collect();
        let now = Instant::now();
        let p = plan(&cands, &kind(PolicyKind::WeightedRoundRobin), now);
        let ids: Vec<&str> = p.servers.iter().map(|s| s.instance_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(counts(&p), [1, 2, 3]);
        assert_eq!(p.max_share_error, 0.0);
        let rr = plan(&cands, &kind(PolicyKind::RoundRobin), now);
        assert_eq!(counts(&rr), [1, 1, 1]);
        let h = plan(&cands, &kind(PolicyKind::Hash), now);
        assert_eq!(h.affinity, h.order);
        let ch = plan(&cands, &kind(PolicyKind::ConsistentHash), now);
        assert!(chash::is_prime(ch.affinity.len() as u64));
        assert!(ch.affinity.len() >= 300);
        assert!(plan(&[], &ServicePolicy::default(), now).order.is_empty());
    }

    #[test]
    fn random_policies_draw_per_client_and_per_version() {
        let specs = [spec("a", 1), spec("b", 3)];
        let cands: Vec<Candidate<'_>> = specs.iter().map(cand).collect();
        let p = plan(&cands, &kind(PolicyKind::WeightedRandom), Instant::now());
        assert_eq!(p.arrangement, Arrangement::Random);
        let a = client_order(&p, 7, 0);
        assert_eq!(a.len(), p.random_len);
        assert_ne!(a, client_order(&p, 7, 1), "clients differ");
        assert_ne!(a, client_order(&p, 8, 0), "every plan re-draws");
        assert_eq!(a, client_order(&p, 7, 0), "seeded");
        let b = a.iter().filter(|&&i| i == 1).count() as f64 / a.len() as f64;
        assert!((b - 0.75).abs() < 0.1, "{b}");
    }

    #[test]
    fn smooth_orders_are_rotations() {
        let specs = [spec("a", 1), spec("b", 2), spec("c", 3)];
        let cands: Vec<Candidate<'_>> = specs.iter().map(cand).collect();
        let p = plan(
            &cands,
            &kind(PolicyKind::WeightedRoundRobin),
            Instant::now(),
        );
        let a = client_order(&p, 1, 0);
        let b = client_order(&p, 1, 1);
        assert_ne!(a, b);
        let doubled: Vec<u32> = a.iter().chain(&a).copied().collect();
        assert!(doubled.windows(b.len()).any(|w| w == b.as_slice()));
    }

    fn loaded(at: Instant, util: f64, qps: f64, active: u64) -> LoadState {
        LoadState {
            load: Load {
                cpu_utilization: util,
                active_requests: active,
                qps: Some(qps),
                ..Load::default()
            },
            at,
            since: at - Duration::from_secs(60),
            rate: load_aware::full_rate(Some(qps), util),
        }
    }

    #[test]
    fn load_aware_reacts_within_one_report_interval() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let specs = [spec("a", 1), spec("b", 1), spec("c", 1)];
        let policy = kind(PolicyKind::LoadAware);
        let share_of_b = |loads: &[LoadState], now| {
            let cands: Vec<Candidate<'_>> = specs
                .iter()
                .zip(loads)
                .map(|(s, l)| Candidate {
                    load: Some(l),
                    ..cand(s)
                })
                .collect();
            plan(&cands, &policy, now).shares()[1]
        };
        let steady = [
            loaded(t0, 0.5, 100.0, 4),
            loaded(t0, 0.5, 100.0, 4),
            loaded(t0, 0.5, 100.0, 4),
        ];
        let before = share_of_b(&steady, t0);
        assert!((before - 1.0 / 3.0).abs() < 0.01, "{before}");
        // One report interval later b has slowed down: its queue has grown and
        // its averages have barely moved yet.
        let t1 = t0 + Duration::from_secs(1);
        let slowed = [
            loaded(t1, 0.5, 100.0, 4),
            loaded(t1, 0.6, 90.0, 60),
            loaded(t1, 0.5, 100.0, 4),
        ];
        let after = share_of_b(&slowed, t1);
        assert!(after < before / 3.0, "{before} → {after}");
    }

    #[test]
    fn an_instance_reserved_by_an_exclusive_rule_has_no_share_of_the_default_list() {
        use crate::routing::{Match, Rule, Target};
        let now = Instant::now();
        let specs: Vec<InstanceSpec> = (0..7).map(|i| spec(&format!("i{i}"), 1)).collect();
        let cands: Vec<Candidate<'_>> = specs.iter().map(cand).collect();
        let mut p = plan(&cands, &kind(PolicyKind::RoundRobin), now);
        let even = p.shares();
        assert!(
            even.iter().all(|s| (s - 1.0 / 7.0).abs() < 1e-9),
            "{even:?}"
        );
        p.rules = Arc::new(vec![Rule {
            name: "ab".into(),
            when: Match {
                request: [("group".to_string(), "B".to_string())].into(),
                ..Match::default()
            },
            target: Target::Instance("i3".into()),
            exclusive: true,
            strict: false,
        }]);
        let s = p.shares();
        assert_eq!(s[3], 0.0, "{s:?}");
        for (i, x) in s.iter().enumerate().filter(|(i, _)| *i != 3) {
            assert!((x - 1.0 / 6.0).abs() < 1e-9, "{i}: {s:?}");
        }
        // Not exclusive: it keeps its share of the default list.
        Arc::make_mut(&mut p.rules)[0].exclusive = false;
        assert_eq!(p.shares(), even);
    }

    #[test]
    fn slow_start_and_outcomes_lower_shares() {
        let now = Instant::now() + Duration::from_secs(3600);
        let specs = [spec("a", 1), spec("b", 1)];
        let mut policy = kind(PolicyKind::RoundRobin);
        policy.slow_start.window = Duration::from_secs(10);
        let fresh = Candidate {
            active_since: Some(now - Duration::from_secs(5)),
            ..cand(&specs[1])
        };
        let p = plan(&[cand(&specs[0]), fresh], &policy, now);
        assert!(p.ramping);
        let s = p.shares();
        assert!((s[1] / s[0] - 0.5).abs() < 0.02, "{s:?}");
        let mut policy = kind(PolicyKind::RoundRobin);
        policy.outcome.enabled = true;
        let failing = Candidate {
            efficient: 0.25,
            ..cand(&specs[1])
        };
        let s = plan(&[cand(&specs[0]), failing], &policy, now).shares();
        assert!((s[1] / s[0] - 0.25).abs() < 0.02, "{s:?}");
    }

    #[test]
    fn quantised_lists_stay_within_one_percent() {
        let now = Instant::now();
        let specs: Vec<InstanceSpec> = (0..20).map(|i| spec(&format!("i{i:02}"), 1)).collect();
        let cands: Vec<Candidate<'_>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Candidate {
                latency_us: Some(1000.0 + 137.0 * i as f64),
                ..cand(s)
            })
            .collect();
        let p = plan(&cands, &kind(PolicyKind::FastestResponse), now);
        assert!(p.order.len() <= DEFAULT_MAX_LIST_LEN as usize);
        assert!(p.max_share_error < 0.01, "{}", p.max_share_error);
    }

    #[test]
    fn hysteresis_compares_weights() {
        let specs = [spec("a", 1), spec("b", 1)];
        let cands: Vec<Candidate<'_>> = specs.iter().map(cand).collect();
        let p = plan(&cands, &kind(PolicyKind::RoundRobin), Instant::now());
        let mut q = p.clone();
        q.weights = vec![1.03, 0.97];
        assert!(q.close_to(&p, 0.05));
        q.weights = vec![1.2, 0.8];
        assert!(!q.close_to(&p, 0.05));
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn first_len_clients_get_distinct_offsets(len in 1usize..3000) {
            let n = len.min(500) as u64;
            let offsets: HashSet<usize> = (0..n).map(|s| client_offset(s, len)).collect();
            prop_assert_eq!(offsets.len() as u64, n);
            prop_assert!(offsets.iter().all(|&o| o < len));
        }

        #[test]
        fn consecutive_clients_spread(len in 8usize..2000, start in 0u64..1_000_000) {
            // Any 4 consecutive subscribers start well apart: by the three-distance
            // theorem the smallest gap is about len/(4·φ²) ≈ len/10.5; we check len/12.
            let offs: Vec<usize> = (start..start + 4).map(|s| client_offset(s, len)).collect();
            for i in 0..4 {
                for j in i + 1..4 {
                    let d = offs[i].abs_diff(offs[j]);
                    let d = d.min(len - d);
                    prop_assert!(d * 12 + 12 >= len, "len {} offsets {:?}", len, offs);
                }
            }
        }
    }
}
