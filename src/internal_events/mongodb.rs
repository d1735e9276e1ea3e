//! Internal events of the `mongodb_change_stream` source.

use metrics::Gauge;

use super::{ComponentError, ComponentTags, Stage};

/// Lag and checkpoint age gauges, registered once.
pub struct StreamProgress {
    lag: Gauge,
    checkpoint_age: Gauge,
    health: crate::health::ComponentHealth,
}

impl StreamProgress {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            lag: tags.gauge("mongodb_change_stream_lag_seconds"),
            checkpoint_age: tags.gauge("checkpoint_age_seconds"),
            health: tags.health.clone(),
        }
    }

    /// `now - clusterTime` of the newest event or idle token read: the
    /// stream works.
    pub fn read_up_to(&self, cluster_secs: u32) {
        self.health.progressed();
        self.lag.set(seconds_since(cluster_secs));
    }

    /// `now - clusterTime` of the committed position.
    pub fn committed_at(&self, cluster_secs: u32) {
        self.checkpoint_age.set(seconds_since(cluster_secs));
    }
}

fn seconds_since(secs: u32) -> f64 {
    (chrono::Utc::now().timestamp() - i64::from(secs)).max(0) as f64
}

/// The oldest oplog entry's time (seconds since the epoch) last read by a
/// MongoDB source; 0 while unknown. Process-wide so that a sink can quote
/// it (with several sources on different clusters, the last one read).
static OPLOG_OLDEST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// When the oldest oplog entry was written, if a source has read it.
pub fn oplog_oldest() -> Option<i64> {
    Some(OPLOG_OLDEST.load(std::sync::atomic::Ordering::Relaxed)).filter(|t| *t > 0)
}

/// `mongodb_oplog_window_seconds`: how far back the oplog reaches.
#[derive(Clone)]
pub struct OplogWindow {
    gauge: Gauge,
}

impl OplogWindow {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            gauge: tags.gauge("mongodb_oplog_window_seconds"),
        }
    }

    pub fn oldest_entry_at(&self, secs: i64) {
        OPLOG_OLDEST.store(secs, std::sync::atomic::Ordering::Relaxed);
        self.gauge
            .set((chrono::Utc::now().timestamp() - secs).max(0) as f64);
    }
}

/// The stream failed and will be reopened from the last emitted event.
pub struct StreamInterrupted<'a> {
    pub error: &'a str,
    pub retry_in_secs: f64,
}

impl StreamInterrupted<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        ComponentError {
            error_type: "stream_interrupted",
            stage: Stage::Receiving,
            message: &format!(
                "Change stream failed: {}. Reopening from the last emitted event in {:.1}s.",
                self.error, self.retry_in_secs
            ),
        }
        .emit(tags);
    }
}

/// The resume point is gone from the oplog and the stream restarted from
/// now: changes in between are missing from the output.
pub struct HistoryLostReset<'a> {
    pub token: &'a str,
    /// What the source does about it.
    pub action: &'a str,
}

impl HistoryLostReset<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        ComponentError {
            error_type: "history_lost",
            stage: Stage::Receiving,
            message: &format!(
                "DATA GAP: resume token {} is no longer in the oplog; {}. Changes between the checkpoint and now are not delivered as change events.",
                self.token, self.action
            ),
        }
        .emit(tags);
        metrics::counter!("mongodb_change_stream_data_gaps_total", tags.labels()).increment(1);
    }
}

/// Documents copied by a snapshot (`mongodb_change_stream_snapshot_records_total`).
pub struct SnapshotCopied {
    counter: metrics::Counter,
    count: u64,
}

impl SnapshotCopied {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            counter: metrics::counter!(
                "mongodb_change_stream_snapshot_records_total",
                tags.labels()
            ),
            count: 0,
        }
    }

    pub fn increment(&mut self) {
        self.add(1);
    }

    pub fn add(&mut self, records: u64) {
        self.counter.increment(records);
        self.count += records;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// An event over 16 MB left out (`on_oversized_event = "skip"`).
pub struct OversizedEventSkipped<'a> {
    pub namespace: &'a str,
    pub document_key: &'a str,
    pub bytes: i64,
    pub token: &'a str,
}

impl OversizedEventSkipped<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        ComponentError {
            error_type: "oversized_event",
            stage: Stage::Receiving,
            message: &format!(
                "SKIPPED an event over 16 MB (on_oversized_event = \"skip\"): {} documentKey {} ({} bytes of documents), resume token {}. It is not in the output.",
                self.namespace, self.document_key, self.bytes, self.token
            ),
        }
        .emit(tags);
        metrics::counter!(
            "mongodb_change_stream_oversized_events_total",
            tags.labels()
        )
        .increment(1);
    }
}
