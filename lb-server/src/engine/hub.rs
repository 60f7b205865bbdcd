//! Where plans are published: one `watch` channel per service, which every
//! subscriber stream of that service follows (the newest plan wins; a slow
//! stream skips plans, it never queues them). Also the daemon-wide counters
//! the edges keep without asking the engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lb_core::policy::ServicePlan;
use lb_core::quota::Quota;
use lb_core::replan::{should_publish, Planned, Published};
use tokio::sync::watch;

/// The plans of every service, and who follows them.
#[derive(Debug)]
pub struct Hub {
    plans: Mutex<HashMap<String, watch::Sender<Arc<Published>>>>,
    next_version: AtomicU64,
    next_client: AtomicU64,
    /// Open streams per service and kind (for `ctl get`).
    open: Mutex<HashMap<(String, Follows), u32>>,
    /// Load reports received and validated, all streams.
    pub reports_received: AtomicU64,
    /// Of those, reports handed to the engine (the rest were superseded by
    /// a newer report of the same stream that had already arrived).
    pub reports_applied: AtomicU64,
    /// Whether the store is failing, for `/metrics`.
    pub store: StoreHealth,
    /// Changes refused by each quota, for `/metrics`.
    pub quotas: QuotaRefusals,
    /// The durable state the published plans reflect.
    pub state: Applied,
    /// xDS answers clients rejected (NACKs), for `/metrics`.
    pub xds_nacks: AtomicU64,
}

/// The store's identity and the revision of it the engine has applied and
/// planned from (`ServerList.state_id`, `state_revision`): advanced after
/// each batch's plans are published, so every plan a subscriber can read
/// already reflects every change up to it.
#[derive(Debug)]
pub struct Applied {
    id: std::sync::OnceLock<String>,
    revision: watch::Sender<u64>,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            id: std::sync::OnceLock::new(),
            revision: watch::Sender::new(0),
        }
    }
}

impl Applied {
    /// The store's identity ("" until the engine has loaded it).
    pub fn id(&self) -> &str {
        self.id.get().map_or("", String::as_str)
    }

    /// The revision applied.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    pub(crate) fn set_id(&self, id: String) {
        let _ = self.id.set(id);
    }

    /// Moves the applied revision forward to `revision` (never back).
    pub(crate) fn advance(&self, revision: u64) {
        self.revision.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
    }

    /// Waits until the revision applied reaches `revision`, at most
    /// `within`; returns whether it did.
    pub async fn reached(&self, revision: u64, within: std::time::Duration) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(within, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Changes each quota refused since the start.
#[derive(Debug, Default)]
pub struct QuotaRefusals([AtomicU64; Quota::ALL.len()]);

impl QuotaRefusals {
    pub(crate) fn refused(&self, quota: Quota) {
        self.0[Self::slot(quota)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every quota with its refusals, in [`Quota::ALL`]'s order.
    pub fn counts(&self) -> Vec<(Quota, u64)> {
        Quota::ALL
            .into_iter()
            .map(|q| (q, self.0[Self::slot(q)].load(Ordering::Relaxed)))
            .collect()
    }

    fn slot(quota: Quota) -> usize {
        Quota::ALL.iter().position(|q| *q == quota).unwrap_or(0)
    }
}

/// The store's health as the engine last saw it.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Why it is failing, while it is.
    fault: Mutex<Option<String>>,
    /// Commits (and recoveries) that failed, since the start.
    pub failures: AtomicU64,
}

impl StoreHealth {
    pub(crate) fn failed(&self, cause: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.fault) = Some(cause.to_string());
    }

    pub(crate) fn recovered(&self) {
        *lock(&self.fault) = None;
    }

    /// Why the store is failing, while it is.
    pub fn fault(&self) -> Option<String> {
        lock(&self.fault).clone()
    }
}

/// Which protocol a stream follows a service's plan with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Follows {
    /// `lb.v1.Balancer/Subscribe` (lb-client).
    Subscribe,
    /// `grpc.lb.v1.LoadBalancer/BalanceLoad` (stock gRPC clients).
    Grpclb,
    /// `envoy.service.discovery.v3.AggregatedDiscoveryService` (proxyless
    /// gRPC clients on xDS), while one of the service's resources is asked
    /// for.
    Xds,
}

/// Counts one open stream of a service while it lives (see
/// [`Hub::following`]).
#[derive(Debug)]
pub struct Following {
    hub: Arc<Hub>,
    key: (String, Follows),
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut open = lock(&self.hub.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Every operation on the hub's maps is a single insert, replace or remove,
/// so a panic elsewhere cannot leave them inconsistent: poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub whose versions start above every version of earlier generations.
    pub fn new(generation: u64) -> Self {
        Hub {
            plans: Mutex::new(HashMap::new()),
            next_version: AtomicU64::new(lb_core::replan::first_version(generation)),
            next_client: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            reports_received: AtomicU64::new(0),
            reports_applied: AtomicU64::new(0),
            store: StoreHealth::default(),
            quotas: QuotaRefusals::default(),
            state: Applied::default(),
            xds_nacks: AtomicU64::new(0),
        }
    }

    /// Counts a stream on `service` until the guard is dropped.
    pub fn following(self: &Arc<Self>, service: &str, how: Follows) -> Following {
        let key = (service.to_string(), how);
        *lock(&self.open).entry(key.clone()).or_default() += 1;
        Following {
            hub: self.clone(),
            key,
        }
    }

    /// Streams of `how` open on `service` now.
    pub fn open_streams(&self, service: &str, how: Follows) -> u32 {
        lock(&self.open)
            .get(&(service.to_string(), how))
            .copied()
            .unwrap_or(0)
    }

    fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A sequence number for a new subscriber (its rotation of the list).
    pub fn next_client_seq(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Follows a service's plan; an unknown service starts with an empty plan.
    pub fn subscribe(&self, service: &str) -> watch::Receiver<Arc<Published>> {
        let mut plans = lock(&self.plans);
        if let Some(tx) = plans.get(service) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(Published {
            version: self.next_version(),
            plan: ServicePlan::default(),
        }));
        plans.insert(service.to_string(), tx);
        rx
    }

    /// The current plan of a service, if anyone published or subscribed to it.
    pub fn current(&self, service: &str) -> Option<Arc<Published>> {
        lock(&self.plans).get(service).map(|tx| tx.borrow().clone())
    }

    /// Publishes a plan the scheduler made if [`should_publish`] says so;
    /// returns whether it did.
    pub fn publish(&self, p: Planned) -> bool {
        let mut plans = lock(&self.plans);
        let tx = plans.get(&p.service);
        let current = tx.map(|tx| tx.borrow().clone());
        if !should_publish(current.as_deref().map(|c| &c.plan), &p.plan, p.hysteresis) {
            return false;
        }
        let published = Arc::new(Published {
            version: self.next_version(),
            plan: p.plan,
        });
        match tx {
            Some(tx) => {
                tx.send_replace(published);
            }
            None => {
                let (tx, _) = watch::channel(published);
                plans.insert(p.service, tx);
            }
        }
        true
    }

    /// Forgets services nobody follows and nobody serves.
    pub fn collect_garbage(&self) {
        lock(&self.plans)
            .retain(|_, tx| tx.receiver_count() > 0 || !tx.borrow().plan.servers.is_empty());
    }
}
