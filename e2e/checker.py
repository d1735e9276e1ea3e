#!/usr/bin/env python3
"""Independent checker for the chaos run: reads the lake with the official
azure-storage-blob SDK and MongoDB with pymongo, and shares no code with the
agent.

  checker.py watch  --stop-file F --out W.json [--immutable] [lake options]
      Lists the container every 200 ms until F exists, then once more (the
      last listing is taken after F appeared, so it sees the final state).
      Records each blob's first ETag and size. Reports a name that does not
      match the pattern, a blob that disappears from a later listing, and
      (with --immutable) a blob whose ETag or size changed. Without
      --immutable (growing `every_batch` files) it downloads each new
      version (ETag) and reports one that is not a byte-prefix extension of
      the version before it; it keeps only the length and a hash of each.

  checker.py verify --manifest M.jsonl --watch W.json --mongo-uri U [lake options]
      Every acknowledged change in the load generator's manifest appears
      exactly once (a `snapshot` entry: that `_id`'s snapshot record), an unacknowledged ("maybe") change at most once, nothing
      else appears; lines in each file are in change-stream order; the last
      change per document in the lake matches MongoDB's current document;
      every line lies in its own folder (namespace, and the year/month/day/
      hour and file-name time of its window: --window-secs); the final
      listing holds exactly the names the watcher saw, each with the ETag it
      was first seen with (--immutable) or extending the last version the
      watcher saw (growing files); and the watcher saw no violation.

Lake options: --account-url, --account-key, --container, --pattern (regex a
sealed blob name must match).

  checker_selftest.py breaks a lake on purpose in each of these ways and
  checks that watch/verify report it.
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from urllib.parse import unquote

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from pymongo import MongoClient


def container_client(args):
    url = args.account_url.rstrip("/")
    account = url.rsplit("/", 1)[-1]
    conn = (
        "DefaultEndpointsProtocol=http;AccountName={a};AccountKey={k};BlobEndpoint={u};"
    ).format(a=account, k=args.account_key, u=url)
    return BlobServiceClient.from_connection_string(conn).get_container_client(args.container)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def download(container, name):
    """A blob's bytes and the ETag of that version."""
    d = container.download_blob(name)
    return d.readall(), d.properties.etag


def watch(args):
    container = container_client(args)
    pattern = re.compile(args.pattern)
    first = {}
    # Growing files: the last version seen (etag, length, sha256 of it).
    versions = {}
    violations = []
    stats = {"growth_checks": 0}
    reported = set()
    polls = 0
    last_names = {}
    final_listing = None
    stop_seen_at = None

    def violation(text):
        if text not in reported:
            reported.add(text)
            violations.append(text)

    while True:
        # Read the stop file before listing: the listing that follows it
        # is the last one, and it is taken after the agent stopped.
        stopping = os.path.exists(args.stop_file)
        if stopping and stop_seen_at is None:
            stop_seen_at = time.monotonic()
        started = time.monotonic()
        try:
            blobs = list(container.list_blobs())
        except Exception:  # Azurite restarts during the run
            if stopping and time.monotonic() - stop_seen_at > 60:
                violation("no listing after the stop file appeared")
                break
            time.sleep(0.5)
            continue
        polls += 1
        names = {}
        for b in blobs:
            names[b.name] = (b.etag, b.size)
            if not pattern.fullmatch(b.name):
                violation("unexpected name %s" % b.name)
            seen = first.get(b.name)
            if seen is None:
                first[b.name] = {"etag": b.etag, "size": b.size, "poll": polls}
            elif args.immutable and (seen["etag"] != b.etag or seen["size"] != b.size):
                violation(
                    "%s changed after it was listed: %s/%s -> %s/%s"
                    % (b.name, seen["etag"], seen["size"], b.etag, b.size)
                )
            if not args.immutable and versions.get(b.name, (None,))[0] != b.etag:
                check_growth(container, b.name, versions, violation, stats)
        for name in last_names:
            if name not in names:
                violation("%s disappeared after it was listed" % name)
        last_names = names
        if args.progress:
            with open(args.progress + ".tmp", "w") as f:
                f.write(str(polls))
            os.replace(args.progress + ".tmp", args.progress)
        if stopping:
            final_listing = {n: {"etag": e, "size": z} for n, (e, z) in names.items()}
            break
        # Listing thousands of blobs costs Azurite too: poll at most half
        # the time, so the agent under test is not starved.
        time.sleep(max(0.2, time.monotonic() - started))
    versions = {n: {"etag": e, "length": l, "sha256": h} for n, (e, l, h) in versions.items()}
    with open(args.out, "w") as f:
        json.dump(
            {
                "polls": polls,
                "growth_checks": stats["growth_checks"],
                "first": first,
                "final": final_listing,
                "versions": versions,
                "violations": violations[:100],
            },
            f,
        )


