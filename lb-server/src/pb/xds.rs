//! xDS (Envoy's v3 API, as gRPC's xDS client reads it) ⇄ domain: a
//! client's `Node` becomes its [`ClientIdentity`], resource names become
//! services, and a plan becomes the four resources a proxyless gRPC client
//! needs for `xds:///NAME` (gRFC A27, "xDS-Based Global Load Balancing"):
//!
//! - a `Listener` named as dialled (`NAME` or `NAME:PORT`) whose
//!   `api_listener` is an `HttpConnectionManager` holding its
//!   `RouteConfiguration` inline (no RDS round trip), with the router filter
//!   (gRFC A39) last;
//! - that route configuration: one virtual host for every domain, one route
//!   (every path) to the cluster `NAME`;
//! - the `Cluster` `NAME`: type EDS over ADS, `ROUND_ROBIN`, which gRPC
//!   runs as `wrr_locality` over `round_robin` (gRFC A52): localities are
//!   picked by weight, endpoints round robin within one; under a hash
//!   policy, `RING_HASH` (gRFC A42) with every route hashing the request
//!   key header [`KEY_HEADER`] (gRPC's ring, not our affinity table: the
//!   same key stays on one instance, but not necessarily the one lb-client
//!   would pick);
//! - the `ClusterLoadAssignment` `NAME`: the plan as this client sees it
//!   ([`lb_core::policy::view::weighted`]). gRPC's `round_robin` ignores
//!   endpoint weights (grpc/grpc#32004), so each endpoint is a locality of
//!   its own (`region` and `zone`: its zone, `sub_zone`: its instance id)
//!   whose `load_balancing_weight` is its weight; the client's zone is
//!   priority 0 and the rest follow (gRFC A27 priorities; gRPC ignores
//!   `overprovisioning_factor`, so spilling between priorities is the plan's
//!   panic threshold, as for lb-client); load shedding is one
//!   `drop_overloads` category (`lb_shed`, parts per million), which gRPC's
//!   `xds_cluster_impl` policy applies with `UNAVAILABLE`.
//!
//! Instances whose address is not an IP literal are left out (gRPC's xDS
//! client does not resolve endpoint names). Drained, ejected and
//! circuit-broken instances are not in the plan, so not in the assignment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, Locality, Node, SelfConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    retry_policy, route, route_action, route_match, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent};
use envoy_types::pb::google::protobuf::{
    value, Any, Duration as ProtoDuration, UInt32Value, UInt64Value,
};
use envoy_types::util::pack_any;
use lb_core::cluster::{ClusterConfig, Mode};
use lb_core::model::{
    bounded, check_id, ClientIdentity, ClientStats, FieldError, InstanceOutcomes,
};
use lb_core::policy::view::{client_view, weighted};
use lb_core::replan::Published;
use lb_core::status::Code;

use super::grpclb::{literal, service_named};

/// The resource types served, by type URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `Listener` (LDS).
    Listener,
    /// `RouteConfiguration` (RDS; served inline, so never asked for by us,
    /// but answered if asked).
    Route,
    /// `Cluster` (CDS).
    Cluster,
    /// `ClusterLoadAssignment` (EDS).
    Endpoints,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Listener, Kind::Route, Kind::Cluster, Kind::Endpoints];

    /// Its type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoints => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
    }

    /// The kind of `type_url`.
    pub fn of(type_url: &str) -> Result<Kind, FieldError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.type_url() == type_url)
            .ok_or_else(|| {
                FieldError::new(
                    "type_url",
                    format!(
                        "{:?} is not served (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment of envoy v3)",
                        bounded(type_url.to_string(), QUOTED)
                    ),
                )
            })
    }
}

/// Longest type URL or resource name quoted in an error.
const QUOTED: usize = 128;

/// Most resource names one request may subscribe to.
pub const MAX_NAMES: usize = 1000;

/// The service `name` (a resource name of `kind`) stands for: Listener
/// names are targets (`NAME` or `NAME:PORT`); the other kinds are named
/// after the service itself.
pub fn service_of(kind: Kind, name: &str) -> Result<String, FieldError> {
    match kind {
        Kind::Listener => service_named(name, "resource_names"),
        _ => {
            lb_core::model::check_service(name).map_err(|e| {
                FieldError::new(
                    "resource_names",
                    format!("{:?}: {e}", bounded(name.to_string(), QUOTED)),
                )
            })?;
            Ok(name.to_string())
        }
    }
}

