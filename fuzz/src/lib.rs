//! The fuzz targets' shared code: the hostile-input tests' decode path and
//! judge (`lb-server/tests/hostile/`), compiled here as they are there, so
//! libFuzzer and proptest check the same contract. Each target is one line:
//! `wire::run(Rpc::X, data)`, which panics (a crash, to libFuzzer) when the
//! decode path or a conversion breaks its contract.

// The mutation helpers of `wire` serve the proptest targets only.
#![allow(dead_code)]

#[path = "../../lb-server/tests/hostile/judge.rs"]
pub mod judge;
#[path = "../../lb-server/tests/hostile/schema.rs"]
pub mod schema;
#[path = "../../lb-server/tests/hostile/wire.rs"]
pub mod wire;
