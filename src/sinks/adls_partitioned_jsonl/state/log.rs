//! The change log (`state.<generation>.log`): one JSON line per staged
//! block or sealed file, each one append at the length the writer expects
//! (so a stale writer, or a retry of an append that landed, writes
//! nothing), replayed over the snapshot on load. In the local store an
//! append is a write and an fdatasync: a torn last line is a write cut
//! short by a crash, never acknowledged, so it is ignored.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{FileKey, SinkState, StagedBlock};
use crate::state_store::StateError;

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change {
    Staged {
        staged: StagedBlock,
        at: i64,
    },
    /// A file is about to be sealed with its blocks as recorded.
    Sealing {
        key: FileKey,
        at: i64,
    },
    /// A file was sealed.
    Sealed {
        key: FileKey,
        at: i64,
    },
}

impl Change {
    /// When the change happened.
    pub(super) fn at(&self) -> i64 {
        match self {
            Change::Staged { at, .. } | Change::Sealing { at, .. } | Change::Sealed { at, .. } => {
                *at
            }
        }
    }
}

impl SinkState {
    pub(super) fn log_name(generation: u64) -> String {
        format!("state.{generation}.log")
    }

    /// The state logs (`state.<n>.log`) in the sink's folder.
    pub(super) async fn log_names(&self) -> Result<Vec<String>, StateError> {
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

    /// Applies the current generation's log. Loading only reads (`validate`
    /// loads the state of a running agent): logs of other generations (left
    /// by a crash during compaction; the snapshot holds them) and a torn
    /// last line (never acknowledged) are left for the next snapshot to
    /// clear, which comes before the next append.
    pub(super) async fn replay_log(&mut self) -> Result<(), StateError> {
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
            self.apply(change);
            self.log_lines += 1;
        }
        if complete < bytes.len() {
            tracing::warn!(log = %self.state.location(&name), "Ignoring a torn last line of the sink state log (a write interrupted by a crash; it was never acknowledged).");
            self.stale = true;
        }
        self.log_bytes = complete as u64;
        Ok(())
    }

    /// Appends `change` to the current generation's log as one durable
    /// line; the log is created on first use.
    pub(super) async fn append(&mut self, change: &Change) -> Result<(), StateError> {
        let name = Self::log_name(self.generation);
        if !self.log {
            self.state.create_log(&name).await?;
            self.log = true;
        }
        let mut line = serde_json::to_vec(change).expect("state serializes");
        line.push(b'\n');
        self.log_bytes = self
            .state
            .append(&name, Bytes::from(line), self.log_bytes)
            .await?;
        self.log_lines += 1;
        Ok(())
    }
}
