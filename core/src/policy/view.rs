//! One subscriber's view of a plan: the period arranged for it
//! ([`super::client_order`]), filtered by the routing rules that apply to it,
//! with each server's locality tier for this client's zone, and one order per
//! routing rule the client evaluates on request labels.
//!
//! Routing is a filter before balancing (the seeds' routing notes; Dubbo's
//! router chain): filtering the client's arrangement of the smooth period keeps
//! the remaining servers' relative shares and their interleaving. Drop entries
//! (load shedding) survive every filter, so each route sheds the same fraction.

use std::collections::BTreeMap;

use crate::model::ClientIdentity;
use crate::routing::{self, RouteServer, Subscriber};

use super::{client_order, ServicePlan};

/// A route the client evaluates per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRoute {
    /// The rule's name.
    pub name: String,
    /// Request labels that select it.
    pub request: BTreeMap<String, String>,
    /// Indices into the plan's servers.
    pub order: Vec<u32>,
    /// An empty `order` fails the request instead of falling back.
    pub strict: bool,
}

/// What one subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    /// Per plan server: its tier for this client (0 = use first).
    pub tiers: Vec<u32>,
    /// Indices into the plan's servers, in order (default route).
    pub order: Vec<u32>,
    /// Routes on request labels, in rule order.
    pub routes: Vec<ViewRoute>,
}

/// The view of `plan` (published as `version`) for subscriber `seq`.
pub fn client_view(
    plan: &ServicePlan,
    version: u64,
    seq: u64,
    client: &ClientIdentity,
) -> ClientView {
    let base = client_order(plan, version, seq);
    let tiers = if client.zone.is_empty() || plan.zones.len() <= 1 {
        vec![0; plan.servers.len()]
    } else {
        let zones: Vec<&str> = plan.servers.iter().map(|s| s.zone.as_str()).collect();
        let mut t = routing::tiers(&zones, &client.zone, &plan.zones, plan.panic_threshold);
        // Drop entries stay in the first tier: shedding applies everywhere.
        for (i, s) in plan.servers.iter().enumerate() {
            if s.drop {
                if let Some(x) = t.get_mut(i) {
                    *x = 0;
                }
            }
        }
        t
    };
    if plan.rules.is_empty() {
        return ClientView {
            tiers,
            order: base,
            routes: Vec::new(),
        };
    }
    let (default, routes) = memberships(plan, client);
    let keep = |m: &[bool]| -> Vec<u32> {
        // With nothing but drop entries left, the route has no instance.
        if !m
            .iter()
            .zip(&plan.servers)
            .any(|(&inside, s)| inside && !s.drop)
        {
            return Vec::new();
        }
        base.iter()
            .copied()
            .filter(|&i| m.get(i as usize).copied().unwrap_or(false))
            .collect()
    };
    let order = keep(&default);
    let routes = routes
        .into_iter()
        .map(|(r, members)| ViewRoute {
            name: r.name,
            request: r.request,
            order: keep(&members),
            strict: r.strict,
        })
        .collect();
    ClientView {
        tiers,
        order,
        routes,
    }
}

/// A view as weighted endpoints in priority order: what a client that
/// balances by locality weight and fails over by priority needs (gRPC's
/// xDS client: gRFC A27 priorities, A28 locality weights; Envoy's
/// `ClusterLoadAssignment`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Weighted {
    /// Per priority (0 first, contiguous): each listed server with its
    /// weight, its entries in the view's period.
    pub priorities: Vec<Vec<(u32, u32)>>,
    /// The fraction of the period that is drop entries, in parts per million.
    pub drop_per_million: u32,
}

