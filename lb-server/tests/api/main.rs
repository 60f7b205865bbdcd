//! In-process gRPC tests of the daemon's API (`proto/lb/v1/lb.proto`).
//!
//! Each test runs its own daemon (`lb_server::run` on `127.0.0.1:0`) over its
//! own temporary data directory and talks to it with the generated clients.
//! Nothing here sleeps to synchronise: every wait is for an observable
//! condition (a list on a Subscribe stream, a status on a ReportLoad stream)
//! under a deadline.

//!
//! One test binary, one module per part of the API:
//! - `registry`: ReportLoad streams and the unary Register / Deregister.
//! - `balancer`: Subscribe streams and rotations.
//! - `restart`: registrations across a restart.
//! - `shedding`: drop entries for load shedding.
//! - `admin`: routing rules, cluster modes, static instances.
//! - `grpclb`: the grpc.lb.v1 front end.
//! - `common`: the daemon in this runtime, clients, builders, assertions.

mod admin;
mod balancer;
mod common;
mod grpclb;
mod registry;
mod restart;
mod shedding;
