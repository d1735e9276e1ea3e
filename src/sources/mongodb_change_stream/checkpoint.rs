//! The source's position bookkeeping.
//!
//! The checkpoint is the resume token of the last event of the newest batch
//! that, together with every earlier batch, all sinks reported durable (a
//! batch is one server batch, or what was sent of it); on an idle stream it
//! is the post-batch resume token (the server's "nothing before this is
//! pending"). It never moves past an event that was not delivered.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::incremental::{IncrementalProgress, Plan, Round};
use crate::{
    event::BatchStatus,
    state_store::{StateDoc, StateError},
};

/// What a delivered acknowledgement moves the checkpoint to.
#[derive(Clone, Debug, PartialEq)]
pub enum Mark {
    /// Every change up to this resume token was delivered.
    Stream(String),
    /// The oldest unfinished copy round's records up to this `_id`
    /// (canonical Extended JSON) were delivered; so many of them.
    Records(serde_json::Value, u64),
    /// The oldest unfinished copy round was wholly delivered.
    RoundEnd,
}

/// What `<id>/checkpoint.json` in the state store holds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// `_id._data` of the resume token (KeyString hex).
    pub resume_token: String,
    /// The token's cluster time, for people reading the file.
    #[serde(default)]
    pub cluster_time: Option<String>,
    /// Progress of a snapshot (`snapshot = "initial"`); `resume_token` is
    /// then where streaming starts once the copy is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotProgress>,
    /// Progress of an incremental snapshot (`snapshot = "incremental"`),
    /// which runs beside the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalProgress>,
    /// The pipeline this checkpoint belongs to ([`crate::lineage`]);
    /// absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
}

impl Checkpoint {
    pub fn new(resume_token: String, snapshot: Option<SnapshotProgress>) -> Self {
        let cluster_time =
            token_cluster_time(&resume_token).map(|t| format!("{}.{}", t.time, t.increment));
        Self {
            resume_token,
            cluster_time,
            snapshot,
            incremental: None,
            pipeline: None,
        }
    }

    /// The checkpoint of `pipeline`.
    pub fn of(pipeline: &str, resume_token: String, snapshot: Option<SnapshotProgress>) -> Self {
        Self {
            pipeline: Some(pipeline.to_string()),
            ..Self::new(resume_token, snapshot)
        }
    }
}

/// How far a snapshot got: collections are copied in `collections` order,
/// each in `_id` order.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// `db.coll` names to copy, fixed when the snapshot began.
    pub collections: Vec<String>,
    /// Index into `collections` of the one being copied.
    pub current: usize,
    /// Canonical Extended JSON of the last acknowledged `_id` there.
    #[serde(default)]
    pub last_id: Option<serde_json::Value>,
    /// Every document was delivered.
    #[serde(default)]
    pub done: bool,
}

/// `state show`: the checkpoint in `file`, for people.
pub async fn describe(file: &StateDoc) -> Result<Vec<String>, String> {
    let Some(c) = file.load::<Checkpoint>().await.map_err(|e| e.to_string())? else {
        return Ok(vec![format!(
            "no checkpoint ({}): the next start begins at `start_at` (or copies the collections with `snapshot`)",
            file.location()
        )]);
    };
    let mut lines = vec![format!("checkpoint {}", file.location())];
    lines.push(format!("  resume token {}", c.resume_token));
    if let Some(t) = token_cluster_time(&c.resume_token) {
        lines.push(format!(
            "  cluster time {} ({})",
            crate::internal_events::rfc3339(i64::from(t.time)),
            crate::internal_events::age(i64::from(t.time))
        ));
    }
    lines.push(format!(
        "  pipeline {}",
        c.pipeline
            .as_deref()
            .unwrap_or("(none yet: written by an older version)")
    ));
    if let Some(p) = &c.incremental {
        lines.extend(p.describe());
    }
    if let Some(s) = c.snapshot {
        lines.push(match (s.done, s.collections.get(s.current)) {
            (true, _) => "  snapshot complete".into(),
            (false, Some(coll)) => format!(
                "  snapshot in progress: collection {} of {} ({coll}), after _id {}",
                s.current + 1,
                s.collections.len(),
                s.last_id
                    .map_or_else(|| "(start)".into(), |id| id.to_string())
            ),
            (false, None) => "  snapshot in progress".into(),
        });
    }
    Ok(lines)
}

