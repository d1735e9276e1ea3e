//! The sink's run loop: events are routed to their files and batched
//! ([`Batcher`]), due batches and seals ([`roll::due`]) become storage
//! requests ([`requests`]) within a budget of bytes in flight
//! (`sink/inflight.rs`; a few requests at a time per file), and each
//! request's outcome updates the state and acknowledges its events once a
//! block and the state that lists it are durable.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use futures::{stream::BoxStream, StreamExt};

use super::{
    batcher::{BatchLimits, Batcher, NotAdded, PendingBatch},
    encode::{self, EventFields},
    held::HeldWrites,
    layout::{Compression, Layout, Mode},
    per_event, recovery,
    requests::{self, BlockIds, BlockWrite, RetryingStorage, WriteRequest},
    roll::{self, Commit, DueCheck, RollPolicy, Watermarks},
    spill::Spill,
    state::{Block, FileKey, SinkState, StagedBlock},
};
use crate::{
    codecs::json::ExtendedJsonMode,
    event::{Event, EventFinalizers, EventStatus, LogEvent, Position},
    health::ComponentHealth,
    internal_events::{
        adls::{EncodeFailed, SinkMetrics},
        requests::RequestFailures,
        ComponentError, ComponentTags, EventsSent, Stage,
    },
    lineage::{Pipelines, SinkStateReport},
    retry::RetryPolicy,
    shutdown::ShutdownSignal,
    sinks::util::storage::Storage,
    sinks::{SinkContext, StreamSink},
};

/// How often batch timeouts and seal conditions are checked.
const TICK: Duration = Duration::from_millis(200);
/// How long a failed seal waits before it is tried again.
const SEAL_RETRY: Duration = Duration::from_secs(30);

mod inflight;
mod outcomes;

use inflight::{Inflight, RequestLimit};

/// What the sink runs with, resolved from its options by `config.rs`.
pub struct SinkSettings {
    pub limits: BatchLimits,
    pub commit: Commit,
    pub compression: Compression,
    pub json_mode: ExtendedJsonMode,
    pub roll: RollPolicy,
    /// A request's retries; its backoff also paces held writes.
    pub retry: RetryPolicy,
    /// With `limits.max_bytes`, the bytes in flight over all files
    /// (`concurrency` × `max_bytes`; see `sink/inflight.rs`).
    pub concurrency: usize,
    /// Requests in flight per file (`on_seal`; `every_batch` uses 1).
    pub concurrency_per_file: usize,
    /// Where batches wait past `limits.max_total_bytes`, if anywhere.
    pub spill: Option<Spill>,
}

pub struct AdlsSink {
    storage: RetryingStorage,
    state: SinkState,
    layout: Layout,
    batcher: Batcher,
    roll: RollPolicy,
    commit: Commit,
    compression: Compression,
    json_mode: ExtendedJsonMode,
    /// What may be in flight (see `sink/inflight.rs`).
    limit: RequestLimit,
    /// `batch.max_bytes`: the room intake needs to go on.
    max_batch_bytes: usize,
    tags: ComponentTags,
    sent: EventsSent,
    metrics: SinkMetrics,
    block_ids: BlockIds,
    held: HeldWrites,
    health: ComponentHealth,
    /// Fires when the agent stops: held writes are given up then.
    stopping: ShutdownSignal,
    watermarks: Watermarks,
    /// Write partial batches of at least this many bytes at the next
    /// opportunity (a source went idle or caught up).
    flush_partial: Option<usize>,
    /// When the open-file gauges were last set.
    gauges_at: Instant,
    /// The newest window whose first file was announced at INFO.
    announced_window: i64,
    /// What the state said at build, for the start check.
    report: SinkStateReport,
    /// Object names already in the lake that this sink's state does not
    /// know of (only after `--accept-data-gap` with a lost state): new
    /// files skip their part numbers instead of colliding with them.
    taken: HashSet<String>,
    inputs: Vec<String>,
    pipelines: Pipelines,
}

