//! Committing one table version exactly once.
//!
//! Every commit of this sink carries a `txn` action: `appId` names the
//! pipeline and table, `version` is the sink's own sequence number for the
//! table (it only rises), as Spark Structured Streaming makes its writes
//! idempotent. The commit is one create-only put of `_delta_log/N.json`,
//! so of two writers only one gets version N. When N exists, it is read:
//! - it holds this sink's `txn` at this sequence number or later: the
//!   commit was made already (a retry whose first attempt landed, a commit
//!   completed by the agent that took over, or by the one it took over
//!   from): done, nothing is written twice;
//! - otherwise another writer (Spark, an OPTIMIZE, ...) took N: its
//!   protocol and schema changes are checked, a compaction gives up if it
//!   removed one of the files the compaction rewrote, and N+1 is tried.
//!
//! The caller records the intent (exact files, positions, sequence
//! number) in its lease-fenced state before calling this, so an agent
//! that took over completes the same commit or finds it done.

use std::collections::HashSet;

use bytes::Bytes;
use serde_json::json;

use super::{snapshot::Snapshot, Action, Add, LogError, Metadata, Protocol, Remove, TableLog, Txn};
use crate::sinks::util::storage::Created;

/// What a commit does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// New rows.
    Append,
    /// Small files rewritten into larger ones (`dataChange = false`).
    Compact,
}

/// One commit to make.
pub struct Prepared<'a> {
    pub app_id: &'a str,
    pub seq: u64,
    pub operation: Operation,
    pub adds: &'a [Add],
    pub removes: &'a [Remove],
    pub rows: u64,
    /// The version to try first, less one: the newest version known (a
    /// compaction: the version it was planned at, so every later commit is
    /// checked for removes of its files). `None`: look the table up.
    pub after: Option<i64>,
}

/// How a commit ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The commit is `version` of the table; `found`: an earlier attempt
    /// made it (only the table's newest version is known then, which is
    /// what `version` says).
    Committed { version: i64, found: bool },
    /// A compaction whose input `path` another commit (`version`) removed
    /// first: nothing was committed.
    Conflict { version: i64, path: String },
}

/// What a new table starts with, and what an existing one must allow.
pub trait TableDefinition: Send + Sync {
    /// Protocol and metadata of a new table.
    fn create(&self) -> (Protocol, Metadata);
    /// Whether this sink may write a table with this schema.
    fn check(&self, metadata: &Metadata) -> Result<(), String>;
}

/// Commits `prepared` exactly once (module docs).
pub async fn commit(
    log: &TableLog,
    prepared: &Prepared<'_>,
    table: &dyn TableDefinition,
    now_ms: i64,
) -> Result<Outcome, LogError> {
    let incompatible = |reason: String| LogError::Incompatible {
        table: log.root.clone(),
        reason,
    };
    let mut latest = match prepared.after {
        Some(v) => v,
        None => match Snapshot::load(log, None).await? {
            None => -1,
            Some(snapshot) => {
                snapshot.protocol.writable().map_err(incompatible)?;
                table.check(&snapshot.metadata).map_err(incompatible)?;
                if let Some(&v) = snapshot.txns.get(prepared.app_id) {
                    if v >= prepared.seq as i64 {
                        return Ok(Outcome::Committed {
                            version: snapshot.version,
                            found: true,
                        });
                    }
                }
                snapshot.version
            }
        },
    };
    let removed: HashSet<&str> = prepared.removes.iter().map(|r| r.path.as_str()).collect();
    loop {
        let version = latest + 1;
        let bytes = encode(prepared, (version == 0).then(|| table.create()), now_ms);
        if log.put_commit(version, Bytes::from(bytes)).await? == Created::Created {
            return Ok(Outcome::Committed {
                version,
                found: false,
            });
        }
        let Some(winner) = log.read_commit(version).await? else {
            // Create-only said it exists; a reader that cannot see it yet
            // will on the next round.
            continue;
        };
        for action in &winner {
            if let Some(txn) = &action.txn {
                if txn.app_id == prepared.app_id && txn.version >= prepared.seq as i64 {
                    return Ok(Outcome::Committed {
                        version,
                        found: true,
                    });
                }
            }
        }
        for action in winner {
            if let Some(protocol) = action.protocol {
                protocol.writable().map_err(incompatible)?;
            }
            if let Some(metadata) = action.meta_data {
                table.check(&metadata).map_err(incompatible)?;
            }
            if let Some(remove) = action.remove {
                if removed.contains(remove.path.as_str()) {
                    return Ok(Outcome::Conflict {
                        version,
                        path: remove.path,
                    });
                }
            }
        }
        latest = version;
    }
}

/// The commit file: `commitInfo` first (as Spark writes it), the new
/// table's `protocol` and `metaData` for version 0, the `txn`, then the
/// files.
fn encode(p: &Prepared<'_>, create: Option<(Protocol, Metadata)>, now_ms: i64) -> Vec<u8> {
    let bytes: i64 = p.adds.iter().map(|a| a.size).sum();
    let info = match p.operation {
        Operation::Append => json!({
            "timestamp": now_ms,
            "operation": "STREAMING UPDATE",
            "operationParameters": {"outputMode": "Append", "queryId": p.app_id, "epochId": p.seq.to_string()},
            "isBlindAppend": true,
            "operationMetrics": {
                "numAddedFiles": p.adds.len().to_string(),
                "numOutputRows": p.rows.to_string(),
                "numOutputBytes": bytes.to_string(),
            },
            "engineInfo": concat!("mongo-adls/", env!("CARGO_PKG_VERSION")),
        }),
        Operation::Compact => json!({
            "timestamp": now_ms,
            "operation": "OPTIMIZE",
            "operationParameters": {"predicate": "[]", "zOrderBy": "[]", "auto": true},
            "isBlindAppend": false,
            "operationMetrics": {
                "numAddedFiles": p.adds.len().to_string(),
                "numRemovedFiles": p.removes.len().to_string(),
                "numAddedBytes": bytes.to_string(),
            },
            "engineInfo": concat!("mongo-adls/", env!("CARGO_PKG_VERSION")),
        }),
    };
    let mut actions = vec![Action {
        commit_info: Some(info),
        ..Default::default()
    }];
    if let Some((protocol, metadata)) = create {
        actions.push(Action {
            protocol: Some(protocol),
            ..Default::default()
        });
        actions.push(Action {
            meta_data: Some(metadata),
            ..Default::default()
        });
    }
    actions.push(Action {
        txn: Some(Txn {
            app_id: p.app_id.to_string(),
            version: p.seq as i64,
            last_updated: Some(now_ms),
        }),
        ..Default::default()
    });
    actions.extend(p.adds.iter().map(|a| Action {
        add: Some(a.clone()),
        ..Default::default()
    }));
    actions.extend(p.removes.iter().map(|r| Action {
        remove: Some(r.clone()),
        ..Default::default()
    }));
    super::actions::encode_commit(&actions)
}
