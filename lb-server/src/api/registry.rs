//! `lb.v1.Registry`, the backend side: `ReportLoad` streams, and the
//! unary `Register` / `Deregister` for backends that cannot stream.
//!
//! Stream lifetimes: a `ReportLoad` stream that breaks or ends without `drain`
//! detaches its instance at once (it leaves every list in the next plan); one
//! whose registration the engine ends (TTL, replacement, deregistration) is
//! closed with `failed_precondition` and the reason. On daemon shutdown
//! streams end with `unavailable`, after the engine has been frozen so
//! nothing is deregistered by the shutdown itself.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lb_core::access::Need;
use lb_core::model::{InstanceKey, InstanceSpec, Load};
use lb_proto::v1 as pb;
use pb::report_load_request::Msg as BackendMsg;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{engine_status, first_message, stopping, BoxStream};
use crate::auth::{self, Caller};
use crate::config::Config;
use crate::engine::cmd::{Attach, Attached, Deregister, Drain, Lease};
use crate::engine::{Directive, EngineHandle};
use crate::pb::{invalid, v1 as conv};

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
        let caller = auth::caller(&request).cloned();
        let mut inbound = request.into_inner();
        let first = first_message(
            &mut inbound,
            self.config.first_message_timeout,
            &self.stop,
            caller.as_ref(),
        )
        .await?;
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
        let (spec, ttl) = conv::registration(
            reg.instance,
            reg.ttl_ms,
            "register",
            self.config.allow_link_local,
        )
        .map_err(invalid)?;
        let owner = may_register(caller.as_ref(), &spec.service)?;
        let (tx, rx) = mpsc::channel(4);
        // Attach and follow the stream in a task of its own: if the backend
        // vanishes while this handler awaits the engine, hyper drops the
        // handler, and an attach without its session task would linger until
        // its TTL instead of being detached at once.
        tokio::spawn(attach_and_follow(
            self.engine.clone(),
            spec,
            ttl,
            owner,
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
        let caller = auth::caller(&request).cloned();
        let (spec, ttl) =
            conv::register(request.into_inner(), self.config.allow_link_local).map_err(invalid)?;
        let owner = may_register(caller.as_ref(), &spec.service)?;
        let granted = self
            .engine
            .run(Lease { spec, ttl, owner })
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::RegisterResponse {
            ttl_ms: granted.as_millis() as u32,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let caller = auth::caller(&request).cloned();
        let r = request.into_inner();
        let key = conv::instance_key(r.service, r.instance_id).map_err(invalid)?;
        let owner = may_register(caller.as_ref(), &key.service)?;
        let existed = self
            .engine
            .run(Deregister { key, owner })
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::DeregisterResponse { existed }))
    }
}

/// Refuses a caller whose grant does not cover registering in `service`;
/// returns the owner its instances get (see [`Caller::owner`]).
fn may_register(caller: Option<&Caller>, service: &str) -> Result<Option<String>, Status> {
    match caller {
        Some(c) => {
            c.allow(&Need::Backend(service.to_string()))?;
            Ok(c.owner())
        }
        None => Ok(None),
    }
}

/// Registers the backend, acknowledges (or refuses) on the stream, then follows it.
async fn attach_and_follow(
    engine: EngineHandle,
    spec: InstanceSpec,
    ttl: Option<Duration>,
    owner: Option<String>,
    inbound: Streaming<pb::ReportLoadRequest>,
    tx: mpsc::Sender<Result<pb::ReportLoadResponse, Status>>,
    stop: watch::Receiver<bool>,
) {
    let key = spec.key();
    let (directives_tx, directives) = mpsc::channel(8);
    let attach = Attach {
        spec,
        ttl,
        directives: directives_tx,
        owner,
    };
    let attached = match engine.run(attach).await {
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
    mut latest: Load,
) -> (Load, u64) {
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
                        let r = engine.run(Drain { key: key.clone(), session }).await;
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
