//! [`LbChannel`]: a tonic-compatible channel that picks a backend per request
//! and runs each call under the daemon's cluster mode.
//!
//! It implements `tower::Service<http::Request<tonic::body::Body>>`, so any
//! generated client works on top of it unchanged:
//! `EchoClient::new(subscription.channel())`. Each call goes directly to the
//! backends of the current list, over cached, lazily connected tonic channels
//! (one per address), and its outcome is recorded on the endpoint it went to.
//!
//! ```no_run
//! # mod hello {
//! #     #[derive(Clone, Default)]
//! #     pub struct HelloRequest { pub name: String }
//! #     #[derive(Clone, Debug, Default)]
//! #     pub struct HelloReply { pub message: String, pub served_by: String }
//! #     pub mod greeter_client {
//! #         pub struct GreeterClient<T>(T);
//! #         impl<T> GreeterClient<T> {
//! #             pub fn new(inner: T) -> Self { GreeterClient(inner) }
//! #             pub async fn say_hello(&mut self, _: impl tonic::IntoRequest<super::HelloRequest>)
//! #                 -> Result<tonic::Response<super::HelloReply>, tonic::Status> { unimplemented!() }
//! #         }
//! #     }
//! # }
//! # use hello::{greeter_client::GreeterClient, HelloRequest};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! # let sub = lb_client::subscribe("hello", lb_client::ClientOptions::new("127.0.0.1:7400")).await?;
//! let mut greeter = GreeterClient::new(sub.channel());
//! let mut request = tonic::Request::new(HelloRequest { name: "world".into() });
//! request.metadata_mut().insert("lb-label-group", "beta".parse()?); // for routing rules
//! request.metadata_mut().insert("lb-hash-key", "user-42".parse()?); // for hash policies
//! let reply = greeter.say_hello(request).await?.into_inner();
//! # Ok(()) }
//! ```
//!
//! # Connections
//! Every backend connection has HTTP/2 keep-alive, a connect timeout and
//! `TCP_NODELAY` ([`ChannelOptions`]), so a backend that stops answering (a
//! frozen process, a vanished host) fails the calls on it with UNAVAILABLE
//! within `keepalive_interval + keepalive_timeout` instead of never.
//!
//! # Cluster modes
//! The call runs under the mode the daemon set for its method, as
//! [`Subscription::call`] does ([`crate::cluster::call_with`]): failover
//! retries on another instance, forking hedges, the retry budget bounds both,
//! failfast and failsafe make one attempt, broadcast and multicast reach every
//! instance. The channel sees a request only as an HTTP body, so to send it
//! again it keeps a copy (`replay`, after linkerd2-proxy's `ReplayBody`):
//!
//! - A request whose body has ended within [`ChannelOptions::replay_limit`]
//!   (64 KiB unless set) when an attempt beyond the first would start may be
//!   retried and hedged; a unary request is whole before the first attempt.
//! - A client-streaming or bidi call, whose body is still open, and a request
//!   larger than the limit make exactly one attempt, whatever the mode (a
//!   broadcast becomes one call, a failsafe still swallows its error).
//! - As in gRFC A6 (*gRPC Retry Design*), a call is committed once a backend
//!   answers with response headers: only an attempt that failed before that
//!   (a transport failure, or a "trailers-only" error status) is retried, and
//!   only on the codes the mode's `retry_on` lists. A server-streaming call
//!   can be retried until its first response headers.
//! - Failsafe answers a failure with an OK response holding one empty message,
//!   which a generated client reads as the method's default response.
//!
//! Attempts run inside the call's future: dropping it (a caller's timeout, a
//! cancelled task) cancels every attempt.
//!
//! # Deadlines
//! A call's deadline is its caller's (`tonic::Request::set_timeout`, the
//! `grpc-timeout` header) or else the default the daemon set for the service
//! (`ctl set-cluster --deadline`). It bounds the whole call, backoffs, retries
//! and hedges included, and the response body after it; each attempt tells
//! its backend the time left (`grpc-timeout`, as A6 does). An expired one
//! ends the call with DEADLINE_EXCEEDED.
//!
//! # Errors
//! Transport failures are UNAVAILABLE with a message naming the backend and
//! the cause (`backend 10.0.0.7:50051: tcp connect error: Connection refused
//! (os error 111)`, `...: http2 error: keep-alive timed out`), never tonic's
//! `Unknown "transport error"`; see [`crate::cluster::CallError`].

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Frame, SizeHint};
use lb_core::cluster::Mode;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::Status;
use tower_service::Service;