/// A client's identity from its `Node`: its id, its `locality.zone`, and
/// the string values of its `metadata` as labels (others are ignored).
pub fn identity(node: Option<&Node>) -> Result<ClientIdentity, FieldError> {
    let Some(node) = node else {
        return Ok(ClientIdentity::default());
    };
    let mut labels = BTreeMap::new();
    for (k, v) in node.metadata.iter().flat_map(|m| m.fields.iter()) {
        if let Some(value::Kind::StringValue(s)) = &v.kind {
            labels.insert(k.clone(), s.clone());
        }
    }
    let id = ClientIdentity {
        client_id: node.id.clone(),
        zone: node
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
        labels,
    };
    id.check().map_err(|e| e.within("node"))?;
    Ok(id)
}

/// The request header whose value a hash policy's clients hash
/// (`ring_hash`): the request key.
pub const KEY_HEADER: &str = "lb-key";

/// What the resources of a service depend on in its plan.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Its cluster modes.
    pub modes: std::sync::Arc<ClusterConfig>,
    /// A hash policy is in force (ring hash on [`KEY_HEADER`]).
    pub hashing: bool,
}

impl Shape {
    /// The shape of `p` (the default for a service with no plan yet).
    pub fn of(p: Option<&Published>) -> Shape {
        p.map_or_else(Shape::default, |p| Shape {
            modes: std::sync::Arc::clone(&p.plan.cluster),
            hashing: !p.plan.affinity.is_empty(),
        })
    }
}

/// The Listener for target `name` (of `service`).
pub fn listener(name: &str, service: &str, shape: &Shape) -> Any {
    let router = HttpFilter {
        name: "router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..HttpFilter::default()
    };
    let hcm = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            route_configuration(service, shape),
        )),
        http_filters: vec![router],
        ..HttpConnectionManager::default()
    };
    pack_any(Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Listener::default()
    })
}

/// The route configuration `service`: every path to the cluster `service`;
/// a method with a cluster mode of its own gets a route of its own (exact
/// path) first, so it keeps its retry policy. Under a hash policy every
/// route hashes the request key ([`KEY_HEADER`]).
pub fn route_configuration(service: &str, shape: &Shape) -> RouteConfiguration {
    let modes = &shape.modes;
    let hash_policy: Vec<route_action::HashPolicy> = shape
        .hashing
        .then(|| route_action::HashPolicy {
            policy_specifier: Some(route_action::hash_policy::PolicySpecifier::Header(
                route_action::hash_policy::Header {
                    header_name: KEY_HEADER.into(),
                    ..route_action::hash_policy::Header::default()
                },
            )),
            ..route_action::HashPolicy::default()
        })
        .into_iter()
        .collect();
    let route = |path: route_match::PathSpecifier, mode: &Mode| Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            ..RouteMatch::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(service.to_string())),
            retry_policy: retry_policy(mode),
            hash_policy: hash_policy.clone(),
            max_stream_duration: modes.deadline.map(|d| route_action::MaxStreamDuration {
                max_stream_duration: Some(duration(d)),
                ..route_action::MaxStreamDuration::default()
            }),
            ..RouteAction::default()
        })),
        ..Route::default()
    };
    let mut routes: Vec<Route> = modes
        .methods
        .iter()
        .map(|(method, mode)| route(route_match::PathSpecifier::Path(method.clone()), mode))
        .collect();
    routes.push(route(
        route_match::PathSpecifier::Prefix(String::new()),
        &modes.default,
    ));
    RouteConfiguration {
        name: service.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_string(),
            domains: vec!["*".into()],
            routes,
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

/// The status codes gRPC's xDS retry policy understands (gRFC A44), as
/// Envoy's `retry_on` names them.
const RETRIABLE: [(Code, &str); 5] = [
    (Code::Cancelled, "cancelled"),
    (Code::DeadlineExceeded, "deadline-exceeded"),
    (Code::Internal, "internal"),
    (Code::ResourceExhausted, "resource-exhausted"),
    (Code::Unavailable, "unavailable"),
];

/// Failover as gRFC A44's retry policy: the same attempts, backoff and
/// codes (codes gRPC cannot retry on are left out). The other modes make
/// one attempt: no policy. (Forking, broadcast and multicast have no xDS
/// form; a stock client makes one attempt.)
pub fn retry_policy(mode: &Mode) -> Option<RetryPolicy> {
    let Mode::Failover(f) = mode else {
        return None;
    };
    let on: Vec<&str> = RETRIABLE
        .iter()
        .filter(|(c, _)| f.retry_on.contains(c))
        .map(|(_, name)| *name)
        .collect();
    if f.attempts <= 1 || on.is_empty() {
        return None;
    }
    Some(RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(UInt32Value {
            value: f.attempts - 1,
        }),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(f.backoff.max(Duration::from_millis(1)))),
            max_interval: Some(duration(
                f.backoff_max.max(f.backoff).max(Duration::from_millis(1)),
            )),
        }),
        ..RetryPolicy::default()
    })
}

