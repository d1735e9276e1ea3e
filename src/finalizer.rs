//! Ordered acknowledgement tracking for sources, after Vector's
//! `OrderedFinalizer` (used by its kafka and file sources).
//!
//! A source registers each emitted event's [`BatchStatusReceiver`] together
//! with the position it would commit, in emission order. The returned stream
//! yields `(status, position)` strictly in that order, waiting for an earlier
//! entry even when later ones resolved first. Committing the last `Delivered`
//! position seen, and stopping at the first failure, keeps a checkpoint from
//! ever getting ahead of data a sink has not made durable.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{stream::FuturesOrdered, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::event::{BatchStatus, BatchStatusReceiver};

/// The registering half.
pub struct OrderedFinalizer<T> {
    tx: mpsc::UnboundedSender<(BatchStatusReceiver, T)>,
}

impl<T> Clone for OrderedFinalizer<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> OrderedFinalizer<T> {
    pub fn new() -> (Self, FinalizerStream<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = FinalizerStream {
            rx: Some(rx),
            pending: FuturesOrdered::new(),
        };
        (Self { tx }, stream)
    }

    /// Registers the receiver of the next emitted batch.
    pub fn add(&self, receiver: BatchStatusReceiver, entry: T) {
        // The stream only goes away when the source stops; then the entry has
        // nothing left to commit to.
        let _ = self.tx.send((receiver, entry));
    }
}

type Pending<T> = Pin<Box<dyn std::future::Future<Output = (BatchStatus, T)> + Send>>;

/// Yields statuses in registration order. Ends when every [`OrderedFinalizer`]
/// handle is dropped and every registered entry has resolved.
pub struct FinalizerStream<T> {
    rx: Option<mpsc::UnboundedReceiver<(BatchStatusReceiver, T)>>,
    pending: FuturesOrdered<Pending<T>>,
}

impl<T: Send + 'static> FinalizerStream<T> {
    /// The next resolved entry if one is ready now, without waiting. Polled
    /// `unconstrained`: after a burst of sends the task's coop budget is
    /// spent, and a budgeted poll would report nothing ready, so a source's
    /// checkpoint would lag until it next idles.
    pub fn ready(&mut self) -> Option<(BatchStatus, T)> {
        use futures::FutureExt;
        tokio::task::unconstrained(self.next())
            .now_or_never()
            .flatten()
    }
}

impl<T> FinalizerStream<T> {
    /// The number of entries still waiting for their status.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

impl<T: Send + 'static> Stream for FinalizerStream<T> {
    type Item = (BatchStatus, T);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(rx) = this.rx.as_mut() {
            loop {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some((receiver, entry))) => {
                        this.pending
                            .push_back(Box::pin(async move { (receiver.await, entry) }));
                    }
                    Poll::Ready(None) => {
                        this.rx = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        match this.pending.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Ready(None) if this.rx.is_none() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BatchNotifier, EventFinalizer, EventFinalizers, EventStatus};

    fn batch() -> (EventFinalizers, BatchStatusReceiver) {
        let (notifier, rx) = BatchNotifier::new_with_receiver();
        (EventFinalizers::new(EventFinalizer::new(notifier)), rx)
    }

    #[tokio::test]
    async fn yields_in_registration_order_when_resolved_out_of_order() {
        let (finalizer, mut stream) = OrderedFinalizer::new();
        let (f1, r1) = batch();
        let (f2, r2) = batch();
        let (f3, r3) = batch();
        finalizer.add(r1, 1);
        finalizer.add(r2, 2);
        finalizer.add(r3, 3);

        f3.finalize(EventStatus::Delivered);
        f2.finalize(EventStatus::Delivered);
        assert!(
            futures::poll!(stream.next()).is_pending(),
            "1 is not done yet"
        );

        f1.finalize(EventStatus::Delivered);
        assert_eq!(stream.next().await, Some((BatchStatus::Delivered, 1)));
        assert_eq!(stream.next().await, Some((BatchStatus::Delivered, 2)));
        assert_eq!(stream.next().await, Some((BatchStatus::Delivered, 3)));

        drop(finalizer);
        assert_eq!(stream.next().await, None);
    }
}
