//! Routing rules and locality tiers: which of a service's servers a subscriber
//! (and each of its requests) may use, computed before balancing.
//!
//! Sources:
//! - *Routing is a filter before balancing*: the course notes on load
//!   balancing, routing and clusters this project started from (their
//!   "routing strategies and load balancing" section:
//!   "whatever the routing, it filters some nodes out before load balancing";
//!   groups for A/B traffic, direct routing to one `ip:port`, healthy-first).
//!   The notes' Go `Filter(info, address) bool` runs per pick in the client;
//!   here the daemon evaluates everything it can (subscriber conditions,
//!   selectors) and ships the client a few named sub-lists it picks between by
//!   plain label equality.
//! - *Tag and condition routers*: Apache Dubbo's routers (`TagRouter`:
//!   instances carry a tag, requests ask for one, and a tag's instances are
//!   reserved for that tag unless the request falls back; `ConditionRouter`:
//!   `consumer conditions => provider conditions`, with `force` deciding
//!   whether an empty result fails the call or is ignored). [`Rule::exclusive`]
//!   is Dubbo's tag reservation, [`Rule::strict`] is Dubbo's `force`,
//!   [`Match::client`] / [`Match::client_id`] are the consumer side of a
//!   condition route and [`Target`] its provider side.
//! - *Locality priority and the panic threshold*: Envoy's priority levels and
//!   panic threshold (Envoy docs, `intro/arch_overview/upstream/load_balancing/`
//!   `priority` and `panic_threshold`). Servers in the client's zone form tier 0
//!   and the rest tier 1 ([`crate::policy::PlanServer::tier`]); a client
//!   spills to tier 1 only when tier 0 is exhausted. When too small a share of
//!   the local zone is healthy, Envoy stops trusting health and balances over
//!   everything; [`tiers`] does the same by putting every server in tier 0, so
//!   the few healthy local servers are not overloaded. (Envoy also spills a
//!   share of traffic to lower priorities as health drops, with its 1.4
//!   overprovisioning factor; here spilling is the client's failover.)
//!
//! # Rules
//! A [`Rule`] has conditions ([`Match`]) and a [`Target`]:
//! - `when.client` / `when.client_id` are evaluated here, per subscriber. A rule
//!   whose subscriber conditions fail is ignored for that subscriber.
//! - `when.request` is evaluated by the client, per request, by equality of
//!   every pair with the request's labels. A rule with request conditions
//!   becomes a [`ClientRoute`]; the client uses the first route (in rule
//!   order) whose pairs all match, and the default list otherwise.
//! - A rule without request conditions that applies to a subscriber replaces
//!   that subscriber's default list; only the first such rule counts.
//!
//! Label matching: every pair must be present with an equal value; the key
//! `zone` matches the zone field (of the instance or the subscriber), not a
//! label called `zone`. In request conditions `zone` has no special meaning.
//!
//! Reservation ([`Rule::exclusive`]): every exclusive rule's selection is
//! removed from every subscriber's default list (whether or not the rule
//! applies to that subscriber), so only traffic routed there explicitly
//! reaches it. Explicit selections are not filtered by other rules'
//! reservations: a debugging rule aimed at one reserved instance still
//! reaches it.
//!
//! Empty selections: a strict rule whose selection is empty fails the request
//! ("route X matches no instance"), or, for a subscriber-only rule, leaves the
//! subscriber with an empty default list. A non-strict one falls back to the
//! default list. [`unmatched`] names the rules in that state.

use std::collections::BTreeMap;

use crate::model::{check_id, check_labels, check_zone, FieldError};

/// Most rules per service.
pub const MAX_RULES: usize = 64;
/// Longest rule name, in bytes.
pub const MAX_RULE_NAME_LEN: usize = 64;
/// Default panic threshold for [`tiers`] (Envoy's default, 50%).
pub const DEFAULT_PANIC: f64 = 0.5;

