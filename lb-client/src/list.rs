//! The server list a client follows, and the pick hot path.
//!
//! A [`PickList`] is the daemon's decision for this client, already weighted and
//! rotated: `order` holds indices into the distinct `servers`, a server that
//! appears k times gets k shares, and a drop entry sheds that share of calls
//! locally. Picking is a plain round robin over `order` with an atomic cursor: no
//! lock, no allocation, no policy (the policy lives in the daemon).
//!
//! ```
//! use lb_client::{Endpoint, NoPick, PickList};
//! let servers = vec![Endpoint::new("b1", "10.0.0.5:50051"), Endpoint::drop_entry()];
//! let list = PickList::from_parts(1, servers, vec![0, 0, 1])?; // a third of the calls dropped
//! assert_eq!(list.pick()?.instance_id(), "b1");
//! assert_eq!(list.pick()?.instance_id(), "b1");
//! assert_eq!(list.pick().unwrap_err(), NoPick::Dropped);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Call outcomes are counted inside each [`Endpoint`] with atomics, so recording
//! an outcome needs no map lookup. When a new list arrives, [`PickList::adopt`]
//! reuses the `Arc<Endpoint>` of every unchanged server so its counters carry
//! over.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::cluster::ClusterConfig;
use lb_core::policy::bounded;
use lb_core::policy::choice::{self, Choices};
use lb_core::status::Code;

/// Up to this many servers, [`PickList::adopt`] matches by scanning.
const SMALL_LIST: usize = 16;

/// Why a list could not be built.
///
/// ```
/// use lb_client::{list::Error, Endpoint, PickList};
/// let err = PickList::from_parts(1, vec![Endpoint::new("b1", "10.0.0.5:50051")], vec![0, 1])
///     .unwrap_err();
/// assert_eq!(err, Error::OrderOutOfRange { position: 1, index: 1, servers: 1 });
/// assert_eq!(err.to_string(), "order[1] = 1 but the list has only 1 servers");
/// ```
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An `order` entry points past the end of `servers`: the daemon sent a
    /// malformed list. The client keeps its previous list; report it as a daemon bug.
    #[error("order[{position}] = {index} but the list has only {servers} servers")]
    OrderOutOfRange {
        /// Position in `order`.
        position: usize,
        /// The offending index.
        index: u32,
        /// Number of distinct servers in the list.
        servers: usize,
    },
    /// An `affinity` entry points past the end of `servers`: as above.
    #[error("affinity[{position}] = {index} but the list has only {servers} servers")]
    AffinityOutOfRange {
        /// Position in `affinity`.
        position: usize,
        /// The offending index.
        index: u32,
        /// Number of distinct servers in the list.
        servers: usize,
    },
}

/// Why [`PickList::pick`] returned no endpoint.
///
/// ```
/// use lb_client::{Endpoint, NoPick, PickList};
/// assert_eq!(PickList::empty().pick().unwrap_err(), NoPick::Empty);
/// // One call in two is shed locally while the daemon drops load:
/// let shedding = PickList::from_parts(
///     1,
///     vec![Endpoint::new("b1", "10.0.0.5:50051"), Endpoint::drop_entry()],
///     vec![0, 1],
/// )?;
/// assert!(shedding.pick().is_ok());
/// assert_eq!(shedding.pick().unwrap_err(), NoPick::Dropped); // do not retry it
/// # Ok::<(), lb_client::list::Error>(())
/// ```
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum NoPick {
    /// The list is empty: no backend is registered (or none is usable). Fail the
    /// call, or retry once the list changes.
    #[error("no backend in the list")]
    Empty,
    /// The pick landed on a drop entry: the daemon is shedding load. Fail the call
    /// locally without retrying elsewhere.
    #[error("dropped by balancer")]
    Dropped,
    /// The request matched a strict routing rule that selects no instance.
    #[error("the request's route matches no instance")]
    NoRoute,
}

/// The outcome of one call, reported back with [`crate::Subscription::report`].
///
/// ```
/// use std::time::Duration;
/// use lb_client::{Code, Outcome};
/// let ok = Outcome::success(Duration::from_millis(3));
/// let failed = Outcome::failure(Code::Unavailable, Duration::from_millis(40));
/// assert!(ok.is_ok() && !failed.is_ok());
/// assert_eq!(failed.code, Code::Unavailable);
/// // sub.report(&ep, ok): see Subscription::report.
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Time from sending the call to its response.
    pub latency: Duration,
    /// How it ended: [`Code::Ok`] for a success.
    pub code: Code,
}

impl Outcome {
    /// A successful call.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let start = Instant::now();
    /// // ... the call succeeds ...
    /// let outcome = lb_client::Outcome::success(start.elapsed());
    /// assert_eq!(outcome.code, lb_client::Code::Ok);
    /// ```
    pub fn success(latency: Duration) -> Outcome {
        Outcome {
            latency,
            code: Code::Ok,
        }
    }

    /// A failed call with status `code` (e.g. [`Code::Unavailable`]); a
    /// failure reported as OK counts as UNKNOWN.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_client::{cluster::code_of, Code, Outcome};
    /// let status = tonic::Status::deadline_exceeded("took too long");
    /// let outcome = Outcome::failure(code_of(status.code()), Duration::from_secs(2));
    /// assert_eq!(outcome.code, Code::DeadlineExceeded);
    /// assert_eq!(Outcome::failure(Code::Ok, Duration::ZERO).code, Code::Unknown);
    /// ```
    pub fn failure(code: Code, latency: Duration) -> Outcome {
        Outcome {
            latency,
            code: if code == Code::Ok {
                Code::Unknown
            } else {
                code
            },
        }
    }

    /// Whether the call succeeded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_client::{Code, Outcome};
    /// assert!(Outcome::success(Duration::from_millis(1)).is_ok());
    /// assert!(!Outcome::failure(Code::NotFound, Duration::from_millis(1)).is_ok());
    /// ```
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }
}

/// gRPC status codes, OK included.
///
/// The length of [`CallCounts::failed_by_code`], indexed by code number.
///
/// ```
/// use lb_client::{list::STATUS_CODES, Code, Endpoint};
/// assert_eq!(STATUS_CODES, 17); // OK (0) to UNAUTHENTICATED (16)
/// let counts = Endpoint::new("b1", "10.0.0.5:50051").counts();
/// assert_eq!(counts.failed_by_code.len(), STATUS_CODES);
/// assert_eq!(counts.failed_by_code[Code::Unavailable as usize], 0);
/// ```
pub const STATUS_CODES: usize = Code::ALL.len();

/// Call counters of one endpoint, as read by [`Endpoint::counts`].
///
/// ```
/// use std::time::Duration;
/// use lb_client::{Code, Outcome};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Offline: starts on the fallback list, returns at once, and the
/// # // subscription's task never runs (nothing here yields).
/// # let options = lb_client::ClientOptions {
/// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
/// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
/// # };
/// # let sub = lb_client::subscribe("echo", options).await?;
/// let ep = sub.pick()?;
/// sub.report(&ep, Outcome::failure(Code::Unavailable, Duration::from_millis(3)));
/// let counts = ep.counts();
/// assert_eq!((counts.started, counts.finished, counts.failed), (1, 1, 1));
/// assert_eq!(counts.failed_by_code[Code::Unavailable as usize], 1);
/// assert_eq!((counts.latency_sum_us, counts.consecutive_failures), (3_000, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Picks that returned this endpoint.
    pub started: u64,
    /// Calls whose outcome was reported.
    pub finished: u64,
    /// Of `finished`, how many failed.
    pub failed: u64,
    /// Sum of latencies of finished calls, in microseconds.
    pub latency_sum_us: u64,
    /// Of `failed`, how many by gRPC status code (index = code).
    pub failed_by_code: [u64; STATUS_CODES],
    /// The current run of consecutive failures (not reset by reading).
    pub consecutive_failures: u64,
}

impl CallCounts {
    /// True when nothing happened.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let list = PickList::from_parts(1, vec![Endpoint::new("b1", "10.0.0.5:50051")], vec![0])?;
    /// assert!(list.servers()[0].counts().is_zero());
    /// let ep = list.pick()?;
    /// assert!(!ep.counts().is_zero()); // started: 1
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_zero(&self) -> bool {
        *self == CallCounts::default()
    }
}

