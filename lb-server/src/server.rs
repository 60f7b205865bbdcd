//! `run(listener, config, shutdown)`: the whole daemon, given a bound listener.
//!
//! Shutdown order: freeze the engine (streams closing from now on must not
//! deregister anything), tell every open stream to end, stop accepting, wait
//! for in-flight calls, then let the engine flush and stop: all of it within
//! `drain_timeout`, and one second more for the engine.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lb_proto::grpclb::load_balancer_server::LoadBalancerServer;
use lb_proto::v1::{
    admin_server::AdminServer, balancer_server::BalancerServer, registry_server::RegistryServer,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::transport::server::TcpIncoming;

use crate::api::{AdminApi, BalancerApi, GrpclbApi, RegistryApi};
use crate::config::Config;
use crate::engine;
use crate::store::{SledStore, StoreError};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store under `--data-dir` could not be opened or read: check the
    /// path, its permissions, and that no other lb-server uses it.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// `--metrics-listen` could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How long the engine may take to stop once the drain is over.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Runs the daemon on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let store = SledStore::open_with(&config.data_dir, config.store_min_free)?;
    let (engine, engine_task) = engine::start(Arc::new(store), config.clone()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(listener) = metrics {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
        }
        let e = engine.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::metrics::serve(
            listener,
            move || crate::metrics::page(&e),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let (close_tx, close_rx) = oneshot::channel::<()>();

    let registry = RegistryServer::new(RegistryApi::new(
        engine.clone(),
        config.clone(),
        stop_rx.clone(),
    ));
    let balancer = BalancerServer::new(BalancerApi::new(
        engine.clone(),
        config.clone(),
        stop_rx.clone(),
    ));
    let grpclb = LoadBalancerServer::new(GrpclbApi::new(
        engine.clone(),
        config.clone(),
        stop_rx.clone(),
    ));
    let admin = AdminServer::new(AdminApi::new(engine.clone(), config.clone()));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = tonic::transport::Server::builder()
        // A peer that vanishes without closing its connection (power loss,
        // partition) is found by HTTP/2 pings rather than only by TTL.
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        // Small receive windows: a backend flooding reports is slowed down by
        // flow control after a few thousand queued messages instead of making
        // the daemon buffer millions (our messages are tens of bytes).
        .initial_stream_window_size(Some(64 * 1024))
        .initial_connection_window_size(Some(1024 * 1024))
        .add_service(registry)
        .add_service(balancer)
        .add_service(grpclb)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = close_rx.await;
        });
    let mut serve = tokio::spawn(serve);

    tokio::select! {
        _ = shutdown => {}
        r = &mut serve => {
            // The server stopped by itself: report why.
            return match r {
                Ok(r) => r.map_err(ServerError::from),
                Err(e) => {
                    tracing::error!(error = %e, "server task failed");
                    Ok(())
                }
            };
        }
    }
    tracing::info!("shutting down");
    // One deadline for the whole drain: SIGTERM ends the process within
    // `drain_timeout` and [`STOP_GRACE`], whatever the store does.
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    if tokio::time::timeout_at(deadline, engine.freeze())
        .await
        .is_err()
    {
        tracing::warn!("the engine did not freeze in time; stopping anyway");
    }
    let _ = stop_tx.send(true);
    let _ = close_tx.send(());
    match tokio::time::timeout_at(deadline, &mut serve).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
        Err(_) => {
            tracing::warn!(timeout = ?config.drain_timeout, "drain timed out; closing remaining connections");
            serve.abort();
        }
    }
    drop(engine);
    // The engine ends (after a final flush) once the last handle is gone.
    if tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now()) + STOP_GRACE,
        engine_task,
    )
    .await
    .is_err()
    {
        tracing::warn!("engine did not stop in time");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C where there are no Unix signals):
/// the daemon's shutdown trigger, shared with the example binaries.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
