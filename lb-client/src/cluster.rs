//! Cluster modes: what one logical call does across instances.
//!
//! The modes are Dubbo's cluster fault-tolerance strategies (Apache Dubbo,
//! *Cluster* / "fault tolerance strategy": `failover`, `failfast`, `failsafe`,
//! `forking`, `broadcast`), executed by the client around its own call
//! closure:
//!
//! The modes themselves ([`Mode`], with their settings and defaults) are
//! `lb-core`'s, shared with the daemon that configures them:
//!
//! - [`Mode::Failover`] (the default): on a retryable error, retry on a
//!   different instance after a jittered exponential backoff, up to a number of
//!   attempts.
//! - [`Mode::Failfast`]: one attempt; its error is the call's error.
//! - [`Mode::Failsafe`]: one attempt; an error is logged and swallowed
//!   (`T::default()` is returned), for calls whose result does not matter.
//! - [`Mode::Forking`]: start `k` attempts on `k` distinct instances at once;
//!   the first success wins and the others are cancelled. This is also gRPC's
//!   *hedging* (proposal A6, *gRPC Retry Design*), with a hedging delay of 0.
//! - [`Mode::Broadcast`]: call every instance; see [`broadcast`] for the
//!   per-instance results. [`Mode::Multicast`] is a broadcast over the
//!   instances of one routing rule: the caller gives the picker for that
//!   rule's lane.
//!
//! ```
//! use lb_client::{cluster, Mode, RetryBudget};
//! # use std::sync::Arc;
//! # use lb_client::{cluster::{tried_contains, Picker}, Endpoint, NoPick, Outcome};
//! # struct Fixed(Vec<Arc<Endpoint>>);
//! # impl Fixed {
//! #     fn new(addresses: &[&str]) -> Fixed {
//! #         Fixed(addresses.iter().map(|a| Arc::new(Endpoint::new(*a, *a))).collect())
//! #     }
//! # }
//! # impl Picker for Fixed {
//! #     fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
//! #         self.0.iter().find(|ep| !tried_contains(tried, ep)).cloned().ok_or(NoPick::Empty)
//! #     }
//! #     fn all(&self) -> Vec<Arc<Endpoint>> { self.0.clone() }
//! #     fn report(&self, _: &Endpoint, _: Outcome) {}
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let picker = Fixed::new(&["10.0.0.5:50051", "10.0.0.6:50051"]); // a Picker
//! let hedged = Mode::Forking { forks: 2 }; // both at once, the first success wins
//! let reply = cluster::call(&picker, &hedged, &RetryBudget::default(), |ep| async move {
//!     Ok::<_, tonic::Status>(format!("served by {}", ep.address()))
//! })
//! .await?;
//! assert!(reply.starts_with("served by 10.0.0."));
//! # Ok(()) }
//! ```
//!
//! Retries and extra hedges draw on a [`RetryBudget`] (every call deposits
//! once), so a failing service sees at most `percent` more load, not
//! `attempts ×` more.
//!
//! [`call_with`] also asks, before any attempt beyond the first, whether one
//! may start at all: [`crate::LbChannel`] runs generated tonic clients'
//! calls through it, and a request body that cannot be sent again (still
//! streaming, or larger than it keeps) or a passed deadline allows only one.
//!
//! Errors: [`CallError::at_endpoint`] lets an attempt's error say where it
//! happened. A `tonic::Status` that tonic made from a transport failure (it
//! reads `Unknown "transport error"`) becomes UNAVAILABLE, or
//! DEADLINE_EXCEEDED when a deadline cut it, with a message naming the
//! backend's address and the cause (connection refused, reset, keep-alive
//! timed out, ...), so failover retries it and the caller can tell what
//! broke.
//!
//! Concurrent attempts (forking, broadcast) run inside the caller's future,
//! without `tokio::spawn`: dropping the call's future drops every attempt, so
//! nothing keeps running behind a cancelled call. Every finished attempt is
//! reported to the [`Picker`] with its latency; a cancelled attempt is not
//! reported.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use lb_core::cluster::{Broadcast, Collect, Failover, Mode};
use lb_core::status::Code;

use crate::backoff::Backoff;
use crate::budget::RetryBudget;
use crate::list::{Endpoint, NoPick, Outcome};

/// Where a cluster call gets its instances, and where it reports outcomes.
///
/// A [`crate::Subscription`] is one for its calls ([`crate::Subscription::call`]);
/// implement it to run the cluster modes over instances of your own:
///
/// ```
/// use std::sync::Arc;
/// use lb_client::{cluster::{tried_contains, Picker}, Endpoint, NoPick, Outcome};
///
/// /// A fixed list, first untried endpoint first.
/// struct Fixed(Vec<Arc<Endpoint>>);
///
/// impl Picker for Fixed {
///     fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
///         self.0.iter().find(|ep| !tried_contains(tried, ep)).cloned().ok_or(NoPick::Empty)
///     }
///     fn all(&self) -> Vec<Arc<Endpoint>> {
///         self.0.clone()
///     }
///     fn report(&self, _ep: &Endpoint, _outcome: Outcome) {} // or keep statistics
/// }
/// let picker = Fixed(vec![Arc::new(Endpoint::new("b1", "10.0.0.5:50051"))]);
/// assert_eq!(picker.pick_untried(&[])?.instance_id(), "b1");
/// # Ok::<(), NoPick>(())
/// ```
pub trait Picker: Send + Sync {
    /// An endpoint for one attempt: the next in order, skipping any endpoint
    /// in `tried` (same instance: see [`tried_contains`]) while an untried
    /// non-drop endpoint exists; when all were tried, `Err(NoPick::Empty)`.
    /// Landing on a drop entry is `Err(NoPick::Dropped)`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use lb_client::{cluster::{tried_contains, Picker}, Endpoint, NoPick, Outcome};
    /// # struct Fixed(Vec<Arc<Endpoint>>);
    /// # impl Fixed {
    /// #     fn new(addresses: &[&str]) -> Fixed {
    /// #         Fixed(addresses.iter().map(|a| Arc::new(Endpoint::new(*a, *a))).collect())
    /// #     }
    /// # }
    /// # impl Picker for Fixed {
    /// #     fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
    /// #         self.0.iter().find(|ep| !tried_contains(tried, ep)).cloned().ok_or(NoPick::Empty)
    /// #     }
    /// #     fn all(&self) -> Vec<Arc<Endpoint>> { self.0.clone() }
    /// #     fn report(&self, _: &Endpoint, _: Outcome) {}
    /// # }
    /// let picker = Fixed::new(&["10.0.0.5:50051", "10.0.0.6:50051"]); // the Picker above
    /// let first = picker.pick_untried(&[])?;
    /// let second = picker.pick_untried(&[first.clone()])?; // a retry goes elsewhere
    /// assert_eq!(second.address(), "10.0.0.6:50051");
    /// assert_eq!(picker.pick_untried(&[first, second]).unwrap_err(), NoPick::Empty);
    /// # Ok::<(), NoPick>(())
    /// ```
    fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick>;
    /// Every distinct non-drop endpoint (for broadcast), in list order.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use lb_client::{cluster::{tried_contains, Picker}, Endpoint, NoPick, Outcome};
    /// # struct Fixed(Vec<Arc<Endpoint>>);
    /// # impl Fixed {
    /// #     fn new(addresses: &[&str]) -> Fixed {
    /// #         Fixed(addresses.iter().map(|a| Arc::new(Endpoint::new(*a, *a))).collect())
    /// #     }
    /// # }
    /// # impl Picker for Fixed {
    /// #     fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
    /// #         self.0.iter().find(|ep| !tried_contains(tried, ep)).cloned().ok_or(NoPick::Empty)
    /// #     }
    /// #     fn all(&self) -> Vec<Arc<Endpoint>> { self.0.clone() }
    /// #     fn report(&self, _: &Endpoint, _: Outcome) {}
    /// # }
    /// let picker = Fixed::new(&["10.0.0.5:50051", "10.0.0.6:50051"]); // the Picker above
    /// let everyone: Vec<String> = picker.all().iter().map(|ep| ep.address().to_owned()).collect();
    /// assert_eq!(everyone, ["10.0.0.5:50051", "10.0.0.6:50051"]);
    /// ```
    fn all(&self) -> Vec<Arc<Endpoint>>;
    /// Records a finished attempt's outcome (the caller's stats).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use lb_client::{cluster::Picker, Endpoint, NoPick, Outcome};
    /// /// A single backend that remembers its failures.
    /// struct One(Arc<Endpoint>, Mutex<u32>);
    /// impl Picker for One {
    ///     # fn pick_untried(&self, _: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> { Ok(self.0.clone()) }
    ///     # fn all(&self) -> Vec<Arc<Endpoint>> { vec![self.0.clone()] }
    ///     fn report(&self, _ep: &Endpoint, outcome: Outcome) {
    ///         *self.1.lock().unwrap() += u32::from(!outcome.is_ok());
    ///     }
    /// }
    /// let one = One(Arc::new(Endpoint::new("b1", "10.0.0.5:50051")), Mutex::new(0));
    /// one.report(&one.0, Outcome::failure(lb_client::Code::Unavailable, Default::default()));
    /// assert_eq!(*one.1.lock().unwrap(), 1);
    /// ```
    fn report(&self, ep: &Endpoint, outcome: Outcome);
}

