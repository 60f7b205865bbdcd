//! The protobuf edge: wire messages ⇄ `lb-core` domain types, one way in and
//! one way out, and nothing else. Inbound, this is where bad input becomes a
//! [`FieldError`] naming the field, and [`invalid`] its `invalid_argument`
//! status. These modules import only `lb_proto` and `lb_core`: never the
//! engine, the store or the services.
//!
//! - [`v1`]: package `lb.v1` (backends, clients, operators).
//! - [`grpclb`]: package `grpc.lb.v1` (stock gRPC clients).
//! - [`xds`]: Envoy's v3 xDS resources (proxyless gRPC clients).

pub mod grpclb;
pub mod v1;
pub mod xds;

use lb_core::model::FieldError;
use tonic::Status;

/// A bad field, as the status a caller sees.
pub fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// `lb_core::quota::list_size` against prost's encoded lengths of the
/// answers this module builds: the estimate bounds them, and not loosely.
#[cfg(test)]
mod list_size_tests {
    use std::time::{Duration, Instant};

    use lb_core::cluster::{ClusterConfig, Failover, Mode};
    use lb_core::inspect;
    use lb_core::model::{ClientIdentity, InstanceSpec};
    use lb_core::policy::{ServicePolicy, ALL_POLICIES};
    use lb_core::quota::STATUS_FIGURES_MAX;
    use lb_core::registry::{Attachment, Registry};
    use lb_core::replan::Published;
    use lb_core::routing::{Match, Rule, Target};
    use lb_core::status::Code;
    use lb_proto::grpclb::load_balance_response::LoadBalanceResponseType as Resp;
    use prost::Message;

    use super::{grpclb, v1};

    /// A service of `n` instances with labels, zones, tokens and IPv6
    /// addresses, two rules (one with request conditions) and failover modes.
    fn registry(policy: ServicePolicy, n: usize, now: Instant) -> Registry {
        let mut r = Registry::with_default_policy(policy);
        for i in 0..n {
            let mut s = InstanceSpec::new(
                "shop",
                format!("shop-{i:04}"),
                if i % 2 == 0 {
                    format!("10.0.{}.{}:8080", i / 256, i % 256)
                } else {
                    format!("[2001:db8::{i:x}]:65535")
                },
            );
            s.zone = ["eu-west-1a", "eu-west-1b"][i % 2].into();
            s.token = format!("token-{i}");
            for (k, v) in [("app", "shop"), ("track", ["stable", "canary"][i % 2])] {
                s.labels.insert(k.into(), v.into());
            }
            r.apply_register(s, Duration::from_secs(30), Attachment::Lease, now);
        }
        let rule = |name: &str, request: bool| Rule {
            name: name.into(),
            when: Match {
                request: if request {
                    [("group".to_string(), "beta".to_string())].into()
                } else {
                    Default::default()
                },
                client: if request {
                    Default::default()
                } else {
                    [("tier".to_string(), "gold".to_string())].into()
                },
                ..Match::default()
            },
            target: Target::Selector([("track".to_string(), "canary".to_string())].into()),
            exclusive: false,
            strict: false,
        };
        r.set_rules("shop", vec![rule("beta", true), rule("all", false)]);
        let failover = Mode::Failover(Failover {
            retry_on: Code::ALL[1..].to_vec(),
            ..Failover::default()
        });
        r.set_cluster(
            "shop",
            ClusterConfig {
                default: failover.clone(),
                methods: [("/shop.Shop/Buy".to_string(), failover)].into(),
                ..ClusterConfig::default()
            },
        );
        r
    }

    #[test]
    fn the_estimate_bounds_every_answer_of_every_policy() {
        let now = Instant::now();
        for kind in ALL_POLICIES {
            for n in [1, 7, 300] {
                let mut r = registry(ServicePolicy::with_kind(kind), n, now);
                let est = r.list_size("shop").unwrap();
                let (plan, _) = r.plan("shop", Duration::from_secs(1), now);
                let p = Published {
                    version: u64::MAX,
                    plan,
                };
                let client = ClientIdentity::default();
                for seq in 0..3 {
                    let list = lb_proto::v1::SubscribeResponse {
                        list: Some(v1::server_list(
                            &p,
                            seq,
                            &client,
                            (&"s".repeat(lb_core::model::MAX_STATE_ID_LEN), u64::MAX),
                        )),
                        stats_interval_ms: u32::MAX,
                    };
                    let len = list.encoded_len() as u64;
                    assert!(len <= est.list, "{kind:?} n={n}: list {len} > {est:?}");
                    let grpclb = lb_proto::grpclb::LoadBalanceResponse {
                        load_balance_response_type: Some(Resp::ServerList(
                            lb_proto::grpclb::ServerList {
                                servers: grpclb::servers(&p, seq, |_| None),
                            },
                        )),
                    };
                    let len = grpclb.encoded_len() as u64;
                    assert!(len <= est.grpclb, "{kind:?} n={n}: grpclb {len} > {est:?}");
                }
                let most = inspect::Followers {
                    subscribers: u32::MAX,
                    grpclb_streams: u32::MAX,
                    xds_streams: u32::MAX,
                };
                let view = inspect::service(&r, "shop", Some(&p), most, now).unwrap();
                let status =
                    v1::service_status(&view, &ServicePolicy::default()).encoded_len() as u64;
                // The live figures are left out of the estimate, and bounded.
                let figures = n as u64 * STATUS_FIGURES_MAX;
                assert!(
                    status <= est.status + figures,
                    "{kind:?} n={n}: status {status} > {est:?} + {figures}"
                );
                // Registered values are counted exactly: the estimate is
                // the answer plus its widest operator state (a few bytes an
                // instance) and service figures (every drop token, ~4.5 KB).
                assert!(
                    est.status as f64 <= status as f64 * 1.1 + 8192.0,
                    "{kind:?} n={n}: status {status}, estimated {est:?}"
                );
            }
        }
    }
}
