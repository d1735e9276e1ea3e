//! The sink's durable state (`<id>/` in the state store): for every open file its
//! object name and staged blocks, and for every namespace window the
//! highest source position already written and the next part number.
//!
//! This is what makes writes exactly-once. Events are acknowledged only
//! after their block is staged *and* this state records it; after a crash
//! the source replays from its checkpoint, and any replayed event at or
//! below its window's high-water position is skipped. Events of a window
//! reach its files in stream order, so "at or below" means "already
//! written".
//!
//! In the store: a snapshot and a log of the changes since, one JSON line
//! per staged block or sealed file (`crate::sinks::util::state_log`).
//! `log.rs` holds the changes, `report.rs` what the state tells the start
//! check and `state show`.

mod log;
mod report;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use self::log::Change;
use crate::{
    event::Position,
    lineage::{Mark, SinkStateReport},
    sinks::util::state_log::{LoggedState, Model},
    state_store::{StateError, StateHandle},
};

/// How long sealed windows are remembered for replay skipping. Replays only
/// start from the source's checkpoint, which trails the sink by seconds to
/// minutes, so a day is ample.
const SEALED_RETENTION_SECS: i64 = 24 * 3600;

/// A namespace and time window: the unit that owns a sequence of files.
/// Cloned per event, hence shared names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileKey {
    pub db: Arc<str>,
    pub coll: Arc<str>,
    /// Window start, seconds since the epoch (UTC).
    pub window_start: i64,
}

/// One staged (uncommitted or committed) block of an open file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub id: String,
    pub bytes: u64,
    pub events: u64,
}

/// A file being written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenFile {
    pub key: FileKey,
    /// 0 for the first file of a window, then 1, 2... after size rolls.
    pub part: u32,
    /// The final object name.
    pub object: String,
    pub blocks: Vec<Block>,
    /// With `commit = "every_batch"`: how many of `blocks` are committed.
    #[serde(default)]
    pub committed: usize,
    /// With `commit = "every_batch"`: the version (ETag) the last commit
    /// returned, the condition of the next. Not saved: read from storage
    /// after a restart.
    #[serde(skip)]
    pub version: Option<String>,
    pub bytes: u64,
    pub events: u64,
    /// Lowest source position in the file.
    #[serde(default)]
    pub first_position: Option<Position>,
    /// Highest source position in the file.
    pub high_water: Option<Position>,
    /// Wall-clock seconds when the file was opened (for `roll.max_age_secs`).
    pub opened_at: i64,
    /// The source of the file's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
    /// With `commit = "on_seal"`: the intent to seal is recorded, so the
    /// file takes no more blocks and its seal commits exactly `blocks`.
    /// Whoever holds the state next completes that commit first: an agent
    /// that lost its lease after recording the intent can then only
    /// commit what the next one commits too (DESIGN.md, "State in the lake
    /// and failover").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealing: bool,
}

impl OpenFile {
    pub fn block_ids(&self) -> Vec<String> {
        self.blocks.iter().map(|b| b.id.clone()).collect()
    }
}

/// What is remembered of a window whose files were all sealed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedWindow {
    pub key: FileKey,
    pub next_part: u32,
    pub high_water: Option<Position>,
    pub sealed_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Persisted {
    open: Vec<OpenFile>,
    sealed: Vec<SealedWindow>,
    /// Per source id: its pipeline and how far this sink got.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    marks: BTreeMap<String, Mark>,
}

/// A block staged for a file (opening the file with its first block).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StagedBlock {
    pub key: FileKey,
    pub part: u32,
    pub object: String,
    pub block: Block,
    /// Lowest and highest source positions of the block's events.
    pub first: Option<Position>,
    pub high_water: Option<Position>,
    /// The source of the block's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
}

/// The state in memory.
#[derive(Default)]
pub(crate) struct Files {
    open: HashMap<FileKey, OpenFile>,
    sealed: HashMap<FileKey, SealedWindow>,
    marks: BTreeMap<String, Mark>,
}

impl Model for Files {
    type Snapshot = Persisted;
    type Change = Change;

    fn from_snapshot(persisted: Persisted) -> Self {
        Self {
            open: persisted
                .open
                .into_iter()
                .map(|f| (f.key.clone(), f))
                .collect(),
            sealed: persisted
                .sealed
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect(),
            marks: persisted.marks,
        }
    }