/// The cluster time inside a resume token: KeyString type byte `0x82`
/// (Timestamp) followed by seconds and increment, big-endian. The layout is
/// undocumented but stable since 4.2; Debezium and the Kafka connector read
/// it the same way.
pub fn token_cluster_time(hex: &str) -> Option<bson::Timestamp> {
    let bytes = hex.as_bytes();
    if bytes.len() < 18 || !hex[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    let time = u32::from_str_radix(&hex[2..10], 16).ok()?;
    let increment = u32::from_str_radix(&hex[10..18], 16).ok()?;
    Some(bson::Timestamp { time, increment })
}

/// Tracks emitted and acknowledged events and decides what to commit.
pub struct Acks {
    state: StateDoc,
    pipeline: String,
    /// Entries (a batch of events each) emitted and not yet resolved.
    outstanding: u64,
    /// The position to commit next (if it differs from `written`).
    committed: Option<String>,
    written: Option<String>,
    last_write: Instant,
    interval: Duration,
    /// The interval when only idle positions moved it since the last write.
    idle_interval: Duration,
    /// An event was delivered since the last write (or nothing was written
    /// yet in this run): the next write waits `interval`, not
    /// `idle_interval`.
    moved: bool,
    /// Set after a failed delivery: nothing is committed past it until restart.
    failed: bool,
    /// An incremental snapshot's progress (`snapshot = "incremental"`):
    /// planned rounds, moved on by `Mark::Records` and `Mark::RoundEnd`.
    incremental: Option<IncrementalProgress>,
    /// `incremental` changed since the last write.
    progress_moved: bool,
}

impl Acks {
    pub fn new(
        state: StateDoc,
        pipeline: &str,
        initial: Option<String>,
        (interval, idle_interval): (Duration, Duration),
    ) -> Self {
        Self {
            state,
            pipeline: pipeline.to_string(),
            outstanding: 0,
            committed: initial.clone(),
            written: initial,
            last_write: Instant::now(),
            interval,
            idle_interval,
            moved: true,
            failed: false,
            incremental: None,
            progress_moved: false,
        }
    }

    /// Keeps `progress` with the checkpoint from now on.
    pub fn with_incremental(mut self, progress: IncrementalProgress) -> Self {
        self.incremental = Some(progress);
        self.progress_moved = true;
        self
    }

    pub fn incremental(&self) -> Option<&IncrementalProgress> {
        self.incremental.as_ref()
    }

    /// Plans the next copy round at `at` as `plan` found it and writes
    /// the checkpoint with it before anything of the round is sent (a
    /// restart must send the round at the same `at`). Nothing is planned
    /// when the write fails.
    pub async fn plan_round(&mut self, at: &str, plan: Plan) -> Result<Option<Round>, StateError> {
        let (Some(token), Some(progress)) = (self.committed.clone(), self.incremental.as_ref())
        else {
            return Ok(None);
        };
        let mut planned = progress.clone();
        let Some(round) = planned.plan(at, plan) else {
            return Ok(None);
        };
        self.state
            .save(&Checkpoint {
                incremental: Some(planned.clone()),
                ..Checkpoint::of(&self.pipeline, token, None)
            })
            .await?;
        self.last_write = Instant::now();
        self.written = self.committed.clone();
        self.incremental = Some(planned);
        self.progress_moved = false;
        Ok(Some(round))
    }

    /// Entries emitted and not yet resolved.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Starts over at `token` (after a resnapshot).
    pub fn reset(&mut self, token: String) {
        self.committed = Some(token.clone());
        self.written = Some(token);
        self.failed = false;
    }

    pub fn emitted(&mut self) {
        self.outstanding += 1;
    }

    pub fn committed(&self) -> Option<&str> {
        self.committed.as_deref()
    }

    /// Records one resolved acknowledgement, in emission order: `mark`
    /// is where its entry moves the checkpoint.
    pub fn resolved(&mut self, status: BatchStatus, mark: Mark) {
        self.outstanding = self.outstanding.saturating_sub(1);
        match status {
            BatchStatus::Delivered if !self.failed => self.apply(mark),
            BatchStatus::Delivered => {}
            other => {
                if !self.failed {
                    let what = match &mark {
                        Mark::Stream(token) => format!("The batch's last resume token: {token}"),
                        Mark::Records(after, _) => {
                            format!("The batch held snapshot records up to _id {after}")
                        }
                        Mark::RoundEnd => "It ended a snapshot round".into(),
                    };
                    tracing::error!(
                        "An event was not delivered ({other:?}); the checkpoint stays before the batch of events it came in, and that batch and later events will be replayed on restart. {what}"
                    );
                }
                self.failed = true;
            }
        }
    }

    /// Queues `ns` for a copy (a snapshot request); false when it already
    /// is queued or being copied.
    pub fn request_copy(&mut self, ns: &str) -> bool {
        let queued = self.incremental.as_mut().is_some_and(|p| p.request(ns));
        self.progress_moved |= queued;
        queued
    }

    /// Leaves `ns` out of the incremental snapshot (its documents cannot
    /// be copied exactly once).
    pub fn skip_collection(&mut self, ns: &str) {
        if let Some(p) = self.incremental.as_mut() {
            p.skip(ns);
            self.progress_moved = true;
        }
    }

    /// Moves the checkpoint to `mark`.
    fn apply(&mut self, mark: Mark) {
        self.moved = true;
        match mark {
            Mark::Stream(token) => self.committed = Some(token),
            Mark::Records(after, records) => {
                if let Some(p) = self.incremental.as_mut() {
                    // Every change up to the round's position was sent
                    // (and so delivered) before its records.
                    self.committed = p.oldest_at().map(str::to_string).or(self.committed.take());
                    p.delivered(after, records);
                    self.progress_moved = true;
                }
            }
            Mark::RoundEnd => {
                if let Some(p) = self.incremental.as_mut() {
                    if let Some(round) = p.round_done() {
                        self.committed = Some(round.at);
                    }
                    self.progress_moved = true;
                }
            }
        }
    }

    /// On an idle stream with nothing outstanding, the post-batch resume
    /// token may be committed: every event before it was delivered. Not
    /// while a copy round is unfinished: its records follow its own
    /// position.
    pub fn idle(&mut self, post_batch_token: Option<String>) {
        let round_open = self
            .incremental
            .as_ref()
            .is_some_and(|p| !p.rounds.is_empty());
        if self.outstanding == 0 && !self.failed && !round_open {
            if let Some(t) = post_batch_token {
                if self.committed.as_deref().is_none_or(|c| c < t.as_str()) {
                    self.committed = Some(t);
                }
            }
        }
    }

    /// Commits without acknowledgements (`acknowledgements.enabled = false`).
    pub fn sent_unacknowledged(&mut self, mark: Mark) {
        self.apply(mark);
    }

    /// Writes the checkpoint if it changed and the interval passed (or
    /// `force`): `interval` after delivered events, `idle_interval` when
    /// only the idle position moved.
    pub async fn flush(&mut self, force: bool) -> Result<bool, StateError> {
        let interval = if self.moved {
            self.interval
        } else {
            self.idle_interval
        };
        let changed = self.committed != self.written || self.progress_moved;
        if !changed || (!force && self.last_write.elapsed() < interval) {
            return Ok(false);
        }
        let Some(token) = self.committed.clone() else {
            return Ok(false);
        };
        // A failed write waits for the next interval too: a store that
        // refuses (a lost lease) is not asked again for every event.
        self.last_write = Instant::now();
        self.state
            .save(&Checkpoint {
                incremental: self.incremental.clone(),
                ..Checkpoint::of(&self.pipeline, token, None)
            })
            .await?;
        self.written = self.committed.clone();
        self.moved = false;
        self.progress_moved = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_time_from_token() {
        // A real 6.0 token: Timestamp(1723316400, 3) = 0x66B7B8B0, 0x00000003.
        let t = token_cluster_time("8266B7B8B0000000032B022C0100296E5A1004").unwrap();
        assert_eq!(
            t,
            bson::Timestamp {
                time: 0x66B7_B8B0,
                increment: 3
            }
        );
        assert_eq!(token_cluster_time("01AB"), None);
    }

    /// An idle stream's position is written at most every idle interval;
    /// a delivered event is written after the normal interval, and so is
    /// the first position of a run.
    #[tokio::test]
    async fn idle_positions_wait_for_the_idle_interval() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state_store::StateHandle::local(dir.path()).doc("checkpoint.json");
        let intervals = (Duration::ZERO, Duration::from_secs(3600));
        let mut acks = Acks::new(state.clone(), "p", Some("1".into()), intervals);
        acks.idle(Some("2".into()));
        assert!(acks.flush(false).await.unwrap(), "the first write of a run");
        acks.idle(Some("3".into()));
        assert!(!acks.flush(false).await.unwrap(), "an idle move waits");
        acks.emitted();
        acks.resolved(BatchStatus::Delivered, Mark::Stream("4".into()));
        assert!(
            acks.flush(false).await.unwrap(),
            "a delivered event does not"
        );
        acks.idle(Some("5".into()));
        assert!(!acks.flush(false).await.unwrap());
        assert!(acks.flush(true).await.unwrap(), "at shutdown it is written");
        let saved = state.load::<Checkpoint>().await.unwrap().unwrap();
        assert_eq!(saved.resume_token, "5");
    }

    #[tokio::test]
    async fn commits_in_order_and_stops_at_failure() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state_store::StateHandle::local(dir.path()).doc("checkpoint.json");
        let mut acks = Acks::new(state.clone(), "p", None, (Duration::ZERO, Duration::ZERO));
        for _ in 0..3 {
            acks.emitted();
        }
        acks.idle(Some("9".into()));
        assert_eq!(
            acks.committed(),
            None,
            "idle token ignored while events are outstanding"
        );
        acks.resolved(BatchStatus::Delivered, Mark::Stream("1".into()));
        acks.resolved(BatchStatus::Errored, Mark::Stream("2".into()));
        acks.resolved(BatchStatus::Delivered, Mark::Stream("3".into()));
        acks.idle(Some("9".into()));
        assert_eq!(acks.committed(), Some("1"));
        assert!(acks.flush(false).await.unwrap());
        assert_eq!(
            state
                .load::<Checkpoint>()
                .await
                .unwrap()
                .unwrap()
                .resume_token,
            "1"
        );
    }

    /// A planned round is saved before anything of it is sent; its marks
    /// move the checkpoint to the round's position, and an idle token is
    /// not committed past an unfinished round.
    #[tokio::test]
    async fn copy_rounds_are_saved_when_planned_and_moved_by_their_marks() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state_store::StateHandle::local(dir.path()).doc("checkpoint.json");
        let intervals = (Duration::ZERO, Duration::ZERO);
        let progress = IncrementalProgress::of(vec!["d.c".into()]);
        let mut acks =
            Acks::new(state.clone(), "p", Some("10".into()), intervals).with_incremental(progress);
        let round = acks
            .plan_round("20", Plan::to(None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((round.ns.as_str(), round.at.as_str()), ("d.c", "20"));
        let saved = state.load::<Checkpoint>().await.unwrap().unwrap();
        assert_eq!(saved.resume_token, "10", "planned, not yet delivered");
        assert_eq!(saved.incremental.unwrap().rounds, vec![round]);
        for _ in 0..3 {
            acks.emitted();
        }
        acks.resolved(BatchStatus::Delivered, Mark::Stream("15".into()));
        acks.resolved(
            BatchStatus::Delivered,
            Mark::Records(serde_json::json!(7), 1),
        );
        acks.idle(Some("30".into()));
        assert_eq!(acks.committed(), Some("20"), "no idle move past the round");
        assert_eq!(
            acks.incremental().unwrap().rounds[0].after,
            Some(serde_json::json!(7))
        );
        acks.resolved(BatchStatus::Delivered, Mark::RoundEnd);
        assert!(acks.incremental().unwrap().is_complete());
        assert_eq!(acks.incremental().unwrap().copied, vec!["d.c".to_string()]);
        assert!(acks.flush(false).await.unwrap());
        let saved = state.load::<Checkpoint>().await.unwrap().unwrap();
        assert_eq!(saved.resume_token, "20");
        assert!(saved.incremental.unwrap().is_complete());
    }
}
