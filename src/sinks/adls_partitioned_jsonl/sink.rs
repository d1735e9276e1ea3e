//! The sink's event loop: route each event to its file (namespace and time
//! window), batch per file, write batches as staged blocks with bounded
//! concurrency (strictly one request at a time per file), acknowledge once
//! a block and the state that lists it are durable, and seal files when
//! their window closes, they reach `roll.max_bytes`, or they get too old.

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use futures::{stream::BoxStream, stream::FuturesUnordered, FutureExt, StreamExt};

use super::{
    config::{AdlsPartitionedJsonlConfig, BatchConfig, Commit, Compression, Mode, RollConfig},
    encode,
    partition::{object_name, Template, Windows},
    state::{Block, FileKey, OpenFile, SinkState, StagedBlock},
    storage::{
        azure::AzureStorage, local::LocalStorage, with_retries, Created, RetryPolicy, Storage,
        StorageError,
    },
};
use crate::{
    checkpoint::StateFile,
    codecs::json::ExtendedJsonMode,
    event::{Event, EventFinalizers, EventStatus, LogEvent, Position},
    internal_events::{
        adls::{DataLost, EncodeFailed, SinkMetrics, WriteFailed},
        ComponentError, ComponentTags, EventsSent, Stage,
    },
    sinks::{Healthcheck, SinkContext, StreamSink},
};

/// Azure allows 50,000 committed blocks per blob; seal before that.
const MAX_BLOCKS_PER_FILE: usize = 49_000;
/// Open files older than this at start-up get a warning: Azure discards
/// uncommitted blocks a week after they were staged.
const STAGED_BLOCKS_WARN_SECS: i64 = 6 * 86_400;
/// How often batch timeouts and seal conditions are checked.
const TICK: Duration = Duration::from_millis(200);

pub async fn build(
    config: &AdlsPartitionedJsonlConfig,
    cx: SinkContext,
) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)> {
    let prefix = Template::parse(&config.path_prefix).map_err(|e| format!("`path_prefix`: {e}"))?;
    let file_name = Template::parse(&config.file_name).map_err(|e| format!("`file_name`: {e}"))?;
    let tz: Tz = config.timezone.parse().map_err(|_| {
        format!(
            "`timezone` {:?} is not an IANA time zone name",
            config.timezone
        )
    })?;
    if config.roll.window_secs == 0 {
        return Err("`roll.window_secs` must be at least 1".into());
    }
    if config.request.concurrency == 0
        || config.batch.max_events == 0
        || config.batch.max_bytes == 0
    {
        return Err(
            "`request.concurrency`, `batch.max_events` and `batch.max_bytes` must be at least 1"
                .into(),
        );
    }
    check_names_distinguish_windows(&prefix, &file_name, config.roll.window_secs as i64, tz)?;
    let storage: Arc<dyn Storage> = if config.account_url.starts_with("file:") {
        Arc::new(LocalStorage::new(
            &config.account_url,
            &config.filesystem,
            config.create_filesystem,
        )?)
    } else {
        Arc::new(AzureStorage::new(config)?)
    };
    let dir = cx
        .globals
        .component_data_dir(&cx.key)
        .ok_or("the global `data_dir` must be set")?;
    let state = SinkState::load(StateFile::new(&dir, "state.json")?)?;
    let healthcheck = {
        let storage = Arc::clone(&storage);
        async move { storage.healthcheck().await }.boxed()
    };
    tracing::info!(sink = %cx.key, "Writing to {}.", storage.describe());
    let extension = match config.compression {
        Compression::None => ".jsonl",
        Compression::Gzip => ".jsonl.gz",
    };
    let metrics = SinkMetrics::register(&cx.tags);
    let requests = Requests {
        storage,
        retry: RetryPolicy {
            attempts: config.request.retry_attempts,
            initial_backoff: Duration::from_secs_f64(
                config.request.retry_initial_backoff_secs.max(0.0),
            ),
            max_backoff: Duration::from_secs_f64(config.request.retry_max_backoff_secs.max(0.0)),
            timeout: Duration::from_secs_f64(config.request.timeout_secs.max(0.001)),
        },
        metrics: metrics.clone(),
        tags: cx.tags.clone(),
    };
    let sink = AdlsSink {
        requests,
        state,
        prefix,
        file_name,
        windows: Windows {
            window_secs: config.roll.window_secs as i64,
            tz,
        },
        mode: config.mode,
        commit: config.commit,
        compression: config.compression,
        json_mode: config.encoding.extended_json,
        batch: config.batch.clone(),
        batch_timeout: Duration::from_secs_f64(config.batch.timeout_secs.max(0.0)),
        roll: config.roll.clone(),
        concurrency: config.request.concurrency,
        extension,
        sent: EventsSent::register(&cx.tags),
        metrics,
        tags: cx.tags,
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        block_seq: 0,
        keys: HashMap::new(),
        watermarks: HashMap::new(),
        flush_partial: false,
        last_window: (0, 0),
        last_key: None,
        spare: Vec::new(),
    };
    Ok((Box::new(sink), healthcheck))
}

