#!/usr/bin/env bash
# The foundation demo: builds, starts lb-server on a free port with a temporary
# data dir, three echo backends with weights 1, 2 and 3, and a client that makes
# 6,000 calls through lb-client. Prints each backend's count and share; exits 0
# only if every share is within 2 percentage points of its weight share.
# Stops everything it started, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p lb-server -p lb-tests --bins
bin=target/release
tmp=$(mktemp -d)
pids=()
cleanup() {
    # Backends first (SIGTERM: they drain), then the daemon.
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# Waits (up to 20 s) for "listening on ADDR" in file $1 and prints ADDR.
addr_of() {
    for _ in $(seq 200); do
        a=$(sed -n 's/.*listening on //p' "$1")
        if [ -n "$a" ]; then echo "$a"; return 0; fi
        sleep 0.1
    done
    echo "no address in $1" >&2; return 1
}

"$bin/lb-server" --listen 127.0.0.1:0 --data-dir "$tmp/data" >"$tmp/lb.out" 2>"$tmp/lb.log" &
pids+=($!)
daemon=$(addr_of "$tmp/lb.out")
echo "lb-server on $daemon (data in $tmp/data)"

for w in 1 2 3; do
    "$bin/echo-backend" --daemon "$daemon" --service echo --id "b$w" --weight "$w" \
        >"$tmp/b$w.out" 2>"$tmp/b$w.log" &
    pids+=($!)
    echo "echo-backend b$w (weight $w) on $(addr_of "$tmp/b$w.out")"
done

# The default policy is load_aware; this demo shows static weights at work.
# --create: the backends may not have registered yet.
"$bin/lb-server" ctl --server "$daemon" set-policy echo weighted_round_robin --create >/dev/null
echo "policy: weighted_round_robin (set with lb-server ctl)"

echo "echo-client: 6000 calls through lb-client"
"$bin/echo-client" --daemon "$daemon" --service echo --calls 6000 --min-servers 3 \
    --expect b1=1 --expect b2=2 --expect b3=3 --tolerance 2
