//! Following a service: [`subscribe`] and the background task behind a
//! [`Subscription`].
//!
//! ```no_run
//! use std::time::Duration;
//! use lb_client::{subscribe, ClientOptions, Outcome};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let sub = subscribe("echo", ClientOptions::new("127.0.0.1:7400")).await?;
//! let ep = sub.pick()?;
//! // ... call ep.address(), then:
//! sub.report(&ep, Outcome::success(Duration::from_millis(3)));
//! sub.shutdown(Duration::from_secs(1)).await; // before the process exits
//! # Ok(()) }
//! ```
//!
//! State is a writer/reader pair: the task is the only writer and swaps whole
//! [`PickList`]s into an `ArcSwap`, then bumps an install counter; `pick()`
//! reads the counter and, while it has not moved, picks from the list its
//! thread already holds (a small per-thread cache), else loads the `ArcSwap`
//! (lock-free either way). Each thread follows the order with its own cursor
//! (kept in that cache, starting at a per-thread offset), as Envoy's worker
//! threads each run their own balancer: every thread's picks keep the
//! weights exactly over a period, and threads do not contend on a shared
//! cursor. A `watch` channel carries a generation counter so
//! [`Subscription::wait_for`] can wake on every swap.
//!
//! The task opens `Balancer/Subscribe` on the process's shared connection to
//! a daemon ([`crate::daemon`]: one HTTP/2 connection per daemon, whatever
//! the number of subscriptions), installs each list (ignoring older
//! versions, except the first list of a new stream: the daemon lost its
//! state, and following it is the best bet), and sends `ClientStats` when
//! the daemon asks for them. When the stream breaks it keeps the last list,
//! so calls keep flowing while the daemon is away, and reconnects with
//! jittered backoff ([`crate::Backoff`]), trying the configured daemons in
//! turn.
//!
//! # The first list
//! [`subscribe`] waits (up to [`ClientOptions::first_list_timeout`], 5 s by
//! default) for the first list, so the call that follows it has backends to
//! pick from. Definite answers (connection refused, a TLS failure,
//! `unauthenticated`, any refusal: see [`DaemonError::is_definite`]) from
//! every configured daemon in a row end the wait at once, with an
//! [`Error`] naming the daemon and the cause. The task records every
//! failed attempt, so [`Subscription::last_error`] and the "no backend
//! available" error of a later call say why the daemon is away.
//!
//! A service the daemon has never heard of is not an error: the daemon
//! answers with an empty list, `subscribe` returns, and the list fills when
//! backends register (callers may start before their backends, as with
//! gRPC's wait-for-ready). A call on the empty list fails with `unavailable`
//! naming the service and saying the daemon lists no instance of it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::budget::{BudgetConfig, RetryBudget};
use crate::credentials::Credentials;
use crate::daemon::{self, DaemonError};
use crate::list::{self, Endpoint, NoPick, Outcome, PickList};
use crate::protocol::{Identity, StatsReport};

/// Why a subscription could not be created, or a wait ended.
///
/// ```
/// use lb_client::{subscribe, ClientOptions, Error};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Configuration mistakes fail at once, before anything is dialled:
/// let err = subscribe("", ClientOptions::new("127.0.0.1:7400")).await.unwrap_err();
/// assert!(matches!(err, Error::EmptyService));
/// let err = subscribe("echo", ClientOptions::new("lb daemon:7400")).await.unwrap_err();
/// assert!(matches!(err, Error::InvalidDaemon { .. }), "{err}");
/// // A daemon's refusal is `Error::Daemon`, naming it and the cause:
/// // "cannot subscribe to \"echo\": cannot reach the lb daemon at 127.0.0.1:7400:
/// // connection refused".
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`subscribe`] was called with an empty service name: pass the name the
    /// backends register under.
    #[error("service name is empty")]
    EmptyService,
    /// `ClientOptions::daemons` is empty: give at least one daemon address.
    #[error("no daemon address given")]
    NoDaemons,
    /// A daemon address is not "host:port" or an http(s) URI: fix the configuration.
    #[error("invalid daemon address {address:?}: {source}")]
    InvalidDaemon {
        /// The address as given.
        address: String,
        /// Why it was refused.
        source: tonic::transport::Error,
    },
    /// The TLS settings of `ClientOptions::credentials` are unusable (a CA
    /// or client certificate that is not PEM, a key that does not parse).
    #[error("unusable TLS settings for the lb daemon at {address}: {reason}")]
    InvalidCredentials {
        /// The daemon address they were applied to.
        address: String,
        /// Why they were refused, with every cause.
        reason: String,
    },
    /// `ClientOptions::client_id` is empty: leave the default or give a unique id.
    #[error("client id is empty")]
    EmptyClientId,
    /// [`subscribe`] got a definite answer from every daemon before a list:
    /// connection refused, a TLS failure, a refusal such as
    /// `unauthenticated`. `cause` names the daemon and says what to fix.
    /// (With `ClientOptions::fallback` set, `subscribe` starts on the
    /// fallback list instead.)
    #[error("cannot subscribe to {service:?}: {cause}")]
    Daemon {
        /// The service subscribed to.
        service: String,
        /// The last daemon's answer.
        cause: DaemonError,
    },
    /// [`subscribe`] waited `ClientOptions::first_list_timeout` without a
    /// list or a definite answer: the daemon accepts connections but sends
    /// nothing, or connecting keeps timing out. Raise the timeout, or set
    /// it to `None` to return at once.
    #[error(
        "no server list for {service:?} from the lb daemon at {} within {waited:?}: {}",
        daemons.join(", "),
        waiting_for(*connected, last.as_ref())
    )]
    FirstListTimeout {
        /// The service subscribed to.
        service: String,
        /// The daemons configured.
        daemons: Vec<String>,
        /// How long `subscribe` waited.
        waited: Duration,
        /// Whether a stream to a daemon was open when the wait ended.
        connected: bool,
        /// The latest failed attempt, if any.
        last: Option<DaemonError>,
    },
    /// [`Subscription::wait_for`] reached its deadline before the list matched.
    #[error("timed out waiting for the server list")]
    Timeout,
}

/// What a first-list wait was still waiting for.
fn waiting_for(connected: bool, last: Option<&DaemonError>) -> String {
    match (connected, last) {
        (true, _) => "subscribed, but no list arrived".to_owned(),
        (false, Some(e)) => format!("still connecting; last attempt: {e}"),
        (false, None) => "no answer from it yet".to_owned(),
    }
}