/// Storage with the retry policy and metrics every request goes through;
/// cheap to clone into request futures.
#[derive(Clone)]
struct Requests {
    storage: Arc<dyn Storage>,
    retry: RetryPolicy,
    metrics: SinkMetrics,
    tags: ComponentTags,
}

impl Requests {
    /// Runs one storage operation with retries and records its duration.
    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        let started = Instant::now();
        let result = with_retries(&self.retry, op, |e, d| {
            self.metrics.retry(&self.tags, what, &e.message, d)
        })
        .await;
        self.metrics.request(started.elapsed());
        result
    }

    /// Commits `ids` to `object`. When some staged blocks are gone from
    /// storage (`InvalidBlockList`), commits the ones still there, in
    /// order, and returns the ids of the lost ones with the result.
    async fn commit_salvaging(
        &self,
        object: &str,
        ids: &[String],
        create_only: bool,
    ) -> (Result<Created, StorageError>, Vec<String>) {
        let storage = &self.storage;
        let error = match self
            .run("Put Block List", || {
                storage.commit_blocks(object, ids, create_only)
            })
            .await
        {
            Err(e) if e.blocks_missing => e,
            other => return (other, Vec::new()),
        };
        tracing::error!(
            object,
            "{error}; committing the blocks that are still there."
        );
        let uncommitted = self.run("Get Block List", || storage.uncommitted_blocks(object));
        let committed = self.run("Get Block List", || storage.committed_blocks(object));
        let (still_there, committed) = match futures::join!(uncommitted, committed) {
            (Ok(u), Ok(c)) => (u, c.unwrap_or_default()),
            (Err(e), _) | (_, Err(e)) => return (Err(e), Vec::new()),
        };
        // Sets: a file may hold tens of thousands of blocks.
        let there: HashSet<&String> = still_there.iter().chain(&committed).collect();
        let (kept, lost): (Vec<String>, Vec<String>) =
            ids.iter().cloned().partition(|id| there.contains(id));
        if kept.is_empty() {
            return (Ok(Created::Created), lost);
        }
        let result = self
            .run("Put Block List", || {
                storage.commit_blocks(object, &kept, create_only)
            })
            .await;
        (result, lost)
    }
}

/// Two windows must never map to one file name: with `roll.window_secs`
/// shorter than an hour, the default hourly name would make every window of
/// an hour collide. Checked on a day of consecutive windows.
fn check_names_distinguish_windows(
    prefix: &Template,
    file_name: &Template,
    window_secs: i64,
    tz: Tz,
) -> Result<(), String> {
    let windows = Windows { window_secs, tz };
    let start = windows.start_of(DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default());
    let mut seen = std::collections::HashSet::new();
    let count = (86_400 / window_secs).clamp(2, 2000);
    for i in 0..count {
        let t = windows
            .start_of(start.with_timezone(&Utc) + chrono::Duration::seconds(i * window_secs));
        let name = format!(
            "{}{}",
            prefix.render("db", "coll", &t),
            file_name.render("db", "coll", &t)
        );
        if !seen.insert(name.clone()) {
            return Err(format!(
                "`path_prefix` and `file_name` give two {window_secs}-second windows the same name ({name}); add finer time fields, e.g. file_name = \"events-%Y%m%d-%H%M%S\""
            ));
        }
    }
    Ok(())
}

/// Events waiting to be written to one file.
struct Pending {
    data: Vec<u8>,
    events: usize,
    finalizers: Vec<EventFinalizers>,
    first: Option<Position>,
    high_water: Option<Position>,
    since: Instant,
}

/// Per-window runtime flags (not persisted).
#[derive(Default)]
struct KeyRuntime {
    buffer: Option<Pending>,
    /// A request for this window is in flight.
    busy: bool,
    /// Seal as soon as the window is idle (size roll).
    seal_wanted: bool,
    /// A write failed: hold back every later event of this window so a
    /// replay after restart cannot be skipped past the lost ones.
    poisoned: bool,
    /// After a failed seal, when to try again.
    seal_retry_at: Option<Instant>,
}