use crate::cluster::{self, at_backend, transport_status, ClusterError};
use crate::daemon::dial_target;
use crate::list::{Endpoint, NoPick};
use crate::replay::{Replay, ReplayBody};
use crate::subscription::Subscription;

/// The error type of [`LbChannel`]; a `tonic::Status` inside is surfaced as-is
/// by generated clients.
///
/// Generated clients turn it back into the `tonic::Status` inside; as a
/// `tower::Service` of your own:
///
/// ```
/// use lb_client::{channel::BoxError, subscribe, ClientOptions};
/// use tower_service::Service;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let options = ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None);
/// let mut channel = subscribe("echo", options).await?.channel(); // no list yet
/// let request = http::Request::builder().uri("/echo.Echo/Say").body(tonic::body::Body::empty())?;
/// let err: BoxError = channel.call(request).await.unwrap_err();
/// let status = err.downcast::<tonic::Status>().map_err(|_| "not a status")?;
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert!(status.message().starts_with("no backend available for \"echo\""));
/// # Ok(()) }
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How [`LbChannel`] connects to backends and how much of a request it keeps
/// for a retry. The defaults suit backends on one network; each says why.
///
/// ```
/// use std::time::Duration;
/// use lb_client::ChannelOptions;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Offline: starts on the fallback list, returns at once, and the
/// # // subscription's task never runs (nothing here yields).
/// # let options = lb_client::ClientOptions {
/// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
/// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
/// # };
/// # let sub = lb_client::subscribe("echo", options).await?;
/// let options = ChannelOptions {
///     keepalive_interval: Some(Duration::from_secs(300)), // backends that police pings
///     replay_limit: 256 * 1024, // retry requests up to 256 KiB
///     ..ChannelOptions::default()
/// };
/// let channel = sub.channel_with(options); // GreeterClient::new(channel) ...
/// # let _ = channel;
/// assert_eq!(ChannelOptions::default().connect_timeout, Duration::from_secs(2));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Bound on establishing a connection (TCP, and TLS if any). Default
    /// 2 s, as for the daemon (`ClientOptions::connect_timeout`): gRPC waits
    /// at least 20 s for a channel's one target, but here another instance
    /// can take the call.
    pub connect_timeout: Duration,
    /// Send an HTTP/2 PING after this long without a frame from the backend
    /// (`None`: no keep-alive). Default 10 s: the shortest interval gRPC-Go
    /// lets a client use, and the one lb-client's daemon connection uses. A
    /// busy connection sends none: any frame read resets the clock. gRPC
    /// servers in C-core, Java and Go count a ping that comes sooner than
    /// 5 minutes after the last one (their default `MinTime`) as a strike
    /// unless they sent data in between, and close the connection after
    /// three; a call to such a backend that stays silent for 30 s or more
    /// needs a longer interval here (or their policy relaxed).
    pub keepalive_interval: Option<Duration>,
    /// Close the connection, failing its calls with UNAVAILABLE, when a
    /// PING is not answered within this. Default 5 s (gRPC's default is
    /// 20 s): a backend answers pings from its connection task, not from
    /// request handlers, so a healthy one takes a millisecond, and calls on
    /// a frozen backend fail within 15 s rather than 30.
    pub keepalive_timeout: Duration,
    /// Ping idle connections too (default false). The pings that matter go
    /// while calls are in flight: they find a backend that froze or
    /// vanished under a call. Pinging idle connections would also find it
    /// before the next call is sent, but gRPC servers in C-core, Java and Go
    /// allow one ping every 5 minutes on a connection without calls by
    /// default and answer more with GOAWAY `too_many_pings` (gRFC A8), so a
    /// 10 s idle ping would cut every idle connection to them. Turn it on
    /// for backends that allow it (tonic servers do not police pings).
    pub keepalive_while_idle: bool,
    /// `TCP_NODELAY` (default true, as in every gRPC implementation): small
    /// messages are sent at once rather than held back by Nagle's algorithm.
    pub tcp_nodelay: bool,
    /// The largest request body kept to send again (a retry, a hedge, a
    /// broadcast), in bytes; larger requests make one attempt. Default
    /// 64 KiB, linkerd2-proxy's bound for the same purpose (gRPC C-core's
    /// `grpc.per_rpc_retry_buffer_size` is 256 KiB). 0: no call is sent
    /// twice.
    pub replay_limit: usize,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            connect_timeout: Duration::from_secs(2),
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(5),
            keepalive_while_idle: false,
            tcp_nodelay: true,
            replay_limit: 64 * 1024,
        }
    }
}

