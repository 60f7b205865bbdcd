//! Calls under the daemon's cluster modes: [`Subscription::call`] runs one
//! logical call as the service (or method) is configured on the daemon:
//! failover, failfast, failsafe, forking, broadcast or multicast, with request
//! labels choosing the routing rule. The executors live in [`crate::cluster`];
//! this module binds them to a subscription's current list.
//!
//! ```no_run
//! # async fn demo(sub: lb_client::Subscription) -> Result<(), Box<dyn std::error::Error>> {
//! // The channel's backend connections (keep-alive, connect timeout),
//! // shared by every call.
//! let channels = sub.channel();
//! let reply: String = sub
//!     .call("/echo.Echo/Say", &[("group", "B")], |ep| {
//!         let backend = channels.backend(ep.address());
//!         async move {
//!             let _backend = backend?; // ... make the call with a generated client ...
//!             Ok::<_, tonic::Status>(String::from("reply"))
//!         }
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A generated client on [`Subscription::channel`] gets the same modes
//! without a closure (see [`crate::channel`]); `call` remains for calls
//! that are not tonic's, and for client-streaming calls that should be
//! retried (the closure can build the stream again).
//!
//! An attempt's `tonic::Status` that came from the transport reaches the
//! caller as UNAVAILABLE (DEADLINE_EXCEEDED when a deadline cut it) naming
//! the backend ([`crate::cluster::CallError::at_endpoint`]).

use std::future::Future;
use std::sync::Arc;

use lb_core::cluster::{Broadcast, Mode};

use crate::cluster::{self, BroadcastReport, CallError, ClusterError, Picker};
use crate::list::{Endpoint, LaneRef, NoPick, Outcome, PickList};
use crate::subscription::Subscription;

/// A [`Picker`] over one lane of one list snapshot.
pub(crate) struct LanePicker<'a> {
    list: &'a PickList,
    lane: LaneRef,
    sub: &'a Subscription,
    /// A request key: the first attempt follows the hash policies' affinity
    /// table (as [`Subscription::pick_for_key`], under the daemon's bound
    /// on keyed calls in flight, [`PickList::with_load_bound`]); retries and
    /// hedges go to the lane's other instances.
    pub(crate) key: Option<&'a [u8]>,
}

impl Picker for LanePicker<'_> {
    fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
        let r = match self.key {
            Some(key) if tried.is_empty() => self.list.pick_keyed(key, true),
            _ => self.list.pick_untried(self.lane, tried),
        };
        // Only a first attempt that finds nothing counts for the daemon;
        // a failover that ran out of instances is the call's failure.
        if tried.is_empty() {
            self.sub.count(r)
        } else {
            r
        }
    }

    fn all(&self) -> Vec<Arc<Endpoint>> {
        self.list.distinct(self.lane)
    }

    fn report(&self, ep: &Endpoint, outcome: Outcome) {
        self.sub.report(ep, outcome);
    }
}

