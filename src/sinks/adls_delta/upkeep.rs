//! Table upkeep, run after a commit when due, one table at a time:
//! - a Delta checkpoint every `commit.checkpoint_interval` versions;
//! - compaction: small files of a partition, of similar size, rewritten
//!   into files of up to `data_files.target_bytes`. The new files are
//!   written here; their commit (`remove` of the inputs, `add` of the
//!   outputs, all `dataChange = false`) goes through the sink's intent
//!   and commit like any other, and gives up if another writer removed an
//!   input first;
//! - vacuum: files the table no longer references (compacted away, or
//!   written by an attempt that never committed), once older than the
//!   retention. The sink records the vacuum in its fenced state before it
//!   starts, so an agent that lost its lease never deletes anything;
//! - log cleanup, with each vacuum and from its listing: `_delta_log/`
//!   files before the newest checkpoint older than the log retention
//!   (Delta's metadata cleanup).

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{
    data_file::{parse_stats, stats_json, DataFile},
    log::{checkpoint, snapshot::Snapshot, Add, LogError, Remove, TableLog},
    rows::MinMax,
    schema::{file_schema, Compression, Partition},
    table::Compaction,
};
use crate::{codecs::json::ExtendedJsonMode, sinks::util::storage::ObjectMeta};

/// `vacuum.*`, resolved.
#[derive(Clone, Copy, Debug)]
pub struct Vacuum {
    /// How long unreferenced data files are kept.
    pub retention: Duration,
    /// Time between two vacuums of a table.
    pub interval: Duration,
    /// How long `_delta_log/` files are kept.
    pub log_retention: Duration,
}

/// Input bytes rewritten by one compaction at most; the rest waits for the
/// next checkpoint.
const MAX_COMPACTION_INPUT: u64 = 1 << 30;

/// What to do for one table.
pub struct Job {
    /// Write the checkpoint of this version.
    pub checkpoint: Option<i64>,
    /// Compact, with this many files of a size class at least.
    pub compact_min_files: Option<usize>,
    /// Vacuum (and clean the log) with these retentions.
    pub vacuum: Option<Vacuum>,
    /// Files the state's intent names (never vacuumed).
    pub keep: HashSet<String>,
    pub target_bytes: u64,
    pub row_group_bytes: usize,
    pub compression: Compression,
}

/// What upkeep did.
#[derive(Default)]
pub struct Done {
    pub checkpointed: Option<i64>,
    pub compaction: Option<Compaction>,
    pub vacuumed: usize,
    /// `_delta_log/` files deleted.
    pub log_files_deleted: usize,
}

pub async fn run(log: &TableLog, job: Job) -> Result<Done, LogError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let Some(snapshot) = Snapshot::load(log, job.checkpoint).await? else {
        return Ok(Done::default());
    };
    let mut done = Done::default();
    if job.checkpoint.is_some() {
        checkpoint::write(log, &snapshot, now_ms).await?;
        done.checkpointed = Some(snapshot.version);
    }
    if let Some(min_files) = job.compact_min_files {
        if let Some(bin) = plan(&snapshot, job.target_bytes, min_files)
            .into_iter()
            .next()
        {
            done.compaction = compact(log, &snapshot, &bin, &job, now_ms).await?;
        }
    }
    if let Some(retention) = job.vacuum {
        // The newest version, not the checkpoint's: a file added since is
        // referenced.
        let Some(newest) = Snapshot::load(log, None).await? else {
            return Ok(done);
        };
        let mut keep = job.keep;
        if let Some(compaction) = &done.compaction {
            keep.extend(compaction.adds.iter().map(|a| a.path.clone()));
        }
        // One listing of the table's folder for both.
        let listed = log.requests.list(&format!("{}/", log.root)).await?;
        done.vacuumed = vacuum(log, &listed, &newest, retention.retention, &keep, now_ms).await?;
        done.log_files_deleted = clean_log(log, &listed, retention.log_retention, now_ms).await?;
    }
    Ok(done)
}