impl ChannelOptions {
    /// `target` with these options.
    fn apply(&self, target: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
        let target = target
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(self.tcp_nodelay);
        match self.keepalive_interval {
            Some(every) => target
                .http2_keep_alive_interval(every)
                .keep_alive_timeout(self.keepalive_timeout)
                .keep_alive_while_idle(self.keepalive_while_idle),
            None => target,
        }
    }
}

/// A channel over the backends of a [`Subscription`]; cheap to clone. It holds
/// the subscription, so the background task lives as long as any channel does.
///
/// Any generated tonic client works on it (a complete program:
/// `examples/hello/src/bin/caller.rs`):
///
/// ```no_run
/// use std::time::Duration;
/// # mod hello {
/// #     #[derive(Clone, Default)]
/// #     pub struct HelloRequest { pub name: String }
/// #     #[derive(Clone, Debug, Default)]
/// #     pub struct HelloReply { pub message: String, pub served_by: String }
/// #     pub mod greeter_client {
/// #         pub struct GreeterClient<T>(T);
/// #         impl<T> GreeterClient<T> {
/// #             pub fn new(inner: T) -> Self { GreeterClient(inner) }
/// #             pub async fn say_hello(&mut self, _: impl tonic::IntoRequest<super::HelloRequest>)
/// #                 -> Result<tonic::Response<super::HelloReply>, tonic::Status> { unimplemented!() }
/// #         }
/// #     }
/// # }
/// # use hello::{greeter_client::GreeterClient, HelloRequest};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// # let sub = lb_client::subscribe("hello", lb_client::ClientOptions::new("127.0.0.1:7400")).await?;
/// let mut greeter = GreeterClient::new(sub.channel());
/// let mut request = tonic::Request::new(HelloRequest { name: "world".into() });
/// request.set_timeout(Duration::from_secs(2)); // covers every attempt
/// let reply = greeter.say_hello(request).await?.into_inner();
/// println!("{} (served by {})", reply.message, reply.served_by);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LbChannel {
    subscription: Subscription,
    options: Arc<ChannelOptions>,
    /// Address → channel. std `Mutex`: held for a map lookup only, never across
    /// an await.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl std::fmt::Debug for LbChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbChannel")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// A tonic-compatible channel that picks a backend per request, with the
    /// default [`ChannelOptions`].
    ///
    /// ```no_run
    /// # mod hello {
    /// #     #[derive(Clone, Default)]
    /// #     pub struct HelloRequest { pub name: String }
    /// #     #[derive(Clone, Debug, Default)]
    /// #     pub struct HelloReply { pub message: String, pub served_by: String }
    /// #     pub mod greeter_client {
    /// #         pub struct GreeterClient<T>(T);
    /// #         impl<T> GreeterClient<T> {
    /// #             pub fn new(inner: T) -> Self { GreeterClient(inner) }
    /// #             pub async fn say_hello(&mut self, _: impl tonic::IntoRequest<super::HelloRequest>)
    /// #                 -> Result<tonic::Response<super::HelloReply>, tonic::Status> { unimplemented!() }
    /// #         }
    /// #     }
    /// # }
    /// # use hello::{greeter_client::GreeterClient, HelloRequest};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sub = lb_client::subscribe("hello", lb_client::ClientOptions::new("127.0.0.1:7400")).await?;
    /// let mut greeter = GreeterClient::new(sub.channel()); // cheap to clone, one per task is fine
    /// let reply = greeter.say_hello(HelloRequest { name: "world".into() }).await?;
    /// println!("served by {}", reply.into_inner().served_by);
    /// # Ok(()) }
    /// ```
    pub fn channel(&self) -> LbChannel {
        self.channel_with(ChannelOptions::default())
    }

    /// A tonic-compatible channel with `options`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_client::ChannelOptions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// // Backends that answer within 100 ms: give up on a connect sooner.
    /// let connect_timeout = Duration::from_millis(300);
    /// let options = ChannelOptions { connect_timeout, ..Default::default() };
    /// let channel = sub.channel_with(options); // GreeterClient::new(channel) ...
    /// assert!(channel.backend("10.0.0.5:50051").is_ok()); // connected lazily, on the first call
    /// # Ok(()) }
    /// ```
    pub fn channel_with(&self, options: ChannelOptions) -> LbChannel {
        LbChannel {
            subscription: self.clone(),
            options: Arc::new(options),
            channels: Arc::default(),
        }
    }
}

