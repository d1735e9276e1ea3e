//! `snapshot = "initial"`: copy the documents that exist before streaming.
//!
//! The copy begins by opening the change stream and keeping its post-batch
//! resume token T0, so streaming later starts from a point before the copy:
//! nothing is missed, and a change made during the copy can appear both as
//! a snapshot record and as a change event (the change event comes later
//! and carries the newer state).
//!
//! Each record gets a position that sorts after every change before T0 and
//! before every change after it, and in `_id` order within a collection:
//! the first 18 hex digits of T0 (type byte and cluster time), `00` (below
//! any real token's next byte), then an order-preserving key of `_id`. The
//! sink's replay skip therefore works for snapshot records too, and a
//! restarted copy continues after the last acknowledged `_id`.

use std::{
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, Instant},
};

use bson::{doc, rawdoc, spec::BinarySubtype, Bson, Document, RawBson, RawBsonRef, RawDocumentBuf};
use futures::{StreamExt, TryStreamExt};
use mongodb::options::Hint;

use super::{
    checkpoint::{token_cluster_time, Checkpoint, SnapshotProgress},
    config::Scope,
    recovery::Failure,
    stream::{event_token, ChangeStreamSource, OpenAt},
};
use crate::{
    event::{BatchStatus, EventMetadata, LogEvent, Position},
    finalizer::{FinalizerStream, OrderedFinalizer},
    internal_events::mongodb::SnapshotCopied,
    redact,
    topology::{Sent, SourceSender},
};

/// Databases a deployment-wide snapshot leaves out.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "config", "local"];
/// Bytes of snapshot records per `$documents` request when a `pipeline` is
/// applied (the command must stay under 16 MB).
const PIPELINE_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// How a snapshot ended.
pub(super) enum SnapshotEnd {
    /// Every record delivered; stream after this token.
    Complete(String),
    /// Shutdown: progress is saved, the copy continues on the next start.
    Stopped,
    Failed,
}

/// The order-preserving key of an `_id`, in MongoDB's comparison order
/// (numbers < strings < objects < ... < ObjectId < bool < date <
/// timestamp). `None` for types whose order this key cannot reproduce
/// (embedded documents, arrays, regexes...).
pub fn id_key(id: RawBsonRef<'_>) -> Option<String> {
    fn number(f: f64, exact: i64) -> String {
        // IEEE-754 bits made sortable; the integer breaks ties where an
        // Int64 is beyond f64 precision. NaN sorts below every number.
        let bits = if f.is_nan() {
            0
        } else if f.is_sign_negative() {
            !f.to_bits()
        } else {
            f.to_bits() ^ (1 << 63)
        };
        format!("10{bits:016X}{:016X}", (exact as u64) ^ (1 << 63))
    }
    Some(match id {
        RawBsonRef::MinKey => "00".into(),
        RawBsonRef::Null | RawBsonRef::Undefined => "05".into(),
        RawBsonRef::Int32(i) => number(f64::from(i), i64::from(i)),
        RawBsonRef::Int64(i) => number(i as f64, i),
        RawBsonRef::Double(f) => number(f, f as i64),
        RawBsonRef::Decimal128(d) => {
            let f: f64 = d.to_string().parse().ok()?;
            number(f, f as i64)
        }
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) => format!("20{}", upper_hex(s.as_bytes())),
        RawBsonRef::Binary(b) => {
            let subtype: u8 = match b.subtype {
                BinarySubtype::Generic => 0,
                other => u8::from(other),
            };
            format!("50{:08X}{subtype:02X}{}", b.bytes.len(), upper_hex(b.bytes))
        }
        RawBsonRef::ObjectId(o) => format!("60{}", o.to_hex().to_ascii_uppercase()),
        RawBsonRef::Boolean(b) => format!("70{:02X}", u8::from(b)),
        RawBsonRef::DateTime(d) => format!("80{:016X}", (d.timestamp_millis() as u64) ^ (1 << 63)),
        RawBsonRef::Timestamp(t) => format!("90{:08X}{:08X}", t.time, t.increment),
        RawBsonRef::MaxKey => "FF".into(),
        _ => return None,
    })
}

