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
//! - [`codec`]: prost's codec, with undecodable bytes as `invalid_argument`.
//! - [`json`]: how `lb.v1`'s messages read as JSON (enums by name).
//! - [`FILE_DESCRIPTOR_SET`]: the descriptors, for server reflection.
//!
//! Generated code, and the codec and JSON mapping it uses. The edges of
//! `lb-server` and `lb-client` convert these types to and from `lb-core`'s
//! domain types; nothing else uses them.

#![forbid(unsafe_code)]

pub mod codec;
pub mod json;

/// Package `lb.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("lb.v1");
}

/// Both packages' file descriptors (an encoded `FileDescriptorSet`, with
/// their imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lb_descriptor.bin"));

/// Package `grpc.lb.v1` (gRPC's grpclb protocol).
#[allow(missing_docs, clippy::all)]
pub mod grpclb {
    tonic::include_proto!("grpc.lb.v1");
}
