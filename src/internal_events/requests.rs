//! Failed attempts of a sink's storage requests, condensed: a storage
//! outage makes every in-flight request fail and retry, which as one log
//! line per attempt buried the cause under a WARN flood with no ERROR.
//!
//! Each failed attempt marks the sink failing in `/health` (degraded at
//! once, unhealthy after `api.unhealthy_after_secs` without progress),
//! counts in `component_errors_total{error_type="request_failed"}` and in
//! `adls_request_retries_total`, and is logged at DEBUG. The first failure
//! of an outage is one WARN line; while it lasts, one ERROR line a minute
//! says how many attempts failed, since when, the last error with the
//! storage's error code, and the oplog margin; the first success after it
//! is one INFO line.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use metrics::{counter, Counter};

use super::{mongodb::oplog_oldest, rfc3339, ComponentTags};

/// How often a lasting outage is reported.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// One sink's request failures; cheap to clone into request futures.
#[derive(Clone)]
pub struct RequestFailures {
    outage: Arc<Mutex<Option<Outage>>>,
    errors: Counter,
    retries: Counter,
}

/// Failed attempts since the last success.
struct Outage {
    since: DateTime<Utc>,
    attempts: u64,
    /// Attempts since the last report.
    unreported: u64,
    last_report: Instant,
    last_error: String,
}

impl RequestFailures {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            outage: Arc::default(),
            errors: counter!(
                "component_errors_total",
                tags.labels_with(&[
                    ("error_type", "request_failed".to_string()),
                    ("stage", "sending".to_string()),
                ])
            ),
            retries: tags.counter("adls_request_retries_total"),
        }
    }

    /// An attempt of `what` failed with `error`; the next is in `delay`.
    pub fn failed(&self, tags: &ComponentTags, what: &str, error: &str, delay: Duration) {
        tags.health
            .failing(&format!("{what} failed ({error}); retrying"));
        self.errors.increment(1);
        self.retries.increment(1);
        tracing::debug!(
            component_id = %tags.id,
            "{what} failed ({error}); retrying in {:.1}s.",
            delay.as_secs_f64()
        );
        let now = Instant::now();
        let mut outage = self.outage.lock().expect("not poisoned");
        let Some(o) = outage.as_mut() else {
            *outage = Some(Outage {
                since: Utc::now(),
                attempts: 1,
                unreported: 0,
                last_report: now,
                last_error: format!("{what}: {error}"),
            });
            tracing::warn!(
                component_id = %tags.id,
                "{what} failed ({error}); retrying. While storage keeps failing, one line a minute sums it up.",
            );
            return;
        };
        o.attempts += 1;
        o.unreported += 1;
        o.last_error = format!("{what}: {error}");
        if now.duration_since(o.last_report) >= REPORT_EVERY {
            tracing::error!(
                component_id = %tags.id,
                error_type = "request_failed",
                stage = "sending",
                "Storage requests keep failing: {} failed attempts in the last {:.0}s, {} since {} ({:.0}s). Last error: {}. Events wait unacknowledged, so the source's checkpoint holds; writes are retried until storage answers.{}",
                o.unreported,
                now.duration_since(o.last_report).as_secs_f64(),
                o.attempts,
                o.since.to_rfc3339(),
                (Utc::now() - o.since).num_seconds(),
                o.last_error,
                oplog_margin(o.since.timestamp(), oplog_oldest()),
            );
            o.unreported = 0;
            o.last_report = now;
        }
    }

    /// A request succeeded: an outage, if any, is over.
    pub fn succeeded(&self, tags: &ComponentTags) {
        let mut outage = self.outage.lock().expect("not poisoned");
        if let Some(o) = outage.take() {
            tracing::info!(
                component_id = %tags.id,
                failed_since = %o.since.to_rfc3339(),
                failed_attempts = o.attempts,
                "Storage requests succeed again."
            );
        }
    }
}

/// How long a checkpoint standing still since `since` stays in the oplog
/// (the margin left for a restart to replay the waiting events).
pub fn oplog_margin(since: i64, oldest: Option<i64>) -> String {
    let Some(oldest) = oldest else {
        return String::new();
    };
    let margin = since - oldest;
    if margin > 0 {
        format!(
            " The oplog reaches back to {}: {:.1} h before the waiting events fall out of it (after that a restart could not replay them).",
            rfc3339(oldest),
            margin as f64 / 3600.0
        )
    } else {
        format!(
            " The oplog now begins at {}, after the waiting events: keep the agent running until storage answers, since a restart could not replay them.",
            rfc3339(oldest)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::oplog_margin;

    #[test]
    fn the_oplog_margin_is_stated_when_known() {
        assert_eq!(oplog_margin(10_000, None), "");
        let text = oplog_margin(7_200 + 5_400, Some(7_200));
        assert!(
            text.contains("1.5 h before the waiting events fall out"),
            "{text}"
        );
        let text = oplog_margin(7_200, Some(9_000));
        assert!(text.contains("a restart could not replay them"), "{text}");
    }
}
