#!/usr/bin/env bash
# Drains a pre-loaded backlog of change events and compares, in one run:
#   1. bare      - the Rust `mongodb` driver reading the same change stream and discarding it (the limit;
#                  run twice, the faster counts)
#   2. blackhole - mongo-adls, mongodb_change_stream -> blackhole sink (source and runtime cost)
#   3. azurite   - mongo-adls with default sink settings into Azurite (Shared Key)
#   4. local     - mongo-adls with default sink settings into a file:// lake
#   4b. azurite_state - as azurite, with the pipeline's state in Azurite too
#                  (`[state] store = "azure_blob"`, no data_dir): the cost of
#                  remote state, as a ratio to the azurite run
#   4c. delta    - mongo-adls into Delta tables in Azurite (`adls_delta`, defaults but
#                  commit.interval_secs = 1, so the drain's end is not held by the
#                  one-minute default), as a ratio to the azurite run; with the
#                  bytes each wrote (Parquet against JSON Lines)
#   4d. delta_local - the same into a file:// lake, as a ratio to the local run
#   5. ceiling   - Azurite's own ingest (`bench_tool azurite-ceiling`): BENCH_CEILING_WRITERS
#                  (default 4) concurrent Put Blocks of BENCH_BLOCK_BYTES (default 4500000, the
#                  sink's batch.max_bytes) through the sink's SDK and Shared Key policy, committed
#                  per 128 MiB blob; BENCH_CEILING_BYTES (default: what the azurite run wrote,
#                  at least 256 MiB). Reported as MB/s written and as events/s of the average
#                  line the azurite (else local) run wrote: the storage limit
#   6. latency   - as azurite, through `bench_tool latency-proxy`, which holds every chunk
#                  Azurite sends back for BENCH_LATENCY_MS (default 30) before passing it on:
#                  each storage round trip takes that much longer (connection setup does not)
#   7. many      - as azurite, but a second backlog of the same size spread round-robin over
#                  BENCH_COLLECTIONS (default 1000) collections of the same database, loaded
#                  just before this run
#   7a. many_delta - the many backlog into Delta tables in Azurite (one table per
#                  collection, commit.interval_secs = 5): memory and requests with
#                  many tables
#   7b. many_latency - the many backlog again, through the latency proxy: small
#                  blocks of many files against a cloud round trip
#   8. seed_rolling   - the design users run today (e2e/seed/seed.js, Node.js):
#                       one Append Block per event into hourly append blobs
#   9. seed_per_event - the same port in its one-blob-per-event mode
# Reports events/s, MB/s (of documents), MB/s written to storage, CPU seconds
# and peak RSS of the process under test, CPU seconds mongod and Azurite spent
# during each run (they share the machine's cores), and ratios.
# The seed ports drain the first SEED_EVENTS events only (default 5000):
# at one request per event, the whole backlog would take many minutes.
# BENCH_MONGO_PORT / BENCH_AZURITE_PORT pin the services' ports (default:
# 27017 / 10000 when free, else any free port); MONGO_ADLS_SERVICES_DIR
# picks the services' folder (its mongod and Azurite are restarted afresh).
#
#   BENCH_EVENTS=200000 BENCH_DOC_BYTES=1024 e2e/bench.sh
#   BENCH_RUNS="blackhole azurite" e2e/bench.sh   # a subset (bare always runs)
#   BENCH_SINK_OPTIONS='request.concurrency_per_file = 1' ...   # extra options of the Azurite sinks
#   BENCH_SOURCE_OPTIONS='batch_size = 1000' ...   # extra options of every agent's source
#   BENCH_FILLER=text ...   # documents of words and numbers that compress like real ones
#                             (default: one repeated letter); for the bytes each sink writes
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
N="${BENCH_EVENTS:-200000}"
SIZE="${BENCH_DOC_BYTES:-1024}"
SEED_N="${SEED_EVENTS:-5000}"
RUNS="${BENCH_RUNS:-blackhole azurite azurite_state local delta delta_local ceiling latency many many_latency seed_rolling seed_per_event}"
WRITERS="${BENCH_CEILING_WRITERS:-4}"
BLOCK="${BENCH_BLOCK_BYTES:-4500000}"
LATENCY_MS="${BENCH_LATENCY_MS:-30}"
COLLECTIONS="${BENCH_COLLECTIONS:-1000}"
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
e2e/services.sh up "${BENCH_MONGO_PORT:-}" "${BENCH_AZURITE_PORT:-}" >/dev/null
proxy_pid=""
trap '[ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null; e2e/services.sh down >/dev/null 2>&1 || true' EXIT
set -a; . "$MONGO_ADLS_SERVICES_DIR/services.env"; set +a

