//! Options of the `adls_partitioned_jsonl` sink.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    codecs::json::ExtendedJsonMode,
    sinks::{Healthcheck, SinkConfig, SinkContext, StreamSink},
};

/// Credentials. Exactly one kind must be chosen; secrets are never logged.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A SAS token (with or without the leading `?`), needing read, add,
    /// create, write and list permissions on the filesystem.
    #[serde(default)]
    pub sas_token: Option<String>,
    /// The storage account key (Shared Key authorization).
    #[serde(default)]
    pub shared_key: Option<String>,
    /// Service principal: application (client) id, with `client_secret` and
    /// `tenant_id`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Service principal secret.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Microsoft Entra tenant id of the service principal.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Use the managed identity of the VM, container or App Service. With
    /// `client_id` set, that user-assigned identity.
    #[serde(default)]
    pub managed_identity: bool,
    /// Use Kubernetes workload identity (AZURE_TENANT_ID, AZURE_CLIENT_ID,
    /// AZURE_FEDERATED_TOKEN_FILE).
    #[serde(default)]
    pub workload_identity: bool,
    /// Use the signed-in Azure CLI account (`az login`), for development.
    #[serde(default)]
    pub azure_cli: bool,
}

/// `mode`: how events map to files.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Rolling files per namespace and time window (default).
    #[default]
    Rolling,
    /// One file per event with a deterministic name; a replay is a no-op.
    PerEvent,
}

/// `commit`: when rolling files become visible.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Commit {
    /// A file appears under its final name only when sealed and never
    /// changes afterwards (default; safe for COPY INTO, Snowpipe, Auto Loader).
    #[default]
    OnSeal,
    /// The file is visible and grows after every batch, for near-real-time
    /// readers that tolerate changing files.
    EveryBatch,
}

/// `compression` of the files.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    /// `.jsonl.gz`; each batch is one gzip member (concatenated members
    /// are one valid gzip stream).
    Gzip,
}

/// `encoding.*`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingConfig {
    /// `relaxed` (default), `canonical` (MongoDB Extended JSON v2) or
    /// `simplified` (ObjectId as hex, dates as RFC 3339, Decimal128 as string,
    /// Int64 as number; loads cleanly into Snowflake VARIANT).
    #[serde(default)]
    pub extended_json: ExtendedJsonMode,
}

/// `batch.*`: one batch is one write (Put Block) to one file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Encoded bytes that trigger a write.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: usize,
    /// Events that trigger a write.
    #[serde(default = "default_batch_events")]
    pub max_events: usize,
    /// Seconds after a batch's first event that trigger a write.
    #[serde(default = "default_batch_timeout")]
    pub timeout_secs: f64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_batch_bytes(),
            max_events: default_batch_events(),
            timeout_secs: default_batch_timeout(),
        }
    }
}

/// `request.*`: storage requests.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// Requests in flight at once, across files (one file is always written
    /// strictly in order, one request at a time).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds before one request attempt is abandoned and retried.
    #[serde(default = "default_request_timeout")]
    pub timeout_secs: f64,
    /// Retries after a retriable failure (408, 429, 500, 502, 503, 504,
    /// timeouts, connection errors); `Retry-After` is honoured. After the
    /// last one the batch's events are reported as errored.
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

/// `roll.*`: when a file is sealed.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollConfig {
    /// Length of a file's time window in seconds (3600 = hourly files).
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// How long after the event-time watermark passes a window's end late
    /// events may still join its file before it is sealed.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// Seal a file at this size and continue in `-part-0001`, `-part-0002`...
    #[serde(default = "default_roll_bytes")]
    pub max_bytes: u64,
    /// Seal a file this many wall-clock seconds after it was opened, even if
    /// its window is still open (a quiet source without watermarks, a
    /// clock far ahead).
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
}

impl Default for RollConfig {
    fn default() -> Self {
        Self {
            window_secs: default_window(),
            grace_secs: default_grace(),
            max_bytes: default_roll_bytes(),
            max_age_secs: default_max_age(),
        }
    }
}

/// Options of the `adls_partitioned_jsonl` sink.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdlsPartitionedJsonlConfig {
    /// `https://<account>.dfs.core.windows.net` or
    /// `https://<account>.blob.core.windows.net` (both address the same
    /// files; writes go through the Blob endpoint), an emulator URL
    /// `http://127.0.0.1:<port>/<account>`, or `file:///abs/path` to write
    /// the same layout to local disk.
    pub account_url: String,
    /// The filesystem (container) to write into.
    pub filesystem: String,
    /// Create the filesystem when it does not exist (default: a missing
    /// filesystem fails the healthcheck).
    #[serde(default)]
    pub create_filesystem: bool,
    /// Credentials (not needed for `file://`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Folder template: `{{ ns.db }}`, `{{ ns.coll }}` and strftime fields of
    /// the window start.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// File name template without extension; size rolls add `-part-0001`...
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// IANA time zone for windows and path fields (default `UTC`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// `rolling` (default) or `per_event`.
    #[serde(default)]
    pub mode: Mode,
    /// `on_seal` (default) or `every_batch`.
    #[serde(default)]
    pub commit: Commit,
    /// `none` (default) or `gzip`.
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub encoding: EncodingConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub request: RequestConfig,
    #[serde(default)]
    pub roll: RollConfig,
}

fn default_batch_bytes() -> usize {
    8_000_000
}
fn default_batch_events() -> usize {
    100_000
}
fn default_batch_timeout() -> f64 {
    5.0
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
fn default_window() -> u64 {
    3600
}
fn default_grace() -> u64 {
    60
}
fn default_roll_bytes() -> u64 {
    134_217_728
}
fn default_max_age() -> u64 {
    7200
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

#[async_trait]
#[typetag::serde(name = "adls_partitioned_jsonl")]
impl SinkConfig for AdlsPartitionedJsonlConfig {
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)> {
        super::sink::build(self, cx).await
    }

    fn needs_data_dir(&self) -> bool {
        true
    }

    fn component_type(&self) -> &'static str {
        "adls_partitioned_jsonl"
    }
}
