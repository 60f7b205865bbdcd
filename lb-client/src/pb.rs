//! The gRPC edge: the only module that touches `lb_proto::v1`.
//!
//! Converts daemon messages into domain types (`ServerList` → [`PickList`],
//! `ReportLoadResponse` → [`Directive`]) and domain types into requests
//! ([`Registration`], [`LoadSample`], [`StatsReport`]), and opens the two
//! long-lived streams so the tasks never see generated types.

use std::collections::HashMap;

use lb_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::Status;

use std::time::Duration;

use crate::budget::BudgetConfig;
use crate::call::{CallSettings, Planned};
use crate::cluster::{self, Mode};
use crate::list::{self, Endpoint, PickList, RouteSpec};
use crate::reporter::{Directive, LoadSample, Outgoing, Registration};
use crate::subscription::{StatsReport, Update};

/// Why a daemon message was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The server list is inconsistent (see [`list::Error`]); the client keeps
    /// its previous list. This is a daemon bug worth reporting.
    #[error("malformed server list: {0}")]
    InvalidList(#[from] list::Error),
}

impl TryFrom<v1::ServerList> for PickList {
    type Error = Error;

    fn try_from(list: v1::ServerList) -> Result<Self, Error> {
        let servers = list.servers.into_iter().map(endpoint).collect();
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
        let settings = list.cluster.map(settings).unwrap_or_default();
        Ok(l.with_affinity(list.affinity)?.with_settings(settings))
    }
}

/// The daemon's cluster modes. A mode this build does not know falls back to
/// the default (failover): the daemon validated it, so it is newer than us.
fn settings(c: v1::ClusterConfig) -> CallSettings {
    let d = BudgetConfig::default();
    CallSettings {
        default: c
            .default_mode
            .map(planned)
            .unwrap_or_else(|| CallSettings::default().default),
        methods: c
            .methods
            .into_iter()
            .map(|(k, m)| (k, planned(m)))
            .collect(),
        budget: BudgetConfig {
            percent: c
                .budget_percent
                .map_or(d.percent, |p| f64::from(p.min(100)) / 100.0),
            min_per_sec: c.budget_min_per_sec.unwrap_or(d.min_per_sec),
            ..d
        },
    }
}

fn planned(m: v1::ClusterMode) -> Planned {
    use v1::cluster_mode::{Collect as C, Kind as K};
    let broadcast = || cluster::Broadcast {
        collect: match C::try_from(m.collect) {
            Ok(C::All) => cluster::Collect::All,
            Ok(C::None) => cluster::Collect::None,
            _ => cluster::Collect::First,
        },
        max_failure_percent: m.max_failure_percent.min(100),
    };
    match K::try_from(m.kind) {
        Ok(K::Failfast) => Planned::Mode(Mode::Failfast),
        Ok(K::Failsafe) => Planned::Mode(Mode::Failsafe),
        Ok(K::Forking) => Planned::Mode(Mode::Forking { k: m.forks.max(1) }),
        Ok(K::Broadcast) => Planned::Mode(Mode::Broadcast(broadcast())),
        Ok(K::Multicast) => Planned::Multicast {
            route: m.route.clone(),
            broadcast: broadcast(),
        },
        Ok(K::Failover) | Err(_) => {
            let backoff = Duration::from_millis(u64::from(m.backoff_ms));
            let max = match m.backoff_max_ms {
                0 => backoff * 10,
                ms => Duration::from_millis(u64::from(ms)),
            };
            let retry_on: Vec<tonic::Code> = m.retry_on.iter().filter_map(|n| code(n)).collect();
            Planned::Mode(Mode::Failover(cluster::Failover {
                attempts: m.attempts.max(1),
                backoff,
                backoff_max: max.max(backoff),
                retry_on: if retry_on.is_empty() {
                    vec![tonic::Code::Unavailable]
                } else {
                    retry_on
                },
            }))
        }
    }
}

/// A gRPC status name ("UNAVAILABLE") as its code.
fn code(name: &str) -> Option<tonic::Code> {
    lb_core::status::Code::error_named(name).map(|c| tonic::Code::from_i32(c.number() as i32))
}

fn endpoint(s: v1::Server) -> Endpoint {
    if s.drop {
        return Endpoint::drop_entry();
    }
    Endpoint::new(s.instance_id, s.address)
        .with_zone(s.zone)
        .with_tier(s.tier)
        .with_token(s.token)
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
        v1::Registration {
            instance: Some(v1::Instance {
                service: r.service.clone(),
                instance_id: r.instance_id.clone(),
                address: r.address.clone(),
                zone: r.zone.clone(),
                weight: r.weight,
                labels: r
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                version: r.version.clone(),
                token: r.token.clone(),
            }),
            ttl_ms: r
                .ttl
                .map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
        }
    }
}

