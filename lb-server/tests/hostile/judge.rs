//! Every request message through the conversion the daemon runs on it
//! (`lb_server::pb`), and a verdict that panics when the conversion broke
//! its contract:
//!
//! - a refusal names a real field of the request (checked against the
//!   `.proto`, see [`crate::schema`]), quotes a bounded amount of input
//!   (the field path and the reason are each cut to
//!   [`MAX_QUOTE`](lb_core::model::MAX_QUOTE)), and carries no control
//!   characters (they would reach terminals and logs raw);
//! - an accepted value is accepted whole (every field as sent, defaults
//!   only where the API documents them), passes the domain's own checks,
//!   and converts back to itself where a domain → wire conversion exists.
//!
//! Stream messages are judged as the api handlers dispatch them: the first
//! message must open the stream (`register`, `subscribe`,
//! `initial_request`), later ones must not.

use std::collections::BTreeMap;
use std::time::Duration;

use lb_core::model::{
    check_service, derived_token, is_link_local, FieldError, InstanceSpec, MAX_QUOTE, MAX_TTL,
    MIN_TTL,
};
use lb_core::policy::config::PARAMS;
use lb_core::policy::ServicePolicy;
use lb_core::routing;
use lb_proto::grpclb as lb;
use lb_proto::v1 as pb;
use lb_server::pb::{grpclb as lbconv, v1 as conv};

use crate::schema::Schema;

/// The daemon's default: link-local addresses refused.
const ALLOW_LINK_LOCAL: bool = false;

/// What became of one request message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Converted and valid.
    Accepted,
    /// Refused with `invalid_argument` naming a field.
    Refused,
    /// A stream message in the wrong place (`failed_precondition`).
    OutOfOrder,
}

/// Longest piece of an error (a field path's part, or a reason) that
/// quotes input: [`MAX_QUOTE`] and the cut marker `… (N bytes)`.
const PIECE: usize = MAX_QUOTE + 32;

/// Judges a refusal of a `message` request (full name, `.lb.v1.X`).
#[track_caller]
pub fn refused(message: &str, e: &FieldError) -> Outcome {
    if let Err(why) = Schema::get().check(message, &e.field) {
        panic!("the error does not name a field of {message}: {why}; error: {e}");
    }
    assert!(!e.reason.is_empty(), "no reason given: {e}");
    assert!(
        e.reason.len() <= PIECE,
        "the reason quotes {} bytes: {e}",
        e.reason.len()
    );
    // A path is at most three pieces: parent, map key, child.
    assert!(
        e.field.len() <= 3 * PIECE,
        "the field path is {} bytes: {e}",
        e.field.len()
    );
    let text = e.to_string();
    assert!(
        !text.chars().any(char::is_control),
        "a control character in the error: {text:?}"
    );
    Outcome::Refused
}

fn judge<T>(message: &str, r: Result<T, FieldError>, accepted: impl FnOnce(T)) -> Outcome {
    match r {
        Ok(v) => {
            accepted(v);
            Outcome::Accepted
        }
        Err(e) => refused(message, &e),
    }
}

/// An accepted instance: valid, allowed, and the message's fields as sent.
#[track_caller]
fn accepted_instance(wire: &pb::Instance, spec: &InstanceSpec) {
    assert_eq!(spec.check(), Ok(()), "{spec:?}");
    assert!(
        ALLOW_LINK_LOCAL || !is_link_local(&spec.address),
        "{spec:?}"
    );
    assert_eq!(spec.service, wire.service);
    assert_eq!(spec.instance_id, wire.instance_id);
    assert_eq!(spec.address, wire.address);
    assert_eq!(spec.zone, wire.zone);
    assert_eq!(spec.weight, wire.weight);
    assert_eq!(
        spec.labels,
        wire.labels.clone().into_iter().collect::<BTreeMap<_, _>>()
    );
    assert_eq!(spec.version, wire.version);
    let token = if wire.token.is_empty() {
        derived_token(&spec.service, &spec.instance_id)
    } else {
        wire.token.clone()
    };
    assert_eq!(spec.token, token);
    // Back on the wire, the spec converts to itself.
    let again = pb::Instance {
        labels: spec.labels.clone().into_iter().collect(),
        token: spec.token.clone(),
        ..wire.clone()
    };
    assert_eq!(conv::instance(Some(again), "instance").as_ref(), Ok(spec));
}

