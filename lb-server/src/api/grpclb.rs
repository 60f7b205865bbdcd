//! `grpc.lb.v1.LoadBalancer/BalanceLoad`: the second front end, for stock
//! gRPC clients' `grpclb` policy (C-core: C++, Python, Ruby, PHP, C#; Java;
//! Go). Same engine, same plans as lb's own `Balancer`; only the encoding
//! differs.
//!
//! Source: gRPC's load-balancer protocol, `grpc/lb/v1/load_balancer.proto`
//! (grpc/grpc-proto) and the grpclb design in grpc/grpc
//! `doc/load-balancing.md`. The conversation on one stream:
//!
//! 1. The client sends `initial_request { name }`. The name is the target's
//!    host, possibly with a port; [`crate::pb::grpclb::service_for`] maps it to a service by
//!    dropping a trailing `:port` (so `echo.example.com:50051` follows the
//!    service `echo.example.com`). Register services under the DNS name
//!    stock clients dial.
//! 2. The daemon answers `initial_response` with
//!    `client_stats_report_interval` (the daemon's `--stats-interval`), then a
//!    `server_list` built from the service's plan exactly as an lb-client
//!    subscriber's list is: this client's rotation of the smooth period, with
//!    weights as repeated entries, routing rules for anonymous clients
//!    applied (exclusive instances left out), and load shedding as drop
//!    entries with the token `lb-drop` ([`lb_core::model::DROP_TOKEN`]). Each entry carries its
//!    instance's stable token, which the client sends to the backend as
//!    `lb-token` metadata. Request-label routes and cluster modes do not
//!    exist in grpclb and are not sent. A new list follows every plan change
//!    that changes what this client would see.
//! 3. With no usable server (none registered, all drained or ejected, or
//!    the service unknown) the daemon sends `fallback_response` once: the
//!    client uses its resolver's addresses until a server list arrives.
//! 4. The client reports `client_stats` at the interval. grpclb's stats are
//!    per client, not per server, so they are added to the service's grpclb
//!    totals (`ctl get`); drops are counted per token and in the service's
//!    `dropped`. They cannot drive per-instance outlier detection.
//!
//! Addresses: an instance registered with an IP address is sent as its 4 or
//! 16 network-order bytes. One registered with a DNS name is resolved by the
//! daemon when the list is built (answers are cached for [`RESOLVE_TTL`] per
//! stream, and re-resolved at that period while the stream lives); the first
//! IPv4 answer is used, else the first answer. A name that does not resolve
//! leaves that instance out of this stream's lists (logged) rather than
//! failing the stream.
//!
//! Bad input ends the stream with a status naming the field: a missing or
//! over-long name or a bad service name (`invalid_argument`), stats before
//! the initial request or a second initial request (`failed_precondition`),
//! a negative count (`invalid_argument`). Nothing else is affected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lb_core::replan::Published;
use lb_proto::grpclb as pb;
use pb::load_balance_request::LoadBalanceRequestType as Req;
use pb::load_balance_response::LoadBalanceResponseType as Resp;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{first_message, stopping};
use crate::config::Config;
use crate::engine::{EngineHandle, Following, Follows};
use crate::pb::grpclb::{literal, servers, service_for, stats};
use crate::pb::invalid;

/// How long a DNS answer for a hostname instance is used.
pub const RESOLVE_TTL: Duration = Duration::from_secs(30);
/// How long one DNS lookup may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Per-stream cache of hostname instances' addresses.
#[derive(Debug, Default)]
struct Resolver {
    answers: HashMap<String, (Option<SocketAddr>, Instant)>,
}

impl Resolver {
    /// Resolves every hostname instance of `p` whose answer is missing or
    /// older than [`RESOLVE_TTL`]. Returns whether the plan has any.
    async fn refresh(&mut self, p: &Published) -> bool {
        let now = Instant::now();
        let hosts: Vec<&str> = p
            .plan
            .servers
            .iter()
            .filter(|s| !s.drop && literal(&s.address).is_none())
            .map(|s| s.address.as_str())
            .collect();
        self.answers.retain(|a, _| hosts.contains(&a.as_str()));
        for host in &hosts {
            if self
                .answers
                .get(*host)
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) < RESOLVE_TTL)
            {
                continue;
            }
            let answer = match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(*host))
                .await
            {
                Ok(Ok(addrs)) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    addrs
                        .iter()
                        .find(|a| a.is_ipv4())
                        .or_else(|| addrs.first())
                        .copied()
                }
                Ok(Err(e)) => {
                    tracing::warn!(address = %host, error = %e, "cannot resolve an instance's address; left out of grpclb lists");
                    None
                }
                Err(_) => {
                    tracing::warn!(address = %host, "resolving an instance's address timed out; left out of grpclb lists");
                    None
                }
            };
            self.answers.insert(host.to_string(), (answer, now));
        }
        !hosts.is_empty()
    }

    fn get(&self, address: &str) -> Option<SocketAddr> {
        self.answers.get(address).and_then(|(a, _)| *a)
    }
}

/// The grpclb front end.
#[derive(Clone)]
pub struct GrpclbApi {
    engine: EngineHandle,
    config: Config,
    stop: watch::Receiver<bool>,
}