impl LbChannel {
    /// The channel's connection to the backend at `address` ("host:port"),
    /// connected lazily with the channel's [`ChannelOptions`]; for
    /// [`Subscription::call`] closures that make their own calls:
    ///
    /// ```no_run
    /// # async fn demo(sub: lb_client::Subscription) -> Result<(), tonic::Status> {
    /// let channels = sub.channel();
    /// sub.call("/echo.Echo/Say", &[], |ep| {
    ///     let backend = channels.backend(ep.address());
    ///     async move {
    ///         let _backend = backend?; // ... a generated client's call on it ...
    ///         Ok::<_, tonic::Status>(())
    ///     }
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// The cache keeps the addresses of the current list (and the one asked
    /// for). An address that is not "host:port" or a URI is
    /// `UNAVAILABLE`.
    pub fn backend(&self, address: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ch) = map.get(address) {
            return Ok(ch.clone());
        }
        // On a miss, forget backends that left the list so the cache stays bounded.
        let current = self.subscription.current();
        if map.len() >= current.servers().len() {
            map.retain(|a, _| current.servers().iter().any(|s| s.address() == a));
        }
        let target = dial_target(address)
            .map_err(|e| Status::unavailable(format!("bad backend address {address:?}: {e}")))?;
        let ch = self.options.apply(target).connect_lazy();
        map.insert(address.to_owned(), ch.clone());
        Ok(ch)
    }

    /// One logical call: route, deadline, then the cluster mode's attempts.
    async fn run(
        self,
        parts: http::request::Parts,
        body: Body,
        start: Instant,
    ) -> Result<http::Response<Body>, Status> {
        let list = self.subscription.current();
        let deadline = Deadline::of(
            grpc_timeout(&parts.headers),
            list.settings().deadline,
            start,
        );
        let labels = request_labels(&parts.headers);
        let (picker, mode) = match self.subscription.route(&list, parts.uri.path(), &labels) {
            Ok((mut picker, mode)) => {
                picker.key = parts.headers.get(HASH_KEY).map(HeaderValue::as_bytes);
                (picker, mode)
            }
            Err((Mode::Failsafe, _)) => return Ok(Answer::default().0),
            Err((_, no)) => return Err(no_pick(&self.subscription, no)),
        };
        let replay = Replay::new(body, self.options.replay_limit);
        // A unary request is whole now: retries and hedges may replay it.
        replay.read_ready();
        let more = || replay.replayable() && deadline.is_none_or(|d| Instant::now() < d.at);
        let attempt = |ep: Arc<Endpoint>| self.attempt(&ep, &parts, replay.body(), deadline);
        let budget = self.subscription.budget();
        let call = cluster::call_with(&picker, mode, &budget, &more, attempt);
        let result = match deadline {
            None => call.await,
            // Covers backoffs too; each attempt also stops at the deadline
            // itself, so that it is reported.
            Some(d) => match tokio::time::timeout_at(d.at, call).await {
                Ok(r) => r,
                Err(_) => return Err(d.exceeded(None)),
            },
        };
        match result {
            Ok(Answer(response)) => Ok(response),
            Err(ClusterError::NoPick(no)) => Err(no_pick(&self.subscription, no)),
            Err(e) => Err(Status::from(e)),
        }
    }

    /// One attempt of `parts` with `body` to `ep`.
    fn attempt(
        &self,
        ep: &Endpoint,
        parts: &http::request::Parts,
        body: ReplayBody<Body>,
        deadline: Option<Deadline>,
    ) -> impl Future<Output = Result<Answer, Status>> + Send + 'static {
        let address: Arc<str> = Arc::from(ep.address());
        let channel = self.backend(ep.address());
        let mut req = http::Request::new(Body::new(body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        if !ep.token().is_empty() {
            // A token that is not a valid header value is skipped rather than
            // failing the call: it is advisory.
            if let Ok(v) = HeaderValue::from_str(ep.token()) {
                req.headers_mut().insert("lb-token", v);
            }
        }
        if let Some(d) = deadline {
            // The backend hears how long is left for this attempt (A6).
            let left = d.at.saturating_duration_since(Instant::now());
            req.headers_mut()
                .insert(GRPC_TIMEOUT, grpc_timeout_value(left));
        }
        async move {
            let mut channel = channel?;
            let send = async {
                poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(req).await
            };
            let sent = match deadline {
                None => send.await,
                Some(d) => match tokio::time::timeout_at(d.at, send).await {
                    Ok(r) => r,
                    Err(_) => return Err(d.exceeded(Some(&address))),
                },
            };
            match sent {
                Ok(response) => commit(response, address, deadline),
                // tonic's own timer (the grpc-timeout we set) may fire first.
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d.at) => Err(deadline
                    .map_or_else(
                        || Status::deadline_exceeded("deadline exceeded"),
                        |d| d.exceeded(Some(&address)),
                    )),
                Err(e) => Err(transport_status(&address, e)),
            }
        }
    }
}