/// One distinct server of a list (or a drop entry).
///
/// Picks return an `Arc<Endpoint>`: connect to [`Endpoint::address`], then
/// report the call's outcome ([`crate::Subscription::report`]); its counters
/// go to the daemon. Build one by hand for a [`PickList`] of your own.
///
/// ```
/// use lb_client::{Endpoint, PickList};
/// let list = PickList::from_parts(
///     1,
///     vec![Endpoint::new("b1", "10.0.0.5:50051").with_zone("eu-1")],
///     vec![0],
/// )?;
/// let ep = list.pick()?;
/// assert_eq!((ep.instance_id(), ep.address(), ep.zone()), ("b1", "10.0.0.5:50051", "eu-1"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Endpoint {
    instance_id: String,
    address: String,
    zone: String,
    tier: u32,
    token: String,
    drop: bool,
    calls_started: AtomicU64,
    calls_finished: AtomicU64,
    calls_failed: AtomicU64,
    latency_sum_us: AtomicU64,
    failed_by_code: [AtomicU64; STATUS_CODES],
    consecutive: AtomicU64,
    /// Calls picked and not yet recorded (or abandoned): what weighted two
    /// choices compares. Never reset, unlike the counters above.
    in_flight: AtomicU64,
}

impl Endpoint {
    /// A server at `address` ("host:port"), tier 0, no zone, no token.
    ///
    /// ```
    /// let ep = lb_client::Endpoint::new("b1", "10.0.0.5:50051");
    /// assert_eq!((ep.tier(), ep.zone(), ep.token()), (0, "", ""));
    /// assert!(!ep.is_drop());
    /// ```
    pub fn new(instance_id: impl Into<String>, address: impl Into<String>) -> Self {
        Endpoint {
            instance_id: instance_id.into(),
            address: address.into(),
            zone: String::new(),
            tier: 0,
            token: String::new(),
            drop: false,
            calls_started: AtomicU64::new(0),
            calls_finished: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            failed_by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            consecutive: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// A drop entry: picking it fails the call locally with [`NoPick::Dropped`].
    ///
    /// ```
    /// use lb_client::{Endpoint, NoPick, PickList};
    /// let list = PickList::from_parts(0, vec![Endpoint::drop_entry()], vec![0])?;
    /// assert!(list.servers()[0].is_drop());
    /// assert_eq!(list.pick().unwrap_err(), NoPick::Dropped);
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn drop_entry() -> Self {
        Endpoint {
            drop: true,
            ..Endpoint::new("", "")
        }
    }

    /// Sets the zone.
    ///
    /// ```
    /// let ep = lb_client::Endpoint::new("b1", "10.0.0.5:50051").with_zone("eu-west-1a");
    /// assert_eq!(ep.zone(), "eu-west-1a");
    /// ```
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// Sets the failover tier.
    ///
    /// A list's picks cycle through its first tier; later tiers are reached only
    /// by failover (spill-over, e.g. another zone).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("near", "10.0.0.5:50051"),
    ///     Endpoint::new("far", "10.9.0.5:50051").with_tier(1),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1])?;
    /// assert_eq!(list.len(), 1); // "far" is kept for failover only
    /// assert_eq!(list.pick()?.instance_id(), "near");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_tier(mut self, tier: u32) -> Self {
        self.tier = tier;
        self
    }

    /// Sets the token attached to calls (`lb-token` metadata).
    ///
    /// ```
    /// let ep = lb_client::Endpoint::new("b1", "10.0.0.5:50051").with_token("t-7f3a");
    /// assert_eq!(ep.token(), "t-7f3a"); // sent as `lb-token` by the channel
    /// ```
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// The backend's instance id (empty for drop entries and fallback addresses).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// assert_eq!(Endpoint::new("b1", "10.0.0.5:50051").instance_id(), "b1");
    /// let fallback = PickList::fallback(&["10.0.0.5:50051".to_string()]);
    /// assert_eq!(fallback.servers()[0].instance_id(), "");
    /// ```
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Where to connect: "host:port".
    ///
    /// ```
    /// let ep = lb_client::Endpoint::new("b1", "10.0.0.5:50051");
    /// let uri = format!("http://{}", ep.address()); // e.g. for a tonic channel of your own
    /// assert_eq!(uri, "http://10.0.0.5:50051");
    /// ```
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The backend's zone.
    ///
    /// ```
    /// use lb_client::Endpoint;
    /// assert_eq!(Endpoint::new("b1", "10.0.0.5:50051").with_zone("eu-1").zone(), "eu-1");
    /// assert_eq!(Endpoint::new("b1", "10.0.0.5:50051").zone(), ""); // unknown
    /// ```
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Failover tier: 0 first.
    ///
    /// ```
    /// use lb_client::Endpoint;
    /// assert_eq!(Endpoint::new("b1", "10.0.0.5:50051").tier(), 0);
    /// assert_eq!(Endpoint::new("b2", "10.9.0.5:50051").with_tier(1).tier(), 1);
    /// ```
    pub fn tier(&self) -> u32 {
        self.tier
    }

    /// Opaque token to attach to calls (may be empty).
    ///
    /// ```
    /// let ep = lb_client::Endpoint::new("b1", "10.0.0.5:50051");
    /// // The channel sends a non-empty token as `lb-token` metadata; do the same
    /// // when you call `ep.address()` yourself.
    /// assert!(ep.token().is_empty());
    /// ```
    pub fn token(&self) -> &str {
        &self.token
    }

    /// True for a drop entry.
    ///
    /// ```
    /// use lb_client::Endpoint;
    /// assert!(Endpoint::drop_entry().is_drop());
    /// assert!(!Endpoint::new("b1", "10.0.0.5:50051").is_drop());
    /// ```
    pub fn is_drop(&self) -> bool {
        self.drop
    }

    /// Current counters (not reset).
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// let ep = sub.pick()?;
    /// sub.report(&ep, lb_client::Outcome::success(Duration::from_millis(2)));
    /// let counts = ep.counts();
    /// assert_eq!((counts.started, counts.finished, counts.failed), (1, 1, 0));
    /// # Ok(()) }
    /// ```
    pub fn counts(&self) -> CallCounts {
        CallCounts {
            started: self.calls_started.load(Relaxed),
            finished: self.calls_finished.load(Relaxed),
            failed: self.calls_failed.load(Relaxed),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
            failed_by_code: std::array::from_fn(|i| self.failed_by_code[i].load(Relaxed)),
            consecutive_failures: self.consecutive.load(Relaxed),
        }
    }

    /// Reads and resets the counters, for a stats report.
    /// The failure run is reported only with calls that finished in the
    /// interval, so an old run is not reported again after an idle spell.
    ///
    /// A call recorded while the counters are read may land half in this
    /// report: whatever would make `failed` exceed `finished` (or the codes
    /// exceed `failed`) is put back for the next report, so every report is
    /// consistent (the daemon refuses inconsistent ones).
    pub(crate) fn take_counts(&self) -> CallCounts {
        let finished = self.calls_finished.swap(0, Relaxed);
        let mut failed = self.calls_failed.swap(0, Relaxed);
        if failed > finished {
            self.calls_failed.fetch_add(failed - finished, Relaxed);
            failed = finished;
        }
        let mut failed_by_code: [u64; STATUS_CODES] =
            std::array::from_fn(|i| self.failed_by_code[i].swap(0, Relaxed));
        let mut excess = failed_by_code.iter().sum::<u64>().saturating_sub(failed);
        for (i, n) in failed_by_code.iter_mut().enumerate() {
            let back = excess.min(*n);
            if back > 0 {
                self.failed_by_code[i].fetch_add(back, Relaxed);
                *n -= back;
                excess -= back;
            }
        }
        CallCounts {
            started: self.calls_started.swap(0, Relaxed),
            finished,
            failed,
            latency_sum_us: self.latency_sum_us.swap(0, Relaxed),
            failed_by_code,
            consecutive_failures: if finished > 0 {
                self.consecutive.load(Relaxed)
            } else {
                0
            },
        }
    }

    /// Records a finished call.
    pub(crate) fn record(&self, outcome: Outcome) {
        if outcome.is_ok() {
            self.consecutive.store(0, Relaxed);
        } else {
            self.calls_failed.fetch_add(1, Relaxed);
            self.consecutive.fetch_add(1, Relaxed);
            self.failed_by_code[outcome.code as usize].fetch_add(1, Relaxed);
        }
        self.calls_finished.fetch_add(1, Relaxed);
        self.release();
        let us = u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// This client's calls to this endpoint that were picked and have not
    /// finished: every pick counts one until its outcome is reported (or
    /// its attempt is dropped). Weighted two choices compares it.
    ///
    /// ```
    /// use lb_client::{Endpoint, Outcome, PickList};
    /// let list = PickList::from_parts(1, vec![Endpoint::new("b1", "10.0.0.5:50051")], vec![0])?;
    /// let ep = list.pick()?;
    /// assert_eq!(ep.in_flight(), 1); // until its outcome is reported:
    /// # let _ = Outcome::success(std::time::Duration::from_millis(2));
    /// // subscription.report(&ep, Outcome::success(latency));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// A picked call ends without an outcome (its attempt was dropped, e.g.
    /// by a deadline around it): it no longer counts as in flight.
    pub(crate) fn abandon(&self) {
        self.release();
    }

    /// One call fewer in flight (never below zero: a report for a call
    /// picked from a list built by hand, say).
    fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Counts a pick.
    #[inline]
    fn started(&self) {
        self.calls_started.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// The same backend (instance and address), whatever its tier or token.
    ///
    /// ```
    /// use lb_client::Endpoint;
    /// let b1 = Endpoint::new("b1", "10.0.0.5:50051");
    /// assert!(b1.same_server(&Endpoint::new("b1", "10.0.0.5:50051").with_tier(1)));
    /// assert!(!b1.same_server(&Endpoint::new("b1", "10.0.0.6:50051"))); // moved
    /// ```
    pub fn same_server(&self, other: &Endpoint) -> bool {
        self.instance_id == other.instance_id && self.address == other.address
    }

    /// Same server, same routing data: counters may carry over.
    fn same_as(&self, other: &Endpoint) -> bool {
        self.instance_id == other.instance_id
            && self.address == other.address
            && self.zone == other.zone
            && self.tier == other.tier
            && self.token == other.token
            && self.drop == other.drop
    }
}

/// One ordered lane of a list (the default one, or a route's): the entries of
/// its first tier, which picks cycle through, and the entries of later tiers,
/// which only failover reaches.
#[derive(Debug)]
struct Lane {
    /// Indices into the servers: first-tier entries (and drop entries).
    order: Box<[u32]>,
    /// Later tiers' entries, tier by tier, each in the daemon's order.
    spill: Box<[u32]>,
    /// Starts at 0 for every new list: the daemon already rotated it for us.
    cursor: AtomicUsize,
    /// `order.len()` and its reciprocal for [`fast_rem`].
    len: u32,
    magic: u64,
    /// Whether `order` holds a drop entry (most lists do not: their picks
    /// skip reading the entry's flag).
    drops: bool,
    /// Weighted two choices: each server's entries in `order` (indexed like
    /// the servers); empty when picks follow the order.
    shares: Box<[u32]>,
    /// Weighted two choices: calls assumed in flight on every candidate.
    prior: u32,
}

/// The reciprocal of `d` for [`fast_rem`] (0 for `d` = 0, which is never used).
fn rem_magic(d: u32) -> u64 {
    if d == 0 {
        0
    } else {
        (u64::MAX / u64::from(d)).wrapping_add(1)
    }
}

/// A uniform 32-bit draw from this thread's own generator (xorshift64*,
/// S. Vigna, "An experimental exploration of Marsaglia's xorshift
/// generators, scrambled", 2016), seeded once per thread: no lock, no
/// shared cache line. Only weighted two choices draws.
#[inline]
fn draw() -> u32 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    })
}

