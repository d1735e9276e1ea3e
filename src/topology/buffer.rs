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
    /// Waits for room for one event (`block`; `drop_newest` never waits)
    /// without taking the event, so a caller racing shutdown still holds an
    /// event it did not send and can release it as never emitted.
    pub async fn slot(&self) -> Result<Slot<'_>, ClosedError> {
        let permit = match self.when_full {
            WhenFull::Block => Some(self.tx.reserve().await.map_err(|_| ClosedError)?),
            WhenFull::DropNewest => None,
        };
        Ok(Slot {
            sender: self,
            permit,
        })
    }

    /// Room for one event if there is some now (a `drop_newest` buffer
    /// always has); `None` when a `block` buffer is full.
    pub fn try_slot(&self) -> Option<Result<Slot<'_>, ClosedError>> {
        let permit = match self.when_full {
            WhenFull::Block => match self.tx.try_reserve() {
                Ok(permit) => Some(permit),
                Err(mpsc::error::TrySendError::Full(())) => return None,
                Err(mpsc::error::TrySendError::Closed(())) => return Some(Err(ClosedError)),
            },
            WhenFull::DropNewest => None,
        };
        Some(Ok(Slot {
            sender: self,
            permit,
        }))
    }

    /// `drop_newest`: buffers `event` if there is room, else discards it.
    /// A closed buffer gives the event back.
    fn send_or_drop(&self, event: Event) -> Result<(), Event> {
        let size = event.size_of();
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
            Err(mpsc::error::TrySendError::Closed(event)) => {
                self.metrics.popped(size);
                return Err(event);
            }
        }
        Ok(())
    }
}

/// Room for one event in a buffer, from [`BufferSender::slot`].
pub struct Slot<'a> {
    sender: &'a BufferSender,
    permit: Option<mpsc::Permit<'a, Event>>,
}

impl Slot<'_> {
    /// Buffers `event`; a `drop_newest` buffer closed meanwhile gives it
    /// back.
    pub fn send(self, event: Event) -> Result<(), Event> {
        match self.permit {
            Some(permit) => {
                // Count before sending so the gauge never dips below zero
                // when the receiver pops first.
                self.sender.metrics.pushed(event.size_of());
                permit.send(event);
                Ok(())
            }
            None => self.sender.send_or_drop(event),
        }
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
