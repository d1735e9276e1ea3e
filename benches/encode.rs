//! Encoding throughput of the sink's record encoder (raw BSON change event
//! to one JSON line), per core, for each Extended JSON mode.
//!
//!   cargo bench --bench encode
//!
//! Plain `harness = false` binary: it times a fixed amount of work several
//! times and reports the best run, which is what a noisy 2-core machine can
//! measure repeatably.

use std::time::Instant;

use bson::{doc, oid::ObjectId, Decimal128, RawDocumentBuf, Timestamp};
use chrono::Utc;
use mongo_adls::{codecs::json::ExtendedJsonMode, sinks::adls_partitioned_jsonl::encode};

fn event(filler: usize) -> RawDocumentBuf {
    let id = ObjectId::new();
    RawDocumentBuf::from_document(&doc! {
        "_id": { "_data": "8266B7B8B0000000032B022C0100296E5A1004AB12CD34EF56AB78CD90EF12AB34CD5646645F696400646B07984911F6BDB478F3778B0004" },
        "operationType": "update",
        "clusterTime": Timestamp { time: 1_723_316_400, increment: 3 },
        "wallTime": bson::DateTime::now(),
        "ns": { "db": "shop", "coll": "orders" },
        "documentKey": { "_id": id },
        "updateDescription": { "updatedFields": { "status": "shipped", "total": 12.5 }, "removedFields": [] },
        "fullDocument": {
            "_id": id, "customer": "c-1234", "status": "shipped", "total": "129.99".parse::<Decimal128>().unwrap(),
            "placed_at": bson::DateTime::now(), "qty": 3_i64,
            "items": [ { "sku": "A-1", "qty": 2, "price": 10.5 }, { "sku": "B-7", "qty": 1, "price": 99.0 } ],
            "note": "x".repeat(filler),
        },
    })
    .unwrap()
}

fn main() {
    for (label, filler) in [("~1 KB", 600), ("~16 KB", 16_000)] {
        let ev = event(filler);
        let bson_bytes = ev.as_bytes().len();
        let iterations = (200_000_000 / bson_bytes).max(1000);
        for mode in [
            ExtendedJsonMode::Relaxed,
            ExtendedJsonMode::Canonical,
            ExtendedJsonMode::Simplified,
        ] {
            let mut best = f64::MAX;
            let mut out_bytes = 0;
            let mut out = Vec::with_capacity(8 << 20);
            for _ in 0..5 {
                let start = Instant::now();
                out_bytes = 0;
                for _ in 0..iterations {
                    out.clear();
                    encode::encode_record(&ev, mode, Utc::now(), &mut out).unwrap();
                    out_bytes += out.len();
                }
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!(
                "{label} events, {mode:?}: {:.0} events/s, {:.0} MB/s of BSON in, {:.0} MB/s of JSON out (one core)",
                iterations as f64 / best,
                (iterations * bson_bytes) as f64 / best / 1e6,
                out_bytes as f64 / best / 1e6
            );
        }
    }
}
