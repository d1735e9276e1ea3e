//! Reading the change stream.
//!
//! Events are read raw (`RawDocumentBuf`) and forwarded untouched, with the
//! resume token as their position and the cluster time as their event time.
//! The stream is always (re)opened with `startAfter` the last emitted token:
//! unlike `resumeAfter` it also works after an `invalidate` event, so a
//! collection that is dropped or renamed does not stop the source.

use std::{ops::ControlFlow, sync::Arc};

use crate::{
    event::{BatchNotifier, BatchStatusReceiver, EventMetadata, LogEvent, Position},
    finalizer::{FinalizerStream, OrderedFinalizer},
    internal_events::ComponentTags,
    internal_events::{
        mongodb::{OplogWindow, StreamProgress},
        ComponentError, Stage,
    },
    shutdown::ShutdownSignal,
    sources::SourceContext,
    state_store::StateDoc,
    topology::{Sent, SourceSender},
};
use bson::RawDocumentBuf;
use futures::StreamExt;
use mongodb::{change_stream::ChangeStream, Client};

use super::{
    checkpoint::{token_cluster_time, Acks, Mark, SnapshotProgress},
    oversized::skip_if_oversized,
    read_ahead::{Read, ReadAhead, REPLY_TARGET_BYTES},
    settings::{Settings, SnapshotMode},
    signal::read as read_signal,
    state_check::check_state,
    watch::{client_options, describe_scope, watch, OpenAt, Stamp},
};

mod idle;
mod incremental;
mod progress;
mod recovery;
mod signal;
mod snapshot;
mod start;

use incremental::CopyRun;
use snapshot::SnapshotEnd;

/// Fewest events per batch however large they are.
const MIN_BATCH_SIZE: u32 = 16;
/// Events read before their average size picks the batch size.
const SIZE_SAMPLE: usize = 256;

pub struct ChangeStreamSource {
    pub(super) settings: Settings,
    pub(super) cx: Context,
    /// Taken by `run`; dropping it tells the sinks the source is done.
    out: Option<SourceSender>,
    pub(super) client: Client,
    pub(super) state: StateDoc,
    /// This pipeline's id ([`crate::lineage`]), kept in the checkpoint.
    pub(super) pipeline_id: String,
}

/// The parts of the `SourceContext` the source keeps besides its output.
pub(super) struct Context {
    pub(super) key: String,
    pub(super) tags: ComponentTags,
    pub(super) shutdown: ShutdownSignal,
    pub(super) acknowledgements: bool,
}

/// Why the source stops: `Ok` on shutdown or when its work is done, `Err`
/// after a failure it reported.
pub(super) type Stop = Result<(), ()>;

/// What `run` carries from one opening of the stream to the next.
pub(super) struct RunState {
    /// Where the stream opens next.
    pub(super) at: OpenAt,
    /// An unfinished snapshot's start token and progress, for the first
    /// snapshot only.
    snapshot_resume: Option<(String, SnapshotProgress)>,
    acks: Acks,
    finalizer: OrderedFinalizer<Mark>,
    ack_stream: FinalizerStream<Mark>,
    /// An incremental snapshot's stream side (`snapshot = "incremental"`).
    copy: Option<CopyRun>,
    /// The acknowledgement of the hand-over being forwarded.
    hand_over: Option<HandOverAck>,
    progress: StreamProgress,
    source_id: Arc<str>,
    out: SourceSender,
    /// Events per server batch: `batch_size`, or fewer for large events
    /// ([`fit_batch_size`]).
    batch_size: Option<u32>,
    /// Transient failures in a row, for the backoff.
    pub(super) attempt: u32,
    /// History-lost recoveries without an event in between.
    pub(super) recoveries: u32,
}

/// One acknowledgement for the events of one hand-over (a server batch),
/// as Vector's sources share a batch notifier per read: the events carry
/// one notifier, and one entry, the last sent event's token, goes to the
/// ordered finalizer. Per event, the notifier, its channel and an entry in
/// the finalizer's queue cost about a tenth of the agent's CPU (`perf`,
/// 200,000 × 1 KB into `file://`). The checkpoint moves by whole hand-overs,
/// which adds at most one hand-over to what a restart after a crash
/// replays (the sinks recognise replays).
struct HandOverAck {
    batch: Arc<BatchNotifier>,
    receiver: BatchStatusReceiver,
    /// The token of the last event sent with `batch`.
    last: Option<String>,
}

impl HandOverAck {
    fn new() -> Self {
        let (batch, receiver) = BatchNotifier::new_with_receiver();
        Self {
            batch,
            receiver,
            last: None,
        }
    }
}

