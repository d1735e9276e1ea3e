//! Progress of a snapshot's collection copy: a log line every few seconds
//! and gauges per collection (documents and chunks against MongoDB's
//! estimate, and the time to go), for both snapshot modes.

use std::time::{Duration, Instant};

use metrics::Gauge;

use super::{snapshot::split_namespace, ChangeStreamSource};
use crate::internal_events::ComponentTags;

/// What was read of a collection before this run (an incremental copy
/// resumed from the checkpoint).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counted {
    pub(super) documents: u64,
    pub(super) chunks: u64,
}

/// The gauges of one collection's copy, labelled `collection`.
struct Gauges {
    read: Gauge,
    chunks_done: Gauge,
    chunks_total: Gauge,
    remaining_seconds: Gauge,
}

impl Gauges {
    fn register(tags: &ComponentTags, ns: &str, estimate: Option<u64>) -> Self {
        let mut labels = tags.labels();
        labels.push(metrics::Label::new("collection", ns.to_string()));
        if let Some(e) = estimate {
            metrics::gauge!(
                "mongodb_change_stream_snapshot_documents_estimated",
                labels.clone()
            )
            .set(e as f64);
        }
        Self {
            read: metrics::gauge!(
                "mongodb_change_stream_snapshot_documents_read",
                labels.clone()
            ),
            chunks_done: metrics::gauge!(
                "mongodb_change_stream_snapshot_chunks_done",
                labels.clone()
            ),
            chunks_total: metrics::gauge!(
                "mongodb_change_stream_snapshot_chunks_total",
                labels.clone()
            ),
            remaining_seconds: metrics::gauge!(
                "mongodb_change_stream_snapshot_remaining_seconds",
                labels
            ),
        }
    }
}

/// Progress of one collection's copy.
pub(super) struct CopyProgress {
    source: String,
    pub(super) ns: String,
    estimate: Option<u64>,
    chunk_size: u64,
    /// Documents read and chunks done, those of earlier runs included.
    counted: Counted,
    /// Documents read in this run, for the rate.
    read_here: u64,
    logged_at: Instant,
    started: Instant,
    gauges: Gauges,
}

impl CopyProgress {
    const EVERY: Duration = Duration::from_secs(5);

    pub(super) fn read(&mut self, documents: u64) {
        self.counted.documents += documents;
        self.read_here += documents;
        self.gauges.read.set(self.counted.documents as f64);
        let eta = self.eta_secs();
        if let Some(s) = eta {
            self.gauges.remaining_seconds.set(s as f64);
        }
        if self.logged_at.elapsed() < Self::EVERY {
            return;
        }
        self.logged_at = Instant::now();
        let of = match (self.estimate.filter(|e| *e > 0), eta) {
            (Some(e), Some(left)) => format!(
                " ({:.0}% of about {e}, {:.0} a second, about {left} s to go)",
                100.0 * self.counted.documents as f64 / e as f64,
                self.rate()
            ),
            _ => String::new(),
        };
        let chunks = self
            .chunks_total()
            .map_or(String::new(), |t| format!(" of about {t}"));
        tracing::info!(
            source = %self.source,
            collection = %self.ns,
            "Snapshot: {} documents read{of}; {} chunks{chunks} done.",
            self.counted.documents,
            self.counted.chunks
        );
    }

    /// A chunk was wholly read.
    pub(super) fn chunk_done(&mut self) {
        self.counted.chunks += 1;
        self.gauges.chunks_done.set(self.counted.chunks as f64);
        if let Some(t) = self.chunks_total() {
            self.gauges.chunks_total.set(t as f64);
        }
    }

    pub(super) fn done(&self) {
        self.gauges.remaining_seconds.set(0.0);
        self.gauges.chunks_total.set(self.counted.chunks as f64);
        tracing::info!(
            source = %self.source,
            collection = %self.ns,
            documents = self.counted.documents,
            chunks = self.counted.chunks,
            "Snapshot: collection copied."
        );
    }

    fn rate(&self) -> f64 {
        self.read_here as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    /// Seconds to go at this run's rate, when MongoDB gave an estimate.
    fn eta_secs(&self) -> Option<u64> {
        let left = self.estimate?.saturating_sub(self.counted.documents);
        let rate = self.rate();
        (self.read_here > 0 && rate >= 1.0).then(|| (left as f64 / rate).round() as u64)
    }

    /// Chunks done and those the estimate leaves.
    fn chunks_total(&self) -> Option<u64> {
        crate::sources::mongodb_change_stream::incremental::chunks_total(
            self.counted.documents,
            self.counted.chunks,
            self.estimate,
            self.chunk_size,
        )
    }
}

impl ChangeStreamSource {
    /// MongoDB's `estimatedDocumentCount` of `ns` (from its metadata: no
    /// scan); none when the server does not answer.
    pub(super) async fn estimate(&self, ns: &str) -> Option<u64> {
        let (db, coll) = split_namespace(ns);
        self.client
            .database(db)
            .collection::<bson::Document>(coll)
            .estimated_document_count()
            .await
            .ok()
    }

    /// Logs the start of collection `index` of `of` with MongoDB's
    /// estimate of its size, so the progress has a total to compare
    /// against, and sets the collections still to copy.
    pub(super) fn copy_progress(
        &self,
        (index, of): (usize, usize),
        ns: &str,
        estimate: Option<u64>,
        counted: Counted,
    ) -> CopyProgress {
        let tags = &self.cx.tags;
        tracing::info!(
            source = %self.cx.key,
            collection = ns,
            estimated_documents = estimate,
            documents_before = counted.documents,
            "Snapshot: copying collection {} of {}.",
            index + 1,
            of
        );
        metrics::gauge!(
            "mongodb_change_stream_snapshot_collections_remaining",
            tags.labels()
        )
        .set(of.saturating_sub(index) as f64);
        CopyProgress {
            source: self.cx.key.clone(),
            ns: ns.to_string(),
            estimate,
            chunk_size: u64::from(self.settings.snapshot_chunk_size),
            counted,
            read_here: 0,
            logged_at: Instant::now(),
            started: Instant::now(),
            gauges: Gauges::register(tags, ns, estimate),
        }
    }

    /// No collection is left to copy.
    pub(super) fn copy_complete(&self) {
        metrics::gauge!(
            "mongodb_change_stream_snapshot_collections_remaining",
            self.cx.tags.labels()
        )
        .set(0.0);
    }
}
