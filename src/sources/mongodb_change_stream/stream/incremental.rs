//! `snapshot = "incremental"`: copy rounds run between change events
//! (`incremental.rs` in the source says why their records' order is
//! exact).
//!
//! A round runs when the stream has nothing queued (its read-ahead is
//! waiting on the server): the stream goes first, so its checkpoint keeps
//! up with the newest change, and the copy fills the time the stream
//! waits. Under a sustained backlog a round also runs between two
//! hand-overs once the copy has waited four times its last round (at
//! least a second), so the copy goes on at a fifth of the time or more. A
//! round restored from the checkpoint runs as soon as the stream reaches
//! its position again, before any later change is sent.
//!
//! `plan.rs` plans a round (its bounds, looked up while the round before
//! is sent); `chunks.rs` reads its chunks in parallel.

mod chunks;
mod plan;

use std::{
    collections::VecDeque,
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, Instant},
};

use bson::Bson;

use self::chunks::{bounds, ranges, server_batch, ChunkReader, Page, ReadError, RecordsAt};
use super::{progress::Counted, ChangeStreamSource, OpenAt, RunState, Stop};
use crate::{
    event::{BatchNotifier, BatchStatusReceiver, EventMetadata, LogEvent, Position},
    internal_events::mongodb::SnapshotCopied,
    sources::mongodb_change_stream::{
        checkpoint::{token_cluster_time, Mark},
        incremental::{IncrementalProgress, Round},
    },
    topology::Sent,
};

/// The shortest wait for a round while the stream has events queued.
const STARVED_AFTER: Duration = Duration::from_secs(1);

/// How reading a round ended.
enum RoundRead {
    Done,
    /// The server failed; the `_id` of the last record sent, if any.
    Failed(Option<Bson>, mongodb::error::Error),
    /// The collection cannot be copied exactly once.
    Unorderable(String),
}

/// What the stream side keeps of an incremental snapshot.
pub(super) struct CopyRun {
    /// The newest idle post-batch token. Where the stream stands (every
    /// change up to it sent, none after) is the newer of this and the last
    /// event sent, which `RunState::at` keeps ([`CopyRun::boundary`]).
    idle: Option<String>,
    /// Rounds from the checkpoint not yet sent in this run, oldest first.
    restored: VecDeque<Round>,
    copied: SnapshotCopied,
    /// The collection being copied and its progress line.
    progress: Option<super::progress::CopyProgress>,
    /// Transient failures in a row, for the backoff.
    attempt: u32,
    complete_logged: bool,
    /// Documents and their bytes read of the collection being copied, for
    /// the server batch size.
    read: (u64, u64),
    /// When the last round ended and how long it took ([`CopyRun::starved`]).
    last_round: Option<(Instant, Duration)>,
    /// The stream has passed everything an earlier run may have sent (and
    /// a sink written): new rounds may be planned. A new round placed
    /// below a change the sinks already hold would have its records
    /// skipped as replays. Restored rounds need no wait: nothing after
    /// their position was sent before them.
    caught_up: bool,
    /// The newest write's time when this run began (`hello`'s
    /// `lastWrite`): every change an earlier run sent is at or before it.
    not_before: Option<bson::Timestamp>,
    /// Collections begun (or copied before) and all to copy, for the
    /// progress lines.
    begun: usize,
    total: usize,
    /// The next round's chunk bounds, looked up while this round is sent.
    next_bounds: Option<plan::NextBounds>,
}

