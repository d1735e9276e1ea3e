//! The election task of one agent ([`super::Elector`] is its handle):
//! acquire the lease as a standby, renew it while active, and publish each
//! change of [`Leadership`].

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{sleep, sleep_until, Instant},
};

use super::{
    lease::{Holder, LeaderBlob, LeaseError},
    ElectionSettings, Leadership, LostReason,
};
use crate::internal_events::ha::{
    BecameActive, ElectionMetrics, LeaseRequestFailed, Standby, StoppedBeingActive,
};
use crate::retry::retry;

/// How soon a failed renew is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(1);

pub(super) enum Command {
    /// Stand by again after a lost term.
    Rejoin,
    /// Release the lease (if held) and end the election.
    Release(Reply),
}

/// The lease of the current term, as the renew loop tracks it.
struct Term {
    lease_id: String,
    started: Instant,
    last_renewed: Instant,
    earlier: Arc<[String]>,
}

impl Term {
    fn past_deadline(self) -> Next {
        Next::Lost {
            reason: LostReason::DeadlinePassed {
                since_last_renew: self.last_renewed.elapsed(),
            },
            lease_id: self.lease_id,
        }
    }
}

/// How a term ended.
enum Next {
    /// Lost without a release; `lease_id` may still hold the blob (when
    /// the deadline passed).
    Lost {
        reason: LostReason,
        lease_id: String,
    },
    /// Release requested during the term of `lease_id` (`reply` is
    /// `None` when the `Elector` was dropped).
    Release {
        lease_id: String,
        reply: Option<Reply>,
    },
}

/// Where the outcome of a release request goes.
pub(super) type Reply = oneshot::Sender<Result<(), LeaseError>>;

/// The state of the election task.
pub(super) struct Campaign {
    pub(super) pipeline: String,
    pub(super) metrics: ElectionMetrics,
    pub(super) leader: LeaderBlob,
    pub(super) settings: ElectionSettings,
    pub(super) holder: Holder,
    pub(super) state: watch::Sender<Leadership>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// The lease id of a term that ended at its deadline: it may still hold
    /// the blob until it expires, so it is released (best effort) before
    /// the next term or at the end, letting a peer take over sooner.
    pub(super) stale: Option<String>,
}

impl Campaign {
    pub(super) async fn run(mut self) {
        loop {
            let term = match self.acquire().await {
                Ok(term) => term,
                Err(reply) => return self.finish(None, reply).await,
            };
            match self.renew(term).await {
                Next::Lost { reason, lease_id } => {
                    StoppedBeingActive {
                        pipeline: &self.pipeline,
                        reason: &reason.to_string(),
                        unexpected: true,
                    }
                    .emit(&self.metrics);
                    if matches!(reason, LostReason::DeadlinePassed { .. }) {
                        self.stale = Some(lease_id);
                    }
                    self.state.send_replace(Leadership::Lost { reason });
                    if let Some(reply) = self.wait_for_rejoin().await {
                        return self.finish(None, reply).await;
                    }
                    self.state.send_replace(Leadership::Standby);
                }
                Next::Release { lease_id, reply } => {
                    return self.finish(Some(lease_id), reply).await;
                }
            }
        }
    }

