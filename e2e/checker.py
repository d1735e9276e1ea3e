#!/usr/bin/env python3
"""Independent checker for the chaos run: reads the lake with the official
azure-storage-blob SDK and MongoDB with pymongo, and shares no code with the
agent.

  checker.py watch  --stop-file F --out W.json [lake options]
      Lists the container every 200 ms until F exists. Records each blob's
      first ETag and size; reports a name that does not match the sealed
      pattern, and (with --immutable) a listed blob whose ETag changed.

  checker.py verify --manifest M.jsonl --watch W.json --mongo-uri U [lake options]
      Every acknowledged change in the load generator's manifest appears
      exactly once, an unacknowledged ("maybe") change at most once, nothing
      else appears; lines in each file are in change-stream order; the last
      change per document in the lake matches MongoDB's current document;
      and the watcher saw no violation.

Lake options: --account-url, --account-key, --container, --pattern (regex a
sealed blob name must match).
"""

import argparse
import gzip
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict

from azure.storage.blob import BlobServiceClient
from pymongo import MongoClient


def container_client(args):
    url = args.account_url.rstrip("/")
    account = url.rsplit("/", 1)[-1]
    conn = (
        "DefaultEndpointsProtocol=http;AccountName={a};AccountKey={k};BlobEndpoint={u};"
    ).format(a=account, k=args.account_key, u=url)
    return BlobServiceClient.from_connection_string(conn).get_container_client(args.container)


def watch(args):
    container = container_client(args)
    pattern = re.compile(args.pattern)
    first = {}
    violations = []
    polls = 0
    while not os.path.exists(args.stop_file):
        started = time.monotonic()
        try:
            blobs = list(container.list_blobs())
        except Exception as e:  # Azurite restarts during the run
            time.sleep(0.5)
            continue
        polls += 1
        for b in blobs:
            if not pattern.fullmatch(b.name):
                violations.append("unexpected name %s" % b.name)
            seen = first.get(b.name)
            if seen is None:
                first[b.name] = {"etag": b.etag, "size": b.size}
            elif args.immutable and (seen["etag"] != b.etag or seen["size"] != b.size):
                violations.append(
                    "%s changed after it was listed: %s/%s -> %s/%s"
                    % (b.name, seen["etag"], seen["size"], b.etag, b.size)
                )
                first[b.name] = {"etag": b.etag, "size": b.size}
        # Listing thousands of blobs costs Azurite too: poll at most half
        # the time, so the agent under test is not starved.
        time.sleep(max(0.2, time.monotonic() - started))
    with open(args.out, "w") as f:
        json.dump({"polls": polls, "first": first, "violations": violations[:100]}, f)


def identity(record):
    """The change a lake line stands for, as the generator recorded it."""
    meta = record["_meta"]
    ns = "%s.%s" % (meta["ns"]["db"], meta["ns"]["coll"])
    op = meta["operationType"]
    if op in ("insert", "replace"):
        return (ns, op, seq_of(record["fullDocument"]["seq"]))
    if op == "update":
        return (ns, op, seq_of(record["updateDescription"]["updatedFields"]["seq"]))
    if op == "delete":
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


def read_lake(container, pattern):
    files = {}
    for b in container.list_blobs():
        if not pattern.fullmatch(b.name):
            continue
        data = container.download_blob(b.name).readall()
        if b.name.endswith(".gz"):
            data = gzip.decompress(data)
        files[b.name] = [json.loads(l) for l in data.decode("utf-8").splitlines() if l]
    return files


def verify(args):
    container = container_client(args)
    pattern = re.compile(args.pattern)
    problems = []

    expected, maybe = Counter(), Counter()
    for line in open(args.manifest):
        m = json.loads(line)
        key = (m["ns"], m["op"], m["id"] if m["op"] == "delete" else m["seq"])
        (expected if m["ok"] else maybe)[key] += 1

    files = read_lake(container, pattern)
    seen = Counter()
    last = {}  # (ns, _id) -> (resumeToken, op, seq)
    lines = 0
    for name, records in files.items():
        tokens = [r["_meta"]["resumeToken"] for r in records]
        if tokens != sorted(tokens):
            problems.append("%s: lines out of change-stream order" % name)
        for r in records:
            lines += 1
            key = identity(r)
            seen[key] += 1
            meta = r["_meta"]
            doc_id = key_of(r["documentKey"]["_id"])
            ns = key[0]
            seq = None if key[1] == "delete" else key[2]
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

    watched = json.load(open(args.watch))
    problems.extend(watched["violations"])
    if watched["polls"] < 10:
        problems.append("the watcher listed the lake only %d times" % watched["polls"])

    print(
        "checker: %d files, %d lines, %d acknowledged changes, %d unacknowledged, %d listings, %d problems"
        % (len(files), lines, sum(expected.values()), sum(maybe.values()), watched["polls"], len(problems))
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
    args = p.parse_args()
    if args.command == "watch":
        watch(args)
        return 0
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