/// An accepted TTL: the default (0), or the documented range.
#[track_caller]
fn accepted_ttl(ms: u32, ttl: Option<Duration>) {
    match ttl {
        None => assert_eq!(ms, 0),
        Some(d) => {
            assert_eq!(d, Duration::from_millis(u64::from(ms)));
            assert!((MIN_TTL..=MAX_TTL).contains(&d), "{d:?}");
        }
    }
}

/// A registration's instance and TTL.
#[track_caller]
fn accepted_registration(
    instance: &Option<pb::Instance>,
    ttl_ms: u32,
    (spec, ttl): (InstanceSpec, Option<Duration>),
) {
    accepted_instance(
        instance.as_ref().expect("accepted without an instance"),
        &spec,
    );
    accepted_ttl(ttl_ms, ttl);
}

/// `Registry/Register`.
pub fn register(r: pb::RegisterRequest) -> Outcome {
    let (instance, ttl_ms) = (r.instance.clone(), r.ttl_ms);
    judge(
        ".lb.v1.RegisterRequest",
        conv::register(r, ALLOW_LINK_LOCAL),
        |v| accepted_registration(&instance, ttl_ms, v),
    )
}

/// `Admin/PutStatic`.
pub fn put_static(r: pb::PutStaticRequest) -> Outcome {
    let instance = r.instance.clone();
    let create = r.create;
    judge(
        ".lb.v1.PutStaticRequest",
        conv::put_static(r, ALLOW_LINK_LOCAL),
        |(spec, c)| {
            accepted_instance(instance.as_ref().expect("an instance"), &spec);
            assert_eq!(c, create);
        },
    )
}

/// A key's fields as sent, and valid.
#[track_caller]
fn accepted_key(service: &str, id: &str, key: &lb_core::model::InstanceKey) {
    assert_eq!(
        (key.service.as_str(), key.instance_id.as_str()),
        (service, id)
    );
    assert_eq!(check_service(service), Ok(()));
    assert_eq!(lb_core::model::check_id(id), Ok(()));
}

/// `Registry/Deregister`.
pub fn deregister(r: pb::DeregisterRequest) -> Outcome {
    let (s, i) = (r.service.clone(), r.instance_id.clone());
    judge(
        ".lb.v1.DeregisterRequest",
        conv::instance_key(r.service, r.instance_id),
        |k| accepted_key(&s, &i, &k),
    )
}

/// `Admin/RemoveStatic`.
pub fn remove_static(r: pb::RemoveStaticRequest) -> Outcome {
    let (s, i) = (r.service.clone(), r.instance_id.clone());
    judge(
        ".lb.v1.RemoveStaticRequest",
        conv::instance_key(r.service, r.instance_id),
        |k| accepted_key(&s, &i, &k),
    )
}

/// `Admin/SetDrain`.
pub fn set_drain(r: pb::SetDrainRequest) -> Outcome {
    let (s, i) = (r.service.clone(), r.instance_id.clone());
    judge(
        ".lb.v1.SetDrainRequest",
        conv::instance_key(r.service, r.instance_id),
        |k| accepted_key(&s, &i, &k),
    )
}

/// `Admin/SetWeight`.
pub fn set_weight(r: pb::SetWeightRequest) -> Outcome {
    let w = r.clone();
    judge(
        ".lb.v1.SetWeightRequest",
        conv::set_weight(r),
        |(k, weight)| {
            accepted_key(&w.service, &w.instance_id, &k);
            match weight {
                None => assert_eq!(w.weight, 0),
                Some(x) => {
                    assert_eq!(x, w.weight);
                    assert_eq!(lb_core::model::check_weight(x), Ok(()));
                }
            }
        },
    )
}

