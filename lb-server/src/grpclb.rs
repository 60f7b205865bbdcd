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
//!    host, possibly with a port; [`service_for`] maps it to a service by
//!    dropping a trailing `:port` (so `echo.example.com:50051` follows the
//!    service `echo.example.com`). Register services under the DNS name
//!    stock clients dial.
//! 2. The daemon answers `initial_response` with
//!    `client_stats_report_interval` (the daemon's `--stats-interval`), then a
//!    `server_list` built from the service's plan exactly as an lb-client
//!    subscriber's list is: this client's rotation of the smooth period, with
//!    weights as repeated entries, routing rules for anonymous clients
//!    applied (exclusive instances left out), and load shedding as drop
//!    entries with the token [`DROP_TOKEN`]. Each entry carries its
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
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lb_proto::grpclb as pb;
use pb::load_balance_request::LoadBalanceRequestType as Req;
use pb::load_balance_response::LoadBalanceResponseType as Resp;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{first_message, stopping};
use crate::config::Config;
use crate::engine::{EngineHandle, Published};
use crate::model::{check_service, ClientIdentity, FieldError, GrpclbStats, DROP_TOKEN};
use crate::pb::invalid;
use crate::policy::view::client_view;

/// Longest initial-request name accepted (grpclb: "less than 256 bytes").
pub const MAX_NAME_LEN: usize = 255;
/// How long a DNS answer for a hostname instance is used.
pub const RESOLVE_TTL: Duration = Duration::from_secs(30);
/// How long one DNS lookup may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service an initial request's `name` selects: the name without a
/// trailing `:port`, which must then be a valid service name.
pub fn service_for(name: &str) -> Result<String, FieldError> {
    let field = "initial_request.name";
    if name.is_empty() {
        return Err(FieldError::new(field, "missing (empty)"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("{} bytes, longer than {MAX_NAME_LEN}", name.len()),
        ));
    }
    let host = match name.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(':')
                && !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => name,
    };
    check_service(host).map_err(|e| {
        FieldError::new(
            field,
            format!("{name:?} does not name a service (after dropping \":port\": {e})"),
        )
    })?;
    Ok(host.to_string())
}

/// A grpclb `ClientStats` message, validated.
pub fn stats(s: pb::ClientStats) -> Result<GrpclbStats, FieldError> {
    let count = |v: i64, name: &str| {
        u64::try_from(v).map_err(|_| FieldError::new(name, format!("{v} is negative")))
    };
    let mut dropped_by_token = Vec::with_capacity(s.calls_finished_with_drop.len());
    for (i, d) in s.calls_finished_with_drop.into_iter().enumerate() {
        let n = count(d.num_calls, "num_calls")
            .map_err(|e| e.within(&format!("calls_finished_with_drop[{i}]")))?;
        dropped_by_token.push((d.load_balance_token, n));
    }
    let st = GrpclbStats {
        calls_started: count(s.num_calls_started, "num_calls_started")?,
        calls_finished: count(s.num_calls_finished, "num_calls_finished")?,
        failed_to_send: count(
            s.num_calls_finished_with_client_failed_to_send,
            "num_calls_finished_with_client_failed_to_send",
        )?,
        known_received: count(
            s.num_calls_finished_known_received,
            "num_calls_finished_known_received",
        )?,
        dropped_by_token,
    };
    st.check()?;
    Ok(st)
}

/// The IP address and port of `address` (`ip:port`), without DNS.
fn literal(address: &str) -> Option<SocketAddr> {
    address.parse().ok()
}

