//! A sink's durable state as a snapshot and a log of the changes since,
//! in the sink's folder of the state store. Both lake sinks keep their
//! state this way (the JSONL sink its open files and windows, the Delta
//! sink its tables and commit intents).
//!
//! A change costs one short append (`state.<generation>.log`, one JSON
//! line, landing only at the length the writer expects, so a stale writer
//! or a retry of an append that landed writes nothing), not a rewrite of
//! the whole state. When the log outgrows the snapshot, or at start and
//! stop, a new snapshot (`state.json`, replaced atomically from the
//! version read) with the next generation folds it in; a crash between the
//! two leaves a log of an old generation, which the snapshot already
//! contains: load ignores it and the next snapshot deletes it. In the
//! local store an append is a write and an fdatasync: a torn last line is
//! a write cut short by a crash, never acknowledged, so it is ignored.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::state_store::{StateDoc, StateError, StateHandle};

/// The log is folded into a new snapshot once it is larger than this and
/// than the snapshot.
const COMPACT_AFTER_BYTES: u64 = 1 << 20;

/// ... or once it holds this many lines: an append blob takes at most
/// 50,000 appends.
const COMPACT_AFTER_LINES: u64 = 40_000;

/// What a sink keeps: how it is saved whole, and how one change applies.
pub trait Model: Sized {
    /// The state as the snapshot holds it.
    type Snapshot: Serialize + DeserializeOwned + Default;
    /// One line of the log.
    type Change: Serialize + DeserializeOwned;

    fn from_snapshot(snapshot: Self::Snapshot) -> Self;

    /// The state to save; `now` (seconds since the epoch) lets it forget
    /// what it no longer needs first.
    fn to_snapshot(&mut self, now: i64) -> Self::Snapshot;

    /// Changes the state in memory (live, and when replaying the log).
    fn apply(&mut self, change: Self::Change);
}

/// The snapshot file: the model's snapshot and the generation whose log
/// continues it (absent in files of older versions: 0).
#[derive(Default, Serialize, Deserialize)]
struct Envelope<S> {
    #[serde(default)]
    generation: u64,
    #[serde(flatten)]
    body: S,
}

/// A model and where it is saved.
pub struct LoggedState<M> {
    state: StateHandle,
    file: StateDoc,
    generation: u64,
    /// The log of the current generation exists.
    log: bool,
    log_bytes: u64,
    /// Lines in the current log.
    log_lines: u64,
    snapshot_bytes: u64,
    /// Load found a torn line or logs of other generations: snapshot
    /// before appending.
    stale: bool,
    /// A snapshot existed at load.
    found: bool,
    model: M,
}

impl<M: Model> LoggedState<M> {
    /// Reads the state in `state` (the sink's folder of the store). Loading
    /// only reads (`validate` and `state show` load a running agent's
    /// state): logs of other generations and a torn last line are left for
    /// the next snapshot to clear, which comes before the next append.
    pub async fn load(state: StateHandle) -> Result<Self, StateError> {
        let file = state.doc("state.json");
        let persisted: Option<(Envelope<M::Snapshot>, u64)> = file.load_sized().await?;
        let found = persisted.is_some();
        let (persisted, snapshot_bytes) = persisted.unwrap_or_default();
        let mut loaded = Self {
            state,
            file,
            generation: persisted.generation,
            log: false,
            log_bytes: 0,
            log_lines: 0,
            snapshot_bytes,
            stale: false,
            found,
            model: M::from_snapshot(persisted.body),
        };
        loaded.replay_log().await?;
        Ok(loaded)
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, for changes kept in memory only (the caller knows they
    /// need not survive a crash).
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// Whether a snapshot existed at load.
    pub fn found(&self) -> bool {
        self.found
    }

    /// The generation of the current log.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the snapshot is, for messages.
    pub fn location(&self) -> String {
        self.file.location()
    }

    fn log_name(generation: u64) -> String {
        format!("state.{generation}.log")
    }

    /// The state logs (`state.<n>.log`) in the sink's folder.
    async fn log_names(&self) -> Result<Vec<String>, StateError> {
        let names = self.state.list("state.").await?;
        Ok(names
            .into_iter()
            .filter(|name| {
                name.strip_prefix("state.")
                    .and_then(|n| n.strip_suffix(".log"))
                    .is_some_and(|g| g.parse::<u64>().is_ok())
            })
            .collect())
    }

    /// Applies the current generation's log.
    async fn replay_log(&mut self) -> Result<(), StateError> {
        let name = Self::log_name(self.generation);
        self.stale = self.log_names().await?.iter().any(|other| *other != name);
        let Some(bytes) = self.state.read_log(&name).await? else {
            return Ok(());
        };
        self.log = true;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let change = serde_json::from_slice(line).map_err(|source| StateError::Corrupt {
                name: self.state.location(&name),
                source,
            })?;
            self.model.apply(change);
            self.log_lines += 1;
        }
        if complete < bytes.len() {
            tracing::warn!(log = %self.state.location(&name), "Ignoring a torn last line of the sink state log (a write interrupted by a crash; it was never acknowledged).");
            self.stale = true;
        }
        self.log_bytes = complete as u64;
        Ok(())
    }

    /// Makes a change durable (one line appended to the current log,
    /// created on first use), then applies it. `now` is seconds since the
    /// epoch, for a snapshot the append may trigger.
    pub async fn record(&mut self, change: M::Change, now: i64) -> Result<(), StateError> {
        if self.stale {
            self.save(now).await?;
        }
        let name = Self::log_name(self.generation);
        if !self.log {
            self.state.create_log(&name).await?;
            self.log = true;
        }
        let mut line = serde_json::to_vec(&change).expect("state serializes");
        line.push(b'\n');
        self.log_bytes = self
            .state
            .append(&name, Bytes::from(line), self.log_bytes)
            .await?;
        self.log_lines += 1;
        self.model.apply(change);
        if self.log_bytes > COMPACT_AFTER_BYTES.max(self.snapshot_bytes)
            || self.log_lines >= COMPACT_AFTER_LINES
        {
            self.save(now).await?;
        }
        Ok(())
    }

    /// Writes a snapshot of the whole state with the next generation and
    /// starts a new log, then deletes the logs it holds.
    pub async fn save(&mut self, now: i64) -> Result<(), StateError> {
        let body = self.model.to_snapshot(now);
        let old_logs = self.log_names().await?;
        self.snapshot_bytes = self
            .file
            .save(&Envelope {
                generation: self.generation + 1,
                body,
            })
            .await?;
        self.generation += 1;
        self.log = false;
        self.log_bytes = 0;
        self.log_lines = 0;
        self.stale = false;
        // Every log so far is in the snapshot.
        for name in old_logs {
            self.state.delete(&name).await?;
        }
        Ok(())
    }
}
