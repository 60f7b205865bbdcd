//! The gRPC services, as thin shells: decode and validate (via `pb`), ask the
//! engine or follow the hub, encode. `Registry` is the backend side
//! (`ReportLoad`, `Register`, `Deregister`), `Balancer` the client side
//! (`Subscribe`).
//!
//! Stream lifetimes: a `ReportLoad` stream that breaks or ends without `drain`
//! detaches its instance at once (it leaves every list in the next plan); one
//! whose registration the engine ends (TTL, replacement, deregistration) is
//! closed with `failed_precondition` and the reason. On daemon shutdown both
//! kinds of stream end with `unavailable`, after the engine has been frozen so
//! nothing is deregistered by the shutdown itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use lb_proto::v1 as pb;
use pb::report_load_request::Msg as BackendMsg;
use pb::subscribe_request::Msg as ClientMsg;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::config::Config;
use crate::engine::{Attached, Directive, EngineHandle};
use crate::model::InstanceKey;
use crate::pb::{self as conv, engine_status, invalid};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Waits for a stream's first message, bounded by `limit` and by shutdown.
pub(crate) async fn first_message<T>(
    inbound: &mut Streaming<T>,
    limit: Duration,
    stop: &watch::Receiver<bool>,
) -> Result<T, Status> {
    let first = tokio::select! {
        r = tokio::time::timeout(limit, inbound.message()) => r,
        _ = stopping(stop.clone()) => return Err(Status::unavailable("lb-server is shutting down")),
    };
    match first {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no first message within {limit:?}"
        ))),
        Ok(Err(s)) => Err(s),
        Ok(Ok(None)) => Err(Status::invalid_argument(
            "stream ended before its first message",
        )),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// Resolves once the daemon starts shutting down.
