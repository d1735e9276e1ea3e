//! Every log line and metric the runtime and components emit goes through a
//! named event here, so metric names live in one place and logs and counters
//! cannot drift apart (Vector's `internal_events`).
//!
//! Hot-path events are *registered* once per component ([`EventsReceived`],
//! [`EventsSent`]): the counter handles are resolved with their labels up
//! front, so emitting costs an atomic add, not a label lookup.

pub mod adls;
pub mod delta;
pub mod ha;
pub mod mongodb;
pub mod requests;

use metrics::{counter, gauge, Counter, Gauge, Label};

use crate::health::ComponentHealth;

/// Error types that say something happened to some events (logged and
/// counted) without the component being unable to work.
const NOT_A_HEALTH_PROBLEM: [&str; 4] = [
    "encoder_failed",
    "oversized_event",
    "data_lost",
    "history_lost",
];

/// The tags every component metric carries.
#[derive(Clone, Debug)]
pub struct ComponentTags {
    pub id: String,
    pub kind: &'static str,
    pub component_type: String,
    /// The component's `/health` entry (listed from its start).
    pub health: ComponentHealth,
}

impl ComponentTags {
    pub fn new(id: &str, kind: &'static str, component_type: &str) -> Self {
        Self {
            id: id.to_string(),
            kind,
            component_type: component_type.to_string(),
            health: crate::health::component(id),
        }
    }

    pub fn labels(&self) -> Vec<Label> {
        vec![
            Label::new("component_id", self.id.clone()),
            Label::new("component_kind", self.kind),
            Label::new("component_type", self.component_type.clone()),
        ]
    }

    fn labels_with(&self, extra: &[(&'static str, String)]) -> Vec<Label> {
        let mut labels = self.labels();
        labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.clone())));
        labels
    }

    pub fn counter(&self, name: &'static str) -> Counter {
        counter!(name, self.labels())
    }

    pub fn gauge(&self, name: &'static str) -> Gauge {
        gauge!(name, self.labels())
    }

    pub fn histogram(&self, name: &'static str) -> metrics::Histogram {
        metrics::histogram!(name, self.labels())
    }
}

/// Events a component took in.
#[derive(Clone)]
pub struct EventsReceived {
    events: Counter,
    bytes: Counter,
}

impl EventsReceived {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            events: tags.counter("component_received_events_total"),
            bytes: tags.counter("component_received_event_bytes_total"),
        }
    }

    pub fn emit(&self, count: usize, byte_size: usize) {
        tracing::trace!(count, byte_size, "Events received.");
        self.events.increment(count as u64);
        self.bytes.increment(byte_size as u64);
    }
}

/// Events a component handed on (sources) or made durable (sinks).
#[derive(Clone)]
pub struct EventsSent {
    events: Counter,
    bytes: Counter,
    health: ComponentHealth,
}

impl EventsSent {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            events: tags.counter("component_sent_events_total"),
            bytes: tags.counter("component_sent_event_bytes_total"),
            health: tags.health.clone(),
        }
    }

    pub fn emit(&self, count: usize, byte_size: usize) {
        tracing::trace!(count, byte_size, "Events sent.");
        self.health.progressed();
        self.events.increment(count as u64);
        self.bytes.increment(byte_size as u64);
    }
}

/// Where in a component an error happened (Vector's `stage` tag).
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    Receiving,
    Processing,
    Sending,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Receiving => "receiving",
            Stage::Processing => "processing",
            Stage::Sending => "sending",
        }
    }
}

/// A failure a person may need to look at. The message must already be
/// redacted (see [`crate::redact`]).
pub struct ComponentError<'a> {
    pub error_type: &'static str,
    pub stage: Stage,
    pub message: &'a str,
}

impl ComponentError<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        tracing::error!(
            component_id = %tags.id,
            error_type = self.error_type,
            stage = self.stage.as_str(),
            "{}",
            self.message
        );
        counter!(
            "component_errors_total",
            tags.labels_with(&[
                ("error_type", self.error_type.to_string()),
                ("stage", self.stage.as_str().to_string()),
            ])
        )
        .increment(1);
        if !NOT_A_HEALTH_PROBLEM.contains(&self.error_type) {
            tags.health.failing(self.message);
        }
    }
}

/// Events a component threw away, on purpose or not.
pub struct EventsDiscarded<'a> {
    pub count: usize,
    pub intentional: bool,
    pub reason: &'a str,
}

impl EventsDiscarded<'_> {
    pub fn emit(&self, tags: &ComponentTags) {
        if self.intentional {
            tracing::debug!(component_id = %tags.id, count = self.count, reason = self.reason, "Events discarded.");
        } else {
            tracing::error!(component_id = %tags.id, count = self.count, reason = self.reason, "Events dropped.");
        }
        counter!(
            "component_discarded_events_total",
            tags.labels_with(&[("intentional", self.intentional.to_string())])
        )
        .increment(self.count as u64);
    }
}

/// The fill level of one buffer (tagged with the component that reads it, as
/// Vector tags buffer metrics with the owning sink).
#[derive(Clone)]
pub struct BufferMetrics {
    events: Gauge,
    bytes: Gauge,
}

impl BufferMetrics {
    pub fn register(tags: &ComponentTags) -> Self {
        Self {
            events: tags.gauge("buffer_events"),
            bytes: tags.gauge("buffer_byte_size"),
        }
    }

    pub fn pushed(&self, byte_size: usize) {
        self.events.increment(1.0);
        self.bytes.increment(byte_size as f64);
    }

    pub fn popped(&self, byte_size: usize) {
        self.events.decrement(1.0);
        self.bytes.decrement(byte_size as f64);
    }
}

/// A healthcheck result, logged once at start.
pub fn healthcheck_result(id: &str, result: &Result<(), String>) {
    match result {
        Ok(()) => tracing::info!(component_id = %id, "Healthcheck passed."),
        Err(reason) => {
            tracing::error!(component_id = %id, "Healthcheck failed: {reason}");
            crate::health::component(id).failing_now(&format!("healthcheck failed: {reason}"));
        }
    }
}

/// Seconds since the epoch as RFC 3339 (UTC), for log lines.
/// "3h 05m ago" for a time in seconds since the epoch.
pub fn age(secs: i64) -> String {
    let d = (chrono::Utc::now().timestamp() - secs).max(0);
    match d {
        d if d >= 86_400 => format!("{}d {:02}h ago", d / 86_400, d % 86_400 / 3600),
        d if d >= 3600 => format!("{}h {:02}m ago", d / 3600, d % 3600 / 60),
        d => format!("{}m {:02}s ago", d / 60, d % 60),
    }
}

pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(|| secs.to_string(), |t| t.to_rfc3339())
}
