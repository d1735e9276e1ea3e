//! The sink's run loop: events become rows of their table's open data
//! file ([`Table`], [`DataFile`]); full row groups are staged as blocks;
//! a table's rows are committed as one version once
//! `commit.interval_secs` has passed since the first (`commits.rs`); each
//! request's outcome comes back here. Events are acknowledged once the
//! version holding them is committed and recorded.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use chrono_tz::Tz;
use futures::{stream::BoxStream, stream::FuturesUnordered, StreamExt};

use super::{
    data_file::DataFile,
    log::{commit, LogError},
    requests::Requests,
    schema::{Compression, Partition, PartitionBy},
    state::DeltaState,
    table::{FileId, Group, Table, TableNames},
    upkeep::{self, Vacuum},
};
use crate::{
    codecs::json::ExtendedJsonMode,
    event::{Event, EventStatus, Position},
    internal_events::{
        adls::EncodeFailed, delta::DeltaMetrics, requests::RequestFailures, ComponentError,
        ComponentTags, EventsSent, Stage,
    },
    lineage::{Pipelines, SinkStateReport},
    retry::RetryPolicy,
    sinks::{
        adls_partitioned_jsonl::encode::EventFields,
        util::storage::{Storage, StorageError},
        SinkContext, StreamSink,
    },
};

/// How often commit deadlines are checked.
const TICK: Duration = Duration::from_millis(200);

/// Event bytes a table's rows must hold to commit at once when a source's
/// burst ends (the size of a full row group's worth of events).
const BURST_BYTES: u64 = 4 << 20;

/// The options, checked and resolved (`config.rs`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub tz: Tz,
    pub partition_by: PartitionBy,
    pub compression: Compression,
    pub json_mode: ExtendedJsonMode,
    pub commit_interval: Duration,
    pub checkpoint_interval: u64,
    pub target_bytes: u64,
    pub row_group_bytes: usize,
    pub max_total_bytes: usize,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub compaction_min_files: Option<usize>,
    pub vacuum: Option<Vacuum>,
}

/// A data file being written.
pub(super) struct Writing {
    pub table: String,
    pub file: DataFile,
    /// Its row-group bytes counted in the sink's memory total.
    pub buffered: usize,
    /// Blocks being staged.
    pub in_flight: usize,
    /// Closed: once its blocks are staged, its block list is committed.
    pub closed: bool,
}

impl Writing {
    /// A new file of `root`'s `partition`.
    fn new(root: &str, partition: Partition, settings: &Settings) -> Self {
        Self {
            table: root.to_string(),
            file: DataFile::new(root, partition, settings.compression, settings.json_mode),
            buffered: 0,
            in_flight: 0,
            closed: false,
        }
    }
}

/// How a request ended; the run loop dispatches on it.
pub(super) enum Outcome {
    Staged {
        file: FileId,
        bytes: usize,
        result: Result<(), StorageError>,
    },
    Written {
        file: FileId,
        /// Bytes the request held (a file written whole).
        bytes: usize,
        result: Result<(), StorageError>,
    },
    Committed {
        table: String,
        seq: u64,
        operation: commit::Operation,
        started: Instant,
        result: Result<commit::Outcome, LogError>,
    },
    Upkept {
        table: String,
        result: Result<upkeep::Done, LogError>,
    },
}

pub(super) type Request = Pin<Box<dyn Future<Output = Outcome> + Send>>;
pub(super) type Inflight = FuturesUnordered<Request>;