/// How to reach the daemons and who this client is.
///
/// ```
/// use std::time::Duration;
/// use lb_client::ClientOptions;
/// let options = ClientOptions {
///     daemons: vec!["10.0.0.2:7400".into(), "10.0.0.3:7400".into()], // tried in turn
///     zone: "eu-1".into(),
///     labels: [("tier".to_string(), "vip".to_string())].into(), // for routing rules
///     fallback: vec!["10.0.0.5:50051".into()], // until a daemon answers
///     ..ClientOptions::default()
/// };
/// assert_eq!(options.connect_timeout, Duration::from_secs(2));
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Daemon addresses, "host:port" or "http://host:port". A subscription
    /// starts at a point that depends on `client_id` (so clients spread over
    /// the daemons) and tries them in turn on reconnect.
    pub daemons: Vec<String>,
    /// Identifies this client to the daemon (per-client ordering and stats).
    /// Default: `<hostname>-<pid>-<random u32>`.
    pub client_id: String,
    /// This client's locality.
    pub zone: String,
    /// Labels that routing rules may match.
    pub labels: BTreeMap<String, String>,
    /// "host:port" addresses used, equally weighted as version 0, until the daemon
    /// sends a list.
    pub fallback: Vec<String>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Bound on establishing a connection to a daemon.
    pub connect_timeout: Duration,
    /// A token and TLS settings, for daemons that require them.
    pub credentials: Credentials,
    /// How long [`subscribe`] waits for the first list (or a definite
    /// failure) before returning; `None` returns at once, with the fallback
    /// list (or an empty one) until the daemon's arrives. Default: 5 s.
    pub first_list_timeout: Option<Duration>,
}

/// How long [`subscribe`] waits for the first list, unless configured:
/// above the connect timeout (2 s), so one slow connect can be retried.
///
/// ```
/// use lb_client::{subscription::DEFAULT_FIRST_LIST_TIMEOUT, ClientOptions};
/// let options = ClientOptions::new("127.0.0.1:7400");
/// assert_eq!(options.first_list_timeout, Some(DEFAULT_FIRST_LIST_TIMEOUT));
/// assert!(DEFAULT_FIRST_LIST_TIMEOUT > options.connect_timeout);
/// ```
pub const DEFAULT_FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(5);

impl ClientOptions {
    /// Options for one daemon; everything else defaults.
    ///
    /// ```
    /// let options = lb_client::ClientOptions::new("127.0.0.1:7400");
    /// assert_eq!(options.daemons, ["127.0.0.1:7400"]);
    /// assert!(!options.client_id.is_empty()); // <hostname>-<pid>-<random>
    /// ```
    pub fn new(daemon: impl Into<String>) -> Self {
        ClientOptions {
            daemons: vec![daemon.into()],
            ..ClientOptions::default()
        }
    }

    /// The same options with `credentials`.
    ///
    /// ```
    /// use lb_client::{ClientOptions, Credentials};
    /// let token = std::env::var("LB_TOKEN").unwrap_or_default();
    /// let options = ClientOptions::new("127.0.0.1:7400")
    ///     .with_credentials(Credentials::default().with_token(token));
    /// assert!(!options.credentials.uses_tls());
    /// ```
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// The same options with [`ClientOptions::first_list_timeout`] set:
    /// `None` makes [`subscribe`] return at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_client::ClientOptions;
    /// // A caller that may start before lb: return at once, pick from the fallback list.
    /// let mut options = ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None);
    /// options.fallback = vec!["10.0.0.5:50051".into()];
    /// // A batch job that may wait longer for its first list:
    /// let patient = ClientOptions::new("127.0.0.1:7400")
    ///     .with_first_list_timeout(Some(Duration::from_secs(30)));
    /// # let _ = (options, patient);
    /// ```
    pub fn with_first_list_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.first_list_timeout = timeout;
        self
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            daemons: vec!["127.0.0.1:7400".to_owned()],
            client_id: default_client_id(),
            zone: String::new(),
            labels: BTreeMap::new(),
            fallback: Vec::new(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(2),
            credentials: Credentials::default(),
            first_list_timeout: Some(DEFAULT_FIRST_LIST_TIMEOUT),
        }
    }
}

