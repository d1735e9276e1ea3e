//! End-to-end acknowledgements, shaped like Vector's `event::finalization`.
//!
//! A source that wants to know when its events are durable creates a
//! [`BatchNotifier`] per event (or per batch) and attaches the resulting
//! [`EventFinalizer`] to each event. Every copy of an event (fan-out clones the
//! `Arc`) shares the finalizer; when the last copy is finalized the notifier
//! resolves its [`BatchStatusReceiver`] with the worst status any copy reported.
//!
//! Unlike Vector, a finalizer dropped without any status resolves as
//! `Errored`, not `Delivered`: a bug or a sink that gave up must never let a
//! source move its checkpoint past data that was not written.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::sync::oneshot;

/// What happened to one copy of an event.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Ord, PartialOrd)]
#[repr(u8)]
pub enum EventStatus {
    /// Not finalized yet. Resolves as `Errored` if it stays so.
    Pending = 0,
    /// Intentionally discarded (e.g. `when_full = "drop_newest"`); counts as done.
    Dropped = 1,
    /// Durably written.
    Delivered = 2,
    /// A transient failure: the data may be retried from the source.
    Errored = 3,
    /// A permanent failure (e.g. 403): retrying the same data will not help.
    Rejected = 4,
}

impl EventStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Dropped,
            2 => Self::Delivered,
            3 => Self::Errored,
            4 => Self::Rejected,
            _ => Self::Pending,
        }
    }
}

/// The status a source receives for a whole batch.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum BatchStatus {
    /// Every event was delivered (or intentionally dropped).
    Delivered,
    /// At least one event failed transiently.
    Errored,
    /// At least one event was rejected permanently.
    Rejected,
}

impl BatchStatus {
    fn from_event_status(status: EventStatus) -> Self {
        match status {
            EventStatus::Dropped | EventStatus::Delivered => Self::Delivered,
            EventStatus::Pending | EventStatus::Errored => Self::Errored,
            EventStatus::Rejected => Self::Rejected,
        }
    }
}

/// Resolves once every finalizer of the batch has been dropped.
pub struct BatchStatusReceiver(oneshot::Receiver<BatchStatus>);

impl BatchStatusReceiver {
    /// A receiver resolved as delivered already: for an ordered mark no
    /// event carries (the end of a snapshot round), so that it resolves
    /// in its place among the others.
    pub fn delivered() -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(BatchStatus::Delivered);
        Self(rx)
    }
}

impl Future for BatchStatusReceiver {
    type Output = BatchStatus;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BatchStatus> {
        // A lost sender means the notifier vanished without reporting: treat as
        // an error so nothing is committed on its behalf.
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(BatchStatus::Errored))
    }
}

/// Collects the status of every event of one batch and reports it on drop.
pub struct BatchNotifier {
    status: AtomicU8,
    tx: Option<oneshot::Sender<BatchStatus>>,
}

impl BatchNotifier {
    /// Creates a notifier and the receiver the source awaits.
    pub fn new_with_receiver() -> (Arc<Self>, BatchStatusReceiver) {
        let (tx, rx) = oneshot::channel();
        let notifier = Self {
            status: AtomicU8::new(EventStatus::Pending as u8),
            tx: Some(tx),
        };
        (Arc::new(notifier), BatchStatusReceiver(rx))
    }

    fn update(&self, status: EventStatus) {
        // Keep the worst status seen; `Pending` < `Dropped` < `Delivered` <
        // `Errored` < `Rejected`, so `fetch_max` is the merge.
        self.status.fetch_max(status as u8, Ordering::AcqRel);
    }
}

impl Drop for BatchNotifier {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let status = EventStatus::from_u8(self.status.load(Ordering::Acquire));
            let _ = tx.send(BatchStatus::from_event_status(status));
        }
    }
}

/// One event copy's handle on a batch notifier.
pub struct EventFinalizer {
    status: AtomicU8,
    batch: Arc<BatchNotifier>,
}

impl EventFinalizer {
    pub fn new(batch: Arc<BatchNotifier>) -> Self {
        Self {
            status: AtomicU8::new(EventStatus::Pending as u8),
            batch,
        }
    }
}

impl Drop for EventFinalizer {
    fn drop(&mut self) {
        let status = match EventStatus::from_u8(self.status.load(Ordering::Acquire)) {
            EventStatus::Pending => EventStatus::Errored,
            status => status,
        };
        self.batch.update(status);
    }
}

/// The finalizers an event carries. Cloning (fan-out) gives the copy fresh
/// finalizers on the same batches, so every copy must be finalized on its own
/// before the batch resolves: one sink's success cannot hide another's loss.
#[derive(Default)]
pub struct EventFinalizers(Vec<EventFinalizer>);