def check_growth(container, name, versions, violation, stats):
    """Downloads the current version of a growing file and checks that it
    extends the previous version seen, byte for byte."""
    try:
        data, etag = download(container, name)
    except ResourceNotFoundError:
        violation("%s disappeared after it was listed" % name)
        return
    except Exception:  # Azurite restarting: the next listing tries again
        return
    prev = versions.get(name)
    if prev is not None and prev[0] != etag:
        stats["growth_checks"] += 1
        _, length, digest = prev
        if len(data) < length or sha(data[:length]) != digest:
            violation(
                "%s: a new version (%d bytes) does not extend the previous one (%d bytes)"
                % (name, len(data), length)
            )
    versions[name] = (etag, len(data), sha(data))


def identity(record):
    """The change a lake line stands for, as the generator recorded it."""
    meta = record["_meta"]
    ns = "%s.%s" % (meta["ns"]["db"], meta["ns"]["coll"])
    op = meta["operationType"]
    if op in ("insert", "replace"):
        return (ns, op, seq_of(record["fullDocument"]["seq"]))
    if op == "update":
        return (ns, op, seq_of(record["updateDescription"]["updatedFields"]["seq"]))
    if op in ("delete", "snapshot"):
        # A snapshot record stands for a document (`_id`): each is copied
        # exactly once, however often the copy was interrupted.
        return (ns, op, key_of(record["documentKey"]["_id"]))
    return (ns, op, meta.get("resumeToken"))


def seq_of(v):
    if isinstance(v, dict):  # canonical / relaxed wrappers
        v = v.get("$numberLong", v.get("$numberInt"))
    return int(v)


def key_of(v):
    if isinstance(v, dict):
        v = v.get("$numberLong", v.get("$numberInt", json.dumps(v, sort_keys=True)))
    return str(v)


def read_lake(container, pattern, problems, versions):
    """Every blob's lines, by name; `listing` maps each name to its ETag.
    Names outside the pattern are reported, not read. A growing file seen
    by the watcher must still start with the last version it saw."""
    files, listing = {}, {}
    for b in container.list_blobs():
        listing[b.name] = b.etag
        if not pattern.fullmatch(b.name):
            problems.append("unexpected name %s" % b.name)
            continue
        data, etag = download(container, b.name)
        seen = versions.get(b.name)
        if seen is not None and (len(data) < seen["length"] or sha(data[: seen["length"]]) != seen["sha256"]):
            problems.append(
                "%s: the final version (%d bytes) does not extend the last one the watcher saw (%d bytes)"
                % (b.name, len(data), seen["length"])
            )
        if b.name.endswith(".gz"):
            data = gzip.decompress(data)
        files[b.name] = [json.loads(l) for l in data.decode("utf-8").splitlines() if l]
    return files, listing


def partition_time(meta):
    """The time a line is partitioned by: its cluster time, else its event
    time (the sink's fallbacks), as a UTC datetime."""
    ct = meta.get("clusterTime")
    if isinstance(ct, dict) and "$timestamp" in ct:
        return datetime.fromtimestamp(int(ct["$timestamp"]["t"]), timezone.utc)
    return datetime.fromisoformat(meta["eventTime"].replace("Z", "+00:00"))


FOLDER = re.compile(
    r"(?P<db>[^/]+)/(?P<coll>[^/]+)/year=(?P<y>\d{4})/month=(?P<m>\d\d)/day=(?P<d>\d\d)/hour=(?P<h>\d\d)/(?P<file>[^/]+)"
)
FILE_TIME = re.compile(r"events-(\d{8}-\d{6})(-part-\d+)?\.jsonl(\.gz)?")


