// The seed design, ported faithfully so e2e/bench.sh can compare against it.
//
//   node seed.js rolling|per_event <mongo-uri> <start-after-token-hex> <events> <blob-connection-string> <container> <state-file>
//
// rolling:   for each change event (on('change')), derive
//            db/coll/year=/month=/day=/hour= from clusterTime; open the hourly
//            append blob once (create if missing, else read its length);
//            append the event's JSON line at the tracked offset, one request
//            per event, chained per file so appends never race; write the
//            resume token to a local JSON file after every event.
// per_event: one upload per event.
// Exits after <events> events are written.
"use strict";
const fs = require("fs");
const { MongoClient } = require("mongodb");
const { BlobServiceClient } = require("@azure/storage-blob");

const [mode, uri, token, total, conn, containerName, stateFile] = process.argv.slice(2);
const want = Number(total);

function pad(n) { return String(n).padStart(2, "0"); }

async function main() {
  const client = new MongoClient(uri);
  await client.connect();
  const container = BlobServiceClient.fromConnectionString(conn).getContainerClient(containerName);
  await container.createIfNotExists();
  const files = new Map(); // path -> { offset, chain }
  let done = 0;

  const stream = client.db("bench").watch([], {
    fullDocument: "updateLookup",
    startAfter: { _data: token },
  });

  const written = (change) => {
    fs.writeFileSync(stateFile, JSON.stringify({ resumeToken: change._id }));
    done += 1;
    // Exit at once: on('change') has no backpressure, so many more events
    // are already queued behind this one.
    if (done === want) process.exit(0);
  };

  stream.on("change", (change) => {
    const t = new Date(change.clusterTime.getHighBits() * 1000);
    const dir = `${change.ns.db}/${change.ns.coll}/year=${t.getUTCFullYear()}/month=${pad(t.getUTCMonth() + 1)}/day=${pad(t.getUTCDate())}/hour=${pad(t.getUTCHours())}`;
    const line = JSON.stringify(change) + "\n";
    if (mode === "per_event") {
      const blob = container.getBlockBlobClient(`${dir}/${change._id._data}.json`);
      blob.upload(line, Buffer.byteLength(line)).then(() => written(change), fail);
      return;
    }
    const name = `${dir}/events-${t.getUTCFullYear()}${pad(t.getUTCMonth() + 1)}${pad(t.getUTCDate())}-${pad(t.getUTCHours())}.jsonl`;
    let file = files.get(name);
    if (!file) {
      const blob = container.getAppendBlobClient(name);
      file = { blob, offset: 0, chain: null };
      file.chain = blob.createIfNotExists().then(async (r) => {
        if (!r.succeeded) file.offset = (await blob.getProperties()).contentLength;
      });
      files.set(name, file);
    }
    const body = Buffer.from(line);
    file.chain = file.chain.then(async () => {
      await file.blob.appendBlock(body, body.length, { conditions: { appendPosition: file.offset } });
      file.offset += body.length;
      written(change);
    }).catch(fail);
  });
  stream.on("error", fail);
}

function fail(e) {
  console.error(e);
  process.exit(1);
}

main().catch(fail);
