use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    codecs::json::ExtendedJsonMode,
    config::ComponentConfig,
    sinks::{Healthcheck, SinkConfig, SinkContext, StreamSink},
};

use super::sink::{ConsoleSink, Target};

/// How the console sink writes events as JSON.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleEncoding {
    /// How BSON values are written (see the `adls_partitioned_jsonl`
    /// sink).
    #[serde(default)]
    pub extended_json: ExtendedJsonMode,
}

/// Options of the `console` sink.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    /// Where events are written.
    #[serde(default)]
    pub target: Target,
    /// How events are encoded.
    #[serde(default)]
    pub encoding: ConsoleEncoding,
}

#[async_trait]
#[typetag::serde(name = "console")]
impl SinkConfig for ConsoleSinkConfig {
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)> {
        let sink = ConsoleSink::new(self.target, self.encoding.extended_json, &cx.tags);
        Ok((Box::new(sink), Box::pin(async { Ok(()) })))
    }
}

#[async_trait]
impl ComponentConfig for ConsoleSinkConfig {
    fn component_type(&self) -> &'static str {
        "console"
    }
}
