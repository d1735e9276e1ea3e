//! A table's state as its actions are applied in order: a checkpoint
//! holds one, and a snapshot is one at a version.

use std::collections::{BTreeMap, HashMap};

use super::{Action, Add, LogError, Metadata, Protocol, Remove, TableLog};

/// What a table holds at `version`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub version: i64,
    pub protocol: Protocol,
    pub metadata: Metadata,
    /// The data files, by path.
    pub files: BTreeMap<String, Add>,
    /// Files removed, kept until vacuum, by path.
    pub tombstones: BTreeMap<String, Remove>,
    /// The newest `txn` version of each application.
    pub txns: HashMap<String, i64>,
}

/// A replay in progress.
#[derive(Default)]
pub struct Replay {
    pub version: i64,
    pub protocol: Option<Protocol>,
    pub metadata: Option<Metadata>,
    pub files: BTreeMap<String, Add>,
    pub tombstones: BTreeMap<String, Remove>,
    pub txns: HashMap<String, i64>,
}

impl Replay {
    /// Applies one version's actions (or a checkpoint's).
    pub fn apply(&mut self, version: i64, actions: Vec<Action>) {
        self.version = version;
        for action in actions {
            if let Some(add) = action.add {
                self.tombstones.remove(&add.path);
                self.files.insert(add.path.clone(), add);
            }
            if let Some(remove) = action.remove {
                self.files.remove(&remove.path);
                self.tombstones.insert(remove.path.clone(), remove);
            }
            if let Some(txn) = action.txn {
                self.txns.insert(txn.app_id, txn.version);
            }
            if let Some(protocol) = action.protocol {
                self.protocol = Some(protocol);
            }
            if let Some(metadata) = action.meta_data {
                self.metadata = Some(metadata);
            }
        }
    }

    pub(super) fn finish(self, log: &TableLog) -> Result<Snapshot, LogError> {
        let missing = |what: &str| LogError::Corrupt {
            table: log.root.clone(),
            what: format!("the log up to version {}", self.version),
            message: format!("it has no {what} action"),
        };
        Ok(Snapshot {
            version: self.version,
            protocol: self.protocol.clone().ok_or_else(|| missing("protocol"))?,
            metadata: self.metadata.clone().ok_or_else(|| missing("metaData"))?,
            files: self.files,
            tombstones: self.tombstones,
            txns: self.txns,
        })
    }
}
