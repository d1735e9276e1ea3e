//! Delta tables as tests read them: `e2e/delta_checker.py` (its own log
//! replay, sharing no code with the agent), commit actions, and local data
//! files read row by row.

use std::ffi::OsStr;

use arrow_array::{Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

use super::*;

/// `e2e/delta_checker.py` with the Python packages `e2e/services.sh`
/// installs.
pub fn delta_checker<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pythonpath = std::env::var("MONGO_ADLS_DELTA_PYTHONPATH").unwrap_or_else(|_| {
        let services = std::env::var("MONGO_ADLS_SERVICES_DIR")
            .unwrap_or_else(|_| repo.join(".services").display().to_string());
        format!("{services}/pydelta")
    });
    let mut cmd = Command::new("python3");
    cmd.arg(repo.join("e2e/delta_checker.py"))
        .args(args)
        .env("PYTHONPATH", pythonpath);
    cmd
}

/// The data files of the table `table` (its folder under the local lake
/// `lake_dir`) at its newest version, as the checker's log replay lists
/// them; it fails on a gap in the versions, a txn out of order or a
/// checkpoint that disagrees with the commits.
pub fn delta_files(lake_dir: &Path, table: &str) -> Vec<PathBuf> {
    let lake = lake_dir.display().to_string();
    let out = delta_checker(&["files", "--lake-dir", &lake, "--table", table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "delta_checker.py files {table} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    paths
        .into_iter()
        .map(|p| lake_dir.join(table).join(p))
        .collect()
}

/// The rows of a local Delta data file, one at a time, each as the parts
/// of the JSON Lines record the tests read: `_meta.resumeToken`,
/// `_meta.operationType`, `_meta.ns`, `documentKey`, `fullDocument`,
/// `updateDescription` (the table's Extended JSON columns parsed).
pub fn delta_events(file: &Path) -> impl Iterator<Item = Value> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .with_batch_size(4096)
        .build()
        .unwrap();
    reader.flat_map(|batch| {
        let batch = batch.unwrap();
        (0..batch.num_rows())
            .map(|row| event_of(&batch, row))
            .collect::<Vec<_>>()
    })
}

fn event_of(batch: &RecordBatch, row: usize) -> Value {
    let text = |name: &str| -> Option<&str> {
        let column = batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (!column.is_null(row)).then(|| column.value(row))
    };
    let parsed = |name: &str| text(name).map_or(Value::Null, |t| serde_json::from_str(t).unwrap());
    json!({
        "_meta": {
            "resumeToken": text("resume_token"),
            "operationType": text("operation_type"),
            "ns": { "db": text("db"), "coll": text("coll") },
        },
        "documentKey": parsed("document_key"),
        "fullDocument": parsed("full_document"),
        "updateDescription": parsed("update_description"),
    })
}

/// Rows a Delta commit's actions appended (its `numOutputRows`;
/// compactions add none).
pub fn delta_rows_appended(actions: impl IntoIterator<Item = serde_json::Value>) -> usize {
    actions
        .into_iter()
        .filter(|a| a["commitInfo"]["operation"] == "STREAMING UPDATE")
        .filter_map(|a| {
            a["commitInfo"]["operationMetrics"]["numOutputRows"]
                .as_str()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

/// Whether an object is a commit of a Delta table.
pub fn is_delta_commit(name: &str) -> bool {
    name.contains("/_delta_log/") && name.ends_with(".json")
}
