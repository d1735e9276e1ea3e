//! At start, finish what a previous run left half done, and report blocks
//! that storage lost.

use std::collections::HashSet;

use chrono::Utc;

use super::{
    requests::RetryingStorage,
    roll::Commit,
    state::{OpenFile, SinkState},
};
use crate::internal_events::{adls::DataLost, ComponentTags};
use crate::sinks::util::storage::StorageError;

/// Open files older than this at start-up get a warning: Azure discards
/// uncommitted blocks a week after they were staged.
const STAGED_BLOCKS_WARN_SECS: i64 = 6 * 86_400;

/// Records as sealed the files whose seal was committed just before a crash
/// (so no late block is added to a visible file), and commits the last
/// staged blocks of `every_batch` files; then saves a snapshot.
pub(super) async fn recover(
    state: &mut SinkState,
    storage: &RetryingStorage,
    commit: Commit,
) -> Result<(), StorageError> {
    let open: Vec<OpenFile> = state.open_files().cloned().collect();
    let now = Utc::now().timestamp();
    for file in open {
        warn_if_blocks_may_be_gone(&file, now);
        match commit {
            Commit::OnSeal if file.sealing => complete_seal(state, storage, &file, now).await?,
            Commit::OnSeal => record_seal_if_committed(state, storage, &file, now).await?,
            Commit::EveryBatch if file.committed < file.blocks.len() => {
                // The version is read from storage: a commit of the last
                // run may have applied after its state was saved.
                let (result, lost) = storage
                    .commit_growing(&file.object, &file.block_ids(), None, true)
                    .await;
                let version = result?;
                if !lost.is_empty() {
                    // Reported again if the process dies before the save
                    // below records the shorter list.
                    report_lost(&file, &lost, &storage.tags);
                }
                state.all_committed(&file.key, &lost, version);
            }
            Commit::EveryBatch => {}
        }
    }
    state
        .save(now)
        .await
        .map_err(|e| StorageError::permanent(e.to_string()))
}

fn warn_if_blocks_may_be_gone(file: &OpenFile, now: i64) {
    if now - file.opened_at > STAGED_BLOCKS_WARN_SECS {
        tracing::warn!(
            object = %file.object,
            opened_days_ago = (now - file.opened_at) / 86_400,
            "This file has waited for its seal for days: Azure discards uncommitted blocks after 7 days, so some may be gone."
        );
    }
}

/// The seal of `file` was recorded as intended (and may have been
/// committed, by this agent's previous run or by an agent that lost its
/// lease): commit exactly the recorded blocks (a commit that already
/// landed counts as done), then record the seal.
async fn complete_seal(
    state: &mut SinkState,
    storage: &RetryingStorage,
    file: &OpenFile,
    now: i64,
) -> Result<(), StorageError> {
    tracing::info!(
        object = %file.object,
        "Completing a seal recorded before the last stop."
    );
    let (result, lost) = storage.seal(&file.object, &file.block_ids(), None).await;
    result?;
    if !lost.is_empty() {
        report_lost(file, &lost, &storage.tags);
    }
    state
        .sealed(&file.key, now)
        .await
        .map_err(|e| StorageError::permanent(e.to_string()))?;
    Ok(())
}

async fn record_seal_if_committed(
    state: &mut SinkState,
    storage: &RetryingStorage,
    file: &OpenFile,
    now: i64,
) -> Result<(), StorageError> {
    let existing = storage.committed_blocks(&file.object).await?;
    if existing.map(|list| list.ids) == Some(file.block_ids()) {
        tracing::info!(
            object = %file.object,
            "File was sealed just before the last stop; recording it."
        );
        state
            .sealed(&file.key, now)
            .await
            .map_err(|e| StorageError::permanent(e.to_string()))?;
    }
    Ok(())
}

/// Blocks of `file` were gone when it was committed: their events were
/// acknowledged, so they are not in the lake and will not be replayed.
/// Said loudly, with what an operator needs to re-read them.
pub(super) fn report_lost(file: &OpenFile, lost: &[String], tags: &ComponentTags) {
    let lost_ids: HashSet<&String> = lost.iter().collect();
    let (events, bytes) = file
        .blocks
        .iter()
        .filter(|b| lost_ids.contains(&b.id))
        .fold((0, 0), |(e, b), block| (e + block.events, b + block.bytes));
    DataLost {
        object: &file.object,
        blocks: lost.len(),
        of_blocks: file.blocks.len(),
        events,
        bytes,
        first: file.first_position.as_ref(),
        last: file.high_water.as_ref(),
    }
    .emit(tags);
}
