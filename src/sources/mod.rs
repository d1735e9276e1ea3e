//! Sources: where events enter the topology.
//!
//! A source type is a config struct registered with `typetag` under its
//! `type` name. `build` turns the config into a future that runs until its
//! [`ShutdownSignal`] fires, sending events through [`SourceSender`].

pub mod demo_events;
pub mod mongodb_change_stream;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::{
    config::{ComponentConfig, GlobalOptions},
    internal_events::ComponentTags,
    shutdown::ShutdownSignal,
    topology::SourceSender,
};

/// What a running source is: a future that ends when the source has stopped
/// and flushed its checkpoint.
pub type Source = BoxFuture<'static, Result<(), ()>>;

/// Everything a source needs from the runtime.
pub struct SourceContext {
    /// The component id (`[sources.<id>]`).
    pub key: String,
    pub globals: GlobalOptions,
    /// The component's folder of the state store (`None` without a
    /// `data_dir` or `[state]` store).
    pub state: Option<crate::state_store::StateHandle>,
    /// Fires when the source must stop reading; in-flight acknowledgements
    /// may still be awaited afterwards, up to the graceful shutdown limit.
    pub shutdown: ShutdownSignal,
    pub out: SourceSender,
    /// What each sink this source feeds found of its state, for the start
    /// check (sinks whose exactly-once rests on their state only).
    pub sink_states: Vec<crate::lineage::SinkStateReport>,
    /// Where the source publishes its pipeline id for the sinks.
    pub pipelines: crate::lineage::Pipelines,
    /// Whether sinks will acknowledge events (global
    /// `acknowledgements.enabled`). When false the source may commit on send.
    pub acknowledgements: bool,
    pub tags: ComponentTags,
}

#[async_trait]
#[typetag::serde(tag = "type")]
// `Any` lets tools that read a source's options (`snowflake-sql`, for the
// collections a Delta sink makes tables of) downcast to the concrete type.
pub trait SourceConfig: ComponentConfig + std::any::Any + std::fmt::Debug {
    /// Creates the running source.
    async fn build(&self, cx: SourceContext) -> crate::Result<Source>;
}