/// A non-zero per-thread seed: a process-wide counter mixed by splitmix64.
fn seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

/// `a % d` by two multiplications instead of a division (a pick is a few
/// nanoseconds, and a 64-bit division is a good part of that).
///
/// Source: D. Lemire, O. Kaser, N. Kurz, "Faster Remainder by Direct
/// Computation: Applications to Compilers and Software Libraries" (2019),
/// `fastmod_u32`: with `M = ⌊(2⁶⁴ − 1) / d⌋ + 1`, `a mod d = ⌊((M·a mod 2⁶⁴) · d) / 2⁶⁴⌋`
/// for every 32-bit `a` and `d`.
#[inline]
fn fast_rem(a: u32, magic: u64, d: u32) -> usize {
    let low = magic.wrapping_mul(u64::from(a));
    ((u128::from(low) * u128::from(d)) >> 64) as usize
}

impl Lane {
    /// Splits `order` (validated indices) by the servers' tiers.
    fn new(order: Vec<u32>, servers: &[Endpoint]) -> Lane {
        let drops = order.iter().any(|&i| servers[i as usize].drop);
        if servers.iter().all(|s| s.tier == 0) {
            // The common case: one tier, nothing to split.
            return Lane::from_parts(order.into_boxed_slice(), Box::new([]), drops);
        }
        let tier = |i: u32| servers[i as usize].tier;
        let first = order
            .iter()
            .filter(|&&i| !servers[i as usize].drop)
            .map(|&i| tier(i))
            .min()
            .unwrap_or(0);
        let (now, mut later): (Vec<u32>, Vec<u32>) = order
            .into_iter()
            .partition(|&i| servers[i as usize].drop || tier(i) == first);
        later.sort_by_key(|&i| tier(i)); // stable: keeps the order within a tier
        Lane::from_parts(now.into_boxed_slice(), later.into_boxed_slice(), drops)
    }

    fn from_parts(order: Box<[u32]>, spill: Box<[u32]>, drops: bool) -> Lane {
        // Lists are capped far below 2³² entries (the daemon sends at most
        // 65,536), so the length fits; a longer one would only be cut short.
        let len = u32::try_from(order.len()).unwrap_or(u32::MAX);
        Lane {
            order,
            spill,
            cursor: AtomicUsize::new(0),
            len,
            magic: rem_magic(len),
            drops,
            shares: Box::new([]),
            prior: 0,
        }
    }

    /// Turns weighted two choices on (`choices` ≥ 2, and more than one
    /// server in the order) or off.
    fn set_choices(&mut self, choices: Choices, prior: u32, servers: usize) {
        self.prior = prior;
        self.shares = choice::share_table(choices, &self.order, servers).into_boxed_slice();
    }

    /// The cursor's next position in `order` (which must not be empty). The
    /// cursor's low 32 bits are used: every 2³² picks the rotation restarts
    /// once, a single skip in four billion.
    #[inline]
    fn next(&self) -> usize {
        let c = self.cursor.fetch_add(1, Relaxed) as u32;
        fast_rem(c, self.magic, self.len)
    }

    fn empty() -> Lane {
        Lane::new(Vec::new(), &[])
    }

