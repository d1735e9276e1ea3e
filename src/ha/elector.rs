//! The election loop of one agent: a standby tries to acquire the lease, an
//! active one renews it, and the outcome is published on a
//! `tokio::sync::watch` channel as a [`Leadership`].
//!
//! Timing, for a lease of L seconds (15..=60) and a margin M (L/5 unless
//! set):
//! - the active renews every L/3; after a failed renew it retries every
//!   second;
//! - it stops being active once L - M has passed on the monotonic clock
//!   since the *start* of the last renew the service accepted. The service
//!   counts the lease from when it handled that request, which is later, so
//!   the active gives up before the service could grant the lease to a
//!   peer (M covers clock-rate differences and the time to stop writing);
//! - a standby reads the lease state every second (one Get Blob Properties)
//!   and tries Acquire Lease at once when it is free (released, expired or
//!   broken), and every L/3 in any case; each term proposes a fresh UUID as
//!   the lease id, so writes of an earlier term never pass as this one's.
//!
//! Requests: the active sends 180/L renews a minute (12 at L = 15); a
//! standby one request a second (Get Blob Properties, or Acquire Lease when
//! due), about 2.6 million a month; [`ElectionSettings::with_poll`] trades
//! that for a slower takeover.
//!
//! A term that ends by itself ([`Leadership::Lost`]) stays ended until the
//! owner has stopped its components and calls [`Elector::rejoin`]; a
//! release ends the election.

use std::{fmt, time::Duration};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{sleep, sleep_until, Instant},
};

use super::{
    lease::{Holder, LeaderBlob, LeaseError},
    HaError,
};
use crate::internal_events::ha::{
    BecameActive, ElectionMetrics, LeaseRequestFailed, Standby, StoppedBeingActive,
};

/// How soon a failed renew is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(1);
/// How often a standby reads the lease state.
const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// The lease timing, checked against Azure's limits.
#[derive(Clone, Debug)]
pub struct ElectionSettings {
    lease_secs: u32,
    margin: Duration,
    poll: Duration,
}

impl ElectionSettings {
    /// Azure's shortest fixed lease.
    pub const MIN_LEASE_SECS: u32 = 15;
    /// Azure's longest fixed lease.
    pub const MAX_LEASE_SECS: u32 = 60;

    /// A lease of `lease_secs` (15..=60) and the default margin, L/5.
    pub fn new(lease_secs: u32) -> Result<Self, HaError> {
        if !(Self::MIN_LEASE_SECS..=Self::MAX_LEASE_SECS).contains(&lease_secs) {
            return Err(HaError::LeaseSecs { lease_secs });
        }
        Ok(Self {
            lease_secs,
            margin: Duration::from_secs(u64::from(lease_secs)) / 5,
            poll: DEFAULT_POLL,
        })
    }

    /// Another margin: the active stops writing `margin` before its lease
    /// could expire. Above zero and below two thirds of the lease.
    pub fn with_margin(self, margin: Duration) -> Result<Self, HaError> {
        if margin.is_zero() || margin * 3 >= self.lease() * 2 {
            return Err(HaError::Margin {
                margin,
                lease_secs: self.lease_secs,
            });
        }
        Ok(Self { margin, ..self })
    }

    /// How often a standby reads the lease state (default 1 s): the delay
    /// between a release or expiry and the takeover.
    pub fn with_poll(self, poll: Duration) -> Self {
        Self { poll, ..self }
    }

    pub fn lease_secs(&self) -> u32 {
        self.lease_secs
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(u64::from(self.lease_secs))
    }

    /// L/3: how often the active renews and a standby tries to acquire.
    pub fn renew_every(&self) -> Duration {
        self.lease() / 3
    }

    /// L - M: how long after the start of its last accepted renew the
    /// active stops being active.
    pub fn stop_after(&self) -> Duration {
        self.lease() - self.margin
    }
}

/// Where this agent stands in the election of its pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Waiting for the lease.
    Standby,
    /// This agent holds the lease.
    Active {
        /// The lease id of this term (a fresh UUID): state writes carry it.
        lease_id: String,
        /// When the Acquire Lease request of this term was sent.
        term_started: Instant,
        /// When the last renew the service accepted was sent (the term's
        /// start until the first renew).
        last_renewed: Instant,
        /// `last_renewed + (L - M)`: start no write at or after this
        /// instant, even if the election task has not yet said `Lost`.
        stop_by: Instant,
    },
    /// The term ended without a release; the owner stops its components
    /// and calls [`Elector::rejoin`] to stand by again.
    Lost { reason: LostReason },
}

impl Leadership {
    /// The lease id, while active and before `stop_by`: checked on the
    /// monotonic clock at the call, so a writer that asks before each
    /// write never writes past the deadline even if the election task is
    /// late to publish `Lost`.
    pub fn lease_id(&self) -> Option<&str> {
        match self {
            Self::Active {
                lease_id, stop_by, ..
            } if Instant::now() < *stop_by => Some(lease_id),
            _ => None,
        }
    }

    /// Whether this agent may write now (see [`Leadership::lease_id`]).
    pub fn is_active(&self) -> bool {
        self.lease_id().is_some()
    }
}

/// Why a term ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// The service refused a renew (409/412: the lease was broken, taken
    /// over after expiry, or the blob removed).
    Refused { error: String },
    /// No renew succeeded within L - M of the last accepted one (storage
    /// unreachable, throttled or too slow): the lease may be about to
    /// expire and go to a standby.
    DeadlinePassed { since_last_renew: Duration },
    /// Released on request (shutdown).
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { error } => write!(f, "the lease was lost ({error})"),
            Self::DeadlinePassed { since_last_renew } => write!(
                f,
                "no renew succeeded for {:.1}s, so the lease may expire and go to a standby before another renew lands",
                since_last_renew.as_secs_f64()
            ),
            Self::Released => f.write_str("released the lease at shutdown"),
        }
    }
}

