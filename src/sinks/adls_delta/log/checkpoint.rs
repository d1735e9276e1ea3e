//! Checkpoints (PROTOCOL.md, "Checkpoints"): a table's state at a version
//! as one Parquet file, one row per action (`protocol`, `metaData`, `txn`,
//! `add`, and `remove` tombstones not yet expired), each action a struct
//! column of its own. Readers start from the newest one instead of
//! replaying every commit.
//!
//! Written create-only under the version's name: two writers make the same
//! content for one version, so whichever lands first serves. Read
//! tolerantly: any single- or multi-part classic checkpoint, whatever
//! other columns its writer added.

use std::{collections::BTreeMap, sync::Arc};

use arrow_array::{
    builder::{ListBuilder, MapBuilder, MapFieldNames, StringBuilder},
    cast::AsArray,
    types::{Int32Type, Int64Type},
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, MapArray, RecordBatch, StringArray,
    StructArray,
};
use arrow_buffer::NullBuffer;
use arrow_schema::{Field, Fields, Schema};
use bytes::Bytes;
use parquet::arrow::{
    arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder},
    ArrowWriter,
};

use super::{
    actions::Format, replay::Replay, replay::Snapshot, Action, Add, LastCheckpoint, LogError,
    Metadata, Protocol, Remove, TableLog, Txn,
};
use crate::sinks::util::storage::Created;

/// Tombstones younger than this stay in checkpoints (Delta's
/// `delta.deletedFileRetentionDuration` default), so readers of recent
/// versions can still tell a removed file from an unknown one.
const TOMBSTONE_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

fn name(log: &TableLog, version: i64, part: Option<(u32, u32)>) -> String {
    match part {
        None => format!("{}/_delta_log/{version:020}.checkpoint.parquet", log.root),
        Some((i, n)) => format!(
            "{}/_delta_log/{version:020}.checkpoint.{i:010}.{n:010}.parquet",
            log.root
        ),
    }
}

/// Writes the checkpoint of `snapshot` (unless one exists) and points
/// `_last_checkpoint` at it.
pub async fn write(log: &TableLog, snapshot: &Snapshot, now_ms: i64) -> Result<(), LogError> {
    let rows = rows(snapshot, now_ms);
    let size = rows.num_rows() as i64;
    let mut bytes = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut bytes, rows.schema(), None).expect("the schema is valid");
    writer
        .write(&rows)
        .and_then(|_| writer.close())
        .expect("writing to memory cannot fail");
    let created = log
        .requests
        .put_if_absent(&name(log, snapshot.version, None), Bytes::from(bytes))
        .await?;
    if created == Created::AlreadyExists {
        tracing::debug!(table = %log.root, version = snapshot.version, "A checkpoint of this version exists already.");
    }
    log.set_last_checkpoint(&LastCheckpoint {
        version: snapshot.version,
        size,
        parts: None,
    })
    .await
}

/// The checkpoint's rows: protocol, metadata, transactions, files and
/// unexpired tombstones.
fn rows(s: &Snapshot, now_ms: i64) -> RecordBatch {
    let rows = Rows::new(s, now_ms);
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("txn", rows.txn_column()),
        ("add", rows.add_column()),
        ("remove", rows.remove_column()),
        ("metaData", rows.metadata_column()),
        ("protocol", rows.protocol_column()),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("the columns match")
}

/// Row layout: [protocol][metaData][txns...][adds...][removes...]; each
/// action's column is null outside its own rows.
struct Rows<'a> {
    s: &'a Snapshot,
    txns: Vec<(&'a String, &'a i64)>,
    adds: Vec<&'a Add>,
    tombstones: Vec<&'a Remove>,
    n: usize,
}

impl<'a> Rows<'a> {
    fn new(s: &'a Snapshot, now_ms: i64) -> Self {
        let tombstones: Vec<&Remove> = s
            .tombstones
            .values()
            .filter(|r| r.deletion_timestamp.unwrap_or(now_ms) > now_ms - TOMBSTONE_RETENTION_MS)
            .collect();
        let adds: Vec<&Add> = s.files.values().collect();
        let txns: Vec<(&String, &i64)> = s.txns.iter().collect();
        let n = 2 + txns.len() + adds.len() + tombstones.len();
        Self {
            s,
            txns,
            adds,
            tombstones,
            n,
        }
    }

    fn txn(&self, i: usize) -> Option<(&'a String, &'a i64)> {
        i.checked_sub(2).and_then(|i| self.txns.get(i)).copied()
    }

