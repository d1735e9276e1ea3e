#!/usr/bin/env bash
# Runs every test: installs mongod and Azurite if needed (the integration
# tests start their own instances on free ports), then the Rust test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
eval "$(e2e/services.sh install | sed 's/^/export /')"
cargo test --release --locked -- --test-threads 2 "$@"
