use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::source::Demo;
use crate::config::ComponentConfig;
use crate::sources::{Source, SourceConfig, SourceContext};

/// Options of the `demo_events` source.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoEventsConfig {
    /// Events to generate, counting those acknowledged in earlier runs;
    /// unset means no end.
    #[serde(default)]
    pub count: Option<u64>,
    /// Seconds between events; `0` sends as fast as sinks accept.
    #[serde(default = "default_interval")]
    pub interval_secs: f64,
    /// The `ns.db` of generated events.
    #[serde(default = "default_database")]
    pub database: String,
    /// The `ns.coll` of generated events.
    #[serde(default = "default_collection")]
    pub collection: String,
    /// Extra filler bytes in each `fullDocument`, to size events.
    #[serde(default)]
    pub payload_bytes: usize,
    /// Start numbering after the checkpoint in `data_dir/<id>/` when there
    /// is one (default true).
    #[serde(default = "default_true")]
    pub resume: bool,
}

fn default_interval() -> f64 {
    1.0
}
fn default_database() -> String {
    "demo".into()
}
fn default_collection() -> String {
    "events".into()
}
fn default_true() -> bool {
    true
}

#[async_trait]
#[typetag::serde(name = "demo_events")]
impl SourceConfig for DemoEventsConfig {
    async fn build(&self, cx: SourceContext) -> crate::Result<Source> {
        if !(self.interval_secs >= 0.0 && self.interval_secs.is_finite()) {
            return Err("`interval_secs` must be a finite number of seconds, 0 or more".into());
        }
        let demo = Demo {
            count: self.count,
            interval: std::time::Duration::from_secs_f64(self.interval_secs),
            database: self.database.clone(),
            collection: self.collection.clone(),
            payload_bytes: self.payload_bytes,
            resume: self.resume,
        };
        Ok(Box::pin(super::source::run(demo, cx).await?))
    }
}

#[async_trait]
impl ComponentConfig for DemoEventsConfig {
    fn component_type(&self) -> &'static str {
        "demo_events"
    }
}
