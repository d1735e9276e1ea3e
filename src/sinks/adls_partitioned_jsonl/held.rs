//! Writes that failed with a retriable error after every attempt of
//! `request.retry_attempts` (storage down longer than the retries): each is
//! held whole and made again with capped backoff until storage answers, so
//! the agent heals without a restart. Its events stay unacknowledged
//! meanwhile, so the source's checkpoint holds; its file takes no other
//! write (later events of the window wait in their batch, and a full batch
//! stops intake), so memory stays bounded and order within a file holds.
//! One ERROR line a minute says what is held back and since when.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use super::{requests::HeldWrite, state::FileKey};
use crate::sinks::util::storage::StorageError;
use crate::{
    backoff::Backoff,
    health::ComponentHealth,
    internal_events::{
        mongodb::oplog_oldest, requests::oplog_margin, ComponentError, ComponentTags, Stage,
    },
};

/// How often a write that keeps failing is reported.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The failure history of one object's write.
struct Failing {
    since: DateTime<Utc>,
    attempts: u32,
    events: usize,
    last_report: Instant,
}

pub(super) struct HeldWrites {
    held: Vec<(Instant, HeldWrite)>,
    failing: HashMap<String, Failing>,
    backoff: Backoff,
    /// Each held object is a health condition until it is written.
    health: ComponentHealth,
}

impl HeldWrites {
    pub fn new(backoff: Backoff, health: ComponentHealth) -> Self {
        Self {
            held: Vec::new(),
            failing: HashMap::new(),
            backoff,
            health,
        }
    }

    /// Whether a write of window `key`'s file is held.
    pub fn holds(&self, key: &FileKey) -> bool {
        !self.held.is_empty() && self.held.iter().any(|(_, r)| r.key() == Some(key))
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// The data the held writes carry.
    pub fn bytes(&self) -> usize {
        self.held.iter().map(|(_, r)| r.bytes()).sum()
    }

    /// Holds `request` for its next attempt; reports the first failure at
    /// once and then once a minute.
    pub fn hold(&mut self, request: HeldWrite, error: &StorageError, tags: &ComponentTags) {
        let object = request.object().to_string();
        let now = Instant::now();
        let failing = self.failing.entry(object.clone()).or_insert(Failing {
            since: Utc::now(),
            attempts: 0,
            events: request.events(),
            last_report: now - REPORT_EVERY,
        });
        failing.attempts += 1;
        let delay = self.backoff.delay(failing.attempts.saturating_sub(1));
        if now.duration_since(failing.last_report) >= REPORT_EVERY {
            failing.last_report = now;
            self.health.condition(
                &held_key(&object),
                &format!("a write to {object} is held back while storage fails: {error}"),
                false,
            );
            ComponentError {
                error_type: "write_held_back",
                stage: Stage::Sending,
                message: &format!(
                    "Writing {} events to {object} has failed since {} ({} rounds of retries): {error}. They are held back, unacknowledged (the source's checkpoint holds), and written again every {:.0}s at most until storage answers; later events of this window wait.{}",
                    failing.events,
                    failing.since.to_rfc3339(),
                    failing.attempts,
                    self.backoff.max.as_secs_f64(),
                    oplog_margin(failing.since.timestamp(), oplog_oldest()),
                ),
            }
            .emit(tags);
        }
        self.held.push((now + delay, request));
    }

    /// Held writes due again, at most `room` of them.
    pub fn due(&mut self, room: usize) -> Vec<HeldWrite> {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.held.len() && due.len() < room {
            if self.held[i].0 <= now {
                due.push(self.held.remove(i).1);
            } else {
                i += 1;
            }
        }
        due
    }

    /// A write of `object` succeeded: if it had been held, says so.
    pub fn succeeded(&mut self, object: &str) {
        if self.failing.is_empty() {
            return;
        }
        if let Some(failing) = self.failing.remove(object) {
            self.health.clear(&held_key(object));
            tracing::info!(
                object,
                held_since = %failing.since.to_rfc3339(),
                rounds = failing.attempts,
                "Storage answers again; the held-back write went through."
            );
        }
    }

    /// At stop: every held write, given up (its events are replayed after
    /// the restart).
    pub fn give_up(&mut self) -> Vec<HeldWrite> {
        for object in self.failing.keys() {
            self.health.clear(&held_key(object));
        }
        self.failing.clear();
        self.held.drain(..).map(|(_, r)| r).collect()
    }
}

fn held_key(object: &str) -> String {
    format!("held:{object}")
}
