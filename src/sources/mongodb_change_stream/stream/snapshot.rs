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

mod position;
mod records;

pub(in crate::sources::mongodb_change_stream::stream) use records::{
    MakeError, Record, RecordMaker,
};

use std::{ops::ControlFlow, sync::Arc, time::Instant};

use bson::{doc, Bson, RawDocumentBuf};
use futures::{StreamExt, TryStreamExt};
use mongodb::options::Hint;

use super::{progress::Counted, recovery::Failure, ChangeStreamSource};
use crate::sources::mongodb_change_stream::{
    checkpoint::{token_cluster_time, Checkpoint, SnapshotProgress},
    errors,
    settings::{Scope, SYSTEM_DATABASES},
    watch::{token_hex, OpenAt},
};
use crate::{
    event::{BatchStatus, EventMetadata, LogEvent, Position},
    finalizer::{FinalizerStream, OrderedFinalizer},
    internal_events::mongodb::SnapshotCopied,
    topology::{Sent, SourceSender},
};

/// How a snapshot ended.
pub(super) enum SnapshotEnd {
    /// Every record delivered; stream after this token.
    Complete(String),
    /// Shutdown: progress is saved, the copy continues on the next start.
    Stopped,
    Failed,
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
pub(super) fn split_namespace(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

/// A document's `_id`, if it has one that converts to `Bson`.
fn document_id(doc: &RawDocumentBuf) -> Option<Bson> {
    doc.get("_id")
        .ok()
        .flatten()
        .and_then(|id| Bson::try_from(id.to_raw_bson()).ok())
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
            ControlFlow::Continue(()) => self.complete_snapshot(run).await,
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
        let of = run.progress.collections.len();
        let estimate = self.estimate(&ns).await;
        let mut progress = self.copy_progress((index, of), &ns, estimate, Counted::default());
        loop {
            self.take_record_acks(run).await?;
            let Some(docs) = self.next_chunk(run, &ns, after.as_ref()).await? else {
                continue;
            };
            let Some(last_doc) = docs.last() else { break };
            after = document_id(last_doc);
            progress.read(docs.len() as u64);
            progress.chunk_done();
            let records = self
                .chunk_records(&ns, run.prefix(), run.t0, docs, &mut last_key)
                .await?;
            for record in records {
                self.send_record(run, index, record).await?;
            }
        }
        progress.done();
        ControlFlow::Continue(())
    }

    /// Takes in the acknowledgements that are ready and saves progress
    /// when due.
    async fn take_record_acks(&self, run: &mut SnapshotRun<'_>) -> ControlFlow<SnapshotEnd> {
        while let Some((status, entry)) = run.acks.ready() {
            self.delivered(run, status, entry)?;
        }
        if run.last_save.elapsed() >= self.settings.checkpoint_interval {
            self.save_progress(run).await;
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
            _ = self.cx.shutdown.cancelled() => return ControlFlow::Break(self.snapshot_stopped(run).await),
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
                    super::recovery::stops_the_agent(&e);
                    self.error(
                        "snapshot_failed",
                        &format!("Snapshot of {ns} failed: {}", errors::describe(&e)),
                    );
                    ControlFlow::Break(SnapshotEnd::Failed)
                }
            },
        }
    }

    /// Sends one record of collection `index`; `(index, id)` is what the
    /// progress records once it is delivered.
    async fn send_record(
        &self,
        run: &mut SnapshotRun<'_>,
        index: usize,
        Record { raw, id, position }: Record,
    ) -> ControlFlow<SnapshotEnd> {
        let event = LogEvent::new(
            raw,
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
            Sent::Stopped => return ControlFlow::Break(self.snapshot_stopped(run).await),
        }
        run.copied.increment();
        ControlFlow::Continue(())
    }

    /// Waits until every sent record is resolved.
    async fn wait_for_delivery(&self, run: &mut SnapshotRun<'_>) -> ControlFlow<SnapshotEnd> {
        while run.outstanding > 0 {
            let next = tokio::select! {
                _ = self.cx.shutdown.cancelled() => return ControlFlow::Break(self.snapshot_stopped(run).await),
                n = run.acks.next() => n,
            };
            let Some((status, entry)) = next else { break };
            self.delivered(run, status, entry)?;
        }
        ControlFlow::Continue(())
    }

    /// Marks the snapshot done, so the next start streams instead.
    async fn complete_snapshot(&self, mut run: SnapshotRun<'_>) -> SnapshotEnd {
        run.progress.done = true;
        run.progress.current = run.progress.collections.len();
        run.progress.last_id = None;
        if let Err(e) = self.save_snapshot(&run.start_token, &run.progress).await {
            self.error("checkpoint_failed", &e);
            return SnapshotEnd::Failed;
        }
        self.copy_complete();
        tracing::info!(source = %self.cx.key, records = run.copied.count(), "Snapshot complete.");
        SnapshotEnd::Complete(run.start_token)
    }

    /// Takes T0 and the list of collections, and saves them.
    async fn begin_snapshot(&self) -> Option<(String, SnapshotProgress)> {
        let mut attempt = 0;
        loop {
            let result = async {
                let stream = self.open(&OpenAt::Now, self.settings.batch_size).await?;
                let token = stream.resume_token().and_then(|t| token_hex(&t));
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
                    if let Err(e) = self.save_snapshot(&token, &progress).await {
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
                Err(e) => {
                    if !self
                        .retry_after(&e, &mut attempt, "Snapshot could not start")
                        .await
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// The watched collections as `db.coll`, sorted (views and `system.*`
    /// collections left out).
    pub(super) async fn snapshot_collections(&self) -> mongodb::error::Result<Vec<String>> {
        let databases = match &self.settings.scope {
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
                    .filter(|c| self.settings.in_scope(&db, c))
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
        let limit = i64::from(self.settings.snapshot_chunk_size) + i64::from(after.is_some());
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

    async fn save_snapshot(&self, token: &str, progress: &SnapshotProgress) -> Result<(), String> {
        self.state
            .save(&Checkpoint::of(
                &self.pipeline_id,
                token.to_string(),
                Some(progress.clone()),
            ))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Saves how far the copy got; a failed save is reported and the copy
    /// goes on (the next save may succeed).
    async fn save_progress(&self, run: &mut SnapshotRun<'_>) {
        run.fold_latest();
        if let Err(e) = self.save_snapshot(&run.start_token, &run.progress).await {
            self.error("checkpoint_failed", &e);
        }
    }

    async fn snapshot_stopped(&self, run: &mut SnapshotRun<'_>) -> SnapshotEnd {
        self.save_progress(run).await;
        tracing::info!(source = %self.cx.key, "Snapshot paused; it continues from the last delivered document on the next start.");
        SnapshotEnd::Stopped
    }
}
