//! The configuration's JSON Schema and its Markdown reference, both made
//! from the option structs and their doc comments (the one source of
//! truth): `mongo-adls generate-schema` prints either. Editors that read
//! JSON Schema (taplo, Even Better TOML) then complete and check configs.
//!
//! The component tables are tagged unions on `type` registered through
//! `typetag`, which has no schema support, so the top level is assembled
//! here from the component list below.

use schemars::{generate::SchemaSettings, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::{
    AcknowledgementsConfig, ApiConfig, BufferConfig, HealthchecksConfig, SinkHealthcheckOptions,
    StateConfig,
};
use crate::{
    sinks::{
        adls_delta::AdlsDeltaConfig, adls_partitioned_jsonl::AdlsPartitionedJsonlConfig,
        blackhole::BlackholeSinkConfig, console::ConsoleSinkConfig,
    },
    sources::{demo_events::DemoEventsConfig, mongodb_change_stream::MongoDbChangeStreamConfig},
};

/// Source types: name and options schema.
pub fn source_types(generator: &mut SchemaGenerator) -> Vec<(&'static str, Schema)> {
    vec![
        ("demo_events", generator.subschema_for::<DemoEventsConfig>()),
        (
            "mongodb_change_stream",
            generator.subschema_for::<MongoDbChangeStreamConfig>(),
        ),
    ]
}

/// Sink types: name and options schema.
pub fn sink_types(generator: &mut SchemaGenerator) -> Vec<(&'static str, Schema)> {
    vec![
        ("adls_delta", generator.subschema_for::<AdlsDeltaConfig>()),
        (
            "adls_partitioned_jsonl",
            generator.subschema_for::<AdlsPartitionedJsonlConfig>(),
        ),
        (
            "blackhole",
            generator.subschema_for::<BlackholeSinkConfig>(),
        ),
        ("console", generator.subschema_for::<ConsoleSinkConfig>()),
    ]
}

/// Names of the built-in component types, for `mongo-adls list`.
pub fn component_names() -> (Vec<&'static str>, Vec<&'static str>) {
    let mut generator = generator();
    let names = |types: Vec<(&'static str, Schema)>| types.into_iter().map(|(n, _)| n).collect();
    (
        names(source_types(&mut generator)),
        names(sink_types(&mut generator)),
    )
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/$defs".into())
        .into_generator()
}

/// The JSON Schema of a whole configuration file.
pub fn schema() -> Value {
    let mut generator = generator();
    let sources = source_types(&mut generator);
    let sinks = sink_types(&mut generator);
    let globals = json!({
        "data_dir": {
            "type": "string",
            "description": "Directory for component state (checkpoints, sink state), one subdirectory per component id. Needed by components that keep state, unless `[state] store = \"azure_blob\"` keeps it in a storage account (then `data_dir`, if set, is only read once, to import its state into an empty remote state)."
        },
        "acknowledgements": generator.subschema_for::<AcknowledgementsConfig>(),
        "api": generator.subschema_for::<ApiConfig>(),
        "healthchecks": generator.subschema_for::<HealthchecksConfig>(),
        "state": generator.subschema_for::<StateConfig>(),
    });
    let sink_outer = json!({
        "inputs": {
            "type": "array",
            "items": { "type": "string" },
            "minItems": 1,
            "description": "Ids of the sources this sink reads from."
        },
        "buffer": generator.subschema_for::<BufferConfig>(),
        "healthcheck": generator.subschema_for::<SinkHealthcheckOptions>(),
    });
    let definitions = generator.take_definitions(true);
    let source_union = tagged_union(&sources, &definitions, &Map::new(), &[]);
    let common = sink_outer.as_object().cloned().unwrap_or_default();
    let sink_union = tagged_union(&sinks, &definitions, &common, &["inputs"]);
    let mut properties = globals.as_object().cloned().unwrap_or_default();
    properties.insert(
        "sources".into(),
        json!({
            "type": "object",
            "description": "Sources, one table per component id: `[sources.<id>]`.",
            "additionalProperties": source_union,
        }),
    );
    properties.insert(
        "sinks".into(),
        json!({
            "type": "object",
            "description": "Sinks, one table per component id: `[sinks.<id>]`.",
            "additionalProperties": sink_union,
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mongo-adls configuration",
        "description": "A mongo-adls configuration file (TOML, Vector's layout). `${VAR}` references are interpolated before the file is checked, so they may stand for strings only.",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "$defs": definitions,
    })
}

/// `oneOf` the component types: each variant holds `type`, the options
/// every component of its kind has (`common`), and its own options, inlined
/// from `$defs` so one `additionalProperties: false` refuses any other key
/// (a `$ref` beside extra properties cannot, short of
/// `unevaluatedProperties`, which not every editor reads).
fn tagged_union(
    types: &[(&'static str, Schema)],
    definitions: &Map<String, Value>,
    common: &Map<String, Value>,
    required: &[&str],
) -> Value {
    let variants: Vec<Value> = types
        .iter()
        .map(|(name, options)| {
            let options = resolve(options.as_value(), definitions);
            let mut properties = common.clone();
            properties.insert(
                "type".into(),
                json!({ "const": name, "description": "The component type." }),
            );
            if let Some(own) = options["properties"].as_object() {
                properties.extend(own.clone());
            }
            let mut all_required: Vec<Value> = vec![json!("type")];
            all_required.extend(required.iter().map(|r| json!(r)));
            if let Some(own) = options["required"].as_array() {
                all_required.extend(own.iter().cloned());
            }
            let mut variant = json!({
                "title": name,
                "type": "object",
                "properties": properties,
                "required": all_required,
                "additionalProperties": false,
            });
            if let Some(description) = options.get("description") {
                variant["description"] = description.clone();
            }
            variant
        })
        .collect();
    json!({ "oneOf": variants })
}

/// A `$ref` into `$defs`, followed.
fn resolve(schema: &Value, definitions: &Map<String, Value>) -> Value {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| definitions.get(name))
        .unwrap_or(schema)
        .clone()
}

/// The option reference in Markdown, from the same schema: every option
/// with its type, default, allowed values and doc comment.
pub fn reference() -> String {
    let schema = schema();
    let definitions = schema["$defs"].as_object().cloned().unwrap_or_default();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated by `mongo-adls generate-schema --format markdown` from the option structs' \
         doc comments; `tests/schema.rs` fails when this file and the code disagree. \
         The JSON Schema (`mongo-adls generate-schema`) holds the same.\n\n\
         Values may use `${VAR}`, `${VAR:-default}` and `${VAR:?message}` (environment \
         interpolation, before parsing).\n\n## Global options\n\n",
    );
    for (key, option) in schema["properties"].as_object().into_iter().flatten() {
        if key != "sources" && key != "sinks" {
            option_lines(&mut out, (key, false), option, &definitions);
        }
    }
    for (kind, title) in [("sources", "Sources"), ("sinks", "Sinks")] {
        out.push_str(&format!("\n## {title}\n"));
        let variants = schema["properties"][kind]["additionalProperties"]["oneOf"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for variant in variants {
            let name = variant["title"].as_str().unwrap_or_default();
            out.push_str(&format!(
                "\n### `{name}`\n\n`[{kind}.<id>]` with `type = \"{name}\"`."
            ));
            if let Some(d) = variant["description"].as_str() {
                out.push_str(&format!(" {}", one_line(d)));
            }
            out.push_str("\n\n");
            let required: Vec<&str> = variant["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for (key, option) in variant["properties"].as_object().into_iter().flatten() {
                if key != "type" {
                    let required = required.contains(&key.as_str());
                    option_lines(&mut out, (key, required), option, &definitions);
                }
            }
        }
    }
    out
}

/// One option, or one line per leaf of an options table (`batch.*`).
fn option_lines(
    out: &mut String,
    (key, required): (&str, bool),
    option: &Value,
    definitions: &Map<String, Value>,
) {
    let resolved = resolve(non_null(option), definitions);
    let description = option["description"]
        .as_str()
        .or_else(|| resolved["description"].as_str())
        .unwrap_or_default();
    if let (Some(fields), false) = (resolved["properties"].as_object(), is_map(&resolved)) {
        out.push_str(&format!("- **`{key}.*`**: {}\n", one_line(description)));
        for (field, sub) in fields {
            let required = resolved["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f == field));
            option_lines(out, (&format!("{key}.{field}"), required), sub, definitions);
        }
        return;
    }
    let mut facts = vec![type_name(&resolved, definitions)];
    if required {
        facts.push("required".into());
    }
    if let Some(default) = option
        .get("default")
        .filter(|d| !d.is_null() && !is_table(d))
    {
        facts.push(format!("default `{}`", toml_value(default)));
    }
    out.push_str(&format!(
        "- **`{key}`** ({}): {}\n",
        facts.join(", "),
        one_line(description)
    ));
    for (value, doc) in allowed_values(&resolved) {
        match doc {
            Some(doc) => out.push_str(&format!("  - `{value}`: {}\n", one_line(&doc))),
            None => out.push_str(&format!("  - `{value}`\n")),
        }
    }
}

/// The non-null branch of an `Option<T>` schema.
fn non_null(option: &Value) -> &Value {
    option["anyOf"]
        .as_array()
        .and_then(|branches| branches.iter().find(|b| b["type"] != "null"))
        .unwrap_or(option)
}

fn is_map(schema: &Value) -> bool {
    schema
        .get("additionalProperties")
        .is_some_and(|a| a.is_object())
}

fn is_table(value: &Value) -> bool {
    value.is_object()
}

fn type_name(schema: &Value, definitions: &Map<String, Value>) -> String {
    if !allowed_values(schema).is_empty() {
        return "one of".into();
    }
    match &schema["type"] {
        Value::String(t) => match t.as_str() {
            "array" => format!(
                "array of {}",
                type_name(&resolve(&schema["items"], definitions), definitions)
            ),
            "object" => "table".into(),
            other => other.into(),
        },
        Value::Array(types) => {
            let mut plain = schema.clone();
            plain["type"] = types
                .iter()
                .find(|t| t.as_str() != Some("null"))
                .cloned()
                .unwrap_or(Value::Null);
            type_name(&plain, definitions)
        }
        _ if schema.get("anyOf").is_some() => schema["anyOf"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| type_name(&resolve(b, definitions), definitions))
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

/// An enum's values with their doc comments.
fn allowed_values(schema: &Value) -> Vec<(String, Option<String>)> {
    if let Some(values) = schema["enum"].as_array() {
        return values.iter().map(|v| (toml_value(v), None)).collect();
    }
    schema["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let value = v.get("const").or_else(|| v["enum"].get(0))?;
            Some((
                toml_value(value),
                v["description"].as_str().map(str::to_string),
            ))
        })
        .collect()
}

fn toml_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
