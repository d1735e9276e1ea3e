//! What the sink does with each finished request: a staged block is
//! recorded (in stream order) and its events acknowledged, a sealed file
//! leaves the state, and a failed write is held, given up or rejected.

use std::{sync::Arc, time::Instant};

use super::{inflight::Inflight, AdlsSink, SEAL_RETRY};
use crate::{
    event::{EventFinalizers, EventStatus},
    internal_events::adls::{FileOpened, WriteFailed},
    sinks::adls_partitioned_jsonl::{
        batcher::Arrived,
        recovery::report_lost,
        requests::{self, HeldWrite, WriteOutcome},
        roll::Commit,
        state::{FileKey, StagedBlock},
    },
    sinks::util::storage::StorageError,
};
use chrono::Utc;

impl AdlsSink {
    /// Applies a finished request's outcome. An error stops the sink: the
    /// state could not record what storage now holds.
    pub(super) async fn on_outcome(
        &mut self,
        outcome: WriteOutcome,
        inflight: &mut Inflight,
    ) -> Result<(), ()> {
        match outcome {
            WriteOutcome::BlockStaged {
                staged,
                finalizers,
                spare,
                seq,
            } => {
                self.on_block_staged(staged, finalizers, spare, seq, inflight)
                    .await?
            }
            WriteOutcome::BatchCommitted {
                key,
                upto,
                version,
                finalizers,
                events,
                bytes,
                object,
            } => {
                self.held.succeeded(&object);
                self.state.batch_committed(&key, upto, version);
                self.batcher.activity(key).exclusive_ended();
                self.delivered(finalizers, events, bytes);
            }
            WriteOutcome::FileSealed { key, result, lost } => match result {
                Ok(()) => self.on_file_sealed(key, &lost).await?,
                Err(e) => self.on_seal_failed(key, &e),
            },
            WriteOutcome::WriteFailed { request, error }
                if error.retriable && !self.stopping.is_cancelled() =>
            {
                self.held.hold(request, &error, &self.tags)
            }
            WriteOutcome::WriteFailed { request, error } if error.retriable => {
                self.give_up(request)
            }
            WriteOutcome::WriteFailed { request, error } => self.on_write_rejected(request, &error),
            WriteOutcome::EventPut {
                finalizers,
                bytes,
                object,
            } => {
                self.held.succeeded(&object);
                self.metrics.block_written(bytes);
                self.delivered(finalizers, 1, bytes as u64);
            }
        }
        Ok(())
    }

    /// A Put Block finished: it is recorded once every earlier Put Block of
    /// its file is, so the state lists blocks, and events are acknowledged,
    /// in stream order whatever order storage answered in.
    pub(super) async fn on_block_staged(
        &mut self,
        staged: StagedBlock,
        finalizers: EventFinalizers,
        spare: Option<Vec<u8>>,
        seq: u64,
        inflight: &mut Inflight,
    ) -> Result<(), ()> {
        self.held.succeeded(&staged.object);
        if let Some(data) = spare {
            self.batcher.recycle(data);
        }
        let key = staged.key.clone();
        let activity = self.batcher.activity(key.clone());
        if let Err(dropped) = activity.arrive(seq, Arrived { staged, finalizers }) {
            // After a refused write of the window: not recorded, replayed
            // after a restart like every later event of the window.
            dropped.finalize(EventStatus::Errored);
            return Ok(());
        }
        while let Some(next) = self.batcher.activity(key.clone()).next_arrived() {
            self.record_block(next.staged, next.finalizers, inflight)
                .await?;
        }
        Ok(())
    }

