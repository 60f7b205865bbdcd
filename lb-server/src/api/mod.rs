//! The gRPC edges, as thin shells (tonic-health's shape): decode and
//! validate through [`crate::pb`], run an engine command or follow the hub,
//! encode.
//!
//! - [`registry`]: `lb.v1.Registry`, the backend side (`ReportLoad`,
//!   `Register`, `Deregister`).
//! - [`balancer`]: `lb.v1.Balancer`, the client side (`Subscribe`).
//! - [`admin`]: `lb.v1.Admin`, what `lb-server ctl` calls.
//! - [`grpclb`]: `grpc.lb.v1.LoadBalancer`, for stock gRPC clients.

pub mod admin;
pub mod balancer;
pub mod grpclb;
pub mod registry;

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::engine::EngineError;

pub use admin::AdminApi;
pub use balancer::BalancerApi;
pub use grpclb::GrpclbApi;
pub use registry::RegistryApi;

/// The response stream of a streaming RPC.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// An engine refusal, as the status a caller sees.
pub fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Registry(e) => Status::failed_precondition(e.to_string()),
        EngineError::Store(e) => Status::unavailable(format!("not persisted: {e}")),
        EngineError::ShuttingDown => Status::unavailable("lb-server is shutting down"),
        EngineError::NotFound(what) => Status::not_found(what),
        EngineError::Invalid(e) => crate::pb::invalid(e),
    }
}

/// Waits for a stream's first message, bounded by `limit` and by shutdown.
pub(crate) async fn first_message<T>(
    inbound: &mut Streaming<T>,
    limit: Duration,
    stop: &watch::Receiver<bool>,
) -> Result<T, Status> {
    let first = tokio::select! {
        r = tokio::time::timeout(limit, inbound.message()) => r,
        _ = stopping(stop.clone()) => return Err(Status::unavailable("lb-server is shutting down")),
    };
    match first {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no first message within {limit:?}"
        ))),
        Ok(Err(s)) => Err(s),
        Ok(Ok(None)) => Err(Status::invalid_argument(
            "stream ended before its first message",
        )),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// Resolves once the daemon starts shutting down.
pub(crate) async fn stopping(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
