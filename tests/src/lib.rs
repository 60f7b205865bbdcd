//! End-to-end support: the example `Echo` service and a harness that runs the
//! real binaries (`lb-server`, `echo-backend`) as child processes on loopback.
//! The benchmark tools (crate `lb-bench`, `bench/`) use the same harness.
//!
//! # Layout
//! - [`echo`]: generated types of the example service (`tests/proto/echo.proto`).
//! - [`cli`]: logging set-up and signal handling shared by the binaries
//!   (these and the benchmark tools).
//! - [`harness`]: start, kill (-9), terminate (SIGTERM) and restart real processes;
//!   each prints `... listening on ADDR` on stdout, which the harness waits for.
//! - [`pki`]: a throwaway CA and certificates (server, SPIFFE client) for
//!   the TLS tests.
//! - [`etcd`]: a real etcd cluster of child processes on loopback (members
//!   killed with -9 and restarted), for the replica tests.
//! - binaries (`src/bin/`):
//!   - `echo-backend`: an Echo server that registers with lb and reports its
//!     load (faults on demand: `--fail-while FILE`, `--delay-ms`);
//!   - `echo-client`: calls Echo through lb-client and prints each backend's share.
//! - tests (`tests/`):
//!   - `e2e.rs`: shares by weight, backends killed (-9) and drained, the
//!     daemon killed and restarted, `ctl` changes, the client's fallback,
//!     consistent hashing and its bound on a hot key;
//!   - `client_first_try.rs`: the README's snippet works on its first call;
//!     unreachable, token-requiring and untrusted daemons fail `subscribe`
//!     at once naming the cause; one connection per process and daemon;
//!   - `routing.rs`: routing rules, failover under a kill, ejection and
//!     re-admission, broadcast and multicast;
//!   - `backend_faults.rs`: backends frozen (SIGSTOP), killed (-9) and slow
//!     under a generated client on `Subscription::channel()`: deadlines,
//!     keep-alive, UNAVAILABLE naming the backend, failover and hedging
//!     through the channel, one attempt for open streams and large requests;
//!   - `forged_stats.rs`: one client's forged stats eject nothing, two
//!     agreeing clients' do;
//!   - `grpclb_stock.rs`: a stock grpcio client through grpclb (`python/`);
//!   - `store_migration.rs`: a data directory in the first store layout
//!     (`fixtures/`) opens with everything acknowledged;
//!   - `store_crash.rs`: 100 `kill -9` during a stream of acknowledged
//!     writes; the store opens every time and none is lost;
//!   - `replicas.rs`: clients given several daemon addresses spread over
//!     them and move when theirs dies;
//!   - `etcd_store.rs`: the etcd store on a 3-member cluster: the store
//!     contract across two openings, quorum loss and return;
//!   - `etcd_replicas.rs`: three lb-server replicas on etcd: what one is
//!     told every replica's clients get; a client never moves to a replica
//!     behind its state; each replica and an etcd member killed with -9
//!     under load: no failed call, every acknowledged write everywhere; a
//!     lease whose replica died expires on the others;
//!   - `etcd_quorum.rs`: replicas while etcd has no quorum (lists, calls
//!     and reports go on, writes refused) and after it returns;
//!   - `config.rs`: `--config` files (flags and `LB_*` override them),
//!     `--print-config`, JSON logs, completions, `deploy/`'s examples;
//!   - `health.rs`: gRPC health with a stock grpcio health client (a
//!     service stops serving when its last instance drains), reflection
//!     with tonic-reflection's client, both with `--auth`; the HTTP
//!     listener (`/healthz`, `/readyz` during and after the restore grace,
//!     the JSON API, tokens), and `/metrics` read by Prometheus' own parser;
//!   - `store_faults.rs`: a full disk (degraded mode and recovery), write
//!     errors, a damaged store refused at start;
//!   - `quotas.rs`: each quota refuses with `resource_exhausted`, and nothing
//!     refused reaches the store;
//!   - `security.rs`: authentication, roles, ownership, TLS and mTLS, and the
//!     limits against hostile peers;
//!   - `warm_restart.rs`: after `kill -9` the first lists are the old plan;
//!   - `readme.rs`: every `lb-server ctl` line of the README runs;
//!   - `ctl.rs`: the operator CLI: partial changes and their diffs,
//!     `--create`, `delete-service`, durations, what `get` shows, `LB_*`
//!     variables, a daemon down, a data directory held by another daemon.

#![forbid(unsafe_code)]

/// The example service, package `lb.example.v1`.
#[allow(missing_docs, clippy::all)]
pub mod echo {
    tonic::include_proto!("lb.example.v1");
}

pub mod cli;
pub mod etcd;
pub mod harness;
pub mod pki;
pub mod stock;
