//! `envoy.service.discovery.v3.AggregatedDiscoveryService`: the third front
//! end, for proxyless gRPC clients that dial `xds:///NAME` (grpclb's
//! successor: gRFC A26, A27). Same engine, same plans; the resources are
//! built in [`crate::pb::xds`].
//!
//! The protocol (Envoy's "xDS REST and gRPC protocol", state of the world,
//! aggregated on one stream):
//!
//! 1. The client's requests name a type URL and the resources of that type
//!    it wants (its whole set each time). The first carries its `Node`: its
//!    id, its zone (`locality.zone`) and metadata, which become this
//!    stream's client identity (zone tiers and routing rules use them).
//! 2. For each type, the daemon answers with every resource asked for, a
//!    version and a nonce of its own (per type, per stream). A Listener,
//!    route configuration or Cluster is sent when first asked for; an
//!    assignment again each time the service's plan changes what this
//!    client would see (plans are already damped where they are made).
//! 3. The client ACKs (the nonce, the version) or NACKs (the nonce and an
//!    `error_detail`); a NACK is logged with the client's words and counted
//!    ([`crate::engine::Hub`]'s `xds_nacks`), and the daemon keeps sending
//!    updates. A request with an older nonce than the type's last answer is
//!    stale and ignored, as the protocol says.
//!
//! Its `LoadReportingService` takes the clients' load reports (LRS) into each service's
//! client stats, per instance.
//!
//! Bad input ends the stream only, with a status naming the field: an
//! unknown type URL, a resource name that is not a target or service name
//! (`invalid_argument`), more than [`MAX_NAMES`] names, a node that fails
//! validation; and an answer the client has not acknowledged within
//! `--xds-ack-timeout` (`deadline_exceeded`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_server::LoadReportingService;
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use lb_core::access::Need;
use lb_core::model::ClientIdentity;
use lb_core::replan::Published;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_stream::{StreamExt, StreamMap};
use tonic::{Request, Response, Status, Streaming};

use super::{first_message, stopping, BoxStream};
use crate::config::Config;
use crate::engine::{EngineHandle, Follows};
use crate::pb::invalid;
use crate::pb::xds::{self, Kind, MAX_NAMES};

/// Longest error detail of a NACK quoted in the log.
const QUOTED_DETAIL: usize = 512;

/// The xDS front end.
#[derive(Clone)]
pub struct XdsApi {
    engine: EngineHandle,
    config: Config,
    stop: watch::Receiver<bool>,
}

impl XdsApi {
    /// An ADS service over `engine`; streams end when `stop` turns true.
    pub fn new(engine: EngineHandle, config: Config, stop: watch::Receiver<bool>) -> Self {
        XdsApi {
            engine,
            config,
            stop,
        }
    }
}

