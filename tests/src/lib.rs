//! End-to-end support: the example `Echo` service and a harness that runs the
//! real binaries (`lb-server`, `echo-backend`) as child processes on loopback.
//!
//! # Layout
//! - [`echo`]: generated types of the example service (`tests/proto/echo.proto`).
//! - [`bench`]: what the benchmark binaries share (the machine description).
//! - [`cli`]: logging set-up and signal handling shared by the binaries.
//! - [`harness`]: start, kill (-9), terminate (SIGTERM) and restart real processes;
//!   each prints `... listening on ADDR` on stdout, which the harness waits for.
//! - binaries (`src/bin/`): `echo-backend` (an Echo server that registers with
//!   lb and reports its load), `echo-client` (calls Echo through lb-client and
//!   prints each backend's share), `lb-probe` (measures liveness and restart
//!   times for BENCHMARKS.md).
//! - tests (`tests/`): `e2e.rs`, scenarios with real processes.

#![forbid(unsafe_code)]

/// The example service, package `lb.example.v1`.
#[allow(missing_docs, clippy::all)]
pub mod echo {
    tonic::include_proto!("lb.example.v1");
}

pub mod bench;
pub mod cli;
pub mod harness;
