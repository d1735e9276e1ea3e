#!/usr/bin/env python3
"""Independent checker of a Delta lake written by the `adls_delta` sink. It
shares no code with the agent or with delta-rs: it replays each table's
`_delta_log` itself (JSON commits; checkpoints read with pyarrow), reads the
data files with pyarrow, and, as a second reader, runs DuckDB's `delta`
extension (delta-kernel) over a local copy of each table.

  delta_checker.py watch --stop-file F --out W.json [lake options]
      Lists the lake every 200 ms until F exists, then once more. Records
      each object's first ETag and size, and reports an object that changes
      (every data file, commit and checkpoint is written once; only
      `_last_checkpoint` is replaced) and a log object that disappears. A
      data file that disappears is recorded (vacuum may delete files the
      table removed); `verify` checks it was removed first.

  delta_checker.py verify --manifest M.jsonl [--watch W.json] --mongo-uri U [lake options]
      For every table: versions 0..N all present; each application's `txn`
      versions only rise; each checkpoint holds exactly the files the JSON
      commits give at its version; every file the table references exists,
      with the size its `add` says and the row count its statistics say;
      nothing the watcher saw changed; a vanished data file was removed by
      a commit first. Then the rows: every acknowledged change in the
      manifest exactly once (a `snapshot` entry: that `_id`'s snapshot
      record), an unacknowledged one at most once, nothing else; the rows
      replayed per document (by resume token) equal MongoDB's documents;
      DuckDB's delta_scan returns the same number of rows per table, and
      the current-state view (the latest row per document key, deletes
      left out; --view-sql F: the query in F, as `snowflake-sql` prints
      it) equals MongoDB, in count and document by document.

  delta_checker.py show [lake options]
      Prints each table's version, rows per operation (DuckDB) and the
      current-state count: what the quick start shows.

  delta_checker.py query --table T --sql S [lake options]
      Runs S in DuckDB, `{table}` standing for table T, and prints the rows.

Lake options: --lake-dir DIR (a file:// lake's filesystem folder), or
--account-url, --account-key and --container.
"""

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict

import pyarrow.parquet as pq

# The manifest's identities, as the JSON Lines checker reads them.
from checker import key_of, seq_of

CURRENT_STATE = """
SELECT * EXCLUDE (rn) FROM (
  SELECT *, row_number() OVER (PARTITION BY document_key ORDER BY resume_token DESC) AS rn
  FROM {table}
  WHERE document_key IS NOT NULL
    AND operation_type IN ('insert', 'update', 'replace', 'delete', 'snapshot')
) WHERE rn = 1 AND operation_type <> 'delete'
"""


class LocalLake:
    def __init__(self, root):
        self.root = root

    def list(self):
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if f.startswith("."):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                name = os.path.relpath(path, self.root)
                out[name] = ("%d-%d-%d" % (st.st_ino, st.st_size, st.st_mtime_ns), st.st_size)
        return out

    def get(self, name):
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


class AzureLake:
    def __init__(self, args):
        from azure.storage.blob import BlobServiceClient

        url = args.account_url.rstrip("/")
        account = url.rsplit("/", 1)[-1]
        conn = "DefaultEndpointsProtocol=http;AccountName={a};AccountKey={k};BlobEndpoint={u};".format(
            a=account, k=args.account_key, u=url
        )
        self.container = BlobServiceClient.from_connection_string(conn).get_container_client(args.container)

    def list(self):
        return {b.name: (b.etag, b.size) for b in self.container.list_blobs()}

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None


def lake_of(args):
    return LocalLake(args.lake_dir) if args.lake_dir else AzureLake(args)


LOG_OBJECT = re.compile(r"(?P<table>.+)/_delta_log/(?P<name>[^/]+)")


