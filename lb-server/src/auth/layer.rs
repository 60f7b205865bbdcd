//! The tower layer in front of every gRPC service: authenticate, check the
//! role of admin calls, apply the per-token limits and the admin write rate,
//! put the [`Caller`] in the request's extensions, and end the response of a
//! token that is revoked while its call is open.
//!
//! Which role a call needs is decided from its path (`/lb.v1.Admin/...`);
//! calls that name a service in their body (register, subscribe) are checked
//! again by their handlers, which know the service. Refusals are
//! `unauthenticated` (no or bad credentials), `permission_denied` (the
//! credentials do not cover the call) or `resource_exhausted` (a limit).

use std::collections::hash_map::Entry as Slot;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use lb_core::access::Need;
use tonic::body::Body;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use super::{Auth, Caller, ConnInfo, Entry};

/// What a call needs, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `lb.v1.Registry`: a backend (the handler checks the service).
    Backend { stream: bool },
    /// `lb.v1.Balancer`: a client (the handler checks the service).
    Client,
    /// `grpc.lb.v1.LoadBalancer`: a client, or anonymous for public services.
    Grpclb,
    /// An admin read.
    AdminRead,
    /// An admin change.
    AdminWrite,
    /// `grpc.health.v1.Health`: open to anonymous callers (load balancers
    /// and Kubernetes probes send no token); it says only whether the
    /// daemon, or a service named by the caller, has an instance to call.
    Health,
    /// Anything else (unknown paths get `unimplemented` from the router).
    Other,
}

/// Admin methods that only read.
const ADMIN_READS: [&str; 3] = ["ListServices", "GetService", "ListTokens"];

fn classify(path: &str) -> Class {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match service {
        "lb.v1.Registry" => Class::Backend {
            stream: method == "ReportLoad",
        },
        "lb.v1.Balancer" => Class::Client,
        // xDS clients are stock clients too: the same rules as grpclb's.
        "grpc.lb.v1.LoadBalancer"
        | "envoy.service.discovery.v3.AggregatedDiscoveryService"
        | "envoy.service.load_stats.v3.LoadReportingService" => Class::Grpclb,
        "lb.v1.Admin" if ADMIN_READS.contains(&method) => Class::AdminRead,
        "lb.v1.Admin" => Class::AdminWrite,
        "grpc.health.v1.Health" => Class::Health,
        _ => Class::Other,
    }
}

impl Class {
    fn is_stream(self) -> bool {
        matches!(
            self,
            Class::Backend { stream: true } | Class::Client | Class::Grpclb
        )
    }
}

/// The layer; see the module docs.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    /// A layer over `auth`.
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            auth: Arc::clone(&self.auth),
            inner,
        }
    }
}

/// The layer's service.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    auth: Arc<Auth>,
    inner: S,
}

/// The token in an `authorization: Bearer …` header.
fn bearer(req: &http::Request<Body>) -> Option<&str> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Guarded>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let class = classify(req.uri().path());
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let admitted = admit(&self.auth, class, bearer(&req), conn.as_ref());
        let auth = Arc::clone(&self.auth);
        // The service that was polled ready serves this call (tower's rule);
        // a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (caller, held) = match admitted {
                Ok(a) => a,
                Err(status) => {
                    return Ok(status.into_http::<Body>().map(|b| Guarded::plain(b, auth)))
                }
            };
            let revoked = class.is_stream().then(|| caller.revoked()).flatten().map(
                |mut rx| -> Pin<Box<dyn Future<Output = ()> + Send>> {
                    Box::pin(async move {
                        if rx.wait_for(|r| *r).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    })
                },
            );
            req.extensions_mut().insert(caller);
            let mut resp = inner.call(req).await?;
            oversize(resp.headers_mut(), &auth);
            Ok(resp.map(|body| Guarded {
                inner: body,
                revoked,
                done: false,
                auth,
                _held: held,
            }))
        })
    }
}

/// Authenticates and applies the checks that need no request body.
fn admit(
    auth: &Arc<Auth>,
    class: Class,
    bearer: Option<&str>,
    conn: Option<&ConnInfo>,
) -> Result<(Caller, Option<Held>), Status> {
    let identity = conn.and_then(|c| c.identity.as_deref());
    let caller = auth.authenticate(bearer, identity)?;
    match class {
        Class::AdminRead => caller.allow(&Need::AdminRead)?,
        Class::AdminWrite => {
            caller.allow(&Need::AdminWrite)?;
            if !auth.take_admin_write(caller.entry.as_deref(), Instant::now()) {
                auth.limited("admin_write_rate");
                return Err(Status::resource_exhausted(format!(
                    "admin write rate limit reached ({}/s per token, --admin-write-rate); retry shortly",
                    auth.limits().admin_writes_per_sec
                )));
            }
        }
        // Anonymous callers reach only grpclb, when some services are
        // public (its handler checks which).
        Class::Backend { .. } | Class::Client | Class::Other
            if caller.anonymous && auth.is_enabled() =>
        {
            return Err(anonymous(auth));
        }
        Class::Grpclb if caller.anonymous && auth.is_enabled() && !auth.grpclb_is_public() => {
            return Err(anonymous(auth));
        }
        _ => {}
    }
    let held = match &caller.entry {
        Some(entry) => Some(Held::take(auth, entry, conn.map(|c| c.id))?),
        None => None,
    };
    Ok((caller, held))
}

