//! The sink's durable state (`<id>/` in the state store, a snapshot and
//! a change log: `crate::sinks::util::state_log`): for every table its
//! commit sequence number (the `txn` version of its last commit), the
//! table version that commit became, the highest source position
//! committed, and the commit intent in flight.
//!
//! What makes commits exactly once: before a commit is sent, its intent
//! (sequence number, the exact files, the positions) is recorded here,
//! under the term's lease. A start or take-over completes a recorded
//! intent first (`log/commit.rs` finds it done or makes it); only then do
//! replayed events arrive, and those at or below the table's high-water
//! position are skipped. A stale agent whose intent write is refused
//! never commits.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::log::{commit::Operation, Add, Remove};
use crate::{
    event::Position,
    lineage::{Mark, SinkStateReport},
    sinks::util::state_log::{LoggedState, Model},
    state_store::{StateError, StateHandle},
};

/// A commit about to be made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Intent {
    pub seq: u64,
    pub operation: Operation,
    pub adds: Vec<Add>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removes: Vec<Remove>,
    /// Rows added (appends).
    pub rows: u64,
    /// Highest source position among the rows, and its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
    /// A compaction: the table version it was planned at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<i64>,
}

/// What is kept of one table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableState {
    /// The table's folder.
    pub root: String,
    /// The `txn` version of the newest commit recorded done (0: none).
    pub seq: u64,
    /// The table version that commit became, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Highest source position in a commit (made or intended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// Seconds since the epoch of the last vacuum (0: never).
    #[serde(default)]
    pub vacuumed_at: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// Names this sink in `txn` actions (`appId` = this and the table);
    /// set at the first start, from the pipeline id of its first input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app: Option<String>,
    tables: Vec<TableState>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    marks: BTreeMap<String, Mark>,
}

/// One line of the change log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The `app` of `txn` ids was chosen.
    App { app: String },
    /// A commit is about to be sent.
    Intent { table: String, intent: Intent },
    /// The table holds the intent's commit, as `version`.
    Committed {
        table: String,
        seq: u64,
        version: i64,
    },
    /// The intent was not committed and never will be (a compaction whose
    /// files another writer removed first).
    Abandoned { table: String, seq: u64 },
    /// A vacuum of the table starts (the fenced write that lets it), or,
    /// at a table's first commit, its vacuum clock does.
    Vacuuming { table: String, at: i64 },
    /// Several changes in one write, applied in order: the sink records
    /// every intent due in one round, and the commits done since, as one
    /// append, however many tables commit.
    Batch(Vec<Change>),
}

#[derive(Default)]
pub struct Tables {
    app: Option<String>,
    tables: HashMap<String, TableState>,
    marks: BTreeMap<String, Mark>,
}

impl Tables {
    fn table(&mut self, root: &str) -> &mut TableState {
        self.tables
            .entry(root.to_string())
            .or_insert_with(|| TableState {
                root: root.to_string(),
                seq: 0,
                version: None,
                high_water: None,
                intent: None,
                vacuumed_at: 0,
            })
    }
}

impl Model for Tables {
    type Snapshot = Persisted;
    type Change = Change;

    fn from_snapshot(p: Persisted) -> Self {
        Self {
            app: p.app,
            tables: p.tables.into_iter().map(|t| (t.root.clone(), t)).collect(),
            marks: p.marks,
        }
    }

    fn to_snapshot(&mut self, _now: i64) -> Persisted {
        let mut tables: Vec<TableState> = self.tables.values().cloned().collect();
        tables.sort_by(|a, b| a.root.cmp(&b.root));
        Persisted {
            app: self.app.clone(),
            tables,
            marks: self.marks.clone(),
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::App { app } => self.app = Some(app),
            Change::Intent { table, intent } => {
                if let (Some(source), Some(p)) = (&intent.source, &intent.high_water) {
                    let mark = self.marks.entry(source.to_string()).or_default();
                    if mark.written_up_to.as_ref().is_none_or(|w| w < p) {
                        mark.written_up_to = Some(p.clone());
                    }
                }
                let t = self.table(&table);
                if intent.high_water.is_some() && t.high_water < intent.high_water {
                    t.high_water = intent.high_water.clone();
                }
                t.intent = Some(intent);
            }
            Change::Committed {
                table,
                seq,
                version,
            } => {
                let t = self.table(&table);
                t.seq = t.seq.max(seq);
                t.version = Some(version);
                if t.intent.as_ref().is_some_and(|i| i.seq <= seq) {
                    t.intent = None;
                }
            }
            Change::Abandoned { table, seq } => {
                let t = self.table(&table);
                t.seq = t.seq.max(seq);
                if t.intent.as_ref().is_some_and(|i| i.seq <= seq) {
                    t.intent = None;
                }
            }
            Change::Vacuuming { table, at } => self.table(&table).vacuumed_at = at,
            Change::Batch(changes) => {
                for change in changes {
                    self.apply(change);
                }
            }
        }
    }
}