/// The caller-facing status of a pick that found nothing.
fn no_pick(sub: &Subscription, no: NoPick) -> Status {
    Status::unavailable(match no {
        NoPick::Dropped => "dropped by balancer".to_string(),
        // Whose list, and why it may be empty.
        NoPick::Empty => sub.no_backend_message(),
        NoPick::NoRoute => "the request's route matches no instance".to_string(),
    })
}

/// An attempt's response headers arrived: a "trailers-only" error status (or
/// an HTTP error) failed the attempt, which may be retried; anything else
/// commits the call (A6), and its body goes to the caller.
fn commit(
    response: http::Response<Body>,
    address: Arc<str>,
    deadline: Option<Deadline>,
) -> Result<Answer, Status> {
    if response.status() != http::StatusCode::OK {
        return Err(Status::new(
            http_code(response.status()),
            format!("backend {address}: HTTP status {}", response.status()),
        ));
    }
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
    }
    Ok(Answer(response.map(|body| {
        Body::new(ResponseBody {
            inner: body,
            timer: deadline.map(|d| (Box::pin(tokio::time::sleep_until(d.at)), d)),
            address,
            done: false,
        })
    })))
}

/// gRPC's reading of an HTTP status without `grpc-status`
/// (`doc/http-grpc-status-mapping.md` in grpc/grpc).
fn http_code(s: http::StatusCode) -> tonic::Code {
    match s.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// The metadata key of a request's hash key: under the hash policies
/// (`hash`, `consistent_hash`) requests with the same key go to the same
/// backend while it is in the list (as [`Subscription::pick_for_key`]);
/// under the others it changes nothing. `lb-hash-key: user-42`.
///
/// ```
/// use lb_client::channel::HASH_KEY;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[derive(Default)] struct HelloRequest { name: String }
/// // A complete program: examples/hello/src/bin/routed.rs.
/// let mut request = tonic::Request::new(HelloRequest { name: "user-42".into() });
/// request.metadata_mut().insert(HASH_KEY, "user-42".parse()?);
/// // GreeterClient::new(sub.channel()).say_hello(request): user-42's backend.
/// assert_eq!(request.metadata().get("lb-hash-key").unwrap(), "user-42");
/// # let _ = &request.get_ref().name; Ok(()) }
/// ```
pub const HASH_KEY: &str = "lb-hash-key";

/// Metadata keys with this prefix carry request labels for routing rules:
/// `lb-label-group: B` is the label `group=B`.
///
/// ```
/// use lb_client::channel::LABEL_PREFIX;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[derive(Default)] struct HelloRequest { name: String }
/// // A complete program: examples/hello/src/bin/routed.rs.
/// let mut request = tonic::Request::new(HelloRequest { name: "world".into() });
/// request.metadata_mut().insert("lb-label-group", "beta".parse()?); // the label group=beta
/// assert!("lb-label-group".starts_with(LABEL_PREFIX));
/// # let _ = &request.get_ref().name; Ok(()) }
/// ```
pub const LABEL_PREFIX: &str = "lb-label-";

/// The request labels `headers` carry (see [`LABEL_PREFIX`]).
fn request_labels(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix(LABEL_PREFIX)?;
            Some((key, v.to_str().ok()?))
        })
        .collect()
}

