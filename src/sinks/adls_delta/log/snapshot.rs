//! A table's state at a version: the newest checkpoint at or before it
//! (`_last_checkpoint` says which), then every commit after it, in order
//! (PROTOCOL.md, "Action Reconciliation"). Commits are read one version
//! at a time until one is missing, so no listing of the log is needed:
//! a listing would return every commit since the table began.

pub use super::replay::{Replay, Snapshot};
use super::{checkpoint, LogError, TableLog};

impl Snapshot {
    /// The table at its newest version (`up_to: None`) or at `up_to`;
    /// `None` when the table does not exist yet.
    pub async fn load(log: &TableLog, up_to: Option<i64>) -> Result<Option<Snapshot>, LogError> {
        let mut start = log
            .last_checkpoint()
            .await?
            .filter(|c| up_to.is_none_or(|v| c.version <= v))
            .map(|c| (c.version, c.parts));
        let mut first = None;
        if start.is_none() {
            first = log.read_commit(0).await?;
            if first.is_none() {
                // No hint and no first commit: a new table, or one whose
                // early commits were cleaned up and whose hint is gone.
                // Never take the second for the first (a new version 0
                // would be written into it).
                start = match newest_checkpoint(log, up_to).await? {
                    Found::Nothing => return Ok(None),
                    Found::Checkpoint(version) => Some((version, None)),
                };
            }
        }
        let mut replay = match (start, first) {
            (Some((version, parts)), _) => Some(checkpoint::read(log, version, parts).await?),
            (None, Some(actions)) => {
                let mut replay = Replay::default();
                replay.apply(0, actions);
                Some(replay)
            }
            (None, None) => None,
        };
        let mut next = replay.as_ref().map_or(0, |r| r.version + 1);
        while up_to.is_none_or(|v| next <= v) {
            let Some(actions) = log.read_commit(next).await? else {
                break;
            };
            replay
                .get_or_insert_with(Replay::default)
                .apply(next, actions);
            next += 1;
        }
        match (replay, up_to) {
            (None, _) => Ok(None),
            (Some(r), Some(v)) if r.version != v => Err(LogError::Corrupt {
                table: log.root.clone(),
                what: format!("version {v}"),
                message: format!("the log ends at version {}", r.version),
            }),
            (Some(r), _) => r.finish(log).map(Some),
        }
    }
}

enum Found {
    Nothing,
    Checkpoint(i64),
}

/// The newest single-file checkpoint in a listing of the log; an error
/// when the log holds objects but no checkpoint to start from.
async fn newest_checkpoint(log: &TableLog, up_to: Option<i64>) -> Result<Found, LogError> {
    let prefix = format!("{}/_delta_log/", log.root);
    let listed = log.requests.list_until_done(&prefix).await?;
    if listed.is_empty() {
        return Ok(Found::Nothing);
    }
    let newest = listed
        .iter()
        .filter_map(|o| {
            o.name
                .strip_prefix(&prefix)?
                .strip_suffix(".checkpoint.parquet")?
                .parse::<i64>()
                .ok()
        })
        .filter(|v| up_to.is_none_or(|up_to| *v <= up_to))
        .max();
    newest
        .map(Found::Checkpoint)
        .ok_or_else(|| LogError::Corrupt {
            table: log.root.clone(),
            what: prefix,
            message: "it holds no version 0, no `_last_checkpoint` and no checkpoint to start from"
                .into(),
        })
}
