//! Snapshot records: documents wrapped as change-event-shaped records with
//! their positions, then run through the user's `pipeline`.

use std::{ops::ControlFlow, sync::Arc};

use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;

use super::{position::push_id_key, split_namespace, SnapshotEnd};
use crate::sources::mongodb_change_stream::{
    errors, stream::ChangeStreamSource, watch::event_token,
};

/// Bytes of snapshot records per `$documents` request when a `pipeline` is
/// applied (the command must stay under 16 MB).
const PIPELINE_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Turns documents into snapshot records. Cheap to clone, so the chunk
/// readers of an incremental snapshot build their records on their own
/// tasks, beside the task that sends them.
#[derive(Clone)]
pub(in crate::sources::mongodb_change_stream::stream) struct RecordMaker {
    client: Client,
    pipeline: Arc<[Document]>,
}

impl ChangeStreamSource {
    pub(in crate::sources::mongodb_change_stream::stream) fn record_maker(&self) -> RecordMaker {
        RecordMaker {
            client: self.client.clone(),
            pipeline: self.settings.pipeline.clone().into(),
        }
    }

    /// A chunk of `ns` as snapshot records, through the user's `pipeline`.
    /// (Not given the `SnapshotRun`: a shared reference to it, held across
    /// an await, would not be `Send`.)
    pub(in crate::sources::mongodb_change_stream::stream) async fn chunk_records(
        &self,
        ns: &str,
        prefix: &str,
        t0: bson::Timestamp,
        docs: Vec<RawDocumentBuf>,
        last_key: &mut Option<String>,
    ) -> ControlFlow<SnapshotEnd, Vec<Record>> {
        let message = match self
            .record_maker()
            .make(ns, prefix, t0, docs, last_key)
            .await
        {
            Ok(records) => return ControlFlow::Continue(records),
            Err(MakeError::Unorderable(message)) => message,
            Err(MakeError::Pipeline(e)) => format!(
                "`pipeline` on snapshot records of {ns} failed: {}",
                errors::describe(&e)
            ),
        };
        self.error("snapshot_failed", &message);
        ControlFlow::Break(SnapshotEnd::Failed)
    }
}

/// A snapshot record with what its sender needs of it.
pub(in crate::sources::mongodb_change_stream::stream) struct Record {
    pub raw: RawDocumentBuf,
    /// The document's `_id`.
    pub id: Bson,
    /// Its position (`_id._data` of the record).
    pub position: String,
}

/// Why documents could not be made into records.
pub(in crate::sources::mongodb_change_stream::stream) enum MakeError {
    /// The documents cannot be copied exactly once (an `_id` that cannot
    /// be ordered, a document without one): a sentence for the log.
    Unorderable(String),
    /// The server failed running the `pipeline` over them.
    Pipeline(mongodb::error::Error),
}

impl RecordMaker {
    /// Documents of `ns` as records at positions `prefix`, `00`, the
    /// `_id`'s key, through the user's `pipeline`; each with its `_id`.
    pub(in crate::sources::mongodb_change_stream::stream) async fn make(
        &self,
        ns: &str,
        prefix: &str,
        t0: bson::Timestamp,
        docs: Vec<RawDocumentBuf>,
        last_key: &mut Option<String>,
    ) -> Result<Vec<Record>, MakeError> {
        let (db, coll) = split_namespace(ns);
        let records = Self::snapshot_records(db, coll, prefix, t0, docs, last_key)
            .map_err(MakeError::Unorderable)?;
        self.apply_pipeline(db, records)
            .await
            .map_err(MakeError::Pipeline)
    }

    /// Wraps documents as change-event-shaped snapshot records.
    fn snapshot_records(
        db: &str,
        coll: &str,
        prefix: &str,
        t0: bson::Timestamp,
        docs: Vec<RawDocumentBuf>,
        last_key: &mut Option<String>,
    ) -> Result<Vec<Record>, String> {
        let now = bson::DateTime::now();
        docs.iter()
            .map(|doc| Self::record((db, coll), (prefix, t0, now), doc, last_key))
            .collect()
    }