impl From<LoadSample> for v1::LoadReport {
    /// Clamps to the daemon's documented ranges: a sampler glitch (NaN, a
    /// negative rate) must not get the whole stream refused.
    fn from(s: LoadSample) -> Self {
        fn clamp(x: f64, hi: f64) -> f64 {
            if x.is_finite() {
                x.clamp(0.0, hi)
            } else {
                0.0
            }
        }
        v1::LoadReport {
            cpu_utilization: clamp(s.cpu_utilization, 16.0),
            active_requests: s.active_requests.min(10_000_000),
            qps: s.qps.map(|x| clamp(x, 1e9)),
            eps: s.eps.map(|x| clamp(x, 1e9)),
            mem_utilization: s.mem_utilization.map(|x| clamp(x, 16.0)),
            named_metrics: s
                .named_metrics
                .into_iter()
                .filter(|(_, v)| v.is_finite())
                .take(32)
                .collect::<HashMap<_, _>>(),
        }
    }
}

fn identity(
    client_id: &str,
    zone: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> v1::ClientIdentity {
    v1::ClientIdentity {
        client_id: client_id.to_owned(),
        zone: zone.to_owned(),
        labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Opens `Balancer/Subscribe`: sends the subscription first, then every
/// [`StatsReport`] from `stats`; yields the daemon's updates.
pub(crate) async fn subscribe(
    channel: Channel,
    service: &str,
    options: &crate::ClientOptions,
    stats: mpsc::Receiver<StatsReport>,
) -> Result<impl Stream<Item = Result<Update, Status>> + Unpin + Send + 'static, Status> {
    let first = v1::SubscribeRequest {
        msg: Some(v1::subscribe_request::Msg::Subscribe(v1::Subscription {
            service: service.to_owned(),
            client: Some(identity(&options.client_id, &options.zone, &options.labels)),
        })),
    };
    let requests =
        tokio_stream::once(first).chain(ReceiverStream::new(stats).map(|s| v1::SubscribeRequest {
            msg: Some(v1::subscribe_request::Msg::Stats(s.into())),
        }));
    let response = v1::balancer_client::BalancerClient::new(channel)
        .subscribe(requests)
        .await?;
    Ok(response.into_inner().map(|r| r.map(Update::from)))
}

/// Opens `Registry/ReportLoad`: sends the registration first, then every
/// [`Outgoing`] message; yields the daemon's directives.
pub(crate) async fn report_load(
    channel: Channel,
    registration: &Registration,
    outgoing: mpsc::Receiver<Outgoing>,
) -> Result<impl Stream<Item = Result<Directive, Status>> + Unpin + Send + 'static, Status> {
    use v1::report_load_request::Msg;
    let first = v1::ReportLoadRequest {
        msg: Some(Msg::Register(registration.into())),
    };
    let requests = tokio_stream::once(first).chain(ReceiverStream::new(outgoing).map(|m| {
        v1::ReportLoadRequest {
            msg: Some(match m {
                Outgoing::Report(s) => Msg::Report(s.into()),
                Outgoing::Drain => Msg::Drain(v1::Drain {}),
            }),
        }
    }));
    let response = v1::registry_client::RegistryClient::new(channel)
        .report_load(requests)
        .await?;
    Ok(response.into_inner().map(|r| r.map(Directive::from)))
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
            Planned::Mode(Mode::Failover(f)) => {
                assert_eq!(f.attempts, 4);
                assert_eq!(f.backoff, Duration::from_millis(5));
                assert_eq!(f.backoff_max, Duration::from_millis(50));
                assert_eq!(
                    f.retry_on,
                    [tonic::Code::Unavailable, tonic::Code::DeadlineExceeded]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.mode_for("/a.B/C"), &Planned::Mode(Mode::Forking { k: 3 }));
        assert_eq!(s.budget.percent, 0.5);
        assert_eq!(s.budget.min_per_sec, 10);
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
            Error::InvalidList(list::Error::AffinityOutOfRange { position: 2, .. })
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
        assert!(matches!(
            err,
            Error::InvalidList(list::Error::OrderOutOfRange { index: 7, .. })
        ));
    }

    #[test]
    fn load_sample_is_clamped() {
        let r = v1::LoadReport::from(LoadSample {
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