impl CopyRun {
    /// `from_checkpoint`: the run resumes from a checkpoint (an earlier
    /// run may have sent more than it says).
    pub(super) fn new(
        from_checkpoint: bool,
        progress: &IncrementalProgress,
        copied: SnapshotCopied,
        not_before: Option<bson::Timestamp>,
    ) -> Self {
        let restored = progress.rounds.clone();
        let unfinished = restored
            .iter()
            .filter(|r| !progress.pending.contains(&r.ns))
            .map(|r| r.ns.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let begun = progress.copied.len();
        Self {
            caught_up: !from_checkpoint,
            not_before,
            begun,
            total: begun + unfinished + progress.pending.len(),
            idle: None,
            restored: restored.into(),
            copied,
            progress: None,
            attempt: 0,
            complete_logged: false,
            read: (0, 0),
            last_round: None,
            next_bounds: None,
        }
    }

    /// The stream sends (or skips) the change at `token`.
    pub(super) fn passed(&mut self, token: &str) {
        if !self.caught_up {
            let time = token_cluster_time(token);
            self.caught_up = matches!((time, self.not_before), (Some(t), Some(n)) if t > n);
        }
    }

    /// The stream is idle up to `token`: every change before it was sent
    /// again in this run, so it is past all an earlier run sent.
    pub(super) fn idle_at(&mut self, token: &str) {
        self.caught_up = true;
        if self.idle.as_deref().is_none_or(|b| b < token) {
            self.idle = Some(token.to_string());
        }
    }

    /// Where the stream stands, given where it would reopen (after the
    /// last event sent): the newer of that and the idle token.
    fn boundary<'a>(&'a self, at: &'a OpenAt) -> Option<&'a str> {
        let sent = match at {
            OpenAt::After(token) => Some(token.as_str()),
            _ => None,
        };
        sent.max(self.idle.as_deref())
    }

    /// `n` collections were queued by a snapshot request.
    pub(super) fn requested(&mut self, n: usize) {
        if n > 0 {
            self.total += n;
            self.complete_logged = false;
        }
    }

    /// The copy has waited long enough for a stream that always has
    /// events queued: a round runs between two hand-overs then, so a
    /// sustained backlog does not hold the copy back for its whole length.
    /// The stream keeps at least four fifths of the time (the wait is four
    /// times the last round, and at least [`STARVED_AFTER`]).
    pub(super) fn starved(&self) -> bool {
        self.last_round
            .is_none_or(|(ended, took)| ended.elapsed() >= STARVED_AFTER.max(took * 4))
    }

    /// The average size of the documents read so far.
    fn average_bytes(&self) -> Option<u64> {
        let (docs, bytes) = self.read;
        (docs > 0).then(|| bytes / docs)
    }

    /// A restored round must be sent before the change at `token`.
    pub(super) fn due_before(&self, token: &str) -> bool {
        self.restored.front().is_some_and(|r| r.at.as_str() < token)
    }
}

impl ChangeStreamSource {
    /// A round can run now: a restored one the stream has reached, or a
    /// new one when collections are pending and the checkpoint has a
    /// position to keep with it.
    pub(super) fn copy_due(run: &RunState) -> bool {
        let Some(copy) = &run.copy else { return false };
        let Some(boundary) = copy.boundary(&run.at) else {
            return false;
        };
        if let Some(r) = copy.restored.front() {
            return r.at.as_str() <= boundary;
        }
        copy.caught_up
            && run.acks.committed().is_some()
            && run
                .acks
                .incremental()
                .is_some_and(|p| !p.pending.is_empty())
    }

    /// Sends the restored rounds that come before the change at `token`.
    pub(super) async fn copy_before(&self, run: &mut RunState, token: &str) -> ControlFlow<Stop> {
        run.end_hand_over();
        while let Some(round) = run.copy.as_mut().and_then(|c| {
            c.due_before(token)
                .then(|| c.restored.pop_front())
                .flatten()
        }) {
            self.send_round(run, round, None).await?;
        }
        ControlFlow::Continue(())
    }

    /// Runs one round: the oldest restored round, or a new one planned at
    /// the stream's boundary.
    pub(super) async fn copy_round(&self, run: &mut RunState) -> ControlFlow<Stop> {
        run.end_hand_over();
        let Some(copy) = run.copy.as_mut() else {
            return ControlFlow::Continue(());
        };
        let began = Instant::now();
        if let Some(round) = copy.restored.pop_front() {
            self.send_round(run, round, None).await?;
        } else if let Some((round, splits)) = self.plan_round(run).await? {
            let planned = began.elapsed();
            let (ns, chunks) = (round.ns.clone(), splits.len() + 1);
            self.send_round(run, round, Some(splits)).await?;
            tracing::debug!(
                source = %self.cx.key,
                collection = %ns,
                chunks,
                plan_ms = planned.as_millis() as u64,
                send_ms = (began.elapsed() - planned).as_millis() as u64,
                "Snapshot round sent."
            );
            self.log_if_complete(run);
        }
        if let Some(copy) = run.copy.as_mut() {
            copy.last_round = Some((Instant::now(), began.elapsed()));
        }
        ControlFlow::Continue(())
    }

