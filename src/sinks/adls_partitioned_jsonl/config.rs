//! Options of the `adls_partitioned_jsonl` sink.

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;

use futures::FutureExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    batcher::BatchLimits,
    layout::{Compression, Layout, Mode},
    roll::{Commit, RollConfig, RollPolicy},
    sink::{AdlsSink, SinkSettings},
    spill::Spill,
    state::SinkState,
};
pub use crate::azure::auth::AuthConfig;
use crate::{
    backoff::Backoff,
    codecs::json::ExtendedJsonMode,
    config::ComponentConfig,
    config::OptionError,
    retry::RetryPolicy,
    sinks::{
        util::storage::{LakeOptions, Storage},
        FileTarget, Healthcheck, SinkConfig, SinkContext, StreamSink,
    },
    snowflake::file_pattern::FilePattern,
};

/// How change events are written as JSON.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodingConfig {
    /// How BSON values are written: MongoDB Extended JSON v2 (relaxed or
    /// canonical), or plain JSON scalars that load cleanly into Snowflake
    /// VARIANT columns.
    #[serde(default)]
    pub extended_json: ExtendedJsonMode,
}

/// When a batch is written: one batch is one write (Put Block) to one file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Encoded bytes that trigger a write. The default, 4.5 MB, is just
    /// above the 4 MiB from which Azure takes a block on its high-throughput
    /// path, and keeps the agent's peak memory under 100 MB with one hot
    /// collection (each file has a batch filling and up to
    /// `request.concurrency_per_file` in flight).
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: usize,
    /// Events that trigger a write.
    #[serde(default = "default_batch_events")]
    pub max_events: usize,
    /// Seconds after a batch's first event that trigger a write.
    #[serde(default = "default_batch_timeout")]
    pub timeout_secs: f64,
    /// Encoded bytes waiting in batches in memory across all files. Past
    /// it the largest batches move to the local spill (`spill_max_bytes`),
    /// or, once that is full, are written early, and intake pauses until
    /// they are taken. So memory is bounded by this budget plus the bytes
    /// in flight (`request.concurrency` × `batch.max_bytes`), however many
    /// collections are active.
    #[serde(default = "default_batch_total_bytes")]
    pub max_total_bytes: usize,
    /// Bytes of pending batches that may wait on local disk when many
    /// files are active at once and `max_total_bytes` is reached, so that
    /// each file is still written in few large blocks rather than many
    /// small ones (a storage account bills per request). Spilled batches
    /// are still written when due (`timeout_secs`, `max_bytes`, the source
    /// caught up), so the lake lags no more than without. It is a cache:
    /// events are acknowledged only once storage holds them, so losing it
    /// costs a replay, not data. The files are unlinked temporary files,
    /// freed by the system when the agent exits, however it exits. `0`
    /// turns the spill off.
    #[serde(default = "default_spill_bytes")]
    pub spill_max_bytes: u64,
    /// The folder of the spill. Default: the system's temporary folder
    /// (`TMPDIR`, else `/tmp`). Use a disk, not a `tmpfs`, which would
    /// hold the spill in memory.
    #[serde(default)]
    pub spill_dir: Option<PathBuf>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_batch_bytes(),
            max_events: default_batch_events(),
            timeout_secs: default_batch_timeout(),
            max_total_bytes: default_batch_total_bytes(),
            spill_max_bytes: default_spill_bytes(),
            spill_dir: None,
        }
    }
}

/// Storage requests: concurrency, timeouts and retries.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// Full-size requests in flight at once, across files: the data in
    /// flight is bounded by `concurrency` × `batch.max_bytes`. Smaller
    /// blocks (many active collections share the pending budget and the
    /// spill is off or full, so each file's blocks are small) go more at a
    /// time within those bytes, up
    /// to 16 × `concurrency` requests, since against cloud storage a drain
    /// of small blocks is bound by round trips (docs/benchmarks.md).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Put Blocks of one file in flight at once (`commit = "on_seal"`;
    /// `every_batch` writes a file one request at a time). Blocks are
    /// recorded and acknowledged in stream order whatever order storage
    /// answers in. Each holds up to `batch.max_bytes` in memory.
    #[serde(default = "default_concurrency_per_file")]
    pub concurrency_per_file: usize,
    /// Seconds before one request attempt is abandoned and retried.
    #[serde(default = "default_request_timeout")]
    pub timeout_secs: f64,
    /// Retries after a retriable failure (408, 429, 500, 502, 503, 504,
    /// timeouts, connection errors), with exponential backoff and jitter;
    /// `Retry-After` is honoured. After the last retry the write is held
    /// and made again, backing off up to `retry_max_backoff_secs`, until
    /// storage answers: its events stay unacknowledged (the checkpoint
    /// holds), later events of its window wait, and one ERROR line a
    /// minute says what is held back since when; no restart is needed. A
    /// 403 or 404 (credentials, a missing filesystem) is not retried: the
    /// batch's events are reported as not delivered and later events of
    /// that window are held back until a restart, which replays them all.
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
            concurrency_per_file: default_concurrency_per_file(),
            timeout_secs: default_request_timeout(),
            retry_attempts: default_retry_attempts(),
            retry_initial_backoff_secs: default_initial_backoff(),
            retry_max_backoff_secs: default_max_backoff(),
        }
    }
}

