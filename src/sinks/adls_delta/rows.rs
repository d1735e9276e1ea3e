//! One change event to one row of the table (`schema::COLUMNS`), built
//! into Arrow arrays a batch of rows at a time. Values are read straight
//! from the event's raw BSON; the document parts are transcoded once, to
//! Extended JSON strings in the configured mode.

use std::sync::Arc;

use arrow_array::{
    builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder},
    ArrayRef, RecordBatch,
};
use bson::raw::RawBsonRef;
use chrono::{DateTime, Utc};

use super::schema::file_schema;
use crate::{
    codecs::json::{self, ExtendedJsonMode, MalformedBson},
    // Top-level fields with a column of their own; the rest go, as one
    // JSON object, into `extra`.
    sinks::adls_partitioned_jsonl::encode::EventFields,
};

/// The smallest and largest value of a statistics column in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinMax {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub nulls: u64,
}

impl MinMax {
    fn add(&mut self, value: Option<i64>) {
        match value {
            Some(v) => {
                self.min = Some(self.min.map_or(v, |m| m.min(v)));
                self.max = Some(self.max.map_or(v, |m| m.max(v)));
            }
            None => self.nulls += 1,
        }
    }

    /// The statistics of two files together.
    pub fn merge(&mut self, other: &MinMax) {
        for v in [other.min, other.max].into_iter().flatten() {
            self.add(Some(v));
        }
        self.nulls += other.nulls;
    }
}

/// Rows being built.
pub struct Rows {
    mode: ExtendedJsonMode,
    operation_type: StringBuilder,
    db: StringBuilder,
    coll: StringBuilder,
    cluster_time: TimestampMicrosecondBuilder,
    cluster_time_increment: Int64Builder,
    wall_time: TimestampMicrosecondBuilder,
    event_time: TimestampMicrosecondBuilder,
    txn_number: Int64Builder,
    lsid: StringBuilder,
    resume_token: StringBuilder,
    document_key: StringBuilder,
    full_document: StringBuilder,
    update_description: StringBuilder,
    before: StringBuilder,
    extra: StringBuilder,
    /// Rows since the last `finish`.
    len: usize,
    /// Bytes of string data since the last `finish` (what the batch holds).
    bytes: usize,
    /// Scratch space for one row's JSON parts.
    scratch: Vec<u8>,
    /// Statistics of `cluster_time` and `event_time`, in microseconds,
    /// since the last `take_stats`.
    pub stats: [MinMax; 2],
}

// Builders start small and grow: a table that gets a few events keeps a
// few hundred bytes, not the 1,024 rows Arrow's defaults reserve (about
// 90 KB a table, 90 MB with a thousand active collections).
const ROWS: usize = 16;

fn timestamp() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(ROWS).with_timezone("UTC")
}

fn strings() -> StringBuilder {
    StringBuilder::with_capacity(ROWS, ROWS * 16)
}

fn longs() -> Int64Builder {
    Int64Builder::with_capacity(ROWS)
}

