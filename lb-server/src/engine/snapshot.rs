//! What readers see: a copy of the registry the engine task publishes after
//! its batches (kube-runtime's reflector: one writer, `Arc` snapshots for
//! readers). Admin reads and `/metrics` scrapes compute their views from it
//! with their own clock and never queue behind load reports.
//!
//! Freshness: a batch that ran a command (a registration, a policy change,
//! any write with an answer) publishes before the command is answered, so a
//! caller reads its own writes; a batch that published a plan publishes the
//! state behind it, so a view is never older than the lists clients hold;
//! other changes (load reports, stats, expiry, health) are published within
//! [`INTERVAL`].
//!
//! Cost: taking a snapshot clones the registry, which shares every service
//! and instance behind `Arc`s (a few µs); the first change to a service
//! after a snapshot copies that service (tens of µs per hundred instances).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::inspect::{self, ServiceView};
use lb_core::registry::Registry;

use tokio::sync::watch;

use super::{Follows, Hub};

/// The longest a snapshot lags behind load reports and client stats.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// The registry as of the engine's last published batch.
#[derive(Debug, Default)]
pub struct Snapshot {
    registry: Registry,
}

impl Snapshot {
    pub(crate) fn new(registry: Registry) -> Self {
        Snapshot { registry }
    }

    /// The registry as of the snapshot.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Views of every service (or only `only`), with each one's current
    /// plan from `hub`, as of `now`.
    pub fn views(&self, hub: &Hub, only: Option<&str>, now: Instant) -> Vec<ServiceView> {
        inspect::services(
            &self.registry,
            only,
            |s| hub.current(s),
            |s| inspect::Followers {
                subscribers: hub.open_streams(s, Follows::Subscribe),
                grpclb_streams: hub.open_streams(s, Follows::Grpclb),
                xds_streams: hub.open_streams(s, Follows::Xds),
            },
            now,
        )
    }
}

/// Writes the warm-restart snapshot ([`crate::warm`]) every
/// [`crate::warm::INTERVAL`] from the engine's published
/// registry until `readers` closes (the engine stopped). A failed write is
/// logged once until a write succeeds again.
pub fn write_loads(
    dir: PathBuf,
    mut readers: watch::Receiver<Arc<Snapshot>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::warm::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            if readers.has_changed().is_err() {
                return;
            }
            let snapshot = readers.borrow_and_update().clone();
            let bytes = crate::warm::encode(
                snapshot.registry(),
                Instant::now(),
                std::time::SystemTime::now(),
            );
            let dir = dir.clone();
            let r = tokio::task::spawn_blocking(move || crate::warm::write(&dir, &bytes)).await;
            match r {
                Ok(Ok(())) => {
                    if failing {
                        tracing::info!("load snapshot written again");
                    }
                    failing = false;
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "could not write the load snapshot (a restart will start cold); retrying every second");
                }
                _ => {}
            }
        }
    })
}
