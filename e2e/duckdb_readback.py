#!/usr/bin/env python3
"""Reads a local lake with DuckDB, Hive partitions on, the way a user would,
and prints what it saw as JSON:

  duckdb_readback.py '<root>/<filesystem>/*/*/*/*/*/*/events-*.jsonl*'

  {"by_hour": [[db, coll, year, month, day, hour, rows], ...],
   "ops": {"insert": n, ...},
   "docs": {"<documentKey._id as JSON>": <fullDocument of its insert>}}
"""

import json
import sys

import duckdb


def main():
    files = sys.argv[1]
    con = duckdb.connect()
    source = "read_ndjson_objects('%s', hive_partitioning = true)" % files.replace("'", "''")
    by_hour = con.sql(
        """SELECT json->>'$._meta.ns.db', json->>'$._meta.ns.coll',
                  CAST(year AS INTEGER), CAST(month AS INTEGER), CAST(day AS INTEGER),
                  CAST(hour AS INTEGER), count(*)
           FROM %s GROUP BY ALL ORDER BY ALL""" % source
    ).fetchall()
    ops = dict(
        con.sql("SELECT json->>'$._meta.operationType', count(*) FROM %s GROUP BY 1" % source).fetchall()
    )
    docs = {
        key: json.loads(doc)
        for key, doc in con.sql(
            """SELECT CAST(json->'$.documentKey._id' AS VARCHAR), CAST(json->'$.fullDocument' AS VARCHAR)
               FROM %s WHERE json->>'$._meta.operationType' = 'insert'""" % source
        ).fetchall()
    }
    print(json.dumps({"by_hour": by_hour, "ops": ops, "docs": docs}))


if __name__ == "__main__":
    main()