impl Rows {
    pub fn new(mode: ExtendedJsonMode) -> Self {
        Self {
            mode,
            operation_type: strings(),
            db: strings(),
            coll: strings(),
            cluster_time: timestamp(),
            cluster_time_increment: longs(),
            wall_time: timestamp(),
            event_time: timestamp(),
            txn_number: longs(),
            lsid: strings(),
            resume_token: strings(),
            document_key: strings(),
            full_document: strings(),
            update_description: strings(),
            before: strings(),
            extra: strings(),
            len: 0,
            bytes: 0,
            scratch: Vec::new(),
            stats: [MinMax::default(); 2],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// About how much memory the rows since the last `finish` hold.
    pub fn bytes(&self) -> usize {
        self.bytes + self.len * 64
    }

    /// Adds the row of an event (its fields, read once by the sink),
    /// whose partition time is `event_time`. On error nothing is added.
    pub fn push(
        &mut self,
        fields: &EventFields<'_>,
        event_time: DateTime<Utc>,
    ) -> Result<(), MalformedBson> {
        let EventFields { placed, extra } = fields;
        let [id, operation_type, ns, cluster_time, wall_time, txn_number, lsid, document_key, full_document, update_description, before] =
            *placed;

        // Every JSON part into the scratch buffer first, so a malformed
        // value leaves no half-added row.
        let parts = self.write_parts(
            [
                lsid,
                document_key,
                full_document,
                update_description,
                before,
            ],
            extra,
        )?;
        // The JSON writer only writes UTF-8 (it escapes what is not).
        let text = std::str::from_utf8(&self.scratch).map_err(|e| MalformedBson(e.to_string()))?;

        self.operation_type
            .append_value(operation_type.and_then(|v| v.as_str()).unwrap_or("unknown"));
        let ns = ns.and_then(|ns| ns.as_document());
        self.db
            .append_option(ns.and_then(|ns| ns.get_str("db").ok()));
        self.coll
            .append_option(ns.and_then(|ns| ns.get_str("coll").ok()));
        let ts = cluster_time.and_then(|t| t.as_timestamp());
        let cluster_micros = ts.map(|t| i64::from(t.time) * 1_000_000);
        self.cluster_time.append_option(cluster_micros);
        self.cluster_time_increment
            .append_option(ts.map(|t| i64::from(t.increment)));
        self.wall_time.append_option(
            wall_time
                .and_then(|w| w.as_datetime())
                .map(|d| d.timestamp_millis().saturating_mul(1000)),
        );
        let event_micros = event_time.timestamp_micros();
        self.event_time.append_value(event_micros);
        self.txn_number
            .append_option(txn_number.and_then(|n| match n {
                RawBsonRef::Int64(v) => Some(v),
                RawBsonRef::Int32(v) => Some(i64::from(v)),
                _ => None,
            }));
        self.resume_token.append_option(
            id.and_then(|id| id.as_document())
                .and_then(|id| id.get_str("_data").ok()),
        );
        let builders = [
            &mut self.lsid,
            &mut self.document_key,
            &mut self.full_document,
            &mut self.update_description,
            &mut self.before,
            &mut self.extra,
        ];
        for (builder, (start, end, present)) in builders.into_iter().zip(parts) {
            if present {
                builder.append_value(&text[start..end]);
            } else {
                builder.append_null();
            }
        }
        self.stats[0].add(cluster_micros);
        self.stats[1].add(Some(event_micros));
        self.len += 1;
        self.bytes += self.scratch.len();
        Ok(())
    }

    /// Writes the JSON columns' values (`extra` as one object) into the
    /// scratch buffer: each one's range, and whether it is present.
    fn write_parts(
        &mut self,
        values: [Option<RawBsonRef<'_>>; 5],
        extra: &[(&str, RawBsonRef<'_>)],
    ) -> Result<[(usize, usize, bool); 6], MalformedBson> {
        self.scratch.clear();
        let mut parts = [(0usize, 0usize, false); 6];
        for (i, value) in values.into_iter().enumerate() {
            let start = self.scratch.len();
            let present = match value {
                Some(RawBsonRef::Null) | None => false,
                Some(v) => {
                    json::write_value(v, self.mode, &mut self.scratch)?;
                    true
                }
            };
            parts[i] = (start, self.scratch.len(), present);
        }
        let start = self.scratch.len();
        if !extra.is_empty() {
            self.scratch.push(b'{');
            for (n, (key, value)) in extra.iter().enumerate() {
                if n > 0 {
                    self.scratch.push(b',');
                }
                json::write_str(key, &mut self.scratch);
                self.scratch.push(b':');
                json::write_value(*value, self.mode, &mut self.scratch)?;
            }
            self.scratch.push(b'}');
        }
        parts[5] = (start, self.scratch.len(), !extra.is_empty());
        Ok(parts)
    }

    /// The rows since the last call, as one batch.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.operation_type.finish()),
            Arc::new(self.db.finish()),
            Arc::new(self.coll.finish()),
            Arc::new(self.cluster_time.finish()),
            Arc::new(self.cluster_time_increment.finish()),
            Arc::new(self.wall_time.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.txn_number.finish()),
            Arc::new(self.lsid.finish()),
            Arc::new(self.resume_token.finish()),
            Arc::new(self.document_key.finish()),
            Arc::new(self.full_document.finish()),
            Arc::new(self.update_description.finish()),
            Arc::new(self.before.finish()),
            Arc::new(self.extra.finish()),
        ];
        self.len = 0;
        self.bytes = 0;
        RecordBatch::try_new(file_schema(), columns).expect("the columns match the schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{cast::AsArray, types::TimestampMicrosecondType, Array};
    use bson::{doc, oid::ObjectId, RawDocumentBuf, Timestamp};

    #[test]
    fn an_update_becomes_one_row() {
        let event = RawDocumentBuf::from_document(&doc! {
            "_id": { "_data": "8266B7B8B0000000032B022C0100296E5A1004" },
            "operationType": "update",
            "clusterTime": Timestamp { time: 1_723_316_400, increment: 3 },
            "wallTime": bson::DateTime::from_millis(1_723_316_400_123),
            "ns": { "db": "shop", "coll": "orders" },
            "documentKey": { "_id": ObjectId::parse_str("66b7a0f0c2a4e5b1d2c3f4a5").unwrap() },
            "updateDescription": { "updatedFields": { "total": 11 }, "removedFields": [] },
            "fullDocument": { "total": 11_i64 },
            "fullDocumentBeforeChange": null,
            "collectionUUID": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![0; 16] },
        })
        .unwrap();
        let mut rows = Rows::new(ExtendedJsonMode::Relaxed);
        let t = DateTime::from_timestamp(1_723_316_400, 0).unwrap();
        rows.push(&EventFields::read(&event).unwrap(), t).unwrap();
        let empty = bson::RawDocument::from_bytes(&[5, 0, 0, 0, 0]).unwrap();
        assert!(rows.push(&EventFields::read(empty).unwrap(), t).is_ok());
        let batch = rows.finish();
        assert_eq!(batch.num_rows(), 2);
        let s = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        assert_eq!(s("operation_type").value(0), "update");
        assert_eq!(s("operation_type").value(1), "unknown");
        assert_eq!(s("db").value(0), "shop");
        assert_eq!(
            s("document_key").value(0),
            r#"{"_id":{"$oid":"66b7a0f0c2a4e5b1d2c3f4a5"}}"#
        );
        assert_eq!(s("full_document").value(0), r#"{"total":11}"#);
        assert!(s("full_document_before_change").is_null(0));
        assert!(s("extra")
            .value(0)
            .starts_with(r#"{"collectionUUID":{"$binary""#));
        assert_eq!(
            s("resume_token").value(0),
            "8266B7B8B0000000032B022C0100296E5A1004"
        );
        let ts = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        assert_eq!(ts("cluster_time").value(0), 1_723_316_400_000_000);
        assert_eq!(ts("wall_time").value(0), 1_723_316_400_123_000);
        assert!(ts("cluster_time").is_null(1));
        assert_eq!(rows.stats[0].min, Some(1_723_316_400_000_000));
        assert_eq!(rows.stats[0].nulls, 1);
    }
}
