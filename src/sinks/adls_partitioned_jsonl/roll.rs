//! When batches are written and files sealed: a file is sealed when its
//! window has closed (the event-time watermark passed its end plus the
//! grace period), it reached `roll.max_bytes` or the block limit, or it is
//! older than `roll.max_age_secs`. The watermark advances with events and
//! with the sources' idle heartbeats, so quiet windows close too.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    batcher::Batcher,
    state::{FileKey, OpenFile, SinkState},
};

/// `commit`: when rolling files become visible.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Commit {
    /// A file appears under its final name only when sealed and never
    /// changes afterwards (default; safe for COPY INTO, Snowpipe, Auto Loader).
    #[default]
    OnSeal,
    /// The file is visible and grows after every batch, for near-real-time
    /// readers that tolerate changing files.
    EveryBatch,
}

/// When a file is sealed.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollConfig {
    /// Length of a file's time window in seconds (3600 = hourly files), by
    /// event time: clusterTime, then wallTime, then the ObjectId time of
    /// the document key, then now.
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// How long after the event-time watermark passes a window's end late
    /// events may still join its file before it is sealed.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// Seal a file at this size and continue in `-part-0001`, `-part-0002`...
    #[serde(default = "default_roll_bytes")]
    pub max_bytes: u64,
    /// Seal a file this many wall-clock seconds after it was opened, even if
    /// its window is still open (a quiet source without watermarks, a
    /// clock far ahead). Far below Azure's 7-day life of uncommitted
    /// blocks; files also seal at 49,000 blocks.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
}

impl Default for RollConfig {
    fn default() -> Self {
        Self {
            window_secs: default_window(),
            grace_secs: default_grace(),
            max_bytes: default_roll_bytes(),
            max_age_secs: default_max_age(),
        }
    }
}

fn default_window() -> u64 {
    3600
}
fn default_grace() -> u64 {
    60
}
fn default_roll_bytes() -> u64 {
    134_217_728
}
fn default_max_age() -> u64 {
    7200
}

/// Azure allows 50,000 committed blocks per blob; seal before that.
pub(super) const MAX_BLOCKS_PER_FILE: usize = 49_000;

/// Event-time progress per source; the sink's watermark is the slowest.
#[derive(Default)]
pub(super) struct Watermarks(HashMap<Arc<str>, DateTime<Utc>>);

impl Watermarks {
    pub fn advance(&mut self, source: &Arc<str>, time: DateTime<Utc>) {
        let entry = self.0.entry(Arc::clone(source)).or_insert(time);
        if time > *entry {
            *entry = time;
        }
    }

    pub fn effective(&self) -> Option<DateTime<Utc>> {
        self.0.values().min().copied()
    }
}

/// The seal conditions, from `roll.*`.
#[derive(Clone, Debug)]
pub(super) struct RollPolicy {
    pub window_secs: i64,
    pub grace_secs: i64,
    pub max_bytes: u64,
    pub max_age_secs: i64,
    /// How long a batch may wait for more events (`batch.timeout_secs`).
    pub batch_timeout: Duration,
}

impl RollPolicy {
    pub fn new(roll: &RollConfig, batch_timeout_secs: f64) -> Self {
        Self {
            window_secs: roll.window_secs as i64,
            grace_secs: roll.grace_secs as i64,
            max_bytes: roll.max_bytes,
            max_age_secs: roll.max_age_secs as i64,
            batch_timeout: Duration::from_secs_f64(batch_timeout_secs.max(0.0)),
        }
    }

    /// The watermark has passed the window's end plus the grace period.
    pub fn window_closed(&self, key: &FileKey, watermark: Option<DateTime<Utc>>) -> bool {
        watermark.is_some_and(|w| self.closes_at(key) <= w.timestamp())
    }

    /// When a watermark at or past it seals the window's files.
    pub fn closes_at(&self, key: &FileKey) -> i64 {
        key.window_start + self.window_secs + self.grace_secs
    }

    /// When `roll.max_age_secs` seals the file whatever the watermark.
    pub fn max_age_at(&self, file: &OpenFile) -> i64 {
        file.opened_at + self.max_age_secs
    }

