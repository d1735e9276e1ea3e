//! Options of the `adls_delta` sink, their checks at load, and `build`.
//! Options shared with `adls_partitioned_jsonl` keep its names and
//! meaning (`account_url`, `filesystem`, `create_filesystem`, `auth.*`,
//! `path_prefix`, `timezone`, `encoding.extended_json`, `request.*`).

use std::time::Duration;

use async_trait::async_trait;
use chrono_tz::Tz;
use futures::FutureExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    schema::{Compression, PartitionBy},
    sink::{DeltaSink, Settings},
    state::DeltaState,
    table::TableNames,
    upkeep::Vacuum,
};
use crate::{
    azure::auth::AuthConfig,
    backoff::Backoff,
    config::{ComponentConfig, OptionError},
    retry::RetryPolicy,
    sinks::{
        adls_partitioned_jsonl::{config::EncodingConfig, partition::parse_timezone},
        util::storage::LakeOptions,
        FileTarget, Healthcheck, SinkConfig, SinkContext, StreamSink,
    },
};

/// When rows become a table version.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitConfig {
    /// Seconds after a table's first uncommitted row that its rows are
    /// committed as one table version (default 60: about one version a
    /// minute per active table). The source's checkpoint moves only past
    /// committed rows, so this is also how far a restart replays. When a
    /// burst of changes ends, a table holding 4 MiB of them or more
    /// commits at once.
    #[serde(default = "default_commit_interval")]
    pub interval_secs: f64,
    /// Write a Delta checkpoint (the table state as one Parquet file, so
    /// readers need not replay every commit) every this many versions
    /// (default 10, Delta's own default).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            interval_secs: default_commit_interval(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

/// The Parquet data files.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataFilesConfig {
    /// A data file is closed at this many bytes and the next one started;
    /// compaction rewrites small files into files of this size (default
    /// 64 MiB). A table committing less than this per interval gets one
    /// smaller file per commit, which compaction merges later.
    #[serde(default = "default_target_bytes")]
    pub target_bytes: u64,
    /// Encoded bytes of one row group, written to storage as one block
    /// (Put Block) when full (default 4 MiB, from which Azure takes a
    /// block on its high-throughput path). Requests in flight hold up to
    /// `request.concurrency` of them.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: usize,
    /// Row-group bytes in memory across all tables. Past it the largest
    /// row groups are written early, so memory stays bounded however many
    /// collections are active (default 32 MB).
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: usize,
}

impl Default for DataFilesConfig {
    fn default() -> Self {
        Self {
            target_bytes: default_target_bytes(),
            row_group_bytes: default_row_group_bytes(),
            max_total_bytes: default_max_total_bytes(),
        }
    }
}

/// Storage requests: concurrency, timeouts and retries.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// Requests in flight at once (row groups, file and log commits). Each
    /// holds up to `data_files.row_group_bytes` in memory.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds before one request attempt is abandoned and retried.
    #[serde(default = "default_request_timeout")]
    pub timeout_secs: f64,
    /// Retries after a retriable failure (408, 429, 500, 502, 503, 504, timeouts,
    /// connection errors), with exponential backoff and jitter. After the
    /// last one the request is made again every `retry_max_backoff_secs`
    /// until storage answers: its rows stay uncommitted and their events
    /// unacknowledged meanwhile. A 403 or 404 is not retried: the table's
    /// events are reported as not delivered until a restart.
    #[serde(default = "default_retry_attempts")]
    pub retry_attempts: u32,
    /// First backoff in seconds; doubles per attempt, with jitter.
    #[serde(default = "default_initial_backoff")]
    pub retry_initial_backoff_secs: f64,
    /// Longest backoff in seconds.
    #[serde(default = "default_max_backoff")]
    pub retry_max_backoff_secs: f64,
}

impl Default for RequestConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            timeout_secs: default_request_timeout(),
            retry_attempts: default_retry_attempts(),
            retry_initial_backoff_secs: default_initial_backoff(),
            retry_max_backoff_secs: default_max_backoff(),
        }
    }
}

/// Rewriting small files into large ones.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// Compact small files (default on). Checked at each Delta checkpoint:
    /// in each partition, files of similar size (within a factor of four)
    /// and under half of `data_files.target_bytes` are rewritten together
    /// into files of up to the target size once there are `min_files` of
    /// them, in one commit with `dataChange = false` (readers see the same
    /// rows before and after; streaming readers skip it).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Files of one size class that trigger a rewrite (default 8). Each row
    /// is rewritten about log4(target / first file size) times in all.
    #[serde(default = "default_min_files")]
    pub min_files: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_files: default_min_files(),
        }
    }
}