/// Whether `ep` is in `tried`: the same `Arc`, or the same instance id and
/// address. A helper for [`Picker::pick_untried`] implementations.
///
/// ```
/// use std::sync::Arc;
/// use lb_client::{cluster::tried_contains, Endpoint};
/// let tried = [Arc::new(Endpoint::new("b1", "10.0.0.5:50051"))];
/// // The same instance in a newer list is another Arc, but it was tried:
/// assert!(tried_contains(&tried, &Endpoint::new("b1", "10.0.0.5:50051")));
/// assert!(!tried_contains(&tried, &Endpoint::new("b2", "10.0.0.6:50051")));
/// ```
pub fn tried_contains(tried: &[Arc<Endpoint>], ep: &Endpoint) -> bool {
    tried.iter().any(|t| {
        std::ptr::eq(Arc::as_ptr(t), ep)
            || (t.instance_id() == ep.instance_id() && t.address() == ep.address())
    })
}

/// Classifies an error for retries.
///
/// Implemented for `tonic::Status`; implement it for your own error type to
/// call with [`crate::Subscription::call`] or [`call`]:
///
/// ```
/// use lb_client::{cluster::CallError, Code};
///
/// #[derive(Debug)]
/// enum ShopError {
///     Busy,
///     OutOfStock,
/// }
/// impl CallError for ShopError {
///     fn code(&self) -> Option<Code> {
///         Some(match self {
///             ShopError::Busy => Code::Unavailable, // failover retries it elsewhere
///             ShopError::OutOfStock => Code::FailedPrecondition,
///         })
///     }
/// }
/// assert_eq!(ShopError::Busy.code(), Some(Code::Unavailable));
/// ```
pub trait CallError {
    /// The gRPC code of the error; `None` when it has none (never retried).
    ///
    /// ```
    /// use lb_client::{cluster::CallError, Code};
    /// let status = tonic::Status::not_found("no such user");
    /// assert_eq!(CallError::code(&status), Some(Code::NotFound)); // not retried by default
    /// let draining = tonic::Status::unavailable("draining");
    /// assert_eq!(CallError::code(&draining), Some(Code::Unavailable)); // retried
    /// ```
    fn code(&self) -> Option<Code>;

    /// This error as the caller should see it, knowing the attempt went to
    /// `ep`. The default leaves it as it is; a `tonic::Status` that came
    /// from the transport gets its real code and names the backend (see
    /// the `CallError` impl for `tonic::Status`).
    ///
    /// ```
    /// use lb_client::{cluster::CallError, Code, Endpoint};
    /// let ep = Endpoint::new("b1", "10.0.0.5:50051");
    /// // What tonic makes of a refused connection: UNKNOWN "transport error",
    /// // with the cause as its source.
    /// use std::io::{Error, ErrorKind::ConnectionRefused};
    /// let refused = Error::new(ConnectionRefused, "Connection refused");
    /// let status = tonic::Status::from_error(Box::new(refused)).at_endpoint(&ep);
    /// assert_eq!(status.code(), tonic::Code::Unavailable);
    /// assert_eq!(status.message(), "backend 10.0.0.5:50051: Connection refused");
    /// // The backend's own statuses are left as they are:
    /// let not_found = tonic::Status::not_found("no such user").at_endpoint(&ep);
    /// assert_eq!(not_found.message(), "no such user");
    /// ```
    fn at_endpoint(self, ep: &Endpoint) -> Self
    where
        Self: Sized,
    {
        let _ = ep;
        self
    }
}

/// A tonic code as lb's.
///
/// ```
/// use lb_client::{cluster::code_of, Code, Outcome};
/// assert_eq!(code_of(tonic::Code::Unavailable), Code::Unavailable);
/// // e.g. to report a tonic call's outcome:
/// let status = tonic::Status::resource_exhausted("quota");
/// let outcome = Outcome::failure(code_of(status.code()), std::time::Duration::from_millis(5));
/// assert_eq!(outcome.code, Code::ResourceExhausted);
/// ```
pub fn code_of(c: tonic::Code) -> Code {
    Code::from_number(c as u32).unwrap_or(Code::Unknown)
}

/// lb's code as tonic's.
fn tonic_code(c: Code) -> tonic::Code {
    tonic::Code::from_i32(i32::try_from(c.number()).unwrap_or(2))
}

impl CallError for tonic::Status {
    /// The status code, except for a transport failure (a status tonic made
    /// from a Rust error rather than from the backend's `grpc-status`): one
    /// cut by a deadline is DEADLINE_EXCEEDED, one tonic calls UNKNOWN or
    /// CANCELLED (a connection refused, reset or closed under the call, a
    /// keep-alive timeout) is UNAVAILABLE, as gRPC defines it.
    fn code(&self) -> Option<Code> {
        Some(transport_code(self).unwrap_or_else(|| code_of(tonic::Status::code(self))))
    }

    /// A transport failure becomes a status with the code [`CallError::code`]
    /// gives and a message naming the backend and the cause, e.g. `backend
    /// 10.0.0.7:50051: tcp connect error: Connection refused (os error
    /// 111)`; the status tonic made stays its source. Statuses the backend
    /// sent are unchanged.
    fn at_endpoint(self, ep: &Endpoint) -> Self {
        at_backend(ep.address(), self)
    }
}

/// The source of a status [`at_backend`] made: the status tonic made.
#[derive(Debug)]
struct FromTransport(tonic::Status);