/// `<hostname>-<pid>-<random>`, within the daemon's client id alphabet.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "client".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(96) // leaves room for the suffix under the 128-byte limit
        .collect();
    format!("{host}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// Distinct ids for subscriptions' shared states (0 is never used: it marks
/// an empty cache slot).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Lists this thread picked from lately, direct-mapped by subscription id; a
/// stale or foreign slot is reloaded.
const CACHE_SLOTS: usize = 4;

/// One cached list and this thread's cursor in it.
struct CacheSlot {
    /// The subscription's id (0: empty).
    id: u64,
    /// Its install count when the list was loaded.
    installs: u64,
    list: Option<Arc<PickList>>,
    /// This thread's position in the list's default order.
    cursor: u32,
    /// This thread's number among the subscription's picking threads: the
    /// first starts every new list at its first entry, as the daemon means
    /// it; later ones start spread around it (a golden-ratio stride), so a
    /// client's threads do not all begin on the same entry.
    ordinal: u32,
}

const EMPTY_SLOT: CacheSlot = CacheSlot {
    id: 0,
    installs: 0,
    list: None,
    cursor: 0,
    ordinal: 0,
};

thread_local! {
    static PICK_CACHE: RefCell<[CacheSlot; CACHE_SLOTS]> =
        const { RefCell::new([EMPTY_SLOT; CACHE_SLOTS]) };
}

/// State shared by the handles and the task.
struct Shared {
    service: String,
    /// Unique over the process (the per-thread cache's key).
    id: u64,
    list: ArcSwap<PickList>,
    /// Lists installed so far; bumped after every swap (the cache's check).
    installs: AtomicU64,
    /// Threads that have picked from this subscription (their ordinals).
    threads: AtomicU32,
    /// Bumped on every list swap; `wait_for` watches it.
    generation: watch::Sender<u64>,
    /// What the task knows of its daemons; `subscribe` watches it.
    link: watch::Sender<Link>,
    connected: AtomicBool,
    streams: AtomicU64,
    dropped: AtomicU64,
    no_backend: AtomicU64,
    /// The retry budget, rebuilt when the daemon changes its settings.
    budget: std::sync::Mutex<(BudgetConfig, Arc<RetryBudget>)>,
}

impl Shared {
    /// Runs `f` on the current list: this thread's cached copy while no list
    /// was installed since it was cached, else a fresh load (which refills
    /// the cache). The count is read before the list, and `install` swaps
    /// before counting, so a cached list is never older than the count says.
    #[inline]
    fn with_list<R>(&self, f: impl Fn(&PickList, Option<&mut u32>) -> R) -> R {
        let installs = self.installs.load(Acquire);
        PICK_CACHE
            .try_with(|cache| {
                // Not re-entered: `f` is a pick, which never picks again.
                let mut cache = cache.try_borrow_mut().ok()?;
                let slot = &mut cache[(self.id as usize) % CACHE_SLOTS];
                if slot.id != self.id || slot.installs != installs || slot.list.is_none() {
                    let ordinal = if slot.id == self.id {
                        slot.ordinal
                    } else {
                        self.threads.fetch_add(1, Relaxed)
                    };
                    let list = self.list.load_full();
                    *slot = CacheSlot {
                        id: self.id,
                        installs,
                        cursor: list.cursor_start(ordinal.wrapping_mul(0x9E37_79B9)),
                        list: Some(list),
                        ordinal,
                    };
                }
                let list = slot.list.as_deref()?;
                Some(f(list, Some(&mut slot.cursor)))
            })
            .ok()
            .flatten()
            // No thread-local storage (thread teardown) or a nested call.
            .unwrap_or_else(|| f(&self.list.load(), None))
    }

    fn install(&self, mut list: PickList) {
        list.mark_installed(std::time::Instant::now());
        self.list.store(Arc::new(list));
        self.installs.fetch_add(1, Release);
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// What the task knows of its daemons: for [`subscribe`]'s wait, and for
/// the errors callers see later.
#[derive(Clone, Debug, Default)]
struct Link {
    /// A list from a daemon was installed.
    listed: bool,
    /// The daemon of the open (or the last) stream.
    daemon: Option<String>,
    /// The latest failed attempt; cleared when a stream opens.
    last_error: Option<DaemonError>,
    /// Definite failures in a row ([`DaemonError::is_definite`]); as many
    /// as there are daemons means each refused.
    definite: usize,
}

/// Dropped with the last [`Subscription`] clone; dropping `stop` ends the task.
struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A live subscription to one service's server list. Cheap to clone; the
/// background task stops when the last clone is dropped or [`Subscription::close`]
/// is called.
///
/// Made by [`subscribe`]. A complete program: `examples/hello/src/bin/caller.rs`.
///
/// ```
/// use std::time::Duration;
/// use lb_client::{subscribe, ClientOptions, Outcome};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // `fallback`: picks use these until the daemon's first list arrives, and
/// // `subscribe` returns at once without one (so this example runs offline).
/// let options = ClientOptions {
///     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
///     ..ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
/// };
/// let sub = subscribe("echo", options).await?;
/// let ep = sub.pick()?; // connect to ep.address(), make the call, then:
/// sub.report(&ep, Outcome::success(Duration::from_millis(3)));
/// assert_eq!(ep.address(), "10.0.0.5:50051");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Subscription {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("service", &self.inner.shared.service)
            .field("version", &self.version())
            .field("connected", &self.connected())
            .finish()
    }
}

/// Subscribes to `service` and waits, up to
/// [`ClientOptions::first_list_timeout`] (5 s by default), for the daemon's
/// first list, so a call made right after it has backends to pick from:
///
/// ```no_run
/// # mod echo { pub struct EchoClient<T>(T); impl<T> EchoClient<T> { pub fn new(t: T) -> Self { EchoClient(t) } } }
/// # use echo::EchoClient;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lb_client::{subscribe, ClientOptions};
/// let sub = subscribe("echo", ClientOptions::new("127.0.0.1:7400")).await?;
/// let mut client = EchoClient::new(sub.channel()); // a generated tonic client
/// // ... client.whoami(...).await ...
/// # Ok(()) }
/// ```
///
/// It fails at once, with an [`Error::Daemon`] that names the daemon and
/// the cause ("cannot reach the lb daemon at 127.0.0.1:7400: connection
/// refused", a TLS failure, "unauthenticated: …"), when every configured
/// daemon gave such a definite answer; and with
/// [`Error::FirstListTimeout`], saying what it still waited for, when the
/// bound passes. With `options.fallback` set it never fails for the
/// daemon: it starts on the fallback list, which the daemon's lists
/// replace as they arrive ([`Subscription::last_error`] says why none came).
///
/// A service the daemon has never heard of subscribes fine: its first
/// list is empty and fills as backends register, so callers may start
/// before their backends (gRPC's wait-for-ready); a call meanwhile fails
/// with `unavailable` naming the service and saying the daemon lists no
/// instance of it. Refusing here instead would make every deployment order
/// matter, and an empty list is a daemon's definite answer.
///
/// The subscription shares the process's one HTTP/2 connection to its
/// daemon with every other subscription and reporter. Must be called
/// within a Tokio runtime.
pub async fn subscribe(service: &str, options: ClientOptions) -> Result<Subscription, Error> {
    if service.is_empty() {
        return Err(Error::EmptyService);
    }
    if options.daemons.is_empty() {
        return Err(Error::NoDaemons);
    }
    if options.client_id.is_empty() {
        return Err(Error::EmptyClientId);
    }
    for d in &options.daemons {
        daemon::dial_target(d).map_err(|source| Error::InvalidDaemon {
            address: d.clone(),
            source,
        })?;
        daemon::daemon_target(d, options.connect_timeout, &options.credentials).map_err(|e| {
            Error::InvalidCredentials {
                address: d.clone(),
                reason: daemon::error_chain(&e),
            }
        })?;
    }
    let wait = options.first_list_timeout;
    let daemons = options.daemons.clone();
    let fallback = !options.fallback.is_empty();
    let (subscription, stop) =
        Subscription::with_list(service, PickList::fallback(&options.fallback));
    let task = Task {
        shared: Arc::clone(&subscription.inner.shared),
        rng: StdRng::seed_from_u64(seed(&options.client_id)),
        options,
        retired: Vec::new(),
        sent_dropped: 0,
        sent_no_backend: 0,
    };
    let handle = tokio::spawn(task.run(stop));
    *subscription
        .inner
        .task
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
    if let Some(bound) = wait {
        if let Err(e) = subscription.first_list(bound, daemons, fallback).await {
            subscription.close();
            return Err(e);
        }
    }
    Ok(subscription)
}

/// Deterministic per client, different between clients.
fn seed(client_id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    client_id.hash(&mut h);
    h.finish()
}

impl Subscription {
    fn with_list(service: &str, list: PickList) -> (Subscription, watch::Receiver<bool>) {
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            id: NEXT_ID.fetch_add(1, Relaxed),
            list: ArcSwap::from_pointee(list),
            installs: AtomicU64::new(0),
            threads: AtomicU32::new(0),
            generation: watch::Sender::new(0),
            link: watch::Sender::new(Link::default()),
            connected: AtomicBool::new(false),
            streams: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            no_backend: AtomicU64::new(0),
            budget: std::sync::Mutex::new((
                BudgetConfig::default(),
                Arc::new(RetryBudget::new(BudgetConfig::default())),
            )),
        });
        let inner = Arc::new(Handle {
            shared,
            stop,
            task: std::sync::Mutex::new(None),
        });
        (Subscription { inner }, stop_rx)
    }

    /// A subscription with a fixed list and no task (unit tests).
    #[cfg(test)]
    pub(crate) fn detached(list: PickList) -> Subscription {
        Subscription::with_list("test", list).0
    }

    /// The next entry of the current list. Lock-free and allocation-free.
    /// A drop entry or an empty list is counted (see [`Subscription::dropped`],
    /// [`Subscription::no_backend`]) and reported to the daemon.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// // The fallback list here: 10.0.0.5, 10.0.0.6.
    /// assert_eq!(sub.pick()?.address(), "10.0.0.5:50051");
    /// assert_eq!(sub.pick()?.address(), "10.0.0.6:50051");
    /// assert_eq!(sub.pick()?.address(), "10.0.0.5:50051");
    /// # Ok(()) }
    /// ```
    pub fn pick(&self) -> Result<Arc<Endpoint>, NoPick> {
        self.count(self.inner.shared.with_list(|l, cursor| match cursor {
            Some(c) => l.pick_at(c),
            None => l.pick(),
        }))
    }

    /// Picks for a request key (a user id, a source address, ...): under a
    /// hash policy the daemon's affinity table decides, so every client sends
    /// the same key to the same backend; under other policies this is
    /// [`Subscription::pick`]. Lock-free and allocation-free.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// let user_id = "user-42";
    /// // Under a hash policy, the same backend for user-42 from every client:
    /// let ep = sub.pick_for_key(user_id.as_bytes())?;
    /// assert!(sub.current().addresses().contains(&ep.address().to_string()));
    /// # Ok(()) }
    /// ```
    pub fn pick_for_key(&self, key: &[u8]) -> Result<Arc<Endpoint>, NoPick> {
        self.count(self.inner.shared.with_list(|l, _| l.pick_for_key(key)))
    }

    /// Picks for a request carrying `labels`: the first routing rule whose
    /// request labels all match selects the order, else the default one.
    /// Lock-free and allocation-free.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// // With `ctl set-rule echo beta --when group=beta --select version=v2`, the
    /// // v2 instances; here (no rule) the default order.
    /// let ep = sub.pick_with(&[("group", "beta")])?;
    /// assert_eq!(ep.address(), "10.0.0.5:50051");
    /// # Ok(()) }
    /// ```
    pub fn pick_with(&self, labels: &[(&str, &str)]) -> Result<Arc<Endpoint>, NoPick> {
        self.count(self.inner.shared.with_list(|l, _| l.pick_with(labels)))
    }

    pub(crate) fn count(&self, r: Result<Arc<Endpoint>, NoPick>) -> Result<Arc<Endpoint>, NoPick> {
        let shared = &self.inner.shared;
        match r {
            Err(NoPick::Dropped) => shared.dropped.fetch_add(1, Relaxed),
            Err(NoPick::Empty | NoPick::NoRoute) => shared.no_backend.fetch_add(1, Relaxed),
            Ok(_) => 0,
        };
        r
    }

    /// The service's retry budget under the daemon's current settings.
    pub(crate) fn budget(&self) -> Arc<RetryBudget> {
        let want = BudgetConfig::from(self.inner.shared.list.load().settings().budget);
        let mut b = self
            .inner
            .shared
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.0 != want {
            *b = (want.clone(), Arc::new(RetryBudget::new(want)));
        }
        Arc::clone(&b.1)
    }

    /// Records the outcome of a call made to `ep` (from [`Subscription::pick`]).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
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
    /// let start = Instant::now();
    /// let result: Result<(), _> = Err(tonic::Status::unavailable("draining")); // the call
    /// sub.report(&ep, match &result {
    ///     Ok(_) => Outcome::success(start.elapsed()),
    ///     Err(s) => Outcome::failure(lb_client::cluster::code_of(s.code()), start.elapsed()),
    /// });
    /// assert_eq!(ep.counts().failed_by_code[Code::Unavailable as usize], 1);
    /// # Ok(()) }
    /// ```
    pub fn report(&self, ep: &Endpoint, outcome: Outcome) {
        ep.record(outcome);
    }

    /// A snapshot of the current list.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// let list = sub.current(); // stays as it is while newer lists arrive
    /// assert_eq!(list.addresses(), ["10.0.0.5:50051", "10.0.0.6:50051"]);
    /// assert_eq!(list.settings().mode_for("/echo.Echo/Say"), &lb_client::Mode::default());
    /// # Ok(()) }
    /// ```
    pub fn current(&self) -> Arc<PickList> {
        self.inner.shared.list.load_full()
    }

    /// Version of the current list (0 = fallback, nothing from the daemon yet).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// assert_eq!(sub.version(), 0); // still on the fallback list
    /// # Ok(()) }
    /// ```
    pub fn version(&self) -> u64 {
        self.inner.shared.list.load().version()
    }

    /// Waits until the current list satisfies `pred`, checking now and after
    /// every list update; [`Error::Timeout`] after `timeout`.
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
    /// // E.g. in a test: until at least two backends are listed.
    /// let list = sub.wait_for(Duration::from_secs(5), |l| l.addresses().len() >= 2).await?;
    /// assert_eq!(list.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&PickList) -> bool,
    ) -> Result<Arc<PickList>, Error> {
        let deadline = Instant::now() + timeout;
        // Subscribe before checking so an update in between is not missed.
        let mut updates = self.inner.shared.generation.subscribe();
        loop {
            let list = self.current();
            if pred(&list) {
                return Ok(list);
            }
            match tokio::time::timeout_at(deadline, updates.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`; treat the impossible as a timeout.
                Ok(Err(_)) | Err(_) => return Err(Error::Timeout),
            }
        }
    }

    /// Waits up to `bound` for the first list from a daemon, or for each of
    /// `daemons` to give a definite failure; see [`subscribe`].
    async fn first_list(
        &self,
        bound: Duration,
        daemons: Vec<String>,
        fallback: bool,
    ) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let mut link = shared.link.subscribe();
        let n = daemons.len();
        let ended = tokio::time::timeout(bound, async {
            // Err only when the task's sender is gone, which `self` prevents.
            let _ = link.wait_for(|l| l.listed || l.definite >= n).await;
        })
        .await;
        let now = shared.link.borrow().clone();
        if now.listed || fallback {
            if !now.listed {
                if let Some(e) = &now.last_error {
                    warn!(service = %shared.service, error = %e, "no list from the lb daemon; starting on the fallback list");
                }
            }
            return Ok(());
        }
        match (ended, now.last_error) {
            (Ok(()), Some(cause)) => Err(Error::Daemon {
                service: shared.service.clone(),
                cause,
            }),
            (_, last) => Err(Error::FirstListTimeout {
                service: shared.service.clone(),
                daemons,
                waited: bound,
                connected: self.connected(),
                last,
            }),
        }
    }

    /// The service this subscription follows.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// assert_eq!(sub.service(), "echo");
    /// # Ok(()) }
    /// ```
    pub fn service(&self) -> &str {
        &self.inner.shared.service
    }

    /// Why the latest attempt to reach a daemon failed (the address and
    /// the cause), or `None` while a stream is open. The task reconnects by
    /// itself; this is for callers that want to say why no list arrives.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// if let Some(e) = sub.last_error() {
    ///     // e.g. "cannot reach the lb daemon at 127.0.0.1:7400: connection refused"
    ///     eprintln!("lb is away ({e}); calls use the last list");
    /// }
    /// assert!(sub.last_error().is_none()); // nothing was tried yet here
    /// # Ok(()) }
    /// ```
    pub fn last_error(&self) -> Option<DaemonError> {
        self.inner.shared.link.borrow().last_error.clone()
    }

    /// The message of a call that found the list empty: the service, what
    /// the daemon said of it, and why no daemon is reachable if none is.
    pub(crate) fn no_backend_message(&self) -> String {
        use std::fmt::Write as _;
        let link = self.inner.shared.link.borrow();
        let mut m = format!("no backend available for {:?}: ", self.service());
        match (&link.daemon, link.listed) {
            (Some(d), true) => {
                let _ = write!(
                    m,
                    "the lb daemon at {d} lists no instance of it (none registered, or all drained or ejected)"
                );
            }
            _ => m.push_str("no server list from an lb daemon yet"),
        }
        if let Some(e) = &link.last_error {
            let _ = write!(m, "; {e}");
        }
        m
    }

    /// True while the stream to a daemon is up.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// assert!(!sub.connected()); // not yet (and, while away, the last list serves)
    /// # Ok(()) }
    /// ```
    pub fn connected(&self) -> bool {
        self.inner.shared.connected.load(Relaxed)
    }

    /// Subscribe streams opened so far (1 + reconnects, once connected).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// // E.g. exported as a metric: a growing count means the daemon keeps going away.
    /// assert_eq!(sub.streams_opened(), 0);
    /// # Ok(()) }
    /// ```
    pub fn streams_opened(&self) -> u64 {
        self.inner.shared.streams.load(Relaxed)
    }

    /// Calls failed locally on a drop entry, since the start.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// // Rises while the daemon sheds load with drop entries (`NoPick::Dropped`).
    /// assert_eq!(sub.dropped(), 0);
    /// # Ok(()) }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Relaxed)
    }

    /// Picks that found an empty list, since the start.
    ///
    /// ```
    /// use lb_client::{subscribe, ClientOptions, NoPick};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None);
    /// let sub = subscribe("echo", options).await?; // no list yet, no fallback
    /// assert_eq!(sub.pick().unwrap_err(), NoPick::Empty);
    /// assert_eq!(sub.no_backend(), 1);
    /// # Ok(()) }
    /// ```
    pub fn no_backend(&self) -> u64 {
        self.inner.shared.no_backend.load(Relaxed)
    }

    /// Stops the background task for every clone. The last list stays in place
    /// and `pick()` keeps working on it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Offline: starts on the fallback list, returns at once, and the
    /// # // subscription's task never runs (nothing here yields).
    /// # let options = lb_client::ClientOptions {
    /// #     fallback: vec!["10.0.0.5:50051".into(), "10.0.0.6:50051".into()],
    /// #     ..lb_client::ClientOptions::new("127.0.0.1:7400").with_first_list_timeout(None)
    /// # };
    /// # let sub = lb_client::subscribe("echo", options).await?;
    /// sub.close(); // no more lists, no more statistics to the daemon
    /// assert_eq!(sub.pick()?.address(), "10.0.0.5:50051"); // the last list still serves
    /// # Ok(()) }
    /// ```
    pub fn close(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Closes the subscription and waits (up to `timeout`) until its last
    /// call statistics have been handed to the daemon and the stream is closed.
    /// Call it before a process exits, so its final outcomes are not lost.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sub = lb_client::subscribe("hello", lb_client::ClientOptions::new("127.0.0.1:7400")).await?;
    /// // ... calls ...
    /// sub.shutdown(Duration::from_secs(1)).await; // then exit
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) {
        self.close();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(timeout, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// Resolves when `close()` was called or every handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The background task: the only writer of `Shared::list`.
struct Task {
    shared: Arc<Shared>,
    options: ClientOptions,
    rng: StdRng,
    /// Endpoints that left the list with counters not yet reported.
    retired: Vec<Arc<Endpoint>>,
    sent_dropped: u64,
    sent_no_backend: u64,
}

impl Task {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let daemons = self.options.daemons.clone();
        let mut attempt = 0u32;
        // Clients spread over the daemons: each starts at its own point (a
        // hash of its id) and then goes round them in order. If every
        // client began with the first address, that one daemon would carry
        // them all (grpc-go issue #3462).
        let start = (seed(&self.options.client_id) % daemons.len().max(1) as u64) as usize;
        for daemon in daemons.iter().cycle().skip(start) {
            let (received, stop_requested) = self.session(daemon, attempt, &mut stop).await;
            if stop_requested {
                break;
            }
            self.shared.connected.store(false, Relaxed);
            // A stream that delivered something was healthy: start over quickly.
            if received {
                attempt = 0;
            }
            let delay = self.options.backoff.delay(attempt, &mut self.rng);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.shared.connected.store(false, Relaxed);
        debug!(service = %self.shared.service, "subscription closed");
    }

    /// One connection and stream; returns whether the daemon sent anything,
    /// and whether the subscription was closed meanwhile.
    async fn session(
        &mut self,
        daemon: &str,
        attempt: u32,
        stop: &mut watch::Receiver<bool>,
    ) -> (bool, bool) {
        let service = self.shared.service.clone();
        // The process's connection to this daemon, shared; dialled (or
        // re-dialled) by the call below.
        let lease = match daemon::lease(
            daemon,
            self.options.connect_timeout,
            &self.options.credentials,
        ) {
            Ok(l) => l,
            Err(e) => {
                // `subscribe` checked the address and TLS settings; this is
                // not expected, but is said like any other failure.
                let tls = self.options.credentials.uses_tls();
                self.failed(DaemonError::undialable(daemon, tls, &e), attempt);
                return (false, false);
            }
        };
        // Small: stats are best-effort and skipped when the stream is backed up.
        let (tx, rx) = mpsc::channel(4);
        let client = Identity {
            client_id: &self.options.client_id,
            zone: &self.options.zone,
            labels: &self.options.labels,
        };
        let credentials = &self.options.credentials;
        let held = self.shared.list.load().state().clone();
        let opened = tokio::select! {
            _ = stopped(stop) => return (false, true),
            r = daemon::subscribe(lease.channel(), credentials, &service, client, &held, rx) => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(status) => {
                let e = self.classify(daemon, &status);
                self.failed(e, attempt);
                return (false, false);
            }
        };
        self.shared.connected.store(true, Relaxed);
        self.shared.streams.fetch_add(1, Relaxed);
        self.shared.link.send_modify(|l| {
            l.daemon = Some(daemon.to_owned());
            l.last_error = None;
            l.definite = 0;
        });
        info!(%daemon, %service, "subscribed to lb daemon");

        let mut received = false;
        let mut first_list = true;
        let mut stats_ms = 0u32;
        let mut ticker: Option<Interval> = None;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(update)) => {
                        received = true;
                        if update.stats_interval_ms != stats_ms {
                            stats_ms = update.stats_interval_ms;
                            ticker = stats_ticker(stats_ms);
                        }
                        let retired = self.apply(update.list, &mut first_list);
                        if ticker.is_some() {
                            self.retired.extend(retired);
                        }
                    }
                    Some(Err(status)) => {
                        let e = self.classify(daemon, &status);
                        info!(%service, error = %e, "subscription stream ended; keeping the last list");
                        self.record(e);
                        break;
                    }
                    None => {
                        info!(%daemon, %service, "daemon ended the subscription stream; keeping the last list");
                        self.record(DaemonError::Broken {
                            daemon: daemon.to_owned(),
                            cause: "the daemon ended the stream".to_owned(),
                        });
                        break;
                    }
                },
                _ = tick(&mut ticker) => {
                    // Reserve first so counters are only reset when the report can go out.
                    if let Ok(permit) = tx.try_reserve() {
                        permit.send(self.take_stats());
                    }
                }
                _ = stopped(stop) => {
                    // Closing: hand over the last outcomes, end our side of the
                    // stream, and give the daemon a moment to take them.
                    if ticker.is_some() {
                        let last = self.take_stats();
                        let flush = async {
                            if tx.send(last).await.is_ok() {
                                drop(tx);
                                while let Some(Ok(_)) = stream.next().await {}
                            }
                        };
                        let _ = tokio::time::timeout(Duration::from_millis(500), flush).await;
                    }
                    return (received, true);
                }
            }
        }
        (received, false)
    }

    /// `status` from the daemon at `daemon`, said for a person.
    fn classify(&self, daemon: &str, status: &tonic::Status) -> DaemonError {
        DaemonError::classify(
            daemon,
            self.options.credentials.uses_tls(),
            self.options.connect_timeout,
            status,
        )
    }

    /// A failed attempt to open a stream: logged (a refusal always, other
    /// failures loud once per outage and quiet while retrying) and recorded
    /// for `subscribe` and callers.
    fn failed(&self, e: DaemonError, attempt: u32) {
        let service = &self.shared.service;
        if attempt == 0 || e.is_answer() {
            warn!(%service, error = %e, "no subscription; retrying");
        } else {
            debug!(%service, error = %e, attempt, "no subscription; retrying");
        }
        self.record(e);
    }

    /// Makes `e` the latest failure; counts it towards giving up on the
    /// first list if it is definite, else starts that count over.
    fn record(&self, e: DaemonError) {
        self.shared.link.send_modify(|l| {
            l.definite = if e.is_definite() { l.definite + 1 } else { 0 };
            l.last_error = Some(e);
        });
    }

    /// Installs a list from the daemon; returns the endpoints it retired.
    ///
    /// Within a stream, a list older than the current one is ignored. The first
    /// list of a new stream is followed even when older: the daemon lost its
    /// state (or we moved to another replica), and its view is the best one left.
    fn apply(
        &mut self,
        list: Option<Result<PickList, list::Error>>,
        first_list: &mut bool,
    ) -> Vec<Arc<Endpoint>> {
        let service = &self.shared.service;
        let mut new = match list {
            None => return Vec::new(),
            Some(Err(e)) => {
                warn!(%service, error = %e, "ignoring a malformed server list from the daemon");
                return Vec::new();
            }
            Some(Ok(l)) => l,
        };
        let current = self.shared.list.load_full();
        // Another stream (another replica) may number versions differently,
        // but never hands back an older state: the daemon waits until it
        // has applied the state the client holds (it was told), and a list
        // behind it is ignored all the same.
        if new.state().is_behind(current.state()) {
            warn!(%service, held = current.state().revision, got = new.state().revision, "ignoring a list of an older state (a replica behind the store)");
            return Vec::new();
        }
        if new.version() < current.version() {
            if !*first_list {
                debug!(%service, held = current.version(), got = new.version(), "ignoring an older list");
                return Vec::new();
            }
            warn!(
                %service,
                held = current.version(),
                got = new.version(),
                "daemon sent an older list on a new stream (did it lose its state?); following it"
            );
        }
        *first_list = false;
        let retired = new.adopt(&current);
        debug!(%service, version = new.version(), entries = new.len(), servers = new.servers().len(), "new server list");
        self.shared.install(new);
        // After the install: `subscribe` returns on this, and a call made
        // then must find the list.
        if !self.shared.link.borrow().listed {
            self.shared.link.send_modify(|l| l.listed = true);
        }
        retired
    }

    /// Takes and resets every counter to report.
    fn take_stats(&mut self) -> StatsReport {
        let mut report = StatsReport::default();
        let list = self.shared.list.load_full();
        let mut take = |ep: &Endpoint| {
            // The daemon knows neither drop entries nor fallback addresses.
            if ep.is_drop() || ep.instance_id().is_empty() {
                return;
            }
            let c = ep.take_counts();
            if !c.is_zero() {
                report.instances.push((ep.instance_id().to_owned(), c));
            }
        };
        list.servers().iter().for_each(|e| take(e));
        self.retired.drain(..).for_each(|e| take(&e));
        let dropped = self.shared.dropped.load(Relaxed);
        let no_backend = self.shared.no_backend.load(Relaxed);
        report.dropped = dropped.wrapping_sub(self.sent_dropped);
        report.no_backend = no_backend.wrapping_sub(self.sent_no_backend);
        self.sent_dropped = dropped;
        self.sent_no_backend = no_backend;
        report
    }
}

