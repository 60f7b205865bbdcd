//! Thin client for `lb`, a lookaside load balancer.
//!
//! Callers [`subscribe`] to a service and follow the ordered server list the
//! daemon streams: [`Subscription::pick`] round-robins over it (lock-free,
//! allocation-free), honours drop entries, and [`Subscription::report`] feeds
//! call outcomes back. [`Subscription::channel`] wraps all of that in a
//! tonic-compatible channel. Backends use the [`Reporter`] to register and
//! stream their load.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Returns once the daemon's first list is in place (up to
//! // `ClientOptions::first_list_timeout`, 5 s), or fails saying why:
//! // "cannot reach the lb daemon at 127.0.0.1:7400: connection refused".
//! let sub = lb_client::subscribe("echo", lb_client::ClientOptions::new("127.0.0.1:7400")).await?;
//! let ep = sub.pick()?;
//! // ... call ep.address() ...
//! sub.report(&ep, lb_client::Outcome::success(std::time::Duration::from_millis(3)));
//! // Or give a generated tonic client `sub.channel()`: it picks per request.
//! # Ok(()) }
//! ```
//!
//! A process's subscriptions and reporter share one HTTP/2 connection per
//! daemon ([`daemon`]).
//!
//! # Layout
//! The modules, lowest first; each uses only those above it (plus `lb-core`):
//! - [`backoff`]: jittered exponential [`Backoff`] for reconnects (pure).
//! - [`budget`]: [`RetryBudget`], retries allowed as a fraction of recent requests (Finagle-style).
//! - [`cpu`]: process CPU utilization from `/proc/self/stat` ([`CpuSampler`]).
//! - [`inflight`]: [`InFlight`] request counter and [`InFlightLayer`] for tonic servers.
//! - [`list`]: [`PickList`] and [`Endpoint`], the list a client follows, and
//!   the pick hot path; it knows nothing of calls or of the daemon.
//! - [`cluster`]: the executors of `lb-core`'s cluster modes ([`Mode`]:
//!   failover, failfast, failsafe, forking/hedging, broadcast, multicast),
//!   run by [`cluster::call`] over a [`Picker`].
//! - [`credentials`]: [`Credentials`] (a bearer token, TLS and a client
//!   certificate) for daemons that require them.
//! - `protocol`: what client and daemon say to each other, as plain types
//!   ([`Registration`], [`LoadSample`], stats and updates).
//! - `pb`: the gRPC edge: `protocol` and list types to and from the wire.
//! - [`daemon`]: the connection to daemons: dialing ([`daemon::connect`]),
//!   the process-wide pool that gives every subscription and reporter one
//!   shared connection per daemon, [`DaemonError`] (why a daemon could not
//!   be reached, classified from the error's source chain), and the two
//!   streams (with `pb`, the only module that touches `lb_proto` types).
//! - [`subscription`]: [`subscribe`] (which waits for the first list),
//!   [`Subscription`] and the background task (connect, stream lists,
//!   reconnect, send call stats).
//! - [`call`]: [`Subscription::call`] and friends: calls under the daemon's
//!   cluster modes, on the route the request's labels select.
//! - `replay`: a request body kept (up to a bound) so a call can be sent
//!   again: retries and hedges through the channel.
//! - [`channel`]: [`LbChannel`] (`Subscription::channel`), a `tower::Service`
//!   for tonic clients that runs each call under the daemon's cluster mode
//!   and deadline (request labels for routing rules as `lb-label-*`
//!   metadata, a hash key as `lb-hash-key`), over backend connections with keep-alive
//!   ([`ChannelOptions`]).
//! - [`reporter`]: the backend side: [`Reporter`] registers and streams [`LoadSample`]s
//!   (to every daemon address at once: replicas each hear the backend).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod budget;
pub mod call;
pub mod channel;
pub mod cluster;
pub mod cpu;
pub mod credentials;
pub mod daemon;
pub mod inflight;
pub mod list;
mod pb;
mod protocol;
mod replay;
pub mod reporter;
pub mod subscription;

pub use backoff::Backoff;
pub use budget::{BudgetConfig, RetryBudget};
pub use channel::{ChannelOptions, LbChannel};
pub use cluster::{BroadcastReport, CallError, ClusterError, Picker};
pub use cpu::CpuSampler;
pub use credentials::Credentials;
pub use daemon::DaemonError;
pub use inflight::{InFlight, InFlightGuard, InFlightLayer};
pub use lb_core::cluster::{Broadcast, ClusterConfig, Collect, Failover, Mode};
pub use lb_core::model::InstanceSpec;
pub use lb_core::status::Code;
pub use list::{CallCounts, Endpoint, ListState, NoPick, Outcome, PickList, Route, RouteSpec};
pub use protocol::{LoadSample, Registration};
pub use reporter::{Error as ReporterError, Reporter, ReporterOptions};
pub use subscription::{subscribe, ClientOptions, Error, Subscription};