    fn pick(&self, servers: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, NoPick> {
        if self.order.is_empty() {
            return Err(NoPick::Empty);
        }
        self.take(servers, self.next())
    }

    /// Where a cursor numbered `seed` starts: `seed mod len` (0 when empty).
    fn start(&self, seed: u32) -> u32 {
        if self.len == 0 {
            0
        } else {
            fast_rem(seed, self.magic, self.len) as u32
        }
    }

    /// [`Lane::pick`] with the caller's own cursor instead of the shared one.
    /// The cursor is a position in the order, kept below its length (one
    /// that is not counts as 0), so moving on is a compare, not a remainder.
    #[inline]
    fn pick_at(
        &self,
        servers: &[Arc<Endpoint>],
        cursor: &mut u32,
    ) -> Result<Arc<Endpoint>, NoPick> {
        let len = self.order.len();
        if len == 0 {
            return Err(NoPick::Empty);
        }
        let at = *cursor as usize;
        let i = if at < len { at } else { 0 };
        let next = i + 1;
        // Below the length, which fits a u32 (see `from_parts`).
        *cursor = if next < len { next as u32 } else { 0 };
        self.take(servers, i)
    }

    /// The entry at position `i` (below the order's length), or under
    /// weighted two choices the better of it and an entry drawn at random.
    #[inline]
    fn take(&self, servers: &[Arc<Endpoint>], i: usize) -> Result<Arc<Endpoint>, NoPick> {
        // Indices were validated against the servers at construction.
        let at = self.order[i] as usize;
        let mut ep = &servers[at];
        if self.drops && ep.drop {
            return Err(NoPick::Dropped);
        }
        if !self.shares.is_empty() {
            let other = self.order[fast_rem(draw(), self.magic, self.len)] as usize;
            let alt = &servers[other];
            if other != at
                && !alt.drop
                && choice::prefer_second(
                    ep.in_flight(),
                    self.shares[at],
                    alt.in_flight(),
                    self.shares[other],
                    self.prior,
                )
            {
                ep = alt;
            }
        }
        ep.started();
        Ok(Arc::clone(ep))
    }

    /// The next first-tier entry not in `tried`; then later tiers in order.
    fn pick_untried(
        &self,
        servers: &[Arc<Endpoint>],
        tried: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, NoPick> {
        if tried.is_empty() {
            return self.pick(servers);
        }
        let fresh = |i: &u32| {
            let ep = &servers[*i as usize];
            !ep.drop
                && !tried
                    .iter()
                    .any(|t| Arc::ptr_eq(t, ep) || t.same_server(ep))
        };
        let len = self.order.len();
        let start = if len == 0 { 0 } else { self.next() };
        let found = self.order[start..]
            .iter()
            .chain(&self.order[..start])
            .chain(self.spill.iter())
            .find(|i| fresh(i));
        match found {
            Some(&i) => {
                let ep = &servers[i as usize];
                ep.started();
                Ok(Arc::clone(ep))
            }
            None => Err(NoPick::Empty),
        }
    }

    /// Every distinct non-drop endpoint, first tier first, each counted as
    /// picked (a broadcast calls them all).
    fn distinct(&self, servers: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
        let mut out: Vec<Arc<Endpoint>> = Vec::new();
        for &i in self.order.iter().chain(self.spill.iter()) {
            let ep = &servers[i as usize];
            if !ep.drop && !out.iter().any(|e| Arc::ptr_eq(e, ep)) {
                out.push(Arc::clone(ep));
            }
        }
        for ep in &out {
            ep.started();
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty() && self.spill.is_empty()
    }
}

/// A routing rule the daemon sent: requests whose labels include every pair
/// of `request` follow its own lane.
///
/// ```
/// use lb_client::{Endpoint, PickList, RouteSpec};
/// let beta = RouteSpec {
///     name: "beta".into(),
///     request: vec![("group".into(), "beta".into())],
///     order: vec![1],
///     strict: false,
/// };
/// let servers = vec![
///     Endpoint::new("b1", "10.0.0.5:50051"),
///     Endpoint::new("b2", "10.0.0.6:50051"),
/// ];
/// let list = PickList::with_routes(1, servers, vec![0], vec![beta])?;
/// let route = &list.routes()[0];
/// assert_eq!(route.name(), "beta");
/// assert!(route.matches(&[("group", "beta"), ("user", "42")]));
/// # Ok::<(), lb_client::list::Error>(())
/// ```
#[derive(Debug)]
pub struct Route {
    name: String,
    request: Box<[(String, String)]>,
    lane: Lane,
    strict: bool,
}

impl Route {
    /// The rule's name.
    ///
    /// ```
    /// # use lb_client::{Endpoint, PickList, RouteSpec};
    /// # let spec = RouteSpec { name: "beta".into(), request: vec![], order: vec![0], strict: false };
    /// # let list = PickList::with_routes(1, vec![Endpoint::new("b1", "a:1")], vec![0], vec![spec])?;
    /// let names: Vec<&str> = list.routes().iter().map(|r| r.name()).collect();
    /// assert_eq!(names, ["beta"]); // as on the daemon: `ctl set-rule hello beta ...`
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a request with `labels` takes this route.
    ///
    /// ```
    /// # use lb_client::{Endpoint, PickList, RouteSpec};
    /// # let request = vec![("group".into(), "beta".into())];
    /// # let spec = RouteSpec { name: "beta".into(), request, order: vec![0], strict: false };
    /// # let list = PickList::with_routes(1, vec![Endpoint::new("b1", "a:1")], vec![0], vec![spec])?;
    /// let beta = &list.routes()[0]; // selects requests labelled group=beta
    /// assert!(beta.matches(&[("group", "beta")]));
    /// assert!(beta.matches(&[("user", "42"), ("group", "beta")])); // other labels do not matter
    /// assert!(!beta.matches(&[("group", "alpha")]));
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        self.request
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }

    /// The route selects no instance and must not fall back.
    fn fails(&self) -> bool {
        self.strict && self.lane.is_empty()
    }
}

/// A route as the daemon describes it, for [`PickList::with_routes`].
///
/// ```
/// use lb_client::{Endpoint, NoPick, PickList, RouteSpec};
/// // Stress traffic goes to the stress instances only, and fails without them:
/// let stress = RouteSpec {
///     name: "stress".into(),
///     request: vec![("traffic".into(), "stress".into())],
///     order: vec![], // no stress instance up
///     strict: true,
/// };
/// let servers = vec![Endpoint::new("b1", "10.0.0.5:50051")];
/// let list = PickList::with_routes(1, servers, vec![0], vec![stress])?;
/// assert_eq!(list.pick_with(&[("traffic", "stress")]).unwrap_err(), NoPick::NoRoute);
/// assert_eq!(list.pick_with(&[])?.instance_id(), "b1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The rule's name.
    pub name: String,
    /// Request labels that select it (all must be equal).
    pub request: Vec<(String, String)>,
    /// Indices into the list's servers.
    pub order: Vec<u32>,
    /// An empty `order` fails the request instead of falling back.
    pub strict: bool,
}

/// Which lane of a list a call follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneRef {
    /// The default order.
    Default,
    /// Route number `i`.
    Route(usize),
}

/// An ordered server list: follow `order` round-robin.
///
/// A [`crate::Subscription`] installs the daemon's lists and picks from them
/// ([`crate::Subscription::current`] is a snapshot); build one yourself to
/// pick without a daemon (tests, static configurations):
///
/// ```
/// use lb_client::{Endpoint, PickList};
/// let servers = vec![
///     Endpoint::new("b1", "10.0.0.5:50051"),
///     Endpoint::new("b2", "10.0.0.6:50051"),
/// ];
/// // b1 weighs twice as much as b2: it appears twice in the order.
/// let list = PickList::from_parts(1, servers, vec![0, 1, 0])?;
/// let mut picked = Vec::new();
/// for _ in 0..6 {
///     picked.push(list.pick()?.instance_id().to_owned());
/// }
/// assert_eq!(picked, ["b1", "b2", "b1", "b1", "b2", "b1"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PickList {
    version: u64,
    servers: Vec<Arc<Endpoint>>,
    /// The default lane.
    lane: Lane,
    /// Routes on request labels, first match wins.
    routes: Box<[Route]>,
    /// Hash policies: key hash → index into `servers` (empty otherwise).
    affinity: Box<[u32]>,
    /// consistent_hash: the bound on keyed calls in flight (None: keys
    /// follow `affinity` exactly).
    bound: Option<KeyBound>,
    /// What a call does across instances (cluster modes), from the daemon.
    settings: Arc<ClusterConfig>,
    /// When a subscription installed this list (None for lists built by hand).
    installed_at: Option<Instant>,
    /// The daemon's durable state the list reflects ([`PickList::state`]).
    state: ListState,
}

/// The durable state a list reflects: the identity of the daemon's store
/// and the revision of it the daemon had applied (`ServerList.state_id`,
/// `state_revision`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListState {
    /// The store's identity: replicas sharing a store have the same one.
    pub id: String,
    /// The revision applied; comparable across replicas of one `id`.
    pub revision: u64,
}

impl ListState {
    /// Whether `self` is an older state than `held`: the same store, an
    /// earlier revision. Lists of another store (or of none) are not
    /// comparable, so never older.
    ///
    /// ```
    /// use lb_client::ListState;
    /// let s = |id: &str, revision| ListState { id: id.into(), revision };
    /// assert!(s("etcd:a", 5).is_behind(&s("etcd:a", 7)));
    /// assert!(!s("etcd:a", 7).is_behind(&s("etcd:a", 7)));
    /// assert!(!s("etcd:b", 1).is_behind(&s("etcd:a", 7)), "another store");
    /// assert!(!s("", 0).is_behind(&s("etcd:a", 7)), "a daemon that says nothing");
    /// ```
    pub fn is_behind(&self, held: &ListState) -> bool {
        !self.id.is_empty() && self.id == held.id && self.revision < held.revision
    }
}

/// The daemon's `load_bound` on keyed calls ([`lb_core::policy::bounded`]).
#[derive(Debug)]
struct KeyBound {
    /// The bound `c` (≥ 1, finite).
    c: f64,
    /// Each server's slots in the affinity table.
    slots: Box<[u32]>,
    /// Each server's spill fraction as a threshold on a 32-bit draw (empty:
    /// none spills).
    spill: Box<[u64]>,
}

fn check_indices(order: &[u32], servers: usize) -> Result<(), Error> {
    match order
        .iter()
        .enumerate()
        .find(|(_, &i)| i as usize >= servers)
    {
        Some((position, &index)) => Err(Error::OrderOutOfRange {
            position,
            index,
            servers,
        }),
        None => Ok(()),
    }
}

