//! What to do after a change stream error: retry after a pause, recover
//! from lost history as `on_history_lost` says, or stop.

use std::{ops::ControlFlow, time::Duration};

use mongodb::error::ErrorKind;

use super::{ChangeStreamSource, RunState, Stop};
use crate::sources::mongodb_change_stream::{errors, settings::OnHistoryLost, watch::OpenAt};
use crate::{
    backoff::Backoff,
    internal_events::mongodb::{HistoryLostReset, StreamInterrupted},
};

/// Waits before reopening after a transient error: 0.5 s to 30 s, as
/// docs/components.md says (the cap was 16 s before the backoff was shared).
const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// How a stream error is handled.
pub(super) enum Failure {
    /// Reopen from the last emitted event after a pause.
    Retry,
    /// The resume point is gone from the oplog.
    HistoryLost,
    /// Stop the source.
    Fatal,
}

/// Ends the run as refused by configuration (exit 78) when `e` is an
/// authentication or authorization failure; called where the source stops
/// on an error.
pub(super) fn stops_the_agent(e: &mongodb::error::Error) {
    if errors::is_refused(e) {
        crate::topology::refused_by_configuration();
    }
}

impl ChangeStreamSource {
    /// Decides how to go on after `e`: continues to reopen at `run.at`
    /// (after a pause for transient errors), breaks to stop the source.
    /// Shutdown during the pause is not an error: it continues, and the
    /// next shutdown check ends the loop.
    pub(super) async fn recover(
        &self,
        e: &mongodb::error::Error,
        run: &mut RunState,
    ) -> ControlFlow<Stop> {
        match self.classify(e) {
            Failure::Retry => {
                self.pause(&mut run.attempt, e).await;
                ControlFlow::Continue(())
            }
            Failure::HistoryLost => match self.history_lost(&run.at, &mut run.recoveries, e) {
                Some(at) => {
                    run.at = at;
                    ControlFlow::Continue(())
                }
                None => ControlFlow::Break(Err(())),
            },
            Failure::Fatal => {
                stops_the_agent(e);
                self.error(
                    "stream_failed",
                    &format!(
                        "Change stream failed and retrying cannot help; stopping: {}",
                        errors::describe(e)
                    ),
                );
                ControlFlow::Break(Err(()))
            }
        }
    }

    pub(super) fn classify(&self, e: &mongodb::error::Error) -> Failure {
        match e.kind.as_ref() {
            ErrorKind::Command(c) => match c.code {
                286 => Failure::HistoryLost,
                280 if c.message.contains("resume") && c.message.contains("not found") => {
                    Failure::HistoryLost
                }
                _ if errors::is_permanent(e) => Failure::Fatal,
                _ => Failure::Retry,
            },
            _ if errors::is_permanent(e) => Failure::Fatal,
            _ => Failure::Retry,
        }
    }

    /// Waits before retry `*attempt` (counted from 0) and counts it; cut
    /// short by shutdown (the caller's loop then sees it and stops).
    /// After `e` in a step that is tried again: pauses and answers true
    /// when retrying can help (and no shutdown came), else reports
    /// "`what`: cause" (ending the run as refused by configuration on
    /// refused credentials) and answers false.
    pub(super) async fn retry_after(
        &self,
        e: &mongodb::error::Error,
        attempt: &mut u32,
        what: &str,
    ) -> bool {
        if matches!(self.classify(e), Failure::Retry) && !self.cx.shutdown.is_cancelled() {
            self.pause(attempt, e).await;
            return true;
        }
        stops_the_agent(e);
        self.error(
            "snapshot_failed",
            &format!("{what}: {}", errors::describe(e)),
        );
        false
    }

    pub(super) async fn pause(&self, attempt: &mut u32, e: &mongodb::error::Error) {
        let delay = RETRY_BACKOFF.delay(*attempt);
        *attempt += 1;
        StreamInterrupted {
            error: &errors::describe(e),
            retry_in_secs: delay.as_secs_f64(),
        }
        .emit(&self.cx.tags);
        tokio::select! {
            _ = self.cx.shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    fn history_lost(
        &self,
        at: &OpenAt,
        recoveries: &mut u32,
        e: &mongodb::error::Error,
    ) -> Option<OpenAt> {
        let token = match at {
            OpenAt::After(t) => t.as_str(),
            _ => "(start position)",
        };
        match self.settings.on_history_lost {
            OnHistoryLost::Fail => {
                self.error(
                    "history_lost",
                    &format!(
                        "The checkpoint is no longer in the oplog ({}). Resume token: {token}. Changes since then cannot be streamed. To continue from now, set on_history_lost = \"reset_to_now\" or start_at = \"now\" (and re-copy what you need), or move {} away.",
                        errors::describe(e),
                        self.state.location()
                    ),
                );
                None
            }
            OnHistoryLost::Resnapshot if *recoveries < self.settings.max_consecutive_recoveries => {
                *recoveries += 1;
                HistoryLostReset {
                    token,
                    action: "copying the collections again (on_history_lost = \"resnapshot\")",
                }
                .emit(&self.cx.tags);
                Some(OpenAt::Snapshot)
            }
            OnHistoryLost::ResetToNow if *recoveries < self.settings.max_consecutive_recoveries => {
                *recoveries += 1;
                HistoryLostReset {
                    token,
                    action: "continuing from now (on_history_lost = \"reset_to_now\")",
                }
                .emit(&self.cx.tags);
                Some(OpenAt::Now)
            }
            OnHistoryLost::ResetToNow | OnHistoryLost::Resnapshot => {
                self.error(
                    "history_lost",
                    &format!(
                        "History lost {} times in a row without progress; giving up (max_consecutive_recoveries).",
                        *recoveries
                    ),
                );
                None
            }
        }
    }
}