/// Files worth rewriting together: per partition, files under half the
/// target whose sizes are within a factor of four of each other (a size
/// class), once a class holds `min_files`; packed into bins of up to the
/// target size, oldest first. Each row is rewritten once per class it
/// climbs, so about log4(target / first size) times in all.
fn plan(snapshot: &Snapshot, target: u64, min_files: usize) -> Vec<Vec<Add>> {
    // Files by partition (its values) and size class.
    type Class = (Vec<(String, Option<String>)>, u32);
    let mut classes: BTreeMap<Class, Vec<&Add>> = BTreeMap::new();
    for add in snapshot.files.values() {
        let size = add.size.max(1) as u64;
        if size >= target / 2 {
            continue;
        }
        let class = (size.max(1024) / 1024).ilog(4);
        let partition = add.partition_values.clone().into_iter().collect();
        classes.entry((partition, class)).or_default().push(add);
    }
    let mut bins = Vec::new();
    let mut budget = MAX_COMPACTION_INPUT;
    for files in classes.into_values().filter(|f| f.len() >= min_files) {
        let mut files = files;
        files.sort_by_key(|a| (a.modification_time, a.path.clone()));
        let mut bin: Vec<Add> = Vec::new();
        let mut size = 0;
        for add in files {
            if size + add.size as u64 > target && bin.len() >= 2 {
                bins.push(std::mem::take(&mut bin));
                size = 0;
            }
            size += add.size as u64;
            bin.push(add.clone());
        }
        if bin.len() >= 2 {
            bins.push(bin);
        }
    }
    bins.retain(|bin| {
        let size: u64 = bin.iter().map(|a| a.size as u64).sum();
        let take = size <= budget;
        budget = budget.saturating_sub(size);
        take
    });
    bins
}

/// Rewrites one bin into one new file; `None` when an input is not a file
/// of this sink's schema (another writer's), which is left alone.
async fn compact(
    log: &TableLog,
    snapshot: &Snapshot,
    bin: &[Add],
    job: &Job,
    now_ms: i64,
) -> Result<Option<Compaction>, LogError> {
    let partition = partition_of(&bin[0]);
    let mut out = DataFile::new(
        &log.root,
        partition,
        job.compression,
        ExtendedJsonMode::Relaxed,
    );
    let mut stats = [MinMax::default(); 2];
    let mut records = 0;
    let mut staged = 0usize;
    for add in bin {
        let name = format!("{}/{}", log.root, add.path);
        let Some(bytes) = log.requests.get(&name).await? else {
            tracing::warn!(table = %log.root, file = %add.path, "A file the table references is missing; not compacting its partition.");
            return Ok(None);
        };
        let Some(rows) = read_rows(bytes, &mut out) else {
            tracing::info!(table = %log.root, file = %add.path, "A file of another schema (another writer's) is left as it is.");
            return Ok(None);
        };
        let Some((n, s)) = parse_stats(add.stats.as_deref()) else {
            return Ok(None);
        };
        if n != rows {
            return Err(LogError::Corrupt {
                table: log.root.clone(),
                what: add.path.clone(),
                message: format!("its statistics say {n} records, the file holds {rows}"),
            });
        }
        records += n;
        for (all, one) in stats.iter_mut().zip(&s) {
            all.merge(one);
        }
        if out.buffered() >= job.row_group_bytes {
            if let Some((id, block)) = out.cut() {
                log.requests.stage_block(&out.object, &id, block).await?;
                staged += 1;
            }
        }
    }
    let (id, block) = out.close();
    log.requests.stage_block(&out.object, &id, block).await?;
    log.requests.commit_new(&out.object, &out.block_ids).await?;
    tracing::debug!(table = %log.root, inputs = bin.len(), blocks = staged + 1, "Compaction file written.");
    let mut add = out.add_action(now_ms);
    // The inputs' own values: the rewritten rows stay in their partition
    // whatever the folder name says.
    add.partition_values = bin[0].partition_values.clone();
    add.data_change = false;
    add.stats = Some(stats_json(records, &stats));
    let removes = bin
        .iter()
        .map(|a| Remove {
            path: a.path.clone(),
            deletion_timestamp: Some(now_ms),
            data_change: false,
            extended_file_metadata: Some(true),
            partition_values: Some(a.partition_values.clone()),
            size: Some(a.size),
        })
        .collect();
    Ok(Some(Compaction {
        adds: vec![add],
        removes,
        planned_at: snapshot.version,
    }))
}