/// `view`'s default list as [`Weighted`]: each server's entries in the
/// period are its weight (the smooth period already holds the policy's
/// shares in whole entries), its tier is its priority (renumbered from 0
/// without gaps), and drop entries become the drop fraction.
pub fn weighted(plan: &ServicePlan, view: &ClientView) -> Weighted {
    let mut entries = vec![0u32; plan.servers.len()];
    let mut drops = 0u64;
    for &i in &view.order {
        match plan.servers.get(i as usize) {
            Some(s) if s.drop => drops += 1,
            Some(_) => entries[i as usize] += 1,
            None => {}
        }
    }
    let tier = |i: usize| view.tiers.get(i).copied().unwrap_or(0);
    let mut tiers: Vec<u32> = (0..entries.len())
        .filter(|&i| entries[i] > 0)
        .map(tier)
        .collect();
    tiers.sort_unstable();
    tiers.dedup();
    let priorities = tiers
        .iter()
        .map(|&t| {
            (0..entries.len())
                .filter(|&i| entries[i] > 0 && tier(i) == t)
                .map(|i| (i as u32, entries[i]))
                .collect()
        })
        .collect();
    let total = view.order.len() as u64;
    Weighted {
        priorities,
        drop_per_million: (drops * 1_000_000).checked_div(total).unwrap_or(0) as u32,
    }
}

/// Which of the plan's servers are in `client`'s default list, one flag per
/// server (drop entries always are): the servers routing leaves it.
pub fn default_members(plan: &ServicePlan, client: &ClientIdentity) -> Vec<bool> {
    if plan.rules.is_empty() {
        return vec![true; plan.servers.len()];
    }
    memberships(plan, client).0
}