/// Removing files no version needs any more.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VacuumConfig {
    /// Delete data files that the table no longer references (replaced by
    /// compaction, or written by an attempt that never committed) once they
    /// are older than `retention_hours` (default on).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a file the table no longer references is kept, in hours
    /// (default 168, Delta's own default): readers of older versions (time
    /// travel, queries that started before a compaction) need them this
    /// long, so a shorter retention than your longest query can fail it.
    /// Files this sink is still writing or committing are never deleted,
    /// whatever their age.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: f64,
    /// Hours between two vacuums of a table (default 24).
    #[serde(default = "default_vacuum_interval_hours")]
    pub interval_hours: f64,
    /// How long the table's log (`_delta_log/` commits and checkpoints) is
    /// kept, in hours (default 720, Delta's `logRetentionDuration` of 30
    /// days). Each vacuum deletes the log files before the newest
    /// checkpoint written longer ago than this, so time travel reaches at
    /// least this far back and the log stops growing (a commit a minute
    /// is half a million files a year).
    #[serde(default = "default_log_retention_hours")]
    pub log_retention_hours: f64,
}

impl Default for VacuumConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention_hours: default_retention_hours(),
            interval_hours: default_vacuum_interval_hours(),
            log_retention_hours: default_log_retention_hours(),
        }
    }
}

/// Options of the `adls_delta` sink.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdlsDeltaConfig {
    /// `https://<account>.dfs.core.windows.net` or
    /// `https://<account>.blob.core.windows.net` (both address the same
    /// files; writes go through the Blob endpoint), an emulator URL
    /// `http://127.0.0.1:<port>/<account>`, or `file:///abs/path` for
    /// tables on local disk.
    pub account_url: String,
    /// The filesystem (container) holding the tables; for `file://`, a
    /// folder under the path.
    pub filesystem: String,
    /// Create the filesystem when it does not exist (default: a missing
    /// filesystem fails the healthcheck).
    #[serde(default)]
    pub create_filesystem: bool,
    /// Credentials: exactly one kind (none for `file://`), as for
    /// `adls_partitioned_jsonl`. Needs read, add, create, write, delete and
    /// list (delete for vacuum).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Where each collection's table goes: a folder template with
    /// `{{ ns.db }}` and `{{ ns.coll }}` (made safe for a blob path as in
    /// `adls_partitioned_jsonl`). Default `{{ ns.db }}/{{ ns.coll }}`: one
    /// Delta table per collection.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// IANA time zone of the partition columns, e.g. `Europe/Paris`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The partition columns, from each event's time (clusterTime, then
    /// wallTime, then the ObjectId time of the document key, then now):
    /// `day` (default: `event_date`), `hour` (`event_date` and
    /// `event_hour`) or `none`.
    #[serde(default)]
    pub partition_by: PartitionBy,
    /// Parquet compression: `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// How the document parts (`full_document`, `document_key`,
    /// `update_description`, ...) are written as JSON strings.
    #[serde(default)]
    pub encoding: EncodingConfig,
    /// When rows become a table version, and Delta checkpoints.
    #[serde(default)]
    pub commit: CommitConfig,
    /// Sizes of the Parquet data files and of what is held in memory.
    #[serde(default)]
    pub data_files: DataFilesConfig,
    /// Storage requests: concurrency, timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// Rewriting small files into large ones.
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// Removing files no version needs any more.
    #[serde(default)]
    pub vacuum: VacuumConfig,
}

