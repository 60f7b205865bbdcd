#!/usr/bin/env bash
# The hostile-input properties of lb-server (lb-server/tests/hostile/) with
# many more cases than CI runs: every wire -> domain conversion, every RPC's
# request bytes through the decode path, and "nothing refused reaches the
# store". Not run in CI.
#
#   scripts/proptest-long.sh [CASES_PER_PROPERTY]   (default 330000: with
#                                                    31 properties, >= 10 M)
#
# Environment: LB_PROPTEST_SEED=N explores other cases (default: CI's seed,
# shifted so a long run never repeats CI's cases); PROFILE=debug builds
# without optimisation; THREADS (default 1) test threads. Builds with
# CARGO_BUILD_JOBS=1 unless set. Prints each property's line and the total;
# exits non-zero if a property fails (with its minimal failing input).
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${1:-330000}"
profile="${PROFILE:-release}"
threads="${THREADS:-1}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
export LB_PROPTEST_SEED="${LB_PROPTEST_SEED:-1}"
export RUST_BACKTRACE=0

flags=()
[ "$profile" = release ] && flags=(--release)
bin=$(cargo test "${flags[@]}" -p lb-server --test hostile --no-run --message-format=json 2>/dev/null |
    grep '"name":"hostile"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "proptest-long: could not build the hostile tests" >&2; exit 2; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
status=0
LB_PROPTEST_CASES="$cases" "$bin" --test-threads="$threads" --nocapture 2>&1 | tee "$log" || status=$?
end=$(date +%s)

grep -ao 'proptest [a-z_]*: [0-9]* cases' "$log" |
    awk -v secs="$((end - start))" -v cmd="LB_PROPTEST_SEED=$LB_PROPTEST_SEED PROFILE=$profile $0 $cases" '
        { n += $3; props += 1 }
        END { printf "proptest-long: %d properties, %d cases in %d s (%s)\n", props, n, secs, cmd }'
exit "$status"
