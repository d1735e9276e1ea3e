//! Reading, interpolating, parsing and merging configuration files.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use toml::de::{DeTable, DeValue};

use indexmap::IndexMap;

use super::{
    graph, vars, Config, ConfigError, ConfigErrors, ConfigFile, GlobalOptions, Location,
    OptionError, SinkEntry, SinkOuter, SourceOuter,
};
use crate::sources::SourceConfig;

/// Loads and merges `paths`. With `interpolate_env` false (`--no-environment`
/// style checks of files alone), variables resolve against an empty
/// environment.
pub fn load_from_paths(paths: &[PathBuf], interpolate_env: bool) -> Result<Config, ConfigErrors> {
    let env: HashMap<String, String> = if interpolate_env {
        std::env::vars().collect()
    } else {
        HashMap::new()
    };
    let mut errors = Vec::new();
    let mut config = Config::default();
    let mut global_seen: HashMap<&'static str, PathBuf> = HashMap::new();
    let mut unset: Vec<(PathBuf, usize, String)> = Vec::new();

    if paths.is_empty() {
        errors.push(ConfigError::Global {
            message: "no configuration file given: pass --config FILE".into(),
        });
    }

    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(source) => {
                errors.push(ConfigError::Read {
                    path: path.clone(),
                    source,
                });
                continue;
            }
        };
        let text = match vars::interpolate(&text, &env) {
            Ok(t) => {
                unset.extend(
                    t.unset
                        .into_iter()
                        .map(|(line, name)| (path.clone(), line, name)),
                );
                t.text
            }
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| ConfigError::Interpolation {
                    path: path.clone(),
                    line: e.line,
                    message: e.message,
                }));
                continue;
            }
        };
        let file = match parse_file(path, &text) {
            Ok(f) => f,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        merge_file(
            &mut config,
            &mut global_seen,
            path,
            &text,
            file,
            &mut errors,
        );
    }

    if errors.is_empty() {
        graph::check(&config, &mut errors);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(
            errors
                .into_iter()
                .map(|e| name_unset_variables(e, &unset))
                .collect(),
        ))
    }
}

/// An error on a line where an unset variable was replaced by nothing says
/// so: the empty value is the likely cause, not what the error describes.
fn name_unset_variables(e: ConfigError, unset: &[(PathBuf, usize, String)]) -> ConfigError {
    let (path, line) = match &e {
        ConfigError::Parse { path, line, .. } => (path, *line),
        ConfigError::Invalid { location, .. } => (&location.path, location.line),
        _ => return e,
    };
    let names: Vec<String> = unset
        .iter()
        .filter(|(p, l, _)| p == path && *l == line)
        .map(|(_, _, name)| format!("`{name}`"))
        .collect();
    if names.is_empty() {
        return e;
    }
    let note = format!(
        " (the environment variable {} used on this line is not set, so it was replaced by an empty string)",
        names.join(", ")
    );
    match e {
        ConfigError::Parse {
            path,
            line,
            key,
            message,
        } => ConfigError::Parse {
            path,
            line,
            key,
            message: message + &note,
        },
        ConfigError::Invalid { location, message } => ConfigError::Invalid {
            location,
            message: message + &note,
        },
        e => e,
    }
}

fn parse_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| parse_error(path, text, "", &e))?;
    serde_path_to_error::deserialize::<_, ConfigFile>(deserializer).map_err(|e| {
        let key = e.path().to_string();
        parse_error(path, text, &key, e.inner())
    })
}

fn parse_error(path: &Path, text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    // An unknown key is best shown at the key itself; anything else at the
    // span toml reported, which points at the offending value.
    let message = &plain_message(e.message().trim_end(), text, e.span());
    let unknown_key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(|field| {
            // The path may end at the unknown field already.
            if key.is_empty() || key == "." || key.rsplit('.').next() == Some(field) {
                field.to_string()
            } else {
                format!("{key}.{field}")
            }
        });
    // Errors raised inside a component's own struct reach us without their
    // key path (typetag deserializes through erased_serde, which keeps only
    // the message), so find the value the message quotes within the
    // component's table.
    let unknown_key = unknown_key.or_else(|| quoted_value_key(text, key, message));
    let key = unknown_key.clone().unwrap_or_else(|| key.to_string());
    let line = unknown_key
        .and_then(|k| key_span(text, &k))
        .or_else(|| e.span())
        .or_else(|| key_span(text, &key))
        .map(|s| line_of(text, s.start))
        .unwrap_or(1);
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        key,
        message: message.to_string(),
    }
}

