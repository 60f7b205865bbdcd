//! Following a service: [`subscribe`] and the background task behind a
//! [`Subscription`].
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
//! The task connects to a daemon, opens `Balancer/Subscribe`, installs each list
//! (ignoring older versions, except the first list of a new stream: the daemon
//! lost its state, and following it is the best bet), and sends `ClientStats`
//! when the daemon asks for them. When the stream breaks it keeps the last list,
//! so calls keep flowing while the daemon is away, and reconnects with jittered
//! backoff ([`crate::Backoff`]), trying the configured daemons in turn.

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
use crate::daemon;
use crate::list::{self, Endpoint, NoPick, Outcome, PickList};
use crate::protocol::{Identity, StatsReport};

/// Why a subscription could not be created, or a wait ended.
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
    /// `ClientOptions::client_id` is empty: leave the default or give a unique id.
    #[error("client id is empty")]
    EmptyClientId,
    /// [`Subscription::wait_for`] reached its deadline before the list matched.
    #[error("timed out waiting for the server list")]
    Timeout,
}

/// How to reach the daemons and who this client is.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Daemon addresses, "host:port" or "http://host:port"; tried in turn on
    /// reconnect.
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
}

impl ClientOptions {
    /// Options for one daemon; everything else defaults.
    pub fn new(daemon: impl Into<String>) -> Self {
        ClientOptions {
            daemons: vec![daemon.into()],
            ..ClientOptions::default()
        }
    }

    /// The same options with `credentials`.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
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

/// Dropped with the last [`Subscription`] clone; dropping `stop` ends the task.
struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A live subscription to one service's server list. Cheap to clone; the
/// background task stops when the last clone is dropped or [`Subscription::close`]
/// is called.
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

/// Subscribes to `service`. Returns at once: the list starts as
/// `options.fallback` and the daemon's lists replace it as they arrive, so a
/// client can start while the daemon is down. Must be called within a Tokio
/// runtime.
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
    }
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
    pub fn pick_for_key(&self, key: &[u8]) -> Result<Arc<Endpoint>, NoPick> {
        self.count(self.inner.shared.with_list(|l, _| l.pick_for_key(key)))
    }

    /// Picks for a request carrying `labels`: the first routing rule whose
    /// request labels all match selects the order, else the default one.
    /// Lock-free and allocation-free.
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
    pub fn report(&self, ep: &Endpoint, outcome: Outcome) {
        ep.record(outcome);
    }

    /// A snapshot of the current list.
    pub fn current(&self) -> Arc<PickList> {
        self.inner.shared.list.load_full()
    }

    /// Version of the current list (0 = fallback, nothing from the daemon yet).
    pub fn version(&self) -> u64 {
        self.inner.shared.list.load().version()
    }

    /// Waits until the current list satisfies `pred`, checking now and after
    /// every list update; [`Error::Timeout`] after `timeout`.
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

    /// True while the stream to a daemon is up.
    pub fn connected(&self) -> bool {
        self.inner.shared.connected.load(Relaxed)
    }

    /// Subscribe streams opened so far (1 + reconnects, once connected).
    pub fn streams_opened(&self) -> u64 {
        self.inner.shared.streams.load(Relaxed)
    }

    /// Calls failed locally on a drop entry, since the start.
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Relaxed)
    }

    /// Picks that found an empty list, since the start.
    pub fn no_backend(&self) -> u64 {
        self.inner.shared.no_backend.load(Relaxed)
    }

    /// Stops the background task for every clone. The last list stays in place
    /// and `pick()` keeps working on it.
    pub fn close(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Closes the subscription and waits (up to `timeout`) until its last
    /// call statistics have been handed to the daemon and the stream is closed.
    /// Call it before a process exits, so its final outcomes are not lost.
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
        for daemon in daemons.iter().cycle() {
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
        let connect = daemon::connect(
            daemon,
            self.options.connect_timeout,
            &self.options.credentials,
        );
        let connected = tokio::select! {
            _ = stopped(stop) => return (false, true),
            c = connect => c,
        };
        let channel = match connected {
            Ok(ch) => ch,
            Err(e) => {
                // Loud once per outage, quiet while retrying.
                if attempt == 0 {
                    warn!(%daemon, %service, error = %e, "cannot reach lb daemon; retrying");
                } else {
                    debug!(%daemon, %service, error = %e, attempt, "cannot reach lb daemon");
                }
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
        let mut stream =
            match daemon::subscribe(channel, &self.options.credentials, &service, client, rx).await
            {
                Ok(s) => s,
                Err(status) => {
                    warn!(%daemon, %service, %status, "daemon refused the subscription");
                    return (false, false);
                }
            };
        self.shared.connected.store(true, Relaxed);
        self.shared.streams.fetch_add(1, Relaxed);
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
                        info!(%daemon, %service, %status, "subscription stream broke; keeping the last list");
                        break;
                    }
                    None => {
                        info!(%daemon, %service, "daemon ended the subscription stream; keeping the last list");
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
        task.apply(l(5), &mut first);
        assert_eq!(sub.version(), 5);
        task.apply(l(4), &mut first); // older, same stream: ignored
        assert_eq!(sub.version(), 5);
        let mut first = true; // a new stream
        task.apply(l(2), &mut first);
        assert_eq!(sub.version(), 2);
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
}
