#!/usr/bin/env bash
# Runs every test: installs mongod and Azurite if needed (the integration
# tests start their own instances on free ports), then the Rust test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
eval "$(e2e/services.sh install | sed 's/^/export /')"
log="$(mktemp)"
# Every process the tests start is recorded here as "<pid> <start time>"
# (tests/support/mod.rs, SpawnTracked).
export MONGO_ADLS_TEST_PIDS="$(mktemp)"
trap 'rm -f "$log" "$MONGO_ADLS_TEST_PIDS"' EXIT

# Output goes to a file (streamed with tail), not a pipe: a process a failed
# test left behind must not hold the pipe open and stall the run.
set +e
cargo test --release --locked --no-fail-fast -- --include-ignored --test-threads 2 "$@" >"$log" 2>&1 &
tests=$!
tail -n +1 -f --pid="$tests" "$log"
wait "$tests"
status=$?
set -e

# Stop anything a failed test may have left running: only processes this
# run started (by pid, when the pid still has the recorded start time, so a
# reused pid is left alone), never by name.
left=0
while read -r pid start; do
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
  rest="${stat##*) }"
  set -- $rest
  if [ "${20:-}" = "$start" ]; then
    kill -KILL "$pid" 2>/dev/null && left=$((left + 1))
  fi
done <"$MONGO_ADLS_TEST_PIDS"
[ "$left" -eq 0 ] || echo "test.sh: stopped $left process(es) the tests left running"

# One closing line for the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