token="$("$tool" token "$MONGO_URI")"
echo "loading $N documents of $SIZE bytes..." >&2
"$tool" load "$MONGO_URI" "$N" "$SIZE"

now() { date +%s.%N; }
results="$out/results.tsv"
printf 'run\tseconds\tevents_per_s\tmb_per_s\tout_mb_per_s\tcpu_s\tpeak_rss_mb\tmongod_cpu_s\tazurite_cpu_s\trequests\n' > "$results"
# CPU seconds (user + system) a process has used so far, from /proc.
pid_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
svc_cpu() { pid_cpu "$(cat "$MONGO_ADLS_SERVICES_DIR/$1.pid")"; }
svc_mark() { m0="$(svc_cpu mongod)"; a0="$(svc_cpu azurite)"; }
record() { # name seconds cpu rss_kb [events [bytes written to storage [Azure requests]]]
  local m1 a1
  m1="$(svc_cpu mongod)"; a1="$(svc_cpu azurite)"
  awk -v n="$1" -v s="$2" -v c="$3" -v r="$4" -v N="${5:-$N}" -v B="$SIZE" -v o="${6:-}" \
    -v q="${7:-0}" -v m="$(echo "$m1 - $m0" | bc)" -v a="$(echo "$a1 - $a0" | bc)" \
    'BEGIN { out = (o == "" || o == 0) ? "-" : sprintf("%.1f", o/s/1e6)
             printf "%s\t%.2f\t%.0f\t%.1f\t%s\t%.2f\t%.0f\t%.2f\t%.2f\t%s\n", n, s, N/s, N*B/s/1e6, out, c, r/1024, m, a, (q == 0 ? "-" : q) }' >> "$results"
}
# Bytes each agent run wrote (the sink's component_sent_event_bytes_total).
declare -A out_bytes

# 1. The bare driver loop, twice: right after the load mongod is still
# busy (its first drain was up to 30 % slower and costlier here), so the
# faster of the two is the limit every ratio is taken against.
best=""
for try in 1 2; do
  m0="$(svc_cpu mongod)"; a0="$(svc_cpu azurite)"
  start=$(now)
  /usr/bin/time -f "%U %S %M" -o "$out/bare-$try.time" "$tool" drain "$MONGO_URI" "$token" "$N" >&2
  end=$(now)
  secs="$(echo "$end - $start" | bc)"
  if [ -z "$best" ] || [ "$(echo "$secs < $best" | bc)" = 1 ]; then
    best="$secs"; bm0="$m0"; ba0="$a0"; bm1="$(svc_cpu mongod)"; ba1="$(svc_cpu azurite)"
    cp "$out/bare-$try.time" "$out/bare.time"
  fi
done
read -r u s m < "$out/bare.time"
# record() takes the services' CPU since the mark: that of the best try.
m0="$(echo "$(svc_cpu mongod) - ($bm1 - $bm0)" | bc)"; a0="$(echo "$(svc_cpu azurite) - ($ba1 - $ba0)" | bc)"
record bare "$best" "$(echo "$u + $s" | bc)" "$m"

agent_run() { # name sink-toml [start token] [globals, default: a data_dir]
  local name="$1" sink="$2" from="${3:-$token}" port
  local globals="${4:-data_dir = \"$out/$name-data\"}"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  cat > "$out/$name.toml" <<TOML
api.address = "127.0.0.1:$port"
$globals
[sources.mongo]
type = "mongodb_change_stream"
uri = "$MONGO_URI"
database = "bench"
start_at = "$from"
${BENCH_SOURCE_OPTIONS:-}
[sinks.out]
inputs = ["mongo"]
$sink
TOML
  wanted "$name" || return 0
  local start end pid sent
  svc_mark
  start=$(now)
  /usr/bin/time -f "%U %S %M" -o "$out/$name.time" "$bin/mongo-adls" -q --config "$out/$name.toml" 2>"$out/$name.log" &
  pid=$!
  read -r sent _ requests < <("$tool" wait "http://127.0.0.1:$port/metrics" out "$N")
  end=$(now)
  pkill -TERM -P "$pid" mongo-adls || true
  wait "$pid" || true
  read -r u s m < "$out/$name.time"
  out_bytes[$name]="$sent"
  record "$name" "$(echo "$end - $start" | bc)" "$(echo "$u + $s" | bc)" "$m" "$N" "$sent" "$requests"
}
azure_sink() { # filesystem [account_url]
  printf '%s\n' 'type = "adls_partitioned_jsonl"' "account_url = \"${2:-$ADLS_ACCOUNT_URL}\"" \
    "filesystem = \"$1\"" 'create_filesystem = true' "auth.shared_key = \"$ADLS_SHARED_KEY\"" \
    "${BENCH_SINK_OPTIONS:-}"
}

