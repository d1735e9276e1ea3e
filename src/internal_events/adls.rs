//! Internal events of the `adls_partitioned_jsonl` sink.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use super::{ComponentError, ComponentTags, Stage};
use crate::event::Position;

/// Sink-specific metrics, registered once.
#[derive(Clone)]
pub struct SinkMetrics {
    files_sealed: Counter,
    bytes_written: Counter,
    open_files: Gauge,
    oldest_open_file_age: Gauge,
    request_seconds: Histogram,
    skipped: Counter,
    spilled: Counter,
    spill_bytes: Gauge,
}

impl SinkMetrics {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            files_sealed: tags.counter("adls_files_sealed_total"),
            bytes_written: tags.counter("adls_bytes_written_total"),
            open_files: tags.gauge("adls_open_files"),
            oldest_open_file_age: tags.gauge("adls_oldest_open_file_age_seconds"),
            request_seconds: tags.histogram("adls_request_duration_seconds"),
            skipped: tags.counter("adls_replayed_events_skipped_total"),
            spilled: tags.counter("adls_spilled_bytes_total"),
            spill_bytes: tags.gauge("adls_spill_bytes"),
        }
    }

    /// Pending bytes moved to the local spill.
    pub fn spilled(&self, bytes: usize) {
        self.spilled.increment(bytes as u64);
    }

    /// Bytes the spill holds on disk now.
    pub fn spill_bytes(&self, bytes: u64) {
        self.spill_bytes.set(bytes as f64);
    }

    pub fn block_written(&self, bytes: usize) {
        self.bytes_written.increment(bytes as u64);
    }

    pub fn request(&self, took: Duration) {
        self.request_seconds.record(took.as_secs_f64());
    }

    pub fn open_files(&self, n: usize) {
        self.open_files.set(n as f64);
    }

    /// Seconds since the oldest open file was opened (0 with none): how
    /// far the lake trails for readers that wait for sealed files.
    pub fn oldest_open_file_age(&self, secs: i64) {
        self.oldest_open_file_age.set(secs.max(0) as f64);
    }

    /// A file was opened; says when it will be sealed. The first file of
    /// each window says it at INFO (once per window, however many
    /// collections write into it), the others at DEBUG.
    pub fn file_opened(&self, opened: FileOpened<'_>) {
        let at = super::rfc3339;
        let FileOpened {
            object,
            window_start,
            window_closes_at,
            max_age_at,
            every_batch,
            first_of_window,
        } = opened;
        if first_of_window {
            let now = if every_batch {
                "Each batch is visible as it is written (commit = \"every_batch\"); the"
            } else {
                "The"
            };
            tracing::info!(
                object,
                "Window {} opened. {now} window's files are sealed and visible once the source passes {} (the window's end plus roll.grace_secs), or at {} at the latest (roll.max_age_secs).",
                at(window_start),
                at(window_closes_at),
                at(max_age_at),
            );
        } else {
            tracing::debug!(
                object,
                sealed_when_watermark_passes = %at(window_closes_at),
                sealed_at_the_latest = %at(max_age_at),
                "File opened; it becomes visible when sealed."
            );
        }
    }

    pub fn replayed_skipped(&self, n: u64) {
        self.skipped.increment(n);
    }

    pub fn file_sealed(&self, object: &str, events: u64, bytes: u64) {
        tracing::info!(object, events, bytes, "File sealed.");
        self.files_sealed.increment(1);
    }
}

/// What [`SinkMetrics::file_opened`] reports.
pub struct FileOpened<'a> {
    pub object: &'a str,
    pub window_start: i64,
    /// When the watermark passing it seals the file.
    pub window_closes_at: i64,
    /// When `roll.max_age_secs` seals it whatever the watermark.
    pub max_age_at: i64,
    pub every_batch: bool,
    pub first_of_window: bool,
}

/// A write storage refused for good (403, 404): its events are reported
/// as not delivered.
pub struct WriteFailed<'a> {
    pub object: &'a str,
    pub events: usize,
    pub error: &'a str,
}

impl WriteFailed<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        let credentials = if self.error.contains("HTTP 403") {
            " Credentials are read at start: fix the key, SAS token or role assignment, then restart the agent."
        } else {
            ""
        };
        let message = format!(
            "Writing {} events to {} failed: {}. They are not acknowledged, so the source will replay them after a restart; later events of this window are held back until then.{credentials}",
            self.events, self.object, self.error
        );
        ComponentError {
            error_type: "request_rejected",
            stage: Stage::Sending,
            message: &message,
        }
        .emit(tags);
        // Held back until a restart: no later progress makes this pass.
        tags.health
            .condition(&format!("rejected:{}", self.object), &message, true);
    }
}

/// Staged blocks were gone from storage at commit time: acknowledged events
/// that are not in the lake.
pub struct DataLost<'a> {
    pub object: &'a str,
    pub blocks: usize,
    pub of_blocks: usize,
    pub events: u64,
    pub bytes: u64,
    pub first: Option<&'a Position>,
    pub last: Option<&'a Position>,
}

impl DataLost<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        let token = |p: Option<&Position>| p.map_or("(unknown)".to_string(), |p| p.0.clone());
        ComponentError {
            error_type: "data_lost",
            stage: Stage::Sending,
            message: &format!(
                "DATA LOSS: {} of the {} staged blocks of {} were gone from storage when the file was committed (Azure discards uncommitted blocks 7 days after they are staged, e.g. when the agent was stopped that long, or when another writer committed this name). Their {} events ({} bytes) had been acknowledged and are not in the lake; the blocks still there were committed. The lost events lie between resume tokens {} and {}: to recover them, run a second agent whose source has start_at set to a token at or before the first, if the oplog still holds it.",
                self.blocks,
                self.of_blocks,
                self.object,
                self.events,
                self.bytes,
                token(self.first),
                token(self.last)
            ),
        }
        .emit(tags);
        tags.counter("adls_lost_events_total")
            .increment(self.events);
    }
}

/// An event that cannot be encoded (malformed BSON) is rejected.
pub struct EncodeFailed<'a> {
    pub error: &'a str,
}

impl EncodeFailed<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        ComponentError {
            error_type: "encoder_failed",
            stage: Stage::Processing,
            message: &format!("Event rejected: {}.", self.error),
        }
        .emit(tags);
    }
}
