//! One table's Delta log (`<table>/_delta_log/`), read and written through
//! the lake's storage.
//!
//! Written by hand on purpose. The log's format is small (JSON lines, and
//! Parquet checkpoints through the `parquet` crate); what matters is how
//! each write is made, and delta-rs (the `deltalake` crate) decides that
//! itself: through `object_store`, a second Azure client beside the one
//! every other write of the agent goes through (its own auth forms,
//! retries and timeouts), retrying a create-only commit after a 5xx and
//! then reading its own landed commit as another writer's, and not
//! treating a 412 as a conflict (object_store 0.13). Here a commit is one
//! create-only put of `N.json` through the same fault-tested storage as
//! the data files, and a commit that already exists is read back and
//! recognised as this sink's own by its `txn` (`commit.rs`). It also keeps
//! the agent's cold build and binary small: delta-rs adds about 190
//! crates (including two C crypto libraries) to the arrow and parquet
//! ones used here.
//!
//! - `actions.rs`: the actions, as JSON.
//! - `snapshot.rs`: a table's state at a version (log replay).
//! - `checkpoint.rs`: checkpoints, written and read.
//! - `commit.rs`: committing a version exactly once.

pub mod actions;
pub mod checkpoint;
pub mod commit;
mod replay;
pub mod snapshot;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use snafu::Snafu;

pub use actions::{Action, Add, Format, Metadata, Protocol, Remove, Txn};

use super::requests::Requests;
use crate::sinks::util::storage::{Created, StorageError};

/// A failure reading or writing a table's log.
#[derive(Debug, Snafu)]
pub enum LogError {
    #[snafu(display("{source}"))]
    Storage { source: StorageError },
    /// A log object is not what the protocol says it must be.
    #[snafu(display(
        "table {table}: {what} is not valid ({message}); the table needs repair by hand"
    ))]
    Corrupt {
        table: String,
        what: String,
        message: String,
    },
    /// The table exists but this sink must not write it.
    #[snafu(display("table {table} cannot take this sink's commits: {reason}"))]
    Incompatible { table: String, reason: String },
}

impl LogError {
    /// Whether trying again may help (storage unavailable).
    pub fn retriable(&self) -> bool {
        matches!(self, LogError::Storage { source } if source.retriable)
    }
}

impl From<StorageError> for LogError {
    fn from(source: StorageError) -> Self {
        LogError::Storage { source }
    }
}

/// `_delta_log/_last_checkpoint`: where the newest checkpoint is.
#[derive(Debug, Serialize, Deserialize)]
pub struct LastCheckpoint {
    pub version: i64,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

/// One table's log.
#[derive(Clone)]
pub struct TableLog {
    pub requests: Requests,
    /// The table's folder (object name prefix, no trailing `/`).
    pub root: String,
}

impl TableLog {
    pub fn new(requests: Requests, root: &str) -> Self {
        Self {
            requests,
            root: root.to_string(),
        }
    }

    pub fn commit_name(&self, version: i64) -> String {
        format!("{}/_delta_log/{version:020}.json", self.root)
    }

    fn last_checkpoint_name(&self) -> String {
        format!("{}/_delta_log/_last_checkpoint", self.root)
    }

    fn corrupt(&self, what: impl Into<String>, message: impl ToString) -> LogError {
        LogError::Corrupt {
            table: self.root.clone(),
            what: what.into(),
            message: message.to_string(),
        }
    }

    /// The actions of version `version`, `None` when it does not exist.
    pub async fn read_commit(&self, version: i64) -> Result<Option<Vec<Action>>, LogError> {
        let name = self.commit_name(version);
        let Some(bytes) = self.requests.get(&name).await? else {
            return Ok(None);
        };
        actions::parse_commit(&bytes)
            .map(Some)
            .map_err(|e| self.corrupt(name, e))
    }

    /// Writes version `version` if no one has.
    pub async fn put_commit(&self, version: i64, bytes: Bytes) -> Result<Created, LogError> {
        Ok(self
            .requests
            .put_if_absent(&self.commit_name(version), bytes)
            .await?)
    }

    pub async fn last_checkpoint(&self) -> Result<Option<LastCheckpoint>, LogError> {
        let name = self.last_checkpoint_name();
        let Some(bytes) = self.requests.get(&name).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.corrupt(name, e))
    }

    /// Points `_last_checkpoint` at `checkpoint` unless it points at a
    /// newer one already. Two writers may race here; readers take the file
    /// as a hint and list past it, so an older value costs them time only.
    pub async fn set_last_checkpoint(&self, checkpoint: &LastCheckpoint) -> Result<(), LogError> {
        if let Some(now) = self.last_checkpoint().await? {
            if now.version >= checkpoint.version {
                return Ok(());
            }
        }
        let bytes = serde_json::to_vec(checkpoint).expect("serializes");
        self.requests
            .put(&self.last_checkpoint_name(), Bytes::from(bytes))
            .await?;
        Ok(())
    }
}