impl AdlsSink {
    /// The sink over `storage`, with the state loaded from `state`.
    pub fn new(
        settings: SinkSettings,
        layout: Layout,
        storage: Arc<dyn Storage>,
        state: SinkState,
        cx: SinkContext,
        lake_files: Vec<String>,
    ) -> Self {
        let SinkContext {
            key,
            globals,
            tags,
            stopping,
            inputs,
            pipelines,
            ..
        } = cx;
        let report = state.report(&key, lake_files.first().cloned());
        let taken = if globals.accept_data_gap {
            lake_files.into_iter().collect()
        } else {
            HashSet::new()
        };
        let metrics = SinkMetrics::register(&tags);
        let health = tags.health.clone();
        let backoff = settings.retry.backoff;
        let storage = RetryingStorage {
            storage,
            retry: settings.retry,
            metrics: metrics.clone(),
            failures: RequestFailures::register(&tags),
            tags: tags.clone(),
        };
        // Each block's commit lists every earlier one: in order.
        let per_file = match settings.commit {
            Commit::EveryBatch => 1,
            Commit::OnSeal => settings.concurrency_per_file,
        };
        Self {
            storage,
            state,
            layout,
            batcher: Batcher::new(settings.limits, per_file, settings.json_mode)
                .with_spill(settings.spill),
            roll: settings.roll,
            commit: settings.commit,
            compression: settings.compression,
            json_mode: settings.json_mode,
            limit: RequestLimit::new(settings.concurrency, settings.limits.max_bytes),
            max_batch_bytes: settings.limits.max_bytes,
            sent: EventsSent::register(&tags),
            metrics,
            tags,
            block_ids: BlockIds::new(),
            held: HeldWrites::new(backoff, health.clone()),
            health,
            stopping,
            watermarks: Watermarks::default(),
            flush_partial: None,
            gauges_at: Instant::now(),
            announced_window: i64::MIN,
            report,
            taken,
            inputs,
            pipelines,
        }
    }