agent_run blackhole 'type = "blackhole"'
agent_run azurite "$(azure_sink bench)"
agent_run azurite_state "$(azure_sink bench-state)" "$token" "[state]
store = \"azure_blob\"
account_url = \"$ADLS_ACCOUNT_URL\"
container = \"bench-state\"
create_container = true
auth.shared_key = \"$ADLS_SHARED_KEY\"
id = \"bench\""
agent_run local "type = \"adls_partitioned_jsonl\"
account_url = \"file://$out/lake\"
filesystem = \"bench\"
create_filesystem = true"
delta_sink() { # filesystem account_url [auth [commit interval, default 1 s]]
  printf '%s\n' 'type = "adls_delta"' "account_url = \"$2\"" "filesystem = \"$1\"" \
    'create_filesystem = true' "commit.interval_secs = ${4:-1}" "${3:-}" "${BENCH_DELTA_OPTIONS:-}"
}
agent_run delta "$(delta_sink bench-delta "$ADLS_ACCOUNT_URL" "auth.shared_key = \"$ADLS_SHARED_KEY\"")"
agent_run delta_local "$(delta_sink bench-delta "file://$out/lake")"

# Azurite's own ingest ceiling, as events/s of the average line the agent wrote.
line_bytes=""
for r in azurite local; do
  if [ -n "${out_bytes[$r]:-}" ] && [ "${out_bytes[$r]}" != 0 ]; then
    line_bytes="$(echo "${out_bytes[$r]} / $N" | bc -l)"; break
  fi
done
if wanted ceiling; then
  total="${BENCH_CEILING_BYTES:-$(( ${out_bytes[azurite]:-${out_bytes[local]:-0}} > 268435456 ? ${out_bytes[azurite]:-${out_bytes[local]:-0}} : 268435456 ))}"
  svc_mark
  if ! /usr/bin/time -f "%U %S %M" -o "$out/ceiling.time" \
    "$tool" azurite-ceiling "$ADLS_ACCOUNT_URL" "$ADLS_SHARED_KEY" "$WRITERS" "$BLOCK" "$total" \
    > "$out/ceiling.out" 2>"$out/ceiling.log"; then
    cat "$out/ceiling.log" >&2; exit 1
  fi
  read -r secs bytes < "$out/ceiling.out"
  read -r u s m < "$out/ceiling.time"
  # With no agent run to give the line size, events/s is of the documents' size.
  record ceiling "$secs" "$(echo "$u + $s" | bc)" "$m" \
    "$(echo "$bytes / ${line_bytes:-$SIZE}" | bc -l)" "$bytes"
fi

# The latency proxy in front of Azurite (BENCH_LATENCY_MS per round trip):
# `proxy_up` sets pport and proxy_pid, `proxy_down` stops it.
proxy_up() {
  pport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$tool" latency-proxy "127.0.0.1:$pport" "127.0.0.1:$AZURITE_PORT" "$LATENCY_MS" 2>>"$out/latency-proxy.log" &
  proxy_pid=$!
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break
    sleep 0.1
  done
}
proxy_down() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=""
}

# mongo-adls into Azurite through a proxy adding BENCH_LATENCY_MS per round trip.
if wanted latency; then
  proxy_up
  p0="$(pid_cpu "$proxy_pid")"
  agent_run latency "$(azure_sink bench-latency "http://127.0.0.1:$pport/devstoreaccount1")"
  proxy_cpu="$(printf %.2f "$(echo "$(pid_cpu "$proxy_pid") - $p0" | bc)")"
  proxy_down
fi

