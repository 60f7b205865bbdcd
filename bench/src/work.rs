//! The balancing-quality benchmark's service, package `lb.bench.v1`: `lb-backend`
//! serves `Work/Do` with the backend model, `lb-loadgen` calls it.

#[allow(missing_docs, clippy::all)]
mod pb {
    tonic::include_proto!("lb.bench.v1");
}

pub use pb::*;

/// The method lb's clients call (a service's cluster mode is looked up by
/// this path).
pub const WORK_METHOD: &str = "/lb.bench.v1.Work/Do";
