#!/usr/bin/env bash
# The benchmark suite's one entry point: `scripts/bench.sh [--quick]`.
#
# Installs what it needs (nginx for the hop-cost benchmark), builds release,
# runs every benchmark (each writes JSON in the common format, see
# bench/src/bin/lb-report.rs), then regenerates the report and its plots with
# lb-report. Loopback only; every run is bounded.
#
#   full:    results in bench/results/, plots in bench/plots/, BENCHMARKS.md
#            (the committed figures);
#   --quick: smaller sizes and durations (under 5 minutes on 2 cores); results,
#            plots and the report go to target/bench-quick/ so a smoke run
#            never overwrites the committed figures.
#
# A benchmark whose binary does not exist yet is skipped with a note. Exits
# non-zero if a benchmark that exists fails (the others still run).
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
for a in "$@"; do
    case "$a" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a (usage: scripts/bench.sh [--quick])" >&2; exit 2 ;;
    esac
done

# A quick run compares the three rows that define the result (the static
# baseline, our default, the client-side peer); a full run compares them all.
quality_policies=()
if [ "$quick" = 1 ]; then
    quality_policies=(--policies round_robin,load_aware,load_aware+shed,p2c)
    base=target/bench-quick
    results=$base/results
    plots=$base/plots
    report=$base/BENCHMARKS.md
    q=(--quick)
else
    base=.
    results=bench/results
    plots=bench/plots
    report=BENCHMARKS.md
    q=()
fi
bin=target/release
started=$(date +%s)
failed=()
declare -a summary=()

note() { printf '\n=== %s\n' "$*"; }

# run NAME CMD...: runs one benchmark, records its status and time.
run() {
    local name=$1; shift
    note "$name: $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    "$@"
    rc=$?
    t1=$(date +%s.%N)
    local dt
    dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -eq 0 ]; then
        summary+=("$name|ok|$dt")
    else
        summary+=("$name|FAILED (exit $rc)|$dt")
        failed+=("$name")
    fi
}

skip() {
    note "$1: skipped ($2)"
    summary+=("$1|skipped: $2|0")
}

# --- what the suite needs ------------------------------------------------------
have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
if ! have_nginx; then
    note "installing nginx (hop-cost benchmark)"
    # Debian's nginx-light is only a meta package over nginx (plus an echo
    # module); nginx itself has the HTTP/2 and gRPC proxy modules we need.
    pkg=nginx
    if ! apt-cache policy nginx 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        pkg=nginx-light
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$pkg" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q "$pkg" >/dev/null; } \
        || echo "warning: could not install $pkg; the hop benchmark will be skipped" >&2
fi

note "cargo build --release --workspace"
if ! cargo build --release --workspace; then
    echo "release build failed" >&2
    exit 1
fi

