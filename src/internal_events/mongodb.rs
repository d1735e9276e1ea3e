//! Internal events of the `mongodb_change_stream` source.

use metrics::Gauge;

use super::{ComponentError, ComponentTags, Stage};

/// Lag and checkpoint age gauges, registered once.
pub struct StreamProgress {
    lag: Gauge,
    checkpoint_age: Gauge,
}

impl StreamProgress {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            lag: tags.gauge("mongodb_change_stream_lag_seconds"),
            checkpoint_age: tags.gauge("checkpoint_age_seconds"),
        }
    }

    /// `now - clusterTime` of the newest event or idle token read.
    pub fn read_up_to(&self, cluster_secs: u32) {
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
}

impl HistoryLostReset<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        ComponentError {
            error_type: "history_lost",
            stage: Stage::Receiving,
            message: &format!(
                "DATA GAP: resume token {} is no longer in the oplog; continuing from now (on_history_lost = \"reset_to_now\"). Changes between the checkpoint and now are not delivered; re-copy affected collections if they matter.",
                self.token
            ),
        }
        .emit(tags);
        metrics::counter!("mongodb_change_stream_data_gaps_total", tags.labels()).increment(1);
    }
}