impl Clone for EventFinalizers {
    fn clone(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|f| EventFinalizer::new(Arc::clone(&f.batch)))
                .collect(),
        )
    }
}

impl EventFinalizers {
    pub fn new(finalizer: EventFinalizer) -> Self {
        Self(vec![finalizer])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Merges another event's finalizers into these (used when batching).
    pub fn merge(&mut self, other: EventFinalizers) {
        self.0.extend(other.0);
    }

    /// Merges another event's finalizers keeping one per batch, for a sink
    /// that holds many events' finalizers until one write (a JSON Lines
    /// block, a Delta commit): the events of a source's hand-over share a
    /// batch, so it holds a few finalizers instead of one per event. A
    /// finalizer of a batch already kept is released as `Dropped`, which
    /// never changes the batch's status: the kept one, which holds the
    /// batch open, decides it.
    pub fn merge_deduplicated(&mut self, other: EventFinalizers) {
        for f in other.0 {
            let kept = self
                .0
                .iter()
                .rev()
                .take(4)
                .any(|k| Arc::ptr_eq(&k.batch, &f.batch));
            if kept {
                f.status
                    .store(EventStatus::Dropped as u8, Ordering::Release);
            } else {
                self.0.push(f);
            }
        }
    }

    /// How many finalizers are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Records `status` for every finalizer; takes effect when they are dropped.
    pub fn update_status(&self, status: EventStatus) {
        for f in &self.0 {
            f.status.fetch_max(status as u8, Ordering::AcqRel);
        }
    }

    /// Records `status` and releases the finalizers.
    pub fn finalize(self, status: EventStatus) {
        self.update_status(status);
    }
}

impl std::fmt::Debug for EventFinalizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventFinalizers({})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivered_when_all_copies_delivered() {
        let (batch, rx) = BatchNotifier::new_with_receiver();
        let a = EventFinalizers::new(EventFinalizer::new(batch));
        let b = a.clone();
        a.finalize(EventStatus::Delivered);
        b.finalize(EventStatus::Delivered);
        assert_eq!(rx.await, BatchStatus::Delivered);
    }

    #[tokio::test]
    async fn worst_status_wins() {
        let (batch, rx) = BatchNotifier::new_with_receiver();
        let a = EventFinalizers::new(EventFinalizer::new(batch));
        let b = a.clone();
        a.finalize(EventStatus::Delivered);
        b.finalize(EventStatus::Rejected);
        assert_eq!(rx.await, BatchStatus::Rejected);
    }

    /// Merged copies keep one finalizer per batch; the kept one decides
    /// the batch: it resolves only once that one is finalized, with its
    /// status.
    #[tokio::test]
    async fn deduplicated_merge_keeps_one_per_batch() {
        let (batch, mut rx) = BatchNotifier::new_with_receiver();
        let (other, other_rx) = BatchNotifier::new_with_receiver();
        let one = EventFinalizers::new(EventFinalizer::new(batch));
        let mut held = EventFinalizers::default();
        for _ in 0..100 {
            held.merge_deduplicated(one.clone());
        }
        held.merge_deduplicated(EventFinalizers::new(EventFinalizer::new(other)));
        one.finalize(EventStatus::Delivered);
        assert_eq!(held.len(), 2);
        assert!(
            futures::poll!(&mut rx).is_pending(),
            "the kept finalizer holds the batch open"
        );
        // The 99 released copies did not count as errors.
        held.finalize(EventStatus::Delivered);
        assert_eq!(rx.await, BatchStatus::Delivered);
        assert_eq!(other_rx.await, BatchStatus::Delivered);
    }

    #[tokio::test]
    async fn dropped_without_status_is_an_error() {
        let (batch, rx) = BatchNotifier::new_with_receiver();
        drop(EventFinalizers::new(EventFinalizer::new(batch)));
        assert_eq!(rx.await, BatchStatus::Errored);
    }

    #[tokio::test]
    async fn one_unfinalized_copy_fails_the_batch() {
        let (batch, rx) = BatchNotifier::new_with_receiver();
        let a = EventFinalizers::new(EventFinalizer::new(batch));
        let b = a.clone();
        a.finalize(EventStatus::Delivered);
        drop(b);
        assert_eq!(rx.await, BatchStatus::Errored);
    }

    #[tokio::test]
    async fn not_resolved_while_a_copy_is_alive() {
        let (batch, mut rx) = BatchNotifier::new_with_receiver();
        let a = EventFinalizers::new(EventFinalizer::new(batch));
        let b = a.clone();
        a.finalize(EventStatus::Delivered);
        assert!(futures::poll!(&mut rx).is_pending());
        b.finalize(EventStatus::Delivered);
        assert_eq!(rx.await, BatchStatus::Delivered);
    }
}
