//! The gRPC edges, as thin shells (tonic-health's shape): decode and
//! validate through [`crate::pb`], run an engine command or follow the hub,
//! encode.
//!
//! - [`registry`]: `lb.v1.Registry`, the backend side (`ReportLoad`,
//!   `Register`, `Deregister`).
//! - [`balancer`]: `lb.v1.Balancer`, the client side (`Subscribe`).
//! - [`admin`]: `lb.v1.Admin`, what `lb-server ctl` calls.
//! - [`grpclb`]: `grpc.lb.v1.LoadBalancer`, for stock gRPC clients.
//! - [`xds`]: `envoy.service.discovery.v3.AggregatedDiscoveryService` and
//!   `envoy.service.load_stats.v3.LoadReportingService`, for proxyless gRPC
//!   clients on xDS.

pub mod admin;
pub mod balancer;
pub mod grpclb;
pub mod registry;
pub mod xds;

use std::pin::Pin;
use std::time::Duration;

use lb_core::registry::RegistryError;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::engine::EngineError;

pub use admin::AdminApi;
pub use balancer::BalancerApi;
pub use grpclb::GrpclbApi;
pub use registry::RegistryApi;
pub use xds::XdsApi;

/// The response stream of a streaming RPC.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// An engine refusal, as the status a caller sees: a quota is
/// `resource_exhausted` (the message names it, its limit and the service).
pub fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Registry(RegistryError::Quota(q)) => Status::resource_exhausted(q.to_string()),
        EngineError::Registry(e) => Status::failed_precondition(e.to_string()),
        EngineError::Store(e) => Status::unavailable(format!("not persisted: {e}")),
        EngineError::ShuttingDown => Status::unavailable("lb-server is shutting down"),
        EngineError::NotFound(what) => Status::not_found(what),
        EngineError::Invalid(e) => crate::pb::invalid(e),
        EngineError::Denied(why) => Status::permission_denied(why),
        EngineError::Exists(why) => Status::already_exists(why),
        EngineError::Busy(why) => Status::failed_precondition(why),
    }
}

/// Waits for a stream's first message, bounded by `limit`
/// (`--first-message-timeout`, counted when it bites) and by shutdown.
pub(crate) async fn first_message<T>(
    inbound: &mut Streaming<T>,
    limit: Duration,
    stop: &watch::Receiver<bool>,
    caller: Option<&crate::auth::Caller>,
) -> Result<T, Status> {
    let first = tokio::select! {
        r = tokio::time::timeout(limit, inbound.message()) => r,
        _ = stopping(stop.clone()) => return Err(Status::unavailable("lb-server is shutting down")),
    };
    match first {
        Err(_) => {
            if let Some(c) = caller {
                c.limited("first_message_timeout");
            }
            Err(Status::deadline_exceeded(format!(
                "no first message within {} (--first-message-timeout)",
                lb_core::duration::show(limit)
            )))
        }
        Ok(Err(s)) => Err(s),
        Ok(Ok(None)) => Err(Status::invalid_argument(
            "stream ended before its first message",
        )),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// Open subscriptions per client id, so that one client id cannot hold
/// more than its share (`--max-subscriptions-per-client`).
#[derive(Debug, Default)]
pub(crate) struct PerClient {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open subscription of a client id; gives its place back when dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    table: std::sync::Arc<PerClient>,
    id: String,
}

impl PerClient {
    /// Takes a place for `id` if it has fewer than `max` open.
    pub(crate) fn take(self: &std::sync::Arc<Self>, id: &str, max: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(id.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: std::sync::Arc::clone(self),
            id: id.to_string(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// Resolves once the daemon starts shutting down.
pub(crate) async fn stopping(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
