//! The sink on its own: events made in memory (no mongod) go through the
//! real run loop into a real `file://` lake on disk. Batching, window
//! sealing, size rolls, acknowledgements and the replay skip across a
//! restart are checked here; `tests/adls_sink.rs` covers the same against
//! MongoDB and Azurite.

use std::{path::Path, sync::Arc};

use bson::{doc, RawDocumentBuf, Timestamp};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::config::AdlsPartitionedJsonlConfig;
use crate::sinks::util::storage::{
    hooked::{Hooked, Hooks},
    Storage, StorageError,
};
use crate::{
    config::GlobalOptions,
    event::{
        BatchNotifier, BatchStatus, BatchStatusReceiver, Event, EventMetadata, LogEvent, Position,
        Watermark,
    },
    internal_events::ComponentTags,
    sinks::{SinkConfig, SinkContext},
};

/// One hour from 2025-08-10T19:00:00Z.
const HOUR: i64 = 1_754_852_400;

fn config(root: &Path, extra: &str) -> AdlsPartitionedJsonlConfig {
    toml::from_str(&format!(
        "account_url = \"file://{}\"\nfilesystem = \"lake\"\ncreate_filesystem = true\nbatch.timeout_secs = 0.05\nroll.grace_secs = 0\n{extra}",
        root.display()
    ))
    .unwrap()
}

/// Change event `seq` of `coll` at `time` (seconds), with its position.
fn event(coll: &str, seq: u64, time: i64) -> (Event, BatchStatusReceiver) {
    let payload = RawDocumentBuf::from_document(&doc! {
        "_id": { "_data": format!("{seq:08X}") },
        "operationType": "insert",
        "clusterTime": Timestamp { time: time as u32, increment: 1 },
        "ns": { "db": "shop", "coll": coll },
        "documentKey": { "_id": seq as i64 },
        "fullDocument": { "_id": seq as i64, "seq": seq as i64 },
    })
    .unwrap();
    let (batch, receiver) = BatchNotifier::new_with_receiver();
    let log = LogEvent::new(
        payload,
        EventMetadata {
            source_id: Arc::from("src"),
            position: Some(Position(format!("{seq:08X}"))),
            event_time: None,
        },
    )
    .with_batch_notifier(&batch);
    (Event::Log(log), receiver)
}

fn watermark(time: i64) -> Event {
    Event::Watermark(Watermark {
        source_id: Arc::from("src"),
        time: DateTime::<Utc>::from_timestamp(time, 0).unwrap(),
        idle: true,
    })
}

/// Runs a sink over `events` until they end; returns each event's
/// acknowledgement.
async fn run(
    root: &Path,
    extra: &str,
    events: Vec<(Event, Option<BatchStatusReceiver>)>,
) -> Vec<BatchStatus> {
    run_paced(root, extra, events, std::time::Duration::ZERO).await
}

/// `run` with a pause before each event, so the sink sees them one by one
/// (a ready stream reaches it in chunks, each chunk one batch).
async fn run_paced(
    root: &Path,
    extra: &str,
    events: Vec<(Event, Option<BatchStatusReceiver>)>,
    pause: std::time::Duration,
) -> Vec<BatchStatus> {
    let config = config(root, extra);
    let cx = SinkContext {
        key: "lake".into(),
        globals: GlobalOptions {
            data_dir: Some(root.join("data")),
            ..Default::default()
        },
        state: Some(crate::state_store::StateHandle::local(root.join("data")).component("lake")),
        tags: ComponentTags::new("lake", "sink", "adls_partitioned_jsonl"),
        stopping: crate::shutdown::ShutdownSignal::new(),
        inputs: vec!["src".into()],
        pipelines: Default::default(),
    };
    let (sink, healthcheck) = config.build(cx).await.unwrap();
    healthcheck.await.unwrap();
    let (events, receivers): (Vec<Event>, Vec<Option<BatchStatusReceiver>>) =
        events.into_iter().unzip();
    let input = futures::stream::iter(events).then(move |e| async move {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        e
    });
    sink.run(input.boxed()).await.unwrap();
    let mut statuses = Vec::new();
    for r in receivers.into_iter().flatten() {
        statuses.push(r.await);
    }
    statuses
}

fn events(
    coll: &str,
    seqs: std::ops::RangeInclusive<u64>,
    time: i64,
) -> Vec<(Event, Option<BatchStatusReceiver>)> {
    seqs.map(|s| {
        let (e, r) = event(coll, s, time);
        (e, Some(r))
    })
    .collect()
}