/// The state in memory, and where it is saved.
pub struct DeltaState {
    log: LoggedState<Tables>,
}

impl DeltaState {
    pub async fn load(state: StateHandle) -> Result<Self, StateError> {
        Ok(Self {
            log: LoggedState::load(state).await?,
        })
    }

    fn model(&self) -> &Tables {
        self.log.model()
    }

    /// Whether a snapshot existed, or the log held tables.
    pub fn found(&self) -> bool {
        self.log.found() || !self.model().tables.is_empty()
    }

    pub async fn record(&mut self, change: Change) -> Result<(), StateError> {
        let now = chrono::Utc::now().timestamp();
        self.log.record(change, now).await
    }

    pub async fn save(&mut self) -> Result<(), StateError> {
        self.log.save(chrono::Utc::now().timestamp()).await
    }

    pub fn app(&self) -> Option<&str> {
        self.model().app.as_deref()
    }

    pub fn table(&self, root: &str) -> Option<&TableState> {
        self.model().tables.get(root)
    }

    /// The sequence number the table's next commit takes: past the last
    /// one recorded done and the last intent (its commit may be done
    /// without being recorded yet).
    pub fn next_seq(&self, root: &str) -> u64 {
        self.table(root)
            .map_or(0, |t| t.seq.max(t.intent.as_ref().map_or(0, |i| i.seq)))
            + 1
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableState> {
        self.model().tables.values()
    }

    /// Records that this sink's events from `source` belong to `pipeline`
    /// (in memory: the caller saves). Whether that changed anything.
    pub fn adopt(&mut self, source: &str, pipeline: &str) -> bool {
        crate::lineage::adopt(&mut self.log.model_mut().marks, source, pipeline)
    }

    /// What the start check needs to know of this state.
    pub fn report(&self, sink: &str, lake_table: Option<String>) -> SinkStateReport {
        SinkStateReport {
            sink: sink.to_string(),
            location: self.log.location(),
            found: self.found(),
            written: self
                .model()
                .tables
                .values()
                .any(|t| t.seq > 0 || t.intent.is_some()),
            marks: self.model().marks.clone(),
            lake_file: lake_table,
        }
    }

    /// `state show`: the state for people.
    pub fn describe(&self) -> Vec<String> {
        if !self.found() {
            return vec![format!("no state ({})", self.log.location())];
        }
        let mut lines = vec![format!(
            "state {}: {} table(s)",
            self.log.location(),
            self.model().tables.len()
        )];
        let mut tables: Vec<&TableState> = self.model().tables.values().collect();
        tables.sort_by(|a, b| a.root.cmp(&b.root));
        for t in tables {
            lines.push(format!(
                "  table {}: version {}, txn version {}{}",
                t.root,
                t.version
                    .map_or_else(|| "(none yet)".into(), |v| v.to_string()),
                t.seq,
                t.intent.as_ref().map_or_else(String::new, |i| format!(
                    ", commit {} in flight ({:?}, {} file(s))",
                    i.seq,
                    i.operation,
                    i.adds.len()
                ))
            ));
        }
        for (source, mark) in &self.model().marks {
            lines.push(format!(
                "  source `{source}`: pipeline {}, committed up to {}",
                mark.pipeline.as_deref().unwrap_or("(unknown)"),
                mark.written_up_to
                    .as_ref()
                    .map_or_else(|| "(nothing yet)".into(), |p| p.to_string())
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(seq: u64, hw: &str) -> Intent {
        Intent {
            seq,
            operation: Operation::Append,
            adds: Vec::new(),
            removes: Vec::new(),
            rows: 1,
            high_water: Some(Position(hw.into())),
            source: Some("src".into()),
            planned_at: None,
        }
    }

    /// An intent survives a crash (it is in the log), moves the table's
    /// high-water mark at once, and is gone once committed.
    #[tokio::test]
    async fn intents_survive_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let handle = StateHandle::local(dir.path());
        let mut state = DeltaState::load(handle.clone()).await.unwrap();
        assert!(!state.found());
        let table = "shop/orders".to_string();
        state
            .record(Change::Intent {
                table: table.clone(),
                intent: intent(1, "05"),
            })
            .await
            .unwrap();
        drop(state);
        let mut state = DeltaState::load(handle.clone()).await.unwrap();
        let t = state.table(&table).unwrap();
        assert_eq!(t.intent.as_ref().unwrap().seq, 1);
        assert_eq!(t.high_water, Some(Position("05".into())));
        assert_eq!(
            state.report("lake", None).marks["src"].written_up_to,
            Some(Position("05".into()))
        );
        state
            .record(Change::Committed {
                table: table.clone(),
                seq: 1,
                version: 0,
            })
            .await
            .unwrap();
        state.save().await.unwrap();
        let state = DeltaState::load(handle).await.unwrap();
        let t = state.table(&table).unwrap();
        assert!(t.intent.is_none());
        assert_eq!((t.seq, t.version), (1, Some(0)));
        assert!(state.describe()[1].contains("version 0, txn version 1"));
    }
}