    /// One document as a snapshot record (before the `pipeline`, which
    /// [`RecordMaker::finish`] applies): made straight from a cursor's
    /// reply, so the document is copied once, into the record.
    pub(in crate::sources::mongodb_change_stream::stream) fn record(
        (db, coll): (&str, &str),
        (prefix, t0, now): (&str, bson::Timestamp, bson::DateTime),
        doc: &RawDocument,
        last_key: &mut Option<String>,
    ) -> Result<Record, String> {
        let id = doc
            .get("_id")
            .ok()
            .flatten()
            .ok_or_else(|| format!("a document in {db}.{coll} has no _id"))?;
        // The position is the round's, `00`, then the `_id`'s key.
        let mut position = String::with_capacity(prefix.len() + 2 + 64);
        position.push_str(prefix);
        position.push_str("00");
        if !push_id_key(&mut position, id) {
            return Err(format!(
                "snapshot of {db}.{coll}: an _id of type {:?} cannot be ordered for exactly-once delivery; snapshot supports ObjectId, string, number, date, binary, boolean and timestamp _ids",
                id.element_type()
            ));
        }
        let key = &position[prefix.len() + 2..];
        // Guard the order the sink relies on: the key must grow with `_id`.
        if last_key.as_deref().is_some_and(|k| k >= key) {
            return Err(format!(
                "snapshot of {db}.{coll}: _id order and position order disagree at {key}; stopping rather than risk a lost record"
            ));
        }
        match last_key {
            Some(last) => {
                last.clear();
                last.push_str(key);
            }
            None => *last_key = Some(key.to_string()),
        }
        let raw = match id_element(doc) {
            Some(element) => write_record(&position, (db, coll), (t0, now), element, doc)?,
            None => {
                let mut key_doc = RawDocumentBuf::new();
                key_doc.append("_id", id.to_raw_bson());
                let bytes = key_doc.as_bytes();
                let element = &bytes[4..bytes.len() - 1];
                write_record(&position, (db, coll), (t0, now), element, doc)?
            }
        };
        let id = Bson::try_from(id.to_raw_bson()).map_err(|e| e.to_string())?;
        Ok(Record { raw, id, position })
    }

    /// Records of `ns` through the user's `pipeline` (none: as they are).
    pub(in crate::sources::mongodb_change_stream::stream) async fn finish(
        &self,
        ns: &str,
        records: Vec<Record>,
    ) -> Result<Vec<Record>, MakeError> {
        self.apply_pipeline(split_namespace(ns).0, records)
            .await
            .map_err(MakeError::Pipeline)
    }

    /// Runs the user's `pipeline` over snapshot records (`$documents`), so
    /// filters and redactions apply to them as to change events.
    async fn apply_pipeline(
        &self,
        db: &str,
        records: Vec<Record>,
    ) -> mongodb::error::Result<Vec<Record>> {
        if self.pipeline.is_empty() {
            return Ok(records);
        }
        let mut out = Vec::with_capacity(records.len());
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len() && (end == start || bytes < PIPELINE_BATCH_BYTES) {
                bytes += records[end].raw.as_bytes().len();
                end += 1;
            }
            let mut documents = Vec::with_capacity(end - start);
            let mut ids = std::collections::HashMap::new();
            for record in &records[start..end] {
                let document = Document::try_from(record.raw.as_ref())
                    .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
                ids.insert(record.position.clone(), record.id.clone());
                documents.push(Bson::Document(document));
            }
            let mut pipeline = vec![doc! { "$documents": documents }];
            pipeline.extend(self.pipeline.iter().cloned());
            let results: Vec<RawDocumentBuf> = self
                .client
                .database(db)
                .aggregate(pipeline)
                .with_type::<RawDocumentBuf>()
                .await?
                .try_collect()
                .await?;
            for raw in results {
                let (position, id) = event_token(&raw)
                    .and_then(|t| ids.remove_entry(&t))
                    .ok_or_else(|| {
                        mongodb::error::Error::custom(
                            "a `pipeline` stage removed or changed `_id` of a snapshot record; keep `_id` in every event".to_string(),
                        )
                    })?;
                out.push(Record { raw, id, position });
            }
            start = end;
        }
        Ok(out)
    }
}

/// Writes a snapshot record's BSON into one buffer of its final size. By
/// hand because `rawdoc!` and `RawDocumentBuf::append` grow the buffer
/// field by field, and reallocating to copy each document in was the
/// largest single cost of an incremental snapshot (`perf`: realloc,
/// malloc and the page faults of trimmed memory, about a fifth of the
/// agent's CPU). The layout is BSON's: a little-endian i32 length, then
/// elements (type byte, key as a C string, value), then a 0 byte.
fn write_record(
    position: &str,
    (db, coll): (&str, &str),
    (t0, now): (bson::Timestamp, bson::DateTime),
    id_element: &[u8],
    doc: &RawDocument,
) -> Result<RawDocumentBuf, String> {
    let size =
        160 + position.len() + db.len() + coll.len() + id_element.len() + doc.as_bytes().len();
    let mut w = BsonWriter(Vec::with_capacity(size));
    let record = w.open();
    let id = w.document("_id");
    w.string("_data", position);
    w.close(id);
    w.string("operationType", "snapshot");
    w.element(0x11, "clusterTime");
    w.0.extend_from_slice(&t0.increment.to_le_bytes());
    w.0.extend_from_slice(&t0.time.to_le_bytes());
    w.element(0x09, "wallTime");
    w.0.extend_from_slice(&now.timestamp_millis().to_le_bytes());
    let ns = w.document("ns");
    w.string("db", db);
    w.string("coll", coll);
    w.close(ns);
    let key = w.document("documentKey");
    w.0.extend_from_slice(id_element);
    w.close(key);
    w.element(0x03, "fullDocument");
    w.0.extend_from_slice(doc.as_bytes());
    w.close(record);
    RawDocumentBuf::from_bytes(w.0).map_err(|e| format!("snapshot record: {e}"))
}