/// tonic's words for a request message over `max_decoding_message_size`.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// A request message over `--max-message-size` is refused by tonic with
/// `out_of_range`; gRPC's status code table names `resource_exhausted` for
/// it (grpc/grpc doc/statuscodes.md: "Server: request message larger than
/// maximum"), as grpc-go and grpc-java answer. This rewrites the status in
/// a response's headers or trailers and counts the refusal.
fn oversize(headers: &mut http::HeaderMap, auth: &Auth) {
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let status = Status::from_header_map(headers);
    if status.is_some_and(|s| s.message().starts_with(TOO_LARGE)) {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        auth.limited("max_message_size");
    }
}

/// The refusal of an anonymous call, counted.
fn anonymous(auth: &Auth) -> Status {
    auth.deny("anonymous", "no_token");
    Status::unauthenticated(super::NEEDS_TOKEN)
}

/// One call's share of its token's limits, given back when the response
/// ends.
#[derive(Debug)]
pub struct Held {
    entry: Arc<Entry>,
    conn: Option<u64>,
}

impl Held {
    fn take(auth: &Auth, entry: &Arc<Entry>, conn: Option<u64>) -> Result<Held, Status> {
        let limits = auth.limits();
        if entry.streams.fetch_add(1, Ordering::AcqRel) >= limits.streams {
            entry.streams.fetch_sub(1, Ordering::AcqRel);
            auth.limited("streams_per_token");
            return Err(Status::resource_exhausted(format!(
                "the token {:?} has {} calls open, its limit (--max-streams-per-token)",
                entry.record.name, limits.streams
            )));
        }
        if let Some(id) = conn {
            let mut conns = entry.conns.lock().unwrap_or_else(|e| e.into_inner());
            let open = conns.len();
            match conns.entry(id) {
                Slot::Occupied(mut o) => *o.get_mut() += 1,
                Slot::Vacant(_) if open >= limits.connections => {
                    drop(conns);
                    entry.streams.fetch_sub(1, Ordering::AcqRel);
                    auth.limited("connections_per_token");
                    return Err(Status::resource_exhausted(format!(
                        "the token {:?} is in use on {} connections, its limit (--max-connections-per-token)",
                        entry.record.name, limits.connections
                    )));
                }
                Slot::Vacant(v) => {
                    v.insert(1);
                }
            }
        }
        Ok(Held {
            entry: Arc::clone(entry),
            conn,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.entry.streams.fetch_sub(1, Ordering::AcqRel);
        if let Some(id) = self.conn {
            let mut conns = self.entry.conns.lock().unwrap_or_else(|e| e.into_inner());
            if let Slot::Occupied(mut o) = conns.entry(id) {
                *o.get_mut() -= 1;
                if *o.get() == 0 {
                    o.remove();
                }
            }
        }
    }
}

/// A response body that ends with `unauthenticated` when the caller's token
/// is revoked, and holds the call's share of the token's limits.
pub struct Guarded {
    inner: Body,
    revoked: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    done: bool,
    auth: Arc<Auth>,
    _held: Option<Held>,
}

impl Guarded {
    fn plain(inner: Body, auth: Arc<Auth>) -> Guarded {
        Guarded {
            inner,
            revoked: None,
            done: false,
            auth,
            _held: None,
        }
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(revoked) = self.revoked.as_mut() {
            if revoked.as_mut().poll(cx).is_ready() {
                self.done = true;
                let mut trailers = http::HeaderMap::new();
                let status = Status::unauthenticated("the token was revoked");
                if status.add_header(&mut trailers).is_err() {
                    trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
                }
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    oversize(trailers, &self.auth);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_what_they_need() {
        assert_eq!(
            classify("/lb.v1.Registry/ReportLoad"),
            Class::Backend { stream: true }
        );
        assert_eq!(
            classify("/lb.v1.Registry/Register"),
            Class::Backend { stream: false }
        );
        assert_eq!(classify("/lb.v1.Balancer/Subscribe"), Class::Client);
        assert_eq!(
            classify("/grpc.lb.v1.LoadBalancer/BalanceLoad"),
            Class::Grpclb
        );
        assert_eq!(
            classify(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            ),
            Class::Grpclb
        );
        assert_eq!(classify("/lb.v1.Admin/GetService"), Class::AdminRead);
        assert_eq!(classify("/lb.v1.Admin/ListTokens"), Class::AdminRead);
        assert_eq!(classify("/lb.v1.Admin/SetPolicy"), Class::AdminWrite);
        assert_eq!(classify("/lb.v1.Admin/CreateToken"), Class::AdminWrite);
        assert_eq!(classify("/grpc.health.v1.Health/Watch"), Class::Health);
        assert_eq!(
            classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Class::Other
        );
        assert_eq!(classify("/other.Svc/X"), Class::Other);
    }
}
