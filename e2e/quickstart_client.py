#!/usr/bin/env python3
"""Helper for e2e/quickstart.sh (Python, so the quick start compiles only
the agent): drives a small workload into MongoDB and prints what landed in
the lake.

  quickstart_client.py workload <mongo-uri>
  quickstart_client.py show <account-url> <filesystem> <shared-key>
      The JSON Lines files: names, events, bytes, and the first records.
  quickstart_client.py count <account-url> <filesystem> <shared-key>
      Events in the JSON Lines files.
  quickstart_client.py rows <account-url> <filesystem> <shared-key>
      Rows the Delta tables' commits appended.
"""

import datetime
import json
import sys
from decimal import Decimal

from azure.storage.blob import BlobServiceClient
from bson import Decimal128, ObjectId
from pymongo import MongoClient


def workload(uri):
    client = MongoClient(uri)
    orders, customers = client.shop.orders, client.shop.customers
    leads = client.crm.leads
    ids = []
    for i in range(20):
        oid = ObjectId()
        ids.append(oid)
        orders.insert_one({
            "_id": oid, "order_no": i, "total": Decimal128(Decimal("%d.99" % (10 + i))),
            "placed_at": datetime.datetime.now(datetime.timezone.utc), "items": [{"sku": "A-1", "qty": 2}],
        })
        customers.insert_one({"_id": i, "name": "customer %d" % i})
        leads.insert_one({"source": "web", "score": i})
    for oid in ids[:5]:
        orders.update_one({"_id": oid}, {"$set": {"status": "shipped"}})
    orders.replace_one({"_id": ids[5]}, {"order_no": 5, "status": "rewritten"})
    orders.delete_one({"_id": ids[6]})
    customers.delete_many({"_id": {"$gte": 18}})
    print("workload: 60 inserts, 5 updates, 1 replace, 3 deletes")


def container(account_url, filesystem, key):
    account = account_url.rstrip("/").rsplit("/", 1)[-1]
    conn = "DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;" % (account, key, account_url)
    return BlobServiceClient.from_connection_string(conn).get_container_client(filesystem)


def blobs(account_url, filesystem, key):
    c = container(account_url, filesystem, key)
    try:
        return [(b.name, c.download_blob(b.name).readall()) for b in c.list_blobs()]
    except Exception:  # no filesystem yet
        return []


def show(account_url, filesystem, key):
    files = sorted(blobs(account_url, filesystem, key))
    print("lake %s/%s:" % (account_url, filesystem))
    total = 0
    for name, body in files:
        lines = body.count(b"\n")
        total += lines
        print("  %s  (%d events, %d bytes)" % (name, lines, len(body)))
    print("%d files, %d events" % (len(files), total))
    first = next(((n, b) for n, b in files if "orders" in n), None)
    if first:
        print("\nfirst records of %s:" % first[0])
        for line in first[1].decode().splitlines()[:2]:
            print(line)


def count(account_url, filesystem, key):
    print(sum(body.count(b"\n") for _, body in blobs(account_url, filesystem, key)))


def rows(account_url, filesystem, key):
    total = 0
    for name, body in blobs(account_url, filesystem, key):
        if "/_delta_log/" in name and name.endswith(".json"):
            for line in body.decode().splitlines():
                info = json.loads(line).get("commitInfo") or {}
                if info.get("operation") == "STREAMING UPDATE":
                    total += int(info["operationMetrics"]["numOutputRows"])
    print(total)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"workload": workload, "show": show, "count": count, "rows": rows}[command](*args)