pub struct DeltaSink {
    pub(super) settings: Settings,
    names: TableNames,
    pub(super) requests: Requests,
    pub(super) state: DeltaState,
    pub(super) tables: HashMap<String, Table>,
    pub(super) files: HashMap<FileId, Writing>,
    next_file: FileId,
    /// Row-group bytes in memory across open files.
    pub(super) buffered: usize,
    /// Block bytes being staged.
    pub(super) bytes_in_flight: usize,
    /// Tables due for upkeep, and whether one is running.
    pub(super) upkeep_queue: VecDeque<String>,
    pub(super) upkeep_busy: bool,
    /// A source went idle or ended a burst since the last schedule.
    burst_ended: bool,
    /// The table of the last namespace seen (most events come in runs).
    last_table: Option<(String, String, String)>,
    /// `txn` application ids are `mongo-adls:<app>:<table>`.
    pub(super) app: String,
    /// Commits made and not yet recorded: written with the next intents
    /// (a commit that is done but not recorded is found done at the next
    /// start, so recording it can wait).
    pub(super) unrecorded: Vec<super::state::Change>,
    pub(super) tags: ComponentTags,
    pub(super) sent: EventsSent,
    pub(super) metrics: DeltaMetrics,
    report: SinkStateReport,
    inputs: Vec<String>,
    pipelines: Pipelines,
}

impl DeltaSink {
    pub fn new(
        settings: Settings,
        names: TableNames,
        storage: Arc<dyn Storage>,
        state: DeltaState,
        cx: SinkContext,
        lake_table: Option<String>,
    ) -> Self {
        let SinkContext {
            key,
            tags,
            stopping,
            inputs,
            pipelines,
            ..
        } = cx;
        let report = state.report(&key, lake_table);
        let metrics = DeltaMetrics::register(&tags);
        let requests = Requests {
            storage,
            retry: settings.retry.clone(),
            metrics: metrics.clone(),
            failures: RequestFailures::register(&tags),
            tags: tags.clone(),
            stopping,
            permits: Arc::new(tokio::sync::Semaphore::new(settings.concurrency)),
        };
        Self {
            settings,
            names,
            requests,
            state,
            tables: HashMap::new(),
            files: HashMap::new(),
            next_file: 0,
            buffered: 0,
            bytes_in_flight: 0,
            upkeep_queue: VecDeque::new(),
            upkeep_busy: false,
            burst_ended: false,
            last_table: None,
            app: String::new(),
            unrecorded: Vec::new(),
            sent: EventsSent::register(&tags),
            metrics,
            tags,
            report,
            inputs,
            pipelines,
        }
    }

    /// Stamps the state with each input's pipeline, and picks the `txn`
    /// application name at the first start.
    async fn adopt_pipelines(&mut self) -> Result<(), ()> {
        let mut changed = false;
        for source in &self.inputs {
            if let Some(pipeline) = self.pipelines.get(source) {
                changed |= self.state.adopt(source, &pipeline);
            }
        }
        if self.state.app().is_none() {
            let app = self
                .inputs
                .first()
                .and_then(|s| self.pipelines.get(s))
                .unwrap_or_else(crate::lineage::new_pipeline_id);
            let recorded = self.state.record(super::state::Change::App { app }).await;
            self.state_result(recorded)?;
        }
        if changed {
            let saved = self.state.save().await;
            self.state_result(saved)?;
        }
        self.app = self.state.app().unwrap_or_default().to_string();
        Ok(())
    }

    /// A state write's result; a failed one stops the sink, so nothing is
    /// acknowledged that is not recorded.
    pub(super) fn state_result<T>(
        &self,
        result: Result<T, crate::state_store::StateError>,
    ) -> Result<T, ()> {
        result.map_err(|e| {
            self.error(
                "state_write_failed",
                &format!("Could not save the sink state ({e}); stopping so nothing is acknowledged that is not recorded."),
            )
        })
    }

    pub(super) fn error(&self, error_type: &'static str, message: &str) {
        ComponentError {
            error_type,
            stage: Stage::Sending,
            message,
        }
        .emit(&self.tags);
    }
}

#[async_trait]
impl StreamSink for DeltaSink {
    fn state_report(&self) -> Option<SinkStateReport> {
        Some(self.report.clone())
    }