    /// Sends `round`'s records in `_id` order, read by up to
    /// `snapshot_parallelism` chunk readers (split at `splits` when the
    /// planning found them), then its end mark. A transient error reads
    /// again from the last record sent.
    async fn send_round(
        &self,
        run: &mut RunState,
        round: Round,
        mut splits: Option<Vec<Bson>>,
    ) -> ControlFlow<Stop> {
        let Some(t0) = token_cluster_time(&round.at) else {
            self.error(
                "snapshot_failed",
                &format!("snapshot round position {} has no cluster time", round.at),
            );
            return ControlFlow::Break(Err(()));
        };
        self.round_progress(run, &round.ns);
        let json = |v: &Option<serde_json::Value>| v.clone().and_then(|v| Bson::try_from(v).ok());
        let upper = json(&round.upper);
        let mut start = match json(&round.after) {
            Some(after) => (Some(after), true),
            None => (json(&round.from), false),
        };
        let records = RecordsAt {
            maker: self.record_maker(),
            ns: round.ns.as_str().into(),
            at: round.at.as_str().into(),
            t0,
            server_batch: server_batch(run.copy.as_ref().and_then(CopyRun::average_bytes)),
        };
        loop {
            match self
                .read_round(run, &records, (&start, splits.take()), upper.as_ref())
                .await?
            {
                RoundRead::Done => break,
                RoundRead::Failed(sent, e) => {
                    if let Some(last) = sent {
                        start = (Some(last), true);
                    }
                    self.round_failed(run, &round.ns, &e).await?;
                }
                RoundRead::Unorderable(message) => {
                    // Counted and logged; the collection's changes keep
                    // streaming, and the rest of the copy goes on.
                    self.error(
                        "snapshot_skipped",
                        &format!("{message}. {} is left out of the snapshot (its changes still stream); `state show` lists it. Make its _ids orderable and remove it from `skipped` in the checkpoint to copy it.", round.ns),
                    );
                    run.acks.skip_collection(&round.ns);
                    break;
                }
            }
        }
        self.mark(run, Mark::RoundEnd);
        ControlFlow::Continue(())
    }

    /// Reads `[start, upper)` of the round's collection in chunks (split
    /// at `splits`, else at bounds found now) and sends the records. On a
    /// read error, gives back the last `_id` sent.
    async fn read_round(
        &self,
        run: &mut RunState,
        records: &RecordsAt,
        (start, splits): (&(Option<Bson>, bool), Option<Vec<Bson>>),
        upper: Option<&Bson>,
    ) -> ControlFlow<Stop, RoundRead> {
        let count = self.settings.snapshot_parallelism - 1;
        let chunk = self.settings.snapshot_chunk_size;
        let ns = &records.ns;
        let found = match splits {
            Some(found) => found,
            None => match bounds(&self.client, ns, (start.0.as_ref(), upper), chunk, count).await {
                Ok(found) => found,
                Err(e) => return ControlFlow::Continue(RoundRead::Failed(None, e)),
            },
        };
        let budget = self.settings.read_ahead_bytes as u64;
        let mut readers: Vec<ChunkReader> = ranges(start.0.clone(), start.1, found, upper.cloned())
            .into_iter()
            .map(|r| ChunkReader::spawn(&self.client, records.clone(), r, budget))
            .collect();
        let mut sent: Option<Bson> = None;
        for reader in &mut readers {
            loop {
                let page = tokio::select! {
                    _ = self.cx.shutdown.cancelled() => return ControlFlow::Break(Ok(())),
                    p = reader.next() => p,
                };
                let page = match page {
                    None => {
                        if let Some(p) = run.copy.as_mut().and_then(|c| c.progress.as_mut()) {
                            p.chunk_done();
                        }
                        break;
                    }
                    Some(Ok(page)) => page,
                    Some(Err(ReadError::Server(e))) => {
                        return ControlFlow::Continue(RoundRead::Failed(sent, e))
                    }
                    Some(Err(ReadError::Unorderable(message))) => {
                        return ControlFlow::Continue(RoundRead::Unorderable(message))
                    }
                };
                let last = page.last_id.clone();
                self.send_page(run, records, page).await?;
                if last.is_some() {
                    sent = last;
                }
            }
        }
        ControlFlow::Continue(RoundRead::Done)
    }

