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
//! - a standby reads the lease state every L/5 (one Get Blob Properties)
//!   and tries Acquire Lease at once when it is free (released, expired or
//!   broken), and every L/3 in any case; each term proposes a fresh UUID as
//!   the lease id, so writes of an earlier term never pass as this one's,
//!   and records it in the leader blob ahead of the earlier terms' ids
//!   (`Holder::terms`), which its takeover of the state changes from.
//!   A killed active's lease is free L after its last renew, so this adds
//!   at most L/5 to a failover that takes L anyway.
//!
//! Requests: the active sends 180/L renews a minute (9 at L = 20), and
//! the agent renews its state leases (60 s) every 15-20 s besides; a
//! standby 300/L (Get Blob Properties, or Acquire Lease when due: 15 at
//! L = 20, about 650,000 a month); [`ElectionSettings::with_poll`] trades
//! requests for a faster handover.
//!
//! A term that ends by itself ([`Leadership::Lost`]) stays ended until the
//! owner has stopped its components and calls [`Elector::rejoin`]; a
//! release ends the election.

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    campaign::{Campaign, Command},
    lease::{Holder, LeaderBlob, LeaseError},
    ElectionSettings, Leadership,
};
use crate::internal_events::ha::ElectionMetrics;

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
