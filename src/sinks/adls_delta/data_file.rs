//! One Parquet data file being written. Rows are encoded as they come
//! (`ArrowWriter`); each full row group is handed out as bytes and staged
//! as one block of the file (Put Block, invisible), and closing the file
//! hands out its last row group and footer. The sink commits the block
//! list (`If-None-Match: *`, a name unique to the attempt), and the file
//! exists; the table references it once a Delta commit adds it.
//!
//! So memory holds one row group per open file, however large the file.
//! Parquet's footer records each row group's offset, which the writer
//! counts itself, so taking the bytes out of its buffer between row groups
//! changes nothing in the file.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use serde_json::json;

use super::{
    log::Add,
    rows::{MinMax, Rows},
    schema::{file_schema, writer_properties, Compression, Partition, STATS_COLUMNS},
};
use crate::{
    codecs::json::{ExtendedJsonMode, MalformedBson},
    sinks::adls_partitioned_jsonl::encode::EventFields,
};

/// Rows encoded into the row group at a time: bounds the Arrow arrays held
/// before encoding.
const ROWS_PER_BATCH: usize = 4096;
/// ... or this many bytes of them.
const BYTES_PER_BATCH: usize = 1 << 20;

pub struct DataFile {
    /// The object name (`<table>/<partition folder>/part-...parquet`).
    pub object: String,
    /// Its path relative to the table, as the `add` action names it.
    pub path: String,
    pub partition: Partition,
    /// Made at the first batch of rows encoded: until then a file holds
    /// only its rows (a table with a few events a minute, among a thousand
    /// active ones, keeps no Parquet encoder).
    writer: Option<ArrowWriter<Vec<u8>>>,
    compression: Compression,
    rows: Rows,
    pub num_records: u64,
    /// Blocks handed out, in file order.
    pub block_ids: Vec<String>,
    /// Bytes handed out so far.
    pub bytes_out: u64,
}

impl DataFile {
    pub fn new(
        table: &str,
        partition: Partition,
        compression: Compression,
        mode: ExtendedJsonMode,
    ) -> Self {
        // Spark's naming; the id makes every attempt's file its own, so a
        // file is never written twice under one name.
        let path = format!(
            "{}part-00000-{}-c000{}.parquet",
            partition.folder(),
            uuid::Uuid::new_v4(),
            compression.suffix()
        );
        Self {
            object: format!("{table}/{path}"),
            path,
            partition,
            writer: None,
            compression,
            rows: Rows::new(mode),
            num_records: 0,
            block_ids: Vec::new(),
            bytes_out: 0,
        }
    }

    /// Adds an event's row. On error nothing is added.
    pub fn push(
        &mut self,
        fields: &EventFields<'_>,
        time: DateTime<Utc>,
    ) -> Result<(), MalformedBson> {
        self.rows.push(fields, time)?;
        self.num_records += 1;
        if self.rows.len() >= ROWS_PER_BATCH || self.rows.bytes() >= BYTES_PER_BATCH {
            self.encode();
        }
        Ok(())
    }

    /// Adds rows read from another data file of this schema (compaction).
    pub fn write_batch(&mut self, batch: &RecordBatch) {
        self.encode();
        self.writer()
            .write(batch)
            .expect("writing a valid batch to memory cannot fail");
        self.num_records += batch.num_rows() as u64;
    }

    fn writer(&mut self) -> &mut ArrowWriter<Vec<u8>> {
        let compression = self.compression;
        self.writer.get_or_insert_with(|| {
            ArrowWriter::try_new(
                Vec::new(),
                file_schema(),
                Some(writer_properties(compression)),
            )
            .expect("the schema is valid")
        })
    }

    fn encode(&mut self) {
        if !self.rows.is_empty() {
            let batch: RecordBatch = self.rows.finish();
            self.writer()
                .write(&batch)
                .expect("writing a valid batch to memory cannot fail");
        }
    }

    /// Bytes the row group in progress holds (encoded, and rows not yet
    /// encoded).
    pub fn buffered(&self) -> usize {
        self.writer
            .as_ref()
            .map_or(0, ArrowWriter::in_progress_size)
            + self.rows.bytes()
    }

    /// About the size of the file if it were closed now.
    pub fn size(&self) -> u64 {
        self.bytes_out + self.buffered() as u64
    }

    /// Ends the row group in progress and returns the bytes not yet handed
    /// out, as the next block with its id; `None` when there are none.
    pub fn cut(&mut self) -> Option<(String, Bytes)> {
        self.encode();
        self.writer()
            .flush()
            .expect("writing to memory cannot fail");
        self.take()
    }

