//! The policy engine: pure functions from a snapshot of one service's instances
//! to the ordered list its clients follow. No sockets, clocks or locks here.
//!
//! Two stages, so the expensive one is shared:
//! 1. [`plan`] turns the service's candidates and policy into a [`ServicePlan`]
//!    (distinct servers + one ordered period), once per change;
//! 2. [`client_offset`] gives each subscriber its own rotation of that period,
//!    so clients do not all start on the same server (no herding).
//!
//! Policies: [`swrr`] (smooth weighted round robin over static weights, the only
//! one so far; the policy-engine issue adds the rest behind [`PolicyKind`]).

pub mod chash;
pub mod ewma;
pub mod least;
pub mod load_aware;
pub mod outcome;
pub mod random;
pub mod slow_start;
pub mod swrr;

use crate::model::{InstanceSpec, Load};

/// Default and upper bound of a list's length (entries in one period).
pub const DEFAULT_MAX_LIST_LEN: u32 = 1024;

/// Which balancing policy a service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Smooth weighted round robin over static weights (nginx).
    #[default]
    WeightedRoundRobin,
}

impl PolicyKind {
    /// The name used in the API, the CLI and the store.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::WeightedRoundRobin => "weighted_round_robin",
        }
    }

    /// Parses a policy name; `None` for an unknown one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "weighted_round_robin" => Some(PolicyKind::WeightedRoundRobin),
            _ => None,
        }
    }
}

/// Per-service policy settings (persisted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePolicy {
    /// The balancing policy.
    pub kind: PolicyKind,
    /// Cap on a list's length; longer periods are scaled down.
    pub max_list_len: u32,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy {
            kind: PolicyKind::default(),
            max_list_len: DEFAULT_MAX_LIST_LEN,
        }
    }
}

/// One instance the engine may put in a list.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// What it registered.
    pub spec: &'a InstanceSpec,
    /// Its latest load report, if any.
    pub load: Option<&'a Load>,
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
}

/// A service's plan: the distinct servers and one period of the order to use them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServicePlan {
    /// Distinct servers, sorted by instance id.
    pub servers: Vec<PlanServer>,
    /// Indices into `servers`; duplicates are weight.
    pub order: Vec<u32>,
    /// Largest deviation of a listed share from the intended one (fraction).
    pub max_share_error: f64,
}

impl ServicePlan {
    /// Whether a client would see the same list (ignores accounting fields).
    pub fn same_list(&self, other: &ServicePlan) -> bool {
        self.servers == other.servers && self.order == other.order
    }
}

/// Computes the plan for one service. `candidates` may come in any order.
pub fn plan(candidates: &[Candidate<'_>], policy: &ServicePolicy) -> ServicePlan {
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
            token: String::new(),
        })
        .collect();
    match policy.kind {
        PolicyKind::WeightedRoundRobin => {
            let weights: Vec<u32> = cands.iter().map(|c| c.spec.weight).collect();
            let e = swrr::expand(&weights, policy.max_list_len as usize);
            ServicePlan {
                servers,
                order: e.order,
                max_share_error: e.max_share_error,
            }
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
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
        .find(|&s| s >= 1 && s < len && gcd(s, len) == 1)
        .unwrap_or(1);
    ((u128::from(seq % len) * u128::from(stride)) % u128::from(len)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    fn spec(id: &str, w: u32) -> InstanceSpec {
        InstanceSpec {
            service: "s".into(),
            instance_id: id.into(),
            address: format!("127.0.0.1:{}", 1000 + w),
            zone: String::new(),
            weight: w,
            labels: BTreeMap::new(),
            version: String::new(),
        }
    }

    #[test]
    fn plan_is_sorted_and_weighted() {
        let specs = [spec("c", 3), spec("a", 1), spec("b", 2)];
        let cands: Vec<Candidate<'_>> = specs
            .iter()
            .map(|s| Candidate {
                spec: s,
                load: None,
            })
            .collect();
        let p = plan(&cands, &ServicePolicy::default());
        let ids: Vec<&str> = p.servers.iter().map(|s| s.instance_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(p.order.len(), 6);
        let c = |i: u32| p.order.iter().filter(|&&x| x == i).count();
        assert_eq!((c(0), c(1), c(2)), (1, 2, 3));
        assert!(plan(&[], &ServicePolicy::default()).order.is_empty());
    }

    #[test]
    fn policy_names_round_trip() {
        let k = PolicyKind::WeightedRoundRobin;
        assert_eq!(PolicyKind::parse(k.name()), Some(k));
        assert_eq!(PolicyKind::parse("nope"), None);
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