enum Done {
    Staged {
        staged: StagedBlock,
        finalizers: Vec<EventFinalizers>,
        /// The batch buffer, for reuse.
        spare: Option<Vec<u8>>,
    },
    Committed {
        key: FileKey,
        upto: usize,
        finalizers: Vec<EventFinalizers>,
        events: usize,
        bytes: u64,
    },
    Sealed {
        key: FileKey,
        result: Result<(), StorageError>,
        /// Blocks that were gone from storage and could not be committed.
        lost: Vec<String>,
    },
    Failed {
        key: Option<FileKey>,
        object: String,
        error: StorageError,
        finalizers: Vec<EventFinalizers>,
    },
    Put {
        finalizers: EventFinalizers,
        bytes: usize,
    },
}

type Request = Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

pub struct AdlsSink {
    requests: Requests,
    state: SinkState,
    prefix: Template,
    file_name: Template,
    windows: Windows,
    mode: Mode,
    commit: Commit,
    compression: Compression,
    json_mode: ExtendedJsonMode,
    batch: BatchConfig,
    batch_timeout: Duration,
    roll: RollConfig,
    concurrency: usize,
    extension: &'static str,
    tags: ComponentTags,
    sent: EventsSent,
    metrics: SinkMetrics,
    /// Part of every block id, so ids from a crashed run are never reused.
    run_id: String,
    block_seq: u64,
    keys: HashMap<FileKey, KeyRuntime>,
    /// Event-time progress per source (watermarks and event times).
    watermarks: HashMap<Arc<str>, DateTime<Utc>>,
    /// Write partial batches at the next opportunity (a source went idle).
    flush_partial: bool,
    /// The last window computed: `[start, end)` in UTC seconds.
    last_window: (i64, i64),
    /// The file key of the last event.
    last_key: Option<FileKey>,
    /// Batch buffers back from finished writes, reused: a fresh 8 MB
    /// allocation per batch costs a page fault per 4 KB as it fills.
    spare: Vec<Vec<u8>>,
}

#[async_trait]
impl StreamSink for AdlsSink {
    async fn run(mut self: Box<Self>, input: BoxStream<'static, Event>) -> Result<(), ()> {
        if let Err(e) = self.recover().await {
            ComponentError {
                error_type: "recovery_failed",
                stage: Stage::Sending,
                message: &format!("Could not finish the commits of the previous run: {e}"),
            }
            .emit(&self.tags);
            return Err(());
        }
        // Events are taken in ready chunks so the bookkeeping in `schedule`
        // runs per chunk, not per event.
        let mut input = input.ready_chunks(256).fuse();
        let mut input_done = false;
        let mut inflight: FuturesUnordered<Request> = FuturesUnordered::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accept = !input_done && inflight.len() < self.concurrency && !self.buffers_full();
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    if self.on_done(done, &mut inflight).is_err() {
                        return Err(());
                    }
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
            self.schedule(&mut inflight, input_done);
            if input_done && inflight.is_empty() && self.keys.values().all(|k| k.buffer.is_none()) {
                break;
            }
        }
        if let Err(e) = self.state.save(now_secs()) {
            self.state_error(&e.to_string());
            return Err(());
        }
        tracing::info!(
            open_files = self.state.open.len(),
            "Sink stopped; open files continue on the next start."
        );
        Ok(())
    }
}

fn now_secs() -> i64 {
    Utc::now().timestamp()
}

fn finalize_all(finalizers: Vec<EventFinalizers>, status: EventStatus) {
    for f in finalizers {
        f.finalize(status);
    }
}

/// `db`, `coll` of an event; events without a namespace (e.g. `invalidate`)
/// go to `_none`.
fn namespace(event: &LogEvent) -> (&str, &str) {
    let ns = event.payload.get_document("ns").ok();
    let part = |k: &str| ns.and_then(|n| n.get_str(k).ok()).unwrap_or("_none");
    (part("db"), part("coll"))
}

impl AdlsSink {
    /// A full batch waiting for its file's previous write stops intake:
    /// memory stays at one batch being written plus one being filled per
    /// file.
    fn buffers_full(&self) -> bool {
        self.keys.values().any(|k| {
            k.buffer.as_ref().is_some_and(|b| {
                b.data.len() >= self.batch.max_bytes || b.events >= self.batch.max_events
            })
        })
    }