impl fmt::Display for FromTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for FromTransport {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The code of a transport failure (a status with a source error, which
/// tonic attaches only when it turns a Rust error into a status); `None`
/// for a status the backend sent, made by hand, or already named by
/// [`at_backend`].
fn transport_code(s: &tonic::Status) -> Option<Code> {
    let source = std::error::Error::source(s)?;
    if source.is::<FromTransport>() {
        return None;
    }
    if chain(source).any(|e| e.is::<tonic::TimeoutExpired>()) {
        return Some(Code::DeadlineExceeded);
    }
    Some(match code_of(s.code()) {
        Code::Unknown | Code::Cancelled | Code::Ok => Code::Unavailable,
        // What tonic read from the HTTP/2 error (a reset stream's reason)
        // or its own UNAVAILABLE for connect and keep-alive failures.
        c => c,
    })
}

/// `e` and its sources.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The causes in `e`'s chain, outermost first, joined by ": ", without
/// tonic's "transport error" or a text its outer error already ends with.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in chain(e) {
        let text = match err.downcast_ref::<tonic::Status>() {
            Some(s) => s.message().to_owned(),
            None => err.to_string(),
        };
        let repeated = parts.last().is_some_and(|p| p.ends_with(&text));
        if !text.is_empty() && text != "transport error" && !repeated {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The gRPC status of a failure on the way to the backend at `address`:
/// [`CallError::at_endpoint`] for a status, and what [`crate::LbChannel`]
/// makes of a tonic channel's error.
pub(crate) fn at_backend(address: &str, status: tonic::Status) -> tonic::Status {
    let Some(code) = transport_code(&status) else {
        return status;
    };
    let cause = std::error::Error::source(&status)
        .map(describe)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| status.message().to_owned());
    let mut named = tonic::Status::new(tonic_code(code), format!("backend {address}: {cause}"));
    named.set_source(Arc::new(FromTransport(status)));
    named
}

/// What a tonic channel's error to `address` means to a gRPC caller (see
/// [`at_backend`]).
pub(crate) fn transport_status(
    address: &str,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> tonic::Status {
    let error = error.into();
    let status = match error.downcast::<tonic::Status>() {
        Ok(s) => *s,
        // Keep tonic's reading of the error (its code for HTTP/2 resets,
        // keep-alive timeouts and connect errors) with the error as source.
        Err(e) => match tonic::Status::try_from_error(e) {
            Ok(s) => s,
            Err(e) => {
                let mut s = tonic::Status::unknown(e.to_string());
                s.set_source(Arc::from(e));
                s
            }
        },
    };
    at_backend(address, status)
}

/// Why a cluster call failed.
///
/// A `ClusterError<tonic::Status>` converts into the `tonic::Status` to
/// return from a server handler (`?` does it).
///
/// ```
/// use lb_client::{cluster::ClusterError, NoPick};
/// fn explain(e: &ClusterError<tonic::Status>) -> String {
///     match e {
///         ClusterError::NoPick(NoPick::Dropped) => "shed by the balancer: back off".into(),
///         ClusterError::Call { error, instance, .. } => {
///             format!("{instance}: {}", error.message())
///         }
///         other => other.to_string(),
///     }
/// }
/// let error = tonic::Status::unavailable("draining");
/// let e = ClusterError::Call { error, attempts: 3, instance: "b2".into() };
/// assert_eq!(explain(&e), "b2: draining");
/// assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
/// ```
#[derive(Debug)]
pub enum ClusterError<E> {
    /// No instance for the first attempt: an empty list, or a drop entry (the
    /// balancer is shedding load; drops are never retried elsewhere).
    NoPick(NoPick),
    /// The last attempt's error.
    Call {
        /// The error.
        error: E,
        /// Attempts started.
        attempts: u32,
        /// The instance that returned `error` (its id, or its address when it
        /// has no id).
        instance: String,
    },
    /// A retry (or hedge) was wanted but the retry budget refused it.
    BudgetExhausted {
        /// The last attempt's error.
        error: E,
        /// Attempts started.
        attempts: u32,
    },
    /// Too many broadcast attempts failed.
    Broadcast {
        /// Instances that failed.
        failed: usize,
        /// Instances called.
        total: usize,
    },
    /// The service's default deadline passed before the call ended (the
    /// daemon's `ctl set-cluster --deadline`); every attempt was cancelled.
    /// Raise the deadline there, or bound the call yourself with a longer
    /// timeout.
    DeadlineExceeded {
        /// The deadline.
        after: std::time::Duration,
    },
}

impl<E> ClusterError<E> {
    /// The underlying call error, if any.
    ///
    /// ```
    /// use lb_client::{cluster::ClusterError, NoPick};
    /// let error = tonic::Status::unavailable("down");
    /// let failed = ClusterError::BudgetExhausted { error, attempts: 1 };
    /// assert_eq!(failed.error().map(|s| s.code()), Some(tonic::Code::Unavailable));
    /// assert!(ClusterError::<tonic::Status>::NoPick(NoPick::Empty).error().is_none());
    /// ```
    pub fn error(&self) -> Option<&E> {
        match self {
            ClusterError::Call { error, .. } | ClusterError::BudgetExhausted { error, .. } => {
                Some(error)
            }
            ClusterError::NoPick(_)
            | ClusterError::Broadcast { .. }
            | ClusterError::DeadlineExceeded { .. } => None,
        }
    }

    /// The underlying call error, if any, by value.
    ///
    /// ```
    /// use lb_client::cluster::ClusterError;
    /// let e = ClusterError::Call { error: "out of stock", attempts: 1, instance: "b1".into() };
    /// assert_eq!(e.into_error(), Some("out of stock"));
    /// ```
    pub fn into_error(self) -> Option<E> {
        match self {
            ClusterError::Call { error, .. } | ClusterError::BudgetExhausted { error, .. } => {
                Some(error)
            }
            ClusterError::NoPick(_)
            | ClusterError::Broadcast { .. }
            | ClusterError::DeadlineExceeded { .. } => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for ClusterError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::NoPick(n) => write!(f, "no instance: {n}"),
            ClusterError::Call {
                error,
                attempts,
                instance,
            } => write!(
                f,
                "call failed after {attempts} attempt(s), last on {instance}: {error}"
            ),
            ClusterError::BudgetExhausted { error, attempts } => write!(
                f,
                "retry budget exhausted after {attempts} attempt(s): {error}"
            ),
            ClusterError::Broadcast { failed, total } => {
                write!(f, "broadcast failed on {failed} of {total} instances")
            }
            ClusterError::DeadlineExceeded { after } => write!(
                f,
                "deadline exceeded (the service's default deadline, {}ms)",
                after.as_millis()
            ),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> std::error::Error for ClusterError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::NoPick(n) => Some(n),
            _ => None,
        }
    }
}

impl From<ClusterError<tonic::Status>> for tonic::Status {
    /// Call errors pass through; a passed deadline is `DEADLINE_EXCEEDED`; no
    /// instance and broadcast failures become `UNAVAILABLE`.
    fn from(e: ClusterError<tonic::Status>) -> Self {
        match e {
            ClusterError::Call { error, .. } | ClusterError::BudgetExhausted { error, .. } => error,
            e @ ClusterError::DeadlineExceeded { .. } => {
                tonic::Status::deadline_exceeded(e.to_string())
            }
            other => tonic::Status::unavailable(other.to_string()),
        }
    }
}

/// Every instance's result of a [`broadcast`].
///
/// From [`broadcast`], [`crate::Subscription::broadcast`] and
/// [`crate::Subscription::multicast`]:
///
/// ```
/// use std::sync::Arc;
/// use lb_client::{cluster::BroadcastReport, Endpoint};
/// let b1 = Arc::new(Endpoint::new("b1", "10.0.0.5:50051"));
/// let b2 = Arc::new(Endpoint::new("b2", "10.0.0.6:50051"));
/// let report = BroadcastReport { results: vec![(b1, Err("cache busy")), (b2, Ok(7))] };
/// for (ep, result) in &report.results {
///     println!("{}: {result:?}", ep.instance_id());
/// }
/// assert_eq!(report.failed(), 1);
/// ```
#[derive(Debug)]
pub struct BroadcastReport<T, E> {
    /// One per instance, in endpoint order ([`Picker::all`]).
    pub results: Vec<(Arc<Endpoint>, Result<T, E>)>,
}

impl<T, E> BroadcastReport<T, E> {
    /// Instances that failed.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lb_client::{cluster::BroadcastReport, Endpoint};
    /// let ep = Arc::new(Endpoint::new("b1", "10.0.0.5:50051"));
    /// let report = BroadcastReport { results: vec![(ep.clone(), Ok(())), (ep, Err("timeout"))] };
    /// assert_eq!(report.failed(), 1);
    /// ```
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_err()).count()
    }

    /// The first `Ok` answer in endpoint order.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lb_client::{cluster::BroadcastReport, Endpoint};
    /// let ep = Arc::new(Endpoint::new("b1", "10.0.0.5:50051"));
    /// let results = vec![(ep.clone(), Err("timeout")), (ep, Ok("v2"))];
    /// let report = BroadcastReport { results };
    /// assert_eq!(report.into_first_ok(), Some("v2"));
    /// ```
    pub fn into_first_ok(self) -> Option<T> {
        self.results.into_iter().find_map(|(_, r)| r.ok())
    }
}

/// The name of an instance in errors: its id, or its address without one.
fn instance_name(ep: &Endpoint) -> String {
    if ep.instance_id().is_empty() {
        ep.address().to_owned()
    } else {
        ep.instance_id().to_owned()
    }
}

/// An attempt that has not finished: dropped (a deadline around the call, a
/// hedge that lost), it stops counting as in flight on its endpoint.
struct Unfinished<'a>(Option<&'a Endpoint>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(ep) = self.0 {
            ep.abandon();
        }
    }
}

