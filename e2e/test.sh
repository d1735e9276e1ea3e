#!/usr/bin/env bash
# Runs every test: installs mongod and Azurite if needed (the integration
# tests start their own instances on free ports), then the Rust test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
eval "$(e2e/services.sh install | sed 's/^/export /')"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --locked -- --test-threads 2 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