    /// Ends the election: releases `held` (the active term's lease) or a
    /// stale one, and answers the release request.
    async fn finish(mut self, held: Option<String>, reply: Option<Reply>) {
        let result = match held {
            Some(lease_id) => {
                let reason = LostReason::Released;
                self.state.send_replace(Leadership::Lost {
                    reason: reason.clone(),
                });
                StoppedBeingActive {
                    pipeline: &self.pipeline,
                    reason: &reason.to_string(),
                    unexpected: false,
                }
                .emit(&self.metrics);
                self.leader.release(&lease_id).await
            }
            None => {
                self.release_stale().await;
                Ok(())
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    async fn release_stale(&mut self) {
        if let Some(lease_id) = self.stale.take() {
            // Refused once a peer holds it or it expired: nothing to do.
            let _ = self.leader.release(&lease_id).await;
        }
    }

    /// After a lost term: `None` on rejoin, the reply channel on release.
    async fn wait_for_rejoin(&mut self) -> Option<Option<Reply>> {
        match self.commands.recv().await {
            Some(Command::Rejoin) => None,
            Some(Command::Release(reply)) => Some(Some(reply)),
            None => Some(None),
        }
    }

    /// Stands by until this agent holds the lease (its term, `Active`
    /// published) or a release is requested (`Err` with the reply).
    async fn acquire(&mut self) -> Result<Term, Option<Reply>> {
        let waiting_since = Instant::now();
        let mut next_attempt = waiting_since;
        let mut created = false;
        let mut told_standby = false;
        let mut last_error = String::new();
        loop {
            let attempt = if !created {
                match self.leader.ensure_exists(&self.holder).await {
                    Ok(()) => {
                        created = true;
                        true
                    }
                    Err(e) => {
                        self.report(&mut last_error, &e);
                        false
                    }
                }
            } else if Instant::now() >= next_attempt {
                true
            } else {
                match self.leader.lease_state().await {
                    Ok(Some(state)) => state.acquirable(),
                    Ok(None) => {
                        created = false;
                        false
                    }
                    Err(e) => {
                        self.report(&mut last_error, &e);
                        false
                    }
                }
            };
            if attempt {
                next_attempt = Instant::now() + self.settings.renew_every();
                self.release_stale().await;
                let lease_id = uuid::Uuid::new_v4().to_string();
                let start = Instant::now();
                match self
                    .leader
                    .acquire(self.settings.lease_secs(), &lease_id)
                    .await
                {
                    Ok(()) => return Ok(self.begin_term(lease_id, start, waiting_since).await),
                    Err(LeaseError::Refused { status: 404, .. }) => created = false,
                    Err(LeaseError::Refused { .. }) => {
                        if !told_standby {
                            told_standby = true;
                            let holder = match self.leader.describe().await {
                                Ok(Some(info)) => info.holder.map(|h| h.to_string()),
                                _ => None,
                            };
                            Standby {
                                pipeline: &self.pipeline,
                                holder: holder.as_deref(),
                            }
                            .emit();
                        }
                    }
                    Err(e) => self.report(&mut last_error, &e),
                }
            }
            tokio::select! {
                _ = sleep(self.settings.poll()) => {}
                command = self.commands.recv() => match command {
                    Some(Command::Rejoin) => {}
                    Some(Command::Release(reply)) => return Err(Some(reply)),
                    None => return Err(None),
                }
            }
        }
    }

    /// Logs a failed request once per distinct error.
    fn report(&self, last_error: &mut String, e: &LeaseError) {
        let message = e.to_string();
        if *last_error != message {
            LeaseRequestFailed {
                pipeline: &self.pipeline,
                error: &message,
                stop_in: None,
            }
            .emit();
            *last_error = message;
        }
    }

    /// The lease is ours: name this agent in the leader blob and publish
    /// `Active`.
    async fn begin_term(
        &mut self,
        lease_id: String,
        start: Instant,
        waiting_since: Instant,
    ) -> Term {
        // The earlier terms' lease ids, read before this term's record
        // replaces the last one. Best effort, as the write: a state lease
        // under an id left out is waited out at takeover instead of
        // changed, and the next renew finds out if the lease is gone.
        // Each is tried up to 3 times while storage does not answer, for
        // at most a renew period, so the first renew is not delayed.
        let deadline = start + self.settings.renew_every();
        let again = |e: &LeaseError, attempt: u32| {
            let pause = Duration::from_millis(200);
            (matches!(e, LeaseError::Unavailable { .. })
                && attempt < 2
                && Instant::now() + pause < deadline)
                .then_some(pause)
        };
        let last = retry(|| self.leader.read_holder(), again).await.result;
        let earlier: Arc<[String]> = match last {
            Ok(Some(last)) => last.terms.into(),
            _ => Arc::new([]),
        };
        self.holder.begin_term(&lease_id, &earlier);
        let (leader, holder) = (&self.leader, &self.holder);
        let written = retry(|| leader.write_holder(&lease_id, holder), again).await;
        if let Err(e) = written.result {
            tracing::warn!(pipeline = %self.pipeline, "Could not record this term in the leader blob: {e}. The term goes on; should it end without a release, the next one waits for its state leases to run out (up to a minute) instead of taking them over at once.");
        }
        let term = Term {
            lease_id,
            started: start,
            last_renewed: start,
            earlier,
        };
        BecameActive {
            pipeline: &self.pipeline,
            blob: self.leader.name(),
            waited: start.saturating_duration_since(waiting_since),
            stop_after: self.settings.stop_after(),
        }
        .emit(&self.metrics);
        self.publish_active(&term);
        term
    }

    fn publish_active(&self, term: &Term) {
        self.state.send_replace(Leadership::Active {
            lease_id: term.lease_id.clone(),
            term_started: term.started,
            last_renewed: term.last_renewed,
            stop_by: term.last_renewed + self.settings.stop_after(),
            earlier_terms: Arc::clone(&term.earlier),
        });
    }

    /// Renews until the term ends: refused, past its deadline, or
    /// released on request.
    async fn renew(&mut self, mut term: Term) -> Next {
        let mut next_renew = term.last_renewed + self.settings.renew_every();
        loop {
            let stop_by = term.last_renewed + self.settings.stop_after();
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Rejoin) => continue,
                    Some(Command::Release(reply)) => {
                        return Next::Release { lease_id: term.lease_id, reply: Some(reply) }
                    }
                    None => return Next::Release { lease_id: term.lease_id, reply: None },
                },
                _ = sleep_until(stop_by) => return term.past_deadline(),
                _ = sleep_until(next_renew) => {}
            }
            // A renew still unanswered at the deadline is abandoned: the
            // lease may expire at any moment after it.
            let start = Instant::now();
            let result = tokio::select! {
                biased;
                _ = sleep_until(stop_by) => return term.past_deadline(),
                result = self.leader.renew(&term.lease_id) => result,
            };
            match result {
                Ok(()) => {
                    term.last_renewed = start;
                    next_renew = start + self.settings.renew_every();
                    self.metrics.renewed();
                    self.publish_active(&term);
                }
                Err(e @ LeaseError::Refused { .. }) => {
                    return Next::Lost {
                        reason: LostReason::Refused {
                            error: e.to_string(),
                        },
                        lease_id: term.lease_id,
                    };
                }
                Err(e) => {
                    LeaseRequestFailed {
                        pipeline: &self.pipeline,
                        error: &e.to_string(),
                        stop_in: Some(stop_by.saturating_duration_since(Instant::now())),
                    }
                    .emit();
                    next_renew = Instant::now() + RENEW_RETRY;
                }
            }
        }
    }
}