/// Runs one attempt and reports its outcome. If this future is dropped before
/// the attempt finishes, nothing is reported (and the endpoint no longer
/// counts the attempt as in flight).
async fn attempt<P, T, E, Fut>(
    picker: &P,
    ep: Arc<Endpoint>,
    fut: Fut,
) -> (Arc<Endpoint>, Result<T, E>)
where
    P: Picker + ?Sized,
    E: CallError,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut unfinished = Unfinished(Some(&ep));
    let r = fut.await.map_err(|e| e.at_endpoint(&ep));
    unfinished.0 = None;
    drop(unfinished);
    let latency = start.elapsed();
    let outcome = match &r {
        Ok(_) => Outcome::success(latency),
        Err(e) => Outcome::failure(e.code().unwrap_or(Code::Unknown), latency),
    };
    picker.report(&ep, outcome);
    (ep, r)
}

/// One logical call under `mode`: `f` runs one attempt against the endpoint it
/// is given. Deposits once into `budget`; every retry or extra hedge withdraws
/// from it.
///
/// For [`Mode::Broadcast`] and [`Mode::Multicast`] (whose picker holds the
/// rule's instances), waits for every instance, then returns according to
/// [`Broadcast::collect`] or [`ClusterError::Broadcast`].
///
/// [`crate::Subscription::call`] runs this over its current list; call it
/// directly with a [`Picker`] of your own:
///
/// ```
/// use lb_client::{cluster, Mode, RetryBudget};
/// # use std::sync::Arc;
/// # use lb_client::{cluster::{tried_contains, Picker}, Endpoint, NoPick, Outcome};
/// # struct Fixed(Vec<Arc<Endpoint>>);
/// # impl Fixed {
/// #     fn new(addresses: &[&str]) -> Fixed {
/// #         Fixed(addresses.iter().map(|a| Arc::new(Endpoint::new(*a, *a))).collect())
/// #     }
/// # }
/// # impl Picker for Fixed {
/// #     fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
/// #         self.0.iter().find(|ep| !tried_contains(tried, ep)).cloned().ok_or(NoPick::Empty)
/// #     }
/// #     fn all(&self) -> Vec<Arc<Endpoint>> { self.0.clone() }
/// #     fn report(&self, _: &Endpoint, _: Outcome) {}
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let picker = Fixed::new(&["10.0.0.5:50051", "10.0.0.6:50051"]); // see Picker
/// let budget = RetryBudget::default();
/// let reply = cluster::call(&picker, &Mode::default(), &budget, |ep| async move {
///     if ep.address() == "10.0.0.5:50051" {
///         return Err(tonic::Status::unavailable("draining")); // failover tries the next one
///     }
///     Ok(format!("served by {}", ep.address()))
/// })
/// .await?;
/// assert_eq!(reply, "served by 10.0.0.6:50051");
/// # Ok(()) }
/// ```
pub async fn call<P, T, E, F, Fut>(
    picker: &P,
    mode: &Mode,
    budget: &RetryBudget,
    f: F,
) -> Result<T, ClusterError<E>>
where
    P: Picker + ?Sized,
    T: Default,
    E: CallError,
    F: FnMut(Arc<Endpoint>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    call_with(picker, mode, budget, &|| true, f).await
}

/// [`call`], where `more` says whether an attempt beyond the first may start
/// now: it is asked before every retry and before hedging (and a retry or
/// hedge it refuses costs no budget), and a broadcast or multicast it
/// refuses at the start makes one attempt, as [`Mode::Failfast`] does.
/// [`crate::LbChannel`] refuses when the request body cannot be sent again
/// (still streaming, or larger than it keeps) or the deadline has passed.
///
/// ```
/// use lb_client::{cluster::{self, ClusterError}, Mode, RetryBudget};
/// # use std::sync::Arc;
/// # use lb_client::{cluster::{tried_contains, Picker}, Endpoint, NoPick, Outcome};
/// # struct Fixed(Vec<Arc<Endpoint>>);
/// # impl Fixed {
/// #     fn new(addresses: &[&str]) -> Fixed {
/// #         Fixed(addresses.iter().map(|a| Arc::new(Endpoint::new(*a, *a))).collect())
/// #     }
/// # }
/// # impl Picker for Fixed {
/// #     fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
/// #         self.0.iter().find(|ep| !tried_contains(tried, ep)).cloned().ok_or(NoPick::Empty)
/// #     }
/// #     fn all(&self) -> Vec<Arc<Endpoint>> { self.0.clone() }
/// #     fn report(&self, _: &Endpoint, _: Outcome) {}
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let picker = Fixed::new(&["10.0.0.5:50051", "10.0.0.6:50051"]); // see Picker
/// let (mode, budget) = (Mode::default(), RetryBudget::default()); // failover: 3 attempts
/// let more = || false; // e.g. the request cannot be sent again
/// let failing = |_ep| async { Err::<(), _>(tonic::Status::unavailable("draining")) };
/// let r = cluster::call_with(&picker, &mode, &budget, &more, failing).await;
/// assert!(matches!(r, Err(ClusterError::Call { attempts: 1, .. })));
/// # }
/// ```
pub async fn call_with<P, T, E, F, Fut>(
    picker: &P,
    mode: &Mode,
    budget: &RetryBudget,
    more: &(dyn Fn() -> bool + Sync),
    mut f: F,
) -> Result<T, ClusterError<E>>
where
    P: Picker + ?Sized,
    T: Default,
    E: CallError,
    F: FnMut(Arc<Endpoint>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    budget.deposit();
    match mode {
        Mode::Failover(cfg) => failover(picker, cfg, budget, more, f).await,
        Mode::Failfast => failfast(picker, f).await,
        Mode::Failsafe => {
            let ep = match picker.pick_untried(&[]) {
                Ok(ep) => ep,
                Err(no) => {
                    tracing::debug!(error = %no, "failsafe call: no instance, ignored");
                    return Ok(T::default());
                }
            };
            let fut = f(Arc::clone(&ep));
            match attempt(picker, ep, fut).await {
                (_, Ok(v)) => Ok(v),
                (ep, Err(e)) => {
                    tracing::debug!(
                        instance = %instance_name(&ep),
                        code = ?e.code(),
                        "failsafe call failed, ignored"
                    );
                    Ok(T::default())
                }
            }
        }
        Mode::Forking { forks } => {
            // Hedges need a request that can be sent again.
            let k = if more() { (*forks).max(1) } else { 1 };
            forking(picker, k, budget, f).await
        }
        Mode::Broadcast(_) | Mode::Multicast { .. } if !more() => failfast(picker, f).await,
        Mode::Broadcast(cfg) | Mode::Multicast { broadcast: cfg, .. } => {
            let report = broadcast(picker, cfg, f).await?;
            Ok(match cfg.collect {
                Collect::First | Collect::All => report.into_first_ok().unwrap_or_default(),
                Collect::None => T::default(),
            })
        }
    }
}

/// One attempt; its error is the call's.
async fn failfast<P, T, E, F, Fut>(picker: &P, mut f: F) -> Result<T, ClusterError<E>>
where
    P: Picker + ?Sized,
    E: CallError,
    F: FnMut(Arc<Endpoint>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let ep = picker.pick_untried(&[]).map_err(ClusterError::NoPick)?;
    let fut = f(Arc::clone(&ep));
    let (ep, r) = attempt(picker, ep, fut).await;
    r.map_err(|error| ClusterError::Call {
        error,
        attempts: 1,
        instance: instance_name(&ep),
    })
}