/// The label key that matches a zone field rather than a label.
const ZONE_KEY: &str = "zone";

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1..=64 bytes of `[A-Za-z0-9._-]`, unique within the service.
    pub name: String,
    /// When the rule applies.
    pub when: Match,
    /// The servers it selects.
    pub target: Target,
    /// The selected servers are reserved: removed from every default list, so
    /// traffic not routed by a rule never reaches them.
    pub exclusive: bool,
    /// When the selection is empty: strict fails the request, otherwise the
    /// default list is used.
    pub strict: bool,
}

/// A rule's conditions; all present ones must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Request labels, all equal (evaluated by the client per request).
    pub request: BTreeMap<String, String>,
    /// Subscriber labels, all equal (evaluated by the daemon per subscriber);
    /// the key `zone` matches the subscriber's zone.
    pub client: BTreeMap<String, String>,
    /// `""` = any subscriber; otherwise the subscriber's client id.
    pub client_id: String,
}

/// Which servers a rule selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Servers whose labels include every pair; the key `zone` matches the
    /// server's zone.
    Selector(BTreeMap<String, String>),
    /// One instance id: direct routing.
    Instance(String),
}

/// Checks a service's rules; field paths start at `rules`, e.g.
/// `rules[2].when.request["group"]`.
pub fn check(rules: &[Rule]) -> Result<(), FieldError> {
    if rules.len() > MAX_RULES {
        return Err(FieldError::new(
            "rules",
            format!("{} rules, more than {MAX_RULES}", rules.len()),
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        check_rule_name(&r.name).map_err(|e| FieldError::new(format!("{at}.name"), e))?;
        if let Some(j) = rules[..i].iter().position(|o| o.name == r.name) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!("{:?} is already the name of rules[{j}]", r.name),
            ));
        }
        let w = &r.when;
        if w.request.is_empty() && w.client.is_empty() && w.client_id.is_empty() {
            return Err(FieldError::new(
                format!("{at}.when"),
                "at least one condition (request, client or client_id) is required; \
                 a rule for everyone is the default list",
            ));
        }
        check_labels(&w.request).map_err(|e| e.within(&format!("{at}.when.request")))?;
        check_match_labels(&w.client).map_err(|e| e.within(&format!("{at}.when.client")))?;
        if !w.client_id.is_empty() {
            check_id(&w.client_id)
                .map_err(|e| FieldError::new(format!("{at}.when.client_id"), e))?;
        }
        match &r.target {
            Target::Selector(sel) => {
                if sel.is_empty() {
                    return Err(FieldError::new(
                        format!("{at}.target.selector"),
                        "must not be empty; name at least one label (or zone)",
                    ));
                }
                check_match_labels(sel).map_err(|e| e.within(&format!("{at}.target.selector")))?;
            }
            Target::Instance(id) => {
                check_id(id).map_err(|e| FieldError::new(format!("{at}.target.instance"), e))?;
            }
        }
    }
    Ok(())
}

/// A rule name: `1..=MAX_RULE_NAME_LEN` bytes of `[A-Za-z0-9._-]`.
pub fn check_rule_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_RULE_NAME_LEN {
        return Err(format!(
            "{} bytes, longer than {MAX_RULE_NAME_LEN}",
            s.len()
        ));
    }
    match s
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || b"._-".contains(b)))
    {
        Some(b) => Err(format!(
            "contains {:?}; allowed: letters, digits and . _ -",
            b as char
        )),
        None => Ok(()),
    }
}

/// Labels matched against a subscriber or instance: label syntax, and a `zone`
/// value must be a valid zone (anything else could never match).
fn check_match_labels(m: &BTreeMap<String, String>) -> Result<(), FieldError> {
    check_labels(m)?;
    if let Some(z) = m.get(ZONE_KEY) {
        check_zone(z).map_err(|e| FieldError::new(format!("[{ZONE_KEY:?}]"), e))?;
    }
    Ok(())
}

/// What a server looks like to routing.
#[derive(Debug, Clone, Copy)]
pub struct RouteServer<'a> {
    /// Instance id.
    pub instance_id: &'a str,
    /// Locality.
    pub zone: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// What a subscriber looks like to routing.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// Locality.
    pub zone: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// One subscriber's routing, computed by the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRouting {
    /// Per server: in this client's default list.
    pub default: Vec<bool>,
    /// Rules with request conditions that apply to this client, in rule order
    /// (the client uses the first whose conditions a request meets).
    pub routes: Vec<ClientRoute>,
}

