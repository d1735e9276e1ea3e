//! Internal events of the `adls_delta` sink.

use std::time::Duration;

use metrics::{Counter, Histogram};

use super::ComponentTags;

/// Sink-specific metrics, registered once.
#[derive(Clone)]
pub struct DeltaMetrics {
    tags: ComponentTags,
    commits: Counter,
    commit_seconds: Histogram,
    files: Counter,
    bytes: Counter,
    request_seconds: Histogram,
    skipped: Counter,
    compactions: Counter,
    vacuumed: Counter,
    log_files_deleted: Counter,
}

impl DeltaMetrics {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            tags: tags.clone(),
            commits: tags.counter("delta_commits_total"),
            commit_seconds: tags.histogram("delta_commit_duration_seconds"),
            files: tags.counter("delta_files_written_total"),
            bytes: tags.counter("delta_bytes_written_total"),
            request_seconds: tags.histogram("adls_request_duration_seconds"),
            skipped: tags.counter("adls_replayed_events_skipped_total"),
            compactions: tags.counter("delta_compactions_total"),
            vacuumed: tags.counter("delta_vacuumed_files_total"),
            log_files_deleted: tags.counter("delta_log_files_deleted_total"),
        }
    }

    pub fn request(&self, took: Duration) {
        self.request_seconds.record(took.as_secs_f64());
    }

    /// A write still failing after every retry of a round; it goes on.
    pub fn held(&self, what: &str, error: &str, since: Duration) {
        super::ComponentError {
            error_type: "write_failed",
            stage: super::Stage::Sending,
            message: &format!(
                "{what} has failed for {:.0} s ({error}); retrying until storage answers. The table's rows stay uncommitted and their events unacknowledged meanwhile, so the source's checkpoint holds.",
                since.as_secs_f64()
            ),
        }
        .emit(&self.tags);
    }

    pub fn replayed_skipped(&self, n: u64) {
        self.skipped.increment(n);
    }

    pub fn file_written(&self, object: &str, records: u64, bytes: u64) {
        tracing::debug!(object, records, bytes, "Data file written.");
        self.files.increment(1);
        self.bytes.increment(bytes);
    }

    /// A version of `table` was committed (or found committed).
    pub fn committed(
        &self,
        table: &str,
        version: i64,
        seq: u64,
        rows: u64,
        took: Duration,
        found: bool,
    ) {
        if found {
            tracing::info!(
                table,
                version,
                txn_version = seq,
                "Commit found made by an earlier attempt."
            );
        } else {
            tracing::debug!(
                table,
                version,
                txn_version = seq,
                rows,
                "Table version committed."
            );
        }
        self.commits.increment(1);
        self.commit_seconds.record(took.as_secs_f64());
        metrics::gauge!("delta_table_version", self.table_labels(table)).set(version as f64);
        self.tags.health.detail(
            "tables",
            table,
            serde_json::json!({"version": version, "txn_version": seq}),
        );
    }

    fn table_labels(&self, table: &str) -> Vec<metrics::Label> {
        let mut labels = self.tags.labels();
        labels.push(metrics::Label::new("table", table.to_string()));
        labels
    }

    pub fn compacted(&self, table: &str, version: i64, removed: usize) {
        tracing::info!(table, version, files = removed, "Small files compacted.");
        self.compactions.increment(1);
    }

    pub fn vacuumed(&self, files: usize, log_files: usize) {
        self.vacuumed.increment(files as u64);
        self.log_files_deleted.increment(log_files as u64);
    }
}