    async fn run(mut self: Box<Self>, input: BoxStream<'static, Event>) -> Result<(), ()> {
        self.adopt_pipelines().await?;
        self.recover().await?;
        let mut input = input.ready_chunks(256).fuse();
        let mut input_done = false;
        let mut inflight: Inflight = FuturesUnordered::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accept = !input_done
                && self.bytes_in_flight < self.settings.concurrency * self.settings.row_group_bytes
                && self.buffered <= self.settings.max_total_bytes;
            tokio::select! {
                biased;
                Some(outcome) = inflight.next(), if !inflight.is_empty() => {
                    self.on_outcome(outcome, &mut inflight).await?;
                }
                events = input.next(), if accept => match events {
                    Some(events) => {
                        for event in events {
                            self.on_event(event, &mut inflight);
                        }
                    }
                    None => input_done = true,
                },
                _ = tick.tick() => {}
            }
            self.schedule(&mut inflight, input_done).await?;
            if input_done && inflight.is_empty() && self.tables.values().all(Table::drained) {
                break;
            }
        }
        self.record_unrecorded().await?;
        let saved = self.state.save().await;
        self.state_result(saved)?;
        tracing::info!(
            tables = self.tables.len(),
            "Sink stopped; every table's rows are committed."
        );
        Ok(())
    }
}

impl DeltaSink {
    fn on_event(&mut self, event: Event, inflight: &mut Inflight) {
        let mut log = match event {
            Event::Log(log) => log,
            // The source is idle, or a burst just ended: a table holding a
            // burst's worth commits now instead of at its interval's end.
            // A trickle never holds that much, so it still commits once an
            // interval.
            Event::Watermark(w) => {
                self.burst_ended |= w.idle;
                return;
            }
        };
        let finalizers = log.take_finalizers();
        let position = log.metadata.position.take();
        // The top-level fields once: time, table and row from them.
        let fields = match EventFields::read(&log.payload) {
            Ok(fields) => fields,
            Err(e) => {
                EncodeFailed {
                    error: &e.to_string(),
                }
                .emit(&self.tags);
                finalizers.finalize(EventStatus::Rejected);
                return;
            }
        };
        let time = fields.partition_time(Utc::now());
        let root = self.table_of(fields.namespace());
        let replayed = self.committed_before(&root, position.as_ref());
        let table = self
            .tables
            .entry(root.clone())
            .or_insert_with(|| Table::new(root.clone()));
        if table.failed.is_some() {
            finalizers.finalize(EventStatus::Rejected);
            return;
        }
        if replayed {
            // Replayed after a restart and already committed.
            self.metrics.replayed_skipped(1);
            finalizers.finalize(EventStatus::Delivered);
            return;
        }
        let partition = self
            .settings
            .partition_by
            .partition_of(time, self.settings.tz);
        let group = table.current.get_or_insert_with(Group::new);
        let id = match group.open.get(&partition) {
            Some(id) => *id,
            None => {
                let id = self.next_file;
                self.next_file += 1;
                self.files
                    .insert(id, Writing::new(&root, partition, &self.settings));
                group.open.insert(partition, id);
                group.files.push(id);
                id
            }
        };
        let writing = self.files.get_mut(&id).expect("open files are known");
        if let Err(e) = writing.file.push(&fields, time) {
            EncodeFailed {
                error: &e.to_string(),
            }
            .emit(&self.tags);
            finalizers.finalize(EventStatus::Rejected);
            return;
        }
        group.rows += 1;
        group.event_bytes += log.payload.as_bytes().len() as u64;
        if position.is_some() && group.high_water < position {
            group.high_water = position;
        }
        group.source = Some(Arc::clone(&log.metadata.source_id));
        group.finalizers.merge_deduplicated(finalizers);
        let now = writing.file.buffered();
        self.buffered = self.buffered + now - writing.buffered;
        writing.buffered = now;
        if writing.file.size() >= self.settings.target_bytes {
            group.open.remove(&partition);
            self.close_file(id, inflight);
        } else if now >= self.settings.row_group_bytes {
            self.cut(id, inflight);
        }
    }

    /// Whether `root` committed `position` already (a replay).
    fn committed_before(&self, root: &str, position: Option<&Position>) -> bool {
        let high_water = self.state.table(root).and_then(|t| t.high_water.as_ref());
        matches!((position, high_water), (Some(p), Some(hw)) if p <= hw)
    }