    /// Sealed windows past their retention are dropped first.
    fn to_snapshot(&mut self, now: i64) -> Persisted {
        let marks = &mut self.marks;
        self.sealed.retain(|_, s| {
            let keep = now - s.sealed_at < SEALED_RETENTION_SECS;
            if let (false, Some(source), Some(hw)) = (keep, &s.source, &s.high_water) {
                let mark = marks.entry(source.to_string()).or_default();
                if mark.replay_floor.as_ref().is_none_or(|f| f < hw) {
                    mark.replay_floor = Some(hw.clone());
                }
            }
            keep
        });
        let mut open: Vec<OpenFile> = self.open.values().cloned().collect();
        open.sort_by(|a, b| a.key.cmp(&b.key));
        let mut sealed: Vec<SealedWindow> = self.sealed.values().cloned().collect();
        sealed.sort_by(|a, b| a.key.cmp(&b.key));
        Persisted {
            open,
            sealed,
            marks: self.marks.clone(),
        }
    }

    /// Changes the state in memory (live, and when replaying the log).
    fn apply(&mut self, change: Change) {
        match change {
            Change::Staged {
                staged:
                    StagedBlock {
                        key,
                        part,
                        object,
                        block,
                        first,
                        high_water,
                        source,
                    },
                at,
            } => {
                if let (Some(source), Some(p)) = (&source, &high_water) {
                    let mark = self.marks.entry(source.to_string()).or_default();
                    if mark.written_up_to.as_ref().is_none_or(|w| w < p) {
                        mark.written_up_to = Some(p.clone());
                    }
                }
                let file = self.open.entry(key.clone()).or_insert_with(|| OpenFile {
                    key,
                    part,
                    object,
                    blocks: Vec::new(),
                    committed: 0,
                    version: None,
                    bytes: 0,
                    events: 0,
                    first_position: None,
                    high_water: None,
                    opened_at: at,
                    source,
                    sealing: false,
                });
                file.bytes += block.bytes;
                file.events += block.events;
                if file.first_position.is_none() {
                    file.first_position = first;
                }
                if high_water.is_some() {
                    file.high_water = high_water;
                }
                file.blocks.push(block);
            }
            Change::Sealing { key, .. } => {
                if let Some(file) = self.open.get_mut(&key) {
                    file.sealing = true;
                }
            }
            Change::Sealed { key, at } => {
                let Some(file) = self.open.remove(&key) else {
                    return;
                };
                let high_water = file
                    .high_water
                    .max(self.sealed.get(&key).and_then(|s| s.high_water.clone()));
                self.sealed.insert(
                    key.clone(),
                    SealedWindow {
                        key,
                        next_part: file.part + 1,
                        high_water,
                        sealed_at: at,
                        source: file.source,
                    },
                );
            }
        }
    }
}

/// The state in memory, and where it is saved.
pub struct SinkState {
    log: LoggedState<Files>,
    /// A snapshot existed at load, or the log held files.
    found: bool,
}

impl SinkState {
    /// Reads the state in `state` (the sink's folder of the store).
    pub async fn load(state: StateHandle) -> Result<Self, StateError> {
        let log = LoggedState::<Files>::load(state).await?;
        let found = log.found() || !log.model().open.is_empty() || !log.model().sealed.is_empty();
        Ok(Self { log, found })
    }

    fn files(&self) -> &Files {
        self.log.model()
    }

    fn files_mut(&mut self) -> &mut Files {
        self.log.model_mut()
    }

    /// Makes a change durable (one fsynced line), then applies it.
    async fn record(&mut self, change: Change) -> Result<(), StateError> {
        let at = change.at();
        self.log.record(change, at).await
    }

    /// Records a staged block (opening its file), and returns the file.
    pub async fn staged(&mut self, staged: StagedBlock, now: i64) -> Result<&OpenFile, StateError> {
        let key = staged.key.clone();
        self.record(Change::Staged { staged, at: now }).await?;
        Ok(&self.files().open[&key])
    }

    /// Records the intent to seal an open file with its blocks as they
    /// are (`commit = "on_seal"`), before the commit is sent.
    pub async fn sealing(&mut self, key: &FileKey, now: i64) -> Result<(), StateError> {
        if self.files().open.get(key).is_none_or(|f| f.sealing) {
            return Ok(());
        }
        self.record(Change::Sealing {
            key: key.clone(),
            at: now,
        })
        .await
    }

    /// Records that an open file was sealed, and returns it.
    pub async fn sealed(
        &mut self,
        key: &FileKey,
        now: i64,
    ) -> Result<Option<OpenFile>, StateError> {
        let Some(file) = self.files().open.get(key).cloned() else {
            return Ok(None);
        };
        self.record(Change::Sealed {
            key: key.clone(),
            at: now,
        })
        .await?;
        Ok(Some(file))
    }

    /// Writes a snapshot of the whole state with the next generation and
    /// starts a new log; sealed windows past their retention are dropped.
    pub async fn save(&mut self, now: i64) -> Result<(), StateError> {
        self.log.save(now).await
    }

