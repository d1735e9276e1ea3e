//! The output of a source: fans every event out to the buffers of the sinks
//! that list the source in `inputs`, and counts what the source sent.

use std::sync::Arc;

use crate::{
    event::{BatchNotifier, Event, LogEvent},
    finalizer::OrderedFinalizer,
    internal_events::{ComponentTags, EventsSent},
    shutdown::ShutdownSignal,
};

use super::buffer::{BufferSender, Slot};

pub struct SourceSender {
    outputs: Vec<BufferSender>,
    sent: EventsSent,
}

/// What became of a log event handed to [`SourceSender::send_log`].
#[derive(Debug, PartialEq, Eq)]
pub enum Sent<T> {
    /// Sent with a batch notifier; its entry comes back from the
    /// finalizer's stream once every sink resolved it.
    Registered,
    /// Sent without acknowledgements: its entry counts as delivered now.
    Unacknowledged(T),
    /// Not sent: shutdown came first or a sink has gone away. The source
    /// should stop.
    Stopped,
}

impl SourceSender {
    pub(crate) fn new(outputs: Vec<BufferSender>, tags: &ComponentTags) -> Self {
        Self {
            outputs,
            sent: EventsSent::register(tags),
        }
    }

    /// Sends `event` unless `shutdown` comes first (checked first, so a
    /// stopping source sends nothing more). `false` when the source should
    /// stop: shutdown, or a sink has gone away.
    pub async fn send_until_shutdown(&mut self, event: Event, shutdown: &ShutdownSignal) -> bool {
        self.send_or_keep(event, shutdown).await.is_ok()
    }

    /// Sends one event to every connected sink, waiting for room when a
    /// blocking buffer is full, unless `shutdown` comes first or a sink has
    /// gone away. An event the last sink did not take comes back instead
    /// of being dropped in the race, so the caller decides what its
    /// finalizers report.
    async fn send_or_keep(&mut self, event: Event, shutdown: &ShutdownSignal) -> Result<(), Event> {
        let size = event.size_of();
        let is_log = matches!(event, Event::Log(_));
        let Some((last, rest)) = self.outputs.split_last() else {
            return Ok(());
        };
        for output in rest {
            let Some(slot) = Self::slot(output, shutdown).await else {
                return Err(event);
            };
            if slot.send(event.clone()).is_err() {
                return Err(event);
            }
        }
        // The last sink takes the event itself.
        let Some(slot) = Self::slot(last, shutdown).await else {
            return Err(event);
        };
        slot.send(event)?;
        if is_log {
            self.sent.emit(1, size);
        }
        Ok(())
    }