impl Service<http::Request<Body>> for LbChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per backend, known only after the pick in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        // The caller's deadline runs from now.
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let this = self.clone();
        Box::pin(async move {
            this.run(parts, body, start)
                .await
                .map_err(|s| Box::new(s) as BoxError)
        })
    }
}

/// A committed response, or what a failsafe call answers instead.
struct Answer(http::Response<Body>);

impl Default for Answer {
    /// An OK response with one empty message: every field of the method's
    /// response at its default.
    fn default() -> Self {
        let mut response = http::Response::new(Body::new(EmptyMessage { next: 0 }));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        Answer(response)
    }
}

/// The body of [`Answer::default`]: one gRPC message of zero bytes (not
/// compressed, length 0), then `grpc-status: 0`.
struct EmptyMessage {
    next: u8,
}

impl http_body::Body for EmptyMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.next = self.next.saturating_add(1);
        Poll::Ready(match self.next {
            1 => Some(Ok(Frame::data(Bytes::from_static(&[0; 5])))),
            2 => {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(t)))
            }
            _ => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.next >= 2
    }
}

/// A committed response's body: the deadline still holds, and a transport
/// failure under it names the backend.
struct ResponseBody {
    inner: Body,
    timer: Option<(Pin<Box<Sleep>>, Deadline)>,
    address: Arc<str>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(status))) => {
                this.done = true;
                Poll::Ready(Some(Err(at_backend(&this.address, status))))
            }
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => {
                let Some((sleep, d)) = &mut this.timer else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let status = d.exceeded(Some(&this.address));
                // Dropping the backend's body cancels its stream.
                this.inner = Body::empty();
                this.done = true;
                Poll::Ready(Some(Err(status)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When a call must end, and who said so.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    after: Duration,
    /// The caller set it (else it is the service's default).
    caller: bool,
}

impl Deadline {
    /// The caller's `timeout`, else the service's `default`, from `start`.
    fn of(timeout: Option<Duration>, default: Option<Duration>, start: Instant) -> Option<Self> {
        let (after, caller) = match (timeout, default) {
            (Some(t), _) => (t, true),
            (None, Some(d)) => (d, false),
            (None, None) => return None,
        };
        Some(Deadline {
            // A deadline beyond what the clock can hold is no deadline.
            at: start.checked_add(after)?,
            after,
            caller,
        })
    }

    /// The status of a call it ended, waiting on `address` if known.
    fn exceeded(&self, address: Option<&str>) -> Status {
        let whose = if self.caller {
            "the caller's deadline"
        } else {
            "the service's default deadline"
        };
        let waiting = address.map_or(String::new(), |a| format!(", waiting for backend {a}"));
        Status::deadline_exceeded(format!(
            "deadline exceeded ({whose}, {}ms){waiting}",
            self.after.as_millis()
        ))
    }
}

/// The gRPC deadline header.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The `grpc-timeout` header's duration: at most 8 digits and a unit (H, M,
/// S, m, u, n; gRPC's `PROTOCOL-HTTP2.md`). A malformed one is ignored, as
/// tonic's own channel does.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let digits = v.get(..v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match v.as_bytes().last()? {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value: the finest unit whose count fits in 8
/// digits, rounded up.
fn grpc_timeout_value(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (count, unit) = units
        .iter()
        .map(|&(size, unit)| (nanos.div_ceil(size), unit))
        .find(|&(count, _)| count <= MAX)
        .unwrap_or((MAX, 'H'));
    // Digits and an ASCII letter: always a valid header value.
    HeaderValue::from_str(&format!("{count}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::{Endpoint, PickList};

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

    async fn status_of(ch: &mut LbChannel, req: http::Request<Body>) -> Status {
        let err = ch.call(req).await.unwrap_err();
        *err.downcast::<Status>().unwrap()
    }

    #[tokio::test]
    async fn drop_and_empty_fail_locally() {
        let list = PickList::from_parts(1, vec![Endpoint::drop_entry()], vec![0]).unwrap();
        let sub = Subscription::detached(list);
        let mut ch = sub.channel();
        let status = status_of(&mut ch, http::Request::new(Body::empty())).await;
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "dropped by balancer");
        assert_eq!(sub.dropped(), 1);

        let mut ch = Subscription::detached(PickList::empty()).channel();
        let status = status_of(&mut ch, http::Request::new(Body::empty())).await;
        assert!(
            status
                .message()
                .starts_with("no backend available for \"test\""),
            "{status:?}"
        );
    }

    /// A port on loopback with nothing listening (bound, then released).
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_names_the_backend() {
        let addr = closed_port();
        let list =
            PickList::from_parts(1, vec![Endpoint::new("a", addr.clone())], vec![0]).unwrap();
        let sub = Subscription::detached(list);
        let mut ch = sub.channel();
        let mut req = http::Request::new(Body::empty());
        *req.uri_mut() = "/a.B/C".parse().unwrap();
        let status = status_of(&mut ch, req).await;
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().starts_with(&format!("backend {addr}: ")),
            "{}",
            status.message()
        );
        assert!(
            status
                .message()
                .to_lowercase()
                .contains("connection refused"),
            "{}",
            status.message()
        );
        // Recorded on the endpoint as UNAVAILABLE.
        let counts = sub.current().servers()[0].counts();
        assert_eq!((counts.started, counts.failed), (1, 1));
    }

    #[tokio::test]
    async fn a_failsafe_call_answers_an_empty_message() {
        use http_body::Body as _;
        let list = PickList::from_parts(1, vec![Endpoint::new("a", closed_port())], vec![0])
            .unwrap()
            .with_settings(lb_core::cluster::ClusterConfig {
                default: Mode::Failsafe,
                ..Default::default()
            });
        let mut ch = Subscription::detached(list).channel();
        let response = ch.call(http::Request::new(Body::empty())).await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let mut body = response.into_body();
        let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), [0u8; 5][..]);
        let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let trailers = frame.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .is_none());
    }

    #[test]
    fn grpc_timeouts_read_and_write() {
        let read = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(read("30000000u"), Some(Duration::from_secs(30)));
        assert_eq!(read("2S"), Some(Duration::from_secs(2)));
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789m", "5x", "-1m", "1.5S", "m1"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
        let write = |d| grpc_timeout_value(d).to_str().unwrap().to_owned();
        assert_eq!(write(Duration::from_nanos(1500)), "1500n");
        assert_eq!(write(Duration::from_millis(2000)), "2000000u");
        assert_eq!(write(Duration::from_secs(3600)), "3600000m");
        assert_eq!(write(Duration::from_secs(200_000)), "200000S");
        assert_eq!(write(Duration::ZERO), "0n");
        assert_eq!(write(Duration::MAX), "99999999H");
        // What is written reads back, never shorter.
        for ms in [1u64, 999, 123_456, 86_400_000] {
            let d = Duration::from_millis(ms) + Duration::from_nanos(1);
            assert!(read(&write(d)).unwrap() >= d);
        }
    }

    #[test]
    fn deadlines_prefer_the_caller_and_say_whose() {
        let now = Instant::now();
        let s = Duration::from_secs;
        assert!(Deadline::of(None, None, now).is_none());
        let d = Deadline::of(Some(s(1)), Some(s(5)), now).unwrap();
        assert_eq!((d.at, d.caller), (now + s(1), true));
        let d = Deadline::of(None, Some(s(5)), now).unwrap();
        assert_eq!((d.at, d.caller), (now + s(5), false));
        let st = d.exceeded(Some("h:1"));
        assert_eq!(st.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            st.message(),
            "deadline exceeded (the service's default deadline, 5000ms), waiting for backend h:1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_default_deadline_ends_a_call_nobody_answers() {
        // A listener that accepts and never speaks: the call waits for
        // response headers that never come.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let list = PickList::from_parts(1, vec![Endpoint::new("a", addr.clone())], vec![0])
            .unwrap()
            .with_settings(lb_core::cluster::ClusterConfig {
                deadline: Some(Duration::from_millis(300)),
                ..Default::default()
            });
        let sub = Subscription::detached(list);
        let options = ChannelOptions {
            keepalive_interval: None,
            ..ChannelOptions::default()
        };
        let mut ch = sub.channel_with(options);
        let mut req = http::Request::new(Body::empty());
        *req.uri_mut() = "/a.B/C".parse().unwrap();
        let status = status_of(&mut ch, req).await;
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(
            status.message().contains("default deadline, 300ms"),
            "{status:?}"
        );
        drop(silent);
    }
}
