//! The config reference and JSON Schema come from the code: the committed
//! reference matches what the code generates, every option is documented,
//! and an independent validator (Python `jsonschema`) accepts every example
//! config and refuses a misspelt option.

mod support;

use std::{path::Path, process::Command};

use serde_json::Value;

fn generate(format: &str) -> String {
    let out = support::mongo_adls()
        .args(["generate-schema", "--format", format])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");

/// `UPDATE_DOCS=1` rewrites the file and still fails, so a run that
/// updates can never pass by comparing the file with itself.
#[test]
fn the_reference_is_generated_from_the_code() {
    let generated = generate("markdown");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(REFERENCE, &generated).unwrap();
        panic!(
            "docs/configuration.md rewritten; review and commit it, then run without UPDATE_DOCS"
        );
    }
    let committed = std::fs::read_to_string(REFERENCE).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/configuration.md differs from the code's doc comments; regenerate it with `UPDATE_DOCS=1 cargo test --test schema`"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains("docs/configuration.md"),
        "the README points to the generated reference"
    );
}

/// Every option and every allowed value has a doc comment.
#[test]
fn every_option_is_documented() {
    let schema: Value = serde_json::from_str(&generate("json")).unwrap();
    let mut undocumented = Vec::new();
    walk(&schema, &schema, "", &mut undocumented);
    assert!(undocumented.is_empty(), "undocumented: {undocumented:#?}");
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .map(|name| &root["$defs"][name])
        .unwrap_or(schema)
}

fn walk(root: &Value, schema: &Value, path: &str, undocumented: &mut Vec<String>) {
    let schema = resolve(root, schema);
    if let Some(properties) = schema["properties"].as_object() {
        for (key, option) in properties {
            let key = format!("{path}.{key}");
            let target = resolve(root, option);
            let doc = option["description"]
                .as_str()
                .or_else(|| target["description"].as_str())
                .unwrap_or_default();
            if doc.trim().is_empty() {
                undocumented.push(key.clone());
            }
            walk(root, option, &key, undocumented);
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for (i, branch) in schema[key].as_array().into_iter().flatten().enumerate() {
            let value = branch.get("const").or_else(|| branch["enum"].get(0));
            if let Some(value) = value {
                if branch["description"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
                {
                    undocumented.push(format!("{path} = {value}"));
                }
            }
            walk(root, branch, &format!("{path}[{i}]"), undocumented);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(root, items, &format!("{path}[]"), undocumented);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk(root, values, &format!("{path}.<id>"), undocumented);
    }
}

/// Runs `e2e/validate_schema.py` on `configs`: (success, output).
fn python_validate(configs: &[&Path]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, generate("json")).unwrap();
    let pylib = std::env::var("MONGO_ADLS_PYTHONPATH").unwrap_or_else(|_| {
        let services = std::env::var("MONGO_ADLS_SERVICES_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.services").into());
        format!("{services}/pylib")
    });
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/e2e/validate_schema.py"
        ))
        .arg(&schema)
        .args(configs)
        .env("PYTHONPATH", pylib)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_example_config_matches_the_schema() {
    let examples: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config-examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
    assert!(examples.len() >= 4);
    let paths: Vec<&Path> = examples.iter().map(|p| p.as_path()).collect();
    let (ok, output) = python_validate(&paths);
    assert!(ok, "{output}");
    assert_eq!(
        output.matches(": valid").count(),
        examples.len(),
        "{output}"
    );
}

#[test]
fn the_schema_refuses_misspelt_and_unknown_options() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[sources.mongo]
type = "mongodb_change_stream"
uri = "mongodb://h/?replicaSet=rs0"

[sinks.lake]
type = "adls_partitioned_jsonl"
inputs = ["mongo"]
account_url = "file:///tmp/lake"
filesystem = "raw"
"#;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, base).unwrap();
    let (ok, output) = python_validate(&[&good]);
    assert!(ok, "{output}");
    for (name, extra) in [
        ("misspelt_nested", "batch.max_byte = 10\n"),
        ("misspelt_top", "file_nam = \"x\"\n"),
        ("wrong_type", "roll.window_secs = \"hourly\"\n"),
        ("unknown_value", "commit = \"sometimes\"\n"),
        ("unknown_global", "[[bogus]]\n"),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let (ok, output) = python_validate(&[&path]);
        assert!(!ok, "{name} was accepted: {output}");
        assert!(output.contains("invalid at"), "{name}: {output}");
    }
}
