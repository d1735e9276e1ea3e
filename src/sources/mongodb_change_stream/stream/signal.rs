//! Acting on the signal collection's events (`signal.rs` in the source
//! reads them): a snapshot request queues its collections for the copy
//! rounds. The event itself is not sent to the sinks.
//!
//! A request is acted on once: the rounds of its copy are planned at its
//! position or later, so once a round of it is in the checkpoint, a
//! restart resumes past the request. Read again before that, it finds its
//! collections queued and changes nothing.

use super::{ChangeStreamSource, RunState};
use crate::sources::mongodb_change_stream::signal::Signal;

impl ChangeStreamSource {
    pub(super) fn on_signal(&self, run: &mut RunState, signal: Signal) {
        let (id, collections, refused) = match signal {
            Signal::Other { what } => {
                tracing::debug!(source = %self.cx.key, "Signal collection: {what}, not a request; ignored.");
                return;
            }
            Signal::Invalid { id, why } => {
                self.error(
                    "signal_invalid",
                    &format!("Snapshot request {id} in the signal collection is ignored: {why}. Write {{type: \"snapshot\", collections: [\"<collection>\"]}}, or use `mongo-adls snapshot`."),
                );
                return;
            }
            Signal::Snapshot {
                id,
                collections,
                refused,
            } => (id, collections, refused),
        };
        if !refused.is_empty() {
            self.error(
                "signal_invalid",
                &format!("Snapshot request {id}: not copied: {}.", refused.join("; ")),
            );
        }
        let (mut queued, mut already) = (Vec::new(), Vec::new());
        for ns in collections {
            if run.acks.request_copy(&ns) {
                queued.push(ns);
            } else {
                already.push(ns);
            }
        }
        if let Some(copy) = run.copy.as_mut() {
            copy.requested(queued.len());
        }
        tracing::info!(
            source = %self.cx.key,
            request = %id,
            queued = %queued.join(","),
            already_queued = %already.join(","),
            "Snapshot request: copying {} collection(s) beside the stream{}.",
            queued.len(),
            if already.is_empty() { "" } else { " (the others are being copied already)" }
        );
    }
}
