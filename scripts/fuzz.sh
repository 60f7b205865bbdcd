#!/usr/bin/env bash
# Fuzzes the decoding of every RPC's request bytes, for a bounded time, and
# exits on its own. Not run in CI.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    (default 60 s, every target)
#
# With a nightly toolchain and cargo-fuzz: the libFuzzer targets of fuzz/
# (one per RPC: register, deregister, report_load, subscribe, list_services,
# get_service, set_policy, set_weight, set_drain, put_rule, delete_rule,
# set_cluster, put_static, remove_static, delete_service, create_token, list_tokens,
# revoke_token, balance_load), built once with
# AddressSanitizer and debug assertions, each run for SECONDS from a corpus
# seeded by the proptest generators (fuzz/corpus/TARGET, kept between runs;
# crashes go to fuzz/artifacts/TARGET/). Without them: the same targets as
# proptest properties (decode_* in lb-server/tests/hostile) for SECONDS each.
#
# Prints executions per target and a total; exits non-zero if a target
# crashed. Builds with CARGO_BUILD_JOBS=1 unless set.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
all=(register deregister report_load subscribe list_services get_service set_policy
    set_weight set_drain put_rule delete_rule set_cluster put_static remove_static
    delete_service create_token list_tokens revoke_token balance_load)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
export RUST_BACKTRACE=0

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: no nightly cargo-fuzz here; running the proptest decode targets instead" >&2
    filter=()
    for t in "${targets[@]}"; do filter+=("decode_$t"); done
    LB_PROPTEST_SECONDS="$secs" LB_PROPTEST_SEED="${LB_PROPTEST_SEED:-$(date +%s)}" \
        cargo test --release -p lb-server --test hostile -- --exact "${filter[@]}" \
        --test-threads=1 --nocapture
    exit $?
fi

flags=(-O --debug-assertions)
cargo +nightly fuzz build "${flags[@]}" >&2
bin=fuzz/target/x86_64-unknown-linux-gnu/release

# Seeds: valid and near-valid requests from the proptest generators.
if [ ! -d fuzz/corpus/register ]; then
    echo "fuzz: writing the seed corpus" >&2
    LB_FUZZ_CORPUS="$PWD/fuzz/corpus" cargo test -p lb-server --test hostile -- --exact write_fuzz_corpus >&2
fi

total=0
failed=()
printf '%-14s %12s %8s %s\n' target execs exec/s result
for t in "${targets[@]}"; do
    mkdir -p "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t/last-run.log"
    rc=0
    # libFuzzer stops itself after -max_total_time; the timeout is a backstop.
    timeout $((secs + 120)) "$bin/$t" "fuzz/corpus/$t" \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    execs=${execs:-0}
    total=$((total + execs))
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="CRASH (exit $rc; see $log)"
        failed+=("$t")
    fi
    printf '%-14s %12s %8s %s\n' "$t" "$execs" "${rate:-?}" "$result"
done
echo "fuzz: ${#targets[@]} targets x ${secs} s: $total executions; ${#failed[@]} crashed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
