//! Configuration: Vector's TOML layout (`[sources.<id>]`, `[sinks.<id>]`,
//! `inputs`, `buffer`, `healthcheck`, global `data_dir`,
//! `acknowledgements`, `api`), loaded from one or more files.
//!
//! Loading goes file by file: interpolate the environment
//! ([`vars`]), deserialize with typed structs whose unknown keys are errors,
//! then merge and check the graph ([`graph`]). Every error carries the file
//! and 1-based line so a person can go straight to it.

mod errors;
pub mod graph;
pub mod loading;
pub mod schema;
pub mod state;
pub mod vars;

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{
    de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};

pub use errors::{ConfigError, ConfigErrors};
pub use loading::load_from_paths;
pub use state::{StateConfig, StoreKind};

use crate::{sinks::SinkConfig, sources::SourceConfig};

/// Exit code for configuration errors (Vector uses sysexits' EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

/// An option value that a start would refuse, found when the config is
/// loaded (nothing outside the files is touched): the option's dotted key
/// within its component (`roll.max_bytes`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    pub key: String,
    pub message: String,
}

impl OptionError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for OptionError {}

/// Several option errors as one message.
pub fn join_option_errors(errors: &[OptionError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the options of every component, source or sink, provide besides
/// building it.
#[async_trait::async_trait]
pub trait ComponentConfig: Send + Sync {
    /// The `type` name, for metrics tags.
    fn component_type(&self) -> &'static str;

    /// Every check of the options that needs no network or disk, run when
    /// the config is loaded; each error names its option.
    fn validate(&self) -> Result<(), Vec<OptionError>> {
        Ok(())
    }

    /// `validate`'s healthcheck: reaches what the component reads or writes
    /// without building it, so nothing is created (no state directory, no
    /// filesystem). The answer says what the check wrote, if anything.
    async fn dry_healthcheck(&self) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// Whether the component keeps state under `data_dir`.
    fn needs_data_dir(&self) -> bool {
        false
    }

    /// For `mongo-adls state show`: what the component's state (its
    /// folder of the state store) says, as lines for people, read without
    /// changing anything. `None` for components without state.
    async fn describe_state(
        &self,
        _state: &crate::state_store::StateHandle,
    ) -> Option<Result<Vec<String>, String>> {
        None
    }
}

/// Where a component was declared.
#[derive(Clone, Debug, Default)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// End-to-end acknowledgements. On by default, unlike Vector: this tool
/// exists to move every change exactly once, which needs end-to-end
/// acknowledgements so a source commits only what its sinks made durable.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgementsConfig {
    /// Sources commit their position only after every sink reported the
    /// event durable. Turning this off lets sources commit on send, which can
    /// lose events on a crash.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for AcknowledgementsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The HTTP endpoint with `/health` and `/metrics`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to serve `GET /health` and `GET /metrics` (Prometheus text)
    /// on, e.g. `127.0.0.1:8686`. Off when unset; a busy address stops the
    /// agent at start.
    pub address: Option<SocketAddr>,
    /// Seconds a component may keep failing (retrying a write, reconnecting
    /// to MongoDB) before `/health` answers 503. A failed healthcheck, or
    /// events held back until a restart, answer 503 at once.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            address: None,
            unhealthy_after_secs: default_unhealthy_after(),
        }
    }
}

fn default_unhealthy_after() -> u64 {
    60
}

/// Healthchecks at start, for every sink (Vector's names).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthchecksConfig {
    /// Run sink healthchecks at start.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Exit 78 if a healthcheck fails instead of logging and going on.
    #[serde(default)]
    pub require_healthy: bool,
}

impl Default for HealthchecksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            require_healthy: false,
        }
    }
}

/// Options that every component can see.
#[derive(Clone, Debug, Default)]
pub struct GlobalOptions {
    /// Root for component state (checkpoints, sink state).
    pub data_dir: Option<PathBuf>,
    pub acknowledgements: AcknowledgementsConfig,
    pub api: ApiConfig,
    pub healthchecks: HealthchecksConfig,
    /// Where state lives (`[state]`).
    pub state: StateConfig,
    /// `--accept-data-gap`: start although state was lost, logging the
    /// gap, instead of refusing to start.
    pub accept_data_gap: bool,
}

impl GlobalOptions {
    /// The state directory of one component, `data_dir/<component_id>/`.
    pub fn component_data_dir(&self, id: &str) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join(id))
    }
}

/// What to do when a buffer is full.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: backpressure reaches the source, nothing is lost.
    #[default]
    Block,
    /// Discard the incoming event (counted in
    /// `component_discarded_events_total{intentional="true"}`).
    DropNewest,
}

/// The kind of buffer in front of a sink.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BufferType {
    /// A bounded in-memory queue. No disk buffer is offered: the MongoDB
    /// source replays from its checkpoint, so memory plus acknowledgements
    /// already loses nothing.
    #[default]
    Memory,
}

