//! One change event to one line of the lake's record format:
//!
//! ```json
//! {"_meta":{"operationType":"update","ns":{"db":"shop","coll":"orders"},
//!           "clusterTime":{"$timestamp":{"t":1723316400,"i":3}},"eventTime":"2024-08-10T19:00:00Z",
//!           "wallTime":...,"txnNumber":null,"lsid":null,"resumeToken":"8266B7..."},
//!  "documentKey":{...},"fullDocument":{...},"updateDescription":{...},
//!  "fullDocumentBeforeChange":null}
//! ```
//!
//! Any other top-level field of the event (`to` of a rename,
//! `operationDescription` of expanded events, ...) follows, so nothing the
//! server sent is lost. Values are transcoded straight from raw BSON.

use std::io::Write as _;

use bson::{raw::RawBsonRef, RawDocument};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::layout::Compression;
use crate::codecs::json::{self, ExtendedJsonMode, MalformedBson};

/// Fields written in fixed places (the Delta sink: columns of their own);
/// everything else is appended.
pub const PLACED: [&str; 11] = [
    "_id",
    "operationType",
    "ns",
    "clusterTime",
    "wallTime",
    "txnNumber",
    "lsid",
    "documentKey",
    "fullDocument",
    "updateDescription",
    "fullDocumentBeforeChange",
];

