//! The output of a source: fans every event out to the buffers of the sinks
//! that list the source in `inputs`, and counts what the source sent.

use crate::{
    event::{BatchNotifier, Event, LogEvent},
    finalizer::OrderedFinalizer,
    internal_events::{ComponentTags, EventsSent},
    shutdown::ShutdownSignal,
};

use super::buffer::{BufferSender, ClosedError};

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

    /// Sends one event to every connected sink, waiting for room when a
    /// blocking buffer is full. Fails only when a sink has gone away, which
    /// means the topology is stopping.
    pub async fn send(&mut self, event: Event) -> Result<(), ClosedError> {
        let size = event.size_of();
        let is_log = matches!(event, Event::Log(_));
        if let Some((last, rest)) = self.outputs.split_last() {
            for output in rest {
                output.send(event.clone()).await?;
            }
            last.send(event).await?;
        }
        if is_log {
            self.sent.emit(1, size);
        }
        Ok(())
    }

    /// Sends `event` unless `shutdown` comes first (checked first, so a
    /// stopping source sends nothing more). `false` when the source should
    /// stop: shutdown, or a sink has gone away.
    pub async fn send_until_shutdown(&mut self, event: Event, shutdown: &ShutdownSignal) -> bool {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            sent = self.send(event) => sent.is_ok(),
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