def watch(args):
    lake = lake_of(args)
    first, vanished, log_vanished, violations = {}, {}, {}, []
    polls, last = 0, {}
    final = None
    stop_seen = None
    while True:
        stopping = os.path.exists(args.stop_file)
        if stopping and stop_seen is None:
            stop_seen = time.monotonic()
        started = time.monotonic()
        try:
            names = lake.list()
        except Exception:  # Azurite restarting
            if stopping and time.monotonic() - stop_seen > 60:
                violations.append("no listing after the stop file appeared")
                break
            time.sleep(0.5)
            continue
        polls += 1
        for name, (etag, size) in names.items():
            seen = first.get(name)
            if seen is None:
                first[name] = {"etag": etag, "size": size}
            elif (seen["etag"], seen["size"]) != (etag, size) and not name.endswith("/_last_checkpoint"):
                violations.append("%s changed after it was listed" % name)
        for name in last:
            if name not in names:
                if LOG_OBJECT.fullmatch(name):
                    # Checked against the final log by `verify`: only log
                    # cleanup may delete, and only before the log's start.
                    log_vanished.setdefault(name, time.time())
                else:
                    vanished.setdefault(name, time.time())
        last = names
        if stopping:
            final = {n: {"etag": e, "size": s} for n, (e, s) in names.items()}
            break
        time.sleep(max(0.2, time.monotonic() - started))
    with open(args.out, "w") as f:
        json.dump({"polls": polls, "first": first, "final": final, "vanished": vanished, "log_vanished": log_vanished, "violations": violations[:100]}, f)


def parse_commit(data):
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def checkpoint_files(data):
    """The active files a checkpoint holds (their sizes by path), its txn
    versions, and its add actions by path."""
    table = pq.read_table(io.BytesIO(data)).to_pylist()
    files, txns, adds = {}, {}, {}
    for row in table:
        if row.get("add"):
            files[row["add"]["path"]] = row["add"]["size"]
            adds[row["add"]["path"]] = row["add"]
        if row.get("txn"):
            txns[row["txn"]["appId"]] = row["txn"]["version"]
    return files, txns, adds


def replay_table(lake, listing, table, problems):
    """The table's files at its newest version, by path, from its JSON
    commits, checking versions, txn order and checkpoints on the way."""
    prefix = table + "/_delta_log/"
    versions = sorted(int(n[len(prefix):-5]) for n in listing if n.startswith(prefix) and n.endswith(".json") and n[len(prefix):-5].isdigit())
    checkpoints = sorted(int(n[len(prefix):].split(".")[0]) for n in listing if n.startswith(prefix) and n.endswith(".checkpoint.parquet"))
    # Log cleanup deletes versions before a checkpoint: the log then starts
    # at that checkpoint, which the replay starts from.
    start = versions[0] if versions else 0
    if versions != list(range(start, start + len(versions))):
        problems.append("%s: commit versions are not a contiguous run: %s" % (table, versions[:20]))
    files, removed, txn = {}, {}, {}
    commits = {}
    all_adds = {}
    rewrites = 0
    if start > 0:
        if start not in checkpoints:
            problems.append("%s: the log starts at version %d, where there is no checkpoint" % (table, start))
            return files, removed, versions, checkpoints, rewrites, start
        _, txn, adds = checkpoint_files(lake.get(prefix + "%020d.checkpoint.parquet" % start))
        files = dict(adds)
        all_adds = dict(adds)
    for v in versions:
        if start > 0 and v == start:
            continue
        actions = parse_commit(lake.get(prefix + "%020d.json" % v))
        commits[v] = actions
        for a in actions:
            if "add" in a:
                files[a["add"]["path"]] = a["add"]
                removed.pop(a["add"]["path"], None)
            if "remove" in a:
                files.pop(a["remove"]["path"], None)
                removed[a["remove"]["path"]] = a["remove"]
            if "txn" in a:
                t = a["txn"]
                if t["appId"] in txn and t["version"] <= txn[t["appId"]]:
                    problems.append("%s v%d: txn %s version %d after %d" % (table, v, t["appId"], t["version"], txn[t["appId"]]))
                txn[t["appId"]] = t["version"]
        adds = [a["add"] for a in actions if "add" in a]
        removes = [a["remove"] for a in actions if "remove" in a]
        if removes and not any(x.get("dataChange", True) for x in adds + removes):
            # A rewrite: the rows of the files added are those removed.
            def records(add):
                return json.loads(add.get("stats") or "{}").get("numRecords")
            before = [records(all_adds.get(r["path"], {})) for r in removes]
            after = [records(a) for a in adds]
            if None in before + after or sum(before) != sum(after):
                problems.append("%s v%d: a rewrite adds %s rows for %s removed" % (table, v, after, before))
            rewrites += 1
        for a in adds:
            all_adds[a["path"]] = a
        if v in checkpoints:
            cp_files, cp_txn, _ = checkpoint_files(lake.get(prefix + "%020d.checkpoint.parquet" % v))
            if {p: f["size"] for p, f in files.items()} != cp_files:
                problems.append("%s: checkpoint %d does not hold the files of version %d" % (table, v, v))
            if cp_txn != txn:
                problems.append("%s: checkpoint %d txn versions %s differ from %s" % (table, v, cp_txn, txn))
    return files, removed, versions, checkpoints, rewrites, start