/// A ticker for `ms` (none for 0); the first tick is one period away. Floored
/// at 10 ms so a misconfigured daemon cannot make clients spin.
fn stats_ticker(ms: u32) -> Option<Interval> {
    if ms == 0 {
        return None;
    }
    let period = Duration::from_millis(u64::from(ms.max(10)));
    let mut t = tokio::time::interval_at(Instant::now() + period, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(t)
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::ListState;

    #[test]
    fn subscription_counts_drops_and_empty() {
        let list = PickList::from_parts(
            1,
            vec![Endpoint::new("a", "x:1"), Endpoint::drop_entry()],
            vec![0, 1, 1],
        )
        .unwrap();
        let sub = Subscription::detached(list);
        let outcomes: Vec<_> = (0..6)
            .map(|_| sub.pick().map(|e| e.address().to_owned()))
            .collect();
        assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 2);
        assert_eq!(sub.dropped(), 4);
        let ep = sub.current().servers()[0].clone();
        sub.report(&ep, Outcome::success(Duration::from_micros(5)));
        assert_eq!(ep.counts().finished, 1);

        let empty = Subscription::detached(PickList::empty());
        assert_eq!(empty.pick().unwrap_err(), NoPick::Empty);
        assert_eq!(empty.no_backend(), 1);
    }

    #[tokio::test]
    async fn validates_arguments() {
        assert!(matches!(
            subscribe("", ClientOptions::default()).await,
            Err(Error::EmptyService)
        ));
        let mut o = ClientOptions::default();
        o.daemons.clear();
        assert!(matches!(subscribe("svc", o).await, Err(Error::NoDaemons)));
        let o = ClientOptions::new("bad address with spaces");
        assert!(matches!(
            subscribe("svc", o).await,
            Err(Error::InvalidDaemon { .. })
        ));
    }

    #[tokio::test]
    async fn starts_on_fallback_without_a_daemon() {
        // Port 1 on loopback: nothing listens, connects fail fast.
        let mut o = ClientOptions::new("127.0.0.1:1");
        o.fallback = vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()];
        let sub = subscribe("svc", o).await.unwrap();
        assert_eq!(sub.version(), 0);
        assert_eq!(
            sub.current().addresses(),
            ["127.0.0.1:9001", "127.0.0.1:9002"]
        );
        assert_eq!(sub.pick().unwrap().address(), "127.0.0.1:9001");
        assert!(!sub.connected());
        let r = sub
            .wait_for(Duration::from_millis(20), |l| l.version() > 0)
            .await;
        assert!(matches!(r, Err(Error::Timeout)));
        sub.close();
    }

    /// A port on loopback that refuses connections: bound, noted, closed.
    fn refusing_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_refused_connection_fails_subscribe_at_once_naming_the_daemon() {
        let addr = refusing_port();
        let err = subscribe("svc", ClientOptions::new(&addr))
            .await
            .unwrap_err();
        match &err {
            Error::Daemon { service, cause } => {
                assert_eq!(service, "svc");
                assert_eq!(
                    *cause,
                    DaemonError::ConnectionRefused {
                        daemon: addr.clone()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!("cannot subscribe to \"svc\": cannot reach the lb daemon at {addr}: connection refused")
        );
        // With two refusing daemons, both are tried before giving up (in an
        // order that depends on the client id); the error names one of them.
        let other = refusing_port();
        for id in ["client-a", "client-b", "client-c", "client-d"] {
            let mut o = ClientOptions::new(other.clone());
            o.daemons.push(addr.clone());
            o.client_id = id.into();
            let err = subscribe("svc", o).await.unwrap_err();
            assert!(
                matches!(&err, Error::Daemon { cause, .. } if cause.daemon() == addr || cause.daemon() == other),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_daemon_times_the_wait_out_saying_so() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (held_tx, mut held) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = held_tx.send(conn);
            }
        });
        let o = ClientOptions::new(&addr).with_first_list_timeout(Some(Duration::from_millis(200)));
        let err = subscribe("svc", o).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::FirstListTimeout {
                    connected: false,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("no server list for \"svc\" from the lb daemon at {addr} within 200ms: no answer from it yet")
        );
        assert!(held.recv().await.is_some(), "the client did connect");
        // Without the wait, subscribe returns at once.
        let o = ClientOptions::new(&addr).with_first_list_timeout(None);
        let sub = subscribe("svc", o).await.unwrap();
        assert_eq!(sub.version(), 0);
        assert!(sub.last_error().is_none());
        sub.close();
        accept.abort();
    }

    #[test]
    fn an_empty_list_says_whose_and_why() {
        let sub = Subscription::detached(PickList::empty());
        assert_eq!(
            sub.no_backend_message(),
            "no backend available for \"test\": no server list from an lb daemon yet"
        );
        sub.inner.shared.link.send_modify(|l| {
            l.listed = true;
            l.daemon = Some("127.0.0.1:7400".into());
        });
        assert_eq!(
            sub.no_backend_message(),
            "no backend available for \"test\": the lb daemon at 127.0.0.1:7400 lists no instance of it (none registered, or all drained or ejected)"
        );
        sub.inner.shared.link.send_modify(|l| {
            l.last_error = Some(DaemonError::ConnectionRefused {
                daemon: "127.0.0.1:7400".into(),
            })
        });
        assert!(sub
            .no_backend_message()
            .ends_with("; cannot reach the lb daemon at 127.0.0.1:7400: connection refused"));
        assert_eq!(sub.last_error().unwrap().daemon(), "127.0.0.1:7400");
    }

    #[tokio::test]
    async fn wait_for_wakes_on_install() {
        let sub = Subscription::detached(PickList::empty());
        let shared = Arc::clone(&sub.inner.shared);
        let waiter = tokio::spawn({
            let sub = sub.clone();
            async move {
                sub.wait_for(Duration::from_secs(10), |l| l.version() == 3)
                    .await
            }
        });
        tokio::task::yield_now().await;
        shared.install(PickList::from_parts(3, vec![], vec![]).unwrap());
        assert_eq!(waiter.await.unwrap().unwrap().version(), 3);
    }

    fn ids(sub: &Subscription, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| sub.pick().unwrap().instance_id().to_owned())
            .collect()
    }

    #[test]
    fn each_thread_follows_the_order_and_sees_new_lists_at_once() {
        let abc = |v| {
            PickList::from_parts(
                v,
                vec![
                    Endpoint::new("a", "x:1"),
                    Endpoint::new("b", "x:2"),
                    Endpoint::new("c", "x:3"),
                ],
                vec![0, 1, 0, 2],
            )
            .unwrap()
        };
        let sub = Subscription::detached(abc(1));
        // The first picking thread starts at the list's first entry.
        assert_eq!(ids(&sub, 6), ["a", "b", "a", "c", "a", "b"]);
        // Another thread has its own cursor: exact shares over its periods.
        let other = std::thread::scope(|s| s.spawn(|| ids(&sub, 8)).join().unwrap());
        let count = |x: &str| other.iter().filter(|i| *i == x).count();
        assert_eq!((count("a"), count("b"), count("c")), (4, 2, 2));
        // A new list is used from the next pick on, from its first entry.
        sub.inner
            .shared
            .install(PickList::from_parts(2, vec![Endpoint::new("d", "x:4")], vec![0]).unwrap());
        assert_eq!(ids(&sub, 2), ["d", "d"]);
        sub.inner.shared.install(abc(3));
        assert_eq!(ids(&sub, 4), ["a", "b", "a", "c"]);
        // Every pick counted on its endpoint.
        assert_eq!(sub.current().servers()[0].counts().started, 2);
    }

    #[test]
    fn a_thread_cursor_lands_on_drop_entries_in_order() {
        let list = PickList::from_parts(
            1,
            vec![Endpoint::new("a", "x:1"), Endpoint::drop_entry()],
            vec![0, 1, 0],
        )
        .unwrap();
        let sub = Subscription::detached(list);
        let got: Vec<Option<String>> = (0..7)
            .map(|_| sub.pick().ok().map(|e| e.instance_id().to_owned()))
            .collect();
        let a = || Some("a".to_string());
        assert_eq!(got, [a(), None, a(), a(), None, a(), a()]);
        assert_eq!(sub.dropped(), 2);
        assert_eq!(sub.current().servers()[0].counts().started, 5);
        // A cursor past a shorter list's end starts it over.
        let mut cursor = 5;
        let short = sub.current();
        assert_eq!(short.pick_at(&mut cursor).unwrap().instance_id(), "a");
        assert_eq!(cursor, 1);
        assert_eq!(short.cursor_start(0x9E37_79B9), 0x9E37_79B9 % 3);
    }

    #[test]
    fn apply_follows_versions() {
        let (sub, _stop) = Subscription::with_list("svc", PickList::empty());
        let mut task = Task {
            shared: Arc::clone(&sub.inner.shared),
            options: ClientOptions::default(),
            rng: StdRng::seed_from_u64(0),
            retired: Vec::new(),
            sent_dropped: 0,
            sent_no_backend: 0,
        };
        let l = |v| {
            Some(Ok(PickList::from_parts(
                v,
                vec![Endpoint::new("a", "x:1")],
                vec![0],
            )
            .unwrap()))
        };
        let mut first = true;
        assert!(!sub.inner.shared.link.borrow().listed);
        task.apply(l(5), &mut first);
        assert_eq!(sub.version(), 5);
        assert!(
            sub.inner.shared.link.borrow().listed,
            "subscribe's wait ends"
        );
        task.apply(l(4), &mut first); // older, same stream: ignored
        assert_eq!(sub.version(), 5);
        let mut first = true; // a new stream
        task.apply(l(2), &mut first);
        assert_eq!(sub.version(), 2);
        // Another replica's lists compare by state, not version: an older
        // state of the same store is ignored even on a new stream, a newer
        // one followed whatever its version.
        let at = |v, id: &str, revision| {
            l(v).map(|r| {
                r.map(|p| {
                    p.with_state(ListState {
                        id: id.into(),
                        revision,
                    })
                })
            })
        };
        task.apply(at(3, "etcd:x", 50), &mut first);
        assert_eq!(sub.current().state().revision, 50);
        let mut first = true;
        task.apply(at(900, "etcd:x", 49), &mut first);
        assert_eq!(sub.version(), 3, "a replica behind the store is ignored");
        task.apply(at(1, "etcd:x", 50), &mut first);
        assert_eq!(
            sub.version(),
            1,
            "the same state from another replica is followed"
        );
        let mut first = true;
        task.apply(at(1, "sled:y", 1), &mut first);
        assert_eq!(
            sub.current().state().id,
            "sled:y",
            "another store: lost state, followed"
        );
        task.apply(at(4, "sled:y", 2), &mut first);
        // Same endpoint: counters carried over, then reported once.
        let ep = sub.pick().unwrap();
        task.apply(l(6), &mut first);
        assert!(Arc::ptr_eq(&ep, &sub.current().servers()[0]));
        let _ = sub.pick();
        let stats = task.take_stats();
        assert_eq!(stats.instances.len(), 1);
        assert_eq!(stats.instances[0].1.started, 2);
        assert!(task.take_stats().instances.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_count_in_flight_until_they_end_or_are_dropped() {
        let list = PickList::from_parts(1, vec![Endpoint::new("a", "x:1")], vec![0]).unwrap();
        let sub = Subscription::detached(list);
        let ep = sub.current().servers()[0].clone();
        // Answered: counted while it runs, released by its outcome.
        let seen = sub
            .call("/s.S/M", &[], |e| async move {
                Ok::<_, tonic::Status>(e.in_flight())
            })
            .await
            .unwrap();
        assert_eq!((seen, ep.in_flight()), (1, 0));
        // Dropped by a deadline around it: released as well.
        let hang = sub.call("/s.S/M", &[], |_| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, tonic::Status>(0)
        });
        assert!(tokio::time::timeout(Duration::from_millis(10), hang)
            .await
            .is_err());
        assert_eq!(ep.in_flight(), 0);
    }
}
