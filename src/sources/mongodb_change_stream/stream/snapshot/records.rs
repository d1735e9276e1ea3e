//! Snapshot records: documents wrapped as change-event-shaped records with
//! their positions, then run through the user's `pipeline`.

use std::{ops::ControlFlow, sync::Arc};

use bson::{doc, rawdoc, Bson, Document, RawBson, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;

use super::{position::id_key, split_namespace, SnapshotEnd};
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
    ) -> ControlFlow<SnapshotEnd, Vec<(RawDocumentBuf, Bson)>> {
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
    ) -> Result<Vec<(RawDocumentBuf, Bson)>, MakeError> {
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
    ) -> Result<Vec<(RawDocumentBuf, Bson)>, String> {
        let now = bson::DateTime::now();
        let mut records = Vec::with_capacity(docs.len());
        for doc in docs {
            let id = doc
                .get("_id")
                .ok()
                .flatten()
                .ok_or_else(|| format!("a document in {db}.{coll} has no _id"))?;
            let key = id_key(id).ok_or_else(|| {
                format!(
                    "snapshot of {db}.{coll}: an _id of type {:?} cannot be ordered for exactly-once delivery; snapshot supports ObjectId, string, number, date, binary, boolean and timestamp _ids",
                    id.element_type()
                )
            })?;
            // Guard the order the sink relies on: the key must grow with `_id`.
            if last_key.as_deref().is_some_and(|k| k >= key.as_str()) {
                return Err(format!(
                    "snapshot of {db}.{coll}: _id order and position order disagree at {key}; stopping rather than risk a lost record"
                ));
            }
            *last_key = Some(key.clone());
            let id_owned = id.to_raw_bson();
            let id_bson = Bson::try_from(id_owned.clone()).map_err(|e| e.to_string())?;
            let mut record = rawdoc! {
                "_id": { "_data": format!("{prefix}00{key}") },
                "operationType": "snapshot",
                "clusterTime": t0,
                "wallTime": now,
                "ns": { "db": db, "coll": coll },
            };
            let mut key_doc = RawDocumentBuf::new();
            key_doc.append("_id", id_owned);
            record.append("documentKey", key_doc);
            record.append("fullDocument", RawBson::Document(doc));
            records.push((record, id_bson));
        }
        Ok(records)
    }

    /// Runs the user's `pipeline` over snapshot records (`$documents`), so
    /// filters and redactions apply to them as to change events.
    async fn apply_pipeline(
        &self,
        db: &str,
        records: Vec<(RawDocumentBuf, Bson)>,
    ) -> mongodb::error::Result<Vec<(RawDocumentBuf, Bson)>> {
        if self.pipeline.is_empty() {
            return Ok(records);
        }
        let mut out = Vec::with_capacity(records.len());
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len() && (end == start || bytes < PIPELINE_BATCH_BYTES) {
                bytes += records[end].0.as_bytes().len();
                end += 1;
            }
            let mut documents = Vec::with_capacity(end - start);
            let mut ids = std::collections::HashMap::new();
            for (record, id) in &records[start..end] {
                let document = Document::try_from(record.as_ref())
                    .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
                if let Some(token) = event_token(record) {
                    ids.insert(token, id.clone());
                }
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
            for record in results {
                let id = event_token(&record)
                    .and_then(|t| ids.get(&t).cloned())
                    .ok_or_else(|| {
                        mongodb::error::Error::custom(
                            "a `pipeline` stage removed or changed `_id` of a snapshot record; keep `_id` in every event".to_string(),
                        )
                    })?;
                out.push((record, id));
            }
            start = end;
        }
        Ok(out)
    }
}