/// The buffer in front of a sink.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Buffer kind; only `memory`.
    #[serde(default, rename = "type")]
    pub buffer_type: BufferType,
    /// Events the buffer holds before `when_full` applies.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// What to do when the buffer is full.
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            buffer_type: BufferType::Memory,
            max_events: default_max_events(),
            when_full: WhenFull::Block,
        }
    }
}

/// This sink's healthcheck.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkHealthcheckOptions {
    /// Run this sink's healthcheck at start.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for SinkHealthcheckOptions {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_events() -> usize {
    500
}

/// A sink table: the component's own options plus the options the
/// topology handles for every sink (Vector's `SinkOuter`).
#[derive(Debug)]
pub struct SinkOuter {
    /// Ids of the sources this sink reads from.
    pub inputs: Vec<String>,
    pub buffer: BufferConfig,
    pub healthcheck: SinkHealthcheckOptions,
    pub inner: Box<dyn SinkConfig>,
}

const SINK_OUTER_KEYS: [&str; 3] = ["inputs", "buffer", "healthcheck"];

impl<'de> Deserialize<'de> for SinkOuter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OuterVisitor;

        impl<'de> Visitor<'de> for OuterVisitor {
            type Value = SinkOuter;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sink table")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SinkOuter, A::Error> {
                // The outer keys are taken out of the stream of keys as they
                // come by, so the component's own struct (which denies
                // unknown fields) never sees them, and values are read
                // straight from the TOML deserializer, which keeps the exact
                // line of any error. `#[serde(flatten)]` would buffer the
                // table and lose those lines.
                let mut outer = OuterFields::default();
                let inner = {
                    let access = InterceptOuter {
                        map,
                        outer: &mut outer,
                    };
                    Box::<dyn SinkConfig>::deserialize(de::value::MapAccessDeserializer::new(
                        access,
                    ))?
                };
                Ok(SinkOuter {
                    inputs: outer
                        .inputs
                        .ok_or_else(|| de::Error::missing_field("inputs"))?,
                    buffer: outer.buffer.unwrap_or_default(),
                    healthcheck: outer.healthcheck.unwrap_or_default(),
                    inner,
                })
            }
        }

        deserializer.deserialize_map(OuterVisitor)
    }
}

#[derive(Default)]
struct OuterFields {
    inputs: Option<Vec<String>>,
    buffer: Option<BufferConfig>,
    healthcheck: Option<SinkHealthcheckOptions>,
}

struct InterceptOuter<'a, A> {
    map: A,
    outer: &'a mut OuterFields,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for InterceptOuter<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                return Ok(None);
            };
            match key.as_str() {
                "inputs" => self.outer.inputs = Some(self.map.next_value()?),
                "buffer" => self.outer.buffer = Some(self.map.next_value()?),
                "healthcheck" => self.outer.healthcheck = Some(self.map.next_value()?),
                _ => return seed.deserialize(key.into_deserializer()).map(Some),
            }
            debug_assert!(SINK_OUTER_KEYS.contains(&key.as_str()));
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// One configuration file as written, before merging.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    data_dir: Option<PathBuf>,
    acknowledgements: Option<AcknowledgementsConfig>,
    api: Option<ApiConfig>,
    healthchecks: Option<HealthchecksConfig>,
    state: Option<StateConfig>,
    #[serde(default)]
    sources: IndexMap<String, Box<dyn SourceConfig>>,
    #[serde(default)]
    transforms: IndexMap<String, toml::Value>,
    #[serde(default)]
    sinks: IndexMap<String, SinkOuter>,
}

/// A source as configured, with where it was declared.
#[derive(Debug)]
pub struct SourceOuter {
    pub inner: Box<dyn SourceConfig>,
    pub location: Location,
}

/// A sink as configured, with where it was declared.
#[derive(Debug)]
pub struct SinkEntry {
    pub outer: SinkOuter,
    pub location: Location,
    /// Where `inputs` was written, for graph errors.
    pub inputs_location: Location,
}

/// The merged, validated configuration.
#[derive(Debug, Default)]
pub struct Config {
    pub global: GlobalOptions,
    pub sources: IndexMap<String, SourceOuter>,
    pub sinks: IndexMap<String, SinkEntry>,
}

impl Config {
    /// The sinks that read from `source_id`, in declaration order.
    pub fn sinks_of<'a>(&'a self, source_id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.sinks
            .iter()
            .filter(move |(_, s)| s.outer.inputs.iter().any(|i| i == source_id))
            .map(|(id, _)| id.as_str())
    }

    /// The directory holding a component's state.
    pub fn data_dir(&self) -> Option<&Path> {
        self.global.data_dir.as_deref()
    }
}
