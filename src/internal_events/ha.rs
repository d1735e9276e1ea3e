//! Internal events of the leader election (`crate::ha`): one log line per
//! change of leadership, saying why, and two gauges that tell which agent
//! of a pipeline is active and when it last renewed its lease.

use std::time::Duration;

use metrics::{gauge, Gauge, Label};

/// `ha_active` (1 while this agent is the active one, else 0) and
/// `ha_lease_renewed_timestamp_seconds` (when the lease was last renewed),
/// labelled with the pipeline id.
#[derive(Clone)]
pub struct ElectionMetrics {
    active: Gauge,
    renewed_at: Gauge,
}

impl ElectionMetrics {
    pub fn register(pipeline: &str) -> Self {
        let labels = vec![Label::new("pipeline", pipeline.to_string())];
        Self {
            active: gauge!("ha_active", labels.clone()),
            renewed_at: gauge!("ha_lease_renewed_timestamp_seconds", labels),
        }
    }

    pub fn active(&self, active: bool) {
        self.active.set(if active { 1.0 } else { 0.0 });
    }

    pub fn renewed(&self) {
        self.renewed_at
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
}

/// This agent acquired the lease: it is the active agent from now on.
pub struct BecameActive<'a> {
    pub pipeline: &'a str,
    pub blob: &'a str,
    /// How long it was a standby.
    pub waited: Duration,
    pub stop_after: Duration,
}

impl BecameActive<'_> {
    pub fn emit(&self, metrics: &ElectionMetrics) {
        metrics.active(true);
        metrics.renewed();
        tracing::info!(
            pipeline = self.pipeline,
            lease_blob = self.blob,
            "This agent is now the active agent of pipeline {:?} (acquired the lease on {} after {:.1}s as standby); it renews every third of the lease and stops writing if no renew succeeds for {:.0}s.",
            self.pipeline,
            self.blob,
            self.waited.as_secs_f64(),
            self.stop_after.as_secs_f64(),
        );
    }
}

/// This agent is no longer the active one.
pub struct StoppedBeingActive<'a> {
    pub pipeline: &'a str,
    /// Why, as a sentence.
    pub reason: &'a str,
    /// `false` for a release at shutdown (expected), `true` otherwise.
    pub unexpected: bool,
}

impl StoppedBeingActive<'_> {
    pub fn emit(&self, metrics: &ElectionMetrics) {
        metrics.active(false);
        if self.unexpected {
            tracing::warn!(
                pipeline = self.pipeline,
                "This agent is no longer the active agent of pipeline {:?}: {}. It stops writing; a standby takes over.",
                self.pipeline,
                self.reason
            );
        } else {
            tracing::info!(
                pipeline = self.pipeline,
                "This agent is no longer the active agent of pipeline {:?}: {}.",
                self.pipeline,
                self.reason
            );
        }
    }
}

/// This agent waits as a standby; `holder` names the active agent when
/// known.
pub struct Standby<'a> {
    pub pipeline: &'a str,
    pub holder: Option<&'a str>,
}

impl Standby<'_> {
    pub fn emit(&self) {
        match self.holder {
            Some(holder) => tracing::info!(
                pipeline = self.pipeline,
                "Standby for pipeline {:?}: the active agent is {holder}; this agent takes over when it releases the lease or stops renewing it.",
                self.pipeline
            ),
            None => tracing::info!(
                pipeline = self.pipeline,
                "Standby for pipeline {:?}: another agent holds the lease.",
                self.pipeline
            ),
        }
    }
}

/// A lease request failed in a way that is not an answer about the lease
/// (storage unreachable, credentials refused...).
pub struct LeaseRequestFailed<'a> {
    pub pipeline: &'a str,
    /// Already redacted.
    pub error: &'a str,
    /// For an active agent: how long until it stops writing unless a
    /// renew succeeds.
    pub stop_in: Option<Duration>,
}

impl LeaseRequestFailed<'_> {
    pub fn emit(&self) {
        match self.stop_in {
            Some(left) => tracing::warn!(
                pipeline = self.pipeline,
                "Could not renew the lease of pipeline {:?}: {}. Retrying; this agent stops writing in {:.1}s unless a renew succeeds.",
                self.pipeline,
                self.error,
                left.as_secs_f64()
            ),
            None => tracing::warn!(
                pipeline = self.pipeline,
                "Standby for pipeline {:?} cannot reach the lease: {}. Retrying.",
                self.pipeline,
                self.error
            ),
        }
    }
}
