//! The unit that flows through the topology.
//!
//! A [`LogEvent`] is one record (for MongoDB: one change event) plus what the
//! runtime needs to know about it. The payload stays BSON
//! (`RawDocumentBuf`), not a JSON tree: change events hold types JSON cannot
//! express (Timestamp, Decimal128, Int64 vs Double, binary subtypes, dates
//! before 1970), and keeping the driver's raw bytes means the sink can
//! transcode each value exactly once, straight to the chosen Extended JSON
//! flavour, without a lossy or allocation-heavy intermediate.
//!
//! A [`Watermark`] is a promise from a source that every event it emits from
//! now on has an event time at or after `time`. Sinks use it to close time
//! windows of quiet namespaces.

pub mod finalization;

use std::{cmp::Ordering, fmt, sync::Arc};

use bson::RawDocumentBuf;
use chrono::{DateTime, Utc};

pub use finalization::{
    BatchNotifier, BatchStatus, BatchStatusReceiver, EventFinalizer, EventFinalizers, EventStatus,
};

/// A source's replay position: totally ordered and stable across replays
/// (for MongoDB the resume token's `_data` KeyString hex, whose lexicographic
/// order is stream order within one deployment).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Position(pub String);

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        // Hex strings of different lengths still compare correctly byte-wise
        // for KeyString encodings: a shorter key that is a prefix sorts first.
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Data about an event that is not part of its payload.
#[derive(Clone, Debug)]
pub struct EventMetadata {
    /// The id of the source component that produced the event.
    pub source_id: Arc<str>,
    /// Where the event sits in its source's stream; `None` for sources that
    /// cannot replay.
    pub position: Option<Position>,
    /// The time the event happened (MongoDB: clusterTime, then wallTime).
    pub event_time: Option<DateTime<Utc>>,
}

/// One record and its acknowledgement handles.
#[derive(Clone, Debug)]
pub struct LogEvent {
    pub payload: RawDocumentBuf,
    pub metadata: EventMetadata,
    pub finalizers: EventFinalizers,
}

impl LogEvent {
    pub fn new(payload: RawDocumentBuf, metadata: EventMetadata) -> Self {
        Self {
            payload,
            metadata,
            finalizers: EventFinalizers::default(),
        }
    }

    /// Attaches a finalizer so the source hears when this event is durable.
    pub fn with_batch_notifier(mut self, batch: &Arc<BatchNotifier>) -> Self {
        self.finalizers
            .merge(EventFinalizers::new(EventFinalizer::new(Arc::clone(batch))));
        self
    }

    /// Removes the finalizers so the sink can hold them until the write is
    /// durable.
    pub fn take_finalizers(&mut self) -> EventFinalizers {
        std::mem::take(&mut self.finalizers)
    }
}

/// The event-time progress of a source.
#[derive(Clone, Debug)]
pub struct Watermark {
    pub source_id: Arc<str>,
    pub time: DateTime<Utc>,
    /// `true`: the source is idle (its last read found nothing new) or a
    /// burst of events just ended, so sinks write what they hold. `false`:
    /// it has caught up for now (it has read every event the server had and
    /// waits for more) while events trickle in, so sinks write only what is
    /// worth a request of its own.
    pub idle: bool,
}

/// What flows along the edges of the topology.
#[derive(Clone, Debug)]
pub enum Event {
    Log(LogEvent),
    Watermark(Watermark),
}

impl Event {
    /// The size used for byte metrics and buffer accounting: the BSON size of
    /// the payload (Vector's "estimated JSON encoded size" would need an
    /// encode per event just to count).
    pub fn size_of(&self) -> usize {
        match self {
            Event::Log(log) => log.payload.as_bytes().len(),
            Event::Watermark(_) => 0,
        }
    }

    /// Marks the event as intentionally discarded, which lets its source move on.
    pub fn discard(self) {
        if let Event::Log(mut log) = self {
            log.take_finalizers().finalize(EventStatus::Dropped);
        }
    }
}
