//! Where a run of the source begins: the checkpoint, an unfinished
//! snapshot, or the configured start, and the bookkeeping to begin with.

use std::{ops::ControlFlow, sync::Arc};

use super::{cluster_time_of, ChangeStreamSource, OpenAt, RunState, Stop};
use crate::{
    finalizer::OrderedFinalizer,
    internal_events::mongodb::StreamProgress,
    sources::mongodb_change_stream::{
        checkpoint::{Acks, Checkpoint, SnapshotProgress},
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
        if self.settings.snapshot != SnapshotMode::Off {
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
        let (finalizer, ack_stream) = OrderedFinalizer::new();
        ControlFlow::Continue(RunState {
            at,
            snapshot_resume,
            acks: Acks::new(self.state.clone(), &self.pipeline_id, initial, intervals),
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
}
