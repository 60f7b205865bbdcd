//! `lb.v1.Balancer`, the client side: `Subscribe` streams the service's
//! lists (each client its own arrangement of the plan) and takes in the
//! client's call statistics.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use lb_proto::v1 as pb;
use pb::subscribe_request::Msg as ClientMsg;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{first_message, stopping, BoxStream, ClientSlot, PerClient};
use crate::auth;
use crate::config::Config;
use crate::engine::{EngineHandle, Following, Follows};
use crate::pb::{invalid, v1 as conv};
use lb_core::access::Need;
use std::sync::Arc;

/// How long a subscription coming from a replica further along the shared
/// store waits for this one to catch up (a watch lags by milliseconds; a
/// replica cut off from the store never catches up, and the client moves on).
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(3);

/// The client side of the API.
#[derive(Clone)]
pub struct BalancerApi {
    engine: EngineHandle,
    config: Config,
    stop: watch::Receiver<bool>,
    per_client: Arc<PerClient>,
}

impl BalancerApi {
    /// A balancer service over `engine`; streams end when `stop` turns true.
    pub fn new(engine: EngineHandle, config: Config, stop: watch::Receiver<bool>) -> Self {
        BalancerApi {
            engine,
            config,
            stop,
            per_client: Arc::default(),
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
        let caller = auth::caller(&request).cloned();
        let mut inbound = request.into_inner();
        let first = first_message(
            &mut inbound,
            self.config.first_message_timeout,
            &self.stop,
            caller.as_ref(),
        )
        .await?;
        let sub = match first.msg {
            Some(ClientMsg::Subscribe(s)) => s,
            Some(ClientMsg::Stats(_)) => {
                return Err(Status::failed_precondition(
                    "stats before subscription: the first message must carry `subscribe`",
                ))
            }
            None => return Err(Status::invalid_argument("msg: missing")),
        };
        let (service, client, held) = conv::subscription(sub, "subscribe").map_err(invalid)?;
        if let Some(c) = &caller {
            c.allow(&Need::Client(service.clone()))?;
        }
        let max = self.config.max_subscriptions_per_client;
        let Some(slot) = self.per_client.take(&client.client_id, max) else {
            if let Some(c) = &caller {
                c.limited("subscriptions_per_client");
            }
            return Err(Status::resource_exhausted(format!(
                "client {:?} has {max} subscriptions open, its limit (--max-subscriptions-per-client)",
                client.client_id
            )));
        };
        let hub = self.engine.hub();
        // A client coming from a replica further along the same store: its
        // first list here must not be older than the one it holds.
        if held.0 == hub.state.id() && held.1 > hub.state.revision() {
            let reached = tokio::select! {
                r = hub.state.reached(held.1, CATCH_UP) => r,
                _ = stopping(self.stop.clone()) => false,
            };
            if !reached {
                return Err(Status::unavailable(format!(
                    "this replica has applied its store up to revision {}, behind the revision {} of the list the client holds (its watch of the shared store lags or is cut off); try another replica",
                    hub.state.revision(),
                    held.1
                )));
            }
        }
        let plans = hub.subscribe(&service);
        let following = hub.following(&service, Follows::Subscribe);
        let seq = hub.next_client_seq();
        tracing::debug!(%service, client = %client.client_id, seq, "client subscribed");
        // The lists go straight from the plan watch to the response body:
        // HTTP/2 polls the stream when it can send and gets the newest plan
        // (a stale one is skipped, never queued). Stats arrive rarely and are
        // taken in by a task of their own, which also decides when and how
        // the stream ends.
        let (end_tx, end) = oneshot::channel();
        // With authentication on, stats count for the credential, not for
        // the id the client declares (lb_core::evidence: one witness each).
        let witness = caller
            .as_ref()
            .and_then(auth::Caller::witness)
            .unwrap_or_else(|| client.client_id.clone());
        tokio::spawn(client_inbound(
            self.engine.clone(),
            inbound,
            service,
            witness,
            end_tx,
            self.stop.clone(),
        ));
        let stats_interval_ms = self.config.stats_interval.as_millis() as u32;
        let state = Arc::clone(hub);
        let lists = WatchStream::new(plans).map(move |published| pb::SubscribeResponse {
            list: Some(conv::server_list(
                &published,
                seq,
                &client,
                (state.state.id(), state.state.revision()),
            )),
            stats_interval_ms,
        });
        Ok(Response::new(Box::pin(ClientSession {
            lists,
            end,
            ended: false,
            _slot: slot,
            _following: following,
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
    /// The client id's place, held while the stream is open.
    _slot: ClientSlot,
    /// Counts the stream for `ctl get` while it is open.
    _following: Following,
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

/// Takes in the stats of `witness` (the caller's credential, or its
/// declared `client_id` when nobody authenticates); tells its response stream how
/// to end: with a status on bad input or shutdown, quietly when the client
/// goes away.
async fn client_inbound(
    engine: EngineHandle,
    mut inbound: Streaming<pb::SubscribeRequest>,
    service: String,
    witness: String,
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
                        Ok(stats) => engine.stats(service.clone(), witness.clone(), stats).await,
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