/// Options of the `adls_partitioned_jsonl` sink.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdlsPartitionedJsonlConfig {
    /// `https://<account>.dfs.core.windows.net` or
    /// `https://<account>.blob.core.windows.net` (both address the same
    /// files; writes go through the Blob endpoint), an emulator URL
    /// `http://127.0.0.1:<port>/<account>`, or `file:///abs/path` to write
    /// the same layout to local disk.
    pub account_url: String,
    /// The filesystem (container) to write into; for `file://`, a folder
    /// under the path.
    pub filesystem: String,
    /// Create the filesystem when it does not exist (default: a missing
    /// filesystem fails the healthcheck).
    #[serde(default)]
    pub create_filesystem: bool,
    /// Credentials: exactly one kind (none for `file://`). Secrets are
    /// never logged. Entra credentials need https. Shared Key is signed by
    /// the project's own pipeline policy (the SDK has none), proven against
    /// Azurite.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Folder template: `{{ ns.db }}`, `{{ ns.coll }}` and strftime fields of
    /// the window start.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// File name template without extension; size rolls add `-part-0001`,
    /// `-part-0002`... With windows shorter than an hour use finer fields
    /// (`events-%Y%m%d-%H%M%S`): a template that gives two windows one name
    /// is a config error.
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// IANA time zone for windows and path fields, e.g. `Europe/Paris`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// How events map to files.
    #[serde(default)]
    pub mode: Mode,
    /// When rolling files become visible.
    #[serde(default)]
    pub commit: Commit,
    /// Compression of the files.
    #[serde(default)]
    pub compression: Compression,
    /// How change events are written as JSON.
    #[serde(default)]
    pub encoding: EncodingConfig,
    /// When a batch of events is written: one batch is one write (Put
    /// Block) to one file.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Storage requests: concurrency, timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// When a file is sealed (made visible under its final name).
    #[serde(default)]
    pub roll: RollConfig,
}

fn default_batch_bytes() -> usize {
    4_500_000
}
fn default_batch_events() -> usize {
    100_000
}
fn default_batch_total_bytes() -> usize {
    32_000_000
}
fn default_spill_bytes() -> u64 {
    512 << 20
}
fn default_batch_timeout() -> f64 {
    5.0
}
fn default_concurrency() -> usize {
    8
}
fn default_concurrency_per_file() -> usize {
    4
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
fn default_path_prefix() -> String {
    "{{ ns.db }}/{{ ns.coll }}/year=%Y/month=%m/day=%d/hour=%H/".into()
}
fn default_file_name() -> String {
    "events-%Y%m%d-%H".into()
}
fn default_timezone() -> String {
    "UTC".into()
}

impl AdlsPartitionedJsonlConfig {
    /// Where the lake is.
    pub fn lake(&self) -> LakeOptions<'_> {
        LakeOptions {
            account_url: &self.account_url,
            filesystem: &self.filesystem,
            create_filesystem: self.create_filesystem,
            auth: &self.auth,
        }
    }

    /// A `file://` lake on local disk rather than an Azure account.
    pub fn is_local(&self) -> bool {
        self.lake().is_local()
    }

    /// The sink's runtime settings, from options that passed their checks.
    pub(super) fn settings(&self) -> SinkSettings {
        let request = &self.request;
        SinkSettings {
            limits: BatchLimits {
                max_bytes: self.batch.max_bytes,
                max_events: self.batch.max_events,
                max_total_bytes: self.batch.max_total_bytes,
            },
            commit: self.commit,
            compression: self.compression,
            json_mode: self.encoding.extended_json,
            roll: RollPolicy::new(&self.roll, self.batch.timeout_secs),
            // One backoff for a request's retries and for held writes.
            retry: RetryPolicy {
                attempts: request.retry_attempts,
                backoff: Backoff::new(
                    Duration::from_secs_f64(request.retry_initial_backoff_secs),
                    Duration::from_secs_f64(request.retry_max_backoff_secs),
                ),
                timeout: Duration::from_secs_f64(request.timeout_secs),
            },
            concurrency: request.concurrency,
            concurrency_per_file: request.concurrency_per_file,
            spill: None,
        }
    }

    /// The local spill (`batch.spill_*`), checked by creating a file in
    /// its folder. A folder the user chose must work; the system's
    /// temporary folder failing only turns the spill off, with a warning.
    pub(super) fn open_spill(&self, key: &str) -> crate::Result<Option<Spill>> {
        // `per_event` writes each event as it comes: nothing to spill.
        if self.batch.spill_max_bytes == 0 || self.mode == Mode::PerEvent {
            return Ok(None);
        }
        let dir = self
            .batch
            .spill_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        match Spill::new(&dir, self.batch.spill_max_bytes) {
            Ok(spill) => Ok(Some(spill)),
            Err(e) if self.batch.spill_dir.is_some() => Err(format!(
                "`batch.spill_dir` {}: cannot create a file there: {e}",
                dir.display()
            )
            .into()),
            Err(e) => {
                tracing::warn!(
                    sink = %key,
                    "The spill is off: cannot create a file in the temporary folder {} ({e}). With many active collections, batches are then written early as small blocks; set `batch.spill_dir` to a writable folder.",
                    dir.display()
                );
                Ok(None)
            }
        }
    }

    /// The pattern of the names this sink writes, for loaders.
    pub fn file_pattern(&self) -> Result<FilePattern, String> {
        let layout = self
            .layout()
            .map_err(|e| crate::config::join_option_errors(&e))?;
        Ok(FilePattern::from_layout(&layout))
    }

    /// The storage backend (no I/O).
    pub fn storage(&self) -> crate::Result<Arc<dyn Storage>> {
        self.lake().open()
    }
}