enum Command {
    /// Stand by again after a lost term.
    Rejoin,
    /// Release the lease (if held) and end the election.
    Release(Reply),
}

/// One agent's part in the election of its pipeline; the loop runs on its
/// own task from [`Elector::start`] until [`Elector::release`] (or until
/// the `Elector` is dropped, which releases too).
pub struct Elector {
    state: watch::Receiver<Leadership>,
    commands: mpsc::UnboundedSender<Command>,
    /// Ends after a release; dropping the `Elector` closes `commands`,
    /// which the task treats as a release.
    task: JoinHandle<()>,
    holder: Holder,
}

impl Elector {
    /// Starts standing by for the lease of `leader` (pipeline `pipeline`).
    /// Needs a Tokio runtime.
    pub fn start(pipeline: &str, leader: LeaderBlob, settings: ElectionSettings) -> Self {
        let holder = Holder::this_process();
        let (tx, state) = watch::channel(Leadership::Standby);
        let (commands, rx) = mpsc::unbounded_channel();
        let campaign = Campaign {
            pipeline: pipeline.to_string(),
            metrics: ElectionMetrics::register(pipeline),
            leader,
            settings,
            holder: holder.clone(),
            state: tx,
            commands: rx,
            stale: None,
        };
        Self {
            state,
            commands,
            task: tokio::spawn(campaign.run()),
            holder,
        }
    }

    /// A receiver of every change of leadership; each accepted renew also
    /// publishes a new `Active` (its `last_renewed` and `stop_by`).
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// The leadership now.
    pub fn leadership(&self) -> Leadership {
        self.state.borrow().clone()
    }

    /// This agent as the leader blob names it.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// After [`Leadership::Lost`], once the components of the ended term
    /// have stopped: stand by for a new term. Ignored in other states.
    pub fn rejoin(&self) {
        let _ = self.commands.send(Command::Rejoin);
    }

    /// Ends the election: an active agent publishes `Lost { Released }`
    /// and releases the lease, so a standby takes over within its poll
    /// interval. Call it once this agent's components have stopped
    /// writing. The error is the Release Lease failure, if any (the lease
    /// then expires by itself).
    pub async fn release(mut self) -> Result<(), LeaseError> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Release(reply)).is_err() {
            return Ok(());
        }
        let result = answer.await.unwrap_or(Ok(()));
        let _ = (&mut self.task).await;
        result
    }
}

/// The lease of the current term, as the renew loop tracks it.
struct Term {
    lease_id: String,
    started: Instant,
    last_renewed: Instant,
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
type Reply = oneshot::Sender<Result<(), LeaseError>>;

/// The state of the election task.
struct Campaign {
    pipeline: String,
    metrics: ElectionMetrics,
    leader: LeaderBlob,
    settings: ElectionSettings,
    holder: Holder,
    state: watch::Sender<Leadership>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The lease id of a term that ended at its deadline: it may still hold
    /// the blob until it expires, so it is released (best effort) before
    /// the next term or at the end, letting a peer take over sooner.
    stale: Option<String>,
}

impl Campaign {
    async fn run(mut self) {
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
                _ = sleep(self.settings.poll) => {}
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
        self.holder.active_since = Some(chrono::Utc::now());
        // Only `describe` reads this; the next renew finds out if the
        // lease is already gone.
        if let Err(e) = self.leader.write_holder(&lease_id, &self.holder).await {
            tracing::debug!(pipeline = %self.pipeline, "Could not name this agent in the leader blob: {e}");
        }
        let term = Term {
            lease_id,
            started: start,
            last_renewed: start,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_secs_are_checked_against_azures_limits() {
        for bad in [0, 14, 61, 300] {
            let e = ElectionSettings::new(bad).unwrap_err();
            assert_eq!(e, HaError::LeaseSecs { lease_secs: bad });
            assert!(e.to_string().contains("15 to 60 seconds"), "{e}");
        }
        let s = ElectionSettings::new(15).unwrap();
        assert_eq!(s.renew_every(), Duration::from_secs(5));
        assert_eq!(s.stop_after(), Duration::from_secs(12));
        let s = ElectionSettings::new(60).unwrap();
        assert_eq!(s.renew_every(), Duration::from_secs(20));
        assert_eq!(s.stop_after(), Duration::from_secs(48));
    }

    #[test]
    fn the_margin_leaves_room_for_a_renew() {
        let s = ElectionSettings::new(15).unwrap();
        assert!(s.clone().with_margin(Duration::ZERO).is_err());
        // 10 s of 15: the deadline (5 s) would come with the first renew.
        assert!(s.clone().with_margin(Duration::from_secs(10)).is_err());
        let s = s.with_margin(Duration::from_secs(5)).unwrap();
        assert_eq!(s.stop_after(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn an_active_state_expires_by_itself_at_stop_by() {
        let now = Instant::now();
        let active = Leadership::Active {
            lease_id: "id".into(),
            term_started: now,
            last_renewed: now,
            stop_by: now + Duration::from_millis(50),
        };
        assert_eq!(active.lease_id(), Some("id"));
        sleep(Duration::from_millis(60)).await;
        assert_eq!(active.lease_id(), None);
        assert!(!active.is_active());
        assert!(!Leadership::Standby.is_active());
    }
}
