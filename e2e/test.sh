#!/usr/bin/env bash
# Runs every test: installs mongod and Azurite if needed (the integration
# tests start their own instances on free ports), then the Rust test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
eval "$(e2e/services.sh install | sed 's/^/export /')"
target="${CARGO_TARGET_DIR:-$repo/target}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# Output goes to a file (streamed with tail), not a pipe: a process a failed
# test left behind must not hold the pipe open and stall the run.
set +e
cargo test --release --locked --no-fail-fast -- --test-threads 2 "$@" >"$log" 2>&1 &
tests=$!
tail -n +1 -f --pid="$tests" "$log"
wait "$tests"
status=$?
set -e

# Stop anything a failed test may have left running.
pkill -f "$target/release/mongo-adls" 2>/dev/null || true
pkill -f "mongod --replSet rs0 --bind_ip 127.0.0.1 --port [0-9]+ --dbpath /tmp/" 2>/dev/null || true
pkill -f "azurite-blob --blobHost 127.0.0.1 --blobPort [0-9]+ --inMemoryPersistence" 2>/dev/null || true

# One closing line for the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
