//! Generated types for lb's gRPC API.
//!
//! # Layout
//! - [`v1`]: package `lb.v1` from `proto/lb/v1/lb.proto`: the backend side
//!   (`Registry`: `ReportLoad`, `Register`, `Deregister`) and the client side
//!   (`Balancer`: `Subscribe`).
//! - [`grpclb`]: package `grpc.lb.v1` from `proto/grpc/lb/v1/load_balancer.proto`:
//!   our wire-compatible copy of gRPC's load-balancer protocol
//!   (`LoadBalancer`: `BalanceLoad`), for stock gRPC clients' `grpclb` policy.
//!
//! - [`keyhash`]: the request-key hash shared by the daemon and clients.
//! - [`status`]: gRPC status names and codes (cluster modes' `retry_on`).
//!
//! Only the edges of `lb-server` and `lb-client` (their `pb.rs` modules) use these
//! types; the cores work on domain types.

#![forbid(unsafe_code)]

pub mod keyhash;
pub mod status;

/// Package `lb.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("lb.v1");
}

/// Package `grpc.lb.v1` (gRPC's grpclb protocol).
#[allow(missing_docs, clippy::all)]
pub mod grpclb {
    tonic::include_proto!("grpc.lb.v1");
}