    /// The table folder of an event's namespace.
    fn table_of(&mut self, (db, coll): (&str, &str)) -> String {
        match &self.last_table {
            Some((d, c, root)) if d == db && c == coll => root.clone(),
            _ => {
                let root = self.names.root(db, coll);
                self.last_table = Some((db.to_string(), coll.to_string(), root.clone()));
                root
            }
        }
    }

    /// Stages the row group in progress of file `id`.
    pub(super) fn cut(&mut self, id: FileId, inflight: &mut Inflight) {
        let Some(writing) = self.files.get_mut(&id) else {
            return;
        };
        let block = writing.file.cut();
        self.buffered -= writing.buffered;
        writing.buffered = 0;
        if let Some((block_id, bytes)) = block {
            self.stage(id, block_id, bytes, inflight);
        }
    }

    /// Closes file `id`: its last block is staged, then its block list
    /// committed; a file of one block is written whole (one Put Blob
    /// instead of a Put Block and a Put Block List: most files of a table
    /// that gets a few events a minute).
    pub(super) fn close_file(&mut self, id: FileId, inflight: &mut Inflight) {
        let Some(writing) = self.files.get_mut(&id) else {
            return;
        };
        let (block_id, bytes) = writing.file.close();
        writing.closed = true;
        self.buffered -= writing.buffered;
        writing.buffered = 0;
        if writing.file.block_ids.len() > 1 {
            return self.stage(id, block_id, bytes, inflight);
        }
        let len = bytes.len();
        self.bytes_in_flight += len;
        let requests = self.requests.clone();
        let object = writing.file.object.clone();
        inflight.push(Box::pin(async move {
            // A name is unique to its attempt: one that exists is this
            // write, landed before its answer was lost.
            let result = requests.put_if_absent(&object, bytes).await.map(|_| ());
            Outcome::Written {
                file: id,
                bytes: len,
                result,
            }
        }));
    }

    fn stage(
        &mut self,
        id: FileId,
        block_id: String,
        bytes: bytes::Bytes,
        inflight: &mut Inflight,
    ) {
        let writing = self.files.get_mut(&id).expect("known");
        writing.in_flight += 1;
        let len = bytes.len();
        self.bytes_in_flight += len;
        let requests = self.requests.clone();
        let object = writing.file.object.clone();
        inflight.push(Box::pin(async move {
            let result = requests.stage_block(&object, &block_id, bytes).await;
            Outcome::Staged {
                file: id,
                bytes: len,
                result,
            }
        }));
    }

    /// Commits the block list of a closed file whose blocks are staged.
    pub(super) fn write_file(&mut self, id: FileId, inflight: &mut Inflight) {
        let Some(writing) = self.files.get(&id) else {
            return;
        };
        let requests = self.requests.clone();
        let (object, ids) = (writing.file.object.clone(), writing.file.block_ids.clone());
        inflight.push(Box::pin(async move {
            let result = requests.commit_new(&object, &ids).await;
            Outcome::Written {
                file: id,
                bytes: 0,
                result,
            }
        }));
    }

    /// Due commits, the memory bound, and upkeep.
    async fn schedule(&mut self, inflight: &mut Inflight, input_done: bool) -> Result<(), ()> {
        let now = Instant::now();
        let interval = self.settings.commit_interval;
        let burst = std::mem::take(&mut self.burst_ended).then_some(BURST_BYTES);
        let due: Vec<String> = self
            .tables
            .values()
            .filter(|t| t.due(interval, now, input_done, burst))
            .map(|t| t.root.clone())
            .collect();
        for root in due {
            self.seal(&root, inflight);
        }
        self.start_commits(inflight).await?;
        while self.buffered > self.settings.max_total_bytes {
            let largest = self
                .files
                .iter()
                .filter(|(_, w)| !w.closed)
                .max_by_key(|(_, w)| w.buffered)
                .map(|(id, _)| *id);
            match largest {
                Some(id) => self.cut(id, inflight),
                None => break,
            }
        }
        if !input_done {
            self.start_upkeep(inflight).await?;
        }
        Ok(())
    }
}
