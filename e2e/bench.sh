#!/usr/bin/env bash
# Drains a pre-loaded backlog of change events and compares, in one run:
#   1. bare      - the Rust `mongodb` driver reading the same change stream and discarding it (the limit)
#   2. blackhole - mongo-adls, mongodb_change_stream -> blackhole sink (source and runtime cost)
#   3. azurite   - mongo-adls with default sink settings into Azurite (Shared Key)
#   4. local     - mongo-adls with default sink settings into a file:// lake
#   5. seed_rolling   - the design users run today (e2e/seed/seed.js, Node.js):
#                       one Append Block per event into hourly append blobs
#   6. seed_per_event - the same port in its one-blob-per-event mode
# Reports events/s, MB/s (of documents), CPU seconds and peak RSS of the
# process under test, CPU seconds mongod and Azurite spent during each run
# (they share the machine's cores), and ratios.
# The seed ports drain the first SEED_EVENTS events only (default 5000):
# at one request per event, the whole backlog would take many minutes.
#
#   BENCH_EVENTS=200000 BENCH_DOC_BYTES=1024 e2e/bench.sh
#   BENCH_RUNS="blackhole azurite" e2e/bench.sh   # a subset (bare always runs)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
N="${BENCH_EVENTS:-200000}"
SIZE="${BENCH_DOC_BYTES:-1024}"
SEED_N="${SEED_EVENTS:-5000}"
RUNS="${BENCH_RUNS:-blackhole azurite local seed_rolling seed_per_event}"
wanted() { [[ " $RUNS " == *" $1 "* ]]; }
[ "$SEED_N" -gt "$N" ] && SEED_N="$N"
export MONGO_ADLS_SERVICES_DIR="${MONGO_ADLS_SERVICES_DIR:-$repo/.services}"
out="$repo/e2e/out/bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

cargo build --release --locked --bin mongo-adls --example bench_tool >&2
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
tool="$bin/examples/bench_tool"

e2e/services.sh down >/dev/null 2>&1 || true
rm -rf "$MONGO_ADLS_SERVICES_DIR/mongo-data" "$MONGO_ADLS_SERVICES_DIR/azurite-data"
e2e/services.sh up >/dev/null
trap 'e2e/services.sh down >/dev/null 2>&1 || true' EXIT
set -a; . "$MONGO_ADLS_SERVICES_DIR/services.env"; set +a

token="$("$tool" token "$MONGO_URI")"
echo "loading $N documents of $SIZE bytes..." >&2
"$tool" load "$MONGO_URI" "$N" "$SIZE"

now() { date +%s.%N; }
results="$out/results.tsv"
printf 'run\tseconds\tevents_per_s\tmb_per_s\tcpu_s\tpeak_rss_mb\tmongod_cpu_s\tazurite_cpu_s\n' > "$results"
# CPU seconds (user + system) a service has used so far, from /proc.
svc_cpu() {
  local pid
  pid="$(cat "$MONGO_ADLS_SERVICES_DIR/$1.pid")"
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat"
}
svc_mark() { m0="$(svc_cpu mongod)"; a0="$(svc_cpu azurite)"; }
record() { # name seconds cpu rss_kb [events]
  local m1 a1
  m1="$(svc_cpu mongod)"; a1="$(svc_cpu azurite)"
  awk -v n="$1" -v s="$2" -v c="$3" -v r="$4" -v N="${5:-$N}" -v B="$SIZE" \
    -v m="$(echo "$m1 - $m0" | bc)" -v a="$(echo "$a1 - $a0" | bc)" \
    'BEGIN { printf "%s\t%.2f\t%.0f\t%.1f\t%.2f\t%.0f\t%.2f\t%.2f\n", n, s, N/s, N*B/s/1e6, c, r/1024, m, a }' >> "$results"
}

# 1. The bare driver loop.
svc_mark
start=$(now)
/usr/bin/time -f "%U %S %M" -o "$out/bare.time" "$tool" drain "$MONGO_URI" "$token" "$N" >&2
end=$(now)
read -r u s m < "$out/bare.time"
record bare "$(echo "$end - $start" | bc)" "$(echo "$u + $s" | bc)" "$m"

agent_run() { # name sink-toml
  local name="$1" sink="$2" port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  cat > "$out/$name.toml" <<TOML
data_dir = "$out/$name-data"
api.address = "127.0.0.1:$port"
[sources.mongo]
type = "mongodb_change_stream"
uri = "$MONGO_URI"
database = "bench"
start_at = "$token"
[sinks.out]
inputs = ["mongo"]
$sink
TOML
  wanted "$name" || return 0
  local start end pid
  svc_mark
  start=$(now)
  /usr/bin/time -f "%U %S %M" -o "$out/$name.time" "$bin/mongo-adls" -q --config "$out/$name.toml" 2>"$out/$name.log" &
  pid=$!
  "$tool" wait "http://127.0.0.1:$port/metrics" out "$N"
  end=$(now)
  pkill -TERM -P "$pid" mongo-adls || true
  wait "$pid" || true
  read -r u s m < "$out/$name.time"
  record "$name" "$(echo "$end - $start" | bc)" "$(echo "$u + $s" | bc)" "$m"
}

agent_run blackhole 'type = "blackhole"'
agent_run azurite "type = \"adls_partitioned_jsonl\"
account_url = \"$ADLS_ACCOUNT_URL\"
filesystem = \"bench\"
create_filesystem = true
auth.shared_key = \"$ADLS_SHARED_KEY\""
agent_run local "type = \"adls_partitioned_jsonl\"
account_url = \"file://$out/lake\"
filesystem = \"bench\"
create_filesystem = true"

seed_run() { # name mode
  local name="$1" mode="$2" start end
  wanted "$name" || return 0
  local seed_dir="$MONGO_ADLS_SERVICES_DIR/seed-node"
  if [ ! -d "$seed_dir/node_modules/mongodb" ]; then
    mkdir -p "$seed_dir" && cp e2e/seed/package.json "$seed_dir/"
    npm install --silent --no-audit --no-fund --prefix "$seed_dir" >/dev/null
  fi
  svc_mark
  local conn="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$ADLS_SHARED_KEY;BlobEndpoint=$ADLS_ACCOUNT_URL;"
  start=$(now)
  NODE_PATH="$seed_dir/node_modules" /usr/bin/time -f "%U %S %M" -o "$out/$name.time" \
    node e2e/seed/seed.js "$mode" "$MONGO_URI" "$token" "$SEED_N" "$conn" "seed-${mode//_/-}" "$out/$name.state.json" \
    2>"$out/$name.log"
  end=$(now)
  read -r u s m < "$out/$name.time"
  record "$name" "$(echo "$end - $start" | bc)" "$(echo "$u + $s" | bc)" "$m" "$SEED_N"
}

seed_run seed_rolling rolling
seed_run seed_per_event per_event

echo
column -t "$results"
awk -F'\t' 'NR==2 { bare=$3 } $1=="azurite" { az=$3 } $1 ~ /^seed_/ { seed[$1]=$3 }
  NR>2 { printf "%s / bare = %.2f\n", $1, $3/bare }
  END { for (k in seed) printf "azurite / %s = %.1f\n", k, az/seed[k] }' "$results"
echo "(results in $results)"
