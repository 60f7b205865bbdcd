//! The examples' generated code, shared by the programs in `src/bin/`:
//! - `backend`: serves `Greeter`, registers with lb and streams its load
//!   (the reporter and its in-flight layer);
//! - `caller`: follows the service's list and calls it through a generated
//!   tonic client on `sub.channel()`, with a deadline per call;
//! - `routed`: calls that carry request labels (for routing rules) and a
//!   hash key (for the hash policies' affinity).
//!
//! In a project of your own, this is the one line that includes the code
//! `build.rs` generates from `proto/hello.proto`.

#![forbid(unsafe_code)]

/// The generated `hello.v1` messages, client and server.
#[allow(missing_docs)]
pub mod hello {
    tonic::include_proto!("hello.v1");
}
