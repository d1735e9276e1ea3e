//! The output of a source: fans every event out to the buffers of the sinks
//! that list the source in `inputs`, and counts what the source sent.

use crate::{
    event::Event,
    internal_events::{ComponentTags, EventsSent},
};

use super::buffer::{BufferSender, ClosedError};

pub struct SourceSender {
    outputs: Vec<BufferSender>,
    sent: EventsSent,
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
}