/// A snapshot in progress.
struct SnapshotRun<'a> {
    out: &'a mut SourceSender,
    source_id: &'a Arc<str>,
    /// T0: streaming starts after it once the copy is complete.
    start_token: String,
    /// T0's cluster time, every record's event time.
    t0: bson::Timestamp,
    progress: SnapshotProgress,
    finalizer: OrderedFinalizer<(usize, Bson)>,
    acks: FinalizerStream<(usize, Bson)>,
    /// Records sent and not yet resolved.
    outstanding: u64,
    /// The newest delivered record; folded into `progress` (as Extended
    /// JSON) only when progress is saved, not per acknowledgement.
    latest: Option<(usize, Bson)>,
    last_save: Instant,
    /// Transient failures in a row, for the backoff.
    attempt: u32,
    copied: SnapshotCopied,
}

impl SnapshotRun<'_> {
    /// The start of every record's position: T0's type byte and cluster
    /// time.
    fn prefix(&self) -> &str {
        &self.start_token[..18]
    }

    /// Records the newest delivered record in `progress`.
    fn fold_latest(&mut self) {
        if let Some((index, id)) = self.latest.take() {
            self.progress.current = index;
            self.progress.last_id = Some(id.into_canonical_extjson());
        }
    }
}

/// `db.coll` as `(db, coll)`.
fn split_namespace(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

/// A document's `_id`, if it has one that converts to `Bson`.
fn document_id(doc: &RawDocumentBuf) -> Option<Bson> {
    doc.get("_id")
        .ok()
        .flatten()
        .and_then(|id| Bson::try_from(id.to_raw_bson()).ok())
}

fn upper_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        })
}

impl ChangeStreamSource {
    /// Runs (or continues) a snapshot. `resume` is the saved start token
    /// and progress of an unfinished one.
    pub(super) async fn snapshot(
        &self,
        out: &mut SourceSender,
        source_id: &Arc<str>,
        resume: Option<(String, SnapshotProgress)>,
    ) -> SnapshotEnd {
        let Some(mut run) = self.start_snapshot(out, source_id, resume).await else {
            return SnapshotEnd::Failed;
        };
        match self.copy_collections(&mut run).await {
            ControlFlow::Continue(()) => self.complete_snapshot(run),
            ControlFlow::Break(end) => end,
        }
    }

