//! Where a run of the source begins: the checkpoint, an unfinished
//! snapshot, or the configured start, and the bookkeeping to begin with.

use std::{ops::ControlFlow, sync::Arc};

use super::{cluster_time_of, ChangeStreamSource, CopyRun, OpenAt, RunState, Stop};
use crate::{
    finalizer::OrderedFinalizer,
    internal_events::mongodb::{SnapshotCopied, StreamProgress},
    sources::mongodb_change_stream::{
        checkpoint::{Acks, Checkpoint, SnapshotProgress},
        incremental::IncrementalProgress,
        settings::{SnapshotMode, StartAt},
    },
};

impl ChangeStreamSource {
    /// Where to begin: the checkpoint, an unfinished snapshot, or the
    /// configured start. `None` when an `initial_only` snapshot is done.
    #[allow(clippy::type_complexity)]
    pub(super) async fn initial_position(
        &self,
    ) -> crate::Result<Option<(OpenAt, Option<String>, Option<(String, SnapshotProgress)>)>> {
        let checkpoint = self.state.load::<Checkpoint>().await?;
        if self.settings.start_at != StartAt::Now {
            if let Some(c) = checkpoint {
                match c.snapshot {
                    Some(p) if !p.done => {
                        tracing::info!(source = %self.cx.key, "Continuing the snapshot from its checkpoint.");
                        return Ok(Some((OpenAt::Snapshot, None, Some((c.resume_token, p)))));
                    }
                    Some(_) if self.settings.snapshot == SnapshotMode::InitialOnly => {
                        tracing::info!(source = %self.cx.key, "The snapshot is complete (snapshot = \"initial_only\"); nothing to do. Remove {} to copy again.", self.state.location());
                        return Ok(None);
                    }
                    _ => {}
                }
                tracing::info!(
                    source = %self.cx.key,
                    cluster_time = %cluster_time_of(&c.resume_token),
                    "Resuming after checkpoint {}.",
                    c.resume_token
                );
                return Ok(Some((
                    OpenAt::After(c.resume_token.clone()),
                    Some(c.resume_token),
                    None,
                )));
            }
        }
        if !matches!(
            self.settings.snapshot,
            SnapshotMode::Off | SnapshotMode::Incremental
        ) {
            tracing::info!(source = %self.cx.key, "No checkpoint: copying the watched collections first (snapshot = {:?}).", self.settings.snapshot);
            return Ok(Some((OpenAt::Snapshot, None, None)));
        }
        tracing::info!(
            source = %self.cx.key,
            start_at = %self.settings.start_at,
            "{}",
            match &self.settings.start_at {
                StartAt::Time(t) => format!("Starting at {} (start_at).", crate::internal_events::rfc3339(i64::from(t.time))),
                StartAt::Token(t) => format!(
                    "Starting after resume token {t} (start_at), cluster time {}.",
                    cluster_time_of(t)
                ),
                _ => "Starting from now: changes before this moment are not read.".into(),
            }
        );
        Ok(Some(match &self.settings.start_at {
            StartAt::CheckpointOrNow | StartAt::Now => (OpenAt::Now, None, None),
            StartAt::Time(t) => (OpenAt::Time(*t), None, None),
            StartAt::Token(t) => (OpenAt::After(t.clone()), Some(t.clone()), None),
        }))
    }

