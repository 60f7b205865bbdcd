//! What an operator sees of a service (`ctl get`, `GetService`, `/metrics`):
//! computed from a registry snapshot and the plan clients hold, with the
//! reader's own `now`, so reads never wait for the daemon's writer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::cluster::ClusterConfig;
use crate::health::HostStatus;
use crate::model::{InstanceSpec, Load};
use crate::policy::ServicePolicy;
use crate::registry::{Attachment, GrpclbTotals, OutcomeTotals, Override, Registry};
use crate::replan::Published;
use crate::routing::{self, Rule};

/// A service as `ctl get` shows it.
#[derive(Debug, Clone)]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// Policy in force.
    pub policy: ServicePolicy,
    /// Version of the published list (0 if none).
    pub version: u64,
    /// Entries in one period.
    pub list_len: usize,
    /// Largest share error of the published list.
    pub max_share_error: f64,
    /// Client-reported drops.
    pub dropped: u64,
    /// Client-reported calls with an empty list.
    pub no_backend: u64,
    /// Every registered instance, drained ones included.
    pub instances: Vec<InstanceView>,
    /// Routing rules, with how many instances each selects now.
    pub rules: Vec<(Rule, usize)>,
    /// Cluster modes.
    pub cluster: ClusterConfig,
    /// Load shedding: the fraction dropped now.
    pub drop_fraction: f64,
    /// Mean fresh reported utilization.
    pub utilization: f64,
    /// Seconds the reported backlog takes to drain (0 if unknown).
    pub backlog_seconds: f64,
    /// What stock gRPC clients reported.
    pub grpclb: GrpclbTotals,
    /// grpc.lb.v1 streams open on the service now.
    pub grpclb_streams: u32,
    /// xDS streams asking for the service's assignment now.
    pub xds_streams: u32,
    /// lb.v1 subscriptions (lb-client) open on the service now.
    pub subscribers: u32,
}

/// Who follows a service's plan now: open streams, by protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Followers {
    /// lb.v1 subscriptions (lb-client).
    pub subscribers: u32,
    /// grpc.lb.v1 streams (stock gRPC clients).
    pub grpclb_streams: u32,
    /// xDS streams asking for the service's assignment (stock gRPC clients).
    pub xds_streams: u32,
}

/// An instance as `ctl get` shows it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// What it registered.
    pub spec: InstanceSpec,
    /// What keeps it alive.
    pub attachment: Attachment,
    /// Operator settings.
    pub over: Override,
    /// Its effective weight in the published plan (0 if not listed).
    pub effective_weight: f64,
    /// Its share of the published list.
    pub share: f64,
    /// consistent_hash: the fraction of its keyed calls spilled to their
    /// keys' next servers (0: none).
    pub key_spill: f64,
    /// Latest load report and its age.
    pub load: Option<(Load, Duration)>,
    /// Client-reported outcomes.
    pub outcomes: OutcomeTotals,
    /// Latency estimate now, µs.
    pub latency_us: Option<f64>,
    /// Outlier detection and circuit state.
    pub health: HostStatus,
    /// While ejected: how long until re-admission.
    pub ejected_for: Option<Duration>,
    /// Cumulative client-reported failures by status code.
    pub failed_by_code: BTreeMap<u32, u64>,
}

/// Views of the registry's services (all, or only `only`), sorted by name.
/// `published` gives a service's current plan, `followers` its open streams.
pub fn services<P: std::borrow::Borrow<Published>>(
    registry: &Registry,
    only: Option<&str>,
    published: impl Fn(&str) -> Option<P>,
    followers: impl Fn(&str) -> Followers,
    now: Instant,
) -> Vec<ServiceView> {
    let mut names: BTreeSet<&String> = registry.services().map(|(n, _)| n).collect();
    if let Some(o) = only {
        names.retain(|n| *n == o);
    }
    names
        .into_iter()
        .filter_map(|name| {
            let p = published(name);
            service(
                registry,
                name,
                p.as_ref().map(|p| p.borrow()),
                followers(name),
                now,
            )
        })
        .collect()
}

/// The view of one service, if the registry knows it.
pub fn service(
    registry: &Registry,
    name: &str,
    published: Option<&Published>,
    followers: Followers,
    now: Instant,
) -> Option<ServiceView> {
    let svc = registry.service(name)?;
    let plan = published.map(|p| &p.plan);
    let shares = plan.map(|p| p.shares()).unwrap_or_default();
    let latency: BTreeMap<&str, f64> = registry
        .candidates(name, now)
        .into_iter()
        .filter_map(|c| Some((c.spec.instance_id.as_str(), c.latency_us?)))
        .collect();
    let instances = svc
        .instances
        .values()
        .map(|i| {
            let health = svc.health.status(&i.spec.instance_id, now);
            let at = plan.and_then(|p| {
                p.servers
                    .iter()
                    .position(|s| s.instance_id == i.spec.instance_id)
            });
            InstanceView {
                spec: i.spec.clone(),
                attachment: i.attachment,
                over: registry.override_of(&i.spec.key()),
                effective_weight: at
                    .and_then(|k| plan.and_then(|p| p.weights.get(k).copied()))
                    .unwrap_or(0.0),
                share: at.and_then(|k| shares.get(k).copied()).unwrap_or(0.0),
                key_spill: at
                    .and_then(|k| plan.and_then(|p| p.spill.get(k).copied()))
                    .unwrap_or(0.0),
                load: i
                    .load
                    .as_ref()
                    .map(|l| (l.load.clone(), now.saturating_duration_since(l.at))),
                outcomes: i.outcomes,
                latency_us: latency.get(i.spec.instance_id.as_str()).copied(),
                ejected_for: health.ejected_until.filter(|t| *t > now).map(|t| t - now),
                health,
                failed_by_code: svc
                    .failed_by_code
                    .get(&i.spec.instance_id)
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect();
    let route_servers: Vec<routing::RouteServer<'_>> = svc
        .instances
        .values()
        .map(|i| routing::RouteServer {
            instance_id: &i.spec.instance_id,
            zone: &i.spec.zone,
            labels: &i.spec.labels,
        })
        .collect();
    let rules = svc
        .rules
        .iter()
        .map(|r| (r.clone(), routing::selected(r, &route_servers)))
        .collect();
    let seen = svc.shed_signal(now);
    Some(ServiceView {
        name: name.to_string(),
        policy: svc.policy.clone(),
        version: published.map_or(0, |p| p.version),
        list_len: plan.map_or(0, |p| p.order.len()),
        max_share_error: plan.map_or(0.0, |p| p.max_share_error),
        dropped: svc.dropped,
        no_backend: svc.no_backend,
        instances,
        rules,
        cluster: svc.cluster.clone(),
        drop_fraction: plan.map_or(0.0, |p| p.drop_fraction),
        utilization: seen.utilization.unwrap_or(0.0),
        backlog_seconds: seen.backlog.unwrap_or(0.0),
        grpclb: svc.grpclb.clone(),
        grpclb_streams: followers.grpclb_streams,
        xds_streams: followers.xds_streams,
        subscribers: followers.subscribers,
    })
}