    /// Ends the file: the last bytes (row group and footer) as its last
    /// block.
    pub fn close(&mut self) -> (String, Bytes) {
        self.encode();
        self.writer()
            .finish()
            .expect("writing to memory cannot fail");
        self.take().expect("a closed file ends in a footer")
    }

    fn take(&mut self) -> Option<(String, Bytes)> {
        let writer = self.writer();
        writer.sync().expect("writing to memory cannot fail");
        let bytes = std::mem::take(writer.inner_mut());
        if bytes.is_empty() {
            return None;
        }
        // Block ids of one blob must be of equal length.
        let id = format!("{:08}", self.block_ids.len());
        self.block_ids.push(id.clone());
        self.bytes_out += bytes.len() as u64;
        Some((id, Bytes::from(bytes)))
    }

    /// The `add` action of the closed file, committed at `now_ms`.
    pub fn add_action(&self, now_ms: i64) -> Add {
        Add {
            path: self.path.clone(),
            partition_values: self.partition.values(),
            size: self.bytes_out as i64,
            modification_time: now_ms,
            data_change: true,
            stats: Some(stats_json(self.num_records, &self.rows.stats)),
        }
    }
}

/// A file's statistics (`add.stats`): the number of records, and min, max
/// and null count of the time columns, as Delta writes them.
pub fn stats_json(num_records: u64, stats: &[MinMax; 2]) -> String {
    let time = |micros: Option<i64>| {
        micros
            .and_then(DateTime::from_timestamp_micros)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    };
    let mut min = BTreeMap::new();
    let mut max = BTreeMap::new();
    let mut nulls = BTreeMap::new();
    for (name, s) in STATS_COLUMNS.iter().zip(stats) {
        if let Some(v) = time(s.min) {
            min.insert(*name, v);
        }
        if let Some(v) = time(s.max) {
            max.insert(*name, v);
        }
        nulls.insert(*name, s.nulls);
    }
    json!({"numRecords": num_records, "minValues": min, "maxValues": max, "nullCount": nulls})
        .to_string()
}

/// The statistics an `add.stats` string holds for the time columns, in
/// microseconds (for combining files when compacting).
pub fn parse_stats(stats: Option<&str>) -> Option<(u64, [MinMax; 2])> {
    let value: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let records = value["numRecords"].as_u64()?;
    let micros = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    let mut out = [MinMax::default(); 2];
    for (name, s) in STATS_COLUMNS.iter().zip(out.iter_mut()) {
        s.min = micros(&value["minValues"][name]);
        s.max = micros(&value["maxValues"][name]);
        s.nulls = value["nullCount"][name].as_u64()?;
    }
    Some((records, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, RawDocumentBuf, Timestamp};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Blocks handed out one by one make a file Parquet readers read
    /// whole, with every row.
    #[test]
    fn blocks_concatenate_to_a_valid_file() {
        let mut file = DataFile::new(
            "shop/orders",
            Partition::default(),
            Compression::Zstd,
            ExtendedJsonMode::Relaxed,
        );
        assert!(file.object.starts_with("shop/orders/part-00000-"));
        assert!(file.object.ends_with("-c000.zstd.parquet"));
        let mut bytes = Vec::new();
        for i in 0..10_000_i64 {
            let event = RawDocumentBuf::from_document(&doc! {
                "_id": { "_data": format!("{i:08}") },
                "operationType": "insert",
                "clusterTime": Timestamp { time: 1_700_000_000 + i as u32, increment: 1 },
                "documentKey": { "_id": i },
                "fullDocument": { "_id": i, "pad": "x".repeat(100) },
            })
            .unwrap();
            file.push(
                &EventFields::read(&event).unwrap(),
                DateTime::from_timestamp(1_700_000_000 + i, 0).unwrap(),
            )
            .unwrap();
            if i % 3000 == 2999 {
                let (_, block) = file.cut().unwrap();
                bytes.extend_from_slice(&block);
            }
        }
        let (id, block) = file.close();
        bytes.extend_from_slice(&block);
        assert_eq!(id, "00000003");
        assert_eq!(file.bytes_out, bytes.len() as u64);
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 10_000);

        let add = file.add_action(5);
        let (records, stats) = parse_stats(add.stats.as_deref()).unwrap();
        assert_eq!(records, 10_000);
        assert_eq!(stats[0].min, Some(1_700_000_000_000_000));
        assert_eq!(stats[0].max, Some(1_700_009_999_000_000));
        assert!(add
            .stats
            .unwrap()
            .contains(r#""cluster_time":"2023-11-14T22:13:20.000Z""#));
    }
}