    pub fn too_old(&self, file: &OpenFile, wall: i64) -> bool {
        wall >= self.max_age_at(file)
    }

    /// The file must be sealed before it takes another block.
    pub fn full(&self, file: &OpenFile) -> bool {
        file.bytes >= self.max_bytes || file.blocks.len() >= MAX_BLOCKS_PER_FILE
    }
}

/// What the clock, the watermark and the batches ask for now.
pub(super) struct Due {
    pub flushes: Vec<FileKey>,
    pub seals: Vec<FileKey>,
}

/// What `due` looks at: the moment, the watermark and which partial
/// batches to flush.
pub(super) struct DueCheck {
    pub instant: Instant,
    /// Wall-clock seconds.
    pub wall: i64,
    pub watermark: Option<DateTime<Utc>>,
    /// Write partial batches of at least this many bytes: 0 once the input
    /// ended or a source went idle, more when a source has caught up.
    pub flush_partial: Option<usize>,
}

/// Batches to write and files to seal. A file with a seal or commit in
/// flight waits for it; a batch waits while its file has as many Put
/// Blocks in flight as allowed; a seal waits for every Put Block of its
/// file to be recorded.
pub(super) fn due(
    policy: &RollPolicy,
    batcher: &Batcher,
    state: &SinkState,
    now: &DueCheck,
) -> Due {
    let mut due = Due {
        flushes: Vec::new(),
        seals: Vec::new(),
    };
    // Over the sink-wide budget: the largest batches that can go, early.
    let mut over = batcher.over_budget();
    let mut early: Vec<(&FileKey, usize)> = Vec::new();
    for (key, activity) in batcher.iter() {
        if activity.busy() {
            continue;
        }
        let file = state.open_file(key);
        let retry_ok = activity.seal_may_retry(now.instant);
        // A file full by size is sealed as soon as its blocks are recorded;
        // a pending batch then starts the next part (flushing it into this
        // file instead could put off the seal for as long as events keep
        // coming). So is a file whose seal intent is recorded (a seal that
        // failed and is retried): its seal commits exactly the recorded
        // blocks, so no batch may go into it.
        let sealing = file.is_some_and(|f| f.sealing);
        if (activity.seal_wanted() || sealing) && file.is_some() {
            if activity.staging() == 0 && retry_ok {
                due.seals.push(key.clone());
            }
            continue;
        }
        let window_closed = policy.window_closed(key, now.watermark);
        if let Some(batch) = activity.batch() {
            if !activity.can_stage(batcher.stage_limit()) {
                continue;
            }
            if now.flush_partial.is_some_and(|min| batch.len() >= min)
                || window_closed
                || batcher.limits().reached(batch)
                || now.instant.duration_since(batch.since) >= policy.batch_timeout
            {
                due.flushes.push(key.clone());
                over = over.saturating_sub(batch.data.len());
            } else if over > 0 {
                early.push((key, batch.data.len()));
            }
            continue;
        }
        let Some(file) = file else {
            continue;
        };
        if activity.staging() == 0 && (window_closed || policy.too_old(file, now.wall)) && retry_ok
        {
            due.seals.push(key.clone());
        }
    }
    if over > 0 {
        early.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
        for (key, bytes) in early {
            if over == 0 {
                break;
            }
            due.flushes.push(key.clone());
            over = over.saturating_sub(bytes);
        }
    }
    // Files opened by an earlier run, with no activity in this one yet.
    for file in state.open_files() {
        if batcher.get(&file.key).is_some() {
            continue;
        }
        if policy.window_closed(&file.key, now.watermark) || policy.too_old(file, now.wall) {
            due.seals.push(file.key.clone());
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        codecs::json::ExtendedJsonMode,
        event::EventFinalizers,
        sinks::adls_partitioned_jsonl::{
            batcher::BatchLimits,
            encode::EventFields,
            partition::Windows,
            spill::Spill,
            state::{Block, StagedBlock},
        },
        state_store::StateHandle,
    };

    fn policy() -> RollPolicy {
        RollPolicy::new(
            &RollConfig {
                window_secs: 60,
                grace_secs: 10,
                max_bytes: 1000,
                max_age_secs: 600,
            },
            5.0,
        )
    }

    fn key(window_start: i64) -> FileKey {
        FileKey {
            db: "d".into(),
            coll: "c".into(),
            window_start,
        }
    }

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(secs, 0)
    }

    fn now(watermark: i64, wall: i64, flush_partial: bool) -> DueCheck {
        DueCheck {
            instant: Instant::now(),
            wall,
            watermark: at(watermark),
            flush_partial: flush_partial.then_some(0),
        }
    }

    fn event() -> crate::event::LogEvent {
        let payload = bson::rawdoc! { "operationType": "insert", "ns": { "db": "d", "coll": "c" } };
        crate::event::LogEvent::new(
            payload,
            crate::event::EventMetadata {
                source_id: Arc::from("src"),
                position: None,
                event_time: None,
            },
        )
    }

    /// A state with one open file, of window 0, opened at 100.
    async fn one_open_file(dir: &std::path::Path) -> SinkState {
        let mut state = SinkState::load(StateHandle::local(dir)).await.unwrap();
        let staged = StagedBlock {
            key: key(0),
            part: 0,
            object: "o".into(),
            block: Block {
                id: "b".into(),
                bytes: 10,
                events: 1,
            },
            first: None,
            high_water: None,
            source: None,
        };
        state.staged(staged, 100).await.unwrap();
        state
    }

    #[test]
    fn windows_close_after_the_grace_period() {
        let p = policy();
        assert!(!p.window_closed(&key(0), at(69)));
        assert!(p.window_closed(&key(0), at(70)));
        assert!(!p.window_closed(&key(0), None));
    }

    #[tokio::test]
    async fn batches_are_due_when_full_partial_or_their_window_closed() {
        let dir = tempfile::tempdir().unwrap();
        let state = SinkState::load(StateHandle::local(dir.path()))
            .await
            .unwrap();
        let windows = Windows {
            window_secs: 60,
            tz: chrono_tz::Tz::UTC,
        };
        let mut batcher = Batcher::new(
            BatchLimits {
                max_bytes: 1 << 20,
                max_events: 2,
                max_total_bytes: 64 << 20,
            },
            2,
            ExtendedJsonMode::Relaxed,
        );
        let t = DateTime::from_timestamp(30, 0).unwrap();
        let k = batcher.route(&windows, ("d", "c"), t);
        assert_eq!(k, key(0));
        let add = |b: &mut Batcher| {
            let e = event();
            let fields = EventFields::read(&e.payload).unwrap();
            assert!(b
                .add(k.clone(), &e, &fields, t, None, EventFinalizers::default())
                .is_ok())
        };
        add(&mut batcher);
        let p = policy();
        assert!(due(&p, &batcher, &state, &now(30, 30, false))
            .flushes
            .is_empty());
        assert_eq!(
            due(&p, &batcher, &state, &now(30, 30, true)).flushes,
            [key(0)]
        );
        // A source that caught up while events may still trickle in has
        // only batches of at least the given size written.
        let caught_up = |min| DueCheck {
            flush_partial: Some(min),
            ..now(30, 30, false)
        };
        assert!(due(&p, &batcher, &state, &caught_up(1 << 18))
            .flushes
            .is_empty());
        assert_eq!(due(&p, &batcher, &state, &caught_up(10)).flushes, [key(0)]);
        assert_eq!(
            due(&p, &batcher, &state, &now(70, 30, false)).flushes,
            [key(0)]
        );
        add(&mut batcher);
        assert!(batcher.is_full());
        assert_eq!(
            due(&p, &batcher, &state, &now(30, 30, false)).flushes,
            [key(0)]
        );
        // Two Put Blocks of the file may be in flight; a third batch waits.
        assert!(batcher.take(&k).is_some());
        add(&mut batcher);
        assert_eq!(
            due(&p, &batcher, &state, &now(30, 30, true)).flushes,
            [key(0)]
        );
        assert_eq!(
            batcher.take(&k).and_then(Result::ok).map(|(_, seq)| seq),
            Some(1)
        );
        add(&mut batcher);
        let d = due(&p, &batcher, &state, &now(99, 30, true));
        assert!(d.flushes.is_empty() && d.seals.is_empty());
        assert!(batcher.take(&k).is_none());
    }

    /// Adds events numbered `from..from + n` to collection `coll`, at 30 s
    /// (window 0); the file's key.
    fn fill(batcher: &mut Batcher, coll: &str, from: i32, n: i32) -> FileKey {
        let windows = Windows {
            window_secs: 60,
            tz: chrono_tz::Tz::UTC,
        };
        let t = DateTime::from_timestamp(30, 0).unwrap();
        let k = batcher.route(&windows, ("d", coll), t);
        for i in from..from + n {
            let mut e = event();
            e.payload.append("i", i);
            let fields = EventFields::read(&e.payload).unwrap();
            assert!(batcher
                .add(k.clone(), &e, &fields, t, None, EventFinalizers::default())
                .is_ok());
        }
        k
    }

    #[tokio::test]
    async fn past_the_total_budget_the_largest_batches_go_early() {
        let dir = tempfile::tempdir().unwrap();
        let state = SinkState::load(StateHandle::local(dir.path()))
            .await
            .unwrap();
        let batcher = |max_total_bytes| {
            Batcher::new(
                BatchLimits {
                    max_bytes: 50 * 1000,
                    max_events: 1000,
                    max_total_bytes,
                },
                1,
                ExtendedJsonMode::Relaxed,
            )
        };
        // The encoded size of one event.
        let mut probe = batcher(usize::MAX);
        fill(&mut probe, "p", 0, 1);
        let e = probe.pending_bytes();
        // Intake stops at 120 events' worth; early writes start 50 below.
        let mut batcher = Batcher::new(
            BatchLimits {
                max_bytes: 50 * e,
                max_events: 1000,
                max_total_bytes: 120 * e,
            },
            1,
            ExtendedJsonMode::Relaxed,
        );
        fill(&mut batcher, "small", 0, 10);
        let large = fill(&mut batcher, "large", 0, 40);
        let p = policy();
        assert!(
            due(&p, &batcher, &state, &now(30, 30, false))
                .flushes
                .is_empty(),
            "within budget"
        );
        fill(&mut batcher, "medium", 0, 25);
        assert!(batcher.over_budget() > 0);
        let d = due(&p, &batcher, &state, &now(30, 30, false));
        assert_eq!(
            d.flushes,
            std::slice::from_ref(&large),
            "the largest, and only as many as needed"
        );
        fill(&mut batcher, "m2", 0, 25);
        assert!(!batcher.is_full());
        fill(&mut batcher, "m3", 0, 25);
        assert!(batcher.is_full(), "intake stops past the budget");
        assert!(batcher.take(&large).is_some());
        assert!(!batcher.is_full(), "taking the largest frees room");
    }

    #[tokio::test]
    async fn past_the_total_budget_batches_wait_in_the_spill_and_go_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = SinkState::load(StateHandle::local(dir.path()))
            .await
            .unwrap();
        let limits = |e: usize| BatchLimits {
            max_bytes: 50 * e,
            max_events: 1000,
            max_total_bytes: 120 * e,
        };
        let new_batcher = |e: usize, spill: Option<Spill>| {
            Batcher::new(limits(e), 1, ExtendedJsonMode::Relaxed).with_spill(spill)
        };
        // What 60 events of "a" are without a spill, and one event's size.
        let mut plain = new_batcher(usize::MAX / 200, None);
        let a = fill(&mut plain, "a", 0, 60);
        let e = plain.pending_bytes() / 60 + 1;
        let whole = plain.take(&a).unwrap().ok().unwrap().0.data;

        let spill_dir = tempfile::tempdir().unwrap();
        let mut batcher = new_batcher(e, Some(Spill::new(spill_dir.path(), 1 << 20).unwrap()));
        fill(&mut batcher, "a", 0, 40);
        fill(&mut batcher, "b", 0, 40);
        fill(&mut batcher, "c", 0, 40);
        assert!(batcher.over_budget() > 0);
        assert!(batcher.spill_over_budget().unwrap() > 0);
        assert!(
            batcher.pending_bytes() <= 60 * e,
            "spilled down to half the budget"
        );
        let p = policy();
        assert!(
            due(&p, &batcher, &state, &now(30, 30, false))
                .flushes
                .is_empty(),
            "nothing written early"
        );
        fill(&mut batcher, "a", 40, 20);
        let d = due(&p, &batcher, &state, &now(30, 30, false));
        assert_eq!(
            d.flushes,
            std::slice::from_ref(&a),
            "a is full, spilled bytes included"
        );
        let (taken, _) = batcher.take(&a).unwrap().ok().unwrap();
        assert_eq!(taken.events, 60);
        assert!(
            taken.data == whole,
            "spilled bytes, then those in memory, in order"
        );
        for coll in ["b", "c"] {
            let k = fill(&mut batcher, coll, 0, 0);
            assert_eq!(batcher.take(&k).unwrap().ok().unwrap().0.events, 40);
        }
        assert_eq!(
            batcher.spill_usage().unwrap().1,
            0,
            "every spilled byte freed"
        );

        // A spill with no room: the largest batches go early, as without.
        let mut batcher = new_batcher(e, Some(Spill::new(spill_dir.path(), 10).unwrap()));
        fill(&mut batcher, "a", 0, 30);
        let b = fill(&mut batcher, "b", 0, 45);
        fill(&mut batcher, "c", 0, 30);
        assert!(batcher.spill_over_budget().is_ok());
        let d = due(&p, &batcher, &state, &now(30, 30, false));
        assert_eq!(d.flushes, [b], "the largest goes early");
    }

    #[tokio::test]
    async fn files_of_an_earlier_run_are_sealed_when_closed_or_old() {
        let dir = tempfile::tempdir().unwrap();
        let state = one_open_file(dir.path()).await;
        let batcher = Batcher::new(
            BatchLimits {
                max_bytes: 10,
                max_events: 10,
                max_total_bytes: 100,
            },
            1,
            ExtendedJsonMode::Relaxed,
        );
        let p = policy();
        assert!(due(&p, &batcher, &state, &now(30, 100, false))
            .seals
            .is_empty());
        assert_eq!(
            due(&p, &batcher, &state, &now(70, 100, false)).seals,
            [key(0)]
        );
        assert_eq!(
            due(&p, &batcher, &state, &now(30, 700, false)).seals,
            [key(0)]
        );
    }

    /// A file whose seal intent is recorded (its seal failed and is to be
    /// retried) takes no more blocks: with a batch pending for its window
    /// it is sealed, not flushed into. Before this, the batch waited for
    /// the file and the file for the batch, and the window never sealed.
    #[tokio::test]
    async fn a_file_being_sealed_is_sealed_before_its_pending_batch_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = one_open_file(dir.path()).await;
        state.sealing(&key(0), 100).await.unwrap();
        let windows = Windows {
            window_secs: 60,
            tz: chrono_tz::Tz::UTC,
        };
        let mut batcher = Batcher::new(
            BatchLimits {
                max_bytes: 1 << 20,
                max_events: 100,
                max_total_bytes: 64 << 20,
            },
            2,
            ExtendedJsonMode::Relaxed,
        );
        let t = DateTime::from_timestamp(30, 0).unwrap();
        let k = batcher.route(&windows, ("d", "c"), t);
        let e = event();
        let fields = EventFields::read(&e.payload).unwrap();
        assert!(batcher
            .add(k.clone(), &e, &fields, t, None, EventFinalizers::default())
            .is_ok());
        let d = due(&policy(), &batcher, &state, &now(70, 100, true));
        assert_eq!(d.seals, [key(0)]);
        assert!(d.flushes.is_empty(), "{:?}", d.flushes);
    }
}
