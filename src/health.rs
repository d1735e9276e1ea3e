//! What `/health` reports: each component's last known state, fed by its
//! internal events (as Vector feeds metrics from them). Errors mark a
//! component failing and progress marks it ok again; a failed healthcheck
//! and a stuck condition (a window held back after a failed write, which
//! only a restart clears today) stay until cleared. `/health` answers 503
//! once a component has been failing for `api.unhealthy_after_secs`, or at
//! at once for a stuck condition (a failed healthcheck is one).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

#[derive(Clone, Debug)]
enum State {
    Ok,
    /// Errors since `since`; progress clears it.
    Failing {
        reason: String,
        since: Instant,
    },
    /// Cleared only by `clear_stuck` (or a restart).
    Stuck {
        reason: String,
        since: Instant,
    },
}

#[derive(Debug)]
struct Cell {
    state: Mutex<(State, Option<Instant>)>,
    /// Set while not `Ok`, so progress on the hot path costs one atomic
    /// load unless there is something to clear.
    troubled: AtomicBool,
}

static COMPONENTS: LazyLock<Mutex<BTreeMap<String, Arc<Cell>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// One component's entry; cheap to clone into hot paths.
#[derive(Clone, Debug)]
pub struct ComponentHealth(Arc<Cell>);

/// The entry of component `id`, created on first use (so `/health` lists
/// every component from its start).
pub fn component(id: &str) -> ComponentHealth {
    let mut components = COMPONENTS.lock().unwrap_or_else(|e| e.into_inner());
    let cell = components.entry(id.to_string()).or_insert_with(|| {
        Arc::new(Cell {
            state: Mutex::new((State::Ok, None)),
            troubled: AtomicBool::new(false),
        })
    });
    ComponentHealth(Arc::clone(cell))
}

impl ComponentHealth {
    fn update(&self, f: impl FnOnce(&mut State, &mut Option<Instant>)) {
        let mut guard = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, last_progress) = &mut *guard;
        f(state, last_progress);
        self.0
            .troubled
            .store(!matches!(state, State::Ok), Ordering::Relaxed);
    }

    /// Progress (events read or made durable, an idle stream answered): a
    /// failure is over, a stuck condition is not. Progress is timestamped
    /// only when there is trouble to weigh it against, to stay off the
    /// lock on the hot path.
    pub fn progressed(&self) {
        if self.0.troubled.load(Ordering::Relaxed) {
            self.update(|state, last| {
                *last = Some(Instant::now());
                if matches!(state, State::Failing { .. }) {
                    *state = State::Ok;
                }
            });
        }
    }

    /// An error that may pass (a retry, a reconnect).
    pub fn failing(&self, reason: &str) {
        self.update(|state, _| match state {
            State::Ok => {
                *state = State::Failing {
                    reason: reason.to_string(),
                    since: Instant::now(),
                }
            }
            State::Failing { reason: r, .. } => *r = reason.to_string(),
            State::Stuck { .. } => {}
        });
    }

    /// A condition that progress elsewhere does not end.
    pub fn stuck(&self, reason: &str) {
        self.update(|state, _| {
            let since = match state {
                State::Stuck { since, .. } => *since,
                _ => Instant::now(),
            };
            *state = State::Stuck {
                reason: reason.to_string(),
                since,
            };
        });
    }

    /// The stuck condition is over.
    pub fn clear_stuck(&self) {
        self.update(|state, _| {
            if matches!(state, State::Stuck { .. }) {
                *state = State::Ok;
            }
        });
    }
}

/// Whether every component is healthy, and the JSON body that says so.
pub fn report(unhealthy_after: Duration) -> (bool, Value) {
    let components = COMPONENTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut healthy = true;
    let mut body = serde_json::Map::new();
    for (id, cell) in components.iter() {
        let (state, last_progress) = cell.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let last_progress = last_progress.map(|t| t.elapsed().as_secs());
        let entry = match &state {
            State::Ok => json!({ "status": "ok" }),
            State::Failing { reason, since } => {
                let unhealthy = since.elapsed() >= unhealthy_after;
                healthy &= !unhealthy;
                json!({
                    "status": if unhealthy { "unhealthy" } else { "degraded" },
                    "reason": reason,
                    "failing_for_secs": since.elapsed().as_secs(),
                    "last_progress_secs_ago": last_progress,
                })
            }
            State::Stuck { reason, since } => {
                healthy = false;
                json!({
                    "status": "unhealthy",
                    "reason": reason,
                    "failing_for_secs": since.elapsed().as_secs(),
                    "last_progress_secs_ago": last_progress,
                })
            }
        };
        body.insert(id.clone(), entry);
    }
    let status = if healthy { "ok" } else { "unhealthy" };
    (healthy, json!({ "status": status, "components": body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, after: Duration) -> (bool, String) {
        let (healthy, body) = report(after);
        (
            healthy,
            body["components"][id]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    #[test]
    fn failures_pass_with_progress_and_stuck_conditions_do_not() {
        let id = "health-test-component";
        let c = component(id);
        assert_eq!(status(id, Duration::ZERO).1, "ok");
        c.failing("retrying");
        assert_eq!(status(id, Duration::from_secs(60)).1, "degraded");
        assert_eq!(status(id, Duration::ZERO).1, "unhealthy");
        c.progressed();
        assert_eq!(status(id, Duration::ZERO).1, "ok");
        c.stuck("held back");
        c.progressed();
        assert_eq!(status(id, Duration::from_secs(60)).1, "unhealthy");
        c.clear_stuck();
        assert_eq!(status(id, Duration::ZERO).1, "ok");
    }
}
