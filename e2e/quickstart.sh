#!/usr/bin/env bash
# The quick start in one command: builds mongo-adls, starts a local MongoDB
# replica set and Azurite, streams every change into the lake, drives a small
# workload (two databases, three collections), prints the lake tree and a
# few records, then stops everything.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
services="${MONGO_ADLS_SERVICES_DIR:-$repo/.services}"

echo "== building"
cargo build --release --locked --bin mongo-adls --example quickstart_client
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

echo "== starting mongod and Azurite"
e2e/services.sh up >/dev/null
set -a; . "$services/services.env"; set +a
export MONGO_ADLS_DATA_DIR="$services/quickstart-data"
export MONGO_ADLS_API="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
rm -rf "$MONGO_ADLS_DATA_DIR"

agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  e2e/services.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== running mongo-adls (log: $services/quickstart.log, metrics: http://$MONGO_ADLS_API/metrics)"
"$bin/mongo-adls" --config config-examples/quickstart.toml >"$services/quickstart.log" 2>&1 &
agent_pid=$!
sleep 3

echo "== workload"
"$bin/examples/quickstart_client" workload "$MONGO_URI"

echo "== waiting for the 10-second windows to seal"
for _ in $(seq 1 60); do
  n=$("$bin/examples/quickstart_client" show "$ADLS_ACCOUNT_URL" raw "$ADLS_SHARED_KEY" 2>/dev/null | awk '/ files, / {print $3}')
  [ "${n:-0}" -ge 69 ] && break
  sleep 1
done
"$bin/examples/quickstart_client" show "$ADLS_ACCOUNT_URL" raw "$ADLS_SHARED_KEY"

kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
echo "== stopped; agent log tail:"
tail -n 3 "$services/quickstart.log"