/// The routing that applies to `client`, as membership over the plan's
/// servers (drop entries are members of everything): its default list, and
/// each request route with its members.
fn memberships(
    plan: &ServicePlan,
    client: &ClientIdentity,
) -> (Vec<bool>, Vec<(routing::ClientRoute, Vec<bool>)>) {
    // Routing sees the real servers only; drop entries are added back.
    let real: Vec<usize> = (0..plan.servers.len())
        .filter(|&i| !plan.servers[i].drop)
        .collect();
    let route_servers: Vec<RouteServer<'_>> = real
        .iter()
        .map(|&i| {
            let s = &plan.servers[i];
            RouteServer {
                instance_id: &s.instance_id,
                zone: &s.zone,
                labels: &s.labels,
            }
        })
        .collect();
    let sub = Subscriber {
        client_id: &client.client_id,
        zone: &client.zone,
        labels: &client.labels,
    };
    let routing = routing::for_client(&plan.rules, &route_servers, &sub);
    let members = |set: &[bool]| -> Vec<bool> {
        let mut m: Vec<bool> = plan.servers.iter().map(|s| s.drop).collect();
        for (k, &i) in real.iter().enumerate() {
            if set.get(k).copied().unwrap_or(false) {
                m[i] = true;
            }
        }
        m
    };
    let default = members(&routing.default);
    let routes = routing
        .routes
        .into_iter()
        .map(|r| {
            let m = members(&r.members);
            (r, m)
        })
        .collect();
    (default, routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PlanServer;
    use crate::routing::{Match, Rule, Target};
    use std::sync::Arc;

    fn server(id: &str, zone: &str, labels: &[(&str, &str)]) -> PlanServer {
        PlanServer {
            instance_id: id.into(),
            address: format!("127.0.0.1:1{}", id.len()),
            zone: zone.into(),
            tier: 0,
            drop: false,
            token: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn plan(servers: Vec<PlanServer>, rules: Vec<Rule>) -> ServicePlan {
        let n = servers.len() as u32;
        let mut zones = BTreeMap::new();
        for s in servers.iter().filter(|s| !s.drop) {
            let e = zones.entry(s.zone.clone()).or_insert((0, 0));
            e.0 += 1;
            e.1 += 1;
        }
        ServicePlan {
            weights: vec![1.0; n as usize],
            order: (0..n).collect(),
            servers,
            rules: Arc::new(rules),
            zones,
            panic_threshold: 0.5,
            ..ServicePlan::default()
        }
    }

    fn client(zone: &str, kv: &[(&str, &str)]) -> ClientIdentity {
        ClientIdentity {
            client_id: "c1".into(),
            zone: zone.into(),
            labels: labels(kv),
        }
    }

    fn ids(p: &ServicePlan, order: &[u32]) -> Vec<String> {
        let mut v: Vec<String> = order
            .iter()
            .map(|&i| p.servers[i as usize].instance_id.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn weighted_counts_entries_renumbers_tiers_and_turns_drops_into_a_fraction() {
        let mut p = plan(
            vec![
                server("a", "z1", &[]),
                server("b", "z2", &[]),
                server("c", "z2", &[]),
                PlanServer {
                    drop: true,
                    ..server("drop", "", &[])
                },
            ],
            vec![],
        );
        // a: 3 entries, b: 2, c: 1, drops: 2 of 8.
        p.order = vec![0, 1, 0, 3, 2, 0, 1, 3];
        let far = client_view(&p, 1, 0, &client("z2", &[]));
        let w = weighted(&p, &far);
        assert_eq!(w.priorities, vec![vec![(1, 2), (2, 1)], vec![(0, 3)]]);
        assert_eq!(w.drop_per_million, 250_000);
        // No zone: one priority, every server.
        let w = weighted(&p, &client_view(&p, 1, 0, &client("", &[])));
        assert_eq!(w.priorities, vec![vec![(0, 3), (1, 2), (2, 1)]]);
    }

    #[test]
    fn ab_rule_splits_by_request_label_and_reserves_group_b() {
        let p = plan(
            vec![
                server("a1", "", &[("group", "A")]),
                server("a2", "", &[("group", "A")]),
                server("b1", "", &[("group", "B")]),
            ],
            vec![Rule {
                name: "ab".into(),
                when: Match {
                    request: labels(&[("group", "B")]),
                    ..Match::default()
                },
                target: Target::Selector(labels(&[("group", "B")])),
                exclusive: true,
                strict: false,
            }],
        );
        let v = client_view(&p, 1, 0, &client("", &[]));
        assert_eq!(ids(&p, &v.order), ["a1", "a2"]);
        assert_eq!(v.routes.len(), 1);
        assert_eq!(ids(&p, &v.routes[0].order), ["b1"]);
        assert_eq!(v.routes[0].request, labels(&[("group", "B")]));
    }

    #[test]
    fn client_label_rule_replaces_the_default_list() {
        let p = plan(
            vec![server("x", "", &[("vip", "true")]), server("y", "", &[])],
            vec![Rule {
                name: "vip".into(),
                when: Match {
                    client: labels(&[("tier", "vip")]),
                    ..Match::default()
                },
                target: Target::Selector(labels(&[("vip", "true")])),
                exclusive: true,
                strict: false,
            }],
        );
        let vip = client_view(&p, 1, 0, &client("", &[("tier", "vip")]));
        assert_eq!(ids(&p, &vip.order), ["x"]);
        let other = client_view(&p, 1, 0, &client("", &[]));
        assert_eq!(ids(&p, &other.order), ["y"]);
        assert!(other.routes.is_empty());
    }

    #[test]
    fn drop_entries_survive_routing() {
        let mut servers = vec![
            server("a", "", &[("g", "1")]),
            server("b", "", &[("g", "2")]),
        ];
        servers.push(PlanServer::drop_entry());
        let p = plan(
            servers,
            vec![Rule {
                name: "r".into(),
                when: Match {
                    request: labels(&[("g", "2")]),
                    ..Match::default()
                },
                target: Target::Selector(labels(&[("g", "2")])),
                exclusive: false,
                strict: true,
            }],
        );
        let v = client_view(&p, 1, 0, &client("", &[]));
        assert_eq!(v.order.len(), 3);
        let r = &v.routes[0].order;
        assert_eq!(r.len(), 2);
        assert!(r.contains(&2), "the drop entry stays: {r:?}");
    }

    #[test]
    fn tiers_put_the_clients_zone_first() {
        let p = plan(
            vec![
                server("a", "z1", &[]),
                server("b", "z1", &[]),
                server("c", "z2", &[]),
            ],
            vec![],
        );
        let v = client_view(&p, 1, 0, &client("z1", &[]));
        assert_eq!(v.tiers, [0, 0, 1]);
        let v = client_view(&p, 1, 0, &client("z2", &[]));
        assert_eq!(v.tiers, [1, 1, 0]);
        let v = client_view(&p, 1, 0, &client("", &[]));
        assert_eq!(v.tiers, [0, 0, 0]);
    }
}