    /// Stamps the state with the pipeline of each input source, so a later
    /// start can tell it from another pipeline's state.
    async fn adopt_pipelines(&mut self) -> Result<(), ()> {
        let mut changed = false;
        for source in &self.inputs {
            if let Some(pipeline) = self.pipelines.get(source) {
                changed |= self.state.adopt(source, &pipeline);
            }
        }
        if changed {
            if let Err(e) = self.state.save(Utc::now().timestamp()).await {
                self.error(
                    "state_write_failed",
                    &format!("Could not save the sink state: {e}"),
                );
                return Err(());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl StreamSink for AdlsSink {
    fn state_report(&self) -> Option<SinkStateReport> {
        (self.layout.mode() == Mode::Rolling).then(|| self.report.clone())
    }

    async fn run(mut self: Box<Self>, input: BoxStream<'static, Event>) -> Result<(), ()> {
        if let Err(e) = recovery::recover(&mut self.state, &self.storage, self.commit).await {
            self.error(
                "recovery_failed",
                &format!("Could not finish the commits of the previous run: {e}"),
            );
            return Err(());
        }
        self.adopt_pipelines().await?;
        // Events are taken in ready chunks so the bookkeeping in `schedule`
        // runs per chunk, not per event. A chunk is left as soon as a batch
        // fills, and resumed once intake is open again, so a chunk of large
        // events does not grow a batch far past its size (256 events of
        // 16 KB are 4 MB: blocks of 7 MB instead of 4.5).
        let mut input = input.ready_chunks(256).fuse();
        let mut chunk = Vec::new().into_iter();
        let mut input_done = false;
        let mut inflight = Inflight::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopping = self.stopping.clone();
        loop {
            // Held writes count against the limit: while storage is down
            // intake stops once they fill it.
            let accept = !input_done
                && self
                    .limit
                    .accepts(self.max_batch_bytes, &inflight, &self.held)
                && !self.batcher.is_full();
            tokio::select! {
                biased;
                Some(outcome) = inflight.next(), if !inflight.is_empty() => {
                    self.on_outcome(outcome, &mut inflight).await?;
                }
                () = std::future::ready(()), if accept && !chunk.as_slice().is_empty() => {
                    self.on_events(&mut chunk, &mut inflight);
                }
                events = input.next(), if accept && chunk.as_slice().is_empty() => match events {
                    Some(events) => {
                        chunk = events.into_iter();
                        self.on_events(&mut chunk, &mut inflight);
                    }
                    None => input_done = true,
                },
                _ = tick.tick() => {}
                // Storage still down as the agent stops: held writes would
                // keep intake shut, so the input could never end. Given up,
                // their events are replayed after the restart.
                _ = stopping.cancelled(), if self.held.len() > 0 => self.give_up_held(),
            }
            if input_done && inflight.is_empty() && self.held.len() > 0 {
                self.give_up_held();
            }
            self.schedule(&mut inflight, input_done).await?;
            if input_done && inflight.is_empty() && self.batcher.is_empty() {
                break;
            }
        }
        self.stop().await
    }
}

impl AdlsSink {
    /// Takes the events of `chunk` until one fills a batch.
    fn on_events(&mut self, chunk: &mut std::vec::IntoIter<Event>, inflight: &mut Inflight) {
        let full = self.batcher.full_batches();
        for event in chunk.by_ref() {
            self.on_event(event, inflight);
            if self.batcher.full_batches() > full {
                return;
            }
        }
    }

    fn on_event(&mut self, event: Event, inflight: &mut Inflight) {
        let mut log = match event {
            Event::Watermark(w) => {
                // A watermark comes from a source that has caught up:
                // nothing is left to batch with for now, so partial batches
                // are written now instead of waiting for
                // `batch.timeout_secs`. Only an idle source has every batch
                // written; one that caught up while events keep trickling
                // in would otherwise turn each of them into a block of its
                // own, so only batches of a quarter block or more go then.
                self.watermarks.advance(&w.source_id, w.time);
                let min = if w.idle {
                    0
                } else {
                    self.batcher.limits().max_bytes / 4
                };
                self.flush_partial = Some(self.flush_partial.map_or(min, |m| m.min(min)));
                return;
            }
            Event::Log(log) => log,
        };
        let finalizers = log.take_finalizers();
        let position = log.metadata.position.take();
        // The top-level fields once; time, namespace and record from them.
        let fields = match EventFields::read(&log.payload) {
            Ok(fields) => fields,
            Err(error) => {
                // What can be read still moves the watermark, as a
                // well-formed event of that time would.
                let time = encode::partition_time(&log.payload, Utc::now());
                self.watermarks.advance(&log.metadata.source_id, time);
                EncodeFailed {
                    error: &error.to_string(),
                }
                .emit(&self.tags);
                finalizers.finalize(EventStatus::Rejected);
                return;
            }
        };
        let time = fields.partition_time(Utc::now());
        self.watermarks.advance(&log.metadata.source_id, time);
        match self.layout.mode() {
            Mode::PerEvent => {
                self.put_event(&log, &fields, time, position.as_ref(), finalizers, inflight)
            }
            Mode::Rolling => self.add_to_batch(&log, &fields, time, position, finalizers),
        }
    }

    fn add_to_batch(
        &mut self,
        log: &LogEvent,
        fields: &EventFields<'_>,
        time: chrono::DateTime<Utc>,
        position: Option<Position>,
        finalizers: EventFinalizers,
    ) {
        let key = self
            .batcher
            .route(self.layout.windows(), fields.namespace(), time);
        if let (Some(p), Some(hw)) = (&position, self.state.high_water(&key)) {
            if p <= hw {
                // Replayed after a restart and already in a file.
                self.metrics.replayed_skipped(1);
                finalizers.finalize(EventStatus::Delivered);
                return;
            }
        }
        match self
            .batcher
            .add(key, log, fields, time, position, finalizers)
        {
            Ok(()) => {}
            Err(NotAdded::HeldBack(finalizers)) => finalizers.finalize(EventStatus::Errored),
            Err(NotAdded::Malformed(finalizers, error)) => {
                EncodeFailed { error: &error }.emit(&self.tags);
                finalizers.finalize(EventStatus::Rejected);
            }
        }
    }

    fn put_event(
        &mut self,
        log: &LogEvent,
        fields: &EventFields<'_>,
        time: chrono::DateTime<Utc>,
        position: Option<&Position>,
        finalizers: EventFinalizers,
        inflight: &mut Inflight,
    ) {
        let compression = self.compression;
        let request = per_event::put_request(
            self.storage.clone(),
            &self.layout,
            self.json_mode,
            (log, fields, time, position),
            finalizers,
            |data| encode::compress(compression, data).0,
        );
        match request {
            Ok((bytes, request)) => inflight.push(bytes, request),
            Err((finalizers, error)) => {
                EncodeFailed { error: &error }.emit(&self.tags);
                finalizers.finalize(EventStatus::Rejected);
            }
        }
    }

    /// Starts the writes and seals that are due, within the concurrency
    /// limit. An error is a seal intent the state could not record.
    async fn schedule(&mut self, inflight: &mut Inflight, input_done: bool) -> Result<(), ()> {
        let now = DueCheck {
            instant: Instant::now(),
            wall: Utc::now().timestamp(),
            watermark: self.watermarks.effective(),
            flush_partial: if input_done {
                Some(0)
            } else {
                self.flush_partial
            },
        };
        for retry in self.held.due(self.limit.room_for_held(inflight)) {
            inflight.push(retry.bytes(), retry.into_request(self.storage.clone()));
        }
        if self.gauges_at.elapsed() >= Duration::from_secs(1) {
            self.gauges_at = Instant::now();
            let oldest = self.state.open_files().map(|f| f.opened_at).min();
            self.metrics
                .oldest_open_file_age(oldest.map_or(0, |opened| now.wall - opened));
            if let Some((_, bytes)) = self.batcher.spill_usage() {
                self.metrics.spill_bytes(bytes);
            }
        }
        match self.batcher.spill_over_budget() {
            Ok(0) => {}
            Ok(moved) => self.metrics.spilled(moved),
            Err(e) => self.spill_failed("write to", &e),
        }
        let due = roll::due(&self.roll, &self.batcher, &self.state, &now);
        // A window whose write is held does not keep partial flushing on.
        let limit = self.batcher.stage_limit();
        let busy_with_batch = self
            .batcher
            .iter()
            .any(|(k, f)| !f.can_stage(limit) && f.batch().is_some() && !self.held.holds(k));
        for key in due.flushes {
            if self.state.open_file(&key).is_some_and(|f| f.sealing) {
                // Its seal commits exactly the recorded blocks: the batch
                // waits for the next part.
                continue;
            }
            let bytes = self
                .batcher
                .get(&key)
                .and_then(|f| f.batch())
                .map(|b| b.len());
            if !self
                .limit
                .room_for(bytes.unwrap_or(0), inflight, &self.held)
            {
                return Ok(());
            }
            match self.batcher.take(&key) {
                Some(Ok((batch, seq))) => {
                    inflight.push(batch.data.len(), self.stage_request(key, batch, seq))
                }
                Some(Err(lost)) => {
                    self.spill_failed("read back from", &lost.error);
                    lost.batch.finalizers.finalize(EventStatus::Errored);
                }
                None => {}
            }
        }
        if !busy_with_batch {
            self.flush_partial = None;
        }
        for key in due.seals {
            if !self.limit.room_for(0, inflight, &self.held) {
                return Ok(());
            }
            if let Some(request) = self.seal_request(key).await? {
                inflight.push(0, request);
            }
        }
        Ok(())
    }

    /// The Put Block of a batch, into the window's open file or a new part.
    fn stage_request(&mut self, key: FileKey, batch: PendingBatch, seq: u64) -> WriteRequest {
        let (part, object) = match self.state.open_file(&key) {
            Some(f) => (f.part, f.object.clone()),
            None => {
                let mut part = self.state.next_part(&key);
                let mut object = self.layout.object_name(&key, part);
                while self.taken.contains(&object) {
                    part += 1;
                    object = self.layout.object_name(&key, part);
                }
                (part, object)
            }
        };
        let PendingBatch {
            data,
            events,
            finalizers,
            first,
            high_water,
            source,
            ..
        } = batch;
        let (body, recycled) = encode::compress(self.compression, data);
        if let Some(data) = recycled {
            self.batcher.recycle(data);
        }
        let staged = StagedBlock {
            key,
            part,
            object,
            block: Block {
                id: self.block_ids.next(),
                bytes: body.len() as u64,
                events: events as u64,
            },
            first,
            high_water,
            source,
        };
        requests::stage_block(
            self.storage.clone(),
            BlockWrite {
                staged,
                body,
                finalizers,
                seq,
            },
        )
    }

    async fn seal_request(&mut self, key: FileKey) -> Result<Option<WriteRequest>, ()> {
        if self.commit == Commit::OnSeal {
            if let Err(e) = self.state.sealing(&key, Utc::now().timestamp()).await {
                self.state_error(&e.to_string());
                return Err(());
            }
        }
        let Some(file) = self.state.open_file(&key) else {
            return Ok(None);
        };
        let (object, ids) = (file.object.clone(), file.block_ids());
        let every_batch = (self.commit == Commit::EveryBatch).then(|| file.version.clone());
        let already_visible = every_batch.is_some() && file.committed == file.blocks.len();
        self.batcher.activity(key.clone()).exclusive_started();
        Ok(Some(requests::seal_file(
            self.storage.clone(),
            key,
            object,
            ids,
            every_batch,
            already_visible,
        )))
    }

    fn delivered(&self, finalizers: EventFinalizers, events: usize, bytes: u64) {
        self.sent.emit(events, bytes as usize);
        finalizers.finalize(EventStatus::Delivered);
    }

    /// After the input ended and every request finished: a snapshot of the
    /// state, so the next start loads no log.
    async fn stop(&mut self) -> Result<(), ()> {
        if let Err(e) = self.state.save(Utc::now().timestamp()).await {
            self.state_error(&e.to_string());
            return Err(());
        }
        tracing::info!(
            open_files = self.state.open_count(),
            "Sink stopped; open files continue on the next start."
        );
        Ok(())
    }

    fn error(&self, error_type: &'static str, message: &str) {
        ComponentError {
            error_type,
            stage: Stage::Sending,
            message,
        }
        .emit(&self.tags);
    }

    /// The spill failed: it is off from now on. A batch that could not be
    /// read back fails like a write given up (its window is held back
    /// until a restart replays it).
    fn spill_failed(&self, what: &str, error: &std::io::Error) {
        let dir = self
            .batcher
            .spill_usage()
            .map(|(dir, _)| dir.display().to_string())
            .unwrap_or_default();
        self.error(
            "spill_failed",
            &format!("Could not {what} the spill in {dir} ({error}); the spill is off until a restart, and batches past `batch.max_total_bytes` are written early as small blocks."),
        );
    }

    fn state_error(&self, message: &str) {
        self.error(
            "state_write_failed",
            &format!("Could not save sink state ({message}); stopping so nothing is acknowledged that is not recorded."),
        );
    }
}
