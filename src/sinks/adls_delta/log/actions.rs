//! The Delta log's actions (PROTOCOL.md of delta-io/delta, "Actions"),
//! as this sink writes and reads them. Fields other writers add are
//! ignored on read; the ones that would change what a file means
//! (deletion vectors) come with a protocol this sink refuses to write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A data file in the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Add {
    /// Relative to the table root, URL-encoded (ours need no encoding).
    pub path: String,
    pub partition_values: BTreeMap<String, Option<String>>,
    pub size: i64,
    pub modification_time: i64,
    pub data_change: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

/// A data file taken out of the table (kept as a tombstone until vacuum).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remove {
    pub path: String,
    #[serde(default)]
    pub deletion_timestamp: Option<i64>,
    pub data_change: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_file_metadata: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_values: Option<BTreeMap<String, Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// An application's transaction: the newest `version` of `appId` committed
/// to the table (how streaming writers make commits idempotent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Txn {
    pub app_id: String,
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    pub min_reader_version: i32,
    pub min_writer_version: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_features: Option<Vec<String>>,
}

impl Protocol {
    /// The protocol of the tables this sink creates: no table features.
    pub fn ours() -> Self {
        Self {
            min_reader_version: 1,
            min_writer_version: 2,
            reader_features: None,
            writer_features: None,
        }
    }

    /// Whether this sink may write the table: readers need nothing beyond
    /// version 1, and writers nothing beyond version 2 (append-only and
    /// column invariants, neither of which this sink's commits break).
    pub fn writable(&self) -> Result<(), String> {
        if self.min_reader_version <= 1 && self.min_writer_version <= 2 {
            Ok(())
        } else {
            Err(format!(
                "its protocol needs readers of version {} and writers of version {}{} (this sink writes tables of reader version 1 and writer version 2 only)",
                self.min_reader_version,
                self.min_writer_version,
                self.writer_features
                    .as_ref()
                    .map_or_else(String::new, |f| format!(" with features {f:?}"))
            ))
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    pub provider: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub format: Format,
    pub schema_string: String,
    pub partition_columns: Vec<String>,
    #[serde(default)]
    pub configuration: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
}

/// One line of a commit file: one action. Actions this sink does not
/// use (`cdc`, `domainMetadata`, ...) are read as none of these.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Add>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Remove>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<Txn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<Metadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_info: Option<serde_json::Value>,
}

/// The actions of a commit file (newline-delimited JSON).
pub fn parse_commit(bytes: &[u8]) -> Result<Vec<Action>, String> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| serde_json::from_slice(line).map_err(|e| e.to_string()))
        .collect()
}

/// A commit file's bytes: one action per line.
pub fn encode_commit(actions: &[Action]) -> Vec<u8> {
    let mut out = Vec::new();
    for action in actions {
        serde_json::to_writer(&mut out, action).expect("actions serialize");
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_spark_writes() {
        let commit = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE"}}
{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}
{"metaData":{"id":"x","format":{"provider":"parquet","options":{}},"schemaString":"{}","partitionColumns":["event_date"],"configuration":{},"createdTime":1}}
{"add":{"path":"event_date=2024-01-01/part-0.parquet","partitionValues":{"event_date":"2024-01-01"},"size":10,"modificationTime":1,"dataChange":true,"stats":"{}","tags":{"a":"b"}}}
{"txn":{"appId":"app","version":3}}
{"domainMetadata":{"domain":"d","configuration":"{}","removed":false}}
"#;
        let actions = parse_commit(commit).unwrap();
        assert_eq!(actions.len(), 6);
        assert_eq!(actions[3].add.as_ref().unwrap().size, 10);
        assert_eq!(actions[4].txn.as_ref().unwrap().version, 3);
        assert!(actions[1].protocol.as_ref().unwrap().writable().is_ok());
        let round = parse_commit(&encode_commit(&actions[3..5])).unwrap();
        assert_eq!(round[0].add, actions[3].add);
        let dv = Protocol {
            min_reader_version: 3,
            min_writer_version: 7,
            reader_features: Some(vec!["deletionVectors".into()]),
            writer_features: Some(vec!["deletionVectors".into()]),
        };
        assert!(dv.writable().unwrap_err().contains("deletionVectors"));
    }
}
