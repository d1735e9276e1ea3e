//! Checks of the component graph: every input exists and is a source, every
//! sink has an input, component ids are usable as directory names, and
//! components that keep state have a `data_dir`.
//!
//! Cycles cannot occur while only sources can be inputs; the check belongs
//! here when transforms arrive.

use super::{Config, ConfigError, Location, SinkEntry};
use crate::sinks::FileTarget;

/// Runs every check; errors are reported in this order.
pub(crate) fn check(config: &Config, errors: &mut Vec<ConfigError>) {
    check_not_empty(config, errors);
    check_ids(config, errors);
    for (id, sink) in &config.sinks {
        check_sink(config, id, sink, errors);
    }
    check_data_dir(config, errors);
    check_one_writer_per_file(config, errors);
    warn_unused_sources(config);
}

/// Two sinks writing the same files would overwrite each other's files
/// and staged blocks: refused when they write to one location under
/// overlapping literal path prefixes.
fn check_one_writer_per_file(config: &Config, errors: &mut Vec<ConfigError>) {
    let targets: Vec<(&String, &SinkEntry, FileTarget)> = config
        .sinks
        .iter()
        .filter_map(|(id, s)| s.outer.inner.files_written().map(|t| (id, s, t)))
        .collect();
    for (i, (a, _, ta)) in targets.iter().enumerate() {
        for (b, sink_b, tb) in &targets[i + 1..] {
            if ta.overlaps(tb) {
                errors.push(ConfigError::Invalid {
                    location: sink_b.location.clone(),
                    message: format!(
                        "sinks `{a}` and `{b}` both write to {} and their files' names can clash ({} and {}): two writers on one set of files corrupt each other; give each its own filesystem or a `path_prefix` whose fixed start differs",
                        ta.location,
                        fixed_start(a, &ta.prefix),
                        fixed_start(b, &tb.prefix)
                    ),
                });
            }
        }
    }
}

/// A sink's fixed name start in words: `""` (the template starts with a
/// field, so names can start with anything) would say nothing.
fn fixed_start(sink: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("`{sink}`'s `path_prefix` starts with a template field, so its names may start with anything")
    } else {
        format!("every name of `{sink}` starts with {prefix:?}")
    }
}

/// Every component, sources first: its id, where it was declared, and
/// whether it keeps state on disk.
fn components(config: &Config) -> impl Iterator<Item = (&String, &Location, bool)> {
    let sources = config
        .sources
        .iter()
        .map(|(id, s)| (id, &s.location, s.inner.needs_data_dir()));
    let sinks = config
        .sinks
        .iter()
        .map(|(id, s)| (id, &s.location, s.outer.inner.needs_data_dir()));
    sources.chain(sinks)
}

fn check_not_empty(config: &Config, errors: &mut Vec<ConfigError>) {
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
}

/// Ids name state directories, so they must be safe file names.
fn check_ids(config: &Config, errors: &mut Vec<ConfigError>) {
    for (id, location, _) in components(config) {
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
}

/// A sink's `inputs` (present, and each an existing source) and buffer.
fn check_sink(config: &Config, id: &str, sink: &SinkEntry, errors: &mut Vec<ConfigError>) {
    if sink.outer.inputs.is_empty() {
        errors.push(ConfigError::Invalid {
            location: sink.inputs_location.clone(),
            message: format!("sink `{id}`: `inputs` is empty; name at least one source"),
        });
    }
    for input in &sink.outer.inputs {
        if let Some(message) = input_error(config, id, input) {
            errors.push(ConfigError::Invalid {
                location: sink.inputs_location.clone(),
                message,
            });
        }
    }
    if sink.outer.buffer.max_events == 0 {
        errors.push(ConfigError::Invalid {
            location: sink.location.clone(),
            message: format!("sink `{id}`: `buffer.max_events` must be at least 1"),
        });
    }
}

/// What is wrong with input `input` of sink `id`, if anything.
fn input_error(config: &Config, id: &str, input: &str) -> Option<String> {
    if config.sources.contains_key(input) {
        return None;
    }
    Some(if config.sinks.contains_key(input) {
        format!("sink `{id}`: input `{input}` is a sink; inputs must be sources")
    } else {
        let known: Vec<&str> = config.sources.keys().map(String::as_str).collect();
        format!(
            "sink `{id}`: input `{input}` does not exist (sources: {})",
            known.join(", ")
        )
    })
}

fn check_data_dir(config: &Config, errors: &mut Vec<ConfigError>) {
    if config.global.data_dir.is_some() || config.global.state.is_remote() {
        return;
    }
    for (id, location, _) in components(config).filter(|(_, _, needs_dir)| *needs_dir) {
        errors.push(ConfigError::Invalid {
            location: location.clone(),
            message: format!(
                "component `{id}` keeps state: set the global `data_dir` (e.g. data_dir = \"/var/lib/mongo-adls\"), or keep state in a storage account with `[state] store = \"azure_blob\"`"
            ),
        });
    }
}

/// Not an error: the source is simply not started.
fn warn_unused_sources(config: &Config) {
    for (id, source) in &config.sources {
        if config.sinks_of(id).next().is_none() {
            tracing::warn!(
                "{}: source `{id}` is not an input of any sink; it will not be started",
                source.location
            );
        }
    }
}