# A second backlog of the same size spread over BENCH_COLLECTIONS collections.
if wanted many || wanted many_latency || wanted many_delta; then
  many_token="$("$tool" token "$MONGO_URI")"
  echo "loading $N documents of $SIZE bytes over $COLLECTIONS collections..." >&2
  "$tool" load "$MONGO_URI" "$N" "$SIZE" "$COLLECTIONS" many
fi
if wanted many; then
  agent_run many "$(azure_sink bench-many)" "$many_token"
fi
if wanted many_delta; then
  agent_run many_delta "$(delta_sink bench-many-delta "$ADLS_ACCOUNT_URL" "auth.shared_key = \"$ADLS_SHARED_KEY\"" 5)" "$many_token"
fi
if wanted many_latency; then
  proxy_up
  agent_run many_latency "$(azure_sink bench-many-latency "http://127.0.0.1:$pport/devstoreaccount1")" "$many_token"
  proxy_down
fi

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
echo
echo "ratios of events/s (backlog $N x $SIZE bytes; ceiling: $WRITERS writers of $BLOCK-byte blocks${line_bytes:+, lines of $(printf %.0f "$line_bytes") bytes}; latency: +$LATENCY_MS ms per round trip${proxy_cpu:+, proxy CPU ${proxy_cpu} s}; many: $COLLECTIONS collections):"
awk -F'\t' 'NR > 1 { ev[$1] = $3; rss[$1] = $7; out[$1] = ($5 == "-" ? "" : $5 / $3); order[++n] = $1
    secs[$1] = $2; cpu[$1] = $6; cpusum[$1] = $6 + $8 + $9; req[$1] = $10; az_run[$1] = ($9 > 0.5) }
  function ratio(label, a, b) { if (a != "" && b != "" && b > 0) printf "  %-32s %6.2f\n", label, a / b }
  END {
    bare = ev["bare"]; az = ev["azurite"]; c = ev["ceiling"]
    limit = bare; which = "bare"
    if (c != "" && c < bare) { limit = c; which = "ceiling" }
    ratio("blackhole / bare", ev["blackhole"], bare)
    if (c != "") ratio("ceiling / bare", c, bare)
    ratio("azurite / min(bare, ceiling)", az, limit)
    if (az != "" && c != "") printf "  %-32s (the limit is %s)\n", "", which
    ratio("azurite_state / azurite", ev["azurite_state"], az)
    ratio("local / bare", ev["local"], bare)
    ratio("delta / azurite", ev["delta"], az)
    ratio("delta_local / local", ev["delta_local"], ev["local"])
    if (out["delta"] != "" && out["azurite"] != "" && out["azurite"] > 0) printf "  %-32s %6.2f\n", "delta bytes / azurite bytes", out["delta"] / out["azurite"]
    ratio("latency / azurite", ev["latency"], az)
    ratio("many / azurite", ev["many"], az)
    ratio("many_delta / many", ev["many_delta"], ev["many"])
    ratio("many_latency / latency", ev["many_latency"], ev["latency"])
    for (k in ev) if (k ~ /^seed_/) ratio("azurite / " k, az, ev[k])
    # The co-located bound: the rate the CPU seconds of the run allow on 2
    # cores, (agent + mongod + Azurite CPU s) / 2 against the wall time.
    printf "co-located bound (CPU sum / 2 / seconds):"
    for (i = 2; i <= n; i++) if (az_run[order[i]]) printf " %s %.2f", order[i], cpusum[order[i]] / 2 / secs[order[i]]
    printf "\nagent CPU per event / that of bare:"
    for (i = 2; i <= n; i++) if (order[i] != "ceiling" && cpu["bare"] > 0) printf " %s %.2f", order[i], (cpu[order[i]] / (ev[order[i]] * secs[order[i]])) / (cpu["bare"] / (ev["bare"] * secs["bare"]))
    printf "\nAzure requests:"
    for (i = 2; i <= n; i++) if (req[order[i]] != "-" && req[order[i]] != "") printf " %s %s", order[i], req[order[i]]
    printf "\n"
    printf "every run / bare:"
    for (i = 2; i <= n; i++) printf "%s %s %.2f", (i > 2 ? "," : ""), order[i], ev[order[i]] / bare
    printf "\npeak RSS (MB):"
    for (i = 1; i <= n; i++) printf "%s %s %s", (i > 1 ? "," : ""), order[i], rss[order[i]]
    printf "\n"
  }' "$results"
echo "(results in $results)"
