//! Reading the change stream.
//!
//! Events are read raw (`RawDocumentBuf`) and forwarded untouched, with the
//! resume token as their position and the cluster time as their event time.
//! The stream is always (re)opened with `startAfter` the last emitted token:
//! unlike `resumeAfter` it also works after an `invalidate` event, so a
//! collection that is dropped or renamed does not stop the source.

use std::{sync::Arc, time::Duration};

use bson::{doc, Bson, Document, RawDocumentBuf};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use mongodb::{
    change_stream::{event::ResumeToken, ChangeStream},
    error::ErrorKind,
    options::{ClientOptions, FullDocumentBeforeChangeType, FullDocumentType},
    Client,
};
use rand::Rng;

use crate::{
    checkpoint::StateFile,
    event::{BatchNotifier, Event, EventMetadata, LogEvent, Position, Watermark},
    finalizer::OrderedFinalizer,
    internal_events::ComponentTags,
    internal_events::{
        mongodb::{HistoryLostReset, OversizedEventSkipped, StreamInterrupted, StreamProgress},
        ComponentError, Stage,
    },
    redact,
    shutdown::ShutdownSignal,
    sources::SourceContext,
    topology::SourceSender,
};

use super::{
    checkpoint::{token_cluster_time, Acks, Checkpoint, SnapshotProgress},
    config::{
        FullDocument, FullDocumentBeforeChange, MongoDbChangeStreamConfig, OnHistoryLost,
        OnOversizedEvent, Scope, SnapshotMode, StartAt,
    },
    snapshot::SnapshotEnd,
};

pub struct ChangeStreamSource {
    pub(super) config: MongoDbChangeStreamConfig,
    pub(super) cx: Context,
    /// Taken by `run`; dropping it tells the sinks the source is done.
    out: Option<SourceSender>,
    pub(super) client: Client,
    pub(super) state: StateFile,
    pub(super) scope: Scope,
    pub(super) pipeline: Vec<Document>,
    start: StartAt,
}

/// The parts of the `SourceContext` the source keeps besides its output.
pub(super) struct Context {
    pub(super) key: String,
    pub(super) tags: ComponentTags,
    pub(super) shutdown: ShutdownSignal,
    pub(super) acknowledgements: bool,
}

/// Where to open the stream.
#[derive(Clone, Debug)]
pub(super) enum OpenAt {
    Now,
    Time(bson::Timestamp),
    After(String),
    /// Copy the collections first (`snapshot`), then stream after the
    /// snapshot's start token.
    Snapshot,
}

/// How a stream error is handled.
pub(super) enum Failure {
    /// Reopen from the last emitted event after a pause.
    Retry,
    /// The resume point is gone from the oplog.
    HistoryLost,
    /// Stop the source.
    Fatal,
}

impl ChangeStreamSource {
    pub async fn new(config: MongoDbChangeStreamConfig, cx: SourceContext) -> crate::Result<Self> {
        let mut options = ClientOptions::parse(&config.uri).await.map_err(|e| {
            format!(
                "`uri` is not a valid MongoDB connection string: {}",
                redact::error(&e)
            )
        })?;
        options
            .app_name
            .get_or_insert_with(|| "mongo-adls".to_string());
        let client = Client::with_options(options).map_err(|e| redact::error(&e))?;
        let dir = cx
            .globals
            .component_data_dir(&cx.key)
            .ok_or("the global `data_dir` must be set")?;
        let state = StateFile::new(&dir, "checkpoint.json")?;
        let SourceContext {
            key,
            tags,
            shutdown,
            acknowledgements,
            out,
            ..
        } = cx;
        Ok(Self {
            cx: Context {
                key,
                tags,
                shutdown,
                acknowledgements,
            },
            out: Some(out),
            scope: config.scope()?,
            pipeline: config.user_pipeline()?,
            start: config.start()?,
            config,
            client,
            state,
        })
    }

