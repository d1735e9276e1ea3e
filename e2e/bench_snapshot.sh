#!/usr/bin/env bash
# Incremental snapshot throughput (`snapshot = "incremental"`) at
# snapshot_parallelism 1, 2 and 4, each against the bare driver reading the
# same ranges the same way (`bench_tool scan`: rounds of P concurrent find
# cursors over `_id` ranges of BENCH_CHUNK documents), in one run on a fresh
# mongod. The agent copies BENCH_DOCS documents of BENCH_DOC_BYTES from
# bench.items into a blackhole sink (the source's cost; no storage) on an
# idle stream, so rounds run back to back.
#
#   e2e/bench_snapshot.sh
#   BENCH_DOCS=500000 BENCH_CHUNK=10000 e2e/bench_snapshot.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
N="${BENCH_DOCS:-200000}"
SIZE="${BENCH_DOC_BYTES:-1024}"
CHUNK="${BENCH_CHUNK:-10000}"
export MONGO_ADLS_SERVICES_DIR="${MONGO_ADLS_SERVICES_DIR:-$repo/.services}"
out="$repo/e2e/out/bench-snapshot-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

cargo build --release --locked --bin mongo-adls --example bench_tool >&2
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
tool="$bin/examples/bench_tool"

e2e/services.sh down >/dev/null 2>&1 || true
rm -rf "$MONGO_ADLS_SERVICES_DIR/mongo-data" "$MONGO_ADLS_SERVICES_DIR/azurite-data"
e2e/services.sh up "${BENCH_MONGO_PORT:-}" "${BENCH_AZURITE_PORT:-}" >/dev/null
trap 'e2e/services.sh down >/dev/null 2>&1 || true' EXIT
set -a; . "$MONGO_ADLS_SERVICES_DIR/services.env"; set +a

echo "loading $N documents of $SIZE bytes..." >&2
"$tool" load "$MONGO_URI" "$N" "$SIZE"
now() { date +%s.%N; }
# agent_s: from the agent's start to the last record sent; copy_s: from the
# first record sent to the last (the copy itself, without the start:
# process, connection, first checkpoint and the stream's first reply).
printf 'parallelism\tbare_s\tagent_s\tcopy_s\tcopy_docs_per_s\tcopy/bare\tagent/bare\tagent_cpu_s\tpeak_rss_mb\n' | tee "$out/results.tsv"
for p in 1 2 4; do
  read -r docs bare_s < <("$tool" scan "$MONGO_URI" "$p" "$CHUNK")
  [ "$docs" -eq "$N" ] || { echo "bare scan read $docs of $N" >&2; exit 1; }
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  cat > "$out/p$p.toml" <<TOML
api.address = "127.0.0.1:$port"
data_dir = "$out/p$p-data"
[sources.mongo]
type = "mongodb_change_stream"
uri = "$MONGO_URI"
database = "bench"
snapshot = "incremental"
snapshot_parallelism = $p
snapshot_chunk_size = $CHUNK
[sinks.out]
inputs = ["mongo"]
type = "blackhole"
TOML
  start=$(now)
  /usr/bin/time -f "%U %S %M" -o "$out/p$p.time" "$bin/mongo-adls" -q --config "$out/p$p.toml" 2>"$out/p$p.log" &
  pid=$!
  read -r _ copy_s < <("$tool" wait "http://127.0.0.1:$port/metrics" out "$N")
  end=$(now)
  pkill -TERM -P "$pid" mongo-adls || true
  wait "$pid" || true
  read -r u s m < "$out/p$p.time"
  awk -v p="$p" -v b="$bare_s" -v a="$(echo "$end - $start" | bc)" -v k="$copy_s" -v n="$N" -v c="$(echo "$u + $s" | bc)" -v m="$m" \
    'BEGIN { printf "%d\t%.2f\t%.2f\t%.2f\t%.0f\t%.2f\t%.2f\t%.2f\t%.0f\n", p, b, a, k, n/k, b/k, b/a, c, m/1024 }' | tee -a "$out/results.tsv"
done
echo "results: $out/results.tsv" >&2