pub(crate) async fn stopping(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The backend side of the API.
#[derive(Clone)]
pub struct RegistryApi {
    engine: EngineHandle,
    config: Config,
    stop: watch::Receiver<bool>,
}

impl RegistryApi {
    /// A registry service over `engine`; streams end when `stop` turns true.
    pub fn new(engine: EngineHandle, config: Config, stop: watch::Receiver<bool>) -> Self {
        RegistryApi {
            engine,
            config,
            stop,
        }
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryApi {
    type ReportLoadStream = BoxStream<pb::ReportLoadResponse>;

    async fn report_load(
        &self,
        request: Request<Streaming<pb::ReportLoadRequest>>,
    ) -> Result<Response<Self::ReportLoadStream>, Status> {
        let mut inbound = request.into_inner();
        let first =
            first_message(&mut inbound, self.config.first_message_timeout, &self.stop).await?;
        let reg = match first.msg {
            Some(BackendMsg::Register(r)) => r,
            Some(BackendMsg::Report(_)) => {
                return Err(Status::failed_precondition(
                    "report before registration: the first message must carry `register`",
                ))
            }
            Some(BackendMsg::Drain(_)) => {
                return Err(Status::failed_precondition(
                    "drain before registration: the first message must carry `register`",
                ))
            }
            None => return Err(Status::invalid_argument("msg: missing")),
        };
        let spec = conv::instance(reg.instance, "register.instance").map_err(invalid)?;
        let ttl = conv::ttl(reg.ttl_ms, "register.ttl_ms").map_err(invalid)?;
        let (tx, rx) = mpsc::channel(4);
        // Attach and follow the stream in a task of its own: if the backend
        // vanishes while this handler awaits the engine, hyper drops the
        // handler, and an attach without its session task would linger until
        // its TTL instead of being detached at once.
        tokio::spawn(attach_and_follow(
            self.engine.clone(),
            spec,
            ttl,
            inbound,
            tx,
            self.stop.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        let spec = conv::instance(r.instance, "instance").map_err(invalid)?;
        let ttl = conv::ttl(r.ttl_ms, "ttl_ms").map_err(invalid)?;
        let granted = self.engine.lease(spec, ttl).await.map_err(engine_status)?;
        Ok(Response::new(pb::RegisterResponse {
            ttl_ms: granted.as_millis() as u32,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let key = conv::deregister_key(request.into_inner()).map_err(invalid)?;
        let existed = self.engine.deregister(key).await.map_err(engine_status)?;
        Ok(Response::new(pb::DeregisterResponse { existed }))
    }
}

/// Registers the backend, acknowledges (or refuses) on the stream, then follows it.
async fn attach_and_follow(
    engine: EngineHandle,
    spec: crate::model::InstanceSpec,
    ttl: Option<Duration>,
    inbound: Streaming<pb::ReportLoadRequest>,
    tx: mpsc::Sender<Result<pb::ReportLoadResponse, Status>>,
    stop: watch::Receiver<bool>,
) {
    let key = spec.key();
    let (directives_tx, directives) = mpsc::channel(8);
    let attached = match engine.attach(spec, ttl, directives_tx).await {
        Ok(a) => a,
        Err(e) => {
            let _ = tx.send(Err(engine_status(e))).await;
            return;
        }
    };
    tracing::info!(service = %key.service, instance = %key.instance_id, session = attached.session, "backend attached");
    let hello = pb::ReportLoadResponse {
        report_interval_ms: attached.report_interval.as_millis() as u32,
        drain: attached.drained,
    };
    // If the backend is already gone this fails, and the session below sees
    // the broken stream and detaches at once.
    let _ = tx.send(Ok(hello)).await;
    backend_session(engine, inbound, tx, directives, key, attached, stop).await;
}

/// Most reports of one stream coalesced into one engine update.
const MAX_COALESCE: u64 = 1024;

/// One read from a backend's stream.
type Msg = Result<Option<pb::ReportLoadRequest>, Status>;

/// The stashed message if there is one, else the stream's next.
async fn next_message(
    inbound: &mut Streaming<pb::ReportLoadRequest>,
    stash: &mut Option<Msg>,
) -> Msg {
    match stash.take() {
        Some(m) => m,
        None => inbound.message().await,
    }
}

/// Coalesces reports: a load report is a snapshot that the next one
/// supersedes, so when more reports from this stream have already arrived
/// (a backlog), only the newest valid one goes to the engine. Every report is
/// still decoded and validated. The first message that is not a valid report
/// is stashed for the caller, which handles (or refuses) it next, in order.
/// Returns the newest report and how many valid reports it stands for.
async fn newest_report(
    inbound: &mut Streaming<pb::ReportLoadRequest>,
    stash: &mut Option<Msg>,
    mut latest: crate::model::Load,
) -> (crate::model::Load, u64) {
    let mut n = 1;
    // Bounded, so a stream that never runs dry still gets its newest load
    // applied (and this task still yields) every so often.
    while n < MAX_COALESCE {
        // Only what is already buffered: never wait here.
        let next = tokio::select! {
            biased;
            m = inbound.message() => m,
            () = std::future::ready(()) => return (latest, n),
        };
        match next {
            Ok(Some(pb::ReportLoadRequest {
                msg: Some(BackendMsg::Report(r)),
            })) => match conv::load(r.clone(), "report") {
                Ok(load) => {
                    latest = load;
                    n += 1;
                }
                Err(_) => {
                    *stash = Some(Ok(Some(pb::ReportLoadRequest {
                        msg: Some(BackendMsg::Report(r)),
                    })));
                    return (latest, n);
                }
            },
            other => {
                *stash = Some(other);
                return (latest, n);
            }
        }
    }
    (latest, n)
}

/// Follows one backend's stream after its registration.
async fn backend_session(
    engine: EngineHandle,
    mut inbound: Streaming<pb::ReportLoadRequest>,
    tx: mpsc::Sender<Result<pb::ReportLoadResponse, Status>>,
    mut directives: mpsc::Receiver<Directive>,
    key: InstanceKey,
    attached: Attached,
    stop: watch::Receiver<bool>,
) {
    let session = attached.session;
    let stop = stopping(stop);
    tokio::pin!(stop);
    // A message read ahead while coalescing reports, handled next.
    let mut stash: Option<Msg> = None;
    // What to tell the backend when the loop ends, and whether the engine
    // still has to hear that this stream is gone.
    let (farewell, detach) = loop {
        tokio::select! {
            msg = next_message(&mut inbound, &mut stash) => match msg {
                Ok(Some(m)) => match m.msg {
                    Some(BackendMsg::Report(r)) => match conv::load(r, "report") {
                        Ok(load) => {
                            let (load, n) = newest_report(&mut inbound, &mut stash, load).await;
                            let hub = engine.hub();
                            hub.reports_received.fetch_add(n, Ordering::Relaxed);
                            hub.reports_applied.fetch_add(1, Ordering::Relaxed);
                            engine.report(key.clone(), session, load).await
                        }
                        Err(e) => break (Some(invalid(e)), true),
                    },
                    Some(BackendMsg::Drain(_)) => {
                        let r = engine.drain(key.clone(), session).await;
                        break (r.err().map(engine_status), false);
                    }
                    Some(BackendMsg::Register(_)) => break (
                        Some(Status::failed_precondition("already registered on this stream; open a new stream to register again")),
                        true,
                    ),
                    None => break (Some(Status::invalid_argument("msg: missing")), true),
                },
                // End of stream without drain, or the connection broke.
                Ok(None) | Err(_) => break (None, true),
            },
            d = directives.recv() => match d {
                Some(Directive::Drain(drain)) => {
                    let msg = pb::ReportLoadResponse {
                        report_interval_ms: attached.report_interval.as_millis() as u32,
                        drain,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break (None, true);
                    }
                }
                Some(Directive::End(why)) => {
                    break (Some(Status::failed_precondition(format!("{why}; register again"))), false);
                }
                None => break (Some(Status::unavailable("lb-server stopped")), false),
            },
            _ = &mut stop => break (Some(Status::unavailable("lb-server is shutting down")), false),
        }
    };
    if detach {
        engine.detach(key, session).await;
    }
    if let Some(status) = farewell {
        let _ = tx.send(Err(status)).await;
    }
}

/// The client side of the API.
#[derive(Clone)]
pub struct BalancerApi {
    engine: EngineHandle,
    config: Config,
    stop: watch::Receiver<bool>,
}

impl BalancerApi {
    /// A balancer service over `engine`; streams end when `stop` turns true.
    pub fn new(engine: EngineHandle, config: Config, stop: watch::Receiver<bool>) -> Self {
        BalancerApi {
            engine,
            config,
            stop,
        }
    }
}

#[tonic::async_trait]
impl pb::balancer_server::Balancer for BalancerApi {
    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut inbound = request.into_inner();
        let first =
            first_message(&mut inbound, self.config.first_message_timeout, &self.stop).await?;
        let sub = match first.msg {
            Some(ClientMsg::Subscribe(s)) => s,
            Some(ClientMsg::Stats(_)) => {
                return Err(Status::failed_precondition(
                    "stats before subscription: the first message must carry `subscribe`",
                ))
            }
            None => return Err(Status::invalid_argument("msg: missing")),
        };
        let (service, client) = conv::subscription(sub, "subscribe").map_err(invalid)?;
        let hub = self.engine.hub();
        let plans = hub.subscribe(&service);
        let seq = hub.next_client_seq();
        tracing::debug!(%service, client = %client.client_id, seq, "client subscribed");
        // The lists go straight from the plan watch to the response body:
        // HTTP/2 polls the stream when it can send and gets the newest plan
        // (a stale one is skipped, never queued). Stats arrive rarely and are
        // taken in by a task of their own, which also decides when and how
        // the stream ends.
        let (end_tx, end) = oneshot::channel();
        tokio::spawn(client_inbound(
            self.engine.clone(),
            inbound,
            service,
            end_tx,
            self.stop.clone(),
        ));
        let stats_interval_ms = self.config.stats_interval.as_millis() as u32;
        let lists = WatchStream::new(plans).map(move |published| pb::SubscribeResponse {
            list: Some(conv::server_list(&published, seq, &client)),
            stats_interval_ms,
        });
        Ok(Response::new(Box::pin(ClientSession {
            lists,
            end,
            ended: false,
        })))
    }
}

/// A client's response stream: its lists, until its inbound side ends it
/// (see [`client_inbound`]) or the daemon stops publishing.
struct ClientSession<S> {
    lists: S,
    /// `Some(status)`: end with that status; `None` (or the sender gone):
    /// end quietly, the client went away.
    end: oneshot::Receiver<Option<Status>>,
    ended: bool,
}

impl<S> Stream for ClientSession<S>
where
    S: Stream<Item = pb::SubscribeResponse> + Unpin,
{
    type Item = Result<pb::SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // The end goes first: a farewell is not held up behind a list.
        if let Poll::Ready(end) = Pin::new(&mut self.end).poll(cx) {
            self.ended = true;
            return Poll::Ready(end.ok().flatten().map(Err));
        }
        match Pin::new(&mut self.lists).poll_next(cx) {
            Poll::Ready(Some(list)) => Poll::Ready(Some(Ok(list))),
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(Status::unavailable("lb-server stopped"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Takes in one client's stats; tells its response stream how to end: with
/// a status on bad input or shutdown, quietly when the client goes away.
async fn client_inbound(
    engine: EngineHandle,
    mut inbound: Streaming<pb::SubscribeRequest>,
    service: String,
    mut end: oneshot::Sender<Option<Status>>,
    stop: watch::Receiver<bool>,
) {
    let stop = stopping(stop);
    tokio::pin!(stop);
    let farewell = loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.msg {
                    Some(ClientMsg::Stats(s)) => match conv::stats(s, "stats") {
                        Ok(stats) => engine.stats(service.clone(), stats).await,
                        Err(e) => break Some(invalid(e)),
                    },
                    Some(ClientMsg::Subscribe(_)) => break Some(Status::failed_precondition(
                        "already subscribed on this stream; open a new stream for another service",
                    )),
                    None => break Some(Status::invalid_argument("msg: missing")),
                },
                // The client went away.
                Ok(None) | Err(_) => break None,
            },
            _ = &mut stop => break Some(Status::unavailable("lb-server is shutting down")),
            // The response stream is gone (the client reset the call).
            _ = end.closed() => return,
        }
    };
    let _ = end.send(farewell);
}
