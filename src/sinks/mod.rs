//! Sinks: where events leave the topology.
//!
//! `build` returns the running sink and its healthcheck. A sink consumes a
//! stream of events and must finalize every event it takes: `Delivered`
//! once the data is durable, `Errored`/`Rejected` otherwise.

pub mod adls_delta;
pub mod adls_partitioned_jsonl;
pub mod blackhole;
pub mod console;
pub mod util;

use async_trait::async_trait;
use futures::{future::BoxFuture, stream::BoxStream};

use crate::{
    config::{ComponentConfig, GlobalOptions},
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

    /// What the sink found of its state, for the sources' start check;
    /// `None` for sinks whose exactly-once does not rest on their state.
    fn state_report(&self) -> Option<crate::lineage::SinkStateReport> {
        None
    }
}

/// Where a sink's files go: a storage location (account and filesystem,
/// or a folder) and the literal start of every object name it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTarget {
    pub location: String,
    pub prefix: String,
}

impl FileTarget {
    /// Whether two sinks could write the same object name.
    pub fn overlaps(&self, other: &FileTarget) -> bool {
        self.location == other.location
            && (self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix))
    }
}

/// Everything a sink needs from the runtime.
pub struct SinkContext {
    /// The component id (`[sinks.<id>]`).
    pub key: String,
    pub globals: GlobalOptions,
    /// The component's folder of the state store (`None` without a
    /// `data_dir` or `[state]` store).
    pub state: Option<crate::state_store::StateHandle>,
    pub tags: ComponentTags,
    /// Fires when the agent starts to stop (the sources stop reading). A
    /// sink still drains its input to the end; this only lets it give up
    /// work that cannot finish (writes held while storage is down).
    pub stopping: crate::shutdown::ShutdownSignal,
    /// The sources this sink reads (its `inputs`).
    pub inputs: Vec<String>,
    /// The pipeline id of each source, known once the sources are built.
    pub pipelines: crate::lineage::Pipelines,
}

#[async_trait]
#[typetag::serde(tag = "type")]
// `Any` lets tools that read a sink's options (`snowflake-sql`) downcast
// `&dyn SinkConfig` to the concrete type by trait upcasting.
pub trait SinkConfig: ComponentConfig + std::any::Any + std::fmt::Debug {
    /// Creates the running sink and its healthcheck.
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)>;

    /// The files the sink writes, so the config check can refuse two sinks
    /// writing the same ones; `None` for sinks that write no files.
    fn files_written(&self) -> Option<FileTarget> {
        None
    }
}