async fn failover<P, T, E, F, Fut>(
    picker: &P,
    cfg: &Failover,
    budget: &RetryBudget,
    more: &(dyn Fn() -> bool + Sync),
    mut f: F,
) -> Result<T, ClusterError<E>>
where
    P: Picker + ?Sized,
    E: CallError,
    F: FnMut(Arc<Endpoint>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let max_attempts = cfg.attempts.max(1);
    let backoff = Backoff {
        initial: cfg.backoff,
        max: cfg.backoff_max,
        multiplier: 2.0,
    };
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut ep = picker.pick_untried(&tried).map_err(ClusterError::NoPick)?;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let fut = f(Arc::clone(&ep));
        let error = match attempt(picker, ep, fut).await {
            (_, Ok(v)) => return Ok(v),
            (failed, Err(error)) => {
                ep = failed;
                error
            }
        };
        let retryable = error.code().is_some_and(|c| cfg.retry_on.contains(&c));
        if !retryable || attempts >= max_attempts || !more() {
            return Err(ClusterError::Call {
                error,
                attempts,
                instance: instance_name(&ep),
            });
        }
        tried.push(Arc::clone(&ep));
        // Pick before withdrawing: with no other instance there is no retry,
        // so neither a token nor a backoff is spent. Any NoPick here (all
        // tried, or a drop entry: the balancer sheds the retry) ends the call
        // with the last error.
        let next = match picker.pick_untried(&tried) {
            Ok(next) => next,
            Err(_) => {
                return Err(ClusterError::Call {
                    error,
                    attempts,
                    instance: instance_name(&ep),
                })
            }
        };
        if !budget.try_withdraw() {
            return Err(ClusterError::BudgetExhausted { error, attempts });
        }
        // The thread RNG is not held across the await (the future stays Send).
        let delay = backoff.delay(attempts - 1, &mut rand::rng());
        tracing::debug!(
            failed = %instance_name(&ep),
            next = %instance_name(&next),
            code = ?error.code(),
            ?delay,
            attempt = attempts + 1,
            "failover: retrying on another instance"
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        ep = next;
    }
}

async fn forking<P, T, E, F, Fut>(
    picker: &P,
    k: u32,
    budget: &RetryBudget,
    mut f: F,
) -> Result<T, ClusterError<E>>
where
    P: Picker + ?Sized,
    E: CallError,
    F: FnMut(Arc<Endpoint>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let first = picker.pick_untried(&[]).map_err(ClusterError::NoPick)?;
    let mut tried = vec![first];
    let mut refused = false;
    while tried.len() < k as usize {
        // Fewer instances than k (or a drop entry): hedge on what we have.
        let Ok(ep) = picker.pick_untried(&tried) else {
            break;
        };
        if !budget.try_withdraw() {
            refused = true;
            break;
        }
        tried.push(ep);
    }
    let mut running: FuturesUnordered<_> = tried
        .into_iter()
        .map(|ep| {
            let fut = f(Arc::clone(&ep));
            attempt(picker, ep, fut)
        })
        .collect();
    let attempts = u32::try_from(running.len()).unwrap_or(u32::MAX);
    let mut last = None;
    while let Some((ep, r)) = running.next().await {
        match r {
            // Returning drops `running`, which cancels the other attempts.
            Ok(v) => return Ok(v),
            Err(e) => last = Some((ep, e)),
        }
    }
    match last {
        Some((_, error)) if refused => Err(ClusterError::BudgetExhausted { error, attempts }),
        Some((ep, error)) => Err(ClusterError::Call {
            error,
            attempts,
            instance: instance_name(&ep),
        }),
        // At least one attempt ran, so this is unreachable; be total anyway.
        None => Err(ClusterError::NoPick(NoPick::Empty)),
    }
}