/// A parser's message in the words of the config: Rust's integer types
/// as "a whole number", and a duplicate key named (toml says only
/// "duplicate key"; its span points at the key).
fn plain_message(message: &str, text: &str, span: Option<std::ops::Range<usize>>) -> String {
    if message == "duplicate key" {
        if let Some(key) = span.and_then(|s| text.get(s)).map(str::trim) {
            return format!("duplicate key `{key}`: it is set twice; keep one");
        }
    }
    let mut out = message.to_string();
    for (types, words) in [
        (
            ["usize", "u64", "u32", "u16", "u8"],
            "a whole number (0 or more)",
        ),
        (["isize", "i64", "i32", "i16", "i8"], "a whole number"),
    ] {
        for ty in types {
            out = out.replace(&format!("expected {ty}"), &format!("expected {words}"));
        }
    }
    out.replace("expected f64", "expected a number")
}

/// For an error on a component (`sinks.lake`) whose message quotes the bad
/// value (``unknown variant `loose` ``, `invalid type: string "ten"`), the
/// dotted key of the one leaf in that component holding that value.
fn quoted_value_key(text: &str, component: &str, message: &str) -> Option<String> {
    if component.split('.').count() != 2 {
        return None;
    }
    let quoted = message
        .split_once('`')
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(v, _)| v)
        .or_else(|| {
            message
                .split_once('"')
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(v, _)| v)
        })?;
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    for part in component.split('.') {
        match table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == part)?
            .1
            .get_ref()
        {
            DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    let mut found = Vec::new();
    collect_leaves(table, component, quoted, &mut found);
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

fn collect_leaves(table: &DeTable<'_>, prefix: &str, wanted: &str, found: &mut Vec<String>) {
    for (k, v) in table.iter() {
        let key = format!("{prefix}.{}", k.get_ref());
        let matches = match v.get_ref() {
            DeValue::Table(t) => {
                collect_leaves(t, &key, wanted, found);
                false
            }
            DeValue::String(s) => s.as_ref() == wanted,
            DeValue::Integer(i) => i.as_str() == wanted,
            DeValue::Float(f) => f.as_str() == wanted,
            DeValue::Boolean(b) => b.to_string() == wanted,
            _ => false,
        };
        if matches {
            found.push(key);
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The span of a dotted key (`sinks.lake.batch`) in the file, or of its
/// deepest part that is present.
fn key_span(text: &str, dotted: &str) -> Option<std::ops::Range<usize>> {
    if dotted.is_empty() || dotted == "." {
        return None;
    }
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        // The deepest key present: an option left at its default is shown
        // at its table.
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part) else {
            break;
        };
        span = Some(k.span());
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ if i + 1 == parts.len() => break,
            _ => break,
        }
    }
    span
}

/// The file being merged, for locating its keys in errors.
struct FileText<'a> {
    path: &'a Path,
    text: &'a str,
}

impl FileText<'_> {
    /// The line of a dotted key (or of its deepest part present), else 1.
    fn line(&self, key: &str) -> usize {
        key_span(self.text, key)
            .map(|s| line_of(self.text, s.start))
            .unwrap_or(1)
    }

    fn location(&self, key: &str) -> Location {
        Location {
            path: self.path.to_path_buf(),
            line: self.line(key),
        }
    }
}

fn merge_file(
    config: &mut Config,
    global_seen: &mut HashMap<&'static str, PathBuf>,
    path: &Path,
    text: &str,
    mut file: ConfigFile,
    errors: &mut Vec<ConfigError>,
) {
    let at = FileText { path, text };
    merge_globals(&mut config.global, &mut file, global_seen, &at, errors);
    reject_transforms(&file, &at, errors);
    merge_sources(config, file.sources, &at, errors);
    merge_sinks(config, file.sinks, &at, errors);
}

