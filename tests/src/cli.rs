//! What every binary of this crate does the same way: logging to stderr
//! (`RUST_LOG`, plain text unless stderr is a terminal) and waiting for
//! SIGINT/SIGTERM.

/// Sets up tracing with `default` as the filter when `RUST_LOG` is unset.
pub fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on SIGINT or SIGTERM (the daemon's own trigger).
pub use lb_server::server::shutdown_signal;

/// Runs a backend's server until SIGINT/SIGTERM, then shuts down in the order
/// lb expects: drain first (leave every list, via the reporter), then stop
/// serving, each step bounded. `serve` gets the future that tells the server
/// to stop.
pub async fn serve_then_drain<F>(
    reporter: lb_client::Reporter,
    serve: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
) where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let bound = std::time::Duration::from_secs(2);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(Box::pin(async {
        let _ = stop_rx.await;
    })));
    shutdown_signal().await;
    reporter.shutdown(bound).await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(bound, server).await;
}
