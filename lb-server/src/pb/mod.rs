//! The protobuf edge: wire messages ⇄ `lb-core` domain types, one way in and
//! one way out, and nothing else. Inbound, this is where bad input becomes a
//! [`FieldError`] naming the field, and [`invalid`] its `invalid_argument`
//! status. These modules import only `lb_proto` and `lb_core`: never the
//! engine, the store or the services.
//!
//! - [`v1`]: package `lb.v1` (backends, clients, operators).
//! - [`grpclb`]: package `grpc.lb.v1` (stock gRPC clients).

pub mod grpclb;
pub mod v1;

use lb_core::model::FieldError;
use tonic::Status;

/// A bad field, as the status a caller sees.
pub fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}
