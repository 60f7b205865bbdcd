//! gRPC health checking (`grpc.health.v1.Health`, the protocol in gRPC's
//! `doc/health-checking.md`), served by `tonic-health`: the daemon's own
//! status under the empty name, and one entry per service, `SERVING` while
//! its list has an instance to call, so a load balancer or a Kubernetes
//! gRPC probe can watch a service through lb.
//!
//! A task follows the engine's snapshots (published after each batch, so a
//! change shows within [`crate::engine::snapshot::INTERVAL`]) and the plans
//! behind them, and tells `tonic-health` only what changed: `Watch` callers
//! get one message per change. A service the daemon forgets is cleared
//! (`Watch` then says `SERVICE_UNKNOWN`). When the daemon begins to shut
//! down, its own entry turns `NOT_SERVING`.

use std::collections::BTreeMap;

use tokio::sync::watch;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::{health_reporter, HealthReporter};
use tonic_health::ServingStatus;

use crate::engine::{EngineHandle, Hub};

/// Whether `service` has an instance to call in its published list.
fn serving(hub: &Hub, service: &str) -> ServingStatus {
    let usable = hub
        .current(service)
        .is_some_and(|p| p.plan.servers.iter().any(|s| !s.drop));
    if usable {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// The health service, and the task that keeps it current until `stop`.
pub fn service(engine: &EngineHandle, stop: watch::Receiver<bool>) -> HealthServer<impl Health> {
    let (reporter, server) = health_reporter();
    tokio::spawn(follow(engine.clone(), reporter, stop));
    server
}

async fn follow(
    engine: EngineHandle,
    mut reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut snapshots = engine.snapshots();
    let mut shown: BTreeMap<String, ServingStatus> = BTreeMap::new();
    loop {
        let now: BTreeMap<String, ServingStatus> = {
            let snapshot = snapshots.borrow_and_update().clone();
            snapshot
                .registry()
                .services()
                .map(|(name, _)| (name.clone(), serving(engine.hub(), name)))
                .collect()
        };
        for (name, status) in &now {
            if shown.get(name) != Some(status) {
                reporter.set_service_status(name, *status).await;
            }
        }
        for name in shown.keys().filter(|n| !now.contains_key(*n)) {
            reporter.clear_service_status(name).await;
        }
        shown = now;
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
}
