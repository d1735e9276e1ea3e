//! The table: its columns (flat, typed metadata in snake_case for SQL
//! engines, the document parts as Extended JSON strings so a field that
//! changes type in MongoDB never fails a commit), its partition columns,
//! and how data files are encoded.
//!
//! Partition columns are not stored in the data files: in Delta their
//! values live in each file's `add` action (`partitionValues`), and
//! readers add them back.

use std::{collections::BTreeMap, sync::Arc};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use parquet::{
    basic::{Compression as ParquetCompression, ZstdLevel},
    file::properties::{WriterProperties, WriterVersion},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// `partition_by`: the partition columns.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PartitionBy {
    /// No partition column.
    None,
    /// `event_date` (DATE) in the configured time zone (default).
    #[default]
    Day,
    /// `event_date` (DATE) and `event_hour` (INT, 0-23) in the configured
    /// time zone.
    Hour,
}

/// `compression` of the Parquet data files.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard, level 1 (default): about half of Snappy's size on change
    /// events, read by every Delta engine.
    #[default]
    Zstd,
    /// Snappy: the fastest to write and read.
    Snappy,
    /// Uncompressed.
    None,
}

impl Compression {
    /// The data file name's codec part, as Spark names them.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Zstd => ".zstd",
            Compression::Snappy => ".snappy",
            Compression::None => "",
        }
    }

    fn parquet(self) -> ParquetCompression {
        match self {
            Compression::Zstd => {
                ParquetCompression::ZSTD(ZstdLevel::try_new(1).expect("level 1 is valid"))
            }
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::None => ParquetCompression::UNCOMPRESSED,
        }
    }
}

/// A column of the data files: name, Delta type, nullable.
pub struct Column {
    pub name: &'static str,
    pub delta_type: &'static str,
    pub nullable: bool,
}

const fn col(name: &'static str, delta_type: &'static str, nullable: bool) -> Column {
    Column {
        name,
        delta_type,
        nullable,
    }
}

/// The data files' columns, in order (`rows.rs` fills them in this order).
pub const COLUMNS: [Column; 15] = [
    col("operation_type", "string", false),
    col("db", "string", true),
    col("coll", "string", true),
    col("cluster_time", "timestamp", true),
    col("cluster_time_increment", "long", true),
    col("wall_time", "timestamp", true),
    col("event_time", "timestamp", false),
    col("txn_number", "long", true),
    col("lsid", "string", true),
    col("resume_token", "string", true),
    col("document_key", "string", true),
    col("full_document", "string", true),
    col("update_description", "string", true),
    col("full_document_before_change", "string", true),
    col("extra", "string", true),
];

/// Columns whose min and max go into each file's statistics (for data
/// skipping by time); their values are whole seconds or milliseconds, so
/// the millisecond precision of Delta statistics loses nothing.
pub const STATS_COLUMNS: [&str; 2] = ["cluster_time", "event_time"];

fn arrow_type(delta_type: &str) -> DataType {
    match delta_type {
        "string" => DataType::Utf8,
        "long" => DataType::Int64,
        "integer" => DataType::Int32,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        other => unreachable!("no column has type {other}"),
    }
}

/// The Arrow schema of the data files (partition columns excluded).
pub fn file_schema() -> SchemaRef {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| Field::new(c.name, arrow_type(c.delta_type), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

impl PartitionBy {
    /// The partition columns and their Delta types.
    pub fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            PartitionBy::None => &[],
            PartitionBy::Day => &[("event_date", "date")],
            PartitionBy::Hour => &[("event_date", "date"), ("event_hour", "integer")],
        }
    }

    /// The partition of an event time, in `tz`.
    pub fn partition_of(self, time: DateTime<Utc>, tz: Tz) -> Partition {
        let local = time.with_timezone(&tz);
        let date = local.date_naive();
        match self {
            PartitionBy::None => Partition::default(),
            PartitionBy::Day => Partition {
                date: Some((date.year(), date.month() as u8, date.day() as u8)),
                hour: None,
            },
            PartitionBy::Hour => Partition {
                date: Some((date.year(), date.month() as u8, date.day() as u8)),
                hour: Some(local.hour() as u8),
            },
        }
    }
}

/// One partition's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// Year, month, day.
    pub date: Option<(i32, u8, u8)>,
    pub hour: Option<u8>,
}

impl Partition {
    /// `partitionValues` of the files of this partition.
    pub fn values(&self) -> BTreeMap<String, Option<String>> {
        let mut values = BTreeMap::new();
        if let Some((y, m, d)) = self.date {
            values.insert("event_date".into(), Some(format!("{y:04}-{m:02}-{d:02}")));
        }
        if let Some(h) = self.hour {
            values.insert("event_hour".into(), Some(h.to_string()));
        }
        values
    }