/// The `seq` of every line of a visible file.
fn seqs(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["fullDocument"]["seq"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

fn hour_file(root: &Path, coll: &str, suffix: &str) -> std::path::PathBuf {
    root.join(format!(
        "lake/shop/{coll}/year=2025/month=08/day=10/hour=19/events-20250810-19{suffix}.jsonl"
    ))
}

#[tokio::test]
async fn a_closed_window_is_sealed_with_its_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = events("orders", 1..=50, HOUR + 10);
    input.extend(events("users", 51..=60, HOUR + 20));
    // The watermark passes the hour: both files seal.
    input.push((watermark(HOUR + 3600), None));
    let statuses = run(dir.path(), "", input).await;
    assert_eq!(statuses.len(), 60);
    assert!(
        statuses.iter().all(|s| *s == BatchStatus::Delivered),
        "{statuses:?}"
    );
    assert_eq!(
        seqs(&hour_file(dir.path(), "orders", "")),
        (1..=50).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&hour_file(dir.path(), "users", "")),
        (51..=60).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_open_window_stays_invisible_and_replays_are_skipped_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First run: events 1..=20, the hour still open at stop.
    let statuses = run(dir.path(), "", events("orders", 1..=20, HOUR + 10)).await;
    assert!(statuses.iter().all(|s| *s == BatchStatus::Delivered));
    assert!(
        !hour_file(dir.path(), "orders", "").exists(),
        "visible before its seal"
    );
    // Second run replays 11..=20 (the source's checkpoint trailed), then
    // new events; the window closes.
    let mut input = events("orders", 11..=30, HOUR + 10);
    input.push((watermark(HOUR + 3600), None));
    let statuses = run(dir.path(), "", input).await;
    assert!(
        statuses.iter().all(|s| *s == BatchStatus::Delivered),
        "replays are acknowledged"
    );
    assert_eq!(
        seqs(&hour_file(dir.path(), "orders", "")),
        (1..=30).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_full_file_rolls_into_the_next_part() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = events("orders", 1..=6, HOUR + 10);
    input.push((watermark(HOUR + 3600), None));
    // One event per batch, time to seal between them.
    let pause = std::time::Duration::from_millis(100);
    run_paced(
        dir.path(),
        "batch.max_events = 1\nroll.max_bytes = 400",
        input,
        pause,
    )
    .await;
    let mut all = Vec::new();
    for suffix in [
        "",
        "-part-0001",
        "-part-0002",
        "-part-0003",
        "-part-0004",
        "-part-0005",
    ] {
        let path = hour_file(dir.path(), "orders", suffix);
        if path.exists() {
            let part = seqs(&path);
            assert!(!part.is_empty());
            all.extend(part);
        }
    }
    assert!(
        hour_file(dir.path(), "orders", "-part-0001").exists(),
        "no roll happened"
    );
    assert_eq!(
        all,
        (1..=6).collect::<Vec<_>>(),
        "each event once, in order across parts"
    );
}

#[tokio::test]
async fn every_batch_makes_the_file_visible_as_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    run(
        dir.path(),
        "commit = \"every_batch\"",
        events("orders", 1..=5, HOUR + 10),
    )
    .await;
    assert_eq!(
        seqs(&hour_file(dir.path(), "orders", "")),
        (1..=5).collect::<Vec<_>>()
    );
    run(
        dir.path(),
        "commit = \"every_batch\"",
        events("orders", 3..=8, HOUR + 10),
    )
    .await;
    assert_eq!(
        seqs(&hour_file(dir.path(), "orders", "")),
        (1..=8).collect::<Vec<_>>()
    );
}

/// `run_paced` with the sink's storage behind `hooks`: a test's own
/// observer or delay in front of the real `file://` storage.
async fn run_hooked(
    root: &Path,
    extra: &str,
    hooks: impl Hooks + 'static,
    events: Vec<(Event, Option<BatchStatusReceiver>)>,
    pause: std::time::Duration,
) -> Vec<BatchStatus> {
    let config = config(root, extra);
    let layout = config.check().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(Hooked {
        inner: config.storage().unwrap(),
        hooks,
    });
    storage.healthcheck(false).await.unwrap();
    let state = super::state::SinkState::load(crate::state_store::StateHandle::local(
        root.join("data/lake"),
    ))
    .await
    .unwrap();
    let cx = SinkContext {
        key: "lake".into(),
        globals: GlobalOptions::default(),
        state: None,
        tags: ComponentTags::new("lake", "sink", "adls_partitioned_jsonl"),
        stopping: crate::shutdown::ShutdownSignal::new(),
        inputs: vec!["src".into()],
        pipelines: Default::default(),
    };
    let sink =
        super::sink::AdlsSink::new(config.settings(), layout, storage, state, cx, Vec::new());
    let (events, receivers): (Vec<Event>, Vec<Option<BatchStatusReceiver>>) =
        events.into_iter().unzip();
    let input = futures::stream::iter(events).then(move |e| async move {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        e
    });
    crate::sinks::StreamSink::run(Box::new(sink), input.boxed())
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for r in receivers.into_iter().flatten() {
        statuses.push(r.await);
    }
    statuses
}

/// Delays the first Put Block of every object, so later blocks of the same
/// file finish first, in front of the real `file://` storage: no real
/// store can be told to answer requests out of order on cue.
struct FirstBlockSlow {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Block ids in the order their Put Block finished.
    finished: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl Hooks for FirstBlockSlow {
    async fn stage_block(
        &self,
        inner: &dyn Storage,
        name: &str,
        id: &str,
        data: bytes::Bytes,
    ) -> Result<(), StorageError> {
        let first = self.seen.lock().unwrap().insert(name.to_string());
        if first {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        let result = inner.stage_block(name, id, data).await;
        self.finished.lock().unwrap().push(id.to_string());
        result
    }
}

/// Several Put Blocks of one file in flight, the first finishing last: the
/// file still lists them in stream order, and every event is acknowledged.
#[tokio::test]
async fn put_blocks_finishing_out_of_order_are_recorded_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hooks = FirstBlockSlow {
        seen: Default::default(),
        finished: Arc::clone(&finished),
    };
    let mut input = events("orders", 1..=40, HOUR + 10);
    input.push((watermark(HOUR + 3600), None));
    // Paced so batches of 5 form one after another while the first waits.
    let statuses = run_hooked(
        dir.path(),
        "batch.max_events = 5\nrequest.concurrency_per_file = 4",
        hooks,
        input,
        std::time::Duration::from_millis(5),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == BatchStatus::Delivered));
    assert_eq!(
        seqs(&hour_file(dir.path(), "orders", "")),
        (1..=40).collect::<Vec<_>>()
    );
    let finished = finished.lock().unwrap().clone();
    let mut sorted = finished.clone();
    sorted.sort();
    assert_ne!(
        finished, sorted,
        "a later block finished first: {finished:?}"
    );
}

/// Records the size of every Put Block, in front of the real `file://`
/// storage (which keeps no block boundaries once a file is sealed).
struct BlockSizes(Arc<std::sync::Mutex<Vec<usize>>>);

#[async_trait::async_trait]
impl Hooks for BlockSizes {
    async fn stage_block(
        &self,
        inner: &dyn Storage,
        name: &str,
        id: &str,
        data: bytes::Bytes,
    ) -> Result<(), StorageError> {
        self.0.lock().unwrap().push(data.len());
        inner.stage_block(name, id, data).await
    }
}

/// Events that reach the sink together (one ready chunk of up to 256) still
/// make blocks of `batch.max_bytes`: a batch is written as soon as it fills,
/// not after the chunk (256 events of 16 KB would make it 4 MB larger).
#[tokio::test]
async fn a_chunk_of_events_makes_blocks_of_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut input = events("orders", 1..=200, HOUR + 10);
    input.push((watermark(HOUR + 3600), None));
    // All ready at once: the sink takes them in chunks of 256.
    let statuses = run_hooked(
        dir.path(),
        "batch.max_bytes = 8192",
        BlockSizes(Arc::clone(&sizes)),
        input,
        std::time::Duration::ZERO,
    )
    .await;
    assert!(statuses.iter().all(|s| *s == BatchStatus::Delivered));
    let path = hour_file(dir.path(), "orders", "");
    assert_eq!(seqs(&path), (1..=200).collect::<Vec<_>>());
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::len)
        .max()
        .unwrap()
        + 1;
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.len() > 1, "{sizes:?}");
    assert!(
        sizes.iter().all(|&s| s < 8192 + line),
        "blocks of at most a line past 8192 bytes: {sizes:?}"
    );
}

/// Only batched files can spill: `per_event` writes each event as it
/// comes, and `batch.spill_max_bytes = 0` turns the spill off.
#[test]
fn only_rolling_files_open_a_spill() {
    let dir = tempfile::tempdir().unwrap();
    let opens = |extra: &str| {
        config(dir.path(), extra)
            .open_spill("out")
            .unwrap()
            .is_some()
    };
    assert!(opens(""));
    assert!(!opens("mode = \"per_event\""));
    assert!(!opens("batch.spill_max_bytes = 0"));
}
