//! The benchmark tools of lb, and what they share. Every tool writes its
//! figures as JSON in one common format (`{"bench", "title", "command",
//! "machine", "columns", "rows", "notes", ...}`, described in `lb-report`),
//! which `lb-report` turns into `BENCHMARKS.md` and the plots in
//! `bench/plots/`; `scripts/bench.sh` runs them all. The results live in
//! `bench/results/`. Real processes come from `lb_tests::harness`; the
//! simulator's sampler, percentiles and table come from `lb_sim`.
//!
//! # Layout
//! - [`work`]: generated types of the benchmark's `Work` service
//!   (`bench/proto/bench.proto`) and the method path its clients call.
//! - [`args`]: command-line arguments the tools share (daemon and service).
//! - [`stats`]: percentiles (nearest rank, and the rounded-index one of
//!   `lb-probe` and `lb-cp-bench`) and the rounding of reported figures.
//! - [`clock`]: wall-clock milliseconds since the Unix epoch, the time base on
//!   which separate processes line up their events.
//! - [`procfs`]: a process's CPU time, from `/proc`.
//! - [`machine`]: the machine line every result carries.
//! - [`rate`]: Poisson arrivals at a piecewise-constant rate (a scenario's
//!   `load` events), from one seeded stream.
//! - [`zipf`]: Zipf-distributed request keys (a scenario's `[keys]`), seeded.
//! - binaries (`src/bin/`):
//!   - `lb-bench`: the balancing-quality benchmark; runs a scenario
//!     (`scripts/scenarios/*.toml`) for every policy with real processes;
//!   - `lb-backend`: one modelled backend of that benchmark (FIFO slots,
//!     exponential service times, load reports);
//!   - `lb-loadgen`: its open-loop Poisson load over independent lb (or tower
//!     p2c) clients;
//!   - `lb-cp-bench`: control-plane benchmarks (propagation, ingest, scale);
//!   - `lb-probe`: liveness (backend kill -9) and restart times;
//!   - `lb-hop`: the proxy hop's cost, direct lb-client calls against nginx;
//!   - `lb-auth-bench`: what authentication and TLS cost a caller (three
//!     daemons side by side: plain, tokens, tokens over TLS);
//!   - `lb-report`: renders `BENCHMARKS.md` and its plots from the results.
//! - tests (`tests/`): `bench_harness.rs`, checks of `lb-backend`,
//!   `lb-loadgen` and `lb-bench` with real processes, and of the scenario
//!   files.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod args;
pub mod clock;
pub mod machine;
pub mod procfs;
pub mod rate;
pub mod stats;
pub mod work;
pub mod zipf;
