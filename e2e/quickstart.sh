#!/usr/bin/env bash
# The quick start in one command: builds mongo-adls, starts a local MongoDB
# replica set and Azurite, streams every change into the lake as JSON Lines
# files and as Delta tables, drives a small workload (two databases, three
# collections), prints the files, the tables and a query over them, then
# stops everything. It compiles the agent only: the workload and the
# readers are Python (pymongo, azure-storage-blob, DuckDB's delta
# extension), installed by e2e/services.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
services="${MONGO_ADLS_SERVICES_DIR:-$repo/.services}"
started=$SECONDS

echo "== building"
cargo build --release --locked --bin mongo-adls
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
echo "   built in $((SECONDS - started)) s"

echo "== starting mongod and Azurite"
e2e/services.sh up >/dev/null
set -a; . "$services/services.env"; set +a
export MONGO_ADLS_DATA_DIR="$services/quickstart-data"
export MONGO_ADLS_API="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
rm -rf "$MONGO_ADLS_DATA_DIR"
export PYTHONPATH="$services/pydelta"
client() { python3 e2e/quickstart_client.py "$@"; }
lake=("$ADLS_ACCOUNT_URL")

agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  e2e/services.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== running mongo-adls (log: $services/quickstart.log, metrics: http://$MONGO_ADLS_API/metrics)"
"$bin/mongo-adls" --config config-examples/quickstart.toml >"$services/quickstart.log" 2>&1 &
agent_pid=$!
# The stream is open once the idle stream saved its checkpoint.
for _ in $(seq 1 60); do
  [ -f "$MONGO_ADLS_DATA_DIR/mongo/checkpoint.json" ] && break
  sleep 0.5
done

echo "== workload"
client workload "$MONGO_URI"

echo "== waiting for the 10-second windows to seal and the tables to commit"
for _ in $(seq 1 60); do
  files=$(client count "$ADLS_ACCOUNT_URL" raw "$ADLS_SHARED_KEY" 2>/dev/null || echo 0)
  rows=$(client rows "$ADLS_ACCOUNT_URL" tables "$ADLS_SHARED_KEY" 2>/dev/null || echo 0)
  [ "${files:-0}" -ge 69 ] && [ "${rows:-0}" -ge 69 ] && break
  sleep 1
done
client show "$ADLS_ACCOUNT_URL" raw "$ADLS_SHARED_KEY"

echo
echo "Delta tables ${ADLS_ACCOUNT_URL}/tables (read by DuckDB's delta extension):"
delta=(--account-url "$ADLS_ACCOUNT_URL" --account-key "$ADLS_SHARED_KEY" --container tables)
python3 e2e/delta_checker.py show "${delta[@]}"
query="SELECT CAST(json_extract(full_document, '$.order_no') AS INTEGER) AS order_no,
       json_extract_string(full_document, '$.status') AS status, operation_type
FROM (SELECT *, row_number() OVER (PARTITION BY document_key ORDER BY resume_token DESC) AS rn
      FROM {table}) WHERE rn = 1 AND operation_type <> 'delete'
ORDER BY order_no LIMIT 8"
echo
echo "The current state of shop.orders (latest row per document, deletes left out):"
echo "$query" | sed 's/^/  /'
python3 e2e/delta_checker.py query "${delta[@]}" --table shop/orders --sql "$query"

kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
echo "== stopped after $((SECONDS - started)) s; agent log tail:"
tail -n 3 "$services/quickstart.log"
