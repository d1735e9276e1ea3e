//! The bounded in-memory buffer on each edge into a sink.
//!
//! `when_full = "block"` makes the sender wait, which stalls the source and
//! so pushes back on the change stream; `drop_newest` discards the incoming
//! event, finalizing it as intentionally dropped and counting it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::Stream;
use tokio::sync::mpsc;

use crate::{
    config::{BufferConfig, WhenFull},
    event::Event,
    internal_events::{BufferMetrics, ComponentTags, EventsDiscarded},
};

/// The writing end of a buffer. Cloned once per upstream source.
#[derive(Clone)]
pub struct BufferSender {
    tx: mpsc::Sender<Event>,
    when_full: WhenFull,
    metrics: BufferMetrics,
    tags: ComponentTags,
}

/// The sink went away; the event was not buffered.
#[derive(Debug)]
pub struct ClosedError;

impl BufferSender {
    pub async fn send(&self, event: Event) -> Result<(), ClosedError> {
        let size = event.size_of();
        match self.when_full {
            WhenFull::Block => {
                // Count before sending so the gauge never dips below zero when
                // the receiver pops first.
                self.metrics.pushed(size);
                if let Err(mpsc::error::SendError(_event)) = self.tx.send(event).await {
                    self.metrics.popped(size);
                    return Err(ClosedError);
                }
            }
            WhenFull::DropNewest => {
                self.metrics.pushed(size);
                match self.tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        self.metrics.popped(size);
                        // A watermark is not data; dropping it only delays
                        // sealing, so it is not counted as a discarded event.
                        if matches!(event, Event::Log(_)) {
                            EventsDiscarded {
                                count: 1,
                                intentional: true,
                                reason: "buffer is full (when_full = \"drop_newest\")",
                            }
                            .emit(&self.tags);
                        }
                        event.discard();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.metrics.popped(size);
                        return Err(ClosedError);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The reading end, given to the sink as a stream.
pub struct BufferReceiver {
    rx: mpsc::Receiver<Event>,
    metrics: BufferMetrics,
}

impl Stream for BufferReceiver {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let poll = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(event)) = &poll {
            self.metrics.popped(event.size_of());
        }
        poll
    }
}

/// Creates the buffer in front of the sink described by `tags`.
pub fn memory(config: &BufferConfig, tags: &ComponentTags) -> (BufferSender, BufferReceiver) {
    let (tx, rx) = mpsc::channel(config.max_events.max(1));
    let metrics = BufferMetrics::register(tags);
    (
        BufferSender {
            tx,
            when_full: config.when_full,
            metrics: metrics.clone(),
            tags: tags.clone(),
        },
        BufferReceiver { rx, metrics },
    )
}