fn default_path_prefix() -> String {
    "{{ ns.db }}/{{ ns.coll }}".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_commit_interval() -> f64 {
    60.0
}
fn default_checkpoint_interval() -> u64 {
    10
}
fn default_target_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_row_group_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_total_bytes() -> usize {
    32_000_000
}
fn default_concurrency() -> usize {
    8
}
fn default_request_timeout() -> f64 {
    60.0
}
fn default_retry_attempts() -> u32 {
    12
}
fn default_initial_backoff() -> f64 {
    0.5
}
fn default_max_backoff() -> f64 {
    30.0
}
fn default_true() -> bool {
    true
}
fn default_min_files() -> usize {
    8
}
fn default_retention_hours() -> f64 {
    168.0
}
fn default_log_retention_hours() -> f64 {
    720.0
}

fn default_vacuum_interval_hours() -> f64 {
    24.0
}

impl AdlsDeltaConfig {
    /// Where the lake is.
    pub fn lake(&self) -> LakeOptions<'_> {
        LakeOptions {
            account_url: &self.account_url,
            filesystem: &self.filesystem,
            create_filesystem: self.create_filesystem,
            auth: &self.auth,
        }
    }

    /// Every check that needs no network, each error naming its option:
    /// what `validate --no-environment` and a start both run. The table
    /// names and settings, checked.
    pub fn check(&self) -> Result<(TableNames, Settings), Vec<OptionError>> {
        let mut errors = Vec::new();
        self.lake().check(&mut errors);
        let names = TableNames::new(&self.path_prefix)
            .map_err(|e| errors.push(OptionError::new("path_prefix", e)))
            .ok();
        let tz: Option<Tz> = parse_timezone(&self.timezone)
            .map_err(|e| errors.push(e))
            .ok();
        self.check_numbers(&mut errors);
        match (names, tz) {
            (Some(names), Some(tz)) if errors.is_empty() => Ok((names, self.settings(tz))),
            _ => Err(errors),
        }
    }

    fn check_numbers(&self, errors: &mut Vec<OptionError>) {
        let positive = |key: &str, value: f64, errors: &mut Vec<OptionError>| {
            if !(value.is_finite() && value > 0.0) {
                errors.push(OptionError::new(key, "must be a number above 0"));
            }
        };
        positive("commit.interval_secs", self.commit.interval_secs, errors);
        positive("request.timeout_secs", self.request.timeout_secs, errors);
        positive("vacuum.interval_hours", self.vacuum.interval_hours, errors);
        positive(
            "vacuum.log_retention_hours",
            self.vacuum.log_retention_hours,
            errors,
        );
        for (key, value) in [
            (
                "request.retry_initial_backoff_secs",
                self.request.retry_initial_backoff_secs,
            ),
            ("vacuum.retention_hours", self.vacuum.retention_hours),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                errors.push(OptionError::new(key, "must be a number, 0 or more"));
            }
        }
        if self
            .request
            .retry_max_backoff_secs
            .partial_cmp(&self.request.retry_initial_backoff_secs)
            == Some(std::cmp::Ordering::Less)
        {
            errors.push(OptionError::new(
                "request.retry_max_backoff_secs",
                "must be at least `request.retry_initial_backoff_secs`",
            ));
        }
        for (key, value) in [
            (
                "commit.checkpoint_interval",
                self.commit.checkpoint_interval,
            ),
            ("data_files.target_bytes", self.data_files.target_bytes),
            (
                "data_files.row_group_bytes",
                self.data_files.row_group_bytes as u64,
            ),
            ("request.concurrency", self.request.concurrency as u64),
        ] {
            if value == 0 {
                errors.push(OptionError::new(key, "must be at least 1"));
            }
        }
        if self.compaction.min_files < 2 {
            errors.push(OptionError::new(
                "compaction.min_files",
                "must be at least 2 (one file is never rewritten alone)",
            ));
        }
        if self.data_files.max_total_bytes < self.data_files.row_group_bytes {
            errors.push(OptionError::new(
                "data_files.max_total_bytes",
                "must be at least `data_files.row_group_bytes` (one full row group)",
            ));
        }
    }

    fn settings(&self, tz: Tz) -> Settings {
        let request = &self.request;
        let backoff = Backoff::new(
            Duration::from_secs_f64(request.retry_initial_backoff_secs),
            Duration::from_secs_f64(request.retry_max_backoff_secs),
        );
        Settings {
            tz,
            partition_by: self.partition_by,
            compression: self.compression,
            json_mode: self.encoding.extended_json,
            commit_interval: Duration::from_secs_f64(self.commit.interval_secs),
            checkpoint_interval: self.commit.checkpoint_interval,
            target_bytes: self.data_files.target_bytes,
            row_group_bytes: self.data_files.row_group_bytes,
            max_total_bytes: self.data_files.max_total_bytes,
            concurrency: request.concurrency,
            retry: RetryPolicy {
                attempts: request.retry_attempts,
                backoff,
                timeout: Duration::from_secs_f64(request.timeout_secs),
            },
            compaction_min_files: self.compaction.enabled.then_some(self.compaction.min_files),
            vacuum: self.vacuum.enabled.then(|| Vacuum {
                retention: Duration::from_secs_f64(self.vacuum.retention_hours * 3600.0),
                interval: Duration::from_secs_f64(self.vacuum.interval_hours * 3600.0),
                log_retention: Duration::from_secs_f64(self.vacuum.log_retention_hours * 3600.0),
            }),
        }
    }
}

#[async_trait]
#[typetag::serde(name = "adls_delta")]
impl SinkConfig for AdlsDeltaConfig {
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)> {
        let (names, settings) = self
            .check()
            .map_err(|e| crate::config::join_option_errors(&e))?;
        let storage = self.lake().open()?;
        let state = cx
            .state
            .clone()
            .ok_or("the global `data_dir` (or a `[state]` store) must be set")?;
        let state = DeltaState::load(state).await?;
        let healthcheck = {
            let storage = std::sync::Arc::clone(&storage);
            async move { storage.healthcheck(false).await.map(|_| ()) }.boxed()
        };
        tracing::info!(sink = %cx.key, "Writing Delta tables to {}.", storage.describe());
        let lake_table = if state.found() {
            None
        } else {
            names.table_in_lake(storage.as_ref(), &cx.key).await
        };
        let sink = DeltaSink::new(settings, names, storage, state, cx, lake_table);
        Ok((Box::new(sink), healthcheck))
    }

    fn files_written(&self) -> Option<FileTarget> {
        self.lake().file_target(&self.path_prefix)
    }
}

#[async_trait]
impl ComponentConfig for AdlsDeltaConfig {
    fn validate(&self) -> Result<(), Vec<OptionError>> {
        self.check().map(|_| ())
    }

    async fn dry_healthcheck(&self) -> Result<Option<String>, String> {
        self.lake().dry_healthcheck().await
    }

    fn needs_data_dir(&self) -> bool {
        true
    }

    async fn describe_state(
        &self,
        state: &crate::state_store::StateHandle,
    ) -> Option<Result<Vec<String>, String>> {
        Some(
            DeltaState::load(state.clone())
                .await
                .map(|state| state.describe())
                .map_err(|e| e.to_string()),
        )
    }

    fn component_type(&self) -> &'static str {
        "adls_delta"
    }
}