    /// Where to begin, and the bookkeeping to begin with. Breaks when there
    /// is nothing to do or the checkpoint cannot be read.
    pub(super) async fn start(&mut self) -> ControlFlow<Stop, RunState> {
        let (at, initial, snapshot_resume) = match self.initial_position().await {
            Ok(Some(p)) => p,
            Ok(None) => return ControlFlow::Break(Ok(())),
            Err(e) => {
                self.error("checkpoint_failed", &e.to_string());
                return ControlFlow::Break(Err(()));
            }
        };
        let intervals = (
            self.settings.checkpoint_interval,
            self.settings.checkpoint_idle_interval,
        );
        let mut acks = Acks::new(
            self.state.clone(),
            &self.pipeline_id,
            initial.clone(),
            intervals,
        );
        let mut copy = None;
        // A signal collection copies requested collections as an
        // incremental snapshot does, with `snapshot = "off"` too.
        if self.settings.snapshot == SnapshotMode::Incremental || self.settings.signal.is_some() {
            let progress = self.incremental_progress().await?;
            copy = Some(CopyRun::new(
                initial.is_some(),
                &progress,
                SnapshotCopied::register(&self.cx.tags),
                self.last_write().await,
            ));
            acks = acks.with_incremental(progress);
        }
        let (finalizer, ack_stream) = OrderedFinalizer::new();
        ControlFlow::Continue(RunState {
            at,
            snapshot_resume,
            acks,
            copy,
            finalizer,
            ack_stream,
            hand_over: None,
            progress: StreamProgress::register(&self.cx.tags),
            source_id: Arc::from(self.cx.key.as_str()),
            out: self.out.take().expect("run is called once"),
            batch_size: self.settings.batch_size,
            attempt: 0,
            recoveries: 0,
        })
    }

    /// An incremental snapshot's progress: the checkpoint's, with the
    /// collections in scope that were never copied added (all of them on
    /// a first start; those an initial snapshot copied count as copied).
    /// With `snapshot = "off"` (copies on request only), the checkpoint's.
    async fn incremental_progress(&self) -> ControlFlow<Stop, IncrementalProgress> {
        let saved = match self.state.load::<Checkpoint>().await {
            Ok(c) => c,
            Err(e) => {
                self.error("checkpoint_failed", &e.to_string());
                return ControlFlow::Break(Err(()));
            }
        };
        let mut progress = match saved {
            Some(Checkpoint {
                incremental: Some(p),
                ..
            }) => p,
            Some(Checkpoint {
                snapshot: Some(s), ..
            }) if s.done => IncrementalProgress {
                copied: s.collections,
                ..Default::default()
            },
            _ => IncrementalProgress::default(),
        };
        if self.settings.snapshot != SnapshotMode::Incremental {
            // Only requested collections are copied, while still watched.
            let dropped = progress.requested_only();
            if !dropped.is_empty() {
                tracing::warn!(
                    source = %self.cx.key,
                    collections = %dropped.join(","),
                    "snapshot = \"off\": the unfinished incremental snapshot of {} collection(s) is not continued (request them through the signal collection to copy them).",
                    dropped.len()
                );
            }
            let watched: Vec<String> = progress
                .pending
                .iter()
                .filter(|ns| self.settings.watches(ns))
                .cloned()
                .collect();
            progress.reconcile(&watched);
            return ControlFlow::Continue(progress);
        }
        progress.requested_only = false;
        let mut attempt = 0;
        let in_scope = loop {
            match self.snapshot_collections().await {
                Ok(c) => break c,
                Err(e) => {
                    let what = "Could not list the collections to snapshot";
                    if !self.retry_after(&e, &mut attempt, what).await {
                        return ControlFlow::Break(Err(()));
                    }
                }
            }
        };
        let added = progress.reconcile(&in_scope);
        if !added.is_empty() {
            tracing::info!(
                source = %self.cx.key,
                collections = %added.join(","),
                "Incremental snapshot: {} collection(s) in scope were never copied; copying them beside the stream.",
                added.len()
            );
        }
        if !progress.is_complete() {
            tracing::info!(
                source = %self.cx.key,
                pending = progress.pending.len(),
                unfinished_rounds = progress.rounds.len(),
                copied = progress.copied.len(),
                "Incremental snapshot: continuing beside the stream."
            );
        }
        ControlFlow::Continue(progress)
    }

    /// The time of the newest write the server knows (`hello`'s
    /// `lastWrite.opTime.ts`); `None` when it does not say, and new copy
    /// rounds then wait for the stream to go idle once.
    async fn last_write(&self) -> Option<bson::Timestamp> {
        let reply = self
            .client
            .database("admin")
            .run_command(bson::doc! { "hello": 1 })
            .await
            .ok()?;
        reply
            .get_document("lastWrite")
            .ok()?
            .get_document("opTime")
            .ok()?
            .get_timestamp("ts")
            .ok()
    }
}