/// The grpclb entries of one client's view of `p` (client number `seq`), in
/// order. `resolve` gives the address of a hostname instance, `None` leaves
/// the instance out.
pub fn servers(
    p: &Published,
    seq: u64,
    resolve: impl Fn(&str) -> Option<SocketAddr>,
) -> Vec<pb::Server> {
    let view = client_view(&p.plan, p.version, seq, &ClientIdentity::default());
    let encoded: Vec<Option<pb::Server>> = p
        .plan
        .servers
        .iter()
        .map(|s| {
            if s.drop {
                return Some(pb::Server {
                    drop: true,
                    load_balance_token: DROP_TOKEN.to_string(),
                    ..pb::Server::default()
                });
            }
            let addr = literal(&s.address).or_else(|| resolve(&s.address))?;
            Some(pb::Server {
                ip_address: match addr.ip() {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                },
                port: i32::from(addr.port()),
                load_balance_token: s.token.clone(),
                drop: false,
            })
        })
        .collect();
    view.order
        .iter()
        .filter_map(|&i| encoded.get(i as usize).cloned().flatten())
        .collect()
}

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
        let mut inbound = request.into_inner();
        let first =
            first_message(&mut inbound, self.config.first_message_timeout, &self.stop).await?;
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
        let hub = self.engine.hub();
        let plans = hub.subscribe(&service);
        let seq = hub.next_client_seq();
        let open = hub.grpclb_stream(&service);
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
    _open: crate::engine::GrpclbStream,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PlanServer, ServicePlan};

    #[test]
    fn names_map_to_services() {
        assert_eq!(service_for("echo.test:50051").unwrap(), "echo.test");
        assert_eq!(service_for("echo.test").unwrap(), "echo.test");
        assert_eq!(service_for("echo:1").unwrap(), "echo");
        let e = service_for("").unwrap_err();
        assert_eq!(e.field, "initial_request.name");
        assert!(e.reason.contains("missing"), "{e}");
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(service_for(&long).unwrap_err().reason.contains("longer"));
        // Not a port: kept, and then not a valid service name.
        assert!(service_for("echo:http").is_err());
        assert!(service_for("[::1]:80").is_err());
        assert!(service_for("bad name:80").is_err());
    }

    #[test]
    fn stats_refuse_negative_counts_and_bad_tokens() {
        let ok = stats(pb::ClientStats {
            num_calls_started: 10,
            num_calls_finished: 9,
            num_calls_finished_with_client_failed_to_send: 1,
            num_calls_finished_known_received: 6,
            calls_finished_with_drop: vec![pb::ClientStatsPerToken {
                load_balance_token: DROP_TOKEN.into(),
                num_calls: 2,
            }],
            ..pb::ClientStats::default()
        })
        .unwrap();
        assert_eq!(ok.calls_started, 10);
        assert_eq!(ok.dropped(), 2);
        let e = stats(pb::ClientStats {
            num_calls_finished: -1,
            ..pb::ClientStats::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "num_calls_finished");
        let e = stats(pb::ClientStats {
            calls_finished_with_drop: vec![pb::ClientStatsPerToken {
                load_balance_token: "has space".into(),
                num_calls: 1,
            }],
            ..pb::ClientStats::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "calls_finished_with_drop[0].load_balance_token");
    }

    fn server(id: &str, address: &str) -> PlanServer {
        PlanServer {
            instance_id: id.into(),
            address: address.into(),
            zone: String::new(),
            tier: 0,
            drop: false,
            token: format!("tok-{id}"),
            labels: Default::default(),
        }
    }

    #[test]
    fn lists_carry_bytes_ports_tokens_and_drops_in_order() {
        let plan = ServicePlan {
            servers: vec![
                server("a", "127.0.0.11:81"),
                server("b", "[::1]:82"),
                server("c", "backend.internal:83"),
                PlanServer::drop_entry(),
            ],
            weights: vec![1.0; 4],
            order: vec![0, 1, 1, 2, 3],
            ..ServicePlan::default()
        };
        let p = Published { version: 1, plan };
        let resolve =
            |a: &str| (a == "backend.internal:83").then(|| "10.0.0.3:83".parse().unwrap());
        let list = servers(&p, 0, resolve);
        // Client 0 of version 1 follows some rotation of the period: every
        // entry is there, with its multiplicity.
        assert_eq!(list.len(), 5);
        let find = |tok: &str| {
            list.iter()
                .filter(|s| s.load_balance_token == tok)
                .collect::<Vec<_>>()
        };
        let a = find("tok-a");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ip_address, vec![127, 0, 0, 11]);
        assert_eq!(a[0].port, 81);
        let b = find("tok-b");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].ip_address, {
            let mut v = vec![0u8; 15];
            v.push(1);
            v
        });
        assert_eq!(find("tok-c")[0].ip_address, vec![10, 0, 0, 3]);
        let d = find(DROP_TOKEN);
        assert_eq!(d.len(), 1);
        assert!(d[0].drop && d[0].ip_address.is_empty());
        // An unresolvable hostname leaves its instance out.
        let list = servers(&p, 0, |_| None);
        assert_eq!(list.len(), 4);
        assert!(list.iter().all(|s| s.load_balance_token != "tok-c"));
    }
}