/// `Admin/GetService`.
pub fn get_service(r: pb::GetServiceRequest) -> Outcome {
    let s = r.service.clone();
    judge(".lb.v1.GetServiceRequest", conv::service(r.service), |v| {
        assert_eq!(v, s);
        assert_eq!(check_service(&v), Ok(()));
    })
}

/// `Admin/CreateToken`.
pub fn create_token(r: pb::CreateTokenRequest) -> Outcome {
    let wire = r.clone();
    judge(".lb.v1.CreateTokenRequest", conv::create_token(r), |t| {
        assert_eq!(t.name, wire.name);
        assert_eq!(lb_core::access::check_name(&t.name, "name"), Ok(()));
        assert_eq!(t.grant.role.name(), wire.role);
        let services: Vec<String> = t.grant.services.iter().map(|p| p.to_string()).collect();
        assert_eq!(services, wire.services);
        assert_eq!(
            lb_core::access::Grant::new(t.grant.role, t.grant.services.clone()).as_ref(),
            Ok(&t.grant)
        );
        assert_eq!(t.identity.unwrap_or_default(), wire.identity);
    })
}

/// `Admin/RevokeToken`.
pub fn revoke_token(r: pb::RevokeTokenRequest) -> Outcome {
    let wire = r.name.clone();
    judge(".lb.v1.RevokeTokenRequest", conv::revoke_token(r), |name| {
        assert_eq!(name, wire);
        assert_eq!(lb_core::access::check_name(&name, "name"), Ok(()));
    })
}

/// `Admin/ListTokens` (no fields: always accepted).
pub fn list_tokens(_: pb::ListTokensRequest) -> Outcome {
    Outcome::Accepted
}

/// `Admin/ListServices` (no fields: always accepted).
pub fn list_services(_: pb::ListServicesRequest) -> Outcome {
    Outcome::Accepted
}

/// `Admin/SetPolicy`, applied (as the engine does) to the daemon's default
/// policy.
pub fn set_policy(r: pb::SetPolicyRequest) -> Outcome {
    let base = ServicePolicy::default();
    let wire = r.clone();
    let message = ".lb.v1.SetPolicyRequest";
    match conv::set_policy(r) {
        Ok((service, change, create)) => {
            assert_eq!(service, wire.service);
            assert_eq!(check_service(&service), Ok(()));
            assert_eq!((change.reset, create), (wire.reset, wire.create));
            let w = wire.policy.expect("accepted without a policy");
            assert_eq!(change.kind.name(), w.name);
            // Applied, it may still conflict with the policy in force (a
            // cross-parameter check), which the engine refuses naming a
            // parameter.
            let p = match change.apply(&base, &base) {
                Ok(p) => p,
                Err(e) => {
                    assert!(e.field.starts_with("params."), "{e}");
                    assert!(!e.reason.is_empty(), "{e}");
                    return Outcome::Accepted;
                }
            };
            assert_eq!(p.kind, change.kind);
            // Every parameter sent belongs to the policy.
            let params = p.params();
            for k in w.params.keys() {
                assert!(params.contains_key(k), "{k} accepted but not in force");
            }
            // Rendered and parsed again, the policy is itself.
            let again = ServicePolicy::parse(p.kind.name(), &params, &base);
            assert_eq!(again.as_ref(), Ok(&p), "{params:?}");
            Outcome::Accepted
        }
        Err(e) => {
            // `policy.params.NAME` names a parameter sent or one in force
            // (a long name is cut: `NAME… (N bytes)` quotes its start).
            if let Some(name) = e.field.strip_prefix("policy.params.") {
                let (name, whole) = match name.rsplit_once("… (") {
                    Some((start, rest)) if rest.ends_with(" bytes)") => (start, false),
                    _ => (name, true),
                };
                let sent = wire
                    .policy
                    .iter()
                    .flat_map(|p| p.params.keys())
                    .map(|k| k.escape_debug().to_string())
                    .any(|k| {
                        if whole {
                            k == name
                        } else {
                            k.starts_with(name)
                        }
                    });
                assert!(
                    sent || PARAMS.iter().any(|p| p.name == name),
                    "names no parameter: {e}"
                );
            }
            refused(message, &e)
        }
    }
}

