#!/usr/bin/env bash
# Measures the foundation figures in BENCHMARKS.md (liveness, restart) with a
# release build and real processes on loopback. Extra arguments go to lb-probe.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --workspace
exec target/release/lb-probe "$@"