/// The bytes of `doc`'s `_id` element (type, key, value) when it is the
/// first, as MongoDB stores it; the record's `documentKey` is then those
/// bytes in a document of their own, with no value decoded or copied twice.
fn id_element(doc: &RawDocument) -> Option<&[u8]> {
    let first = doc.iter_elements().next()?.ok()?;
    (first.key() == "_id").then(|| &doc.as_bytes()[4..4 + 1 + 3 + 1 + first.len()])
}

/// Appends BSON to a buffer (see [`write_record`]).
struct BsonWriter(Vec<u8>);

impl BsonWriter {
    fn element(&mut self, kind: u8, key: &str) {
        self.0.push(kind);
        self.0.extend_from_slice(key.as_bytes());
        self.0.push(0);
    }

    fn string(&mut self, key: &str, value: &str) {
        self.element(0x02, key);
        let len = i32::try_from(value.len() + 1).unwrap_or(i32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(0);
    }

    /// Starts a document; returns where its length goes.
    fn open(&mut self) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        at
    }

    fn document(&mut self, key: &str) -> usize {
        self.element(0x03, key);
        self.open()
    }

    /// Ends the document opened at `at`.
    fn close(&mut self, at: usize) {
        self.0.push(0);
        let len = i32::try_from(self.0.len() - at).unwrap_or(i32::MAX);
        self.0[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    /// `documentKey` is made of the document's own `_id` bytes when `_id`
    /// comes first, and built when it does not: the same either way.
    #[test]
    fn document_keys_are_the_documents_own_id() {
        let ids = [
            Bson::String("k".into()),
            Bson::Int64(-7),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Uuid,
                bytes: vec![1; 16],
            }),
        ];
        let now = bson::DateTime::from_millis(5);
        let t0 = bson::Timestamp {
            time: 1,
            increment: 1,
        };
        for id in ids {
            let mut key_doc = RawDocumentBuf::new();
            key_doc.append("_id", bson::RawBson::try_from(id.clone()).unwrap());
            let bytes = key_doc.as_bytes();
            let first = RawDocumentBuf::from_document(&doc! { "_id": id.clone(), "x": 1 }).unwrap();
            assert_eq!(id_element(&first), Some(&bytes[4..bytes.len() - 1]));
            let second =
                RawDocumentBuf::from_document(&doc! { "x": 1, "_id": id.clone() }).unwrap();
            assert_eq!(id_element(&second), None);
            let record = |d: &RawDocumentBuf| {
                RecordMaker::record(("d", "c"), ("82", t0, now), d, &mut None).unwrap()
            };
            let (a, b) = (record(&first), record(&second));
            assert_eq!(a.raw.get_document("documentKey").unwrap(), key_doc.as_ref());
            assert_eq!(b.raw.get_document("documentKey").unwrap(), key_doc.as_ref());
            assert_eq!((a.id, &a.position), (id, &b.position));
        }
    }

    /// The hand-written record is the document `rawdoc!` builds.
    #[test]
    fn a_record_is_written_as_bson() {
        let doc = rawdoc! { "_id": "k", "n": 1, "nested": { "a": [1, 2] } };
        let t0 = bson::Timestamp {
            time: 7,
            increment: 3,
        };
        let now = bson::DateTime::from_millis(1_234);
        let mut key_doc = RawDocumentBuf::new();
        key_doc.append("_id", "k");
        let bytes = key_doc.as_bytes();
        let element = &bytes[4..bytes.len() - 1];
        let written = write_record("8200", ("d", "c"), (t0, now), element, &doc).unwrap();
        let expected = rawdoc! {
            "_id": { "_data": "8200" },
            "operationType": "snapshot",
            "clusterTime": t0,
            "wallTime": now,
            "ns": { "db": "d", "coll": "c" },
            "documentKey": { "_id": "k" },
            "fullDocument": doc.clone(),
        };
        assert_eq!(written.as_bytes(), expected.as_bytes());
        assert_eq!(
            Document::try_from(written.as_ref())
                .unwrap()
                .get_document("fullDocument")
                .unwrap()
                .get_i32("n"),
            Ok(1)
        );
    }
}