impl AdlsPartitionedJsonlConfig {
    /// With no state: the files of this sink's layout already in the lake,
    /// which a lost state would have described. A listing that fails is
    /// logged and treated as none found: the healthcheck reports why.
    async fn files_in_lake(
        &self,
        key: &str,
        layout: &Layout,
        storage: &dyn Storage,
    ) -> Vec<String> {
        let pattern = FilePattern::from_layout(layout).path_regex;
        let pattern =
            regex::Regex::new(&format!("^{pattern}$")).expect("the layout's pattern is valid");
        let prefix = self.files_written().map(|t| t.prefix).unwrap_or_default();
        match storage.list(&prefix).await {
            Ok(names) => names.into_iter().filter(|n| pattern.is_match(n)).collect(),
            Err(e) => {
                tracing::warn!(
                    sink = %key,
                    "The sink has no state yet and could not list the lake to check that it holds none of its files: {e}"
                );
                Vec::new()
            }
        }
    }
}

#[async_trait]
#[typetag::serde(name = "adls_partitioned_jsonl")]
impl SinkConfig for AdlsPartitionedJsonlConfig {
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)> {
        let layout = self
            .check()
            .map_err(|e| crate::config::join_option_errors(&e))?;
        let storage = self.storage()?;
        let state = cx
            .state
            .clone()
            .ok_or("the global `data_dir` (or a `[state]` store) must be set")?;
        let state = SinkState::load(state).await?;
        let healthcheck = {
            let storage = Arc::clone(&storage);
            async move { storage.healthcheck(false).await.map(|_| ()) }.boxed()
        };
        tracing::info!(sink = %cx.key, "Writing to {}.", storage.describe());
        let lake_files = if state.found() || layout.mode() == Mode::PerEvent {
            Vec::new()
        } else {
            self.files_in_lake(&cx.key, &layout, storage.as_ref()).await
        };
        let mut settings = self.settings();
        settings.spill = self.open_spill(&cx.key)?;
        let sink = AdlsSink::new(settings, layout, storage, state, cx, lake_files);
        Ok((Box::new(sink), healthcheck))
    }

    fn files_written(&self) -> Option<FileTarget> {
        self.lake().file_target(&self.path_prefix)
    }
}

#[async_trait]
impl ComponentConfig for AdlsPartitionedJsonlConfig {
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
            SinkState::load(state.clone())
                .await
                .map(|state| {
                    let roll = RollPolicy::new(&self.roll, self.batch.timeout_secs);
                    state.describe(|f| (roll.closes_at(&f.key), roll.max_age_at(f)))
                })
                .map_err(|e| e.to_string()),
        )
    }

    fn component_type(&self) -> &'static str {
        "adls_partitioned_jsonl"
    }
}
