#!/usr/bin/env python3
"""Proves that e2e/checker.py can fail: builds small lakes in Azurite, each
clean or broken in one way, runs the checker's `watch` and `verify` on them
as the chaos run does, and checks that each clean lake passes and each
broken one is reported with the expected problem.

  checker_selftest.py --account-url U --account-key K --mongo-uri M

Run by `tests/chaos.rs::checker_catches_broken_lakes` (seconds, not
minutes), which starts its own Azurite and mongod.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

from azure.storage.blob import BlobServiceClient
from pymongo import MongoClient

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKER = os.path.join(HERE, "checker.py")
PATTERN = r"[^/]+/[^/]+/year=\d{4}/month=\d\d/day=\d\d/hour=\d\d/events-\d{8}-\d{6}(-part-\d{4})?\.jsonl(\.gz)?"
T0 = 1723316400  # 2024-08-10T19:00:00Z
FOLDER = "st/orders/year=2024/month=08/day=10/hour=19/"
A = FOLDER + "events-20240810-190000.jsonl"  # seq 1-3, t0 .. t0+2
B = FOLDER + "events-20240810-190004.jsonl"  # seq 4-6, t0+4 .. t0+6
WINDOW = 4


def line(seq, t=None, coll="orders"):
    if t is None:  # seq 1-3 in the window of A, 4-6 in that of B
        t = T0 + seq - 1 if seq <= 3 else T0 + seq
    return json.dumps(
        {
            "_meta": {
                "operationType": "insert",
                "ns": {"db": "st", "coll": coll},
                "clusterTime": {"$timestamp": {"t": t, "i": 1}},
                "resumeToken": "82%08d" % seq,
            },
            "documentKey": {"_id": seq},
            "fullDocument": {"_id": seq, "seq": seq},
        }
    ) + "\n"


def lines(*seqs):
    return "".join(line(s) for s in seqs).encode()


class Case:
    def __init__(self, env, name, immutable=True):
        self.env, self.name, self.immutable = env, name, immutable
        self.dir = tempfile.mkdtemp(prefix="selftest-")
        self.container = env.service.get_container_client(name)
        self.container.create_container()
        self.watcher = None

    def lake_args(self):
        e = self.env
        return [
            "--account-url", e.args.account_url, "--account-key", e.args.account_key,
            "--container", self.name, "--pattern", PATTERN,
        ]

    def put(self, name, data):
        self.container.upload_blob(name, data, overwrite=True)

    def delete(self, name):
        self.container.delete_blob(name)

    def polls(self):
        try:
            return int(open(os.path.join(self.dir, "progress")).read())
        except (OSError, ValueError):
            return 0

    def settle(self):
        """Waits until the watcher has listed the lake twice more."""
        target = self.polls() + 2
        deadline = time.monotonic() + 30
        while self.polls() < target:
            assert self.watcher.poll() is None, "watcher exited"
            assert time.monotonic() < deadline, "watcher made no progress"
            time.sleep(0.05)

    def watch(self):
        args = [sys.executable, CHECKER, "watch"] + self.lake_args() + [
            "--stop-file", os.path.join(self.dir, "stop"),
            "--out", os.path.join(self.dir, "watch.json"),
            "--progress", os.path.join(self.dir, "progress"),
        ]
        if self.immutable:
            args.append("--immutable")
        self.watcher = subprocess.Popen(args)
        self.settle()

    def stop(self):
        open(os.path.join(self.dir, "stop"), "w").close()
        assert self.watcher.wait(60) == 0, "watcher failed"

    def verify(self, manifest=range(1, 7), watch_edit=None):
        with open(os.path.join(self.dir, "manifest.jsonl"), "w") as f:
            for s in manifest:
                f.write(json.dumps({"ns": "st.orders", "op": "insert", "seq": s, "id": str(s), "ok": True}) + "\n")
        watch_file = os.path.join(self.dir, "watch.json")
        if watch_edit:
            w = json.load(open(watch_file))
            watch_edit(w)
            json.dump(w, open(watch_file, "w"))
        args = [sys.executable, CHECKER, "verify"] + self.lake_args() + [
            "--manifest", os.path.join(self.dir, "manifest.jsonl"),
            "--watch", watch_file, "--mongo-uri", self.env.args.mongo_uri,
            "--window-secs", str(WINDOW), "--min-polls", "1",
        ]
        if self.immutable:
            args.append("--immutable")
        out = subprocess.run(args, capture_output=True, text=True)
        return out.returncode, out.stdout + out.stderr


class Env:
    def __init__(self, args):
        self.args = args
        url = args.account_url.rstrip("/")
        conn = "DefaultEndpointsProtocol=http;AccountName={a};AccountKey={k};BlobEndpoint={u};".format(
            a=url.rsplit("/", 1)[-1], k=args.account_key, u=url
        )
        self.service = BlobServiceClient.from_connection_string(conn)
        coll = MongoClient(args.mongo_uri, directConnection=True)["st"]["orders"]
        coll.delete_many({})
        coll.insert_many([{"_id": s, "seq": s} for s in range(1, 7)])
        self.failures = 0
        self.n = 0

    def case(self, title, expect, build, immutable=True, **verify):
        """Runs `build(case)`, then verify; `expect` is None for a clean
        lake, else a text the report must contain."""
        self.n += 1
        c = Case(self, "selftest%02d" % self.n, immutable)
        build(c)
        if c.watcher is None:  # a lake built before the run: one listing
            open(os.path.join(c.dir, "stop"), "w").close()
            args = [sys.executable, CHECKER, "watch"] + c.lake_args() + [
                "--stop-file", os.path.join(c.dir, "stop"),
                "--out", os.path.join(c.dir, "watch.json"),
            ] + (["--immutable"] if immutable else [])
            subprocess.run(args, check=True)
        code, report = c.verify(**verify)
        if expect is None:
            ok = code == 0
        else:
            ok = code != 0 and expect in report
        self.failures += 0 if ok else 1
        print("%s %s: %s" % ("ok  " if ok else "FAIL", title, "passes" if code == 0 else "reported"))
        for l in report.strip().splitlines():
            print("       " + l)
        self.service.delete_container(c.name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--account-url", required=True)
    p.add_argument("--account-key", required=True)
    p.add_argument("--mongo-uri", required=True)
    env = Env(p.parse_args())

    # Sealed files (immutable).
    def clean(c):
        c.watch()
        c.put(A, lines(1, 2, 3))
        c.settle()
        c.put(B, lines(4, 5, 6))
        c.stop()

    env.case("clean sealed lake", None, clean)

    def vanished_for_part(c):
        c.watch()
        c.put(A, lines(1, 2, 3))
        c.put(B, lines(4, 5, 6))
        c.settle()
        c.delete(B)
        c.put(B.replace(".jsonl", "-part-0001.jsonl"), lines(4, 5, 6))
        c.stop()

    env.case("sealed blob replaced by a -part file", "disappeared after it was listed", vanished_for_part)

    def vanished_and_back(c):
        c.watch()
        c.put(A, lines(1, 2, 3))
        c.put(B, lines(4, 5, 6))
        c.settle()
        c.delete(B)
        c.settle()
        c.put(B, lines(4, 5, 6))
        c.stop()

    env.case("sealed blob deleted and written again", "disappeared after it was listed", vanished_and_back)

    def gone_at_the_end(c):
        c.watch()
        c.put(A, lines(1, 2, 3))
        c.put(B, lines(4, 5, 6))
        c.stop()
        c.delete(B)

    env.case(
        "sealed blob gone after the last listing",
        "was listed during the run and is gone",
        gone_at_the_end,
        manifest=range(1, 4),
    )

    def rewritten(c):
        c.watch()
        c.put(A, lines(1, 2, 3))
        c.put(B, lines(4, 5, 6))
        c.settle()
        c.put(B, lines(4, 5, 6))  # same bytes, new version
        c.stop()

    env.case("sealed blob rewritten", "changed after it was listed", rewritten)

    def rewritten_after_the_run(c):
        c.watch()
        c.put(A, lines(1, 2, 3))
        c.put(B, lines(4, 5, 6))
        c.stop()
        c.put(B, lines(4, 5, 6))

    env.case("sealed blob rewritten after the last listing", "changed after it was first listed", rewritten_after_the_run)

    def appeared_after_the_run(c):
        c.watch()
        c.put(A, lines(1, 2, 3))
        c.stop()
        c.put(B, lines(4, 5, 6))

    env.case("blob the watcher never saw", "was never seen by the watcher", appeared_after_the_run)

    def stray_name(c):
        c.put(A, lines(1, 2, 3))
        c.put(B, lines(4, 5, 6))
        c.put(FOLDER + "events-20240810-190000.jsonl.tmp", lines(1))

    env.case("name outside the pattern", "unexpected name", stray_name)

    env.case(
        "watch file without a final listing",
        "no listing after the stop file appeared",
        clean,
        watch_edit=lambda w: w.update(final=None),
    )

    # Folders.
    def wrong_namespace(c):
        c.put(A, lines(1, 2, 3))
        c.put(B, (line(4) + line(5) + line(6, coll="users")).encode())

    env.case("line of another namespace", "is not this folder's", wrong_namespace)

    def all_in_one_file(c):
        c.put(A, lines(1, 2, 3, 4, 5, 6))

    env.case("lines of two windows in one file", "is not in this file's window", all_in_one_file)

    def wrong_hour(c):
        c.put(A, lines(1, 2, 3))
        c.put(B, lines(4, 5) + line(6, t=T0 + 3600 + 5).encode())

    env.case("line of another hour", "is not in this folder's hour", wrong_hour)

    # Growing files (every_batch).
    def growing(name, versions, after_run=None):
        """Commits `versions` of file `name` one after the other while the
        watcher runs, then `after_run` (if any) once it has stopped."""

        def build(c):
            c.watch()
            for v in versions:
                c.put(name, v)
                c.settle()
            c.put(B, lines(4, 5, 6))
            c.stop()
            if after_run is not None:
                c.put(name, after_run)

        return build

    gz = gzip.compress
    env.case(
        "growing gzip file, each version extends the last",
        None,
        growing(A + ".gz", [gz(lines(1)), gz(lines(1)) + gz(lines(2)), gz(lines(1)) + gz(lines(2)) + gz(lines(3))]),
        immutable=False,
    )
    env.case(
        "growing file whose earlier bytes change",
        "does not extend the previous one",
        growing(A, [lines(1, 2), lines(2, 1, 3), lines(1, 2, 3)]),
        immutable=False,
    )
    env.case(
        "growing file rewritten after the last listing",
        "does not extend the last one the watcher saw",
        growing(A, [lines(1, 2, 3)], after_run=lines(1, 2, 3).replace(b'{"_meta"', b'{ "_meta"', 1)),
        immutable=False,
    )

    print("checker self-test: %d cases, %d failed" % (env.n, env.failures))
    return 1 if env.failures else 0


if __name__ == "__main__":
    sys.exit(main())