    /// The window start (UTC seconds) of an event time. Consecutive events
    /// almost always share a window, so the last one is remembered instead
    /// of converting through the time zone for every event.
    fn window_of(&mut self, time: DateTime<Utc>) -> i64 {
        let t = time.timestamp();
        let (start, end) = self.last_window;
        if (start..end).contains(&t) {
            return start;
        }
        let start = self.windows.start_of(time);
        let end = self.windows.end_of(&start).timestamp();
        let start = start.with_timezone(&Utc).timestamp();
        self.last_window = (start, end);
        start
    }

    fn window_start(&self, key: &FileKey) -> DateTime<Tz> {
        self.windows
            .tz
            .timestamp_opt(key.window_start, 0)
            .earliest()
            .unwrap_or_else(|| Utc::now().with_timezone(&self.windows.tz))
    }

    fn object_for(&self, key: &FileKey, part: u32) -> String {
        let start = self.window_start(key);
        object_name(
            &self.prefix.render(&key.db, &key.coll, &start),
            &self.file_name.render(&key.db, &key.coll, &start),
            part,
            self.extension,
        )
    }

    fn next_block_id(&mut self) -> String {
        self.block_seq += 1;
        // Fixed length: Azure requires equal-length ids within a blob.
        format!("{}{:08x}", self.run_id, self.block_seq)
    }