fn duration(d: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The Cluster `service`: EDS over ADS, round robin over weighted
/// localities; under a hash policy, `RING_HASH` (gRFC A42: the ring
/// weighs each endpoint by its locality's weight).
pub fn cluster(service: &str, shape: &Shape) -> Any {
    pack_any(Cluster {
        name: service.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..ConfigSource::default()
            }),
            service_name: service.to_string(),
        }),
        // Clients report their calls (LRS) to this same daemon.
        lrs_server: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Self_(
                SelfConfigSource::default(),
            )),
            ..ConfigSource::default()
        }),
        lb_policy: if shape.hashing {
            cluster::LbPolicy::RingHash as i32
        } else {
            cluster::LbPolicy::RoundRobin as i32
        },
        lb_config: shape.hashing.then(|| {
            cluster::LbConfig::RingHashLbConfig(cluster::RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: RING_SIZE }),
                ..cluster::RingHashLbConfig::default()
            })
        }),
        ..Cluster::default()
    })
}

/// The ring's least size under a hash policy: 4096 entries keep each
/// endpoint's share of the keys within a few percent of its weight for up
/// to a few dozen endpoints (gRPC's default is 1024).
const RING_SIZE: u64 = 4096;

/// The drop category load shedding is reported under.
pub const SHED_CATEGORY: &str = "lb_shed";

/// The assignment of `service` for client `seq` with identity `client`.
pub fn assignment(
    service: &str,
    p: &Published,
    seq: u64,
    client: &ClientIdentity,
) -> ClusterLoadAssignment {
    let view = client_view(&p.plan, p.version, seq, client);
    let w = weighted(&p.plan, &view);
    let endpoints = w
        .priorities
        .iter()
        .enumerate()
        .flat_map(|(priority, servers)| {
            servers.iter().filter_map(move |&(i, weight)| {
                let s = p.plan.servers.get(i as usize)?;
                let addr: SocketAddr = literal(&s.address)?;
                Some(LocalityLbEndpoints {
                    locality: Some(Locality {
                        region: s.zone.clone(),
                        zone: s.zone.clone(),
                        sub_zone: s.instance_id.clone(),
                    }),
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(
                            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
                                Endpoint {
                                    address: Some(socket(addr)),
                                    ..Endpoint::default()
                                },
                            ),
                        ),
                        ..LbEndpoint::default()
                    }],
                    load_balancing_weight: Some(UInt32Value { value: weight }),
                    priority: priority as u32,
                    ..LocalityLbEndpoints::default()
                })
            })
        })
        .collect();
    let drop_overloads = (w.drop_per_million > 0)
        .then(|| cluster_load_assignment::policy::DropOverload {
            category: SHED_CATEGORY.into(),
            drop_percentage: Some(FractionalPercent {
                numerator: w.drop_per_million,
                denominator: fractional_percent::DenominatorType::Million as i32,
            }),
        })
        .into_iter()
        .collect();
    ClusterLoadAssignment {
        cluster_name: service.to_string(),
        endpoints,
        policy: Some(cluster_load_assignment::Policy {
            drop_overloads,
            ..cluster_load_assignment::Policy::default()
        }),
        ..ClusterLoadAssignment::default()
    }
}

