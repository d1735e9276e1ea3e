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
    config::{GlobalOptions, OptionError},
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
    /// Fires when the source must stop reading; in-flight acknowledgements
    /// may still be awaited afterwards, up to the graceful shutdown limit.
    pub shutdown: ShutdownSignal,
    pub out: SourceSender,
    /// Whether sinks will acknowledge events (global
    /// `acknowledgements.enabled`). When false the source may commit on send.
    pub acknowledgements: bool,
    pub tags: ComponentTags,
}

#[async_trait]
#[typetag::serde(tag = "type")]
pub trait SourceConfig: std::fmt::Debug + Send + Sync {
    /// Creates the running source.
    async fn build(&self, cx: SourceContext) -> crate::Result<Source>;

    /// Every check of the options that needs no network or disk, run when
    /// the config is loaded; each error names its option.
    fn validate(&self) -> Result<(), Vec<OptionError>> {
        Ok(())
    }

    /// `validate`'s healthcheck: reaches what the source reads or writes
    /// without building it, so nothing is created (no state directory, no
    /// filesystem). The answer says what the check wrote, if anything.
    async fn dry_healthcheck(&self) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// Whether the source keeps state under `data_dir`.
    fn needs_data_dir(&self) -> bool {
        false
    }

    /// The `type` name, for metrics tags.
    fn component_type(&self) -> &'static str;
}