/// `Admin/PutRule`.
pub fn put_rule(r: pb::PutRuleRequest) -> Outcome {
    let wire = r.clone();
    judge(".lb.v1.PutRuleRequest", conv::put_rule(r), |r| {
        assert_eq!(r.service, wire.service);
        assert_eq!(check_service(&r.service), Ok(()));
        assert_eq!(r.position, wire.position.map(|p| p as usize));
        assert!(r.position.is_none_or(|p| p < routing::MAX_RULES));
        assert_eq!(r.create, wire.create);
        accepted_rule(wire.rule.as_ref().expect("a rule"), &r.rule);
    })
}

/// An accepted rule: valid, as sent, and itself after a trip to the wire.
#[track_caller]
fn accepted_rule(w: &pb::Rule, rule: &routing::Rule) {
    assert_eq!(routing::check(std::slice::from_ref(rule)), Ok(()));
    let map = |m: &std::collections::HashMap<String, String>| {
        m.clone().into_iter().collect::<BTreeMap<_, _>>()
    };
    assert_eq!(rule.name, w.name);
    assert_eq!(rule.when.request, map(&w.when_request));
    assert_eq!(rule.when.client, map(&w.when_client));
    assert_eq!(rule.when.client_id, w.when_client_id);
    match &rule.target {
        routing::Target::Selector(s) => {
            assert_eq!(*s, map(&w.select));
            assert!(w.instance.is_empty());
        }
        routing::Target::Instance(i) => {
            assert_eq!(*i, w.instance);
            assert!(w.select.is_empty());
        }
    }
    assert_eq!((rule.exclusive, rule.strict), (w.exclusive, w.strict));
    assert_eq!(
        conv::rule(Some(conv::rule_pb(rule)), "rule").as_ref(),
        Ok(rule)
    );
}

/// `Admin/DeleteRule`.
pub fn delete_rule(r: pb::DeleteRuleRequest) -> Outcome {
    let wire = r.clone();
    judge(
        ".lb.v1.DeleteRuleRequest",
        conv::delete_rule(r),
        |(s, name)| {
            assert_eq!(
                (s.as_str(), name.as_str()),
                (wire.service.as_str(), wire.name.as_str())
            );
            assert_eq!(check_service(&s), Ok(()));
            assert_eq!(routing::check_rule_name(&name), Ok(()));
        },
    )
}

/// `Admin/SetCluster`.
pub fn set_cluster(r: pb::SetClusterRequest) -> Outcome {
    let wire = r.clone();
    judge(
        ".lb.v1.SetClusterRequest",
        conv::set_cluster(r),
        |(s, setting, create)| {
            assert_eq!(s, wire.service);
            assert_eq!(check_service(&s), Ok(()));
            assert_eq!(create, wire.create);
            let c = match setting {
                conv::ClusterSetting::Replace(c) => c,
                conv::ClusterSetting::Change(c) => {
                    assert!(wire.cluster.is_none(), "both accepted");
                    return accepted_cluster_change(&wire.change.expect("a change"), &c);
                }
            };
            assert!(wire.change.is_none(), "both accepted");
            let routes: Vec<&str> = c.routes().collect();
            assert_eq!(c.check(&routes), Ok(()));
            let w = wire.cluster.expect("accepted without a cluster config");
            // Every method as sent; the budget as sent or its default.
            assert!(c.methods.keys().eq({
                let mut keys: Vec<&String> = w.methods.keys().collect();
                keys.sort();
                keys
            }));
            let d = lb_core::cluster::Budget::default();
            assert_eq!(c.budget.percent, w.budget_percent.unwrap_or(d.percent));
            assert_eq!(
                c.budget.min_per_sec,
                w.budget_min_per_sec.unwrap_or(d.min_per_sec)
            );
            // The default deadline as sent (0: none).
            assert_eq!(
                c.deadline.map_or(0, |d| d.as_millis()),
                u128::from(w.deadline_ms)
            );
            assert_eq!(
                conv::cluster_config(Some(conv::cluster_config_pb(&c)), &routes, "cluster")
                    .as_ref(),
                Ok(&c)
            );
        },
    )
}

