//! Checks of the component graph: every input exists and is a source, every
//! sink has an input, component ids are usable as directory names, and
//! components that keep state have a `data_dir`.
//!
//! Cycles cannot occur while only sources can be inputs; the check belongs
//! here when transforms arrive.

use super::{loading::ConfigError, Config};

pub(crate) fn check(config: &Config, errors: &mut Vec<ConfigError>) {
    if config.sources.is_empty() {
        errors.push(ConfigError::Global {
            message: "no sources are configured: add a [sources.<id>] table".into(),
        });
    }
    if config.sinks.is_empty() {
        errors.push(ConfigError::Global {
            message: "no sinks are configured: add a [sinks.<id>] table".into(),
        });
    }

    for (id, location) in config
        .sources
        .iter()
        .map(|(id, s)| (id, &s.location))
        .chain(config.sinks.iter().map(|(id, s)| (id, &s.location)))
    {
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            errors.push(ConfigError::Invalid {
                location: location.clone(),
                message: format!(
                    "component id `{id}` may only hold letters, digits, `_`, `-` and `.` (it names a state directory)"
                ),
            });
        }
    }

    for (id, sink) in &config.sinks {
        if sink.outer.inputs.is_empty() {
            errors.push(ConfigError::Invalid {
                location: sink.inputs_location.clone(),
                message: format!("sink `{id}`: `inputs` is empty; name at least one source"),
            });
        }
        for input in &sink.outer.inputs {
            if config.sources.contains_key(input) {
                continue;
            }
            let message = if config.sinks.contains_key(input) {
                format!("sink `{id}`: input `{input}` is a sink; inputs must be sources")
            } else {
                let known: Vec<&str> = config.sources.keys().map(String::as_str).collect();
                format!(
                    "sink `{id}`: input `{input}` does not exist (sources: {})",
                    known.join(", ")
                )
            };
            errors.push(ConfigError::Invalid {
                location: sink.inputs_location.clone(),
                message,
            });
        }
        if sink.outer.buffer.max_events == 0 {
            errors.push(ConfigError::Invalid {
                location: sink.location.clone(),
                message: format!("sink `{id}`: `buffer.max_events` must be at least 1"),
            });
        }
    }

    let needs_dir = config
        .sources
        .iter()
        .filter(|(_, s)| s.inner.needs_data_dir())
        .map(|(id, s)| (id, &s.location))
        .chain(
            config
                .sinks
                .iter()
                .filter(|(_, s)| s.outer.inner.needs_data_dir())
                .map(|(id, s)| (id, &s.location)),
        );
    if config.global.data_dir.is_none() {
        for (id, location) in needs_dir {
            errors.push(ConfigError::Invalid {
                location: location.clone(),
                message: format!(
                    "component `{id}` keeps state on disk: set the global `data_dir` (e.g. data_dir = \"/var/lib/mongo-adls\")"
                ),
            });
        }
    }

    for (id, source) in &config.sources {
        if config.sinks_of(id).next().is_none() {
            tracing::warn!(
                "{}: source `{id}` is not an input of any sink; it will not be started",
                source.location
            );
        }
    }
}
