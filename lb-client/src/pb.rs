//! The gRPC edge: the only module that touches `lb_proto` types.
//!
//! Converts the daemon's messages into domain types (`ServerList` →
//! [`PickList`] with `lb-core`'s cluster modes, `ReportLoadResponse` →
//! `Directive`) and this crate's messages (`protocol`) into requests. The
//! daemon validated what it sends; a list that does not hold together is
//! refused here ([`list::Error`]) and the client keeps its previous one.

use std::collections::HashMap;
use std::time::Duration;

use lb_core::cluster::{self, Broadcast, Budget, ClusterConfig, Collect, Failover, Mode};
use lb_core::status::Code;
use lb_proto::v1;

use crate::list::{self, Endpoint, PickList, RouteSpec};
use crate::protocol::{Directive, Identity, LoadSample, Registration, StatsReport, Update};

impl TryFrom<v1::ServerList> for PickList {
    type Error = list::Error;

    fn try_from(list: v1::ServerList) -> Result<Self, list::Error> {
        let servers = list.servers.into_iter().map(Endpoint::from).collect();
        let routes = list
            .routes
            .into_iter()
            .map(|r| RouteSpec {
                name: r.name,
                request: r.request.into_iter().collect(),
                order: r.order,
                strict: r.strict,
            })
            .collect();
        let l = PickList::with_routes(list.version, servers, list.order, routes)?;
        let settings = list.cluster.map(cluster_config).unwrap_or_default();
        Ok(l.with_affinity(list.affinity)?
            .with_settings(settings)
            .with_choices(list.choices, list.choice_prior)
            .with_load_bound(list.load_bound)
            .with_key_spill(&list.key_spill)
            .with_state(list::ListState {
                id: list.state_id,
                revision: list.state_revision,
            }))
    }
}

/// The daemon's cluster modes (it sends none when they are all defaults).
fn cluster_config(c: v1::ClusterConfig) -> ClusterConfig {
    let d = Budget::default();
    ClusterConfig {
        default: c.default_mode.map(mode).unwrap_or_default(),
        methods: c.methods.into_iter().map(|(k, m)| (k, mode(m))).collect(),
        budget: Budget {
            percent: c.budget_percent.map_or(d.percent, |p| p.min(100)),
            min_per_sec: c.budget_min_per_sec.unwrap_or(d.min_per_sec),
        },
        // Clamped like every other field: the daemon validated it, and a
        // newer daemon's larger bound is read as ours.
        deadline: (c.deadline_ms > 0)
            .then(|| Duration::from_millis(u64::from(c.deadline_ms)).min(cluster::MAX_DEADLINE)),
    }
}

/// One mode. The daemon validated it; a mode this build does not know falls
/// back to the default (failover), since it can only be newer than us, and
/// unset failover fields take their documented defaults.
fn mode(m: v1::ClusterMode) -> Mode {
    use v1::cluster_mode::{Collect as C, Kind as K};
    let broadcast = || Broadcast {
        collect: match C::try_from(m.collect) {
            Ok(C::All) => Collect::All,
            Ok(C::None) => Collect::None,
            _ => Collect::First,
        },
        max_failure_percent: m.max_failure_percent.min(100),
    };
    match K::try_from(m.kind) {
        Ok(K::Failfast) => Mode::Failfast,
        Ok(K::Failsafe) => Mode::Failsafe,
        Ok(K::Forking) => Mode::Forking { forks: m.forks },
        Ok(K::Broadcast) => Mode::Broadcast(broadcast()),
        Ok(K::Multicast) => Mode::Multicast {
            route: m.route.clone(),
            broadcast: broadcast(),
        },
        Ok(K::Failover) | Err(_) => {
            let d = Failover::default();
            let backoff = Duration::from_millis(u64::from(m.backoff_ms));
            // The daemon sends each code once; a longer list is not read
            // past the codes there are, and a repeat is dropped.
            let mut retry_on: Vec<Code> = Vec::new();
            for code in m
                .retry_on
                .iter()
                .take(cluster::MAX_RETRY_ON)
                .filter_map(|n| Code::error_named(n))
            {
                if !retry_on.contains(&code) {
                    retry_on.push(code);
                }
            }
            Mode::Failover(Failover {
                attempts: m.attempts.max(1),
                backoff,
                backoff_max: match m.backoff_max_ms {
                    0 => backoff * cluster::BACKOFF_MAX_FACTOR,
                    ms => Duration::from_millis(u64::from(ms)),
                }
                .max(backoff),
                retry_on: if retry_on.is_empty() {
                    d.retry_on
                } else {
                    retry_on
                },
            })
        }
    }
}