    fn add(&self, i: usize) -> Option<&'a Add> {
        let start = 2 + self.txns.len();
        i.checked_sub(start).and_then(|i| self.adds.get(i)).copied()
    }

    fn remove(&self, i: usize) -> Option<&'a Remove> {
        let start = 2 + self.txns.len() + self.adds.len();
        i.checked_sub(start)
            .and_then(|i| self.tombstones.get(i))
            .copied()
    }

    fn metadata(&self, i: usize) -> Option<&'a Metadata> {
        (i == 1).then_some(&self.s.metadata)
    }

    fn txn_column(&self) -> ArrayRef {
        let n = self.n;
        structure(
            n,
            &|i| self.txn(i).is_some(),
            vec![
                ("appId", strings(n, |i| self.txn(i).map(|t| t.0.clone()))),
                ("version", longs(n, |i| self.txn(i).map(|t| *t.1))),
                ("lastUpdated", longs(n, |_| None)),
            ],
        )
    }

    fn add_column(&self) -> ArrayRef {
        let (n, add) = (self.n, |i| self.add(i));
        structure(
            n,
            &|i| add(i).is_some(),
            vec![
                ("path", strings(n, |i| add(i).map(|a| a.path.clone()))),
                (
                    "partitionValues",
                    maps(n, |i| add(i).map(|a| &a.partition_values)),
                ),
                ("size", longs(n, |i| add(i).map(|a| a.size))),
                (
                    "modificationTime",
                    longs(n, |i| add(i).map(|a| a.modification_time)),
                ),
                ("dataChange", bools(n, |i| add(i).map(|a| a.data_change))),
                (
                    "stats",
                    strings(n, |i| add(i).and_then(|a| a.stats.clone())),
                ),
            ],
        )
    }

    fn remove_column(&self) -> ArrayRef {
        let (n, remove) = (self.n, |i| self.remove(i));
        structure(
            n,
            &|i| remove(i).is_some(),
            vec![
                ("path", strings(n, |i| remove(i).map(|r| r.path.clone()))),
                (
                    "deletionTimestamp",
                    longs(n, |i| remove(i).and_then(|r| r.deletion_timestamp)),
                ),
                ("dataChange", bools(n, |i| remove(i).map(|r| r.data_change))),
                (
                    "extendedFileMetadata",
                    bools(n, |i| remove(i).and_then(|r| r.extended_file_metadata)),
                ),
                (
                    "partitionValues",
                    maps(n, |i| remove(i).and_then(|r| r.partition_values.as_ref())),
                ),
                ("size", longs(n, |i| remove(i).and_then(|r| r.size))),
            ],
        )
    }

    fn metadata_column(&self) -> ArrayRef {
        let (n, metadata) = (self.n, |i| self.metadata(i));
        let format_options = some_values(&self.s.metadata.format.options);
        let format = structure(
            n,
            &|i| i == 1,
            vec![
                (
                    "provider",
                    strings(n, |i| metadata(i).map(|m| m.format.provider.clone())),
                ),
                ("options", maps(n, |i| (i == 1).then_some(&format_options))),
            ],
        );
        structure(
            n,
            &|i| i == 1,
            vec![
                ("id", strings(n, |i| metadata(i).map(|m| m.id.clone()))),
                (
                    "name",
                    strings(n, |i| metadata(i).and_then(|m| m.name.clone())),
                ),
                (
                    "description",
                    strings(n, |i| metadata(i).and_then(|m| m.description.clone())),
                ),
                ("format", format),
                (
                    "schemaString",
                    strings(n, |i| metadata(i).map(|m| m.schema_string.clone())),
                ),
                (
                    "partitionColumns",
                    string_lists(n, |i| metadata(i).map(|m| &m.partition_columns)),
                ),
                (
                    "configuration",
                    maps(n, |i| metadata(i).map(|m| &m.configuration)),
                ),
                (
                    "createdTime",
                    longs(n, |i| metadata(i).and_then(|m| m.created_time)),
                ),
            ],
        )
    }

    fn protocol_column(&self) -> ArrayRef {
        let n = self.n;
        let protocol = |i: usize| (i == 0).then_some(&self.s.protocol);
        structure(
            n,
            &|i| i == 0,
            vec![
                (
                    "minReaderVersion",
                    ints(n, |i| protocol(i).map(|p| p.min_reader_version)),
                ),
                (
                    "minWriterVersion",
                    ints(n, |i| protocol(i).map(|p| p.min_writer_version)),
                ),
            ],
        )
    }
}

fn some_values(options: &BTreeMap<String, String>) -> BTreeMap<String, Option<String>> {
    options
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect()
}