impl PickList {
    /// Builds a list from distinct `servers` and `order` (indices into `servers`).
    /// Entries of servers in a later tier than the first are kept for failover.
    ///
    /// This is also the way to pick without a [`crate::Subscription`] (tests,
    /// static configurations): build a list, then call [`PickList::pick`].
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::from_parts(7, servers, vec![1, 0])?; // b2 first
    /// assert_eq!((list.version(), list.len()), (7, 2));
    /// assert_eq!(list.pick()?.instance_id(), "b2");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(
        version: u64,
        servers: Vec<Endpoint>,
        order: Vec<u32>,
    ) -> Result<PickList, Error> {
        PickList::with_routes(version, servers, order, Vec::new())
    }

    /// [`PickList::from_parts`] with routes on request labels.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList, RouteSpec};
    /// // An A/B test: requests labelled group=beta go to b2.
    /// let beta = RouteSpec {
    ///     name: "beta".into(),
    ///     request: vec![("group".into(), "beta".into())],
    ///     order: vec![1],
    ///     strict: false,
    /// };
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::with_routes(1, servers, vec![0], vec![beta])?;
    /// assert_eq!(list.pick_with(&[("group", "beta")])?.instance_id(), "b2");
    /// assert_eq!(list.pick()?.instance_id(), "b1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_routes(
        version: u64,
        servers: Vec<Endpoint>,
        order: Vec<u32>,
        routes: Vec<RouteSpec>,
    ) -> Result<PickList, Error> {
        check_indices(&order, servers.len())?;
        for r in &routes {
            check_indices(&r.order, servers.len())?;
        }
        let lane = Lane::new(order, &servers);
        let routes = routes
            .into_iter()
            .map(|r| Route {
                name: r.name,
                request: r.request.into_boxed_slice(),
                lane: Lane::new(r.order, &servers),
                strict: r.strict,
            })
            .collect();
        Ok(PickList {
            version,
            servers: servers.into_iter().map(Arc::new).collect(),
            lane,
            routes,
            affinity: Box::new([]),
            bound: None,
            settings: Arc::default(),
            installed_at: None,
            state: ListState::default(),
        })
    }

    /// Adds the hash policies' affinity table (indices into the servers).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1])?.with_affinity(vec![0, 1, 1, 0])?;
    /// assert!(list.has_affinity());
    /// let first = list.pick_for_key(b"user-42")?;
    /// let again = list.pick_for_key(b"user-42")?;
    /// assert!(again.same_server(&first)); // user-42 sticks to one backend
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_affinity(mut self, affinity: Vec<u32>) -> Result<PickList, Error> {
        if let Some((position, &index)) = affinity
            .iter()
            .enumerate()
            .find(|(_, &i)| i as usize >= self.servers.len())
        {
            return Err(Error::AffinityOutOfRange {
                position,
                index,
                servers: self.servers.len(),
            });
        }
        self.affinity = affinity.into_boxed_slice();
        if let Some(b) = self.bound.take() {
            self = self.with_load_bound(b.c);
        }
        Ok(self)
    }

    /// Sets the daemon's `load_bound` on keyed calls (consistent_hash; 0 or
    /// anything below 1 for none): a call made through
    /// [`crate::Subscription::call`] or [`crate::Subscription::channel`] with
    /// a key goes to the key's affinity server unless that server already
    /// holds more than its bounded share of this client's calls in flight,
    /// and then to the key's next server with room
    /// ([`lb_core::policy::bounded`]). [`PickList::pick_for_key`] itself
    /// stays the table's answer (the key's owner), since only the call path
    /// knows that every pick's call is counted until it ends.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1])?
    ///     .with_affinity(vec![0, 1])?
    ///     .with_load_bound(1.25);
    /// assert_eq!(list.load_bound(), Some(1.25));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_load_bound(mut self, c: f64) -> PickList {
        let spill = self.bound.take().map(|b| b.spill).unwrap_or_default();
        self.bound = bounded::is_on(c).then(|| KeyBound {
            c,
            slots: bounded::slots(&self.affinity, self.servers.len()).into_boxed_slice(),
            spill,
        });
        self
    }

    /// Sets the daemon's spill fractions under the bound on keyed calls, one
    /// per server (the list's `key_spill`): a keyed call whose affinity
    /// server has fraction `f` goes to the key's next server with
    /// probability `f` ([`lb_core::policy::bounded`]). Ignored without a
    /// bound ([`PickList::with_load_bound`], set first) or when the length
    /// is not the number of servers; values are clamped to `[0, 1]`.
    pub fn with_key_spill(mut self, spill: &[f64]) -> PickList {
        let n = self.servers.len();
        if let Some(b) = self.bound.as_mut() {
            b.spill = if spill.len() == n && spill.iter().any(|&f| f > 0.0) {
                spill
                    .iter()
                    .map(|&f| {
                        let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
                        (f * 4_294_967_296.0) as u64
                    })
                    .collect()
            } else {
                Box::new([])
            };
        }
        self
    }

    /// Sets the durable state the list reflects (the daemon's
    /// `state_id` and `state_revision`).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList, ListState};
    /// let list = PickList::from_parts(1, vec![Endpoint::new("a", "10.0.0.1:80")], vec![0])?
    ///     .with_state(ListState { id: "etcd:c1/lb".into(), revision: 42 });
    /// assert_eq!(list.state().revision, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_state(mut self, state: ListState) -> PickList {
        self.state = state;
        self
    }

    /// The durable state the list reflects (default: none said).
    pub fn state(&self) -> &ListState {
        &self.state
    }

    /// The bound on keyed calls, if the daemon set one
    /// ([`PickList::with_load_bound`]).
    pub fn load_bound(&self) -> Option<f64> {
        self.bound.as_ref().map(|b| b.c)
    }

    /// Sets the cluster modes calls on this list follow.
    ///
    /// ```
    /// use lb_client::{ClusterConfig, Mode, PickList};
    /// let mut settings = ClusterConfig::default(); // failover everywhere
    /// // Never retry a payment:
    /// settings.methods.insert("/shop.v1.Shop/Pay".into(), Mode::Failfast);
    /// let list = PickList::empty().with_settings(settings);
    /// assert_eq!(list.settings().mode_for("/shop.v1.Shop/Pay"), &Mode::Failfast);
    /// ```
    pub fn with_settings(mut self, settings: ClusterConfig) -> PickList {
        self.settings = Arc::new(settings);
        self
    }

    /// Sets how many entries a pick compares (the daemon's `client_choices`):
    /// 1 follows the order; 2 is weighted two choices, which takes the
    /// next entry unless an entry drawn at random has fewer of this
    /// client's calls in flight per share ([`lb_core::policy::choice`]),
    /// counting `prior` more calls on each (the daemon's `choice_prior`).
    /// Keyed picks ([`PickList::pick_for_key`]) and retries are unaffected.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1])?.with_choices(2, 0);
    /// let first = list.pick()?; // nothing in flight anywhere: the order's next entry
    /// assert_eq!(first.instance_id(), "b1");
    /// assert_eq!(first.in_flight(), 1); // until its outcome is reported
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_choices(mut self, choices: Choices, prior: u32) -> PickList {
        let n = self.servers.len();
        self.lane.set_choices(choices, prior, n);
        for r in self.routes.iter_mut() {
            r.lane.set_choices(choices, prior, n);
        }
        self
    }

    /// The cluster modes calls on this list follow.
    ///
    /// ```
    /// use lb_client::{Mode, PickList};
    /// // What the daemon's `ctl set-cluster` set for the service (here: the defaults).
    /// let list = PickList::empty();
    /// assert_eq!(list.settings().mode_for("/hello.Greeter/SayHello"), &Mode::default());
    /// assert_eq!(list.settings().deadline, None);
    /// ```
    pub fn settings(&self) -> &ClusterConfig {
        &self.settings
    }

    /// Whether the list carries an affinity table (a hash policy is in force).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let list = PickList::from_parts(1, vec![Endpoint::new("b1", "10.0.0.5:50051")], vec![0])?;
    /// assert!(!list.has_affinity()); // not under a hash policy: keys do not matter
    /// assert!(list.with_affinity(vec![0])?.has_affinity());
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn has_affinity(&self) -> bool {
        !self.affinity.is_empty()
    }

    /// Picks for a request key: with an affinity table, the server the table
    /// assigns to `lb_core::keyhash::hash(key)`; without one, the next entry
    /// as [`PickList::pick`] does. Lock-free and allocation-free as `pick`.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let hashed = PickList::from_parts(1, servers, vec![0, 1])?.with_affinity(vec![0, 1])?;
    /// let a = hashed.pick_for_key(b"user-42")?;
    /// let b = hashed.pick_for_key(b"user-42")?;
    /// assert!(a.same_server(&b)); // the same key, the same backend
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pick_for_key(&self, key: &[u8]) -> Result<Arc<Endpoint>, NoPick> {
        self.pick_keyed(key, false)
    }

    /// [`PickList::pick_for_key`], under the daemon's bound on keyed calls
    /// when `bounded` and the list has one (the call path, where every
    /// pick's call is counted in flight until it ends).
    pub(crate) fn pick_keyed(&self, key: &[u8], bounded: bool) -> Result<Arc<Endpoint>, NoPick> {
        if self.affinity.is_empty() {
            return self.pick();
        }
        let h = lb_core::keyhash::hash(key);
        let home = self.affinity[(h % self.affinity.len() as u64) as usize] as usize;
        let i = match (&self.bound, bounded) {
            (Some(b), true) => {
                // The daemon's spill fraction draws this call off its home
                // (a draw below the threshold; 1.0 is 2^32, always).
                let spill = b
                    .spill
                    .get(home)
                    .is_some_and(|&t| t > 0 && u64::from(draw()) < t);
                bounded::choose(h, &self.affinity, &b.slots, b.c, spill, |i| {
                    self.servers[i].in_flight()
                })
                .unwrap_or(home)
            }
            _ => home,
        };
        let ep = &self.servers[i];
        if ep.drop {
            return Err(NoPick::Dropped);
        }
        ep.started();
        Ok(Arc::clone(ep))
    }

    /// An empty list (version 0).
    ///
    /// ```
    /// use lb_client::{NoPick, PickList};
    /// let list = PickList::empty();
    /// assert!(list.is_empty() && list.version() == 0);
    /// assert_eq!(list.pick().unwrap_err(), NoPick::Empty);
    /// ```
    pub fn empty() -> PickList {
        PickList {
            version: 0,
            servers: Vec::new(),
            lane: Lane::empty(),
            routes: Box::new([]),
            affinity: Box::new([]),
            bound: None,
            settings: Arc::default(),
            installed_at: None,
            state: ListState::default(),
        }
    }

    /// Version 0, in the given order: one endpoint per distinct address, and
    /// one share per address given (an address given twice gets two).
    /// Fallback endpoints have an empty instance id: the daemon does not know
    /// them, so they are never reported.
    ///
    /// ```
    /// let addresses = ["10.0.0.5:50051", "10.0.0.6:50051"].map(String::from);
    /// let list = lb_client::PickList::fallback(&addresses);
    /// assert_eq!((list.version(), list.len()), (0, 2));
    /// assert_eq!(list.pick()?.address(), "10.0.0.5:50051");
    /// assert_eq!(list.pick()?.instance_id(), ""); // unknown to the daemon
    /// # Ok::<(), lb_client::NoPick>(())
    /// ```
    pub fn fallback(addresses: &[String]) -> PickList {
        let mut servers: Vec<Endpoint> = Vec::new();
        let mut order = Vec::new();
        for addr in addresses {
            let i = match servers.iter().position(|s| &s.address == addr) {
                Some(i) => i,
                None => {
                    servers.push(Endpoint::new("", addr.clone()));
                    servers.len() - 1
                }
            };
            // At most addresses.len() servers, so the index fits any sane u32.
            order.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        PickList::from_parts(0, servers, order).unwrap_or_else(|_| PickList::empty())
    }

    /// The next entry in order. Lock-free and allocation-free: one atomic add on
    /// the cursor, one on the endpoint's `calls_started`, one refcount increment.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1])?;
    /// assert_eq!(list.pick()?.address(), "10.0.0.5:50051");
    /// assert_eq!(list.pick()?.address(), "10.0.0.6:50051");
    /// assert_eq!(list.pick()?.address(), "10.0.0.5:50051"); // round and round
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pick(&self) -> Result<Arc<Endpoint>, NoPick> {
        self.lane.pick(&self.servers)
    }

    /// The lane a request with `labels` follows: the first route that
    /// matches, or the default; `Err(NoRoute)` for a strict route that
    /// selects nothing.
    pub(crate) fn lane_for(&self, labels: &[(&str, &str)]) -> Result<LaneRef, NoPick> {
        match self.routes.iter().position(|r| r.matches(labels)) {
            Some(i) if self.routes[i].fails() => Err(NoPick::NoRoute),
            Some(i) if self.routes[i].lane.is_empty() => Ok(LaneRef::Default),
            Some(i) => Ok(LaneRef::Route(i)),
            None => Ok(LaneRef::Default),
        }
    }

    fn lane(&self, at: LaneRef) -> &Lane {
        match at {
            LaneRef::Route(i) => self.routes.get(i).map_or(&self.lane, |r| &r.lane),
            LaneRef::Default => &self.lane,
        }
    }

    /// [`PickList::pick`] with the caller's cursor (a thread's own, see
    /// `Subscription::pick`) in place of the list's shared one.
    #[inline]
    pub(crate) fn pick_at(&self, cursor: &mut u32) -> Result<Arc<Endpoint>, NoPick> {
        self.lane.pick_at(&self.servers, cursor)
    }

    /// Where a thread's cursor numbered `seed` starts in the default order
    /// (see [`PickList::pick_at`]).
    pub(crate) fn cursor_start(&self, seed: u32) -> u32 {
        self.lane.start(seed)
    }

    /// Picks for a request carrying `labels`: the first route whose labels
    /// all match, else the default order. Lock-free and allocation-free.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList, RouteSpec};
    /// let vip = RouteSpec {
    ///     name: "vip".into(),
    ///     request: vec![("tier".into(), "vip".into())],
    ///     order: vec![1],
    ///     strict: false,
    /// };
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("v1", "10.0.1.5:50051"),
    /// ];
    /// let list = PickList::with_routes(1, servers, vec![0], vec![vip])?;
    /// assert_eq!(list.pick_with(&[("tier", "vip")])?.instance_id(), "v1");
    /// assert_eq!(list.pick_with(&[("tier", "free")])?.instance_id(), "b1"); // the default order
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pick_with(&self, labels: &[(&str, &str)]) -> Result<Arc<Endpoint>, NoPick> {
        let at = self.lane_for(labels)?;
        self.lane(at).pick(&self.servers)
    }

    /// The next entry of lane `at` that is not in `tried`, spilling to later
    /// tiers when the first is exhausted (failover).
    pub(crate) fn pick_untried(
        &self,
        at: LaneRef,
        tried: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, NoPick> {
        self.lane(at).pick_untried(&self.servers, tried)
    }

    /// Every distinct non-drop endpoint of lane `at` (broadcast).
    pub(crate) fn distinct(&self, at: LaneRef) -> Vec<Arc<Endpoint>> {
        self.lane(at).distinct(&self.servers)
    }

    /// The route named `name`, by position.
    pub(crate) fn route_named(&self, name: &str) -> Option<LaneRef> {
        self.routes
            .iter()
            .position(|r| r.name == name)
            .map(LaneRef::Route)
    }

    /// The routes on request labels, in order.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let list = PickList::from_parts(1, vec![Endpoint::new("b1", "10.0.0.5:50051")], vec![0])?;
    /// assert!(list.routes().is_empty()); // no routing rule on the service
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The version the daemon gave this list (0 for fallback lists).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let list = PickList::from_parts(42, vec![Endpoint::new("b1", "10.0.0.5:50051")], vec![0])?;
    /// assert_eq!(list.version(), 42); // newer lists from the daemon have higher versions
    /// assert_eq!(PickList::fallback(&[]).version(), 0);
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of entries picks cycle through (the first tier's shares, drop
    /// entries included).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![Endpoint::new("b1", "10.0.0.5:50051"), Endpoint::drop_entry()];
    /// let list = PickList::from_parts(1, servers, vec![0, 0, 1])?; // 2 shares for b1, 1 dropped
    /// assert_eq!(list.len(), 3);
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.lane.order.len()
    }

    /// True when there is nothing to pick.
    ///
    /// ```
    /// use lb_client::PickList;
    /// assert!(PickList::empty().is_empty());
    /// assert!(!PickList::fallback(&["10.0.0.5:50051".to_string()]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.lane.order.is_empty()
    }

    /// The distinct endpoints (drop entries included).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1, 0])?;
    /// let ids: Vec<&str> = list.servers().iter().map(|ep| ep.instance_id()).collect();
    /// assert_eq!(ids, ["b1", "b2"]); // each once, whatever its weight
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn servers(&self) -> &[Arc<Endpoint>] {
        &self.servers
    }

    /// The entries picks cycle through, in order.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1, 0])?;
    /// let order: Vec<&str> = list.entries().map(|ep| ep.instance_id()).collect();
    /// assert_eq!(order, ["b1", "b2", "b1"]);
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Endpoint>> + '_ {
        self.lane.order.iter().map(|&i| &self.servers[i as usize])
    }

    /// Distinct addresses of the non-drop servers, sorted.
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let servers = vec![
    ///     Endpoint::new("b2", "10.0.0.6:50051"),
    ///     Endpoint::new("b1", "10.0.0.5:50051"),
    ///     Endpoint::drop_entry(),
    /// ];
    /// let list = PickList::from_parts(1, servers, vec![0, 1, 2])?;
    /// assert_eq!(list.addresses(), ["10.0.0.5:50051", "10.0.0.6:50051"]);
    /// # Ok::<(), lb_client::list::Error>(())
    /// ```
    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .servers
            .iter()
            .filter(|s| !s.drop)
            .map(|s| s.address.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// When a subscription installed this list, for the list's age (None for
    /// a list built by hand that no subscription installed).
    ///
    /// ```
    /// assert!(lb_client::PickList::empty().installed_at().is_none());
    /// // On a subscription: how long ago the daemon's list in use arrived.
    /// # fn age(sub: &lb_client::Subscription) -> Option<std::time::Duration> {
    /// sub.current().installed_at().map(|at| at.elapsed())
    /// # }
    /// ```
    pub fn installed_at(&self) -> Option<Instant> {
        self.installed_at
    }

    /// Stamps the moment a subscription installs the list.
    pub(crate) fn mark_installed(&mut self, at: Instant) {
        self.installed_at = Some(at);
    }

    /// Reuses `previous`'s endpoint for every unchanged server so its counters
    /// carry over. Returns the endpoints of `previous` that were not reused (their
    /// unreported counters still need sending).
    ///
    /// ```
    /// use lb_client::{Endpoint, PickList};
    /// let (b1, b2) = ("10.0.0.5:50051", "10.0.0.6:50051");
    /// let servers = vec![Endpoint::new("b1", b1), Endpoint::new("b2", b2)];
    /// let old = PickList::from_parts(1, servers, vec![0, 1])?;
    /// old.pick()?; // b1 started a call
    /// let mut new = PickList::from_parts(2, vec![Endpoint::new("b1", b1)], vec![0])?;
    /// let gone = new.adopt(&old);
    /// assert_eq!(new.servers()[0].counts().started, 1); // b1's counters carried over
    /// assert_eq!(gone[0].instance_id(), "b2"); // left the list
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&mut self, previous: &PickList) -> Vec<Arc<Endpoint>> {
        // Matched by instance id; empty ids (drops, fallback) are never matched so a
        // fallback address does not masquerade as a daemon-known instance.
        // Ids are distinct within a list; few servers (the common case) are
        // found by a scan, which beats hashing every id.
        let by_id: Option<HashMap<&str, usize>> =
            (previous.servers.len() > SMALL_LIST).then(|| {
                previous
                    .servers
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.instance_id.is_empty())
                    .map(|(i, e)| (e.instance_id.as_str(), i))
                    .collect()
            });
        let mut reused = vec![false; previous.servers.len()];
        for slot in &mut self.servers {
            if slot.instance_id.is_empty() {
                continue;
            }
            let at = match &by_id {
                Some(m) => m.get(slot.instance_id.as_str()).copied(),
                None => previous
                    .servers
                    .iter()
                    .position(|e| e.instance_id == slot.instance_id),
            };
            if let Some(i) = at {
                let prev = &previous.servers[i];
                if !reused[i] && prev.same_as(slot) {
                    *slot = Arc::clone(prev);
                    reused[i] = true;
                }
            }
        }
        previous
            .servers
            .iter()
            .zip(&reused)
            .filter(|(_, &r)| !r)
            .map(|(e, _)| Arc::clone(e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Outcome::success(Duration::from_millis(1))
    }

    #[test]
    fn two_choices_follow_the_order_while_nothing_is_in_flight() {
        let list = abc().with_choices(choice::TWO, 0);
        let picked: Vec<String> = (0..50)
            .map(|_| {
                let ep = list.pick().unwrap();
                ep.record(ok());
                ep.instance_id().to_owned()
            })
            .collect();
        let plain: Vec<String> = (0..50)
            .map(|i| ["a", "b", "a", "c", "a"][i % 5].to_owned())
            .collect();
        assert_eq!(picked, plain);
        assert!(list.servers().iter().all(|e| e.in_flight() == 0));
    }

    #[test]
    fn two_choices_steer_away_from_where_this_client_waits() {
        // Equal shares; 3 calls held on "a", every other call answered at once.
        let list = PickList::from_parts(
            1,
            vec![Endpoint::new("a", "x:1"), Endpoint::new("b", "y:2")],
            vec![0, 1],
        )
        .unwrap()
        .with_choices(choice::TWO, 0);
        let held: Vec<_> = (0..3).map(|_| list.servers()[0].clone()).collect();
        for ep in &held {
            ep.started();
        }
        let n = 4000;
        let mut a = 0;
        for _ in 0..n {
            let ep = list.pick().unwrap();
            if ep.instance_id() == "a" {
                a += 1;
            }
            ep.record(ok());
        }
        // "a" is kept only when both candidates are "a": a quarter of the
        // picks (binomial, sd ≈ 27), against half of them without the choice.
        assert!((n / 6..n / 3).contains(&a), "a picked {a} times of {n}");
        assert_eq!(list.servers()[0].in_flight(), 3);
        // Following the order, the held calls change nothing.
        let plain = PickList::from_parts(
            1,
            vec![Endpoint::new("a", "x:1"), Endpoint::new("b", "y:2")],
            vec![0, 1],
        )
        .unwrap();
        plain.servers()[0].started();
        let a = (0..100)
            .filter(|_| {
                let ep = plain.pick().unwrap();
                ep.record(ok());
                ep.instance_id() == "a"
            })
            .count();
        assert_eq!(a, 50);
    }

    #[test]
    fn two_choices_never_pick_a_drop_entry_the_order_did_not_land_on() {
        let servers = vec![Endpoint::new("a", "x:1"), Endpoint::drop_entry()];
        let list = PickList::from_parts(1, servers, vec![0, 1, 0, 0])
            .unwrap()
            .with_choices(choice::TWO, 0);
        list.servers()[0].started(); // "a" is busy: the drop entry must still not win
        let dropped = (0..400)
            .filter(|_| match list.pick() {
                Ok(ep) => {
                    ep.record(ok());
                    false
                }
                Err(e) => {
                    assert_eq!(e, NoPick::Dropped);
                    true
                }
            })
            .count();
        assert_eq!(dropped, 100); // exactly the order's quarter
    }

    #[test]
    fn in_flight_is_released_once_per_pick_and_never_below_zero() {
        let list = abc();
        let ep = list.pick().unwrap();
        assert_eq!(ep.in_flight(), 1);
        ep.abandon();
        assert_eq!(ep.in_flight(), 0);
        ep.record(ok()); // a report without a pick (a list built by hand)
        assert_eq!(ep.in_flight(), 0);
        let all = list.distinct(LaneRef::Default);
        assert!(all.iter().all(|e| e.in_flight() == 1));
    }

    #[test]
    fn keyed_calls_spill_off_a_busy_home_and_come_back_when_it_drains() {
        let servers: Vec<Endpoint> = (0..4)
            .map(|i| Endpoint::new(format!("b{i}"), format!("10.0.0.{i}:1")))
            .collect();
        let table: Vec<u32> = (0..40).map(|k| k % 4).collect();
        let list = PickList::from_parts(1, servers, vec![0, 1, 2, 3])
            .unwrap()
            .with_affinity(table)
            .unwrap()
            .with_load_bound(1.25);
        let home = list.pick_for_key(b"hot").unwrap();
        home.abandon();
        // One hot key, nothing released: the home takes calls while it holds
        // at most max(1, ⌈⌈1.25 (T + 1)⌉ / 4⌉) of them, then they spill.
        let picks: Vec<Arc<Endpoint>> = (0..40)
            .map(|_| list.pick_keyed(b"hot", true).unwrap())
            .collect();
        let on_home = picks.iter().filter(|e| e.same_server(&home)).count();
        assert!((10..=14).contains(&on_home), "{on_home} of 40 on the home");
        let total: u64 = list.servers().iter().map(|e| e.in_flight()).sum();
        assert_eq!(total, 40);
        for e in list.servers() {
            // A server takes a call while it holds at most its capacity, so
            // it ends with at most one more: T = 39 at the last pick gives
            // ⌈⌈1.25 · 40⌉ / 4⌉ = 13, so at most 14 of the 40.
            assert!(
                e.in_flight() <= 14,
                "{} holds {}",
                e.instance_id(),
                e.in_flight()
            );
        }
        // The table's own answer is unchanged, and with the calls done the
        // key is back on its home.
        assert!(list.pick_for_key(b"hot").unwrap().same_server(&home));
        for e in &picks {
            e.record(ok());
        }
        for e in list.servers() {
            while e.in_flight() > 0 {
                e.abandon();
            }
        }
        assert!(list.pick_keyed(b"hot", true).unwrap().same_server(&home));
        // Without the bound, every call stays on the home.
        let plain = abc().with_affinity(vec![0, 1, 2]).unwrap();
        let first = plain.pick_keyed(b"k", true).unwrap();
        assert!((0..20).all(|_| plain.pick_keyed(b"k", true).unwrap().same_server(&first)));
    }

    #[test]
    fn the_daemons_spill_fraction_moves_keyed_calls_off_their_home() {
        let keyed = |spill: &[f64]| {
            let servers = ["b1", "b2", "b3"]
                .iter()
                .enumerate()
                .map(|(i, id)| Endpoint::new(*id, format!("10.0.0.{i}:1")))
                .collect();
            PickList::from_parts(1, servers, vec![0, 1, 2])
                .unwrap()
                .with_affinity(vec![0, 1, 2])
                .unwrap()
                .with_load_bound(1.25)
                .with_key_spill(spill)
        };
        // Keys whose home is b1 (server 0).
        let plain = keyed(&[]);
        let keys: Vec<String> = (0..300)
            .map(|k| format!("user-{k}"))
            .filter(|k| plain.pick_for_key(k.as_bytes()).unwrap().instance_id() == "b1")
            .collect();
        assert!(keys.len() > 50);
        let on_b1 = |list: &PickList| {
            keys.iter()
                .filter(|k| {
                    let ep = list.pick_keyed(k.as_bytes(), true).unwrap();
                    ep.abandon(); // nothing stays in flight: only the spill decides
                    ep.instance_id() == "b1"
                })
                .count()
        };
        assert_eq!(on_b1(&plain), keys.len());
        // b1 spills everything (7 is clamped to 1): every one moves, and
        // the table's own answer stays b1.
        let all = keyed(&[7.0, 0.0, 0.0]);
        assert_eq!(on_b1(&all), 0);
        assert_eq!(
            all.pick_for_key(keys[0].as_bytes()).unwrap().instance_id(),
            "b1"
        );
        // Another server's spill, a list of the wrong length, or no bound:
        // nothing moves.
        assert_eq!(on_b1(&keyed(&[0.0, 1.0, 1.0])), keys.len());
        assert_eq!(on_b1(&keyed(&[1.0, 0.0])), keys.len());
        let unbounded = keyed(&[1.0, 0.0, 0.0]).with_load_bound(0.0);
        assert_eq!(on_b1(&unbounded), keys.len());
    }

    fn abc() -> PickList {
        PickList::from_parts(
            1,
            vec![
                Endpoint::new("a", "10.0.0.1:80"),
                Endpoint::new("b", "10.0.0.2:80"),
                Endpoint::new("c", "10.0.0.3:80"),
            ],
            vec![0, 1, 0, 2, 0],
        )
        .unwrap()
    }

    #[test]
    fn fast_rem_is_the_remainder() {
        for d in [
            1u32,
            2,
            3,
            7,
            10,
            13,
            100,
            1023,
            1024,
            65_536,
            99_991,
            u32::MAX,
        ] {
            let m = rem_magic(d);
            for a in (0..2000u32).chain([u32::MAX - 1, u32::MAX, 1 << 31, 123_456_789]) {
                assert_eq!(fast_rem(a, m, d), (a % d) as usize, "{a} % {d}");
            }
        }
    }

    #[test]
    fn pick_follows_order_and_wraps() {
        let list = abc();
        let got: Vec<String> = (0..10)
            .map(|_| list.pick().unwrap().instance_id().to_owned())
            .collect();
        assert_eq!(got, ["a", "b", "a", "c", "a", "a", "b", "a", "c", "a"]);
        assert_eq!(list.servers()[0].counts().started, 6);
        assert_eq!(list.len(), 5);
        let shares = list.entries().filter(|e| e.instance_id() == "a").count();
        assert_eq!(shares, 3);
        assert_eq!(
            list.addresses(),
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        );
    }

    #[test]
    fn drop_entries_and_empty() {
        let list = PickList::from_parts(
            1,
            vec![Endpoint::new("a", "x:1"), Endpoint::drop_entry()],
            vec![0, 1],
        )
        .unwrap();
        assert!(list.pick().is_ok());
        assert_eq!(list.pick().unwrap_err(), NoPick::Dropped);
        assert!(list.pick().is_ok());
        assert_eq!(list.servers()[1].counts().started, 0);
        assert_eq!(PickList::empty().pick().unwrap_err(), NoPick::Empty);
    }

    #[test]
    fn from_parts_rejects_out_of_range() {
        let err = PickList::from_parts(1, vec![Endpoint::new("a", "x:1")], vec![0, 1]);
        assert_eq!(
            err.unwrap_err(),
            Error::OrderOutOfRange {
                position: 1,
                index: 1,
                servers: 1
            }
        );
    }

    #[test]
    fn adopt_keeps_counters_of_unchanged_endpoints() {
        let old = abc();
        let a = old.pick().unwrap();
        old.servers()[0].record(Outcome::failure(
            Code::Unavailable,
            Duration::from_millis(3),
        ));
        let mut new = PickList::from_parts(
            2,
            vec![
                Endpoint::new("a", "10.0.0.1:80"),
                Endpoint::new("b", "10.0.0.2:80").with_tier(1), // changed
                Endpoint::new("d", "10.0.0.4:80"),
            ],
            vec![0, 1, 2],
        )
        .unwrap();
        let retired = new.adopt(&old);
        assert!(Arc::ptr_eq(&new.servers()[0], &a));
        let c = new.servers()[0].counts();
        assert_eq!((c.started, c.finished, c.failed), (1, 1, 1));
        assert_eq!(c.latency_sum_us, 3000);
        assert!(!Arc::ptr_eq(&new.servers()[1], &old.servers()[1]));
        let ids: Vec<&str> = retired.iter().map(|e| e.instance_id()).collect();
        assert_eq!(ids, ["b", "c"]);
        // A fresh list starts at the head of its order.
        assert_eq!(new.pick().unwrap().instance_id(), "a");
    }

    #[test]
    fn adopt_matches_the_same_by_scan_and_by_map() {
        // Below and above SMALL_LIST: odd ids kept, even ids re-addressed,
        // plus a drop entry and a fallback address that must never match.
        for n in [6, SMALL_LIST + 8] {
            let list = |moved: bool| {
                let mut servers: Vec<Endpoint> = (0..n)
                    .map(|i| {
                        let port = if moved && i % 2 == 0 { 2 } else { 1 };
                        Endpoint::new(format!("s{i}"), format!("10.0.0.{i}:{port}"))
                    })
                    .collect();
                servers.push(Endpoint::drop_entry());
                servers.push(Endpoint::new("", "10.9.9.9:1"));
                let order = (0..servers.len() as u32).collect();
                PickList::from_parts(1, servers, order).unwrap()
            };
            let old = list(false);
            let mut new = list(true);
            let retired = new.adopt(&old);
            for i in 0..n {
                assert_eq!(
                    Arc::ptr_eq(&new.servers()[i], &old.servers()[i]),
                    i % 2 == 1,
                    "n={n} s{i}"
                );
            }
            assert!(!Arc::ptr_eq(&new.servers()[n], &old.servers()[n]));
            assert!(!Arc::ptr_eq(&new.servers()[n + 1], &old.servers()[n + 1]));
            let mut ids: Vec<&str> = retired.iter().map(|e| e.instance_id()).collect();
            ids.sort();
            let mut want: Vec<String> = (0..n).step_by(2).map(|i| format!("s{i}")).collect();
            want.extend([String::new(), String::new()]);
            want.sort();
            assert_eq!(ids, want, "n={n}");
        }
    }

    #[test]
    fn fallback_dedups_and_is_version_zero() {
        let list = PickList::fallback(&["x:1".into(), "y:2".into(), "x:1".into()]);
        assert_eq!(list.version(), 0);
        assert_eq!(list.servers().len(), 2);
        assert_eq!(list.len(), 3);
        assert_eq!(list.pick().unwrap().address(), "x:1");
    }
}
