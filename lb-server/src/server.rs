//! `run(listener, config, shutdown)`: the whole daemon, given a bound
//! listener; or, in two steps, [`Daemon::open`] then [`Daemon::serve`], so
//! that `main` binds and announces its address only once the store is open.
//!
//! Start order: open the store (a data directory another daemon holds stops
//! here, naming that process), authentication and TLS, start the engine
//! (which loads the store); then bind metrics, serve gRPC, and only then
//! say `ready`.
//!
//! Shutdown order: freeze the engine (streams closing from now on must not
//! deregister anything), tell every open stream to end, stop accepting, wait
//! for in-flight calls, then let the engine flush and stop: all of it within
//! `drain_timeout`, and one second more for the engine.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lb_proto::grpclb::load_balancer_server::LoadBalancerServer;
use lb_proto::v1::{
    admin_server::AdminServer, balancer_server::BalancerServer, registry_server::RegistryServer,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::{AdminApi, BalancerApi, GrpclbApi, RegistryApi, XdsApi};
use crate::auth::layer::AuthLayer;
use crate::auth::{token, Auth};
use crate::config::Config;
use crate::config::StoreChoice;
use crate::engine::{self, EngineHandle};
use crate::store::{EtcdStore, SledStore, Store, StoreError};
use crate::tls::Tls;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_server::LoadReportingServiceServer;

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
    /// The daemon would listen beyond loopback without TLS and
    /// authentication, or its TLS or token files are unusable.
    #[error("{0}")]
    Unsafe(String),
    /// The API's file descriptors, served for reflection, do not load (a
    /// defect of the build).
    #[error("reflection: {0}")]
    Reflection(String),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// `--http-listen` could not be bound.
    #[error("cannot listen for HTTP (--http-listen) on {addr}: {source}")]
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
    check_listen(listener.local_addr()?, &config)?;
    Daemon::open(config)
        .await?
        .serve(listener, shutdown, |_| {})
        .await
}

/// The daemon with its store open and its engine running, not serving yet.
pub struct Daemon {
    config: Config,
    auth: Arc<Auth>,
    tls: Option<Arc<Tls>>,
    engine: EngineHandle,
    engine_task: JoinHandle<()>,
}

impl Daemon {
    /// Opens the store under `--data-dir` first (a directory another
    /// process holds is refused here, naming it), then sets up
    /// authentication and TLS and starts the engine on the store's contents.
    /// Nothing listens yet.
    pub async fn open(config: Config) -> Result<Daemon, ServerError> {
        let store: Arc<dyn Store> = match &config.store {
            StoreChoice::Sled => Arc::new(SledStore::open_with(
                &config.data_dir,
                config.store_min_free,
            )?),
            StoreChoice::Etcd(url) => {
                // The data directory still holds this replica's load cache.
                std::fs::create_dir_all(&config.data_dir).map_err(StoreError::Io)?;
                Arc::new(EtcdStore::open(url).await?)
            }
        };
        let auth = Arc::new(authentication(&config).map_err(ServerError::Unsafe)?);
        if let Some(m) = config.http_listen {
            check_exposure(m, &config, auth.is_enabled())?;
        }
        let tls = match &config.tls {
            Some(files) => Some(Tls::load(files.clone()).map_err(ServerError::Unsafe)?),
            None => None,
        };
        let (engine, engine_task) = engine::start(store, config.clone(), Arc::clone(&auth)).await?;
        // Ends with the engine (its snapshots close).
        engine::snapshot::write_loads(config.data_dir.clone(), engine.snapshots());
        Ok(Daemon {
            config,
            auth,
            tls,
            engine,
            engine_task,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then drains (see the
    /// module docs). `ready` is told the address once gRPC (and
    /// `--http-listen`) are served.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        ready: impl FnOnce(SocketAddr),
    ) -> Result<(), ServerError> {
        let addr = listener.local_addr()?;
        check_exposure(addr, &self.config, self.auth.is_enabled())?;
        let metrics = match self.config.http_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Metrics { addr, source })?,
            ),
            None => None,
        };
        serve(listener, metrics, self, shutdown, move || ready(addr)).await
    }
}

