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

/// A problem that progress does not end: a failed write whose window is
/// held back, a write held while storage is down. Cleared by its key.
#[derive(Clone, Debug)]
struct Condition {
    reason: String,
    since: Instant,
    /// Unhealthy at once, not after `unhealthy_after`.
    immediate: bool,
}

#[derive(Clone, Debug, Default)]
struct State {
    /// Errors since; progress clears it.
    failing: Option<Condition>,
    conditions: BTreeMap<String, Condition>,
    /// What the component reports besides its status, by group and key
    /// (the Delta sink: `tables` -> table -> its version).
    details: BTreeMap<String, BTreeMap<String, Value>>,
}

impl State {
    fn is_ok(&self) -> bool {
        self.failing.is_none() && self.conditions.is_empty()
    }
}

#[derive(Debug)]
struct Cell {
    state: Mutex<State>,
    /// Set while there is a failure for progress to clear, so progress on
    /// the hot path costs one atomic load otherwise.
    failing: AtomicBool,
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
    if let Some(cell) = components.get(id) {
        return ComponentHealth(Arc::clone(cell));
    }
    let cell = components.entry(id.to_string()).or_insert_with(|| {
        Arc::new(Cell {
            state: Mutex::new(State::default()),
            failing: AtomicBool::new(false),
        })
    });
    ComponentHealth(Arc::clone(cell))
}

impl ComponentHealth {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
        self.0
            .failing
            .store(state.failing.is_some(), Ordering::Relaxed);
    }

    /// Progress (events read or made durable, an idle stream answered): a
    /// failure is over; conditions are not.
    pub fn progressed(&self) {
        if self.0.failing.load(Ordering::Relaxed) {
            self.update(|state| state.failing = None);
        }
    }

    /// An error that may pass (a retry, a reconnect): unhealthy once it
    /// lasts `unhealthy_after`, unless progress comes first.
    pub fn failing(&self, reason: &str) {
        self.fail(reason, false);
    }

    /// An error that makes the component unhealthy until progress (a
    /// failed healthcheck of a component that may still heal).
    pub fn failing_now(&self, reason: &str) {
        self.fail(reason, true);
    }

    fn fail(&self, reason: &str, immediate: bool) {
        self.update(|state| {
            let since = state
                .failing
                .as_ref()
                .map_or_else(Instant::now, |f| f.since);
            let immediate = immediate || state.failing.as_ref().is_some_and(|f| f.immediate);
            state.failing = Some(Condition {
                reason: reason.to_string(),
                since,
                immediate,
            });
        });
    }

    /// A condition under `key` that only `clear(key)` (or a restart) ends;
    /// `immediate`: unhealthy at once rather than after `unhealthy_after`.
    pub fn condition(&self, key: &str, reason: &str, immediate: bool) {
        self.update(|state| {
            let since = state
                .conditions
                .get(key)
                .map_or_else(Instant::now, |c| c.since);
            state.conditions.insert(
                key.to_string(),
                Condition {
                    reason: reason.to_string(),
                    since,
                    immediate,
                },
            );
        });
    }

    pub fn clear(&self, key: &str) {
        self.update(|state| {
            state.conditions.remove(key);
        });
    }

    /// Sets what `/health` shows under `group`.`key` for this component.
    pub fn detail(&self, group: &str, key: &str, value: Value) {
        self.update(|state| {
            state
                .details
                .entry(group.to_string())
                .or_default()
                .insert(key.to_string(), value);
        });
    }
}

/// This agent's role in its group (`[state] store = "azure_blob"`):
/// `active` or `standby`; unset for an agent on its own.
static ROLE: Mutex<Option<&'static str>> = Mutex::new(None);

/// Sets the role `/health` reports. A standby is healthy: it is ready to
/// take over, which is its job.
pub fn set_role(role: &'static str) {
    *ROLE.lock().unwrap_or_else(|e| e.into_inner()) = Some(role);
}

/// Forgets every component's state: after a term ends, the components of
/// the next term start with a clean record.
pub fn forget_components() {
    COMPONENTS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Whether every component is healthy, and the JSON body that says so.
pub fn report(unhealthy_after: Duration) -> (bool, Value) {
    let role = *ROLE.lock().unwrap_or_else(|e| e.into_inner());
    let components = COMPONENTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut healthy = true;
    let mut body = serde_json::Map::new();
    for (id, cell) in components.iter() {
        let state = cell.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let with_details = |mut entry: Value| {
            for (group, values) in &state.details {
                entry[group] = json!(values);
            }
            entry
        };
        if state.is_ok() {
            body.insert(id.clone(), with_details(json!({ "status": "ok" })));
            continue;
        }
        // The oldest problem speaks for the component.
        let worst = state
            .failing
            .iter()
            .chain(state.conditions.values())
            .min_by_key(|c| c.since)
            .cloned()
            .unwrap_or_else(|| Condition {
                reason: String::new(),
                since: Instant::now(),
                immediate: false,
            });
        let unhealthy = state
            .failing
            .iter()
            .chain(state.conditions.values())
            .any(|c| c.immediate || c.since.elapsed() >= unhealthy_after);
        healthy &= !unhealthy;
        body.insert(
            id.clone(),
            with_details(json!({
                "status": if unhealthy { "unhealthy" } else { "degraded" },
                "reason": worst.reason,
                "failing_for_secs": worst.since.elapsed().as_secs(),
                "problems": state.conditions.len() + usize::from(state.failing.is_some()),
            })),
        );
    }
    let status = if healthy { "ok" } else { "unhealthy" };
    let mut report = json!({ "status": status, "components": body });
    if let Some(role) = role {
        report["role"] = json!(role);
    }
    (healthy, report)
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
    fn failures_pass_with_progress_and_conditions_only_when_cleared() {
        let id = "health-test-component";
        let c = component(id);
        assert_eq!(status(id, Duration::ZERO).1, "ok");
        c.failing("retrying");
        assert_eq!(status(id, Duration::from_secs(60)).1, "degraded");
        assert_eq!(status(id, Duration::ZERO).1, "unhealthy");
        c.progressed();
        assert_eq!(status(id, Duration::ZERO).1, "ok");
        c.condition("w", "held back", true);
        c.progressed();
        assert_eq!(status(id, Duration::from_secs(60)).1, "unhealthy");
        c.condition("x", "retrying", false);
        c.clear("w");
        assert_eq!(status(id, Duration::from_secs(60)).1, "degraded");
        c.clear("x");
        assert_eq!(status(id, Duration::ZERO).1, "ok");
        c.failing_now("healthcheck failed");
        assert_eq!(status(id, Duration::from_secs(60)).1, "unhealthy");
        c.progressed();
        assert_eq!(status(id, Duration::from_secs(60)).1, "ok");
    }
}