/// Calls every instance ([`Picker::all`]) concurrently and waits for all of
/// them. Fails with [`ClusterError::Broadcast`] when
/// `failed × 100 > max_failure_percent × total`, with
/// `ClusterError::NoPick(NoPick::Empty)` when there is no instance.
///
/// The attempts run inside this future (no `tokio::spawn`): dropping it cancels
/// every attempt still running.
///
/// ```
/// use lb_client::{cluster, Broadcast, Collect};
/// # use std::sync::Arc;
/// # use lb_client::{cluster::{tried_contains, Picker}, Endpoint, NoPick, Outcome};
/// # struct Fixed(Vec<Arc<Endpoint>>);
/// # impl Fixed {
/// #     fn new(addresses: &[&str]) -> Fixed {
/// #         Fixed(addresses.iter().map(|a| Arc::new(Endpoint::new(*a, *a))).collect())
/// #     }
/// # }
/// # impl Picker for Fixed {
/// #     fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
/// #         self.0.iter().find(|ep| !tried_contains(tried, ep)).cloned().ok_or(NoPick::Empty)
/// #     }
/// #     fn all(&self) -> Vec<Arc<Endpoint>> { self.0.clone() }
/// #     fn report(&self, _: &Endpoint, _: Outcome) {}
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let picker = Fixed::new(&["10.0.0.5:50051", "10.0.0.6:50051"]); // see Picker
/// let cfg = Broadcast { collect: Collect::All, max_failure_percent: 50 };
/// let report = cluster::broadcast(&picker, &cfg, |ep| async move {
///     match ep.address() {
///         "10.0.0.5:50051" => Ok("flushed"),
///         _ => Err(tonic::Status::unavailable("draining")),
///     }
/// })
/// .await?; // one of two failed: within 50 %
/// assert_eq!((report.failed(), report.into_first_ok()), (1, Some("flushed")));
/// # Ok(()) }
/// ```
pub async fn broadcast<P, T, E, F, Fut>(
    picker: &P,
    cfg: &Broadcast,
    mut f: F,
) -> Result<BroadcastReport<T, E>, ClusterError<E>>
where
    P: Picker + ?Sized,
    E: CallError,
    F: FnMut(Arc<Endpoint>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let endpoints = picker.all();
    let total = endpoints.len();
    if total == 0 {
        return Err(ClusterError::NoPick(NoPick::Empty));
    }
    let mut running: FuturesUnordered<_> = endpoints
        .into_iter()
        .enumerate()
        .map(|(i, ep)| {
            let fut = f(Arc::clone(&ep));
            let a = attempt(picker, ep, fut);
            async move { (i, a.await) }
        })
        .collect();
    let mut done = Vec::with_capacity(total);
    while let Some(d) = running.next().await {
        done.push(d);
    }
    // Back to endpoint order.
    done.sort_unstable_by_key(|(i, _)| *i);
    let results: Vec<_> = done.into_iter().map(|(_, r)| r).collect();
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    let allowed = u64::from(cfg.max_failure_percent.min(100)) * total as u64;
    if failed as u64 * 100 > allowed {
        return Err(ClusterError::Broadcast { failed, total });
    }
    Ok(BroadcastReport { results })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BudgetConfig;
    use lb_core::status::Code as LbCode;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::time::sleep;
    use tonic::{Code, Status};

    /// Round robin over a fixed list, recording reports.
    struct TestPicker {
        eps: Vec<Arc<Endpoint>>,
        cursor: AtomicUsize,
        reports: Mutex<Vec<(String, Outcome)>>,
    }

    impl TestPicker {
        fn new(ids: &[&str]) -> Self {
            TestPicker::with(
                ids.iter()
                    .map(|id| {
                        if *id == "DROP" {
                            Endpoint::drop_entry()
                        } else {
                            Endpoint::new(*id, format!("{id}:80"))
                        }
                    })
                    .collect(),
            )
        }

        fn with(eps: Vec<Endpoint>) -> Self {
            TestPicker {
                eps: eps.into_iter().map(Arc::new).collect(),
                cursor: AtomicUsize::new(0),
                reports: Mutex::new(Vec::new()),
            }
        }

        fn reports(&self) -> Vec<(String, bool)> {
            self.reports
                .lock()
                .unwrap()
                .iter()
                .map(|(id, o)| (id.clone(), o.is_ok()))
                .collect()
        }

        fn latencies(&self) -> Vec<Duration> {
            self.reports
                .lock()
                .unwrap()
                .iter()
                .map(|(_, o)| o.latency)
                .collect()
        }
    }

    impl Picker for TestPicker {
        fn pick_untried(&self, tried: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
            for _ in 0..self.eps.len() {
                let i = self.cursor.fetch_add(1, SeqCst) % self.eps.len();
                let ep = &self.eps[i];
                if ep.is_drop() {
                    return Err(NoPick::Dropped);
                }
                if !tried_contains(tried, ep) {
                    return Ok(Arc::clone(ep));
                }
            }
            Err(NoPick::Empty)
        }

        fn all(&self) -> Vec<Arc<Endpoint>> {
            self.eps.iter().filter(|e| !e.is_drop()).cloned().collect()
        }

        fn report(&self, ep: &Endpoint, outcome: Outcome) {
            self.reports
                .lock()
                .unwrap()
                .push((ep.instance_id().to_owned(), outcome));
        }
    }

    /// Flips its flag when dropped (finished or cancelled).
    struct DropGuard(Arc<AtomicBool>);

    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }

    fn failover(attempts: u32) -> Mode {
        Mode::Failover(Failover {
            attempts,
            ..Failover::default()
        })
    }

    fn budget() -> RetryBudget {
        RetryBudget::new(BudgetConfig::default())
    }

    /// Records which instances were called, in order.
    fn log() -> Arc<Mutex<Vec<String>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    fn calls(log: &Mutex<Vec<String>>) -> Vec<String> {
        log.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn failover_retries_on_another_instance_and_succeeds() {
        let p = TestPicker::new(&["a", "b", "c"]);
        let seen = log();
        let r: Result<String, _> = call(&p, &failover(3), &budget(), |ep| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(ep.instance_id().to_owned());
                sleep(Duration::from_millis(5)).await;
                if ep.instance_id() == "a" {
                    Err(Status::unavailable("down"))
                } else {
                    Ok(format!("from {}", ep.instance_id()))
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), "from b");
        assert_eq!(calls(&seen), ["a", "b"]);
        assert_eq!(p.reports(), [("a".into(), false), ("b".into(), true)]);
        assert_eq!(p.latencies(), [Duration::from_millis(5); 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn failover_never_reuses_an_instance_and_stops_after_attempts() {
        // a appears twice in order; the retry must skip it.
        let p = TestPicker::new(&["a", "a", "b", "c", "d"]);
        let seen = log();
        let r: Result<(), _> = call(&p, &failover(3), &budget(), |ep| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(ep.instance_id().to_owned());
                Err(Status::unavailable(ep.instance_id().to_owned()))
            }
        })
        .await;
        assert_eq!(calls(&seen), ["a", "b", "c"]);
        match r.unwrap_err() {
            ClusterError::Call {
                error,
                attempts,
                instance,
            } => {
                assert_eq!((attempts, instance.as_str()), (3, "c"));
                assert_eq!(error.message(), "c");
            }
            e => panic!("unexpected {e}"),
        }
        assert_eq!(p.reports().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failover_stops_when_every_instance_was_tried() {
        let p = TestPicker::new(&["a", "b"]);
        let n = AtomicUsize::new(0);
        let r: Result<(), _> = call(&p, &failover(5), &budget(), |_| {
            n.fetch_add(1, SeqCst);
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(n.load(SeqCst), 2);
        assert!(matches!(r, Err(ClusterError::Call { attempts: 2, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn failover_backs_off_between_attempts() {
        let p = TestPicker::new(&["a", "b", "c"]);
        let mode = Mode::Failover(Failover {
            attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(150),
            retry_on: vec![lb_core::status::Code::Unavailable],
        });
        let start = Instant::now();
        let r: Result<(), _> = call(&p, &mode, &budget(), |_| async {
            Err(Status::unavailable("x"))
        })
        .await;
        assert!(r.is_err());
        // Full jitter: at most 100 ms then 150 ms (capped).
        assert!(start.elapsed() <= Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn failover_does_not_retry_other_codes() {
        let p = TestPicker::new(&["a", "b"]);
        let n = AtomicUsize::new(0);
        let r: Result<(), _> = call(&p, &failover(3), &budget(), |_| {
            n.fetch_add(1, SeqCst);
            async { Err(Status::invalid_argument("bad")) }
        })
        .await;
        assert_eq!(n.load(SeqCst), 1);
        match r.unwrap_err() {
            ClusterError::Call {
                error, attempts, ..
            } => {
                assert_eq!(error.code(), Code::InvalidArgument);
                assert_eq!(attempts, 1);
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failover_retries_configured_codes() {
        let p = TestPicker::new(&["a", "b"]);
        let mode = Mode::Failover(Failover {
            retry_on: vec![lb_core::status::Code::ResourceExhausted],
            ..Failover::default()
        });
        let r = call(&p, &mode, &budget(), |ep| async move {
            if ep.instance_id() == "a" {
                Err(Status::resource_exhausted("busy"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_pick_is_not_retried() {
        let n = AtomicUsize::new(0);
        for mode in [failover(3), Mode::Failfast, Mode::Forking { forks: 2 }] {
            // The drop entry comes first; b exists but must not be tried.
            let p = TestPicker::new(&["DROP", "b"]);
            let r: Result<u8, ClusterError<Status>> = call(&p, &mode, &budget(), |_| {
                n.fetch_add(1, SeqCst);
                async { Ok(1) }
            })
            .await;
            assert!(
                matches!(r, Err(ClusterError::NoPick(NoPick::Dropped))),
                "{mode:?}"
            );
            assert!(p.reports().is_empty());
        }
        assert_eq!(n.load(SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drop_entry_on_a_retry_ends_with_the_last_error() {
        let p = TestPicker::new(&["a", "DROP", "b"]);
        let n = AtomicUsize::new(0);
        let r: Result<(), _> = call(&p, &failover(3), &budget(), |_| {
            n.fetch_add(1, SeqCst);
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(n.load(SeqCst), 1);
        assert!(matches!(r, Err(ClusterError::Call { attempts: 1, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn empty_list_is_no_pick() {
        let p = TestPicker::new(&[]);
        for mode in [failover(3), Mode::Failfast, Mode::Forking { forks: 3 }] {
            let r: Result<(), ClusterError<Status>> =
                call(&p, &mode, &budget(), |_| async { Ok(()) }).await;
            assert!(matches!(r, Err(ClusterError::NoPick(NoPick::Empty))));
        }
        let r: Result<(), ClusterError<Status>> = call(
            &p,
            &Mode::Broadcast(Broadcast::default()),
            &budget(),
            |_| async { Ok(()) },
        )
        .await;
        assert!(matches!(r, Err(ClusterError::NoPick(NoPick::Empty))));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_caps_retries_and_refills_after_ttl() {
        let p = TestPicker::new(&["a", "b", "c"]);
        let b = RetryBudget::new(BudgetConfig {
            percent: 0.2,
            min_per_sec: 1,
            ttl: Duration::from_secs(10),
        });
        let mode = Mode::Failover(Failover {
            attempts: 3,
            backoff: Duration::ZERO,
            backoff_max: Duration::ZERO,
            retry_on: vec![lb_core::status::Code::Unavailable],
        });
        let attempts = AtomicUsize::new(0);
        let mut exhausted = 0;
        let run = || async {
            call(&p, &mode, &b, |_| {
                attempts.fetch_add(1, SeqCst);
                async { Err::<(), _>(Status::unavailable("down")) }
            })
            .await
        };
        for _ in 0..100 {
            match run().await {
                Err(ClusterError::BudgetExhausted { .. }) => exhausted += 1,
                Err(ClusterError::Call { attempts: 3, .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let retries = attempts.load(SeqCst) - 100;
        // percent × requests + min_per_sec × ttl = 20 + 10.
        assert_eq!(retries, 30);
        assert!(exhausted >= 85, "{exhausted}");
        assert_eq!(b.balance(), 0);
        let before = attempts.load(SeqCst);
        assert!(matches!(
            run().await,
            Err(ClusterError::BudgetExhausted { attempts: 1, .. })
        ));
        assert_eq!(attempts.load(SeqCst) - before, 1);

        // After ttl everything expired: the reserve is back.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.balance(), 10);
        let before = attempts.load(SeqCst);
        assert!(matches!(
            run().await,
            Err(ClusterError::Call { attempts: 3, .. })
        ));
        assert_eq!(attempts.load(SeqCst) - before, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failfast_makes_one_attempt() {
        let p = TestPicker::new(&["a", "b"]);
        let n = AtomicUsize::new(0);
        let r: Result<(), _> = call(&p, &Mode::Failfast, &budget(), |_| {
            n.fetch_add(1, SeqCst);
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(n.load(SeqCst), 1);
        match r.unwrap_err() {
            ClusterError::Call {
                attempts, instance, ..
            } => assert_eq!((attempts, instance.as_str()), (1, "a")),
            e => panic!("unexpected {e}"),
        }
        assert_eq!(p.reports(), [("a".into(), false)]);
        let ok = call(&p, &Mode::Failfast, &budget(), |ep| async move {
            Ok::<_, Status>(ep.instance_id().to_owned())
        })
        .await;
        assert_eq!(ok.unwrap(), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn failsafe_returns_default_on_error() {
        let p = TestPicker::new(&["a", "b"]);
        let n = AtomicUsize::new(0);
        let r: Result<Vec<u8>, ClusterError<Status>> = call(&p, &Mode::Failsafe, &budget(), |_| {
            n.fetch_add(1, SeqCst);
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(r.unwrap(), Vec::<u8>::new());
        assert_eq!(n.load(SeqCst), 1);
        assert_eq!(p.reports(), [("a".into(), false)]);
        let ok = call(&p, &Mode::Failsafe, &budget(), |_| async {
            Ok::<_, Status>(vec![1u8])
        })
        .await;
        assert_eq!(ok.unwrap(), [1]);
        let empty = TestPicker::new(&[]);
        let r: Result<u32, ClusterError<Status>> =
            call(&empty, &Mode::Failsafe, &budget(), |_| async { Ok(5) }).await;
        assert_eq!(r.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn forking_first_success_wins_and_losers_are_cancelled() {
        let p = TestPicker::new(&["slow", "fast", "other"]);
        let slow_dropped = Arc::new(AtomicBool::new(false));
        let slow_finished = Arc::new(AtomicBool::new(false));
        let started = log();
        let start = Instant::now();
        let r = call(&p, &Mode::Forking { forks: 2 }, &budget(), |ep| {
            // Only the slow attempt carries a guard.
            let guard = (ep.instance_id() == "slow").then(|| DropGuard(Arc::clone(&slow_dropped)));
            let finished = Arc::clone(&slow_finished);
            let started = Arc::clone(&started);
            async move {
                started.lock().unwrap().push(ep.instance_id().to_owned());
                if ep.instance_id() == "slow" {
                    let _guard = guard;
                    sleep(Duration::from_secs(1)).await;
                    finished.store(true, SeqCst);
                    Ok::<_, Status>("slow")
                } else {
                    sleep(Duration::from_millis(10)).await;
                    Ok("fast")
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), "fast");
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        let mut s = calls(&started);
        s.sort();
        assert_eq!(s, ["fast", "slow"]);
        assert!(slow_dropped.load(SeqCst), "the loser was dropped");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!slow_finished.load(SeqCst), "the loser never finished");
        // Only the winner was reported.
        assert_eq!(p.reports(), [("fast".into(), true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn forking_fails_only_when_all_fail() {
        let p = TestPicker::new(&["a", "b", "c"]);
        // One failure fast, the success later: still a success.
        let r = call(
            &p,
            &Mode::Forking { forks: 3 },
            &budget(),
            |ep| async move {
                match ep.instance_id() {
                    "a" => Err(Status::unavailable("a")),
                    "b" => {
                        sleep(Duration::from_millis(20)).await;
                        Ok(2)
                    }
                    _ => {
                        sleep(Duration::from_millis(50)).await;
                        Err(Status::unavailable("c"))
                    }
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(
            p.reports(),
            [("a".into(), false), ("b".into(), true)],
            "c was cancelled, not reported"
        );

        let p = TestPicker::new(&["a", "b", "c"]);
        let r: Result<(), _> = call(
            &p,
            &Mode::Forking { forks: 3 },
            &budget(),
            |ep| async move {
                let ms = match ep.instance_id() {
                    "a" => 30,
                    "b" => 10,
                    _ => 20,
                };
                sleep(Duration::from_millis(ms)).await;
                Err(Status::unavailable(ep.instance_id().to_owned()))
            },
        )
        .await;
        match r.unwrap_err() {
            ClusterError::Call {
                error,
                attempts,
                instance,
            } => {
                assert_eq!(attempts, 3);
                assert_eq!((instance.as_str(), error.message()), ("a", "a"));
            }
            e => panic!("unexpected {e}"),
        }
        assert_eq!(p.reports().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn forking_uses_distinct_instances_and_the_budget() {
        // Fewer instances than k: one attempt per instance.
        let p = TestPicker::new(&["a", "a", "b"]);
        let seen = log();
        let r: Result<(), _> = call(&p, &Mode::Forking { forks: 5 }, &budget(), |ep| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(ep.instance_id().to_owned());
                Err(Status::unavailable("x"))
            }
        })
        .await;
        assert!(matches!(r, Err(ClusterError::Call { attempts: 2, .. })));
        let mut s = calls(&seen);
        s.sort();
        assert_eq!(s, ["a", "b"]);

        // An empty budget allows no extra hedge.
        let p = TestPicker::new(&["a", "b", "c"]);
        let none = RetryBudget::new(BudgetConfig {
            percent: 0.0,
            min_per_sec: 0,
            ttl: Duration::from_secs(10),
        });
        let n = AtomicUsize::new(0);
        let r: Result<(), _> = call(&p, &Mode::Forking { forks: 3 }, &none, |_| {
            n.fetch_add(1, SeqCst);
            async { Err(Status::unavailable("x")) }
        })
        .await;
        assert_eq!(n.load(SeqCst), 1);
        assert!(matches!(
            r,
            Err(ClusterError::BudgetExhausted { attempts: 1, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_reaches_every_instance() {
        let p = TestPicker::new(&["a", "DROP", "b", "c"]);
        let cfg = Broadcast {
            collect: Collect::All,
            max_failure_percent: 50,
        };
        let report = broadcast(&p, &cfg, |ep| async move {
            // Finish in reverse order to show results keep endpoint order.
            let ms = match ep.instance_id() {
                "a" => 30,
                "b" => 20,
                _ => 10,
            };
            sleep(Duration::from_millis(ms)).await;
            if ep.instance_id() == "b" {
                Err(Status::internal("b broke"))
            } else {
                Ok(ep.instance_id().to_owned())
            }
        })
        .await
        .unwrap();
        let got: Vec<(&str, Result<&str, Code>)> = report
            .results
            .iter()
            .map(|(ep, r)| (ep.instance_id(), r.as_deref().map_err(|e| e.code())))
            .collect();
        assert_eq!(
            got,
            [("a", Ok("a")), ("b", Err(Code::Internal)), ("c", Ok("c")),]
        );
        assert_eq!(report.failed(), 1);
        let mut reports = p.reports();
        reports.sort();
        assert_eq!(
            reports,
            [("a".into(), true), ("b".into(), false), ("c".into(), true)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_failure_threshold() {
        let p = TestPicker::new(&["a", "b", "c", "d"]);
        let cfg = Broadcast {
            collect: Collect::None,
            max_failure_percent: 25,
        };
        let failing = |bad: &'static [&'static str]| {
            move |ep: Arc<Endpoint>| async move {
                if bad.contains(&ep.instance_id()) {
                    Err(Status::unavailable("down"))
                } else {
                    Ok(1u32)
                }
            }
        };
        let r = broadcast(&p, &cfg, failing(&["c"])).await.unwrap();
        assert_eq!(r.failed(), 1);
        assert_eq!(r.results.len(), 4);
        let r = broadcast(&p, &cfg, failing(&["b", "c"])).await;
        assert!(matches!(
            r,
            Err(ClusterError::Broadcast {
                failed: 2,
                total: 4
            })
        ));
        // Through `call`: Collect::None answers T::default().
        let m = Mode::Broadcast(cfg);
        assert_eq!(call(&p, &m, &budget(), failing(&["c"])).await.unwrap(), 0);
        // max 0 %: any failure fails.
        let strict = Mode::Broadcast(Broadcast {
            collect: Collect::First,
            max_failure_percent: 0,
        });
        assert!(matches!(
            call(&p, &strict, &budget(), failing(&["d"])).await,
            Err(ClusterError::Broadcast {
                failed: 1,
                total: 4
            })
        ));
        assert_eq!(call(&p, &strict, &budget(), failing(&[])).await.unwrap(), 1);
        // max 100 %: never fails.
        let lax = Mode::Broadcast(Broadcast {
            collect: Collect::First,
            max_failure_percent: 100,
        });
        assert_eq!(
            call(&p, &lax, &budget(), failing(&["a", "b", "c", "d"]))
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_call_returns_first_ok_in_endpoint_order() {
        let p = TestPicker::new(&["a", "b", "c"]);
        let m = Mode::Broadcast(Broadcast {
            collect: Collect::First,
            max_failure_percent: 50,
        });
        let r = call(&p, &m, &budget(), |ep| async move {
            let ms = if ep.instance_id() == "c" { 1 } else { 10 };
            sleep(Duration::from_millis(ms)).await;
            if ep.instance_id() == "a" {
                Err(Status::unavailable("a"))
            } else {
                Ok(ep.instance_id().to_owned())
            }
        })
        .await;
        assert_eq!(r.unwrap(), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_broadcast_cancels_every_attempt() {
        let p = TestPicker::new(&["a", "b", "c", "d"]);
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let flags: Vec<Arc<AtomicBool>> =
            (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let mut next = 0;
        let cfg = Broadcast::default();
        let fut = broadcast(&p, &cfg, |ep| {
            let guard = DropGuard(Arc::clone(&flags[next]));
            next += 1;
            let started = Arc::clone(&started);
            let finished = Arc::clone(&finished);
            async move {
                let _guard = guard;
                started.fetch_add(1, SeqCst);
                // "a" answers quickly, the others hang.
                let ms = if ep.instance_id() == "a" { 1 } else { 60_000 };
                sleep(Duration::from_millis(ms)).await;
                finished.fetch_add(1, SeqCst);
                Ok::<_, Status>(())
            }
        });
        tokio::select! {
            _ = fut => panic!("the broadcast should still be waiting"),
            _ = sleep(Duration::from_millis(100)) => {}
        }
        // The select dropped the broadcast future.
        assert_eq!(started.load(SeqCst), 4);
        assert_eq!(finished.load(SeqCst), 1);
        assert!(
            flags.iter().all(|f| f.load(SeqCst)),
            "every attempt dropped"
        );
        tokio::time::advance(Duration::from_secs(120)).await;
        tokio::task::yield_now().await;
        assert_eq!(finished.load(SeqCst), 1, "nothing kept running");
        assert_eq!(p.reports(), [("a".into(), true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_once_per_call() {
        let p = TestPicker::new(&["a", "b", "c"]);
        let b = RetryBudget::new(BudgetConfig {
            percent: 1.0,
            min_per_sec: 0,
            ttl: Duration::from_secs(10),
        });
        let r = call(&p, &failover(3), &b, |ep| async move {
            if ep.instance_id() == "c" {
                Ok(())
            } else {
                Err(Status::unavailable("x"))
            }
        })
        .await;
        // One deposit (1 retry's worth), then the first retry took it and the
        // second found the budget empty.
        assert!(matches!(
            r,
            Err(ClusterError::BudgetExhausted { attempts: 2, .. })
        ));
        assert_eq!(b.balance(), 0);
    }

    #[test]
    fn call_future_is_send() {
        fn check<F: Future + Send>(_: &F) {}
        let p = TestPicker::new(&["a"]);
        let b = RetryBudget::unlimited();
        let dynp: &dyn Picker = &p;
        for mode in [Mode::default(), Mode::Forking { forks: 2 }] {
            let fut = call(dynp, &mode, &b, |_| async { Ok::<u8, Status>(1) });
            check(&fut);
        }
    }

    #[test]
    fn errors_display_and_convert() {
        let e: ClusterError<Status> = ClusterError::Call {
            error: Status::unavailable("down"),
            attempts: 2,
            instance: "a".into(),
        };
        assert!(e.to_string().contains("2 attempt(s), last on a"));
        assert_eq!(e.error().map(|s| s.code()), Some(Code::Unavailable));
        let s: Status = ClusterError::<Status>::NoPick(NoPick::Dropped).into();
        assert_eq!(s.code(), Code::Unavailable);
        let boxed: Box<dyn std::error::Error> = Box::new(ClusterError::<Status>::Broadcast {
            failed: 2,
            total: 4,
        });
        assert_eq!(boxed.to_string(), "broadcast failed on 2 of 4 instances");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_second_attempt_costs_nothing() {
        let no = || false;
        let b = RetryBudget::new(BudgetConfig {
            percent: 0.0,
            min_per_sec: 1,
            ttl: Duration::from_secs(10),
        });
        let before = b.balance();
        for mode in [
            failover(3),
            Mode::Forking { forks: 3 },
            Mode::Broadcast(Broadcast::default()),
        ] {
            let p = TestPicker::new(&["a", "b", "c"]);
            let n = AtomicUsize::new(0);
            let r: Result<(), _> = call_with(&p, &mode, &b, &no, |_| {
                n.fetch_add(1, SeqCst);
                async { Err(Status::unavailable("down")) }
            })
            .await;
            assert_eq!(n.load(SeqCst), 1, "{mode}");
            assert!(
                matches!(r, Err(ClusterError::Call { attempts: 1, .. })),
                "{mode}: {r:?}"
            );
            assert_eq!(p.reports(), [("a".into(), false)], "{mode}");
        }
        assert_eq!(b.balance(), before, "no retry token spent");
    }

    #[tokio::test(start_paused = true)]
    async fn more_is_asked_before_each_retry() {
        let p = TestPicker::new(&["a", "b", "c"]);
        let asked = AtomicUsize::new(0);
        // Allows one retry, then refuses.
        let more = || asked.fetch_add(1, SeqCst) == 0;
        let r: Result<(), _> = call_with(&p, &failover(3), &budget(), &more, |_| async {
            Err(Status::unavailable("down"))
        })
        .await;
        assert!(matches!(r, Err(ClusterError::Call { attempts: 2, .. })));
        assert_eq!(asked.load(SeqCst), 2);
    }

    /// A status tonic makes from an I/O error, as from a broken connection.
    fn io_status(kind: std::io::ErrorKind, text: &str) -> Status {
        Status::from_error(Box::new(std::io::Error::new(kind, text.to_owned())))
    }

    #[test]
    fn transport_failures_are_unavailable_and_name_the_backend() {
        let ep = Endpoint::new("a", "10.0.0.7:50051");
        let raw = io_status(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(raw.code(), Code::Unknown);
        assert_eq!(CallError::code(&raw), Some(LbCode::Unavailable));
        let s = raw.at_endpoint(&ep);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "backend 10.0.0.7:50051: connection refused");
        // Named once: a second pass changes nothing.
        let again = Status::new(s.code(), s.message()).at_endpoint(&ep);
        assert_eq!(again.message(), s.message());
        let s = s.at_endpoint(&ep);
        assert_eq!(s.message(), "backend 10.0.0.7:50051: connection refused");
        assert_eq!(CallError::code(&s), Some(LbCode::Unavailable));

        // Through a channel's error: tonic's "transport error" is dropped,
        // the chain kept.
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connection error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let reset = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "Connection reset by peer (os error 104)",
        ));
        let s = transport_status("h:1", reset);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(
            s.message(),
            "backend h:1: connection error: Connection reset by peer (os error 104)"
        );
        assert!(std::error::Error::source(&s).is_some(), "the cause is kept");
    }

    #[test]
    fn a_cut_deadline_is_deadline_exceeded_and_backend_statuses_pass() {
        let ep = Endpoint::new("a", "h:1");
        // tonic reports its own timeout as CANCELLED.
        let raw = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(raw.code(), Code::Cancelled);
        assert_eq!(CallError::code(&raw), Some(LbCode::DeadlineExceeded));
        let s = raw.at_endpoint(&ep);
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert_eq!(s.message(), "backend h:1: Timeout expired");
        // What a backend sent (no source) stays as sent, UNKNOWN included.
        for sent in [Status::unknown("boom"), Status::cancelled("stop")] {
            let code = sent.code();
            let s = sent.at_endpoint(&ep);
            assert_eq!((s.code(), s.message().is_empty()), (code, false));
            assert!(!s.message().contains("backend"));
        }
        // A status already carried whole passes through transport_status.
        let s = transport_status("h:1", Status::resource_exhausted("quota"));
        assert_eq!((s.code(), s.message()), (Code::ResourceExhausted, "quota"));
    }
}