    /// Where to begin: the checkpoint, an unfinished snapshot, or the
    /// configured start. `None` when an `initial_only` snapshot is done.
    #[allow(clippy::type_complexity)]
    fn initial_position(
        &self,
    ) -> crate::Result<Option<(OpenAt, Option<String>, Option<(String, SnapshotProgress)>)>> {
        let checkpoint = self.state.load::<Checkpoint>()?;
        if self.start != StartAt::Now {
            if let Some(c) = checkpoint {
                match c.snapshot {
                    Some(p) if !p.done => {
                        tracing::info!(source = %self.cx.key, "Continuing the snapshot from its checkpoint.");
                        return Ok(Some((OpenAt::Snapshot, None, Some((c.resume_token, p)))));
                    }
                    Some(_) if self.config.snapshot == SnapshotMode::InitialOnly => {
                        tracing::info!(source = %self.cx.key, "The snapshot is complete (snapshot = \"initial_only\"); nothing to do. Remove {} to copy again.", self.state.path().display());
                        return Ok(None);
                    }
                    _ => {}
                }
                tracing::info!(source = %self.cx.key, "Resuming after checkpoint {}.", c.resume_token);
                return Ok(Some((
                    OpenAt::After(c.resume_token.clone()),
                    Some(c.resume_token),
                    None,
                )));
            }
        }
        if self.config.snapshot != SnapshotMode::Off {
            return Ok(Some((OpenAt::Snapshot, None, None)));
        }
        Ok(Some(match &self.start {
            StartAt::CheckpointOrNow | StartAt::Now => (OpenAt::Now, None, None),
            StartAt::Time(t) => (OpenAt::Time(*t), None, None),
            StartAt::Token(t) => (OpenAt::After(t.clone()), Some(t.clone()), None),
        }))
    }

    pub(super) async fn open(
        &self,
        at: &OpenAt,
    ) -> mongodb::error::Result<ChangeStream<RawDocumentBuf>> {
        let mut pipeline = Vec::with_capacity(self.pipeline.len() + 1);
        if let Scope::Collections(_, colls) = &self.scope {
            pipeline.push(doc! { "$match": { "ns.coll": { "$in": colls.clone() } } });
        }
        pipeline.extend(self.pipeline.iter().cloned());
        if self.config.on_oversized_event == OnOversizedEvent::Skip {
            pipeline.extend(oversized_stages());
        }

        macro_rules! configure {
            ($watch:expr) => {{
                let mut w = $watch
                    .pipeline(pipeline)
                    .max_await_time(Duration::from_millis(self.config.max_await_time_ms))
                    .show_expanded_events(self.config.show_expanded_events);
                w = match self.config.full_document {
                    FullDocument::Default => w,
                    FullDocument::UpdateLookup => w.full_document(FullDocumentType::UpdateLookup),
                    FullDocument::WhenAvailable => w.full_document(FullDocumentType::WhenAvailable),
                    FullDocument::Required => w.full_document(FullDocumentType::Required),
                };
                w = match self.config.full_document_before_change {
                    FullDocumentBeforeChange::Off => w,
                    FullDocumentBeforeChange::WhenAvailable => {
                        w.full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable)
                    }
                    FullDocumentBeforeChange::Required => {
                        w.full_document_before_change(FullDocumentBeforeChangeType::Required)
                    }
                };
                if let Some(n) = self.config.batch_size {
                    w = w.batch_size(n);
                }
                w = match at {
                    OpenAt::Now | OpenAt::Snapshot => w,
                    OpenAt::Time(t) => w.start_at_operation_time(*t),
                    OpenAt::After(token) => w.start_after(to_resume_token(token)),
                };
                w.await.map(|cs| cs.with_type::<RawDocumentBuf>())
            }};
        }