    fn compress(&mut self, data: Vec<u8>) -> Bytes {
        match self.compression {
            Compression::None => Bytes::from(data),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 4),
                    flate2::Compression::default(),
                );
                gz.write_all(&data).expect("writing to a Vec cannot fail");
                self.recycle(data);
                Bytes::from(gz.finish().expect("writing to a Vec cannot fail"))
            }
        }
    }

    /// Keeps a batch buffer for the next batch (two at most: one being
    /// filled while one is written is the steady state).
    fn recycle(&mut self, mut data: Vec<u8>) {
        if self.spare.len() < 2 && data.capacity() >= self.batch.max_bytes.min(16 << 20) {
            data.clear();
            self.spare.push(data);
        }
    }

    fn effective_watermark(&self) -> Option<DateTime<Utc>> {
        self.watermarks.values().min().copied()
    }

    fn advance_watermark(&mut self, source: &Arc<str>, time: DateTime<Utc>) {
        let entry = self.watermarks.entry(Arc::clone(source)).or_insert(time);
        if time > *entry {
            *entry = time;
        }
    }

    fn state_error(&self, message: &str) {
        ComponentError {
            error_type: "state_write_failed",
            stage: Stage::Sending,
            message: &format!("Could not save sink state ({message}); stopping so nothing is acknowledged that is not recorded."),
        }
        .emit(&self.tags);
    }

    /// Finishes what a previous run left half done: files whose seal was
    /// committed just before a crash (recorded as sealed now, so no late
    /// block is added to a visible file), and `every_batch` files whose last
    /// staged blocks were not committed yet.
    async fn recover(&mut self) -> Result<(), StorageError> {
        let open: Vec<OpenFile> = self.state.open.values().cloned().collect();
        let now = now_secs();
        for file in open {
            if now - file.opened_at > STAGED_BLOCKS_WARN_SECS {
                tracing::warn!(
                    object = %file.object,
                    opened_days_ago = (now - file.opened_at) / 86_400,
                    "This file has waited for its seal for days: Azure discards uncommitted blocks after 7 days, so some may be gone."
                );
            }
            let ids = file.block_ids();
            let object = file.object.clone();
            let requests = &self.requests;
            if self.commit == Commit::OnSeal {
                let existing = requests
                    .run("Get Block List", || {
                        requests.storage.committed_blocks(&object)
                    })
                    .await?;
                if existing.as_ref() == Some(&ids) {
                    tracing::info!(
                        object,
                        "File was sealed just before the last stop; recording it."
                    );
                    self.state
                        .sealed(&file.key, now)
                        .map_err(|e| StorageError::permanent(e.to_string()))?;
                }
            } else if file.committed < file.blocks.len() {
                let (result, lost) = requests.commit_salvaging(&object, &ids, false).await;
                result?;
                if !lost.is_empty() {
                    // Reported again if the process dies before the save
                    // below records the shorter list.
                    self.report_lost(&file, &lost);
                }
                self.state.all_committed(&file.key, &lost);
            }
        }
        self.state
            .save(now)
            .map_err(|e| StorageError::permanent(e.to_string()))
    }

    /// Blocks of `file` were gone when it was committed: their events were
    /// acknowledged, so they are not in the lake and will not be replayed.
    /// Said loudly, with what an operator needs to re-read them.
    fn report_lost(&self, file: &OpenFile, lost: &[String]) {
        let lost_ids: HashSet<&String> = lost.iter().collect();
        let (events, bytes) = file
            .blocks
            .iter()
            .filter(|b| lost_ids.contains(&b.id))
            .fold((0, 0), |(e, b), block| (e + block.events, b + block.bytes));
        DataLost {
            object: &file.object,
            blocks: lost.len(),
            of_blocks: file.blocks.len(),
            events,
            bytes,
            first: file.first_position.as_ref(),
            last: file.high_water.as_ref(),
        }
        .emit(&self.tags);
    }

    /// The file key of an event. Consecutive events almost always share
    /// one, so the last key is reused instead of allocating its names for
    /// every event.
    fn key_for(&mut self, (db, coll): (&str, &str), window_start: i64) -> FileKey {
        match &self.last_key {
            Some(k) if k.window_start == window_start && &*k.db == db && &*k.coll == coll => {
                k.clone()
            }
            _ => {
                let key = FileKey {
                    db: db.into(),
                    coll: coll.into(),
                    window_start,
                };
                self.last_key = Some(key.clone());
                key
            }
        }
    }

    fn on_event(&mut self, event: Event, inflight: &mut FuturesUnordered<Request>) {
        let mut log = match event {
            Event::Watermark(w) => {
                // A watermark comes from a source that has caught up (an
                // idle change stream): nothing is left to batch with, so
                // partial batches are written now instead of waiting for
                // `batch.timeout_secs`.
                self.advance_watermark(&w.source_id, w.time);
                self.flush_partial = true;
                return;
            }
            Event::Log(log) => log,
        };
        let time = encode::partition_time(&log.payload, Utc::now());
        self.advance_watermark(&log.metadata.source_id, time);
        let finalizers = log.take_finalizers();

        if self.mode == Mode::PerEvent {
            self.put_event(log, time, finalizers, inflight);
            return;
        }

        let window_start = self.window_of(time);
        let key = self.key_for(namespace(&log), window_start);
        let position = log.metadata.position.take();
        if let (Some(p), Some(hw)) = (&position, self.state.high_water(&key)) {
            if p <= hw {
                // Replayed after a restart and already in a file.
                self.metrics.replayed_skipped(1);
                finalizers.finalize(EventStatus::Delivered);
                return;
            }
        }
        let runtime = self.keys.entry(key).or_default();
        if runtime.poisoned {
            finalizers.finalize(EventStatus::Errored);
            return;
        }
        // Sized for a whole batch up front: growing an 8 MB buffer by
        // doubling would copy it several times per batch.
        let spare = &mut self.spare;
        let capacity = self.batch.max_bytes.min(16 << 20) + 64 * 1024;
        let buffer = runtime.buffer.get_or_insert_with(|| Pending {
            data: spare.pop().unwrap_or_else(|| Vec::with_capacity(capacity)),
            events: 0,
            finalizers: Vec::new(),
            first: None,
            high_water: None,
            since: Instant::now(),
        });
        match encode::encode_record(&log.payload, self.json_mode, time, &mut buffer.data) {
            Ok(()) => {
                buffer.events += 1;
                buffer.finalizers.push(finalizers);
                if position.is_some() {
                    if buffer.first.is_none() {
                        buffer.first.clone_from(&position);
                    }
                    buffer.high_water = position;
                }
            }
            Err(e) => {
                EncodeFailed {
                    error: &e.to_string(),
                }
                .emit(&self.tags);
                finalizers.finalize(EventStatus::Rejected);
            }
        }
    }

    /// `mode = "per_event"`: one object per event, named by position,
    /// operation and a hash of the document key, written only if absent.
    fn put_event(
        &mut self,
        log: LogEvent,
        time: DateTime<Utc>,
        finalizers: EventFinalizers,
        inflight: &mut FuturesUnordered<Request>,
    ) {
        let mut data = Vec::with_capacity(log.payload.as_bytes().len() + 256);
        if let Err(e) = encode::encode_record(&log.payload, self.json_mode, time, &mut data) {
            EncodeFailed {
                error: &e.to_string(),
            }
            .emit(&self.tags);
            finalizers.finalize(EventStatus::Rejected);
            return;
        }
        let (db, coll) = namespace(&log);
        let start = self.windows.start_of(time);
        let op = log.payload.get_str("operationType").unwrap_or("unknown");
        let key_hash = log
            .payload
            .get_document("documentKey")
            .map(|d| fnv1a(d.as_bytes()))
            .unwrap_or(0);
        let position = log
            .metadata
            .position
            .as_ref()
            .map_or_else(|| format!("t{}", time.timestamp_millis()), |p| p.0.clone());
        let name = format!(
            "{}event-{position}-{op}-{key_hash:016x}{}",
            self.prefix.render(db, coll, &start),
            self.extension
        );
        let body = self.compress(data);
        let bytes = body.len();
        let requests = self.requests.clone();
        inflight.push(Box::pin(async move {
            let result = requests
                .run("Put Blob", || {
                    requests.storage.put_if_absent(&name, body.clone())
                })
                .await;
            match result {
                Ok(_) => Done::Put { finalizers, bytes },
                Err(error) => Done::Failed {
                    key: None,
                    object: name,
                    error,
                    finalizers: vec![finalizers],
                },
            }
        }));
    }

    /// Starts writes and seals that are due, within the concurrency limit.
    fn schedule(&mut self, inflight: &mut FuturesUnordered<Request>, input_done: bool) {
        let now = Instant::now();
        let watermark = self.effective_watermark();
        let wall = now_secs();
        let mut flushes = Vec::new();
        let mut seals = Vec::new();
        for (key, rt) in &mut self.keys {
            if rt.busy {
                continue;
            }
            let window_closed = watermark.is_some_and(|w| {
                key.window_start + self.windows.window_secs + self.roll.grace_secs as i64
                    <= w.timestamp()
            });
            if let Some(buf) = &rt.buffer {
                if input_done
                    || self.flush_partial
                    || rt.seal_wanted
                    || window_closed
                    || buf.data.len() >= self.batch.max_bytes
                    || buf.events >= self.batch.max_events
                    || now.duration_since(buf.since) >= self.batch_timeout
                {
                    flushes.push(key.clone());
                }
                continue;
            }
            let Some(file) = self.state.open.get(key) else {
                continue;
            };
            let too_old = wall - file.opened_at >= self.roll.max_age_secs as i64;
            let retry_ok = rt.seal_retry_at.is_none_or(|t| now >= t);
            if (rt.seal_wanted || window_closed || too_old) && retry_ok {
                seals.push(key.clone());
            }
        }
        // Windows with open files but no runtime entry (after a restart).
        for (key, file) in &self.state.open {
            if self.keys.contains_key(key) {
                continue;
            }
            let window_closed = watermark.is_some_and(|w| {
                key.window_start + self.windows.window_secs + self.roll.grace_secs as i64
                    <= w.timestamp()
            });
            if window_closed || wall - file.opened_at >= self.roll.max_age_secs as i64 {
                seals.push(key.clone());
            }
        }
        let busy_with_buffer = self.keys.values().any(|rt| rt.busy && rt.buffer.is_some());
        let all_flushed =
            !busy_with_buffer && flushes.len() <= self.concurrency.saturating_sub(inflight.len());
        for key in flushes {
            if inflight.len() >= self.concurrency {
                return;
            }
            self.flush(key, inflight);
        }
        if all_flushed {
            self.flush_partial = false;
        }
        for key in seals {
            if inflight.len() >= self.concurrency {
                return;
            }
            self.seal(key, inflight);
        }
    }

    fn flush(&mut self, key: FileKey, inflight: &mut FuturesUnordered<Request>) {
        let Some(buffer) = self.keys.get_mut(&key).and_then(|rt| rt.buffer.take()) else {
            return;
        };
        if let Some(rt) = self.keys.get_mut(&key) {
            rt.busy = true;
        }
        let (part, object) = match self.state.open.get(&key) {
            Some(f) => (f.part, f.object.clone()),
            None => {
                let part = self.state.next_part(&key);
                (part, self.object_for(&key, part))
            }
        };
        let id = self.next_block_id();
        let events = buffer.events as u64;
        let body = self.compress(buffer.data);
        let bytes = body.len() as u64;
        let requests = self.requests.clone();
        let Pending {
            finalizers,
            first,
            high_water,
            ..
        } = buffer;
        inflight.push(Box::pin(async move {
            let result = requests
                .run("Put Block", || {
                    requests.storage.stage_block(&object, &id, body.clone())
                })
                .await;
            match result {
                Ok(()) => {
                    requests.metrics.block_written(bytes as usize);
                    Done::Staged {
                        staged: StagedBlock {
                            key,
                            part,
                            object,
                            block: Block { id, bytes, events },
                            first,
                            high_water,
                        },
                        finalizers,
                        // The HTTP client has let go of the body by now.
                        spare: body.try_into_mut().ok().map(Vec::from),
                    }
                }
                Err(error) => Done::Failed {
                    key: Some(key),
                    object,
                    error,
                    finalizers,
                },
            }
        }));
    }

    fn seal(&mut self, key: FileKey, inflight: &mut FuturesUnordered<Request>) {
        let Some(file) = self.state.open.get(&key) else {
            return;
        };
        self.keys.entry(key.clone()).or_default().busy = true;
        let ids = file.block_ids();
        let object = file.object.clone();
        // every_batch files are already committed up to date: sealing only
        // stops writing to them.
        let already_visible =
            self.commit == Commit::EveryBatch && file.committed == file.blocks.len();
        let requests = self.requests.clone();
        let create_only = self.commit == Commit::OnSeal;
        inflight.push(Box::pin(async move {
            if already_visible {
                return Done::Sealed {
                    key,
                    result: Ok(()),
                    lost: Vec::new(),
                };
            }
            let (result, mut lost) = requests.commit_salvaging(&object, &ids, create_only).await;
            let result = match result {
                Ok(Created::Created) => Ok(()),
                Ok(Created::AlreadyExists) => {
                    // Our own commit whose response was lost, or a foreign
                    // object under our name: compare the block lists.
                    let storage = &requests.storage;
                    let existing = requests.run("Get Block List", || storage.committed_blocks(&object)).await;
                    match existing {
                        Ok(Some(existing)) if existing == ids => Ok(()),
                        // A salvage commit from before a crash: the blocks it
                        // left out are still gone.
                        Ok(Some(existing)) => match requests
                            .run("Get Block List", || storage.uncommitted_blocks(&object))
                            .await
                            .map(|staged| salvaged_before(&ids, &existing, &staged))
                        {
                            Ok(Some(missing)) => {
                                lost = missing;
                                Ok(())
                            }
                            Ok(None) => Err(StorageError::permanent(format!(
                                "{object} already exists with other content; it was not written by this sink's current state (was data_dir reset?). Move it away to let this file be sealed"
                            ))),
                            Err(e) => Err(e),
                        },
                        Ok(None) => Err(StorageError::transient(format!("{object} was reported as existing, then not found"))),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            Done::Sealed { key, result, lost }
        }));
    }

    fn on_done(&mut self, done: Done, inflight: &mut FuturesUnordered<Request>) -> Result<(), ()> {
        match done {
            Done::Staged {
                staged,
                finalizers,
                spare,
            } => {
                if let Some(data) = spare {
                    self.recycle(data);
                }
                let events = staged.block.events as usize;
                let bytes = staged.block.bytes;
                let (key, object) = (staged.key.clone(), staged.object.clone());
                let file = match self.state.staged(staged, now_secs()) {
                    Ok(file) => file,
                    Err(e) => {
                        self.state_error(&e.to_string());
                        finalize_all(finalizers, EventStatus::Errored);
                        return Err(());
                    }
                };
                let roll =
                    file.bytes >= self.roll.max_bytes || file.blocks.len() >= MAX_BLOCKS_PER_FILE;
                let upto = file.blocks.len();
                // Only `every_batch` commits now; `on_seal` lists the ids once, at the seal.
                let ids = (self.commit == Commit::EveryBatch).then(|| file.block_ids());
                self.metrics.open_files(self.state.open.len());
                let rt = self.keys.entry(key.clone()).or_default();
                rt.seal_wanted |= roll;
                match self.commit {
                    Commit::OnSeal => {
                        rt.busy = false;
                        self.sent.emit(events, bytes as usize);
                        finalize_all(finalizers, EventStatus::Delivered);
                    }
                    Commit::EveryBatch => {
                        let ids = ids.unwrap_or_default();
                        let requests = self.requests.clone();
                        inflight.push(Box::pin(async move {
                            let result = requests
                                .run("Put Block List", || {
                                    requests.storage.commit_blocks(&object, &ids, false)
                                })
                                .await;
                            match result {
                                Ok(_) => Done::Committed {
                                    key,
                                    upto,
                                    finalizers,
                                    events,
                                    bytes,
                                },
                                Err(error) => Done::Failed {
                                    key: Some(key),
                                    object,
                                    error,
                                    finalizers,
                                },
                            }
                        }));
                    }
                }
            }
            Done::Committed {
                key,
                upto,
                finalizers,
                events,
                bytes,
            } => {
                if let Some(f) = self.state.open.get_mut(&key) {
                    f.committed = f.committed.max(upto);
                }
                if let Some(rt) = self.keys.get_mut(&key) {
                    rt.busy = false;
                }
                self.sent.emit(events, bytes as usize);
                finalize_all(finalizers, EventStatus::Delivered);
            }
            Done::Sealed { key, result, lost } => {
                let rt = self.keys.entry(key.clone()).or_default();
                rt.busy = false;
                match result {
                    Ok(()) => {
                        rt.seal_wanted = false;
                        rt.seal_retry_at = None;
                        let file = match self.state.sealed(&key, now_secs()) {
                            Ok(file) => file,
                            Err(e) => {
                                self.state_error(&e.to_string());
                                return Err(());
                            }
                        };
                        if let Some(file) = file {
                            if lost.is_empty() {
                                self.metrics
                                    .file_sealed(&file.object, file.events, file.bytes);
                            } else {
                                self.report_lost(&file, &lost);
                            }
                            let storage = Arc::clone(&self.requests.storage);
                            tokio::spawn(async move { storage.release(&file.object).await });
                        }
                        self.metrics.open_files(self.state.open.len());
                        if self
                            .keys
                            .get(&key)
                            .is_some_and(|rt| rt.buffer.is_none() && !rt.poisoned)
                        {
                            self.keys.remove(&key);
                        }
                    }
                    Err(e) => {
                        rt.seal_retry_at = Some(Instant::now() + Duration::from_secs(30));
                        ComponentError {
                            error_type: "seal_failed",
                            stage: Stage::Sending,
                            message: &format!("Sealing failed, retrying in 30s: {e}"),
                        }
                        .emit(&self.tags);
                    }
                }
            }
            Done::Failed {
                key,
                object,
                error,
                finalizers,
            } => {
                let events = finalizers.len();
                WriteFailed {
                    object: &object,
                    events,
                    error: &error.message,
                    permanent: !error.retriable,
                }
                .emit(&self.tags);
                if let Some(key) = key {
                    let rt = self.keys.entry(key).or_default();
                    rt.busy = false;
                    rt.poisoned = true;
                    if let Some(buffer) = rt.buffer.take() {
                        finalize_all(buffer.finalizers, EventStatus::Errored);
                    }
                }
                let status = if error.retriable {
                    EventStatus::Errored
                } else {
                    EventStatus::Rejected
                };
                finalize_all(finalizers, status);
            }
            Done::Put { finalizers, bytes } => {
                self.metrics.block_written(bytes);
                self.sent.emit(1, bytes);
                finalizers.finalize(EventStatus::Delivered);
            }
        }
        Ok(())
    }
}

/// When `existing` (a committed block list) is `ids` with some blocks left
/// out, in order, and none of those is staged any more, it is a salvage
/// commit of this file (whose state was not recorded before a crash): the
/// ids left out, which are lost.
fn salvaged_before(ids: &[String], existing: &[String], staged: &[String]) -> Option<Vec<String>> {
    let staged: HashSet<&String> = staged.iter().collect();
    let mut rest = existing.iter().peekable();
    let mut left_out = Vec::new();
    for id in ids {
        if rest.peek() == Some(&id) {
            rest.next();
        } else if staged.contains(id) {
            return None;
        } else {
            left_out.push(id.clone());
        }
    }
    (!existing.is_empty() && rest.next().is_none() && !left_out.is_empty()).then_some(left_out)
}

/// FNV-1a, for short stable names from document keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn a_salvage_commit_is_recognised_only_when_its_gaps_are_gone() {
        let all = ids("a b c d");
        // [b, d] committed, a and c no longer staged: our salvage.
        assert_eq!(
            salvaged_before(&all, &ids("b d"), &ids("")),
            Some(ids("a c"))
        );
        // c is still staged: not ours to explain away.
        assert_eq!(salvaged_before(&all, &ids("b d"), &ids("c")), None);
        // Out of order, foreign ids, empty, or nothing left out.
        assert_eq!(salvaged_before(&all, &ids("d b"), &ids("")), None);
        assert_eq!(salvaged_before(&all, &ids("x"), &ids("")), None);
        assert_eq!(salvaged_before(&all, &ids(""), &ids("")), None);
        assert_eq!(salvaged_before(&all, &all, &ids("")), None);
    }
}
