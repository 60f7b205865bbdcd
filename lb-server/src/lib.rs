//! The lb daemon as a library: `lb_server::run(listener, config, shutdown)` is
//! the whole daemon; `main.rs` only parses flags, sets up logging and waits
//! for signals. What the daemon decides is computed by `lb-core` (pure);
//! this crate holds the edges, the engine task that owns the state, and the
//! store.
//!
//! # Layout
//! - [`server`]: `run()`: opens the store, starts the engine, serves gRPC,
//!   drains on shutdown (the order written out there).
//! - [`api`]: the gRPC services, thin shells (`Registry`, `Balancer`,
//!   `Admin`, grpclb's `LoadBalancer`).
//! - [`pb`]: wire ⇄ domain conversion, the only place wire types become
//!   domain types (and bad input becomes `invalid_argument`); it imports
//!   nothing of this crate.
//! - [`engine`]: the task that owns the registry, the re-plan scheduler and
//!   the store; its commands ([`engine::cmd`]), the hub subscribers follow,
//!   and the snapshot readers use.
//! - [`store`]: the [`store::Store`] trait (revisions, compare-and-set,
//!   ordered watches), its storage format and the sled implementation.
//! - [`health`]: gRPC health checking (the daemon, and each service while
//!   it has an instance to call); reflection is mounted in [`server`].
//! - [`auth`]: who is calling (bearer tokens, client certificates) and
//!   whether they may; the tower layer in front of every service.
//! - [`listen`]: the accept loop: connection limit, handshake deadline, TLS.
//! - [`tls`]: rustls configuration, reloaded when its files change.
//! - [`warm`]: warm restart: the backends' last load reports on disk, read
//!   back at start so plans resume from what was known.
//! - [`http`]: the HTTP listener (`--http-listen`): `/metrics`, `/healthz`,
//!   `/readyz` and the JSON API, in axum over hyper-util.
//! - [`metrics`]: Prometheus metrics, from the snapshot, by prometheus-client.
//! - [`ctl`]: `lb-server ctl …`, the operator CLI over `Admin`.
//! - [`config`]: the daemon's settings.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod ctl;
pub mod engine;
pub mod health;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod store;
pub mod tls;
pub mod warm;

pub use config::Config;
pub use server::{run, ServerError};