def tables_in(listing):
    return sorted({n.split("/_delta_log/")[0] for n in listing if "/_delta_log/" in n})


def rows_of(lake, table, files, problems):
    out = []
    for path, add in files.items():
        data = lake.get(table + "/" + path)
        if data is None:
            problems.append("%s: file %s is referenced but missing" % (table, path))
            continue
        if len(data) != add["size"]:
            problems.append("%s: file %s is %d bytes, its add says %d" % (table, path, len(data), add["size"]))
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
        stats = json.loads(add.get("stats") or "{}")
        if stats.get("numRecords") != len(rows):
            problems.append("%s: file %s holds %d rows, its stats say %s" % (table, path, len(rows), stats.get("numRecords")))
        out.extend(rows)
    return out


def identity(row):
    ns = "%s.%s" % (row["db"], row["coll"])
    op = row["operation_type"]
    if op in ("insert", "replace"):
        return (ns, op, seq_of(json.loads(row["full_document"])["seq"]))
    if op == "update":
        return (ns, op, seq_of(json.loads(row["update_description"])["updatedFields"]["seq"]))
    if op in ("delete", "snapshot"):
        return (ns, op, key_of(json.loads(row["document_key"])["_id"]))
    return (ns, op, row["resume_token"])


def view_sql(args):
    """The current-state view: the one `snowflake-sql` prints when the
    test passes it (`--view-sql`, `{table}` where the table goes)."""
    if getattr(args, "view_sql", None):
        return open(args.view_sql).read()
    return CURRENT_STATE


def local_copy(lake, listing, table, into):
    """The table's log and referenced files under `into` (DuckDB reads
    local paths; its Azure extension would need a download here)."""
    for name in listing:
        if name.startswith(table + "/"):
            data = lake.get(name)
            if data is None:
                continue
            path = os.path.join(into, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    return os.path.join(into, table)


def duckdb_connection():
    import duckdb
    import duckdb_extension_delta

    ext = os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "v" + duckdb.__version__, "delta.duckdb_extension")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute("LOAD '%s'" % ext)
    return con


def table_path(args, lake, listing, table, tmp):
    if args.lake_dir:
        return os.path.join(args.lake_dir, table)
    return local_copy(lake, listing, table, tmp)