    /// Room in `output`'s buffer, unless shutdown comes first or the sink
    /// has gone away. Cancel-safe: the event is handed over only once the
    /// buffer has a slot for it.
    async fn slot<'a>(output: &'a BufferSender, shutdown: &ShutdownSignal) -> Option<Slot<'a>> {
        // Room now needs no wait: waiting on `shutdown` registers a waker
        // under a lock, per event, which the snapshot profile showed.
        if shutdown.is_cancelled() {
            return None;
        }
        if let Some(slot) = output.try_slot() {
            return slot.ok();
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            slot = output.slot() => slot.ok(),
        }
    }

    /// Sends a log event that shares `batch` with other events (one
    /// acknowledgement for all of them, which the caller registers once the
    /// last is sent). `false` when the source should stop: the event was
    /// not sent, and its finalizer is released as never emitted, so it does
    /// not fail the events of `batch` that were.
    pub async fn send_log_in(
        &mut self,
        event: LogEvent,
        batch: &Arc<BatchNotifier>,
        shutdown: &ShutdownSignal,
    ) -> bool {
        let event = Event::Log(event.with_batch_notifier(batch));
        match self.send_or_keep(event, shutdown).await {
            Ok(()) => true,
            Err(unsent) => {
                unsent.discard();
                false
            }
        }
    }

    /// Sends a log event under `shutdown`. With a `finalizer` (acknowledgements
    /// on) the event carries a batch notifier and `entry`, the position it
    /// would commit, is registered once the event is sent: an event abandoned
    /// at shutdown was never emitted, so it must not count as a failed
    /// delivery.
    pub async fn send_log<T: Send + 'static>(
        &mut self,
        event: LogEvent,
        entry: T,
        finalizer: Option<&OrderedFinalizer<T>>,
        shutdown: &ShutdownSignal,
    ) -> Sent<T> {
        let (event, receiver) = match finalizer {
            Some(_) => {
                let (batch, receiver) = BatchNotifier::new_with_receiver();
                (event.with_batch_notifier(&batch), Some(receiver))
            }
            None => (event, None),
        };
        if !self.send_until_shutdown(Event::Log(event), shutdown).await {
            return Sent::Stopped;
        }
        match (finalizer, receiver) {
            (Some(finalizer), Some(receiver)) => {
                finalizer.add(receiver, entry);
                Sent::Registered
            }
            _ => Sent::Unacknowledged(entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;
    use crate::{
        config::BufferConfig,
        event::{BatchStatus, EventMetadata, EventStatus},
        topology::buffer,
    };

    fn log(n: i32) -> LogEvent {
        LogEvent::new(
            bson::rawdoc! { "n": n },
            EventMetadata {
                source_id: Arc::from("in"),
                position: None,
                event_time: None,
            },
        )
    }

    /// A buffer of one event into sink `id`.
    fn one_slot(id: &str) -> (BufferSender, buffer::BufferReceiver) {
        let config = BufferConfig {
            max_events: 1,
            ..Default::default()
        };
        buffer::memory(&config, &ComponentTags::new(id, "sink", "test"))
    }

    /// Cancels `shutdown` after 50 ms.
    fn shutdown_soon(shutdown: &ShutdownSignal) {
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stopper.cancel();
        });
    }

    /// Events sharing one notifier: the one that shutdown kept out of a
    /// full buffer is released as never emitted, so the batch resolves
    /// with the status of the events that were sent (dropped in the race
    /// instead, it would fail them all).
    #[tokio::test]
    async fn an_event_kept_back_by_shutdown_does_not_fail_its_batch() {
        let (tx, mut rx) = one_slot("out");
        let mut out = SourceSender::new(vec![tx], &ComponentTags::new("in", "source", "test"));
        let shutdown = ShutdownSignal::new();
        let (batch, receiver) = BatchNotifier::new_with_receiver();
        assert!(out.send_log_in(log(1), &batch, &shutdown).await);
        // The buffer is full: the second event waits for room until
        // shutdown comes.
        shutdown_soon(&shutdown);
        assert!(!out.send_log_in(log(2), &batch, &shutdown).await);
        drop(batch);
        let Some(Event::Log(mut sent)) = rx.next().await else {
            panic!("the first event is buffered")
        };
        sent.take_finalizers().finalize(EventStatus::Delivered);
        assert_eq!(receiver.await, BatchStatus::Delivered);
    }

    /// Fan-out: the copy that reached the first sink before shutdown kept
    /// the second one's slot from coming still counts for the batch (its
    /// failure fails it), though the source stops without it.
    #[tokio::test]
    async fn a_copy_sent_before_shutdown_still_counts() {
        let ((to_a, mut a), (to_b, mut b)) = (one_slot("a"), one_slot("b"));
        let mut out = SourceSender::new(
            vec![to_a, to_b],
            &ComponentTags::new("in", "source", "test"),
        );
        let shutdown = ShutdownSignal::new();
        let (batch, receiver) = BatchNotifier::new_with_receiver();
        assert!(out.send_log_in(log(1), &batch, &shutdown).await);
        // Both buffers are full; sink A takes its event, B does not.
        let Some(Event::Log(mut first)) = a.next().await else {
            panic!("the first event reached sink A")
        };
        shutdown_soon(&shutdown);
        assert!(!out.send_log_in(log(2), &batch, &shutdown).await);
        drop((batch, out));
        first.take_finalizers().finalize(EventStatus::Delivered);
        let Some(Event::Log(mut copy)) = a.next().await else {
            panic!("sink A got the second event's copy")
        };
        copy.take_finalizers().finalize(EventStatus::Errored);
        // Sink B delivers the first event, all it got.
        let Some(Event::Log(mut at_b)) = b.next().await else {
            panic!("sink B got the first event")
        };
        at_b.take_finalizers().finalize(EventStatus::Delivered);
        assert_eq!(receiver.await, BatchStatus::Errored);
    }
}
