//! [`LbChannel`]: a tonic-compatible channel that picks a backend per request.
//!
//! It implements `tower::Service<http::Request<tonic::body::Body>>`, so any
//! generated client works on top of it unchanged:
//! `EchoClient::new(subscription.channel())`. Each call picks from the current
//! list, goes directly to that backend over a cached, lazily connected
//! `tonic::transport::Channel`, and records its outcome on the picked endpoint.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use lb_core::status::Code;
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

use crate::daemon::dial_target;
use crate::list::{NoPick, Outcome};
use crate::subscription::Subscription;

/// The error type of [`LbChannel`]; a `tonic::Status` inside is surfaced as-is
/// by generated clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A channel over the backends of a [`Subscription`]; cheap to clone. It holds
/// the subscription, so the background task lives as long as any channel does.
#[derive(Clone)]
pub struct LbChannel {
    subscription: Subscription,
    /// Address → channel. std `Mutex`: held for a map lookup only, never across
    /// an await.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl std::fmt::Debug for LbChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbChannel").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A tonic-compatible channel that picks a backend per request.
    pub fn channel(&self) -> LbChannel {
        LbChannel {
            subscription: self.clone(),
            channels: Arc::default(),
        }
    }
}

impl LbChannel {
    fn channel_for(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        // On a miss, forget backends that left the list so the cache stays bounded.
        let current = self.subscription.current();
        if map.len() >= current.servers().len() {
            map.retain(|a, _| current.servers().iter().any(|s| s.address() == a));
        }
        let ch = dial_target(addr)?.connect_lazy();
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

fn fail(status: tonic::Status) -> ResponseFuture {
    Box::pin(std::future::ready(Err(status.into())))
}

/// Metadata keys with this prefix carry request labels for routing rules:
/// `lb-label-group: B` is the label `group=B`.
pub const LABEL_PREFIX: &str = "lb-label-";

impl Service<http::Request<Body>> for LbChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per backend, known only after the pick in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> ResponseFuture {
        // Request labels for routing rules travel as `lb-label-<key>` metadata.
        let labels: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let key = k.as_str().strip_prefix(LABEL_PREFIX)?;
                Some((key, v.to_str().ok()?))
            })
            .collect();
        let picked = if labels.is_empty() {
            self.subscription.pick()
        } else {
            self.subscription.pick_with(&labels)
        };
        drop(labels);
        let ep = match picked {
            Ok(ep) => ep,
            Err(NoPick::Dropped) => return fail(tonic::Status::unavailable("dropped by balancer")),
            Err(NoPick::Empty) => {
                return fail(tonic::Status::unavailable(
                    self.subscription.no_backend_message(),
                ))
            }
            Err(NoPick::NoRoute) => {
                return fail(tonic::Status::unavailable(
                    "the request's route matches no instance",
                ))
            }
        };
        let start = Instant::now();
        let mut channel = match self.channel_for(ep.address()) {
            Ok(ch) => ch,
            Err(e) => {
                ep.record(Outcome::failure(Code::Unavailable, start.elapsed()));
                return fail(tonic::Status::unavailable(format!(
                    "bad backend address {:?}: {e}",
                    ep.address()
                )));
            }
        };
        if !ep.token().is_empty() {
            // A token that is not a valid header value is skipped rather than
            // failing the call: it is advisory.
            if let Ok(v) = http::HeaderValue::from_str(ep.token()) {
                req.headers_mut().insert("lb-token", v);
            }
        }
        Box::pin(async move {
            let result = match poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(req).await,
                Err(e) => Err(e),
            };
            let latency = start.elapsed();
            match result {
                Ok(resp) => {
                    // A trailers-only error response carries grpc-status in the
                    // headers; a normal one reports it in trailers, which we do not
                    // wait for (the body belongs to the caller).
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|s| s.to_str().ok()?.parse::<u32>().ok())
                        .map_or(Code::Ok, |n| Code::from_number(n).unwrap_or(Code::Unknown));
                    ep.record(if code == Code::Ok {
                        Outcome::success(latency)
                    } else {
                        Outcome::failure(code, latency)
                    });
                    Ok(resp)
                }
                Err(e) => {
                    ep.record(Outcome::failure(Code::Unavailable, latency));
                    Err(e.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Compile check: generated clients accept an LbChannel.
    fn _generated_client_accepts_it(ch: LbChannel) {
        let _ = lb_proto::v1::balancer_client::BalancerClient::new(ch.clone());
        let _ = lb_proto::v1::registry_client::RegistryClient::new(ch);
    }

    #[test]
    fn dial_targets_accept_both_forms() {
        assert_eq!(
            dial_target("127.0.0.1:7400").unwrap().uri().to_string(),
            "http://127.0.0.1:7400/"
        );
        assert_eq!(
            dial_target("http://h:1").unwrap().uri().to_string(),
            "http://h:1/"
        );
        assert!(dial_target("not a uri").is_err());
    }

    #[tokio::test]
    async fn drop_and_empty_fail_locally() {
        use crate::list::{Endpoint, PickList};
        let list = PickList::from_parts(1, vec![Endpoint::drop_entry()], vec![0]).unwrap();
        let mut ch = Subscription::detached(list).channel();
        let err = ch
            .call(http::Request::new(Body::empty()))
            .await
            .unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "dropped by balancer");

        let mut ch = Subscription::detached(PickList::empty()).channel();
        let err = ch
            .call(http::Request::new(Body::empty()))
            .await
            .unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert!(
            status
                .message()
                .starts_with("no backend available for \"test\""),
            "{status:?}"
        );
    }
}