impl GrpclbApi {
    /// A grpclb service over `engine`; streams end when `stop` turns true.
    pub fn new(engine: EngineHandle, config: Config, stop: watch::Receiver<bool>) -> Self {
        GrpclbApi {
            engine,
            config,
            stop,
        }
    }
}

#[tonic::async_trait]
impl pb::load_balancer_server::LoadBalancer for GrpclbApi {
    type BalanceLoadStream = BoxStream<pb::LoadBalanceResponse>;

    async fn balance_load(
        &self,
        request: Request<Streaming<pb::LoadBalanceRequest>>,
    ) -> Result<Response<Self::BalanceLoadStream>, Status> {
        let caller = crate::auth::caller(&request).cloned();
        let mut inbound = request.into_inner();
        let first = first_message(
            &mut inbound,
            self.config.first_message_timeout,
            &self.stop,
            caller.as_ref(),
        )
        .await?;
        let name = match first.load_balance_request_type {
            Some(Req::InitialRequest(r)) => r.name,
            Some(Req::ClientStats(_)) => return Err(Status::failed_precondition(
                "client_stats before initial_request: the first message must carry initial_request",
            )),
            None => return Err(Status::invalid_argument(
                "load_balance_request_type: missing (the first message must carry initial_request)",
            )),
        };
        let service = service_for(&name).map_err(invalid)?;
        if let Some(c) = &caller {
            c.allow(&lb_core::access::Need::Client(service.clone()))?;
        }
        let hub = self.engine.hub();
        let plans = hub.subscribe(&service);
        let seq = hub.next_client_seq();
        let open = hub.following(&service, Follows::Grpclb);
        tracing::debug!(%service, %name, seq, "grpclb client connected");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(session(
            self.engine.clone(),
            inbound,
            tx,
            plans,
            service,
            seq,
            self.config.stats_interval,
            self.stop.clone(),
            open,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What was last sent on a stream.
#[derive(Debug, PartialEq)]
enum Sent {
    Nothing,
    List(Vec<pb::Server>),
    Fallback,
}

/// Streams one stock client's lists and takes in its stats.
#[allow(clippy::too_many_arguments)]
async fn session(
    engine: EngineHandle,
    mut inbound: Streaming<pb::LoadBalanceRequest>,
    tx: mpsc::Sender<Result<pb::LoadBalanceResponse, Status>>,
    mut plans: watch::Receiver<Arc<Published>>,
    service: String,
    seq: u64,
    stats_interval: Duration,
    stop: watch::Receiver<bool>,
    _open: Following,
) {
    let stop = stopping(stop);
    tokio::pin!(stop);
    let initial = pb::LoadBalanceResponse {
        load_balance_response_type: Some(Resp::InitialResponse(pb::InitialLoadBalanceResponse {
            load_balancer_delegate: String::new(),
            client_stats_report_interval: (!stats_interval.is_zero()).then(|| {
                prost_types::Duration {
                    seconds: stats_interval.as_secs() as i64,
                    nanos: stats_interval.subsec_nanos() as i32,
                }
            }),
        })),
    };
    if tx.send(Ok(initial)).await.is_err() {
        return;
    }
    let mut resolver = Resolver::default();
    let mut sent = Sent::Nothing;
    // Re-resolves hostname instances while the plan has some.
    let mut re_resolve = tokio::time::interval_at(Instant::now() + RESOLVE_TTL, RESOLVE_TTL);
    'send: loop {
        let published = plans.borrow_and_update().clone();
        let has_hosts = resolver.refresh(&published).await;
        let list = servers(&published, seq, |a| resolver.get(a));
        let next = if list.iter().any(|s| !s.drop) {
            Sent::List(list)
        } else {
            Sent::Fallback
        };
        if next != sent {
            let msg = pb::LoadBalanceResponse {
                load_balance_response_type: Some(match &next {
                    Sent::List(l) => Resp::ServerList(pb::ServerList { servers: l.clone() }),
                    _ => Resp::FallbackResponse(pb::FallbackResponse {}),
                }),
            };
            // A client that stops reading must not hold up shutdown.
            tokio::select! {
                r = tx.send(Ok(msg)) => if r.is_err() { return },
                _ = &mut stop => return,
            }
            sent = next;
        }
        loop {
            let farewell = tokio::select! {
                changed = plans.changed() => match changed {
                    Ok(()) => continue 'send,
                    Err(_) => Status::unavailable("lb-server stopped"),
                },
                _ = re_resolve.tick(), if has_hosts => continue 'send,
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => match m.load_balance_request_type {
                        Some(Req::ClientStats(s)) => match stats(s) {
                            Ok(st) => {
                                engine.grpclb_stats(service.clone(), st).await;
                                continue;
                            }
                            Err(e) => invalid(e.within("client_stats")),
                        },
                        Some(Req::InitialRequest(_)) => Status::failed_precondition(
                            "initial_request again: this stream is already initialized; open a new stream for another name",
                        ),
                        None => Status::invalid_argument("load_balance_request_type: missing"),
                    },
                    // The client went away.
                    Ok(None) | Err(_) => return,
                },
                _ = &mut stop => Status::unavailable("lb-server is shutting down"),
            };
            let _ = tx.send(Err(farewell)).await;
            return;
        }
    }
}