    /// Sends one page of records at the round's position, with one
    /// acknowledgement for the page.
    async fn send_page(&self, run: &mut RunState, at: &RecordsAt, page: Page) -> ControlFlow<Stop> {
        let Page {
            records,
            read,
            bytes,
            last_id,
            ..
        } = page;
        let Some(last_id) = last_id else {
            return ControlFlow::Continue(());
        };
        if let Some(c) = run.copy.as_mut() {
            if let Some(p) = c.progress.as_mut() {
                p.read(read);
            }
            c.read = (c.read.0 + read, c.read.1 + bytes);
        }
        if records.is_empty() {
            // The pipeline left nothing: no mark either (one no event
            // carries would not resolve); a restart reads these again.
            return ControlFlow::Continue(());
        }
        let event_time = chrono::DateTime::from_timestamp(i64::from(at.t0.time), 0);
        let (batch, receiver) = BatchNotifier::new_with_receiver();
        let count = records.len() as u64;
        for record in records {
            let event = LogEvent::new(
                record.raw,
                EventMetadata {
                    source_id: Arc::clone(&run.source_id),
                    position: Some(Position(record.position)),
                    event_time,
                },
            );
            let sent = if self.cx.acknowledgements {
                run.out.send_log_in(event, &batch, &self.cx.shutdown).await
            } else {
                matches!(
                    run.out.send_log(event, (), None, &self.cx.shutdown).await,
                    Sent::Unacknowledged(())
                )
            };
            if !sent {
                return ControlFlow::Break(Ok(()));
            }
        }
        drop(batch);
        if let Some(c) = run.copy.as_mut() {
            c.copied.add(count);
        }
        let mark = Mark::Records(last_id.into_canonical_extjson(), count);
        if self.cx.acknowledgements {
            run.finalizer.add(receiver, mark);
            run.acks.emitted();
        } else {
            run.acks.sent_unacknowledged(mark);
        }
        ControlFlow::Continue(())
    }

    /// Registers a mark that no event carries, in its place.
    fn mark(&self, run: &mut RunState, mark: Mark) {
        if self.cx.acknowledgements {
            run.finalizer.add(BatchStatusReceiver::delivered(), mark);
            run.acks.emitted();
        } else {
            run.acks.sent_unacknowledged(mark);
        }
    }

    /// A read of a round failed: pauses before reading again when retrying
    /// can help, else stops the source.
    async fn round_failed(
        &self,
        run: &mut RunState,
        ns: &str,
        e: &mongodb::error::Error,
    ) -> ControlFlow<Stop> {
        if self.cx.shutdown.is_cancelled() {
            return ControlFlow::Break(Ok(()));
        }
        let attempt = &mut run.copy.as_mut().expect("copying").attempt;
        let retry = self
            .retry_after(e, attempt, &format!("Snapshot of {ns} failed"))
            .await;
        match (retry, self.cx.shutdown.is_cancelled()) {
            (_, true) => ControlFlow::Break(Ok(())),
            (true, false) => ControlFlow::Continue(()),
            (false, false) => ControlFlow::Break(Err(())),
        }
    }

    /// Starts the progress line of `ns` when a round of a new collection
    /// begins.
    fn round_progress(&self, run: &mut RunState, ns: &str) {
        let copy = run.copy.as_mut().expect("copying");
        copy.attempt = 0;
        if copy.progress.as_ref().is_some_and(|p| p.ns == ns) {
            return;
        }
        if let Some(done) = copy.progress.take() {
            done.done();
        }
        // Server batches follow this collection's document size.
        copy.read = (0, 0);
        let (index, of) = (copy.begun, copy.total.max(copy.begun + 1));
        copy.begun += 1;
        let copying = run.acks.incremental().and_then(|p| p.copying.get(ns));
        let counted = copying.map_or_else(Counted::default, |c| Counted {
            documents: c.documents,
            chunks: c.chunks,
        });
        let estimate = copying.and_then(|c| c.estimated);
        let progress = self.copy_progress((index, of), ns, estimate, counted);
        run.copy.as_mut().expect("copying").progress = Some(progress);
    }

    fn log_if_complete(&self, run: &mut RunState) {
        let complete = run.acks.incremental().is_some_and(|p| p.pending.is_empty());
        let Some(copy) = run.copy.as_mut() else {
            return;
        };
        if complete && !copy.complete_logged {
            copy.complete_logged = true;
            if let Some(done) = copy.progress.take() {
                done.done();
            }
            self.copy_complete();
            tracing::info!(
                source = %self.cx.key,
                records = copy.copied.count(),
                "Incremental snapshot: every collection is read; it is complete once its last records are delivered."
            );
        }
    }

    async fn wait(&self, d: std::time::Duration) {
        tokio::select! {
            _ = self.cx.shutdown.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }
}