fn structure(n: usize, valid: &dyn Fn(usize) -> bool, children: Vec<(&str, ArrayRef)>) -> ArrayRef {
    let fields: Fields = children
        .iter()
        .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
        .collect();
    let nulls = NullBuffer::from((0..n).map(valid).collect::<Vec<bool>>());
    Arc::new(StructArray::new(
        fields,
        children.into_iter().map(|(_, a)| a).collect(),
        Some(nulls),
    ))
}

fn strings(n: usize, f: impl Fn(usize) -> Option<String>) -> ArrayRef {
    Arc::new((0..n).map(f).collect::<StringArray>())
}

fn longs(n: usize, f: impl Fn(usize) -> Option<i64>) -> ArrayRef {
    Arc::new((0..n).map(f).collect::<Int64Array>())
}

fn ints(n: usize, f: impl Fn(usize) -> Option<i32>) -> ArrayRef {
    Arc::new((0..n).map(f).collect::<Int32Array>())
}

fn bools(n: usize, f: impl Fn(usize) -> Option<bool>) -> ArrayRef {
    Arc::new((0..n).map(f).collect::<BooleanArray>())
}

/// `map<string,string>` as Spark writes it (`key_value` entries).
fn maps<'a>(
    n: usize,
    f: impl Fn(usize) -> Option<&'a BTreeMap<String, Option<String>>>,
) -> ArrayRef {
    let names = MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    };
    let mut builder = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
    for i in 0..n {
        match f(i) {
            Some(map) => {
                for (k, v) in map {
                    builder.keys().append_value(k);
                    builder.values().append_option(v.as_deref());
                }
                builder.append(true).expect("keys and values match");
            }
            None => builder.append(false).expect("keys and values match"),
        }
    }
    Arc::new(builder.finish())
}

fn string_lists<'a>(n: usize, f: impl Fn(usize) -> Option<&'a Vec<String>>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for i in 0..n {
        match f(i) {
            Some(list) => {
                for s in list {
                    builder.values().append_value(s);
                }
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    Arc::new(builder.finish())
}

/// The state a checkpoint holds, as a replay at its version.
pub async fn read(log: &TableLog, version: i64, parts: Option<u32>) -> Result<Replay, LogError> {
    let names: Vec<String> = match parts {
        None | Some(1) => vec![name(log, version, None)],
        Some(n) => (1..=n).map(|i| name(log, version, Some((i, n)))).collect(),
    };
    let mut replay = Replay::default();
    for name in names {
        let Some(bytes) = log.requests.get(&name).await? else {
            return Err(LogError::Corrupt {
                table: log.root.clone(),
                what: name,
                message: "`_last_checkpoint` names it, but it does not exist".into(),
            });
        };
        let actions = decode(bytes).map_err(|message| LogError::Corrupt {
            table: log.root.clone(),
            what: name.clone(),
            message,
        })?;
        replay.apply(version, actions);
    }
    Ok(replay)
}

/// The actions of a checkpoint file.
fn decode(bytes: Bytes) -> Result<Vec<Action>, String> {
    // Parquet types as stored, not as an embedded Arrow schema says: the
    // columns below are then plain strings and integers whoever wrote them.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut actions = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let column = |name: &str| batch.column_by_name(name).and_then(|c| c.as_struct_opt());
        let (add, remove, txn, protocol, metadata) = (
            column("add"),
            column("remove"),
            column("txn"),
            column("protocol"),
            column("metaData"),
        );
        for i in 0..batch.num_rows() {
            fn valid(s: Option<&StructArray>, i: usize) -> Option<&StructArray> {
                s.filter(|s| s.is_valid(i))
            }
            actions.push(Action {
                add: valid(add, i).map(|s| decode_add(s, i)).transpose()?,
                remove: valid(remove, i).map(|s| decode_remove(s, i)).transpose()?,
                txn: valid(txn, i).map(|s| decode_txn(s, i)).transpose()?,
                protocol: valid(protocol, i).map(|s| decode_protocol(s, i)),
                meta_data: valid(metadata, i)
                    .map(|s| decode_metadata(s, i))
                    .transpose()?,
                ..Action::default()
            });
        }
    }
    Ok(actions)
}

fn decode_add(s: &StructArray, i: usize) -> Result<Add, String> {
    Ok(Add {
        path: text(s, "path", i).ok_or("an add without a path")?,
        partition_values: map(s, "partitionValues", i),
        size: int(s, "size", i).unwrap_or_default(),
        modification_time: int(s, "modificationTime", i).unwrap_or_default(),
        data_change: boolean(s, "dataChange", i).unwrap_or(true),
        stats: text(s, "stats", i),
    })
}

fn decode_remove(s: &StructArray, i: usize) -> Result<Remove, String> {
    Ok(Remove {
        path: text(s, "path", i).ok_or("a remove without a path")?,
        deletion_timestamp: int(s, "deletionTimestamp", i),
        data_change: boolean(s, "dataChange", i).unwrap_or(true),
        extended_file_metadata: boolean(s, "extendedFileMetadata", i),
        partition_values: Some(map(s, "partitionValues", i)),
        size: int(s, "size", i),
    })
}

fn decode_txn(s: &StructArray, i: usize) -> Result<Txn, String> {
    Ok(Txn {
        app_id: text(s, "appId", i).ok_or("a txn without an appId")?,
        version: int(s, "version", i).ok_or("a txn without a version")?,
        last_updated: int(s, "lastUpdated", i),
    })
}

fn decode_protocol(s: &StructArray, i: usize) -> Protocol {
    Protocol {
        min_reader_version: int(s, "minReaderVersion", i).unwrap_or(1) as i32,
        min_writer_version: int(s, "minWriterVersion", i).unwrap_or(2) as i32,
        reader_features: list(s, "readerFeatures", i),
        writer_features: list(s, "writerFeatures", i),
    }
}

fn decode_metadata(s: &StructArray, i: usize) -> Result<Metadata, String> {
    let format = s.column_by_name("format").and_then(|c| c.as_struct_opt());
    Ok(Metadata {
        id: text(s, "id", i).unwrap_or_default(),
        name: text(s, "name", i),
        description: text(s, "description", i),
        format: Format {
            provider: format
                .and_then(|f| text(f, "provider", i))
                .unwrap_or_else(|| "parquet".into()),
            options: format
                .map(|f| map(f, "options", i))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
        },
        schema_string: text(s, "schemaString", i).ok_or("metaData without a schema")?,
        partition_columns: list(s, "partitionColumns", i).unwrap_or_default(),
        configuration: map(s, "configuration", i),
        created_time: int(s, "createdTime", i),
    })
}

fn child<'a>(s: &'a StructArray, name: &str, i: usize) -> Option<&'a ArrayRef> {
    s.column_by_name(name).filter(|c| c.is_valid(i))
}