    /// Records the block; `on_seal` acknowledges now, `every_batch` after
    /// the commit that makes the batch visible.
    pub(super) async fn record_block(
        &mut self,
        staged: StagedBlock,
        finalizers: EventFinalizers,
        inflight: &mut Inflight,
    ) -> Result<(), ()> {
        let (events, bytes) = (staged.block.events as usize, staged.block.bytes);
        let key = staged.key.clone();
        let file = match self
            .state
            .staged(staged.clone(), Utc::now().timestamp())
            .await
        {
            Ok(file) => file,
            Err(e) => {
                self.state_error(&e.to_string());
                finalizers.finalize(EventStatus::Errored);
                return Err(());
            }
        };
        if file.blocks.len() == 1 {
            let first_of_window = file.key.window_start > self.announced_window;
            self.announced_window = self.announced_window.max(file.key.window_start);
            self.metrics.file_opened(FileOpened {
                object: &file.object,
                window_start: file.key.window_start,
                window_closes_at: self.roll.closes_at(&file.key),
                max_age_at: self.roll.max_age_at(file),
                every_batch: self.commit == Commit::EveryBatch,
                first_of_window,
            });
        }
        let roll = self.roll.full(file);
        // Only `every_batch` commits now; `on_seal` lists the ids once, at
        // the seal.
        let commit =
            (self.commit == Commit::EveryBatch).then(|| (file.block_ids(), file.version.clone()));
        self.metrics.open_files(self.state.open_count());
        let activity = self.batcher.activity(key);
        activity.want_seal(roll);
        match commit {
            None => self.delivered(finalizers, events, bytes),
            Some((ids, version)) => {
                activity.exclusive_started();
                inflight.push(
                    0,
                    requests::commit_batch(self.storage.clone(), staged, ids, version, finalizers),
                )
            }
        }
        Ok(())
    }

    pub(super) async fn on_file_sealed(&mut self, key: FileKey, lost: &[String]) -> Result<(), ()> {
        self.batcher.activity(key.clone()).sealed();
        let file = match self.state.sealed(&key, Utc::now().timestamp()).await {
            Ok(file) => file,
            Err(e) => {
                self.state_error(&e.to_string());
                return Err(());
            }
        };
        if let Some(file) = file {
            self.health.clear(&format!("seal:{}", file.object));
            if lost.is_empty() {
                self.metrics
                    .file_sealed(&file.object, file.events, file.bytes);
            } else {
                report_lost(&file, lost, &self.tags);
            }
            let storage = Arc::clone(&self.storage.storage);
            tokio::spawn(async move { storage.release(&file.object, &file.block_ids()).await });
        }
        self.metrics.open_files(self.state.open_count());
        self.batcher.forget_if_idle(&key);
        Ok(())
    }

    pub(super) fn on_seal_failed(&mut self, key: FileKey, error: &StorageError) {
        let object = self
            .state
            .open_file(&key)
            .map(|f| f.object.clone())
            .unwrap_or_default();
        self.batcher
            .activity(key)
            .seal_failed(Instant::now() + SEAL_RETRY);
        let message = format!(
            "Sealing failed, retrying in {}s: {error}",
            SEAL_RETRY.as_secs()
        );
        self.error("seal_failed", &message);
        if !error.retriable {
            // Retrying cannot fix it (another writer's file under this
            // name, say): unhealthy however the other files fare, until it
            // is sealed after all (the file was moved away).
            self.health
                .condition(&format!("seal:{}", object), &message, true);
        }
    }

    /// Storage refused a write for good (403, 404): its events are not
    /// delivered, and every later event of the window is held back until a
    /// restart, so a replay cannot skip past the lost ones.
    pub(super) fn on_write_rejected(&mut self, request: HeldWrite, error: &StorageError) {
        WriteFailed {
            object: request.object(),
            events: request.events(),
            error: &error.message,
        }
        .emit(&self.tags);
        self.poison(&request);
        request.into_finalizers().finalize(EventStatus::Rejected);
    }

    /// At stop with storage still down: held writes are given up, their
    /// events left unacknowledged for the next start to replay.
    pub(super) fn give_up_held(&mut self) {
        for request in self.held.give_up() {
            self.give_up(request);
        }
    }

    pub(super) fn give_up(&mut self, request: HeldWrite) {
        self.poison(&request);
        request.into_finalizers().finalize(EventStatus::Errored);
    }

    /// After `failed` (given up or refused): fails the window's pending and
    /// later events, and the Put Blocks that arrived after it.
    pub(super) fn poison(&mut self, failed: &HeldWrite) {
        let Some(key) = failed.key() else {
            return;
        };
        if let Some(batch) = self.batcher.drop_batch(key) {
            batch.finalizers.finalize(EventStatus::Errored);
        }
        let stage = matches!(failed, HeldWrite::Stage(_));
        for arrived in self.batcher.activity(key.clone()).poison(stage) {
            arrived.finalizers.finalize(EventStatus::Errored);
        }
    }
}