    /// Begins a snapshot, or picks up the saved one.
    async fn start_snapshot<'a>(
        &self,
        out: &'a mut SourceSender,
        source_id: &'a Arc<str>,
        resume: Option<(String, SnapshotProgress)>,
    ) -> Option<SnapshotRun<'a>> {
        let (start_token, progress) = match resume {
            Some(r) => r,
            None => self.begin_snapshot().await?,
        };
        let Some(t0) = token_cluster_time(&start_token) else {
            self.error(
                "snapshot_failed",
                &format!("snapshot start token {start_token} has no cluster time"),
            );
            return None;
        };
        tracing::info!(
            source = %self.cx.key,
            collections = progress.collections.len(),
            from = progress.current,
            "Snapshot: copying existing documents, then streaming after {start_token}."
        );
        let (finalizer, acks) = OrderedFinalizer::new();
        Some(SnapshotRun {
            out,
            source_id,
            start_token,
            t0,
            progress,
            finalizer,
            acks,
            outstanding: 0,
            latest: None,
            last_save: Instant::now(),
            attempt: 0,
            copied: SnapshotCopied::register(&self.cx.tags),
        })
    }

    /// Copies the collections from the current one on, then waits until
    /// every record is delivered.
    async fn copy_collections(&self, run: &mut SnapshotRun<'_>) -> ControlFlow<SnapshotEnd> {
        for index in run.progress.current..run.progress.collections.len() {
            self.copy_collection(run, index).await?;
        }
        // Every record must be delivered before streaming starts: a change
        // event after T0 for the same file would otherwise raise the sink's
        // high-water position past records still in flight.
        self.wait_for_delivery(run).await
    }

    /// Copies collection `index` chunk by chunk in `_id` order; the one the
    /// saved progress stopped in continues after its last delivered `_id`.
    async fn copy_collection(
        &self,
        run: &mut SnapshotRun<'_>,
        index: usize,
    ) -> ControlFlow<SnapshotEnd> {
        let ns = run.progress.collections[index].clone();
        let mut after: Option<Bson> = if index == run.progress.current {
            run.progress
                .last_id
                .clone()
                .and_then(|v| Bson::try_from(v).ok())
        } else {
            None
        };
        let mut last_key: Option<String> = None;
        loop {
            self.take_record_acks(run)?;
            let Some(docs) = self.next_chunk(run, &ns, after.as_ref()).await? else {
                continue;
            };
            let Some(last_doc) = docs.last() else { break };
            after = document_id(last_doc);
            let records = self
                .chunk_records(&ns, run.prefix(), run.t0, docs, &mut last_key)
                .await?;
            for (record, id) in records {
                self.send_record(run, index, record, id).await?;
            }
        }
        ControlFlow::Continue(())
    }

    /// Takes in the acknowledgements that are ready and saves progress
    /// when due.
    fn take_record_acks(&self, run: &mut SnapshotRun<'_>) -> ControlFlow<SnapshotEnd> {
        while let Some((status, entry)) = run.acks.ready() {
            self.delivered(run, status, entry)?;
        }
        if run.last_save.elapsed() >= Duration::from_millis(self.config.checkpoint_interval_ms) {
            self.save_progress(run);
            run.last_save = Instant::now();
        }
        ControlFlow::Continue(())
    }

    /// The documents of `ns` after `after`; `None` after a transient error
    /// and its pause, to try again.
    async fn next_chunk(
        &self,
        run: &mut SnapshotRun<'_>,
        ns: &str,
        after: Option<&Bson>,
    ) -> ControlFlow<SnapshotEnd, Option<Vec<RawDocumentBuf>>> {
        let (db, coll) = split_namespace(ns);
        let chunk = tokio::select! {
            _ = self.cx.shutdown.cancelled() => return ControlFlow::Break(self.snapshot_stopped(run)),
            c = self.snapshot_chunk(db, coll, after) => c,
        };
        match chunk {
            Ok(docs) => {
                run.attempt = 0;
                ControlFlow::Continue(Some(docs))
            }
            Err(e) => match self.classify(&e) {
                Failure::Retry => {
                    self.pause(&mut run.attempt, &e).await;
                    ControlFlow::Continue(None)
                }
                _ => {
                    self.error(
                        "snapshot_failed",
                        &format!("Snapshot of {ns} failed: {}", redact::error(&e)),
                    );
                    ControlFlow::Break(SnapshotEnd::Failed)
                }
            },
        }
    }

    /// A chunk of `ns` as snapshot records, through the user's `pipeline`.
    /// (Not given the `SnapshotRun`: a shared reference to it, held across
    /// an await, would not be `Send`.)
    async fn chunk_records(
        &self,
        ns: &str,
        prefix: &str,
        t0: bson::Timestamp,
        docs: Vec<RawDocumentBuf>,
        last_key: &mut Option<String>,
    ) -> ControlFlow<SnapshotEnd, Vec<(RawDocumentBuf, Bson)>> {
        let (db, coll) = split_namespace(ns);
        let records = match self.snapshot_records(db, coll, prefix, t0, docs, last_key) {
            Ok(r) => r,
            Err(message) => {
                self.error("snapshot_failed", &message);
                return ControlFlow::Break(SnapshotEnd::Failed);
            }
        };
        match self.apply_pipeline(db, records).await {
            Ok(r) => ControlFlow::Continue(r),
            Err(e) => {
                self.error(
                    "snapshot_failed",
                    &format!(
                        "`pipeline` on snapshot records of {ns} failed: {}",
                        redact::error(&e)
                    ),
                );
                ControlFlow::Break(SnapshotEnd::Failed)
            }
        }
    }

    /// Sends one record of collection `index`; `(index, id)` is what the
    /// progress records once it is delivered.
    async fn send_record(
        &self,
        run: &mut SnapshotRun<'_>,
        index: usize,
        record: RawDocumentBuf,
        id: Bson,
    ) -> ControlFlow<SnapshotEnd> {
        let Some(position) = event_token(&record) else {
            self.error("missing_resume_token", "A `pipeline` stage removed `_id` from a snapshot record; keep `_id` in every event.");
            return ControlFlow::Break(SnapshotEnd::Failed);
        };
        let event = LogEvent::new(
            record,
            EventMetadata {
                source_id: Arc::clone(run.source_id),
                position: Some(Position(position)),
                event_time: chrono::DateTime::from_timestamp(i64::from(run.t0.time), 0),
            },
        );
        let finalizer = self.cx.acknowledgements.then_some(&run.finalizer);
        match run
            .out
            .send_log(event, (index, id), finalizer, &self.cx.shutdown)
            .await
        {
            Sent::Registered => run.outstanding += 1,
            Sent::Unacknowledged(entry) => run.latest = Some(entry),
            Sent::Stopped => return ControlFlow::Break(self.snapshot_stopped(run)),
        }
        run.copied.increment();
        ControlFlow::Continue(())
    }

    /// Waits until every sent record is resolved.
    async fn wait_for_delivery(&self, run: &mut SnapshotRun<'_>) -> ControlFlow<SnapshotEnd> {
        while run.outstanding > 0 {
            let next = tokio::select! {
                _ = self.cx.shutdown.cancelled() => return ControlFlow::Break(self.snapshot_stopped(run)),
                n = run.acks.next() => n,
            };
            let Some((status, entry)) = next else { break };
            self.delivered(run, status, entry)?;
        }
        ControlFlow::Continue(())
    }

    /// Marks the snapshot done, so the next start streams instead.
    fn complete_snapshot(&self, mut run: SnapshotRun<'_>) -> SnapshotEnd {
        run.progress.done = true;
        run.progress.current = run.progress.collections.len();
        run.progress.last_id = None;
        if let Err(e) = self.save_snapshot(&run.start_token, &run.progress) {
            self.error("checkpoint_failed", &e);
            return SnapshotEnd::Failed;
        }
        tracing::info!(source = %self.cx.key, records = run.copied.count(), "Snapshot complete.");
        SnapshotEnd::Complete(run.start_token)
    }

    /// Takes T0 and the list of collections, and saves them.
    async fn begin_snapshot(&self) -> Option<(String, SnapshotProgress)> {
        let mut attempt = 0;
        loop {
            let result = async {
                let stream = self.open(&OpenAt::Now).await?;
                let token = stream
                    .resume_token()
                    .and_then(|t| super::stream::token_hex(&t));
                let collections = self.snapshot_collections().await?;
                Ok::<_, mongodb::error::Error>((token, collections))
            }
            .await;
            match result {
                Ok((Some(token), collections)) if token_cluster_time(&token).is_some() => {
                    let progress = SnapshotProgress {
                        collections,
                        ..Default::default()
                    };
                    if let Err(e) = self.save_snapshot(&token, &progress) {
                        self.error("checkpoint_failed", &e);
                        return None;
                    }
                    return Some((token, progress));
                }
                Ok(_) => {
                    self.error(
                        "snapshot_failed",
                        "the server returned no post-batch resume token to start the snapshot from",
                    );
                    return None;
                }
                Err(e) => match self.classify(&e) {
                    Failure::Retry if !self.cx.shutdown.is_cancelled() => {
                        self.pause(&mut attempt, &e).await;
                    }
                    _ => {
                        self.error(
                            "snapshot_failed",
                            &format!("Snapshot could not start: {}", redact::error(&e)),
                        );
                        return None;
                    }
                },
            }
        }
    }

    /// The watched collections as `db.coll`, sorted (views and `system.*`
    /// collections left out).
    async fn snapshot_collections(&self) -> mongodb::error::Result<Vec<String>> {
        let databases = match &self.scope {
            Scope::Deployment => self
                .client
                .list_database_names()
                .await?
                .into_iter()
                .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
                .collect(),
            Scope::Database(db) => vec![db.clone()],
            Scope::Collection(db, coll) => return Ok(vec![format!("{db}.{coll}")]),
            Scope::Collections(db, colls) => {
                let mut out: Vec<String> = colls.iter().map(|c| format!("{db}.{c}")).collect();
                out.sort();
                return Ok(out);
            }
        };
        let mut out = Vec::new();
        for db in databases {
            let names = self
                .client
                .database(&db)
                .list_collection_names()
                .filter(doc! { "type": "collection" })
                .await?;
            out.extend(
                names
                    .into_iter()
                    .filter(|c| !c.starts_with("system."))
                    .map(|c| format!("{db}.{c}")),
            );
        }
        out.sort();
        Ok(out)
    }

    /// Up to `snapshot_chunk_size` documents after `after`, in `_id` order.
    /// `min` with the `_id` index bounds the scan without a `$gt` filter,
    /// which would see only `_id`s of the same type (type bracketing).
    async fn snapshot_chunk(
        &self,
        db: &str,
        coll: &str,
        after: Option<&Bson>,
    ) -> mongodb::error::Result<Vec<RawDocumentBuf>> {
        let collection = self.client.database(db).collection::<RawDocumentBuf>(coll);
        let limit = i64::from(self.config.snapshot_chunk_size) + i64::from(after.is_some());
        let mut find = collection
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .hint(Hint::Keys(doc! { "_id": 1 }))
            .limit(limit);
        if let Some(after) = after {
            find = find.min(doc! { "_id": after.clone() });
        }
        let mut docs: Vec<RawDocumentBuf> = find.await?.try_collect().await?;
        // `min` is inclusive: drop the document already copied.
        if let (Some(after), Some(first)) = (after, docs.first()) {
            if document_id(first).as_ref() == Some(after) {
                docs.remove(0);
            }
        }
        Ok(docs)
    }

    /// Wraps documents as change-event-shaped snapshot records.
    fn snapshot_records(
        &self,
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

    /// Takes in one acknowledgement; breaks (after reporting) if the
    /// record was not delivered.
    fn delivered(
        &self,
        run: &mut SnapshotRun<'_>,
        status: BatchStatus,
        entry: (usize, Bson),
    ) -> ControlFlow<SnapshotEnd> {
        run.outstanding -= 1;
        if status != BatchStatus::Delivered {
            self.error("snapshot_failed", &format!("A snapshot record was not delivered ({status:?}); stopping. The copy continues from the last delivered document on restart."));
            return ControlFlow::Break(SnapshotEnd::Failed);
        }
        run.latest = Some(entry);
        ControlFlow::Continue(())
    }

    fn save_snapshot(&self, token: &str, progress: &SnapshotProgress) -> Result<(), String> {
        self.state
            .save(&Checkpoint::new(token.to_string(), Some(progress.clone())))
            .map_err(|e| e.to_string())
    }

    /// Saves how far the copy got; a failed save is reported and the copy
    /// goes on (the next save may succeed).
    fn save_progress(&self, run: &mut SnapshotRun<'_>) {
        run.fold_latest();
        if let Err(e) = self.save_snapshot(&run.start_token, &run.progress) {
            self.error("checkpoint_failed", &e);
        }
    }

    fn snapshot_stopped(&self, run: &mut SnapshotRun<'_>) -> SnapshotEnd {
        self.save_progress(run);
        tracing::info!(source = %self.cx.key, "Snapshot paused; it continues from the last delivered document on the next start.");
        SnapshotEnd::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    fn key(b: Bson) -> String {
        let doc = doc! { "v": b };
        let raw = RawDocumentBuf::from_document(&doc).unwrap();
        id_key(raw.get("v").unwrap().unwrap()).unwrap()
    }

    #[test]
    fn id_keys_follow_mongodb_order() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NEG_INFINITY),
            Bson::Int64(-5_000_000_000),
            Bson::Int32(-1),
            Bson::Double(-0.5),
            Bson::Int32(0),
            Bson::Double(0.5),
            Bson::Int64(1),
            Bson::Int32(2),
            Bson::Int64(9_007_199_254_740_992),
            Bson::Int64(9_007_199_254_740_993),
            Bson::String(String::new()),
            Bson::String("a".into()),
            Bson::String("ab".into()),
            Bson::String("b".into()),
            Bson::ObjectId(ObjectId::parse_str("000000000000000000000001").unwrap()),
            Bson::ObjectId(ObjectId::parse_str("65a000000000000000000000").unwrap()),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-1)),
            Bson::DateTime(bson::DateTime::from_millis(1)),
            Bson::MaxKey,
        ];
        let keys: Vec<String> = ordered.iter().cloned().map(key).collect();
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        assert_eq!(id_key(RawBsonRef::Int32(7)), id_key(RawBsonRef::Int64(7)));
        let doc = doc! { "v": { "a": 1 } };
        let raw = RawDocumentBuf::from_document(&doc).unwrap();
        assert_eq!(id_key(raw.get("v").unwrap().unwrap()), None);
    }
}
