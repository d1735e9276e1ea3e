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

/// An event's top-level fields, read in one pass: the [`PLACED`] ones in
/// their slots, the rest in order. The sink reads them once per event and
/// takes the partition time, the namespace and the record from them (each
/// lookup by name would walk the fields again: about a tenth of the agent's
/// CPU at 1 KB).
pub struct EventFields<'a> {
    pub placed: [Option<RawBsonRef<'a>>; PLACED.len()],
    pub extra: Vec<(&'a str, RawBsonRef<'a>)>,
}

/// Slots of [`PLACED`] read by name here.
const ID: usize = 0;
const OPERATION_TYPE: usize = 1;
const NS: usize = 2;
const CLUSTER_TIME: usize = 3;
const WALL_TIME: usize = 4;
const DOCUMENT_KEY: usize = 7;

impl<'a> EventFields<'a> {
    pub fn read(event: &'a RawDocument) -> Result<Self, MalformedBson> {
        let mut placed: [Option<RawBsonRef<'a>>; PLACED.len()] = [None; PLACED.len()];
        let mut extra: Vec<(&str, RawBsonRef<'_>)> = Vec::new();
        for element in event.iter() {
            let (key, value) = element.map_err(|e| MalformedBson(e.to_string()))?;
            match PLACED.iter().position(|p| *p == key) {
                Some(i) => placed[i] = Some(value),
                None => extra.push((key, value)),
            }
        }
        Ok(Self { placed, extra })
    }

    /// The time that decides the event's partition: clusterTime, then
    /// wallTime, then the creation time of an ObjectId `documentKey._id`,
    /// then `now`.
    pub fn partition_time(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let cluster = self.placed[CLUSTER_TIME]
            .and_then(|v| v.as_timestamp())
            .and_then(|ts| DateTime::from_timestamp(i64::from(ts.time), 0));
        let wall = || {
            self.placed[WALL_TIME]
                .and_then(|v| v.as_datetime())
                .and_then(|wall| DateTime::from_timestamp_millis(wall.timestamp_millis()))
        };
        let key_id = || {
            self.document_key()
                .and_then(|k| k.get_object_id("_id").ok())
                .and_then(|oid| DateTime::from_timestamp_millis(oid.timestamp().timestamp_millis()))
        };
        cluster.or_else(wall).or_else(key_id).unwrap_or(now)
    }

    /// `db`, `coll`; events without a namespace (e.g. `invalidate`) go to
    /// `_none`.
    pub fn namespace(&self) -> (&'a str, &'a str) {
        let ns = self.placed[NS].and_then(|v| v.as_document());
        let part = |k: &str| ns.and_then(|n| n.get_str(k).ok()).unwrap_or("_none");
        (part("db"), part("coll"))
    }

    /// `operationType`, if it is a string.
    pub fn operation_type(&self) -> Option<&'a str> {
        self.placed[OPERATION_TYPE].and_then(|v| v.as_str())
    }

    /// `documentKey`, if it is a document.
    pub fn document_key(&self) -> Option<&'a RawDocument> {
        self.placed[DOCUMENT_KEY].and_then(|v| v.as_document())
    }

    /// The resume token's `_data`, as the record's `resumeToken`.
    fn resume_token(&self) -> Option<&'a str> {
        self.placed[ID]
            .and_then(|id| id.as_document())
            .and_then(|id| id.get_str("_data").ok())
    }

    /// Appends the record and a newline to `out`. On error `out` is left
    /// as it was.
    pub fn encode(
        &self,
        mode: ExtendedJsonMode,
        partition_time: DateTime<Utc>,
        out: &mut Vec<u8>,
    ) -> Result<(), MalformedBson> {
        let start = out.len();
        let result = self.write_record(mode, partition_time, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write_record(
        &self,
        mode: ExtendedJsonMode,
        partition_time: DateTime<Utc>,
        out: &mut Vec<u8>,
    ) -> Result<(), MalformedBson> {
        let [_, operation_type, ns, cluster_time, wall_time, txn_number, lsid, document_key, full_document, update_description, before] =
            self.placed;
        let field =
            |out: &mut Vec<u8>, value: Option<RawBsonRef<'_>>| -> Result<(), MalformedBson> {
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
        match self.resume_token() {
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
        for (key, value) in &self.extra {
            out.push(b',');
            json::write_str(key, out);
            out.push(b':');
            json::write_value(*value, mode, out)?;
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// [`EventFields::partition_time`] of an event read by name: for one whose
/// fields cannot all be read (malformed), as far as they can.
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
    EventFields::read(event)?.encode(mode, partition_time, out)
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
        let fields = EventFields::read(&event).unwrap();
        let t = fields.partition_time(Utc::now());
        assert_eq!(fields.namespace(), ("shop", "orders"));
        let mut out = Vec::new();
        fields
            .encode(ExtendedJsonMode::Relaxed, t, &mut out)
            .unwrap();
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
        // Read once (the sink's way) and by name (a malformed event's) agree.
        let now = Utc::now();
        let both = |event: &RawDocumentBuf| {
            let by_name = partition_time(event, now);
            assert_eq!(
                EventFields::read(event).unwrap().partition_time(now),
                by_name
            );
            by_name
        };
        assert_eq!(both(&update_event()).timestamp(), 1_723_316_400);
        let with_wall = RawDocumentBuf::from_document(&doc! {
            "wallTime": bson::DateTime::from_millis(1_000_000_000_000),
        })
        .unwrap();
        assert_eq!(both(&with_wall).timestamp(), 1_000_000_000);
        let oid = ObjectId::parse_str("66b7a0f0c2a4e5b1d2c3f4a5").unwrap();
        let with_oid =
            RawDocumentBuf::from_document(&doc! { "documentKey": { "_id": oid } }).unwrap();
        assert_eq!(both(&with_oid).timestamp(), 0x66b7a0f0);
        assert_eq!(both(&RawDocumentBuf::new()), now);
        assert_eq!(
            EventFields::read(&RawDocumentBuf::new())
                .unwrap()
                .namespace(),
            ("_none", "_none")
        );
    }
}