def verify(args):
    lake = lake_of(args)
    problems = []
    watched = json.load(open(args.watch)) if args.watch else None
    listing = {n: e for n, (e, _) in lake.list().items()}
    expected, maybe = Counter(), Counter()
    for line in open(args.manifest):
        m = json.loads(line)
        key = (m["ns"], m["op"], m["id"] if m["op"] in ("delete", "snapshot") else m["seq"])
        (expected if m["ok"] else maybe)[key] += 1

    seen = Counter()
    last = {}
    counts = {}
    table_of = {}
    con = duckdb_connection()
    tmp = tempfile.mkdtemp()
    total_rows = 0
    for table in tables_in(listing):
        files, removed, versions, checkpoints, rewrites, start = replay_table(lake, listing, table, problems)
        rows = rows_of(lake, table, files, problems)
        total_rows += len(rows)
        vanished = len([n for n in (watched or {}).get("vanished", {}) if n.startswith(table + "/")])
        cleaned = 0
        for name in (watched or {}).get("log_vanished", {}):
            m = LOG_OBJECT.fullmatch(name)
            if m is None or m.group("table") != table:
                continue
            cleaned += 1
            digits = m.group("name")[:20]
            if not digits.isdigit() or int(digits) >= start:
                problems.append("%s (a log object the log still needs) disappeared" % name)
        counts[table] = (len(versions), len(checkpoints), rewrites, vanished, cleaned, len(files), len(rows))
        for r in rows:
            key = identity(r)
            seen[key] += 1
            table_of[key[0]] = table
            doc = key_of(json.loads(r["document_key"])["_id"])
            seq = None if key[1] == "delete" else seq_of(json.loads(r["full_document"])["seq"]) if r["full_document"] else key[2]
            prev = last.get((key[0], doc))
            if prev is None or prev[0] < r["resume_token"]:
                last[(key[0], doc)] = (r["resume_token"], key[1], seq)
        path = table_path(args, lake, listing, table, tmp)
        n = con.execute("SELECT count(*) FROM delta_scan('%s')" % path).fetchone()[0]
        if n != len(rows):
            problems.append("%s: DuckDB's delta_scan reads %d rows, the log replay %d" % (table, n, len(rows)))
        if watched:
            for name, at in watched.get("vanished", {}).items():
                if name.startswith(table + "/"):
                    path_in = name[len(table) + 1:]
                    if path_in in files:
                        problems.append("%s: %s vanished while the table references it" % (table, name))
                    elif path_in in removed and args.retention_secs is not None:
                        gone_after = at - removed[path_in]["deletionTimestamp"] / 1000
                        if gone_after < args.retention_secs - 5:
                            problems.append("%s: %s was deleted %.0f s after its removal, before the retention" % (table, name, gone_after))

    for key, n in expected.items():
        if seen[key] != n:
            problems.append("change %s appears %d times, expected %d" % (key, seen[key], n))
    for key, n in seen.items():
        if key not in expected and not (key in maybe and n <= maybe[key]):
            problems.append("change %s appears %d times but was not made (or is a duplicate)" % (key, n))

    from pymongo import MongoClient

    client = MongoClient(args.mongo_uri, directConnection=True)
    namespaces = sorted({k[0] for k in expected})
    for ns in namespaces:
        db, coll = ns.split(".", 1)
        current = {key_of(d["_id"]): d.get("seq") for d in client[db][coll].find({}, {"seq": 1})}
        lake_state = {i: s for (n, i), (_, op, s) in last.items() if n == ns and op != "delete"}
        if current != lake_state:
            problems.append("%s: the rows replayed differ from MongoDB (e.g. %s)" % (ns, [k for k in current if current[k] != lake_state.get(k)][:5]))
        table = table_of.get(ns)
        if table is None:
            problems.append("%s: no table" % ns)
            continue
        path = table_path(args, lake, listing, table, tmp)
        view = con.execute("SELECT document_key, full_document FROM (%s)" % view_sql(args).format(table="delta_scan('%s')" % path)).fetchall()
        cols = [d[0] for d in con.description]
        view = [dict(zip(cols, r)) for r in view]
        from_view = {key_of(json.loads(r["document_key"])["_id"]): seq_of(json.loads(r["full_document"])["seq"]) if r["full_document"] else None for r in view}
        if len(view) != len(current) or from_view != current:
            problems.append("%s: the current-state view (%d rows) differs from MongoDB (%d documents), e.g. %s" % (ns, len(view), len(current), [k for k in current if current[k] != from_view.get(k)][:5]))
    if watched:
        problems.extend(watched["violations"])
        for name, seen_first in watched["first"].items():
            now = listing.get(name)
            if now is not None and now != seen_first["etag"] and not name.endswith("/_last_checkpoint"):
                problems.append("%s changed after it was first listed" % name)
    shutil.rmtree(tmp, ignore_errors=True)
    print("delta checker: %d tables (%s), %d rows, %d acknowledged changes, %d unacknowledged, %d problems" % (
        len(counts), ", ".join("%s: %d versions, %d checkpoints, %d compactions, %d files vacuumed, %d log files cleaned, %d files, %d rows" % (t, *c) for t, c in counts.items()),
        total_rows, sum(expected.values()), sum(maybe.values()), len(problems)))
    for p in problems[:30]:
        print("  " + p)
    return 1 if problems else 0