impl XdsApi {
    /// What both xDS streams start with: the caller, the requests, the
    /// first of them (waited for as every stream's first message is), and
    /// the client its node describes.
    async fn opening<T>(
        &self,
        request: Request<Streaming<T>>,
        node: impl Fn(&T) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Result<(Option<crate::auth::Caller>, Streaming<T>, T, ClientIdentity), Status> {
        let caller = crate::auth::caller(&request).cloned();
        let mut inbound = request.into_inner();
        let first = first_message(
            &mut inbound,
            self.config.first_message_timeout,
            &self.stop,
            caller.as_ref(),
        )
        .await?;
        let client = xds::identity(node(&first)).map_err(invalid)?;
        Ok((caller, inbound, first, client))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsApi {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (caller, inbound, first, client) = self.opening(request, |r| r.node.as_ref()).await?;
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            ack_timeout: self.config.xds_ack_timeout,
            engine: self.engine.clone(),
            caller,
            client,
            seq: self.engine.hub().next_client_seq(),
            subs: BTreeMap::new(),
            plans: StreamMap::new(),
            open: BTreeMap::new(),
            tx,
        };
        tokio::spawn(session.run(first, inbound, self.stop.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "incremental xDS is not served: use the state-of-the-world StreamAggregatedResources",
        ))
    }
}

/// One type's subscription on a stream.
#[derive(Debug, Default)]
struct Subscription {
    /// The resources asked for, by name.
    names: BTreeSet<String>,
    /// Answers sent so far (the version of the last).
    sent: u64,
    /// The last answer's nonce: a request naming another is stale.
    nonce: String,
    /// When the last answer was sent, until the client acknowledges (or
    /// rejects) it.
    unacked: Option<Instant>,
    /// Each resource as last sent (assignments are re-sent only when they
    /// change).
    last: BTreeMap<String, Vec<u8>>,
}

struct Session {
    /// `--xds-ack-timeout`.
    ack_timeout: Duration,
    engine: EngineHandle,
    caller: Option<crate::auth::Caller>,
    client: ClientIdentity,
    seq: u64,
    subs: BTreeMap<Kind, Subscription>,
    /// The plans of the services whose assignments are asked for.
    plans: StreamMap<String, WatchStream<Arc<Published>>>,
    /// Held while their assignments are asked for (counted as open xDS
    /// streams of the service).
    open: BTreeMap<String, crate::engine::Following>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Session {
    async fn run(
        mut self,
        first: DiscoveryRequest,
        mut inbound: Streaming<DiscoveryRequest>,
        stop: watch::Receiver<bool>,
    ) {
        let stop = stopping(stop);
        tokio::pin!(stop);
        let mut next = Some(first);
        loop {
            if let Some(request) = next.take() {
                if let Err(status) = self.take(request).await {
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
            }
            let deadline = self
                .subs
                .values()
                .filter_map(|s| s.unacked.map(|at| at + self.ack_timeout))
                .min();
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => next = Some(m),
                    // The client went away.
                    Ok(None) | Err(_) => return,
                },
                Some(_) = self.plans.next() => {
                    for kind in Kind::ALL {
                        if !self.send(kind, false).await {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let _ = self.tx.send(Err(Status::deadline_exceeded(format!(
                        "no ACK or NACK of an answer within {}: a client must acknowledge each answer",
                        lb_core::duration::show(self.ack_timeout)
                    )))).await;
                    return;
                }
                _ = &mut stop => {
                    let _ = self.tx.send(Err(Status::unavailable("lb-server is shutting down"))).await;
                    return;
                }
            }
        }
    }

    /// Takes one request: an ACK, a NACK, or a (new) set of names.
    async fn take(&mut self, r: DiscoveryRequest) -> Result<(), Status> {
        let kind = Kind::of(&r.type_url).map_err(invalid)?;
        if r.resource_names.len() > MAX_NAMES {
            return Err(Status::invalid_argument(format!(
                "resource_names: {} names, more than {MAX_NAMES}",
                r.resource_names.len()
            )));
        }
        for name in &r.resource_names {
            let service = xds::service_of(kind, name).map_err(invalid)?;
            if let Some(c) = &self.caller {
                c.allow(&Need::Client(service))?;
            }
        }
        let sub = self.subs.entry(kind).or_default();
        if !r.response_nonce.is_empty() {
            if r.response_nonce != sub.nonce {
                // It answers an older answer than the last: stale, ignored
                // (the client will answer the last one too).
                return Ok(());
            }
            // An ACK or a NACK of the last answer, perhaps with new names.
            sub.unacked = None;
        }
        if let Some(e) = &r.error_detail {
            let detail = lb_core::model::bounded(e.message.clone(), QUOTED_DETAIL);
            tracing::warn!(
                client = %self.client.client_id,
                type_url = %r.type_url,
                version = %r.version_info,
                code = e.code,
                %detail,
                "xDS client rejected (NACKed) an answer"
            );
            self.engine.hub().xds_nacks.fetch_add(1, Ordering::Relaxed);
        }
        let names: BTreeSet<String> = r.resource_names.into_iter().collect();
        if names == sub.names && sub.sent > 0 {
            return Ok(());
        }
        sub.names = names;
        // Every resource depends on its service's plan (listeners and
        // routes on its cluster modes and hashing, clusters on hashing,
        // assignments on the rest): their services' plans are followed.
        let followed: BTreeSet<String> = self
            .subs
            .iter()
            .flat_map(|(k, sub)| sub.names.iter().filter_map(|n| xds::service_of(*k, n).ok()))
            .collect();
        self.follow(followed);
        if self.send(kind, true).await {
            Ok(())
        } else {
            Err(Status::cancelled("the client stopped reading"))
        }
    }

    /// Follows the plans of exactly `services`.
    fn follow(&mut self, services: BTreeSet<String>) {
        let hub = self.engine.hub();
        let gone: Vec<String> = self
            .open
            .keys()
            .filter(|s| !services.contains(*s))
            .cloned()
            .collect();
        for s in gone {
            self.plans.remove(&s);
            self.open.remove(&s);
        }
        for s in services {
            if !self.open.contains_key(&s) {
                // The first item is the current plan, already sent below.
                let plans = WatchStream::from_changes(hub.subscribe(&s));
                self.plans.insert(s.clone(), plans);
                self.open.insert(s.clone(), hub.following(&s, Follows::Xds));
            }
        }
    }

    /// Sends every resource of `kind` asked for, if any changed since it
    /// was last sent (or always with `force`: a new set of names). Returns
    /// false if the client is gone.
    async fn send(&mut self, kind: Kind, force: bool) -> bool {
        let hub = self.engine.hub();
        let Some(sub) = self.subs.get_mut(&kind) else {
            return true;
        };
        let mut resources: Vec<(String, Any)> = Vec::with_capacity(sub.names.len());
        for name in &sub.names {
            // Checked when asked for.
            let Ok(service) = xds::service_of(kind, name) else {
                continue;
            };
            let plan = hub.current(&service);
            let shape = xds::Shape::of(plan.as_deref());
            let any = match kind {
                Kind::Listener => xds::listener(name, &service, &shape),
                Kind::Route => pack_any(xds::route_configuration(&service, &shape)),
                Kind::Cluster => xds::cluster(&service, &shape),
                Kind::Endpoints => {
                    let Some(p) = plan else {
                        // Nothing planned yet: an empty assignment (no
                        // endpoint) until the service has one.
                        let empty =
                            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                                cluster_name: service.clone(),
                                ..Default::default()
                            };
                        resources.push((name.clone(), pack_any(empty)));
                        continue;
                    };
                    pack_any(xds::assignment(&service, &p, self.seq, &self.client))
                }
            };
            resources.push((name.clone(), any));
        }
        let changed = resources
            .iter()
            .any(|(name, any)| sub.last.get(name) != Some(&any.value))
            || resources.len() != sub.last.len();
        if !force && !changed {
            return true;
        }
        sub.sent += 1;
        let version = sub.sent.to_string();
        let nonce = format!("{kind:?}-{}", sub.sent);
        sub.last = resources
            .iter()
            .map(|(n, a)| (n.clone(), a.value.clone()))
            .collect();
        sub.unacked = Some(Instant::now());
        sub.nonce = nonce.clone();
        let response = DiscoveryResponse {
            version_info: version,
            resources: resources.into_iter().map(|(_, a)| a).collect(),
            type_url: kind.type_url().to_string(),
            nonce,
            ..DiscoveryResponse::default()
        };
        self.tx.send(Ok(response)).await.is_ok()
    }
}

// `envoy.service.load_stats.v3.LoadReportingService`: the calls stock xDS
// clients made (LRS, which the Cluster's `lrs_server` turns on), folded
// into each service's client stats as lb-client's own reports are, so a
// failing instance is ejected from stock clients' outcomes too. The daemon
// asks for every cluster (`send_all_clusters`) every `--stats-interval`.
#[tonic::async_trait]
impl LoadReportingService for XdsApi {
    type StreamLoadStatsStream = BoxStream<LoadStatsResponse>;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        let (caller, mut inbound, first, client) =
            self.opening(request, |r| r.node.as_ref()).await?;
        // One witness per credential (lb_core::evidence), else per node.
        let witness = caller
            .as_ref()
            .and_then(crate::auth::Caller::witness)
            .unwrap_or_else(|| format!("xds:{}", client.client_id));
        tracing::debug!(client = %client.client_id, "xDS client reports its calls (LRS)");
        let interval = self.config.stats_interval.max(Duration::from_millis(100));
        let (tx, rx) = mpsc::channel(2);
        let hello = LoadStatsResponse {
            send_all_clusters: true,
            load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: interval.as_secs() as i64,
                nanos: interval.subsec_nanos() as i32,
            }),
            ..LoadStatsResponse::default()
        };
        let _ = tx.send(Ok(hello)).await;
        let engine = self.engine.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let stop = stopping(stop);
            tokio::pin!(stop);
            let mut next = Some(first);
            loop {
                if let Some(r) = next.take() {
                    tracing::trace!(clusters = r.cluster_stats.len(), "LRS report");
                    for c in &r.cluster_stats {
                        let (service, stats) = match xds::load_report(c) {
                            Ok(x) => x,
                            Err(e) => {
                                let _ = tx.send(Err(invalid(e))).await;
                                return;
                            }
                        };
                        if let Some(c) = &caller {
                            if let Err(s) = c.allow(&Need::Client(service.clone())) {
                                let _ = tx.send(Err(s)).await;
                                return;
                            }
                        }
                        engine.stats(service, witness.clone(), stats).await;
                    }
                }
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => next = Some(m),
                        Ok(None) | Err(_) => return,
                    },
                    _ = &mut stop => {
                        let _ = tx.send(Err(Status::unavailable("lb-server is shutting down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