/// One cluster's load report (LRS, `envoy.service.load_stats.v3`) as the
/// service's client stats: each locality is one instance (its `sub_zone`,
/// as [`assignment`] sends them). LRS counts no latency (left at 0: unknown)
/// and no status codes; a locality with failures and no success counts its
/// failures as consecutive (what outlier detection's consecutive-failure
/// rule reads). Returns the service and its stats.
pub fn load_report(
    c: &envoy_types::pb::envoy::config::endpoint::v3::ClusterStats,
) -> Result<(String, ClientStats), FieldError> {
    let name = if c.cluster_service_name.is_empty() {
        &c.cluster_name
    } else {
        &c.cluster_service_name
    };
    let service = service_of(Kind::Cluster, name).map_err(|e| e.within("cluster_stats"))?;
    let mut instances = Vec::with_capacity(c.upstream_locality_stats.len());
    for (i, l) in c.upstream_locality_stats.iter().enumerate() {
        let id = l.locality.as_ref().map_or("", |l| l.sub_zone.as_str());
        check_id(id).map_err(|e| {
            FieldError::new(
                format!("cluster_stats.upstream_locality_stats[{i}].locality.sub_zone"),
                e,
            )
        })?;
        let finished = l
            .total_successful_requests
            .saturating_add(l.total_error_requests);
        instances.push(InstanceOutcomes {
            instance_id: id.to_string(),
            calls_started: l.total_issued_requests,
            calls_finished: finished,
            calls_failed: l.total_error_requests,
            latency_sum_us: 0,
            failed_by_code: BTreeMap::new(),
            consecutive_failures: if l.total_successful_requests == 0 {
                l.total_error_requests
            } else {
                0
            },
        });
    }
    let stats = ClientStats {
        instances,
        dropped: c.total_dropped_requests,
        no_backend: 0,
    };
    stats.check().map_err(|e| e.within("cluster_stats"))?;
    Ok((service, stats))
}

fn socket(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..SocketAddress::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use lb_core::policy::{PlanServer, ServicePlan};

    fn server(id: &str, zone: &str, addr: &str) -> PlanServer {
        PlanServer {
            instance_id: id.into(),
            address: addr.into(),
            zone: zone.into(),
            tier: 0,
            drop: false,
            token: String::new(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn names_map_to_services_and_bad_ones_are_named() {
        assert_eq!(service_of(Kind::Listener, "echo:50051").unwrap(), "echo");
        assert_eq!(service_of(Kind::Cluster, "echo").unwrap(), "echo");
        let e = service_of(Kind::Cluster, &"x y".repeat(500)).unwrap_err();
        assert_eq!(e.field, "resource_names");
        assert!(e.to_string().len() < 400, "{e}");
        let e = Kind::of(&"t".repeat(10_000)).unwrap_err();
        assert_eq!(e.field, "type_url");
        assert!(e.to_string().len() < 400);
    }

    #[test]
    fn a_node_gives_zone_id_and_string_labels() {
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "tier".to_string(),
            Value {
                kind: Some(value::Kind::StringValue("gold".into())),
            },
        );
        fields.insert(
            "n".to_string(),
            Value {
                kind: Some(value::Kind::NumberValue(1.0)),
            },
        );
        let node = Node {
            id: "c1".into(),
            locality: Some(Locality {
                zone: "z1".into(),
                ..Locality::default()
            }),
            metadata: Some(Struct { fields }),
            ..Node::default()
        };
        let id = identity(Some(&node)).unwrap();
        assert_eq!((id.client_id.as_str(), id.zone.as_str()), ("c1", "z1"));
        assert_eq!(id.labels.len(), 1);
        assert_eq!(id.labels["tier"], "gold");
        let bad = Node {
            id: "x".repeat(10_000),
            ..Node::default()
        };
        assert!(identity(Some(&bad)).unwrap_err().field.starts_with("node"));
    }

    #[test]
    fn the_assignment_weighs_each_endpoint_as_a_locality_and_orders_zones() {
        let mut zones = BTreeMap::new();
        zones.insert("z1".to_string(), (1, 1));
        zones.insert("z2".to_string(), (2, 2));
        let plan = ServicePlan {
            servers: vec![
                server("a", "z1", "127.0.0.2:1"),
                server("b", "z2", "127.0.0.3:2"),
                server("c", "z2", "name.example:3"),
                PlanServer {
                    drop: true,
                    ..server("", "", "")
                },
            ],
            weights: vec![1.0; 3],
            // a 2, b 1, c 1, drop 1 in 5.
            order: vec![0, 1, 0, 3, 2],
            zones,
            panic_threshold: 0.5,
            ..ServicePlan::default()
        };
        let p = Published { version: 1, plan };
        let client = ClientIdentity {
            zone: "z2".into(),
            ..ClientIdentity::default()
        };
        let a = assignment("svc", &p, 0, &client);
        let got: Vec<(String, u32, u32)> = a
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().sub_zone.clone(),
                    l.load_balancing_weight.unwrap().value,
                    l.priority,
                )
            })
            .collect();
        // The hostname instance is left out; the client's zone comes first.
        assert_eq!(got, [("b".into(), 1, 0), ("a".into(), 2, 1)]);
        let drop = &a.policy.unwrap().drop_overloads[0];
        assert_eq!(drop.drop_percentage.unwrap().numerator, 200_000);
    }
}