def show(args):
    lake = lake_of(args)
    listing = {n: e for n, (e, _) in lake.list().items()}
    con = duckdb_connection()
    tmp = tempfile.mkdtemp()
    for table in tables_in(listing):
        path = table_path(args, lake, listing, table, tmp)
        versions = [n for n in listing if n.startswith(table + "/_delta_log/") and n.endswith(".json")]
        ops = con.execute("SELECT operation_type, count(*) FROM delta_scan('%s') GROUP BY ALL ORDER BY ALL" % path).fetchall()
        current = con.execute("SELECT count(*) FROM (%s)" % view_sql(args).format(table="delta_scan('%s')" % path)).fetchone()[0]
        print("  %s: version %d, rows %s, current documents %d" % (table, len(versions) - 1, ", ".join("%s %d" % o for o in ops), current))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def query(args):
    """Runs --sql (`{table}` where the table goes) over --table in DuckDB
    and prints the rows."""
    lake = lake_of(args)
    listing = {n: e for n, (e, _) in lake.list().items()}
    con = duckdb_connection()
    tmp = tempfile.mkdtemp()
    path = table_path(args, lake, listing, args.table, tmp)
    sql = args.sql.format(table="delta_scan('%s')" % path)
    result = con.execute(sql)
    columns = [d[0] for d in result.description]
    print("  " + " | ".join(columns))
    for row in result.fetchall():
        print("  " + " | ".join("" if v is None else str(v) for v in row))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def files(args):
    """Prints the data files of --table at its newest version (a JSON list
    of paths relative to the table), from this checker's own replay of the
    log, which also checks its versions, txn order and checkpoints; exits 1
    on a problem. A test reads the files itself, so a large table is never
    held here."""
    lake = lake_of(args)
    listing = {n: e for n, (e, _) in lake.list().items()}
    problems = []
    live = replay_table(lake, listing, args.table, problems)[0]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(json.dumps(sorted(live)))
    return 1 if problems else 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["watch", "verify", "show", "query", "files"])
    p.add_argument("--lake-dir")
    p.add_argument("--account-url")
    p.add_argument("--account-key")
    p.add_argument("--container")
    p.add_argument("--stop-file")
    p.add_argument("--out")
    p.add_argument("--manifest")
    p.add_argument("--watch")
    p.add_argument("--mongo-uri")
    p.add_argument("--retention-secs", type=float)
    p.add_argument("--view-sql", help="a file with the current-state query, {table} where the table goes")
    p.add_argument("--table", help="query, files: the table's folder")
    p.add_argument("--sql", help="query: SQL with {table} where the table goes")
    args = p.parse_args()
    if args.command == "watch":
        watch(args)
        return 0
    if args.command == "show":
        return show(args)
    if args.command == "query":
        return query(args)
    if args.command == "files":
        return files(args)
    return verify(args)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: pyarrow 26 aborts in about one exit in five after
    # reading a checkpoint ("terminate called without an active exception",
    # status 134) while the interpreter tears down; everything is written
    # by now, so the teardown is skipped.
    os._exit(code or 0)