mkdir -p "$results" "$plots"
# Every result is regenerated; an old one must not pass for a new one.
rm -f "$results"/*.json "$plots"/*.svg

# --- balancing quality (real processes) ----------------------------------------
if [ -x "$bin/lb-bench" ]; then
    shopt -s nullglob
    scenarios=(scripts/scenarios/*.toml)
    shopt -u nullglob
    if [ "${#scenarios[@]}" -eq 0 ]; then
        skip "quality" "no scripts/scenarios/*.toml"
    fi
    for s in "${scenarios[@]}"; do
        name=$(basename "$s" .toml)
        # Scenarios whose point needs their own rows: hash-zipf compares the
        # hash policies against key-blind ones; latency-spread reads every
        # row against weighted (true capacity weights), so a quick run keeps it.
        # Each run is bounded: at most ~35 s per policy.
        case "$name" in
            hash-zipf) policies=(--policies consistent_hash,consistent_hash@load_bound=1,consistent_hash@load_bound=none,hash,load_aware,p2c) ;;
            latency-spread)
                if [ "$quick" = 1 ]; then
                    policies=(--policies round_robin,weighted,load_aware,p2c)
                else
                    policies=("${quality_policies[@]}")
                fi ;;
            *) policies=("${quality_policies[@]}") ;;
        esac
        run "quality $name" "$bin/lb-bench" --scenario "$s" --out "$results" "${q[@]}" "${policies[@]}"
    done
else
    skip "quality" "$bin/lb-bench not built yet"
fi

# --- simulator (virtual time, deterministic; well under a second each) ----------
if [ -x "$bin/lb-sim" ]; then
    run "simulator" "$bin/lb-sim" --policies all --json "$results/sim.json"
    # The seeds and variants quoted next to the simulator table.
    for seed in 2 3; do
        run "simulator seed $seed" "$bin/lb-sim" --policies load_aware,p2c_peak_ewma \
            --seed "$seed" --json "$results/sim-seed$seed.json"
    done
    run "simulator 1 s reports" "$bin/lb-sim" --policies load_aware \
        --report-interval 1s --json "$results/sim-variant-report-1s.json"
    run "simulator A58 alone" "$bin/lb-sim" --policies load_aware \
        --param active_weighting=false --json "$results/sim-variant-a58.json"
    run "simulator shedding by backlog" "$bin/lb-sim" --policies load_aware \
        --param shed_delay=100ms --json "$results/sim-variant-shed-delay.json"
    run "simulator shedding by utilization" "$bin/lb-sim" --policies load_aware \
        --param shed_target=0.9 --json "$results/sim-variant-shed-target.json"
else
    skip "simulator" "$bin/lb-sim not built"
fi

# --- control plane ---------------------------------------------------------------
if grep -q criterion lb-client/benches/pick.rs 2>/dev/null; then
    # The bench writes pick.json into LB_BENCH_OUT; LB_BENCH_QUICK shortens it.
    pick_quick=()
    [ "$quick" = 1 ] && pick_quick=(--warm-up-time 1 --measurement-time 2)
    LB_BENCH_OUT="$PWD/$results" LB_BENCH_QUICK="$quick" \
        run "pick" cargo bench -p lb-client --bench pick -- "${pick_quick[@]}"
    # The bench may write to its own default (bench-results/); move it here.
    if [ -f bench-results/pick.json ] && [ "$results" != bench-results ]; then
        mv -f bench-results/pick.json "$results/pick.json"
        rmdir bench-results 2>/dev/null || true
    fi
else
    skip "pick" "lb-client/benches/pick.rs is not written yet"
fi

if [ -x "$bin/lb-cp-bench" ]; then
    for what in propagation ingest connections scale xds; do
        run "$what" "$bin/lb-cp-bench" "$what" --out "$results" "${q[@]}"
    done
    # Three replicas on a real etcd cluster (Debian's etcd-server).
    if command -v etcd >/dev/null 2>&1; then
        run replicas "$bin/lb-cp-bench" replicas --out "$results" "${q[@]}"
    else
        skip "replicas" "no etcd on the PATH (apt-get install etcd-server)"
    fi
else
    skip "propagation, ingest, connections, scale, xds, replicas" "$bin/lb-cp-bench not built yet"
fi

if [ -x "$bin/lb-probe" ]; then
    # A JSON array of figures; lb-report converts it to the common format.
    if [ "$quick" = 1 ]; then
        probe_args=(--trials 10 --frozen-trials 1 --instances 0,10000 --restarts 2)
    else
        probe_args=(--trials 50 --frozen-trials 3 --instances 0,1000,10000 --restarts 5)
    fi
    run "liveness and restart" "$bin/lb-probe" "${probe_args[@]}" --json "$results/probe.json"
else
    skip "liveness and restart" "$bin/lb-probe not built"
fi

if [ -x "$bin/lb-hop" ]; then
    if have_nginx; then
        run "hop" "$bin/lb-hop" --out "$results" "${q[@]}"
    else
        skip "hop" "nginx is not installed"
    fi
else
    skip "hop" "$bin/lb-hop not built"
fi

if [ -x "$bin/lb-auth-bench" ]; then
    run "auth" "$bin/lb-auth-bench" --out "$results" "${q[@]}"
else
    skip "auth" "$bin/lb-auth-bench not built"
fi

# --- the report -------------------------------------------------------------------
elapsed=$(( $(date +%s) - started ))
mode=full; [ "$quick" = 1 ] && mode=quick
{
    printf '{"mode": "%s", "seconds": %s, "command": "scripts/bench.sh%s", "components": [' \
        "$mode" "$elapsed" "$([ "$quick" = 1 ] && echo ' --quick')"
    sep=""
    for s in "${summary[@]}"; do
        IFS='|' read -r name status secs <<<"$s"
        printf '%s\n  {"name": "%s", "status": "%s", "seconds": %s}' "$sep" "$name" "$status" "$secs"
        sep=","
    done
    printf '\n]}\n'
} >"$results/run.meta"
run "report" "$bin/lb-report" --results "$results" --out "$report" --plots "$plots"

total=$(( $(date +%s) - started ))
note "summary ($mode run)"
printf '%-32s %-44s %8s\n' component status seconds
for s in "${summary[@]}"; do
    IFS='|' read -r name status secs <<<"$s"
    printf '%-32s %-44s %8s\n' "$name" "$status" "$secs"
done
echo
echo "results: $results/  plots: $plots/  report: $report"
printf 'total time: %dm%02ds\n' $((total / 60)) $((total % 60))
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