impl RunState {
    /// Registers what was sent of the current hand-over, if anything: its
    /// status resolves once every sink has finished with all of it.
    fn end_hand_over(&mut self) {
        let Some(HandOverAck {
            batch,
            receiver,
            last,
        }) = self.hand_over.take()
        else {
            return;
        };
        drop(batch);
        if let Some(token) = last {
            self.finalizer.add(receiver, Mark::Stream(token));
            self.acks.emitted();
        }
    }
}

impl ChangeStreamSource {
    pub async fn new(settings: Settings, cx: SourceContext) -> crate::Result<Self> {
        let options = client_options(&settings.uri, "mongo-adls").await?;
        let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
        tracing::info!(
            source = %cx.key,
            hosts = %hosts.join(","),
            scope = %describe_scope(&settings.scope),
            "Watching MongoDB."
        );
        let client = Client::with_options(options).map_err(|e| super::errors::describe(&e))?;
        let state = cx
            .state
            .as_ref()
            .ok_or("the global `data_dir` (or a `[state]` store) must be set")?
            .doc("checkpoint.json");
        let pipeline_id = check_state(&settings, &cx, &state).await?;
        cx.pipelines.publish(&cx.key, &pipeline_id);
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
            settings,
            client,
            state,
            pipeline_id,
        })
    }

    /// Opens the stream at `at`, with server batches of `batch_size`
    /// events.
    pub(super) async fn open(
        &self,
        at: &OpenAt,
        batch_size: Option<u32>,
    ) -> mongodb::error::Result<ChangeStream<RawDocumentBuf>> {
        watch(&self.client, &self.settings, at, batch_size).await
    }

    /// Snapshots when due, opens the stream and forwards its events,
    /// reopening it after transient errors, until shutdown or a fatal error;
    /// then flushes the checkpoint.
    pub async fn run(mut self) -> Result<(), ()> {
        tokio::spawn(super::oplog::watch(
            self.client.clone(),
            OplogWindow::register(&self.cx.tags),
            self.cx.shutdown.clone(),
        ));
        let mut run = match self.start().await {
            ControlFlow::Continue(run) => run,
            ControlFlow::Break(stop) => return stop,
        };
        let stop = loop {
            if let ControlFlow::Break(stop) = self.run_once(&mut run).await {
                break stop;
            }
        };
        self.stop(run, stop).await
    }

    /// One opening of the stream: snapshot first if due, open, forward.
    /// Continues when the stream is to be opened again at `run.at`.
    async fn run_once(&self, run: &mut RunState) -> ControlFlow<Stop> {
        if let OpenAt::Snapshot = run.at {
            self.snapshot_first(run).await?;
        }
        match self.open_stream(run).await? {
            Some(stream) => self.forward_events(run, stream).await,
            None => ControlFlow::Continue(()),
        }
    }

    /// Copies the collections, then sets the stream to open after the
    /// copy's start token.
    async fn snapshot_first(&self, run: &mut RunState) -> ControlFlow<Stop> {
        // A resnapshot waits until events before it are resolved, so none
        // of them moves the checkpoint afterwards.
        self.wait_for_acks(run).await?;
        let resume = run.snapshot_resume.take();
        match self.snapshot(&mut run.out, &run.source_id, resume).await {
            SnapshotEnd::Complete(token) => {
                run.acks.reset(token.clone());
                if self.settings.snapshot == SnapshotMode::InitialOnly {
                    return ControlFlow::Break(Ok(()));
                }
                run.at = OpenAt::After(token);
                ControlFlow::Continue(())
            }
            SnapshotEnd::Stopped => ControlFlow::Break(Ok(())),
            SnapshotEnd::Failed => ControlFlow::Break(Err(())),
        }
    }

    /// Waits until every emitted event is resolved; breaks on shutdown.
    async fn wait_for_acks(&self, run: &mut RunState) -> ControlFlow<Stop> {
        while run.acks.outstanding() > 0 {
            let next = tokio::select! {
                _ = self.cx.shutdown.cancelled() => return ControlFlow::Break(Ok(())),
                n = run.ack_stream.next() => n,
            };
            let Some((status, mark)) = next else { break };
            run.acks.resolved(status, mark);
        }
        ControlFlow::Continue(())
    }

    /// Opens the stream at `run.at`; `None` when that failed and `recover`
    /// chose to open it again.
    async fn open_stream(
        &self,
        run: &mut RunState,
    ) -> ControlFlow<Stop, Option<ChangeStream<RawDocumentBuf>>> {
        let opened = tokio::select! {
            biased;
            _ = self.cx.shutdown.cancelled() => return ControlFlow::Break(Ok(())),
            r = self.open(&run.at, run.batch_size) => r,
        };
        match opened {
            Ok(stream) => {
                if run.attempt > 0 {
                    tracing::info!(source = %self.cx.key, "Change stream reopened.");
                }
                tracing::debug!(source = %self.cx.key, "Change stream open.");
                run.attempt = 0;
                ControlFlow::Continue(Some(stream))
            }
            Err(e) => {
                self.recover(&e, run).await?;
                ControlFlow::Continue(None)
            }
        }
    }

    /// Forwards the stream's events, read ahead by a task of their own
    /// ([`ReadAhead`]). Continues when the stream is to be opened again at
    /// `run.at`.
    async fn forward_events(
        &self,
        run: &mut RunState,
        stream: ChangeStream<RawDocumentBuf>,
    ) -> ControlFlow<Stop> {
        let mut reads = ReadAhead::spawn(stream, self.settings.read_ahead_bytes);
        let flow = self.forward_reads(run, &mut reads).await;
        // However it ended (shutdown seen while forwarding included), what
        // was sent of the hand-over is registered, and the reading task is
        // gone, its cursor killed, before the stream is opened again or the
        // client shut down.
        run.end_hand_over();
        reads.close().await;
        flow
    }

    async fn forward_reads(&self, run: &mut RunState, reads: &mut ReadAhead) -> ControlFlow<Stop> {
        let (mut events, mut bytes) = (0usize, 0usize);
        // The hand-over being forwarded; its permit frees its bytes of the
        // read-ahead budget once all are.
        let mut handed = Vec::<RawDocumentBuf>::new().into_iter();
        let mut _budget = None;
        loop {
            if let Some(raw) = handed.next() {
                events += 1;
                bytes += raw.as_bytes().len();
                self.forward_event(run, raw).await?;
                if events == SIZE_SAMPLE {
                    if let Some(fit) = self.fit_batch_size(run.batch_size, bytes / events) {
                        tracing::info!(
                            source = %self.cx.key,
                            average_event_bytes = bytes / events,
                            batch_size = fit,
                            "Reopening the change stream with batches that keep a server reply near {} MiB.",
                            REPLY_TARGET_BYTES >> 20
                        );
                        run.batch_size = Some(fit);
                        return ControlFlow::Continue(());
                    }
                }
                continue;
            }
            run.end_hand_over();
            _budget = None;
            // Between hand-overs, not per event: each takes the whole
            // acknowledgement stream and may write the checkpoint.
            self.take_acks(run).await?;
            match self.next_read(run, reads).await? {
                Some(Read::Events(docs, permit)) => {
                    handed = docs.into_iter();
                    _budget = Some(permit);
                }
                Some(Read::Idle(token)) => self.on_idle(run, token).await?,
                Some(Read::CaughtUp { burst }) => {
                    // At the last event read (where the stream would reopen).
                    // After a burst the sinks write everything they hold;
                    // during a trickle only sizeable batches.
                    let last = match &run.at {
                        OpenAt::After(token) => Some(token.clone()),
                        _ => None,
                    };
                    self.watermark(run, last.as_deref(), burst).await?;
                }
                None => {
                    // The reading task panicked: a bug, not worth a hot
                    // loop of reopening.
                    self.error(
                        "stream_reader_failed",
                        "The change stream's reading task stopped unexpectedly; stopping the source. A restart resumes from the checkpoint.",
                    );
                    return ControlFlow::Break(Err(()));
                }
                Some(Read::Invalidated) => {
                    tracing::warn!(
                        source = %self.cx.key,
                        "Change stream was invalidated (collection dropped or renamed, or database dropped); reopening after the invalidate event."
                    );
                    return ControlFlow::Continue(());
                }
                Some(Read::Failed(e)) => return self.recover(&e, run).await,
            }
        }
    }

    /// The next read of the stream. While nothing is queued (or the copy
    /// has waited long enough, [`CopyRun::starved`]) and an incremental
    /// snapshot has a round to run, the round runs first.
    async fn next_read(
        &self,
        run: &mut RunState,
        reads: &mut ReadAhead,
    ) -> ControlFlow<Stop, Option<Read>> {
        while Self::copy_due(run) {
            if !run.copy.as_ref().is_some_and(CopyRun::starved) {
                if let Some(read) = reads.try_next() {
                    return ControlFlow::Continue(Some(read));
                }
            }
            self.copy_round(run).await?;
            self.take_acks(run).await?;
        }
        // Safe to race: a queued item stays queued.
        tokio::select! {
            _ = self.cx.shutdown.cancelled() => ControlFlow::Break(Ok(())),
            n = reads.next() => ControlFlow::Continue(n),
        }
    }

    /// A batch size for events of `average` bytes when `current` is off by
    /// more than half from one that keeps a reply near
    /// [`REPLY_TARGET_BYTES`]; never more than the configured `batch_size`.
    /// The driver holds a reply and the batch decoded from it at once, and
    /// the server fills up to 16 MB: with 16 KB events, 5,000 a batch cost
    /// 32 MB where 256 cost 8.
    fn fit_batch_size(&self, current: Option<u32>, average: usize) -> Option<u32> {
        let configured = self.settings.batch_size?;
        let current = current.unwrap_or(configured);
        let fit = u32::try_from(REPLY_TARGET_BYTES / average.max(1))
            .unwrap_or(u32::MAX)
            .clamp(MIN_BATCH_SIZE.min(configured), configured);
        (fit < current / 2 || fit >= current.saturating_mul(2)).then_some(fit)
    }

    /// Takes in the acknowledgements that are ready and writes the
    /// checkpoint when due.
    async fn take_acks(&self, run: &mut RunState) -> ControlFlow<Stop> {
        while let Some((status, mark)) = run.ack_stream.ready() {
            run.acks.resolved(status, mark);
        }
        if let Err(e) = run.acks.flush(false).await {
            self.error("checkpoint_failed", &e.to_string());
            if e.is_condition_failed() {
                // Someone else wrote the checkpoint: every later write
                // would fail the same way, so the checkpoint would stand
                // still while events keep flowing. Stop instead.
                self.error(
                    "checkpoint_failed",
                    "The checkpoint changed since this source read it (another writer, or the file was replaced); stopping. A restart reads it again.",
                );
                return ControlFlow::Break(Err(()));
            }
        }
        if let Some(t) = run.acks.committed().and_then(token_cluster_time) {
            run.progress.committed_at(t.time);
        }
        ControlFlow::Continue(())
    }

    /// Sends one change event on, unless it is skipped as oversized.
    async fn forward_event(&self, run: &mut RunState, raw: RawDocumentBuf) -> ControlFlow<Stop> {
        let stamp = Stamp::of(&raw);
        let event_time = stamp.event_time();
        let Some(token) = stamp.token else {
            self.error("missing_resume_token", "An event has no `_id._data` resume token; a `pipeline` stage must have removed `_id`. Keep `_id` in every event.");
            return ControlFlow::Break(Err(()));
        };
        if run.copy.as_ref().is_some_and(|c| c.due_before(&token)) {
            self.copy_before(run, &token).await?;
        }
        if let Some(c) = run.copy.as_mut() {
            c.passed(&token);
        }
        if let Some(signal) = read_signal(&self.settings, &raw) {
            self.on_signal(run, signal);
            run.at = OpenAt::After(token);
            return ControlFlow::Continue(());
        }
        if skip_if_oversized(
            self.settings.on_oversized_event,
            &raw,
            &token,
            &self.cx.tags,
        ) {
            run.at = OpenAt::After(token);
            return ControlFlow::Continue(());
        }
        if let Some(t) = stamp.cluster_time {
            run.progress.read_up_to(t.time);
        }
        let event = LogEvent::new(
            raw,
            EventMetadata {
                source_id: Arc::clone(&run.source_id),
                position: Some(Position(token.clone())),
                event_time,
            },
        );
        if self.cx.acknowledgements {
            let ack = run.hand_over.get_or_insert_with(HandOverAck::new);
            if !run
                .out
                .send_log_in(event, &ack.batch, &self.cx.shutdown)
                .await
            {
                return ControlFlow::Break(Ok(()));
            }
            ack.last = Some(token.clone());
        } else {
            match run
                .out
                .send_log(event, token.clone(), None, &self.cx.shutdown)
                .await
            {
                Sent::Unacknowledged(token) => run.acks.sent_unacknowledged(Mark::Stream(token)),
                Sent::Registered | Sent::Stopped => return ControlFlow::Break(Ok(())),
            }
        }
        run.recoveries = 0;
        run.at = OpenAt::After(token);
        ControlFlow::Continue(())
    }

    /// Stops sending so sinks can finish, waits for every outstanding
    /// acknowledgement (the topology bounds this wait), writes the final
    /// checkpoint and closes the client.
    async fn stop(&self, run: RunState, mut result: Stop) -> Result<(), ()> {
        let RunState {
            mut acks,
            finalizer,
            mut ack_stream,
            out,
            ..
        } = run;
        drop(out);
        drop(finalizer);
        while let Some((status, mark)) = ack_stream.next().await {
            acks.resolved(status, mark);
        }
        if let Err(e) = acks.flush(true).await {
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
}

/// A resume token's cluster time as RFC 3339, or `unknown`.
fn cluster_time_of(token: &str) -> String {
    super::checkpoint::token_cluster_time(token).map_or_else(
        || "unknown".into(),
        |t| crate::internal_events::rfc3339(i64::from(t.time)),
    )
}
