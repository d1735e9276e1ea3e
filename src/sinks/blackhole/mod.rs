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

/// Options of the `blackhole` sink.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {
    /// Most events a second it takes (as Vector's `rate`); unset: as fast
    /// as they come. A slow sink holds the source back, as a slow storage
    /// account would: for tests and for trying backpressure.
    pub rate: Option<u32>,
}

struct BlackholeSink {
    sent: EventsSent,
    rate: Option<u32>,
}

#[async_trait]
#[typetag::serde(name = "blackhole")]
impl SinkConfig for BlackholeSinkConfig {
    async fn build(&self, cx: SinkContext) -> crate::Result<(Box<dyn StreamSink>, Healthcheck)> {
        if self.rate == Some(0) {
            return Err("`rate` must be at least 1 (unset it for no limit)".into());
        }
        let sink = BlackholeSink {
            sent: EventsSent::register(&cx.tags),
            rate: self.rate,
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
        // With a `rate`, chunks of at most a second's events, so a small
        // rate does not sleep long at once.
        let chunk = self.rate.map_or(1024, |r| (r as usize).clamp(1, 1024));
        let mut chunks = input.ready_chunks(chunk);
        // When the events taken so far are due at `rate` (no credit is
        // saved up while idle).
        let mut due = tokio::time::Instant::now();
        while let Some(chunk) = chunks.next().await {
            if let Some(rate) = self.rate {
                due = due.max(tokio::time::Instant::now())
                    + std::time::Duration::from_secs_f64(chunk.len() as f64 / f64::from(rate));
                tokio::time::sleep_until(due).await;
            }
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
