//! `blackhole` sink (Vector's name): acknowledges and discards every event.
//! For benchmarks (the source's own speed) and for checking a source
//! configuration without writing anywhere.

use async_trait::async_trait;
use futures::{stream::BoxStream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    config::ComponentConfig,
    event::{Event, EventStatus},
    internal_events::EventsSent,
    sinks::{Healthcheck, SinkConfig, SinkContext, StreamSink},
};

/// Options of the `blackhole` sink (none besides the common ones).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {}

struct BlackholeSink {
    sent: EventsSent,
}

#[async_trait]
#[typetag::serde(name = "blackhole")]
impl SinkConfig for BlackholeSinkConfig {
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)> {
        let sink = BlackholeSink {
            sent: EventsSent::register(&cx.tags),
        };
        Ok((Box::new(sink), Box::pin(async { Ok(()) })))
    }
}

#[async_trait]
impl ComponentConfig for BlackholeSinkConfig {
    fn component_type(&self) -> &'static str {
        "blackhole"
    }
}

#[async_trait]
impl StreamSink for BlackholeSink {
    async fn run(self: Box<Self>, input: BoxStream<'static, Event>) -> Result<(), ()> {
        let mut chunks = input.ready_chunks(1024);
        while let Some(chunk) = chunks.next().await {
            let (mut count, mut bytes) = (0, 0);
            for event in chunk {
                if let Event::Log(mut log) = event {
                    count += 1;
                    bytes += log.payload.as_bytes().len();
                    log.take_finalizers().finalize(EventStatus::Delivered);
                }
            }
            self.sent.emit(count, bytes);
        }
        Ok(())
    }
}