    /// `every_batch` recovery: the file's blocks, less `lost` ones that
    /// storage no longer had, are all committed. In memory; the snapshot at
    /// the end of recovery saves it.
    pub fn all_committed(&mut self, key: &FileKey, lost: &[String], version: String) {
        let Some(file) = self.files_mut().open.get_mut(key) else {
            return;
        };
        if !lost.is_empty() {
            let lost: std::collections::HashSet<&String> = lost.iter().collect();
            for b in file.blocks.iter().filter(|b| lost.contains(&b.id)) {
                file.bytes -= b.bytes;
                file.events -= b.events;
            }
            file.blocks.retain(|b| !lost.contains(&b.id));
        }
        file.committed = file.blocks.len();
        file.version = Some(version).filter(|v| !v.is_empty());
    }

    /// `every_batch`: the file's first `upto` blocks are committed. Kept in
    /// memory only: recovery commits the whole list again at start, which
    /// is idempotent.
    pub fn batch_committed(&mut self, key: &FileKey, upto: usize, version: String) {
        if let Some(f) = self.files_mut().open.get_mut(key) {
            f.committed = f.committed.max(upto);
            f.version = Some(version).filter(|v| !v.is_empty());
        }
    }

    pub fn open_file(&self, key: &FileKey) -> Option<&OpenFile> {
        self.files().open.get(key)
    }

    pub fn open_files(&self) -> impl Iterator<Item = &OpenFile> {
        self.files().open.values()
    }

    pub fn open_count(&self) -> usize {
        self.files().open.len()
    }

    /// Windows remembered after all their files were sealed.
    pub fn sealed_count(&self) -> usize {
        self.files().sealed.len()
    }

    /// The highest position written for a window, open or sealed.
    pub fn high_water(&self, key: &FileKey) -> Option<&Position> {
        let open = self
            .files()
            .open
            .get(key)
            .and_then(|f| f.high_water.as_ref());
        let sealed = self
            .files()
            .sealed
            .get(key)
            .and_then(|s| s.high_water.as_ref());
        open.max(sealed)
    }

    /// Records that this sink's events from `source` belong to `pipeline`
    /// (in memory: the caller saves). Whether that changed anything.
    pub fn adopt(&mut self, source: &str, pipeline: &str) -> bool {
        crate::lineage::adopt(&mut self.files_mut().marks, source, pipeline)
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, path::Path};

    use super::*;

    fn key(coll: &str) -> FileKey {
        FileKey {
            db: "d".into(),
            coll: coll.into(),
            window_start: 0,
        }
    }

    fn block(id: &str) -> Block {
        Block {
            id: id.into(),
            bytes: 10,
            events: 2,
        }
    }

    fn sb(
        key: &FileKey,
        part: u32,
        object: &str,
        block: Block,
        first: Option<Position>,
        high_water: Option<Position>,
    ) -> StagedBlock {
        StagedBlock {
            key: key.clone(),
            part,
            object: object.into(),
            block,
            first,
            high_water,
            source: None,
        }
    }

    fn pos(p: &str) -> Option<Position> {
        Some(Position(p.into()))
    }

    async fn load(dir: &Path) -> SinkState {
        SinkState::load(StateHandle::local(dir)).await.unwrap()
    }

    /// What a reload must reproduce.
    fn summary(state: &SinkState) -> Vec<String> {
        let mut out: Vec<String> = state
            .files()
            .open
            .values()
            .map(|f| format!("open {f:?}"))
            .chain(
                state
                    .files()
                    .sealed
                    .values()
                    .map(|s| format!("sealed {s:?}")),
            )
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn high_water_spans_open_and_sealed_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = load(dir.path()).await;
        let k = key("c");
        state
            .staged(sb(&k, 0, "o", block("a"), pos("01"), pos("05")), 0)
            .await
            .unwrap();
        state.sealed(&k, 100).await.unwrap().unwrap();
        assert_eq!(state.next_part(&k), 1);
        assert_eq!(state.high_water(&k), pos("05").as_ref());
        state.save(100).await.unwrap();

        let mut state = load(dir.path()).await;
        assert_eq!(state.high_water(&k), pos("05").as_ref());
        state.save(100 + SEALED_RETENTION_SECS).await.unwrap();
        assert_eq!(
            state.high_water(&k),
            None,
            "old sealed windows are forgotten"
        );
    }