        match &self.scope {
            Scope::Deployment => configure!(self.client.watch()),
            Scope::Database(db) | Scope::Collections(db, _) => {
                let db = self.client.database(db);
                configure!(db.watch())
            }
            Scope::Collection(db, coll) => {
                let coll = self.client.database(db).collection::<Document>(coll);
                configure!(coll.watch())
            }
        }
    }

    pub async fn run(mut self) -> Result<(), ()> {
        let (mut at, initial, mut snapshot_resume) = match self.initial_position() {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.error("checkpoint_failed", &e.to_string());
                return Err(());
            }
        };
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms);
        let mut acks = Acks::new(self.state.clone(), initial, interval);
        let (finalizer, mut ack_stream) = OrderedFinalizer::<String>::new();
        let progress = StreamProgress::register(&self.cx.tags);
        let source_id: Arc<str> = Arc::from(self.cx.key.as_str());
        let skip_oversized = self.config.on_oversized_event == OnOversizedEvent::Skip;
        let shutdown = self.cx.shutdown.clone();
        let acknowledgements = self.cx.acknowledgements;
        let mut out = self.out.take().expect("run is called once");
        let mut attempt: u32 = 0;
        let mut recoveries: u32 = 0;
        let mut result = Ok(());

        'outer: loop {
            if let OpenAt::Snapshot = at {
                // A resnapshot waits until events before it are resolved, so
                // none of them moves the checkpoint afterwards.
                while acks.outstanding() > 0 {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        n = ack_stream.next() => n,
                    };
                    let Some((status, token)) = next else { break };
                    acks.resolved(status, token);
                }
                match self
                    .snapshot(&mut out, &source_id, snapshot_resume.take())
                    .await
                {
                    SnapshotEnd::Complete(token) => {
                        acks.reset(token.clone());
                        if self.config.snapshot == SnapshotMode::InitialOnly {
                            break 'outer;
                        }
                        at = OpenAt::After(token);
                    }
                    SnapshotEnd::Stopped => break 'outer,
                    SnapshotEnd::Failed => {
                        result = Err(());
                        break 'outer;
                    }
                }
            }
            let opened = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'outer,
                r = self.open(&at) => r,
            };
            let mut stream = match opened {
                Ok(s) => {
                    if attempt > 0 {
                        tracing::info!(source = %self.cx.key, "Change stream reopened.");
                    }
                    attempt = 0;
                    s
                }
                Err(e) => match self.recover(&e, &mut attempt, &mut recoveries, &at).await {
                    Some(next) => {
                        at = next;
                        continue;
                    }
                    None => {
                        result = Err(());
                        break 'outer;
                    }
                },
            };

            loop {
                // Take in acknowledgements that are ready. Never race them
                // against `next_if_any`: dropping an in-flight getMore could
                // lose its batch.
                while let Some((status, token)) = ack_stream.ready() {
                    acks.resolved(status, token);
                }
                if let Err(e) = acks.flush(false) {
                    self.error("checkpoint_failed", &e.to_string());
                }
                if let Some(t) = acks.committed().and_then(token_cluster_time) {
                    progress.committed_at(t.time);
                }

                let next = tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    n = stream.next_if_any() => n,
                };
                match next {
                    Ok(Some(raw)) => {
                        let Some(token) = event_token(&raw) else {
                            self.error("missing_resume_token", "An event has no `_id._data` resume token; a `pipeline` stage must have removed `_id`. Keep `_id` in every event.");
                            result = Err(());
                            break 'outer;
                        };
                        if let Some(bytes) = skip_oversized
                            .then(|| raw.get_i64(OVERSIZED_FIELD).ok())
                            .flatten()
                        {
                            OversizedEventSkipped {
                                namespace: &namespace_of(&raw),
                                document_key: &raw
                                    .get_document("documentKey")
                                    .ok()
                                    .and_then(|k| bson::Document::try_from(k).ok())
                                    .map(|k| Bson::Document(k).into_relaxed_extjson().to_string())
                                    .unwrap_or_else(|| "(none)".into()),
                                bytes,
                                token: &token,
                            }
                            .emit(&self.cx.tags);
                            at = OpenAt::After(token);
                            continue;
                        }
                        let event_time = event_time(&raw);
                        if let Ok(t) = raw.get_timestamp("clusterTime") {
                            progress.read_up_to(t.time);
                        }
                        let event = LogEvent::new(
                            raw,
                            EventMetadata {
                                source_id: Arc::clone(&source_id),
                                position: Some(Position(token.clone())),
                                event_time,
                            },
                        );
                        let (event, receiver) = if acknowledgements {
                            let (batch, receiver) = BatchNotifier::new_with_receiver();
                            (event.with_batch_notifier(&batch), Some(receiver))
                        } else {
                            (event, None)
                        };
                        let sent = tokio::select! {
                            _ = shutdown.cancelled() => break 'outer,
                            sent = out.send(Event::Log(event)) => sent,
                        };
                        if sent.is_err() {
                            break 'outer;
                        }
                        match receiver {
                            Some(receiver) => {
                                acks.emitted();
                                finalizer.add(receiver, token.clone());
                            }
                            None => acks.sent_unacknowledged(token.clone()),
                        }
                        recoveries = 0;
                        at = OpenAt::After(token);
                    }
                    Ok(None) if stream.is_alive() => {
                        // Idle: the post-batch token is the server's promise
                        // that nothing before it is pending.
                        let pbrt = stream.resume_token().and_then(|t| token_hex(&t));
                        if let Some(ts) = pbrt.as_deref().and_then(token_cluster_time) {
                            progress.read_up_to(ts.time);
                            if let Some(time) =
                                DateTime::<Utc>::from_timestamp(i64::from(ts.time), 0)
                            {
                                let watermark = Event::Watermark(Watermark {
                                    source_id: Arc::clone(&source_id),
                                    time,
                                });
                                let sent = tokio::select! {
                                    _ = shutdown.cancelled() => break 'outer,
                                    sent = out.send(watermark) => sent,
                                };
                                if sent.is_err() {
                                    break 'outer;
                                }
                            }
                        }
                        acks.idle(pbrt.clone());
                        if let (Some(t), OpenAt::Now | OpenAt::Time(_)) = (&pbrt, &at) {
                            // Nothing emitted yet: reopen from here, not from
                            // "now" again, if the stream breaks.
                            at = OpenAt::After(t.clone());
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(
                            source = %self.cx.key,
                            "Change stream was invalidated (collection dropped or renamed, or database dropped); reopening after the invalidate event."
                        );
                        continue 'outer;
                    }
                    Err(e) => match self.recover(&e, &mut attempt, &mut recoveries, &at).await {
                        Some(next) => {
                            at = next;
                            continue 'outer;
                        }
                        None => {
                            result = Err(());
                            break 'outer;
                        }
                    },
                }
            }
        }

        // Stop sending so sinks can finish, then wait for every outstanding
        // acknowledgement (the topology bounds this wait) and write the
        // final checkpoint.
        drop(out);
        drop(finalizer);
        while let Some((status, token)) = ack_stream.next().await {
            acks.resolved(status, token);
        }
        if let Err(e) = acks.flush(true) {
            self.error("checkpoint_failed", &e.to_string());
            result = Err(());
        }
        tracing::info!(
            source = %self.cx.key,
            checkpoint = acks.committed().unwrap_or("none"),
            "Change stream source stopped."
        );
        // Close connections now, while the runtime still runs the driver's
        // background tasks.
        self.client.clone().shutdown().immediate(true).await;
        result
    }

    pub(super) fn error(&self, error_type: &'static str, message: &str) {
        ComponentError {
            error_type,
            stage: Stage::Receiving,
            message,
        }
        .emit(&self.cx.tags);
    }

    /// Decides how to go on after `e`: `Some(position)` to reopen there
    /// (after a pause for transient errors), `None` to stop the source.
    /// A `None` on shutdown during the pause is not an error, so it returns
    /// the current position and lets the shutdown check end the loop.
    async fn recover(
        &self,
        e: &mongodb::error::Error,
        attempt: &mut u32,
        recoveries: &mut u32,
        at: &OpenAt,
    ) -> Option<OpenAt> {
        match self.classify(e) {
            Failure::Retry => {
                *attempt += 1;
                self.pause(*attempt, e).await;
                Some(at.clone())
            }
            Failure::HistoryLost => self.history_lost(at, recoveries, e),
            Failure::Fatal => {
                let hint = match e.kind.as_ref() {
                    ErrorKind::Command(c) if c.code == 10334 => " An event is over MongoDB's 16 MB limit (BSONObjectTooLarge), usually a large document with its pre-image or post-image. Set on_oversized_event = \"skip\" to leave such events out (counted and logged), or drop large fields with `pipeline`.",
                    _ => "",
                };
                self.error(
                    "stream_failed",
                    &format!("Change stream failed: {}.{hint}", redact::error(e)),
                );
                None
            }
        }
    }

    pub(super) fn classify(&self, e: &mongodb::error::Error) -> Failure {
        match e.kind.as_ref() {
            ErrorKind::Command(c) => match c.code {
                286 => Failure::HistoryLost,
                280 if c.message.contains("resume") && c.message.contains("not found") => {
                    Failure::HistoryLost
                }
                // Authentication, authorization, invalid pipeline or options,
                // oversized event: retrying cannot help.
                18 | 13 | 2 | 9 | 14 | 15 | 16 | 40324 | 280 | 10334 => Failure::Fatal,
                _ => Failure::Retry,
            },
            ErrorKind::Authentication { .. }
            | ErrorKind::InvalidArgument { .. }
            | ErrorKind::BsonDeserialization(_) => Failure::Fatal,
            _ => Failure::Retry,
        }
    }

    /// Waits before reopening: exponential backoff with jitter, 0.5 s to
    /// 30 s, cut short by shutdown (the open loop then sees it and stops).
    pub(super) async fn pause(&self, attempt: u32, e: &mongodb::error::Error) {
        let base = 0.5_f64 * 2f64.powi(attempt.min(6) as i32 - 1);
        let delay = base.min(30.0) * rand::rng().random_range(0.5..1.0);
        StreamInterrupted {
            error: &redact::error(e),
            retry_in_secs: delay,
        }
        .emit(&self.cx.tags);
        tokio::select! {
            _ = self.cx.shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs_f64(delay)) => {}
        }
    }

    fn history_lost(
        &self,
        at: &OpenAt,
        recoveries: &mut u32,
        e: &mongodb::error::Error,
    ) -> Option<OpenAt> {
        let token = match at {
            OpenAt::After(t) => t.as_str(),
            _ => "(start position)",
        };
        match self.config.on_history_lost {
            OnHistoryLost::Fail => {
                self.error(
                    "history_lost",
                    &format!(
                        "The checkpoint is no longer in the oplog ({}). Resume token: {token}. Changes since then cannot be streamed. To continue from now, set on_history_lost = \"reset_to_now\" or start_at = \"now\" (and re-copy what you need), or move {} away.",
                        redact::error(e),
                        self.state.path().display()
                    ),
                );
                None
            }
            OnHistoryLost::Resnapshot if *recoveries < self.config.max_consecutive_recoveries => {
                *recoveries += 1;
                HistoryLostReset {
                    token,
                    action: "copying the collections again (on_history_lost = \"resnapshot\")",
                }
                .emit(&self.cx.tags);
                Some(OpenAt::Snapshot)
            }
            OnHistoryLost::ResetToNow if *recoveries < self.config.max_consecutive_recoveries => {
                *recoveries += 1;
                HistoryLostReset {
                    token,
                    action: "continuing from now (on_history_lost = \"reset_to_now\")",
                }
                .emit(&self.cx.tags);
                Some(OpenAt::Now)
            }
            OnHistoryLost::ResetToNow | OnHistoryLost::Resnapshot => {
                self.error(
                    "history_lost",
                    &format!(
                        "History lost {} times in a row without progress; giving up (max_consecutive_recoveries).",
                        *recoveries
                    ),
                );
                None
            }
        }
    }
}