/// Serves `daemon` on `listener` (and metrics on `metrics`) until
/// `shutdown`, calling `ready` once gRPC is served; then drains.
async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    daemon: Daemon,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<(), ServerError> {
    let Daemon {
        config,
        auth,
        tls,
        engine,
        engine_task,
    } = daemon;
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(tls) = &tls {
        let mut stop = stop_rx.clone();
        tokio::spawn(Arc::clone(tls).watch(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    if let Some(listener) = metrics {
        if let Ok(addr) = listener.local_addr() {
            // (Tests and scripts find the address in this line.)
            tracing::info!(%addr, "HTTP: status page on http://{addr}/, metrics on http://{addr}/metrics, /healthz, /readyz, /api/services");
        }
        let router = crate::http::router(crate::http::Surface {
            engine: engine.clone(),
            auth: Arc::clone(&auth),
            insecure: config.insecure,
            grace_until: std::time::Instant::now() + config.restore_grace,
            stop: stop_rx.clone(),
            sessions: Default::default(),
            tls: tls.is_some(),
        });
        tokio::spawn(crate::http::serve(
            listener,
            tls.clone(),
            router,
            stop_rx.clone(),
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
    let xds_api = XdsApi::new(engine.clone(), config.clone(), stop_rx.clone());
    let lrs = LoadReportingServiceServer::new(xds_api.clone());
    let xds = AggregatedDiscoveryServiceServer::new(xds_api);
    let admin = AdminServer::new(AdminApi::new(
        engine.clone(),
        config.clone(),
        Arc::clone(&auth),
    ));
    let health = crate::health::service(&engine, stop_rx.clone());
    // Reflection (grpcurl, Postman): our two packages, health's and its own.
    let descriptors = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lb_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = descriptors()
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_alpha = descriptors()
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let max = config.max_message_size;
    let incoming = crate::listen::incoming(listener, tls, config.conn_limits, Arc::clone(&auth));
    let serve = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        // A peer that vanishes without closing its connection (power loss,
        // partition) is found by HTTP/2 pings rather than only by TTL.
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        // Small receive windows: a backend flooding reports is slowed down by
        // flow control after a few thousand queued messages instead of making
        // the daemon buffer millions (our messages are tens of bytes).
        .initial_stream_window_size(Some(64 * 1024))
        .initial_connection_window_size(Some(1024 * 1024))
        .layer(AuthLayer::new(Arc::clone(&auth)))
        .add_service(registry.max_decoding_message_size(max))
        .add_service(balancer.max_decoding_message_size(max))
        .add_service(grpclb.max_decoding_message_size(max))
        .add_service(xds.max_decoding_message_size(max))
        .add_service(lrs.max_decoding_message_size(max))
        .add_service(admin.max_decoding_message_size(max))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = close_rx.await;
        });
    let mut serve = tokio::spawn(serve);
    ready();

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

/// The daemon's authentication, from its settings: on with
/// `--admin-token-file`, with `--auth`, or when the data directory holds a
/// generated admin token from an earlier `--auth` start; off otherwise.
fn authentication(config: &Config) -> Result<Auth, String> {
    let a = &config.auth;
    let generated = token::admin_token_path(&config.data_dir);
    let admin = if let Some(file) = &a.admin_token_file {
        tracing::info!(file = %file.display(), "authentication on; the admin token is the one in --admin-token-file");
        Some(token::read_file(file)?)
    } else if auth_configured(config) {
        let (text, made) = token::admin_token(&config.data_dir)?;
        if made {
            tracing::info!(file = %generated.display(), "authentication on; generated the admin token (mode 0600): `lb-server ctl` on this machine reads it from there");
        } else {
            tracing::info!(file = %generated.display(), "authentication on; the admin token is in the data directory");
        }
        Some(text)
    } else {
        tracing::info!(
            "authentication off: every caller is an admin (loopback only; --auth requires tokens)"
        );
        None
    };
    Ok(match admin {
        Some(text) => Auth::enabled(Some(&text), a.grpclb_anonymous.clone(), a.limits),
        None => Auth::open(a.limits),
    })
}

/// Whether `config` turns authentication on (what [`authentication`] will
/// decide, without making the admin token).
fn auth_configured(config: &Config) -> bool {
    let a = &config.auth;
    a.required || a.admin_token_file.is_some() || token::admin_token_path(&config.data_dir).exists()
}

/// [`run`]'s refusal to serve beyond loopback without TLS and
/// authentication, for `main` to apply before it binds `addr` (so a refused
/// start never listens there, not even for a moment).
pub fn check_listen(addr: SocketAddr, config: &Config) -> Result<(), ServerError> {
    if config.insecure {
        return Ok(()); // `run` warns.
    }
    check_exposure(addr, config, auth_configured(config))
}

/// Refuses to serve `addr` beyond loopback without TLS and authentication,
/// unless `--insecure` (then it warns).
fn check_exposure(addr: SocketAddr, config: &Config, auth: bool) -> Result<(), ServerError> {
    if addr.ip().is_loopback() || (config.tls.is_some() && auth) {
        return Ok(());
    }
    let missing = match (config.tls.is_some(), auth) {
        (false, false) => "TLS and authentication",
        (false, true) => "TLS",
        _ => "authentication",
    };
    if config.insecure {
        tracing::warn!(%addr, "--insecure: serving {addr} without {missing}; anyone who can reach it can read and change everything");
        return Ok(());
    }
    Err(ServerError::Unsafe(format!(
        "refusing to serve {addr} without {missing}: beyond loopback anyone could drain or redirect every service. \
         Give --tls-cert and --tls-key, and --auth (or --admin-token-file); or listen on 127.0.0.1; \
         or pass --insecure to accept the risk"
    )))
}