/// Copies a data file's rows into `out`; their number, or `None` when the
/// file is not of this sink's schema.
fn read_rows(bytes: Bytes, out: &mut DataFile) -> Option<u64> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).ok()?;
    if reader.schema().fields() != file_schema().fields() {
        return None;
    }
    let mut rows = 0;
    for batch in reader.build().ok()? {
        let batch = batch.ok()?;
        rows += batch.num_rows() as u64;
        out.write_batch(&batch);
    }
    Some(rows)
}

fn partition_of(add: &Add) -> Partition {
    let value = |k: &str| add.partition_values.get(k).cloned().flatten();
    let date = value("event_date").and_then(|d| {
        let mut parts = d.split('-').map(|p| p.parse::<u32>().ok());
        Some((
            parts.next()?? as i32,
            parts.next()?? as u8,
            parts.next()?? as u8,
        ))
    });
    Partition {
        date,
        hour: value("event_hour").and_then(|h| h.parse().ok()),
    }
}

/// Deletes the data files the table no longer references and no reader
/// may still need: unreferenced, not named by an intent, last written
/// before the retention, and not removed within it. Only Parquet files
/// outside `_delta_log/` and hidden folders are considered.
async fn vacuum(
    log: &TableLog,
    listed: &[ObjectMeta],
    snapshot: &Snapshot,
    retention: Duration,
    keep: &HashSet<String>,
    now_ms: i64,
) -> Result<usize, LogError> {
    let cutoff = now_ms - retention.as_millis() as i64;
    let prefix = format!("{}/", log.root);
    let mut deleted = 0;
    for object in listed {
        let Some(path) = object.name.strip_prefix(&prefix) else {
            continue;
        };
        let hidden = path
            .split('/')
            .any(|s| s.starts_with('_') || s.starts_with('.'));
        let recently_removed = snapshot
            .tombstones
            .get(path)
            .is_some_and(|r| r.deletion_timestamp.unwrap_or(i64::MAX) > cutoff);
        if hidden
            || !path.ends_with(".parquet")
            || snapshot.files.contains_key(path)
            || keep.contains(path)
            || object.last_modified_ms > cutoff
            || recently_removed
        {
            continue;
        }
        log.requests.delete(&object.name).await?;
        deleted += 1;
    }
    if deleted > 0 {
        tracing::info!(table = %log.root, files = deleted, "Vacuum deleted files no table version needs any more.");
    }
    Ok(deleted)
}

/// Deletes the log files no reader within `retention` needs (Delta's
/// metadata cleanup): commits, checkpoints and checksums of versions
/// before the newest checkpoint last written more than `retention` ago.
/// Every version since that checkpoint stays readable, so time travel
/// reaches back at least `retention`. Oldest first, so a cleanup cut
/// short leaves the log a contiguous run from that checkpoint on.
async fn clean_log(
    log: &TableLog,
    listed: &[ObjectMeta],
    retention: Duration,
    now_ms: i64,
) -> Result<usize, LogError> {
    let cutoff = now_ms - retention.as_millis() as i64;
    let prefix = format!("{}/_delta_log/", log.root);
    let files: Vec<(i64, &ObjectMeta, bool)> = listed
        .iter()
        .filter_map(|o| {
            let (version, checkpoint) = log_file_version(o.name.strip_prefix(&prefix)?)?;
            Some((version, o, checkpoint))
        })
        .collect();
    let Some(keep_from) = files
        .iter()
        .filter(|(_, o, checkpoint)| *checkpoint && o.last_modified_ms <= cutoff)
        .map(|(v, _, _)| *v)
        .max()
    else {
        return Ok(0);
    };
    let mut old: Vec<&(i64, &ObjectMeta, bool)> =
        files.iter().filter(|(v, _, _)| *v < keep_from).collect();
    old.sort_by_key(|(v, o, _)| (*v, o.name.clone()));
    for (_, object, _) in &old {
        log.requests.delete(&object.name).await?;
    }
    if !old.is_empty() {
        tracing::info!(table = %log.root, files = old.len(), from_version = keep_from, "Log files past the log retention deleted; the log now starts at a checkpoint.");
    }
    Ok(old.len())
}