fn to_resume_token(hex: &str) -> ResumeToken {
    bson::from_document(doc! { "_data": hex })
        .expect("a {_data: string} document is a resume token")
}

pub(super) fn token_hex(token: &ResumeToken) -> Option<String> {
    bson::to_document(token)
        .ok()
        .and_then(|d| d.get_str("_data").ok().map(str::to_string))
}

/// `_id._data` of a raw change event.
pub fn event_token(raw: &RawDocumentBuf) -> Option<String> {
    raw.get_document("_id")
        .ok()?
        .get_str("_data")
        .ok()
        .map(str::to_string)
}

/// The event's time: clusterTime, else wallTime.
fn event_time(raw: &RawDocumentBuf) -> Option<DateTime<Utc>> {
    if let Ok(t) = raw.get_timestamp("clusterTime") {
        return DateTime::from_timestamp(i64::from(t.time), 0);
    }
    raw.get_datetime("wallTime").ok().map(|d| d.to_chrono())
}

/// Marks an event whose documents exceed the limit (`on_oversized_event =
/// "skip"`); its large fields are removed on the server so it can be read.
const OVERSIZED_FIELD: &str = "_mongo_adls_oversized_bytes";

/// Stages appended after the user's: measure `fullDocument`,
/// `fullDocumentBeforeChange` and `updateDescription`, and past 16 MB minus
/// room for the rest of the event, drop them and mark the event, which the
/// source then skips. Without this the server fails the whole stream with
/// BSONObjectTooLarge (6.0 has no `$changeStreamSplitLargeEvent`).
fn oversized_stages() -> Vec<Document> {
    const LIMIT: i64 = 16 * 1024 * 1024 - 512 * 1024;
    let size = |field: &str| doc! { "$bsonSize": { "$ifNull": [format!("${field}"), {}] } };
    let total = doc! { "$add": [size("fullDocument"), size("fullDocumentBeforeChange"), size("updateDescription")] };
    let drop_if_big = |field: &str| {
        doc! { "$cond": [{ "$gt": [format!("${OVERSIZED_FIELD}"), LIMIT] }, "$$REMOVE", format!("${field}")] }
    };
    vec![
        doc! { "$set": { OVERSIZED_FIELD: { "$toLong": total } } },
        doc! { "$set": {
            "fullDocument": drop_if_big("fullDocument"),
            "fullDocumentBeforeChange": drop_if_big("fullDocumentBeforeChange"),
            "updateDescription": drop_if_big("updateDescription"),
            OVERSIZED_FIELD: { "$cond": [{ "$gt": [format!("${OVERSIZED_FIELD}"), LIMIT] }, format!("${OVERSIZED_FIELD}"), "$$REMOVE"] },
        } },
    ]
}

fn namespace_of(raw: &RawDocumentBuf) -> String {
    let ns = raw.get_document("ns").ok();
    let part = |k| ns.and_then(|n| n.get_str(k).ok()).unwrap_or("");
    format!("{}.{}", part("db"), part("coll"))
}