/// A per-request route as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRoute {
    /// The rule's name.
    pub name: String,
    /// Request labels that must all be equal.
    pub request: BTreeMap<String, String>,
    /// Per server: in this route's list.
    pub members: Vec<bool>,
    /// With no members, fail the request ("route X matches no instance").
    pub strict: bool,
}

/// Whether `labels` (with `zone` as the `zone` key) include every pair of `want`.
fn labels_match(
    want: &BTreeMap<String, String>,
    zone: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    want.iter().all(|(k, v)| {
        if k == ZONE_KEY {
            zone == v
        } else {
            labels.get(k) == Some(v)
        }
    })
}

fn selects(target: &Target, s: &RouteServer<'_>) -> bool {
    match target {
        Target::Selector(sel) => labels_match(sel, s.zone, s.labels),
        Target::Instance(id) => s.instance_id == id,
    }
}

fn selection(target: &Target, servers: &[RouteServer<'_>]) -> Vec<bool> {
    servers.iter().map(|s| selects(target, s)).collect()
}

/// Whether a rule's subscriber conditions hold for `sub`.
fn applies(when: &Match, sub: &Subscriber<'_>) -> bool {
    (when.client_id.is_empty() || when.client_id == sub.client_id)
        && labels_match(&when.client, sub.zone, sub.labels)
}

/// The default list and routes of one subscriber (see the module docs).
/// `servers` are indexed the same way in every returned vector.
pub fn for_client(
    rules: &[Rule],
    servers: &[RouteServer<'_>],
    sub: &Subscriber<'_>,
) -> ClientRouting {
    let selections: Vec<Vec<bool>> = rules
        .iter()
        .map(|r| selection(&r.target, servers))
        .collect();
    let mut default = vec![true; servers.len()];
    for (r, sel) in rules.iter().zip(&selections) {
        if r.exclusive {
            for (d, &s) in default.iter_mut().zip(sel) {
                *d &= !s;
            }
        }
    }
    let subscriber_rule = rules
        .iter()
        .zip(&selections)
        .find(|(r, _)| r.when.request.is_empty() && applies(&r.when, sub));
    if let Some((r, sel)) = subscriber_rule {
        if sel.contains(&true) {
            default.clone_from(sel);
        } else if r.strict {
            default = vec![false; servers.len()];
        }
    }
    let routes = rules
        .iter()
        .zip(&selections)
        .filter(|(r, _)| !r.when.request.is_empty() && applies(&r.when, sub))
        .map(|(r, sel)| ClientRoute {
            name: r.name.clone(),
            request: r.when.request.clone(),
            members: if sel.contains(&true) || r.strict {
                sel.clone()
            } else {
                default.clone()
            },
            strict: r.strict,
        })
        .collect();
    ClientRouting { default, routes }
}

/// How many of `servers` the rule's target selects (0 is flagged in ctl).
pub fn selected(rule: &Rule, servers: &[RouteServer<'_>]) -> usize {
    servers.iter().filter(|s| selects(&rule.target, s)).count()
}

/// Names of the rules whose target selects no server (to flag in ctl and metrics).
pub fn unmatched(rules: &[Rule], servers: &[RouteServer<'_>]) -> Vec<String> {
    rules
        .iter()
        .filter(|r| !servers.iter().any(|s| selects(&r.target, s)))
        .map(|r| r.name.clone())
        .collect()
}

/// Tier of each server for a client in `client_zone`: 0 = same zone, 1 = the
/// others. All 0 when `client_zone` is empty or no server is in it.
///
/// `server_zones` are the zones of the (healthy) servers in the list;
/// `zone_totals` maps a zone to `(healthy, total)` registered instances. Panic
/// threshold (Envoy): when the client zone's healthy fraction `healthy / total`
/// is below `panic` (`0.0..=1.0`; a non-finite value means
/// [`DEFAULT_PANIC`]), every server gets tier 0. A zone missing from
/// `zone_totals` is taken as fully healthy.
pub fn tiers(
    server_zones: &[&str],
    client_zone: &str,
    zone_totals: &BTreeMap<String, (usize, usize)>,
    panic: f64,
) -> Vec<u32> {
    let local = server_zones.iter().filter(|&&z| z == client_zone).count();
    if client_zone.is_empty() || local == 0 {
        return vec![0; server_zones.len()];
    }
    let panic = if panic.is_finite() {
        panic.clamp(0.0, 1.0)
    } else {
        DEFAULT_PANIC
    };
    let healthy_fraction = match zone_totals.get(client_zone) {
        // The list's own count is a lower bound on healthy, whatever we were told.
        Some(&(healthy, total)) => {
            let healthy = healthy.max(local);
            healthy as f64 / total.max(healthy) as f64
        }
        None => 1.0,
    };
    if healthy_fraction < panic {
        return vec![0; server_zones.len()];
    }
    server_zones
        .iter()
        .map(|&z| u32::from(z != client_zone))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(pairs: &[(&str, &str)]) -> Target {
        Target::Selector(labels(pairs))
    }

    fn rule(name: &str, when: Match, target: Target) -> Rule {
        Rule {
            name: name.into(),
            when,
            target,
            exclusive: false,
            strict: false,
        }
    }

    fn on_request(pairs: &[(&str, &str)]) -> Match {
        Match {
            request: labels(pairs),
            ..Match::default()
        }
    }

    fn on_client(pairs: &[(&str, &str)]) -> Match {
        Match {
            client: labels(pairs),
            ..Match::default()
        }
    }

    /// Servers: a(zone z1, group=A), b(z1, group=B), c(z2, group=B), d(z2, none).
    struct Fixture {
        ids: Vec<&'static str>,
        zones: Vec<&'static str>,
        labels: Vec<BTreeMap<String, String>>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                ids: vec!["a", "b", "c", "d"],
                zones: vec!["z1", "z1", "z2", "z2"],
                labels: vec![
                    labels(&[("group", "A")]),
                    labels(&[("group", "B")]),
                    labels(&[("group", "B")]),
                    labels(&[]),
                ],
            }
        }

        fn servers(&self) -> Vec<RouteServer<'_>> {
            (0..self.ids.len())
                .map(|i| RouteServer {
                    instance_id: self.ids[i],
                    zone: self.zones[i],
                    labels: &self.labels[i],
                })
                .collect()
        }
    }

    fn bits(v: &[bool]) -> String {
        v.iter().map(|&b| if b { '1' } else { '0' }).collect()
    }

    fn route<'a>(r: &'a ClientRouting, name: &str) -> &'a ClientRoute {
        r.routes
            .iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("no route {name} in {r:?}"))
    }

    #[test]
    fn request_rules_become_routes_in_order() {
        let f = Fixture::new();
        let servers = f.servers();
        let no_labels = BTreeMap::new();
        let sub = Subscriber {
            client_id: "c1",
            zone: "z1",
            labels: &no_labels,
        };
        let rules = vec![
            rule(
                "to-b",
                on_request(&[("group", "B")]),
                sel(&[("group", "B")]),
            ),
            rule(
                "to-z2",
                on_request(&[("local", "no")]),
                sel(&[("zone", "z2")]),
            ),
            rule(
                "debug",
                on_request(&[("debug", "a")]),
                Target::Instance("a".into()),
            ),
        ];
        let r = for_client(&rules, &servers, &sub);
        assert_eq!(bits(&r.default), "1111");
        let names: Vec<&str> = r.routes.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["to-b", "to-z2", "debug"], "rule order preserved");
        assert_eq!(bits(&route(&r, "to-b").members), "0110");
        assert_eq!(
            bits(&route(&r, "to-z2").members),
            "0011",
            "zone key matches instance zone"
        );
        assert_eq!(bits(&route(&r, "debug").members), "1000");
        assert_eq!(route(&r, "to-b").request, labels(&[("group", "B")]));
    }

    #[test]
    fn subscriber_conditions_filter_rules() {
        let f = Fixture::new();
        let servers = f.servers();
        let gold = labels(&[("tier", "gold")]);
        let plain = BTreeMap::new();
        let rules = vec![
            rule(
                "gold",
                Match {
                    request: labels(&[("vip", "true")]),
                    client: labels(&[("tier", "gold")]),
                    ..Match::default()
                },
                sel(&[("group", "A")]),
            ),
            rule(
                "only-c9",
                Match {
                    request: labels(&[("x", "1")]),
                    client_id: "c9".into(),
                    ..Match::default()
                },
                sel(&[("group", "B")]),
            ),
            rule(
                "in-z2",
                Match {
                    request: labels(&[("y", "1")]),
                    client: labels(&[("zone", "z2")]),
                    ..Match::default()
                },
                sel(&[("zone", "z2")]),
            ),
        ];
        let names = |sub: Subscriber<'_>| -> Vec<String> {
            for_client(&rules, &servers, &sub)
                .routes
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        let s = |id, zone, labels| Subscriber {
            client_id: id,
            zone,
            labels,
        };
        assert_eq!(names(s("c1", "z1", &gold)), ["gold"]);
        assert_eq!(names(s("c1", "z1", &plain)), Vec::<String>::new());
        assert_eq!(names(s("c9", "z1", &plain)), ["only-c9"]);
        assert_eq!(names(s("c9", "z2", &gold)), ["gold", "only-c9", "in-z2"]);
        // A label called "zone" on the subscriber is not its zone.
        let fake_zone = labels(&[("zone", "z2")]);
        assert_eq!(names(s("c1", "z1", &fake_zone)), Vec::<String>::new());
    }

    #[test]
    fn exclusive_selections_are_reserved_for_everyone() {
        let f = Fixture::new();
        let servers = f.servers();
        let none = BTreeMap::new();
        let sub = Subscriber {
            client_id: "c1",
            zone: "z1",
            labels: &none,
        };
        let mut canary = rule(
            "canary",
            Match {
                request: labels(&[("canary", "true")]),
                client_id: "someone-else".into(),
                ..Match::default()
            },
            sel(&[("group", "B")]),
        );
        canary.exclusive = true;
        let debug = rule(
            "debug",
            on_request(&[("debug", "b")]),
            Target::Instance("b".into()),
        );
        let r = for_client(&[canary.clone(), debug.clone()], &servers, &sub);
        assert_eq!(
            bits(&r.default),
            "1001",
            "reserved even though the rule does not apply"
        );
        assert_eq!(r.routes.len(), 1);
        assert_eq!(
            bits(&r.routes[0].members),
            "0100",
            "explicit routes still reach reserved servers"
        );
        canary.exclusive = false;
        let r = for_client(&[canary, debug], &servers, &sub);
        assert_eq!(bits(&r.default), "1111");
    }

    #[test]
    fn empty_selection_strict_or_fallback() {
        let f = Fixture::new();
        let servers = f.servers();
        let none = BTreeMap::new();
        let sub = Subscriber {
            client_id: "c1",
            zone: "z1",
            labels: &none,
        };
        let mut reserved = rule(
            "reserve-a",
            on_client(&[("never", "x")]),
            sel(&[("group", "A")]),
        );
        reserved.exclusive = true;
        let mut strict = rule("strict", on_request(&[("g", "C")]), sel(&[("group", "C")]));
        strict.strict = true;
        let lenient = rule("lenient", on_request(&[("g", "D")]), sel(&[("group", "D")]));
        let r = for_client(&[reserved, strict, lenient], &servers, &sub);
        assert_eq!(bits(&r.default), "0111");
        let s = route(&r, "strict");
        assert!(s.strict);
        assert_eq!(bits(&s.members), "0000", "strict: the request fails");
        let l = route(&r, "lenient");
        assert!(!l.strict);
        assert_eq!(bits(&l.members), "0111", "non-strict: the default list");
    }

    #[test]
    fn first_subscriber_rule_replaces_the_default() {
        let f = Fixture::new();
        let servers = f.servers();
        let gold = labels(&[("tier", "gold")]);
        let sub = Subscriber {
            client_id: "c1",
            zone: "z1",
            labels: &gold,
        };
        let mut vip = rule(
            "vip",
            on_client(&[("tier", "gold")]),
            sel(&[("group", "A")]),
        );
        vip.exclusive = true;
        let later = rule(
            "later",
            on_client(&[("tier", "gold")]),
            sel(&[("group", "B")]),
        );
        let r = for_client(&[vip.clone(), later.clone()], &servers, &sub);
        assert_eq!(
            bits(&r.default),
            "1000",
            "first match wins, reserved or not"
        );
        assert!(r.routes.is_empty());
        // Others do not get the reserved server.
        let none = BTreeMap::new();
        let other = Subscriber {
            labels: &none,
            ..sub
        };
        assert_eq!(
            bits(&for_client(&[vip, later.clone()], &servers, &other).default),
            "0111"
        );
        // Empty selection: non-strict keeps the normal default (the later rule
        // does not get a turn), strict leaves nothing.
        let mut empty = rule(
            "empty",
            on_client(&[("tier", "gold")]),
            sel(&[("group", "Z")]),
        );
        let r = for_client(&[empty.clone(), later.clone()], &servers, &sub);
        assert_eq!(bits(&r.default), "1111");
        empty.strict = true;
        let mut routed = rule("routed", on_request(&[("r", "1")]), sel(&[("group", "Z")]));
        let r = for_client(
            &[empty.clone(), later.clone(), routed.clone()],
            &servers,
            &sub,
        );
        assert_eq!(bits(&r.default), "0000");
        assert_eq!(
            bits(&r.routes[0].members),
            "0000",
            "falls back to the (empty) default"
        );
        routed.target = sel(&[("group", "B")]);
        let r = for_client(&[empty, later, routed], &servers, &sub);
        assert_eq!(bits(&r.routes[0].members), "0110");
    }

    #[test]
    fn unmatched_names_rules_selecting_nothing() {
        let f = Fixture::new();
        let servers = f.servers();
        let rules = vec![
            rule("ok", on_request(&[("g", "B")]), sel(&[("group", "B")])),
            rule(
                "gone",
                on_request(&[("d", "1")]),
                Target::Instance("zz".into()),
            ),
            rule("nozone", on_request(&[("z", "1")]), sel(&[("zone", "z9")])),
        ];
        assert_eq!(unmatched(&rules, &servers), ["gone", "nozone"]);
        assert_eq!(unmatched(&rules[..1], &servers), Vec::<String>::new());
    }

    fn err_field(rules: &[Rule]) -> String {
        match check(rules) {
            Err(e) => e.field,
            Ok(()) => panic!("accepted {rules:?}"),
        }
    }

    #[test]
    fn check_names_the_field() {
        let good = rule("ok", on_request(&[("group", "B")]), sel(&[("group", "B")]));
        assert_eq!(check(std::slice::from_ref(&good)), Ok(()));
        let mut direct = rule(
            "direct.1_x-y",
            on_client(&[("zone", "z1")]),
            Target::Instance("host:80".into()),
        );
        direct.exclusive = true;
        assert_eq!(
            check(&[good.clone(), direct.clone()]),
            Ok(()),
            "exclusive direct rule is allowed"
        );

        let with = |f: &dyn Fn(&mut Rule)| {
            let mut r = good.clone();
            f(&mut r);
            vec![direct.clone(), r]
        };
        assert_eq!(
            err_field(&with(&|r| r.name = String::new())),
            "rules[1].name"
        );
        assert_eq!(
            err_field(&with(&|r| r.name = "a/b".into())),
            "rules[1].name"
        );
        assert_eq!(
            err_field(&with(&|r| r.name = "x".repeat(65))),
            "rules[1].name"
        );
        assert!(check(&with(&|r| r.name = "x".repeat(64))).is_ok());
        assert_eq!(
            err_field(&with(&|r| r.name = direct.name.clone())),
            "rules[1].name"
        );
        let e = check(&with(&|r| r.when = Match::default())).unwrap_err();
        assert_eq!(e.field, "rules[1].when");
        assert!(e.reason.starts_with("at least one condition"), "{e}");
        assert_eq!(
            err_field(&with(
                &|r| r.when.request = labels(&[("group", "x".repeat(256).as_str())])
            )),
            "rules[1].when.request[\"group\"]"
        );
        assert_eq!(
            err_field(&with(&|r| r.when.request = labels(&[("bad key", "v")]))),
            "rules[1].when.request[\"bad key\"]"
        );
        assert_eq!(
            err_field(&with(&|r| r.when.client = labels(&[("", "v")]))),
            "rules[1].when.client[\"\"]"
        );
        assert_eq!(
            err_field(&with(&|r| r.when.client = labels(&[("zone", "no spaces")]))),
            "rules[1].when.client[\"zone\"]"
        );
        assert_eq!(
            err_field(&with(&|r| r.when.client_id = "a b".into())),
            "rules[1].when.client_id"
        );
        assert_eq!(
            err_field(&with(&|r| r.target = Target::Selector(BTreeMap::new()))),
            "rules[1].target.selector"
        );
        assert_eq!(
            err_field(&with(&|r| r.target = sel(&[("k!", "v")]))),
            "rules[1].target.selector[\"k!\"]"
        );
        assert_eq!(
            err_field(&with(&|r| r.target = Target::Instance(String::new()))),
            "rules[1].target.instance"
        );
        assert_eq!(
            err_field(&with(&|r| r.target = Target::Instance("x".repeat(129)))),
            "rules[1].target.instance"
        );
        let many: Vec<Rule> = (0..=MAX_RULES)
            .map(|i| {
                rule(
                    &format!("r{i}"),
                    on_request(&[("k", "v")]),
                    sel(&[("k", "v")]),
                )
            })
            .collect();
        assert_eq!(err_field(&many), "rules");
        assert!(check(&many[..MAX_RULES]).is_ok());
    }

    fn totals(pairs: &[(&str, usize, usize)]) -> BTreeMap<String, (usize, usize)> {
        pairs
            .iter()
            .map(|&(z, h, t)| (z.to_string(), (h, t)))
            .collect()
    }

    #[test]
    fn tiers_prefer_the_local_zone() {
        let zones = ["z1", "z2", "z1", "z3"];
        let t = totals(&[("z1", 2, 2), ("z2", 1, 1), ("z3", 1, 1)]);
        assert_eq!(tiers(&zones, "z1", &t, 0.5), [0, 1, 0, 1]);
        assert_eq!(tiers(&zones, "z2", &t, 0.5), [1, 0, 1, 1]);
        assert_eq!(tiers(&zones, "", &t, 0.5), [0, 0, 0, 0], "no zone");
        assert_eq!(tiers(&zones, "z9", &t, 0.5), [0, 0, 0, 0], "nobody local");
        assert_eq!(
            tiers(&zones, "z1", &BTreeMap::new(), 0.5),
            [0, 1, 0, 1],
            "no totals: healthy"
        );
        assert!(tiers(&[], "z1", &t, 0.5).is_empty());
    }

    #[test]
    fn panic_threshold_on_both_sides_of_half() {
        let zones = ["z1", "z2", "z2", "z2"];
        // One healthy local server out of 3 registered (33%): panic, use all.
        assert_eq!(
            tiers(&zones, "z1", &totals(&[("z1", 1, 3)]), 0.5),
            [0, 0, 0, 0]
        );
        // 2 of 5 (40%): panic.
        let two = ["z1", "z1", "z2"];
        assert_eq!(tiers(&two, "z1", &totals(&[("z1", 2, 5)]), 0.5), [0, 0, 0]);
        // 2 of 4 (exactly 50%): not below, no panic.
        assert_eq!(tiers(&two, "z1", &totals(&[("z1", 2, 4)]), 0.5), [0, 0, 1]);
        // 2 of 3 (67%): no panic.
        assert_eq!(tiers(&two, "z1", &totals(&[("z1", 2, 3)]), 0.5), [0, 0, 1]);
        // The threshold is a parameter: 0 never panics, 1 panics unless all healthy.
        assert_eq!(
            tiers(&zones, "z1", &totals(&[("z1", 1, 3)]), 0.0),
            [0, 1, 1, 1]
        );
        assert_eq!(tiers(&two, "z1", &totals(&[("z1", 2, 3)]), 1.0), [0, 0, 0]);
        assert_eq!(tiers(&two, "z1", &totals(&[("z1", 2, 2)]), 1.0), [0, 0, 1]);
        // A bad threshold means the default.
        assert_eq!(
            tiers(&two, "z1", &totals(&[("z1", 2, 5)]), f64::NAN),
            [0, 0, 0]
        );
        assert_eq!(
            tiers(&two, "z1", &totals(&[("z1", 2, 3)]), f64::NAN),
            [0, 0, 1]
        );
        // Inconsistent totals: the list's own servers count as healthy.
        assert_eq!(tiers(&two, "z1", &totals(&[("z1", 0, 0)]), 0.5), [0, 0, 1]);
    }

    fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop::sample::select(vec!["g", "v", "zone"]).prop_map(String::from),
            prop::sample::select(vec!["1", "2", "z1", "z2"]).prop_map(String::from),
            0..3,
        )
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        (
            arb_labels(),
            arb_labels(),
            prop::option::of(prop::sample::select(vec!["c1", "c2"])),
            prop_oneof![
                arb_labels().prop_map(Target::Selector),
                (0usize..8).prop_map(|i| Target::Instance(format!("i{i}"))),
            ],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(request, client, id, target, exclusive, strict)| Rule {
                name: String::new(),
                when: Match {
                    request,
                    client,
                    client_id: id.unwrap_or_default().to_string(),
                },
                target,
                exclusive,
                strict,
            })
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn routing_invariants(
            rules in prop::collection::vec(arb_rule(), 0..6),
            server_labels in prop::collection::vec((arb_labels(), prop::sample::select(vec!["z1", "z2"])), 0..8),
            sub_labels in arb_labels(),
            sub_zone in prop::sample::select(vec!["z1", "z2", ""]),
            sub_id in prop::sample::select(vec!["c1", "c2"]),
        ) {
            let ids: Vec<String> = (0..server_labels.len()).map(|i| format!("i{i}")).collect();
            let servers: Vec<RouteServer<'_>> = server_labels
                .iter()
                .zip(&ids)
                .map(|((l, z), id)| RouteServer { instance_id: id, zone: z, labels: l })
                .collect();
            let sub = Subscriber { client_id: sub_id, zone: sub_zone, labels: &sub_labels };
            let r = for_client(&rules, &servers, &sub);
            prop_assert_eq!(r.default.len(), servers.len());
            let applicable: Vec<&Rule> = rules
                .iter()
                .filter(|x| !x.when.request.is_empty() && applies(&x.when, &sub))
                .collect();
            prop_assert_eq!(r.routes.len(), applicable.len());
            let reserved = |i: usize| rules.iter().any(|x| x.exclusive && selects(&x.target, &servers[i]));
            let replaced = rules.iter().any(|x| x.when.request.is_empty() && applies(&x.when, &sub));
            for i in 0..servers.len() {
                // Without a subscriber rule, a reserved server is never in the default list.
                if !replaced && reserved(i) {
                    prop_assert!(!r.default[i]);
                }
            }
            for (route, rule) in r.routes.iter().zip(applicable) {
                prop_assert_eq!(route.members.len(), servers.len());
                let sel = selection(&rule.target, &servers);
                if sel.contains(&true) || rule.strict {
                    prop_assert_eq!(&route.members, &sel);
                } else {
                    prop_assert_eq!(&route.members, &r.default);
                }
            }
        }

        #[test]
        fn tiers_are_zero_or_one_and_local_first(
            zones in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..12),
            client in prop::sample::select(vec!["a", "b", "d", ""]),
            healthy in 0usize..6,
            extra in 0usize..6,
            panic in 0.0f64..=1.0,
        ) {
            let t = totals(&[(client, healthy, healthy + extra)]);
            let tiers = tiers(&zones, client, &t, panic);
            prop_assert_eq!(tiers.len(), zones.len());
            prop_assert!(tiers.iter().all(|&x| x <= 1));
            for (z, &tier) in zones.iter().zip(&tiers) {
                if *z == client {
                    prop_assert_eq!(tier, 0);
                }
            }
        }
    }
}