impl Subscription {
    /// Runs one logical call of `method` ("/package.Service/Method") under
    /// the mode the daemon configured for it, on the route `labels` select.
    /// `f` makes one attempt against the endpoint it is given; outcomes are
    /// recorded and reported to the daemon. Failsafe swallows errors and
    /// returns `T::default()`; broadcast and multicast return the first
    /// success once every instance answered (use [`Subscription::broadcast`]
    /// for every answer). The service's default deadline, if the daemon set
    /// one, ends the call with [`ClusterError::DeadlineExceeded`] (the
    /// closure's own timeouts are the caller's).
    ///
    /// A generated client on [`Subscription::channel`] needs none of this; `call`
    /// is for calls of any kind (a complete program with the channel:
    /// `examples/hello/src/bin/caller.rs`):
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
    /// let channels = sub.channel(); // its backend connections, shared by every call
    /// let reply = sub
    ///     .call("/hello.Greeter/SayHello", &[("group", "beta")], |ep| {
    ///         let backend = channels.backend(ep.address());
    ///         async move {
    ///             let request = HelloRequest { name: "world".into() };
    ///             let reply = GreeterClient::new(backend?).say_hello(request).await?;
    ///             Ok::<_, tonic::Status>(reply.into_inner())
    ///         }
    ///     })
    ///     .await?;
    /// println!("{} (served by {})", reply.message, reply.served_by);
    /// # Ok(()) }
    /// ```
    pub async fn call<T, E, F, Fut>(
        &self,
        method: &str,
        labels: &[(&str, &str)],
        f: F,
    ) -> Result<T, ClusterError<E>>
    where
        T: Default,
        E: CallError,
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let list = self.current();
        let (picker, mode) = match self.route(&list, method, labels) {
            Ok(r) => r,
            Err((mode, e)) => {
                return match mode {
                    Mode::Failsafe => Ok(T::default()),
                    _ => Err(ClusterError::NoPick(e)),
                };
            }
        };
        let budget = self.budget();
        within_deadline(&list, cluster::call(&picker, mode, &budget, f)).await
    }

    /// The mode `method` runs under in `list` and a picker over the lane
    /// its call follows: a multicast's route, else the one `labels` select.
    /// A lane that cannot be had is counted (as a pick that found nothing)
    /// and returned with the mode.
    pub(crate) fn route<'a>(
        &'a self,
        list: &'a PickList,
        method: &str,
        labels: &[(&str, &str)],
    ) -> Result<(LanePicker<'a>, &'a Mode), (&'a Mode, NoPick)> {
        let mode = list.settings().mode_for(method);
        let lane = match mode {
            Mode::Multicast { route, .. } => list.route_named(route).ok_or(NoPick::NoRoute),
            _ => list.lane_for(labels),
        };
        match lane {
            Ok(lane) => Ok((
                LanePicker {
                    list,
                    lane,
                    sub: self,
                    key: None,
                },
                mode,
            )),
            Err(e) => {
                self.count(Err(e)).ok();
                Err((mode, e))
            }
        }
    }

    /// Calls every instance of the route `labels` select, concurrently, and
    /// returns each one's result; fails when more than `max_failure_percent`
    /// of them fail. Dropping the future cancels every attempt still running.
    ///
    /// ```no_run
    /// use lb_client::{Broadcast, Collect};
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
    /// let channels = sub.channel();
    /// let cfg = Broadcast { collect: Collect::All, max_failure_percent: 25 };
    /// let report = sub
    ///     .broadcast(&[], &cfg, |ep| {
    ///         let backend = channels.backend(ep.address());
    ///         async move { GreeterClient::new(backend?).say_hello(HelloRequest::default()).await }
    ///     })
    ///     .await?;
    /// for (ep, result) in &report.results {
    ///     println!("{}: {}", ep.instance_id(), if result.is_ok() { "ok" } else { "failed" });
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn broadcast<T, E, F, Fut>(
        &self,
        labels: &[(&str, &str)],
        cfg: &Broadcast,
        f: F,
    ) -> Result<BroadcastReport<T, E>, ClusterError<E>>
    where
        E: CallError,
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.fan_out(|l| l.lane_for(labels), cfg, f).await
    }

    /// Calls every instance the routing rule `route` selects (multicast), as
    /// [`Subscription::broadcast`] does.
    ///
    /// ```no_run
    /// use lb_client::Broadcast;
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
    /// let channels = sub.channel();
    /// // Every instance the daemon's rule "canary" selects (`ctl set-rule hello canary ...`):
    /// let report = sub
    ///     .multicast("canary", &Broadcast::default(), |ep| {
    ///         let backend = channels.backend(ep.address());
    ///         async move { GreeterClient::new(backend?).say_hello(HelloRequest::default()).await }
    ///     })
    ///     .await?;
    /// println!("{} of {} canaries failed", report.failed(), report.results.len());
    /// # Ok(()) }
    /// ```
    pub async fn multicast<T, E, F, Fut>(
        &self,
        route: &str,
        cfg: &Broadcast,
        f: F,
    ) -> Result<BroadcastReport<T, E>, ClusterError<E>>
    where
        E: CallError,
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.fan_out(|l| l.route_named(route).ok_or(NoPick::NoRoute), cfg, f)
            .await
    }

    /// Broadcast over the lane `lane` chooses in the current list.
    async fn fan_out<T, E, F, Fut>(
        &self,
        lane: impl FnOnce(&PickList) -> Result<LaneRef, NoPick>,
        cfg: &Broadcast,
        f: F,
    ) -> Result<BroadcastReport<T, E>, ClusterError<E>>
    where
        E: CallError,
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let list = self.current();
        let lane = lane(&list).map_err(ClusterError::NoPick)?;
        let picker = LanePicker {
            list: &list,
            lane,
            sub: self,
            key: None,
        };
        within_deadline(&list, cluster::broadcast(&picker, cfg, f)).await
    }
}

/// `call`, ended by the service's default deadline if `list` sets one.
async fn within_deadline<T, E>(
    list: &PickList,
    call: impl Future<Output = Result<T, ClusterError<E>>>,
) -> Result<T, ClusterError<E>> {
    match list.settings().deadline {
        None => call.await,
        Some(after) => tokio::time::timeout(after, call)
            .await
            .unwrap_or(Err(ClusterError::DeadlineExceeded { after })),
    }
}