/// An accepted cluster change: as sent, valid on its own, and applied to
/// the defaults (as the engine would) either valid or refused naming a
/// field of the change.
#[track_caller]
fn accepted_cluster_change(w: &pb::ClusterChange, c: &lb_core::cluster::ClusterChange) {
    use lb_core::cluster::ClusterConfig;
    assert_eq!(c.check(), Ok(()));
    assert_eq!(c.method.clone().unwrap_or_default(), w.method);
    assert_eq!((c.clear, c.reset), (w.clear, w.reset));
    let m = &c.mode;
    assert_eq!(m.kind.is_some(), w.kind.is_some());
    assert_eq!(
        (m.attempts, m.forks, m.max_failure_percent),
        (w.attempts, w.forks, w.max_failure_percent)
    );
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u32);
    assert_eq!(
        (ms(m.backoff), ms(m.backoff_max)),
        (w.backoff_ms, w.backoff_max_ms)
    );
    assert_eq!(m.route, w.route);
    assert_eq!(m.retry_on.is_some(), !w.retry_on.is_empty());
    assert_eq!(
        (c.budget_percent, c.budget_min_per_sec),
        (w.budget_percent, w.budget_min_per_sec)
    );
    assert_eq!(c.deadline.map(|d| ms(d).unwrap_or(0)), w.deadline_ms);
    let route: Vec<&str> = w.route.iter().map(String::as_str).collect();
    match c.apply(&ClusterConfig::default(), &route) {
        Ok(after) => assert_eq!(after.check(&route), Ok(())),
        Err(e) => {
            if let Err(why) = crate::schema::Schema::get()
                .check(".lb.v1.SetClusterRequest", &format!("change.{}", e.field))
            {
                panic!("applying the change names no field of it: {why}; error: {e}");
            }
        }
    }
}

/// `Admin/DeleteService`.
pub fn delete_service(r: pb::DeleteServiceRequest) -> Outcome {
    let wire = r.clone();
    judge(
        ".lb.v1.DeleteServiceRequest",
        conv::delete_service(r),
        |(s, force)| {
            assert_eq!((s.as_str(), force), (wire.service.as_str(), wire.force));
            assert_eq!(check_service(&s), Ok(()));
        },
    )
}

/// A message of a `Registry/ReportLoad` stream, `first` or later.
pub fn report_load(m: pb::ReportLoadRequest, first: bool) -> Outcome {
    use pb::report_load_request::Msg;
    let message = ".lb.v1.ReportLoadRequest";
    match (m.msg, first) {
        (None, _) => refused(message, &FieldError::new("msg", "missing")),
        (Some(Msg::Register(r)), true) => {
            let (instance, ttl_ms) = (r.instance.clone(), r.ttl_ms);
            judge(
                message,
                conv::registration(r.instance, r.ttl_ms, "register", ALLOW_LINK_LOCAL),
                |v| accepted_registration(&instance, ttl_ms, v),
            )
        }
        (Some(Msg::Report(r)), false) => {
            let wire = r.clone();
            judge(message, conv::load(r, "report"), |l| {
                assert_eq!(l.check(), Ok(()));
                // As sent (NaN never passes, so equality is exact), and
                // itself after a trip to the wire.
                assert_eq!(conv::load_report(&l), wire);
                assert_eq!(conv::load(conv::load_report(&l), "report").as_ref(), Ok(&l));
            })
        }
        (Some(Msg::Drain(_)), false) => Outcome::Accepted,
        (Some(_), _) => Outcome::OutOfOrder,
    }
}