/// The version of a `_delta_log/` file name, and whether it is a
/// single-file checkpoint: `<20 digits>.json`, `.checkpoint.parquet`,
/// `.checkpoint.<part>.<parts>.parquet` or `.crc`. Anything else
/// (`_last_checkpoint`, other writers' folders) is `None` and kept.
fn log_file_version(name: &str) -> Option<(i64, bool)> {
    let (digits, rest) = name.split_at_checked(20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version = digits.parse().ok()?;
    let checkpoint = rest == ".checkpoint.parquet";
    let multipart = rest.starts_with(".checkpoint.") && rest.ends_with(".parquet");
    (checkpoint || multipart || rest == ".json" || rest == ".crc").then_some((version, checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_are_known_by_name() {
        let v = |n: &str| log_file_version(n);
        assert_eq!(v("00000000000000000042.json"), Some((42, false)));
        assert_eq!(
            v("00000000000000000040.checkpoint.parquet"),
            Some((40, true))
        );
        assert_eq!(
            v("00000000000000000040.checkpoint.0000000001.0000000002.parquet"),
            Some((40, false))
        );
        assert_eq!(v("00000000000000000041.crc"), Some((41, false)));
        for kept in [
            "_last_checkpoint",
            "00000000000000000041.json.tmp",
            "0000000000000000004.json",
            "_commits/00000000000000000041.json",
        ] {
            assert_eq!(v(kept), None, "{kept}");
        }
    }
    use crate::sinks::adls_delta::log::{Metadata, Protocol};

    fn add(path: &str, size: i64, date: &str) -> Add {
        Add {
            path: path.into(),
            partition_values: [("event_date".to_string(), Some(date.to_string()))].into(),
            size,
            modification_time: 0,
            data_change: true,
            stats: None,
        }
    }

    #[test]
    fn plans_bins_of_similar_small_files() {
        let mut files = BTreeMap::new();
        // 9 small files of one day, 3 of another, one large file.
        for i in 0..9 {
            let a = add(&format!("d1/s{i}"), 10_000, "2024-01-01");
            files.insert(a.path.clone(), a);
        }
        for i in 0..3 {
            let a = add(&format!("d2/s{i}"), 10_000, "2024-01-02");
            files.insert(a.path.clone(), a);
        }
        let big = add("d1/big", 60_000_000, "2024-01-01");
        files.insert(big.path.clone(), big);
        let snapshot = Snapshot {
            version: 3,
            protocol: Protocol::ours(),
            metadata: Metadata {
                id: "x".into(),
                name: None,
                description: None,
                format: Default::default(),
                schema_string: String::new(),
                partition_columns: vec![],
                configuration: Default::default(),
                created_time: None,
            },
            files,
            tombstones: BTreeMap::new(),
            txns: Default::default(),
        };
        let bins = plan(&snapshot, 64 << 20, 8);
        assert_eq!(bins.len(), 1);
        assert_eq!(bins[0].len(), 9);
        assert!(bins[0].iter().all(|a| a.path.starts_with("d1/s")));
        // A target of 25 KB packs them two by two (and a last single file
        // is left alone).
        let bins = plan(&snapshot, 25_000, 3);
        assert!(
            bins.iter().all(|b| b.len() == 2),
            "{:?}",
            bins.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(bins.len(), 5);
        assert_eq!(
            partition_of(&bins[0][0]),
            Partition {
                date: Some((2024, 1, 1)),
                hour: None
            }
        );
    }
}
