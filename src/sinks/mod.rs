//! Sinks: where events leave the topology.
//!
//! `build` returns the running sink and its healthcheck. A sink consumes a
//! stream of events and must finalize every event it takes: `Delivered`
//! once the data is durable, `Errored`/`Rejected` otherwise.

pub mod adls_partitioned_jsonl;
pub mod azure_common;
pub mod blackhole;
pub mod console;

use async_trait::async_trait;
use futures::{future::BoxFuture, stream::BoxStream};

use crate::{
    config::{GlobalOptions, OptionError},
    event::Event,
    internal_events::ComponentTags,
};

/// Checks at start that the sink can reach and write its destination. The
/// error text says what is wrong and must not contain secrets.
pub type Healthcheck = BoxFuture<'static, Result<(), String>>;

/// A running sink.
#[async_trait]
pub trait StreamSink: Send {
    /// Consumes events until the input ends, then flushes and returns.
    async fn run(self: Box<Self>, input: BoxStream<'static, Event>) -> Result<(), ()>;
}

/// Everything a sink needs from the runtime.
pub struct SinkContext {
    /// The component id (`[sinks.<id>]`).
    pub key: String,
    pub globals: GlobalOptions,
    pub tags: ComponentTags,
}

#[async_trait]
#[typetag::serde(tag = "type")]
// `Any` lets tools that read a sink's options (`snowflake-sql`) downcast
// `&dyn SinkConfig` to the concrete type by trait upcasting.
pub trait SinkConfig: std::any::Any + std::fmt::Debug + Send + Sync {
    /// Creates the running sink and its healthcheck.
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)>;

    /// Every check of the options that needs no network or disk, run when
    /// the config is loaded; each error names its option.
    fn validate(&self) -> Result<(), Vec<OptionError>> {
        Ok(())
    }

    /// `validate`'s healthcheck: reaches what the sink reads or writes
    /// without building it, so nothing is created (no state directory, no
    /// filesystem). The answer says what the check wrote, if anything.
    async fn dry_healthcheck(&self) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// Whether the sink keeps state under `data_dir`.
    fn needs_data_dir(&self) -> bool {
        false
    }

    /// The `type` name, for metrics tags.
    fn component_type(&self) -> &'static str;
}