fn text(s: &StructArray, name: &str, i: usize) -> Option<String> {
    let c = child(s, name, i)?;
    if let Some(a) = c.as_string_opt::<i32>() {
        return Some(a.value(i).to_string());
    }
    if let Some(a) = c.as_string_opt::<i64>() {
        return Some(a.value(i).to_string());
    }
    c.as_binary_opt::<i32>()
        .map(|a| String::from_utf8_lossy(a.value(i)).into_owned())
}

fn int(s: &StructArray, name: &str, i: usize) -> Option<i64> {
    let c = child(s, name, i)?;
    if let Some(a) = c.as_primitive_opt::<Int64Type>() {
        return Some(a.value(i));
    }
    c.as_primitive_opt::<Int32Type>()
        .map(|a| i64::from(a.value(i)))
}

fn boolean(s: &StructArray, name: &str, i: usize) -> Option<bool> {
    child(s, name, i)?.as_boolean_opt().map(|a| a.value(i))
}

fn strings_of(array: &ArrayRef) -> Vec<Option<String>> {
    (0..array.len())
        .map(|i| {
            array.is_valid(i).then(|| {
                array
                    .as_string_opt::<i32>()
                    .map(|a| a.value(i).to_string())
                    .or_else(|| {
                        array
                            .as_binary_opt::<i32>()
                            .map(|a| String::from_utf8_lossy(a.value(i)).into_owned())
                    })
                    .unwrap_or_default()
            })
        })
        .collect()
}

fn map(s: &StructArray, name: &str, i: usize) -> BTreeMap<String, Option<String>> {
    let Some(m) = child(s, name, i).and_then(|c| c.as_map_opt()) else {
        return BTreeMap::new();
    };
    let entries: &MapArray = m;
    let one = entries.value(i);
    let keys = strings_of(one.column(0));
    let values = strings_of(one.column(1));
    keys.into_iter()
        .zip(values)
        .filter_map(|(k, v)| Some((k?, v)))
        .collect()
}

fn list(s: &StructArray, name: &str, i: usize) -> Option<Vec<String>> {
    let l = child(s, name, i)?.as_list_opt::<i32>()?;
    Some(strings_of(&l.value(i)).into_iter().flatten().collect())
}