/// The global options the file sets; each may be set in one file only.
fn merge_globals(
    global: &mut GlobalOptions,
    file: &mut ConfigFile,
    global_seen: &mut HashMap<&'static str, PathBuf>,
    at: &FileText<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let mut claim = |name: &'static str| -> bool {
        if let Some(first) = global_seen.get(name) {
            errors.push(ConfigError::Invalid {
                location: at.location(name),
                message: format!(
                    "`{name}` is already set in {}; set it in one file only",
                    first.display()
                ),
            });
            false
        } else {
            global_seen.insert(name, at.path.to_path_buf());
            true
        }
    };
    // Destructured so that a new global option cannot be forgotten here.
    let GlobalOptions {
        data_dir,
        acknowledgements,
        api,
        healthchecks,
        state,
        // A command-line flag, not a file option.
        accept_data_gap: _,
    } = global;
    if let Some(v) = file.data_dir.take() {
        if claim("data_dir") {
            *data_dir = Some(v);
        }
    }
    if let Some(v) = file.acknowledgements.take() {
        if claim("acknowledgements") {
            *acknowledgements = v;
        }
    }
    if let Some(v) = file.api.take() {
        if claim("api") {
            *api = v;
        }
    }
    if let Some(v) = file.healthchecks.take() {
        if claim("healthchecks") {
            *healthchecks = v;
        }
    }
    if let Some(v) = file.state.take() {
        if claim("state") {
            for (option, message) in v.check() {
                errors.push(ConfigError::Invalid {
                    location: at.location(&format!("state.{option}")),
                    message,
                });
            }
            *state = v;
        }
    }
}

/// `[transforms.*]` parses (so the error can name it) but none exist yet.
fn reject_transforms(file: &ConfigFile, at: &FileText<'_>, errors: &mut Vec<ConfigError>) {
    for id in file.transforms.keys() {
        errors.push(ConfigError::Invalid {
            location: at.location(&format!("transforms.{id}")),
            message: format!(
                "transform `{id}`: no transform types are built in yet; filter or redact with the source's `pipeline` option"
            ),
        });
    }
}

fn merge_sources(
    config: &mut Config,
    sources: IndexMap<String, Box<dyn SourceConfig>>,
    at: &FileText<'_>,
    errors: &mut Vec<ConfigError>,
) {
    for (id, inner) in sources {
        let component = format!("sources.{id}");
        let Some(location) = claim_id(config, &id, at.location(&component), errors) else {
            continue;
        };
        option_errors(&component, inner.validate(), at, errors);
        config.sources.insert(id, SourceOuter { inner, location });
    }
}

fn merge_sinks(
    config: &mut Config,
    sinks: IndexMap<String, SinkOuter>,
    at: &FileText<'_>,
    errors: &mut Vec<ConfigError>,
) {
    for (id, outer) in sinks {
        let component = format!("sinks.{id}");
        let Some(location) = claim_id(config, &id, at.location(&component), errors) else {
            continue;
        };
        let inputs_location = at.location(&format!("{component}.inputs"));
        option_errors(&component, outer.inner.validate(), at, errors);
        config.sinks.insert(
            id,
            SinkEntry {
                outer,
                location,
                inputs_location,
            },
        );
    }
}

/// `location` back if `id` is free; else an error and `None`.
fn claim_id(
    config: &Config,
    id: &str,
    location: Location,
    errors: &mut Vec<ConfigError>,
) -> Option<Location> {
    match duplicate(config, id) {
        Some(dup) => {
            errors.push(ConfigError::Invalid {
                location,
                message: format!("duplicate component id `{id}`: already declared at {dup}"),
            });
            None
        }
        None => Some(location),
    }
}

/// A component's own checks, each error at its option's line (or the
/// component's, for an option left at its default).
fn option_errors(
    component: &str,
    result: Result<(), Vec<OptionError>>,
    at: &FileText<'_>,
    errors: &mut Vec<ConfigError>,
) {
    for e in result.err().unwrap_or_default() {
        let key = format!("{component}.{}", e.key);
        errors.push(ConfigError::Parse {
            path: at.path.to_path_buf(),
            line: at.line(&key),
            key,
            message: e.message,
        });
    }
}

fn duplicate(config: &Config, id: &str) -> Option<Location> {
    config
        .sources
        .get(id)
        .map(|s| s.location.clone())
        .or_else(|| config.sinks.get(id).map(|s| s.location.clone()))
}