/// An event's fields in one pass: the [`PLACED`] ones in their slots, the
/// rest in order.
#[allow(clippy::type_complexity)]
pub fn split_fields(
    event: &RawDocument,
) -> Result<
    (
        [Option<RawBsonRef<'_>>; PLACED.len()],
        Vec<(&str, RawBsonRef<'_>)>,
    ),
    MalformedBson,
> {
    let mut placed: [Option<RawBsonRef<'_>>; PLACED.len()] = [None; PLACED.len()];
    let mut extra: Vec<(&str, RawBsonRef<'_>)> = Vec::new();
    for element in event.iter() {
        let (key, value) = element.map_err(|e| MalformedBson(e.to_string()))?;
        match PLACED.iter().position(|p| *p == key) {
            Some(i) => placed[i] = Some(value),
            None => extra.push((key, value)),
        }
    }
    Ok((placed, extra))
}

/// The time that decides an event's partition: clusterTime, then wallTime,
/// then the creation time of an ObjectId `documentKey._id`, then `now`.
pub fn partition_time(event: &RawDocument, now: DateTime<Utc>) -> DateTime<Utc> {
    if let Ok(ts) = event.get_timestamp("clusterTime") {
        if let Some(t) = DateTime::from_timestamp(i64::from(ts.time), 0) {
            return t;
        }
    }
    if let Ok(wall) = event.get_datetime("wallTime") {
        if let Some(t) = DateTime::from_timestamp_millis(wall.timestamp_millis()) {
            return t;
        }
    }
    if let Ok(oid) = event
        .get_document("documentKey")
        .and_then(|k| k.get_object_id("_id"))
    {
        if let Some(t) = DateTime::from_timestamp_millis(oid.timestamp().timestamp_millis()) {
            return t;
        }
    }
    now
}

/// Appends the record for `event` and a newline to `out`. On error `out` is
/// left as it was.
pub fn encode_record(
    event: &RawDocument,
    mode: ExtendedJsonMode,
    partition_time: DateTime<Utc>,
    out: &mut Vec<u8>,
) -> Result<(), MalformedBson> {
    let start = out.len();
    let result = write_record(event, mode, partition_time, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_record(
    event: &RawDocument,
    mode: ExtendedJsonMode,
    partition_time: DateTime<Utc>,
    out: &mut Vec<u8>,
) -> Result<(), MalformedBson> {
    let (placed, extra) = split_fields(event)?;
    let [id, operation_type, ns, cluster_time, wall_time, txn_number, lsid, document_key, full_document, update_description, before] =
        placed;
    let field = |out: &mut Vec<u8>, value: Option<RawBsonRef<'_>>| -> Result<(), MalformedBson> {
        match value {
            Some(v) => json::write_value(v, mode, out),
            None => {
                out.extend_from_slice(b"null");
                Ok(())
            }
        }
    };

    out.extend_from_slice(b"{\"_meta\":{\"operationType\":");
    field(out, operation_type)?;
    out.extend_from_slice(b",\"ns\":");
    field(out, ns)?;
    out.extend_from_slice(b",\"clusterTime\":");
    field(out, cluster_time)?;
    out.extend_from_slice(b",\"eventTime\":\"");
    json::write_rfc3339_millis(partition_time.timestamp_millis(), out);
    out.extend_from_slice(b"\",\"wallTime\":");
    field(out, wall_time)?;
    out.extend_from_slice(b",\"txnNumber\":");
    field(out, txn_number)?;
    out.extend_from_slice(b",\"lsid\":");
    field(out, lsid)?;
    out.extend_from_slice(b",\"resumeToken\":");
    match id
        .and_then(|id| id.as_document())
        .and_then(|id| id.get_str("_data").ok())
    {
        Some(t) => json::write_str(t, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"},\"documentKey\":");
    field(out, document_key)?;
    out.extend_from_slice(b",\"fullDocument\":");
    field(out, full_document)?;
    out.extend_from_slice(b",\"updateDescription\":");
    field(out, update_description)?;
    out.extend_from_slice(b",\"fullDocumentBeforeChange\":");
    field(out, before)?;
    for (key, value) in extra {
        out.push(b',');
        json::write_str(key, out);
        out.push(b':');
        json::write_value(value, mode, out)?;
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// `db`, `coll` of an event; events without a namespace (e.g.
/// `invalidate`) go to `_none`.
pub fn namespace(event: &RawDocument) -> (&str, &str) {
    let ns = event.get_document("ns").ok();
    let part = |k: &str| ns.and_then(|n| n.get_str(k).ok()).unwrap_or("_none");
    (part("db"), part("coll"))
}

/// A batch's body as written: as is, or one gzip member (concatenated
/// members are one valid gzip stream). With gzip the input buffer is
/// handed back for reuse.
pub fn compress(compression: Compression, data: Vec<u8>) -> (Bytes, Option<Vec<u8>>) {
    match compression {
        Compression::None => (Bytes::from(data), None),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 4),
                flate2::Compression::default(),
            );
            gz.write_all(&data).expect("writing to a Vec cannot fail");
            let body = Bytes::from(gz.finish().expect("writing to a Vec cannot fail"));
            (body, Some(data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, RawDocumentBuf, Timestamp};

    fn update_event() -> RawDocumentBuf {
        RawDocumentBuf::from_document(&doc! {
            "_id": { "_data": "8266B7B8B0000000032B022C0100296E5A1004" },
            "operationType": "update",
            "clusterTime": Timestamp { time: 1_723_316_400, increment: 3 },
            "wallTime": bson::DateTime::from_millis(1_723_316_400_123),
            "ns": { "db": "shop", "coll": "orders" },
            "documentKey": { "_id": ObjectId::parse_str("66b7a0f0c2a4e5b1d2c3f4a5").unwrap() },
            "updateDescription": { "updatedFields": { "total": 11 }, "removedFields": [] },
            "fullDocument": { "_id": ObjectId::parse_str("66b7a0f0c2a4e5b1d2c3f4a5").unwrap(), "total": 11 },
            "collectionUUID": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![0; 16] },
        })
        .unwrap()
    }

    #[test]
    fn record_layout() {
        let event = update_event();
        let t = partition_time(&event, Utc::now());
        let mut out = Vec::new();
        encode_record(&event, ExtendedJsonMode::Relaxed, t, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["_meta"]["operationType"], "update");
        assert_eq!(v["_meta"]["ns"]["coll"], "orders");
        assert_eq!(v["_meta"]["clusterTime"]["$timestamp"]["t"], 1_723_316_400);
        assert_eq!(v["_meta"]["eventTime"], "2024-08-10T19:00:00.000Z");
        assert_eq!(
            v["_meta"]["resumeToken"],
            "8266B7B8B0000000032B022C0100296E5A1004"
        );
        assert_eq!(v["_meta"]["txnNumber"], serde_json::Value::Null);
        assert_eq!(v["documentKey"]["_id"]["$oid"], "66b7a0f0c2a4e5b1d2c3f4a5");
        assert_eq!(v["fullDocument"]["total"], 11);
        assert_eq!(v["fullDocumentBeforeChange"], serde_json::Value::Null);
        assert!(
            v.get("collectionUUID").is_some(),
            "unplaced fields are kept"
        );
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[0], "_meta");
    }

    #[test]
    fn partition_time_fallbacks() {
        let now = Utc::now();
        let with_wall = RawDocumentBuf::from_document(&doc! {
            "wallTime": bson::DateTime::from_millis(1_000_000_000_000),
        })
        .unwrap();
        assert_eq!(partition_time(&with_wall, now).timestamp(), 1_000_000_000);
        let oid = ObjectId::parse_str("66b7a0f0c2a4e5b1d2c3f4a5").unwrap();
        let with_oid =
            RawDocumentBuf::from_document(&doc! { "documentKey": { "_id": oid } }).unwrap();
        assert_eq!(partition_time(&with_oid, now).timestamp(), 0x66b7a0f0);
        assert_eq!(partition_time(&RawDocumentBuf::new(), now), now);
    }
}