    /// The Hive-style folder of its files (`event_date=2024-08-10/`), as
    /// Spark lays them out; empty without partition columns.
    pub fn folder(&self) -> String {
        let mut out = String::new();
        if let Some((y, m, d)) = self.date {
            out.push_str(&format!("event_date={y:04}-{m:02}-{d:02}/"));
        }
        if let Some(h) = self.hour {
            out.push_str(&format!("event_hour={h}/"));
        }
        out
    }
}

/// The table's Delta schema (`schemaString` of its metadata): the data
/// columns, then the partition columns.
pub fn delta_schema(partition_by: PartitionBy) -> serde_json::Value {
    let field = |name: &str, ty: &str, nullable: bool| json!({"name": name, "type": ty, "nullable": nullable, "metadata": {}});
    let mut fields: Vec<serde_json::Value> = COLUMNS
        .iter()
        .map(|c| field(c.name, c.delta_type, c.nullable))
        .collect();
    fields.extend(
        partition_by
            .columns()
            .iter()
            .map(|(name, ty)| field(name, ty, true)),
    );
    json!({"type": "struct", "fields": fields})
}

/// Whether a table's schema and partition columns (as another writer, or
/// an older version of this sink, left them) take this sink's rows: every
/// column of ours present with our type, the same partition columns, and
/// any other column nullable (our rows leave it empty).
pub fn check_compatible(
    schema_string: &str,
    partition_columns: &[String],
    partition_by: PartitionBy,
) -> Result<(), String> {
    let theirs: serde_json::Value = serde_json::from_str(schema_string)
        .map_err(|e| format!("its schema does not parse ({e})"))?;
    let fields = theirs["fields"].as_array().cloned().unwrap_or_default();
    let ours = delta_schema(partition_by);
    let ours = ours["fields"].as_array().expect("fields");
    for field in ours {
        let name = field["name"].as_str().unwrap_or_default();
        match fields.iter().find(|f| f["name"] == field["name"]) {
            None => return Err(format!("it has no column `{name}`")),
            Some(f) if f["type"] != field["type"] => {
                return Err(format!(
                    "its column `{name}` is {}, not {}",
                    f["type"], field["type"]
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(required) = fields
        .iter()
        .find(|f| !ours.iter().any(|o| o["name"] == f["name"]) && f["nullable"] == false)
    {
        return Err(format!(
            "it has a column `{}` this sink does not write, and not nullable",
            required["name"].as_str().unwrap_or_default()
        ));
    }
    let wanted: Vec<&str> = partition_by.columns().iter().map(|(n, _)| *n).collect();
    if partition_columns
        .iter()
        .map(String::as_str)
        .ne(wanted.iter().copied())
    {
        return Err(format!(
            "it is partitioned by {partition_columns:?}, not {wanted:?} (`partition_by`)"
        ));
    }
    Ok(())
}

/// How data files are encoded.
pub fn writer_properties(compression: Compression) -> WriterProperties {
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(compression.parquet())
        .set_created_by(format!("mongo-adls {}", env!("CARGO_PKG_VERSION")))
        // Row groups are cut by size in `data_file.rs`.
        .set_max_row_group_row_count(None)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_the_time_zone() {
        let t = DateTime::parse_from_rfc3339("2024-08-10T23:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let utc = PartitionBy::Hour.partition_of(t, Tz::UTC);
        assert_eq!(utc.folder(), "event_date=2024-08-10/event_hour=23/");
        let paris = PartitionBy::Day.partition_of(t, "Europe/Paris".parse().unwrap());
        assert_eq!(paris.folder(), "event_date=2024-08-11/");
        assert_eq!(
            paris.values().get("event_date"),
            Some(&Some("2024-08-11".to_string()))
        );
        assert_eq!(PartitionBy::None.partition_of(t, Tz::UTC).folder(), "");
    }

    #[test]
    fn compatibility() {
        let ours = delta_schema(PartitionBy::Day).to_string();
        let day = vec!["event_date".to_string()];
        assert_eq!(check_compatible(&ours, &day, PartitionBy::Day), Ok(()));
        let err = check_compatible(&ours, &[], PartitionBy::Day).unwrap_err();
        assert!(err.contains("partitioned by"), "{err}");
        let mut extra = delta_schema(PartitionBy::Day);
        extra["fields"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "x", "type": "long", "nullable": true, "metadata": {}}));
        assert_eq!(
            check_compatible(&extra.to_string(), &day, PartitionBy::Day),
            Ok(())
        );
        extra["fields"][16]["nullable"] = json!(false);
        assert!(check_compatible(&extra.to_string(), &day, PartitionBy::Day).is_err());
        let mut retyped = delta_schema(PartitionBy::Day);
        retyped["fields"][3]["type"] = json!("string");
        let err = check_compatible(&retyped.to_string(), &day, PartitionBy::Day).unwrap_err();
        assert!(err.contains("cluster_time"), "{err}");
    }
}