def folder_problems(name, records, window_secs):
    """A file lies in the folder of its namespace and of its lines' window:
    db/coll (percent-decoded) are every line's namespace, year/month/day/
    hour are those of each line's window start, and a file name that
    carries a time (events-YYYYMMDD-HHMMSS) names that window start."""
    m = FOLDER.fullmatch(name)
    if m is None:
        return ["%s: not a <db>/<coll>/year=/month=/day=/hour=/<file> path" % name]
    out = []
    for seg in (m["db"], m["coll"]):
        if seg in (".", "..") or "\\" in seg:
            out.append("%s: unsafe path segment %r" % (name, seg))
    stamp = FILE_TIME.fullmatch(m["file"])
    for i, r in enumerate(records):
        meta = r["_meta"]
        ns = meta.get("ns") or {}
        db, coll = ns.get("db") or "_none", ns.get("coll") or "_none"
        if (unquote(m["db"]), unquote(m["coll"])) != (db, coll):
            out.append("%s line %d: namespace %s.%s is not this folder's" % (name, i + 1, db, coll))
        t = partition_time(meta)
        start = datetime.fromtimestamp(int(t.timestamp()) // window_secs * window_secs, timezone.utc)
        folder = (int(m["y"]), int(m["m"]), int(m["d"]), int(m["h"]))
        if folder != (start.year, start.month, start.day, start.hour):
            out.append("%s line %d: time %s is not in this folder's hour" % (name, i + 1, t.isoformat()))
        if stamp and stamp.group(1) != start.strftime("%Y%m%d-%H%M%S"):
            out.append("%s line %d: time %s is not in this file's window" % (name, i + 1, t.isoformat()))
        if len(out) > 5:
            break
    return out


def verify(args):
    container = container_client(args)
    pattern = re.compile(args.pattern)
    problems = []

    expected, maybe = Counter(), Counter()
    for line in open(args.manifest):
        m = json.loads(line)
        key = (m["ns"], m["op"], m["id"] if m["op"] in ("delete", "snapshot") else m["seq"])
        (expected if m["ok"] else maybe)[key] += 1

    watched = json.load(open(args.watch))
    files, listing = read_lake(container, pattern, problems, watched.get("versions", {}))
    seen = Counter()
    last = {}  # (ns, _id) -> (resumeToken, op, seq)
    lines = 0
    for name, records in files.items():
        tokens = [r["_meta"]["resumeToken"] for r in records]
        if tokens != sorted(tokens):
            problems.append("%s: lines out of change-stream order" % name)
        problems.extend(folder_problems(name, records, args.window_secs))
        for r in records:
            lines += 1
            key = identity(r)
            seen[key] += 1
            meta = r["_meta"]
            doc_id = key_of(r["documentKey"]["_id"])
            ns = key[0]
            if key[1] == "delete":
                seq = None
            elif key[1] == "snapshot":
                seq = seq_of(r["fullDocument"]["seq"])
            else:
                seq = key[2]
            prev = last.get((ns, doc_id))
            if prev is None or prev[0] < meta["resumeToken"]:
                last[(ns, doc_id)] = (meta["resumeToken"], key[1], seq)

    for key, n in expected.items():
        if seen[key] != n:
            problems.append("change %s appears %d times, expected %d" % (key, seen[key], n))
    for key, n in seen.items():
        if key in expected:
            continue
        if key in maybe and n <= maybe[key]:
            continue
        problems.append("change %s appears %d times but was not made (or is a duplicate)" % (key, n))

    # The lake, replayed, ends where MongoDB is.
    client = MongoClient(args.mongo_uri, directConnection=True)
    for ns in sorted({k[0] for k in expected}):
        db, coll = ns.split(".", 1)
        current = {key_of(d["_id"]): d.get("seq") for d in client[db][coll].find({}, {"seq": 1})}
        lake_state = {i: s for (n, i), (_, op, s) in last.items() if n == ns and op != "delete"}
        if current != lake_state:
            missing = [k for k in current if current[k] != lake_state.get(k)][:5]
            extra = [k for k in lake_state if k not in current][:5]
            problems.append("%s: lake state differs from MongoDB (e.g. %s / %s)" % (ns, missing, extra))

    # The final listing against the watcher's sightings: nothing it saw is
    # gone, nothing is there that its last listing (taken after the agent
    # stopped) did not see, and an immutable blob still has its first ETag.
    final = watched.get("final")
    if final is None:
        problems.append("the watcher took no listing after the stop file appeared")
    elif set(final) != set(listing):
        problems.append(
            "the watcher's last listing differs from the final one: %s"
            % sorted(set(final) ^ set(listing))[:5]
        )
    for name, seen in watched["first"].items():
        if name not in listing:
            problems.append("%s was listed during the run and is gone" % name)
        elif args.immutable and listing[name] != seen["etag"]:
            problems.append("%s changed after it was first listed: %s -> %s" % (name, seen["etag"], listing[name]))
    for name in listing:
        if name not in watched["first"]:
            problems.append("%s was never seen by the watcher" % name)
    problems.extend(watched["violations"])
    if not args.immutable and watched.get("growth_checks", 0) == 0:
        problems.append("the watcher saw no growing file change: the prefix check was never exercised")
    if watched["polls"] < args.min_polls:
        problems.append("the watcher listed the lake only %d times" % watched["polls"])

    print(
        "checker: %d files, %d lines, %d acknowledged changes, %d unacknowledged, %d listings, %d new versions of growing files checked, %d problems"
        % (
            len(files),
            lines,
            sum(expected.values()),
            sum(maybe.values()),
            watched["polls"],
            watched.get("growth_checks", 0),
            len(problems),
        )
    )
    for p in problems[:30]:
        print("  " + p)
    return 1 if problems else 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["watch", "verify"])
    p.add_argument("--account-url", required=True)
    p.add_argument("--account-key", required=True)
    p.add_argument("--container", required=True)
    p.add_argument("--pattern", required=True)
    p.add_argument("--stop-file")
    p.add_argument("--out")
    p.add_argument("--immutable", action="store_true")
    p.add_argument("--manifest")
    p.add_argument("--watch")
    p.add_argument("--mongo-uri")
    p.add_argument("--window-secs", type=int, default=3600)
    p.add_argument("--min-polls", type=int, default=10)
    p.add_argument("--progress", help="watch: a file that holds the number of listings so far")
    args = p.parse_args()
    if args.command == "watch":
        watch(args)
        return 0
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