    /// Every change is in the log the moment `staged`/`sealed` return: a
    /// reload without any snapshot reproduces the state, and the snapshot
    /// file is not rewritten per change.
    #[tokio::test]
    async fn changes_survive_a_crash_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = load(dir.path()).await;
        state.save(0).await.unwrap();
        let snapshot = std::fs::read(dir.path().join("state.json")).unwrap();
        for (i, coll) in ["a", "b", "c"].iter().enumerate() {
            for j in 0..3 {
                let hw = format!("{i}{j}");
                state
                    .staged(sb(&key(coll), 0, coll, block(&hw), pos("00"), pos(&hw)), 5)
                    .await
                    .unwrap();
            }
        }
        state.sealed(&key("b"), 7).await.unwrap().unwrap();
        state
            .staged(sb(&key("b"), 1, "b-1", block("x"), pos("13"), pos("13")), 8)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            snapshot
        );
        let expected = summary(&state);
        drop(state); // no save: a crash
        let reloaded = load(dir.path()).await;
        assert_eq!(summary(&reloaded), expected);
        assert_eq!(reloaded.files().open[&key("a")].blocks.len(), 3);
        assert_eq!(reloaded.files().open[&key("b")].part, 1);
        assert_eq!(reloaded.next_part(&key("b")), 1);
    }

    /// A line cut short by a crash was never acknowledged: it is dropped,
    /// and appends after the reload start on a clean line. Loading writes
    /// nothing (`validate` may load a running agent's state).
    #[tokio::test]
    async fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = load(dir.path()).await;
        state
            .staged(sb(&key("a"), 0, "o", block("1"), None, pos("01")), 0)
            .await
            .unwrap();
        let log = dir
            .path()
            .join(format!("state.{}.log", state.log.generation()));
        drop(state);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"staged":{"key":{"db":"d","#).unwrap();
        drop(f);
        let torn = std::fs::read(&log).unwrap();
        let mut state = load(dir.path()).await;
        assert_eq!(std::fs::read(&log).unwrap(), torn, "load only reads");
        assert_eq!(state.files().open[&key("a")].blocks.len(), 1);
        state
            .staged(sb(&key("a"), 0, "o", block("2"), None, pos("02")), 0)
            .await
            .unwrap();
        drop(state);
        let state = load(dir.path()).await;
        assert_eq!(state.files().open[&key("a")].block_ids(), vec!["1", "2"]);
        assert_eq!(state.high_water(&key("a")), pos("02").as_ref());
    }

    /// A complete line that does not parse is not a torn write: refuse to
    /// guess, naming the file.
    #[tokio::test]
    async fn a_corrupt_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = load(dir.path()).await;
        let log = dir
            .path()
            .join(format!("state.{}.log", state.log.generation()));
        std::fs::write(&log, "garbage\n").unwrap();
        let err = SinkState::load(StateHandle::local(dir.path()))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("corrupt") && err.contains(".log"), "{err}");
    }

    /// A big log is folded into a new snapshot; a crash after the snapshot
    /// and before the old log was deleted must not apply that log twice.
    #[tokio::test]
    async fn compaction_folds_the_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = load(dir.path()).await;
        let mut n = 0u64;
        while state.log.generation() == 0 {
            n += 1;
            state
                .staged(
                    sb(&key("a"), 0, "o", block(&format!("{n:040}")), None, None),
                    0,
                )
                .await
                .unwrap();
        }
        assert!(n > 1000, "compacted after {n} blocks");
        assert!(!dir.path().join("state.0.log").exists());
        // Simulate the crash: the old log is back next to the new snapshot.
        let mut old = String::new();
        for i in 0..3 {
            let change = Change::Staged {
                staged: sb(&key("a"), 0, "o", block(&format!("old{i}")), None, None),
                at: 0,
            };
            old.push_str(&serde_json::to_string(&change).unwrap());
            old.push('\n');
        }
        std::fs::write(dir.path().join("state.0.log"), old).unwrap();
        let expected = summary(&state);
        drop(state);
        let mut state = load(dir.path()).await;
        assert_eq!(summary(&state), expected);
        assert_eq!(state.files().open[&key("a")].blocks.len() as u64, n);
        assert!(dir.path().join("state.0.log").exists(), "load only reads");
        state
            .staged(sb(&key("a"), 0, "o", block("next"), None, None), 0)
            .await
            .unwrap();
        assert!(
            !dir.path().join("state.0.log").exists(),
            "stale log deleted"
        );
        drop(state);
        assert_eq!(
            load(dir.path()).await.files().open[&key("a")].blocks.len() as u64,
            n + 1
        );
    }

    /// A `state.json` written before the log existed loads as generation 0.
    #[tokio::test]
    async fn loads_a_snapshot_without_generation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("state.json"),
            r#"{"open":[],"sealed":[{"key":{"db":"d","coll":"c","window_start":0},"next_part":2,"high_water":"09","sealed_at":0}]}"#,
        )
        .unwrap();
        let state = load(dir.path()).await;
        assert_eq!(state.log.generation(), 0);
        assert_eq!(state.next_part(&key("c")), 2);
    }
}
