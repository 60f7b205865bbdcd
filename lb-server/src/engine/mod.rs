//! The engine: the one task that owns mutable state (the registry, the
//! re-plan scheduler and the store), the hub it publishes plans through,
//! and the snapshot readers use.
//!
//! One way for data to flow (kube-runtime's reflector, with a writer task):
//! the gRPC edges turn validated input into commands ([`cmd`]) and events
//! (load reports, client stats, broken streams), sent over one channel; the
//! engine task (`actor`) applies them in batches, commits the batch's
//! store writes once (group commit) before any command in it is answered,
//! re-plans what the batch changed through `lb_core::replan` and publishes
//! plans in the [`Hub`], where subscriber streams pick them up; and it
//! publishes a [`Snapshot`] of the registry that admin reads and `/metrics`
//! use without queueing behind load reports. Nothing holds a lock across an
//! `.await`.
//!
//! Plans are published after the commit: a list never shows a change the
//! store refused, and the store revision it carries (`state_revision`)
//! covers everything it shows, which is what lets a client compare lists
//! of different replicas.
//!
//! # Layout
//! - [`cmd`]: every change with an answer, one type each, and the dispatcher.
//! - `state`: what the task owns, and the steps commands share.
//! - `actor`: the task: batches, events, the sweep (expiry, health), commit.
//! - `follow`: with a shared store (etcd), the watch that brings other
//!   replicas' changes in, and how they apply.
//! - [`hub`]: per-service plan channels and the daemon-wide counters.
//! - [`snapshot`]: the readers' copy of the registry.

pub mod cmd;
pub mod hub;
pub mod snapshot;

mod actor;
mod follow;
mod state;

use std::sync::Arc;
use std::time::Instant;

use lb_core::inspect::ServiceView;
use lb_core::model::{ClientStats, FieldError, GrpclbStats, InstanceKey, Load};
use lb_core::policy::ServicePolicy;
use lb_core::registry::RegistryError;
use tokio::sync::{mpsc, oneshot, watch};

pub use actor::start;
pub use cmd::Command;
pub use hub::{Following, Follows, Hub, QuotaRefusals, StoreHealth};
pub use snapshot::Snapshot;
pub use state::State;

use actor::Input;
use cmd::Envelope;

/// Now, on tokio's clock (which tests can pause and advance), as the
/// `Instant` the core takes.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Why the engine refused or could not complete a command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The registry refused the change (see the variant for what to do).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The change could not be made durable; retry later and check the disk.
    #[error("{0}")]
    Store(String),
    /// The daemon is shutting down; retry against it once it is back.
    #[error("lb-server is shutting down")]
    ShuttingDown,
    /// No such instance or rule: check the names (`ctl get SERVICE`).
    #[error("{0}")]
    NotFound(String),
    /// The change is invalid in the context of the service's other settings
    /// (e.g. a duplicate rule name, a multicast mode naming a missing rule).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The caller may not make this change (another token owns the
    /// instance).
    #[error("{0}")]
    Denied(String),
    /// Something of that name exists already (a token).
    #[error("{0}")]
    Exists(String),
    /// The change would leave something in use behind (a service whose
    /// backends are still registered): the message says what to do first.
    #[error("{0}")]
    Busy(String),
}

/// What the engine tells a backend's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// The registration ended without the stream asking (expired, replaced,
    /// deregistered): close the stream with this reason.
    End(String),
    /// An operator drained (true) or undrained (false) the instance.
    Drain(bool),
}

/// The edges' handle on the engine.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Input>,
    hub: Arc<Hub>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    default_policy: Arc<ServicePolicy>,
}

impl EngineHandle {
    /// The hub subscribers follow.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Runs a command; answers once its change is durable.
    pub async fn run<C: Command>(&self, command: C) -> Result<C::Output, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Command(Box::new(Envelope { command, reply })))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// The engine's published snapshots (see [`snapshot`]).
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// Views of every service (or only `only`) from the latest snapshot,
    /// without waiting for the engine.
    pub fn views(&self, only: Option<&str>) -> Vec<ServiceView> {
        let snapshot = self.snapshot.borrow().clone();
        snapshot.views(&self.hub, only, now())
    }

    /// The default policy of new services (the daemon's flags applied).
    pub fn default_policy(&self) -> &ServicePolicy {
        &self.default_policy
    }

    /// Passes a load report on (no answer: a report for a stale session is dropped).
    pub async fn report(&self, key: InstanceKey, session: u64, load: Load) {
        let _ = self.tx.send(Input::Report { key, session, load }).await;
    }

    /// Tells the engine a stream is gone.
    pub async fn detach(&self, key: InstanceKey, session: u64) {
        let _ = self.tx.send(Input::Detach { key, session }).await;
    }

    /// Passes the stats of client `client` on: the witness they count for
    /// (its credential, or its `client_id` when nobody authenticates).
    pub async fn stats(&self, service: String, client: String, stats: ClientStats) {
        let _ = self
            .tx
            .send(Input::Stats {
                service,
                client,
                stats,
            })
            .await;
    }

    /// Passes a stock client's grpclb stats on.
    pub async fn grpclb_stats(&self, service: String, stats: GrpclbStats) {
        let _ = self.tx.send(Input::GrpclbStats { service, stats }).await;
    }

    /// Stops changing state: the daemon is shutting down, and streams
    /// closing because of that must not deregister their instances.
    /// Returns once the engine is frozen.
    pub async fn freeze(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Freeze(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
