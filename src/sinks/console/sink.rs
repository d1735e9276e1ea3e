use async_trait::async_trait;
use futures::{stream::BoxStream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{
    codecs::json::{self, ExtendedJsonMode},
    event::{Event, EventStatus},
    internal_events::{ComponentError, ComponentTags, EventsSent, Stage},
    sinks::StreamSink,
};

/// Where the console sink writes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

pub struct ConsoleSink {
    target: Target,
    mode: ExtendedJsonMode,
    tags: ComponentTags,
    sent: EventsSent,
}

impl ConsoleSink {
    pub fn new(target: Target, mode: ExtendedJsonMode, tags: &ComponentTags) -> Self {
        Self {
            target,
            mode,
            tags: tags.clone(),
            sent: EventsSent::register(tags),
        }
    }
}

#[async_trait]
impl StreamSink for ConsoleSink {
    async fn run(self: Box<Self>, input: BoxStream<'static, Event>) -> Result<(), ()> {
        let mut out: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match self.target {
            Target::Stdout => Box::pin(tokio::io::stdout()),
            Target::Stderr => Box::pin(tokio::io::stderr()),
        };
        // Write whatever is ready as one chunk: one syscall per chunk, and
        // events are acknowledged only after the flush.
        let mut chunks = input.ready_chunks(1024);
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(chunk) = chunks.next().await {
            buf.clear();
            let mut finalizers = Vec::with_capacity(chunk.len());
            let mut bytes = 0;
            for event in chunk {
                let Event::Log(mut log) = event else { continue };
                bytes += log.payload.as_bytes().len();
                let start = buf.len();
                match json::write_document(&log.payload, self.mode, &mut buf) {
                    Ok(()) => {
                        buf.push(b'\n');
                        finalizers.push(log.take_finalizers());
                    }
                    Err(e) => {
                        buf.truncate(start);
                        ComponentError {
                            error_type: "encoder_failed",
                            stage: Stage::Processing,
                            message: &format!("Event rejected: {e}"),
                        }
                        .emit(&self.tags);
                        log.take_finalizers().finalize(EventStatus::Rejected);
                    }
                }
            }
            let status = match async {
                out.write_all(&buf).await?;
                out.flush().await
            }
            .await
            {
                Ok(()) => {
                    self.sent.emit(finalizers.len(), bytes);
                    EventStatus::Delivered
                }
                Err(e) => {
                    ComponentError {
                        error_type: "writer_failed",
                        stage: Stage::Sending,
                        message: &format!("Could not write to {:?}: {e}", self.target),
                    }
                    .emit(&self.tags);
                    EventStatus::Errored
                }
            };
            for f in finalizers {
                f.finalize(status);
            }
        }
        Ok(())
    }
}