/// A message of a `Balancer/Subscribe` stream, `first` or later.
pub fn subscribe(m: pb::SubscribeRequest, first: bool) -> Outcome {
    use pb::subscribe_request::Msg;
    let message = ".lb.v1.SubscribeRequest";
    match (m.msg, first) {
        (None, _) => refused(message, &FieldError::new("msg", "missing")),
        (Some(Msg::Subscribe(s)), true) => {
            let wire = s.clone();
            judge(
                message,
                conv::subscription(s, "subscribe"),
                |(service, id, held)| {
                    assert!(held.0.len() <= lb_core::model::MAX_STATE_ID_LEN);
                    assert_eq!(held, (wire.held_state_id.clone(), wire.held_state_revision));
                    assert_eq!(service, wire.service);
                    assert_eq!(check_service(&service), Ok(()));
                    assert_eq!(id.check(), Ok(()));
                    let c = wire.client.expect("accepted without a client");
                    assert_eq!((id.client_id, id.zone), (c.client_id, c.zone));
                    assert_eq!(id.labels, c.labels.into_iter().collect::<BTreeMap<_, _>>());
                },
            )
        }
        (Some(Msg::Stats(s)), false) => {
            let wire = s.clone();
            judge(message, conv::stats(s, "stats"), |st| {
                assert_eq!(st.check(), Ok(()));
                assert_eq!((st.dropped, st.no_backend), (wire.dropped, wire.no_backend));
                assert_eq!(st.instances.len(), wire.instances.len());
                for (d, w) in st.instances.iter().zip(&wire.instances) {
                    assert_eq!(d.instance_id, w.instance_id);
                    assert_eq!(
                        (d.calls_started, d.calls_finished, d.calls_failed),
                        (w.calls_started, w.calls_finished, w.calls_failed)
                    );
                    assert_eq!(
                        (d.latency_sum_us, d.consecutive_failures),
                        (w.latency_sum_us, w.consecutive_failures)
                    );
                    assert_eq!(
                        d.failed_by_code,
                        w.failed_by_code
                            .clone()
                            .into_iter()
                            .collect::<BTreeMap<_, _>>()
                    );
                }
            })
        }
        (Some(_), _) => Outcome::OutOfOrder,
    }
}

/// A message of a grpclb `LoadBalancer/BalanceLoad` stream, `first` or later.
pub fn balance_load(m: lb::LoadBalanceRequest, first: bool) -> Outcome {
    use lb::load_balance_request::LoadBalanceRequestType as T;
    let message = ".grpc.lb.v1.LoadBalanceRequest";
    match (m.load_balance_request_type, first) {
        (None, _) => refused(
            message,
            &FieldError::new("load_balance_request_type", "missing"),
        ),
        (Some(T::InitialRequest(r)), true) => {
            judge(message, lbconv::service_for(&r.name), |service| {
                assert_eq!(check_service(&service), Ok(()));
                assert!(
                    r.name == service
                        || r.name
                            .strip_prefix(service.as_str())
                            .and_then(|p| p.strip_prefix(':'))
                            .and_then(|p| p.parse::<u16>().ok())
                            .is_some_and(|p| p > 0),
                    "{:?} named {service:?}",
                    r.name
                );
            })
        }
        (Some(T::ClientStats(s)), false) => {
            let wire = s.clone();
            judge(
                message,
                lbconv::stats(s).map_err(|e| e.within("client_stats")),
                |st| {
                    assert_eq!(st.check(), Ok(()));
                    let n = |v: i64| u64::try_from(v).expect("a negative count accepted");
                    assert_eq!(st.calls_started, n(wire.num_calls_started));
                    assert_eq!(st.calls_finished, n(wire.num_calls_finished));
                    assert_eq!(
                        st.failed_to_send,
                        n(wire.num_calls_finished_with_client_failed_to_send)
                    );
                    assert_eq!(st.known_received, n(wire.num_calls_finished_known_received));
                    let drops: Vec<(String, u64)> = wire
                        .calls_finished_with_drop
                        .iter()
                        .map(|d| (d.load_balance_token.clone(), n(d.num_calls)))
                        .collect();
                    assert_eq!(st.dropped_by_token, drops);
                },
            )
        }
        (Some(_), _) => Outcome::OutOfOrder,
    }
}