impl From<v1::Server> for Endpoint {
    fn from(s: v1::Server) -> Endpoint {
        if s.drop {
            return Endpoint::drop_entry();
        }
        Endpoint::new(s.instance_id, s.address)
            .with_zone(s.zone)
            .with_tier(s.tier)
            .with_token(s.token)
    }
}

impl From<v1::SubscribeResponse> for Update {
    fn from(r: v1::SubscribeResponse) -> Self {
        Update {
            list: r.list.map(PickList::try_from),
            stats_interval_ms: r.stats_interval_ms,
        }
    }
}

impl From<v1::ReportLoadResponse> for Directive {
    fn from(r: v1::ReportLoadResponse) -> Self {
        Directive {
            report_interval_ms: r.report_interval_ms,
            drain: r.drain,
        }
    }
}

impl From<StatsReport> for v1::ClientStats {
    fn from(s: StatsReport) -> Self {
        v1::ClientStats {
            instances: s
                .instances
                .into_iter()
                .map(|(instance_id, c)| v1::InstanceStats {
                    instance_id,
                    calls_started: c.started,
                    calls_finished: c.finished,
                    calls_failed: c.failed,
                    latency_sum_us: c.latency_sum_us,
                    failed_by_code: c
                        .failed_by_code
                        .iter()
                        .enumerate()
                        .filter(|(code, n)| *code > 0 && **n > 0)
                        .map(|(code, &n)| (code as u32, n))
                        .collect(),
                    consecutive_failures: c.consecutive_failures,
                })
                .collect(),
            dropped: s.dropped,
            no_backend: s.no_backend,
        }
    }
}

impl From<&Registration> for v1::Registration {
    fn from(r: &Registration) -> Self {
        let i = &r.instance;
        v1::Registration {
            instance: Some(v1::Instance {
                service: i.service.clone(),
                instance_id: i.instance_id.clone(),
                address: i.address.clone(),
                zone: i.zone.clone(),
                weight: i.weight,
                labels: i
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                version: i.version.clone(),
                token: i.token.clone(),
            }),
            ttl_ms: r
                .ttl
                .map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
        }
    }
}

/// A load sample as the wire message, clamped to the daemon's documented
/// ranges (`lb_core::model`'s limits): a sampler glitch (NaN, a negative
/// rate) must not get the whole stream refused.
pub(crate) fn load_report(s: LoadSample) -> v1::LoadReport {
    use lb_core::model::{MAX_ACTIVE_REQUESTS, MAX_NAMED_METRICS, MAX_RATE, MAX_UTILIZATION};
    fn clamp(x: f64, hi: f64) -> f64 {
        if x.is_finite() {
            x.clamp(0.0, hi)
        } else {
            0.0
        }
    }
    v1::LoadReport {
        cpu_utilization: clamp(s.cpu_utilization, MAX_UTILIZATION),
        active_requests: s.active_requests.min(MAX_ACTIVE_REQUESTS),
        qps: s.qps.map(|x| clamp(x, MAX_RATE)),
        eps: s.eps.map(|x| clamp(x, MAX_RATE)),
        mem_utilization: s.mem_utilization.map(|x| clamp(x, MAX_UTILIZATION)),
        named_metrics: s
            .named_metrics
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .take(MAX_NAMED_METRICS)
            .collect::<HashMap<_, _>>(),
    }
}

impl From<Identity<'_>> for v1::ClientIdentity {
    fn from(i: Identity<'_>) -> Self {
        v1::ClientIdentity {
            client_id: i.client_id.to_owned(),
            zone: i.zone.to_owned(),
            labels: i
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: &str, drop: bool) -> v1::Server {
        v1::Server {
            instance_id: id.into(),
            address: format!("{id}:80"),
            zone: "z".into(),
            tier: 0,
            drop,
            token: "t".into(),
        }
    }

    #[test]
    fn converts_a_server_list() {
        let list = PickList::try_from(v1::ServerList {
            version: 9,
            servers: vec![server("a", false), server("d", true)],
            order: vec![0, 1, 0],
            affinity: vec![],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(list.version(), 9);
        assert_eq!(list.len(), 3);
        let a = &list.servers()[0];
        assert_eq!(
            (a.instance_id(), a.address(), a.zone(), a.token()),
            ("a", "a:80", "z", "t")
        );
        assert!(list.servers()[1].is_drop());
    }

    #[test]
    fn converts_routes_tiers_and_cluster_modes() {
        use v1::cluster_mode::Kind;
        let mut far = server("b", false);
        far.tier = 1;
        let list = PickList::try_from(v1::ServerList {
            version: 3,
            servers: vec![server("a", false), far, server("c", false)],
            order: vec![0, 1, 0, 2],
            routes: vec![v1::Route {
                name: "canary".into(),
                request: [("group".to_string(), "B".to_string())].into(),
                order: vec![2],
                strict: true,
            }],
            cluster: Some(v1::ClusterConfig {
                default_mode: Some(v1::ClusterMode {
                    kind: Kind::Failover as i32,
                    attempts: 4,
                    backoff_ms: 5,
                    retry_on: vec!["UNAVAILABLE".into(), "deadline_exceeded".into()],
                    ..Default::default()
                }),
                methods: [(
                    "/a.B/C".to_string(),
                    v1::ClusterMode {
                        kind: Kind::Forking as i32,
                        forks: 3,
                        ..Default::default()
                    },
                )]
                .into(),
                budget_percent: Some(50),
                budget_min_per_sec: None,
                deadline_ms: 1500,
            }),
            ..Default::default()
        })
        .unwrap();
        // b is in tier 1: picks skip it, failover reaches it last.
        let picks: Vec<String> = (0..3)
            .map(|_| list.pick().unwrap().instance_id().to_owned())
            .collect();
        assert_eq!(picks, ["a", "a", "c"]);
        assert_eq!(list.len(), 3);
        assert_eq!(
            list.pick_with(&[("group", "B")]).unwrap().instance_id(),
            "c"
        );
        assert_eq!(
            list.pick_with(&[("group", "A")]).unwrap().instance_id(),
            "a"
        );
        assert_eq!(list.routes()[0].name(), "canary");
        let s = list.settings();
        match s.mode_for("/x.Y/Z") {
            Mode::Failover(f) => {
                assert_eq!(f.attempts, 4);
                assert_eq!(f.backoff, Duration::from_millis(5));
                assert_eq!(f.backoff_max, Duration::from_millis(50));
                assert_eq!(f.retry_on, [Code::Unavailable, Code::DeadlineExceeded]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.mode_for("/a.B/C"), &Mode::Forking { forks: 3 });
        assert_eq!(s.budget.percent, 50);
        assert_eq!(s.budget.min_per_sec, 10);
        assert_eq!(s.deadline, Some(Duration::from_millis(1500)));
        // 0 is no default deadline; a larger one than ours is read as ours.
        let c = |deadline_ms| {
            cluster_config(v1::ClusterConfig {
                deadline_ms,
                ..Default::default()
            })
            .deadline
        };
        assert_eq!(c(0), None);
        assert_eq!(c(u32::MAX), Some(cluster::MAX_DEADLINE));
    }

    #[test]
    fn an_oversized_retry_on_is_read_only_as_far_as_there_are_codes() {
        let mut names = vec!["UNAVAILABLE".to_string(); 100_000];
        names[1] = "internal".into();
        names.push("DEADLINE_EXCEEDED".into());
        let m = mode(v1::ClusterMode {
            attempts: 2,
            retry_on: names,
            ..Default::default()
        });
        match m {
            Mode::Failover(f) => assert_eq!(f.retry_on, [Code::Unavailable, Code::Internal]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_out_of_range_affinity() {
        let err = PickList::try_from(v1::ServerList {
            version: 1,
            servers: vec![server("a", false)],
            order: vec![0],
            affinity: vec![0, 0, 3],
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(
            err,
            list::Error::AffinityOutOfRange { position: 2, .. }
        ));
    }

    #[test]
    fn rejects_out_of_range_order() {
        let err = PickList::try_from(v1::ServerList {
            version: 1,
            servers: vec![server("a", false)],
            order: vec![0, 7],
            affinity: vec![],
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, list::Error::OrderOutOfRange { index: 7, .. }));
    }

    #[test]
    fn load_sample_is_clamped() {
        let r = load_report(LoadSample {
            cpu_utilization: f64::NAN,
            active_requests: u64::MAX,
            qps: Some(-3.0),
            mem_utilization: Some(99.0),
            named_metrics: [("x".to_owned(), f64::INFINITY), ("y".to_owned(), 1.5)].into(),
            ..LoadSample::default()
        });
        assert_eq!(r.cpu_utilization, 0.0);
        assert_eq!(r.active_requests, 10_000_000);
        assert_eq!(r.qps, Some(0.0));
        assert_eq!(r.mem_utilization, Some(16.0));
        assert_eq!(r.named_metrics.len(), 1);
    }

    #[test]
    fn registration_ttl() {
        let mut reg = Registration::new("svc", "i1", "127.0.0.1:1");
        assert_eq!(v1::Registration::from(&reg).ttl_ms, 0);
        reg.ttl = Some(std::time::Duration::from_secs(2));
        let pb = v1::Registration::from(&reg);
        assert_eq!(pb.ttl_ms, 2000);
        assert_eq!(pb.instance.map(|i| i.weight), Some(1));
    }
}
