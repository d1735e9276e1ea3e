use std::{sync::Arc, time::Duration};

use bson::{doc, RawDocumentBuf, Timestamp};
use chrono::Utc;
use futures::{Future, FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::{
    event::{BatchStatus, EventMetadata, LogEvent, Position},
    finalizer::OrderedFinalizer,
    internal_events::{ComponentError, ComponentTags, Stage},
    sources::SourceContext,
    state_store::StateDoc,
    topology::Sent,
};

/// What the source runs with, from its options.
#[derive(Clone, Debug)]
pub struct Demo {
    /// Events to generate in all (none: no end).
    pub count: Option<u64>,
    pub interval: Duration,
    pub database: String,
    pub collection: String,
    /// Filler bytes per `fullDocument`.
    pub payload_bytes: usize,
    /// Continue after the checkpoint.
    pub resume: bool,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct Checkpoint {
    /// Highest sequence number delivered together with every earlier one.
    acknowledged: u64,
}

/// The position of event `seq`: fixed-width hex, so string order is
/// numeric order.
pub fn position(seq: u64) -> Position {
    Position(format!("{seq:016X}"))
}

pub(super) async fn run(
    config: Demo,
    cx: SourceContext,
) -> crate::Result<impl Future<Output = Result<(), ()>>> {
    let state = match &cx.state {
        Some(state) if config.resume => Some(state.doc("checkpoint.json")),
        _ => None,
    };
    let start = match &state {
        Some(s) => {
            s.load::<Checkpoint>()
                .await?
                .unwrap_or_default()
                .acknowledged
        }
        None => 0,
    };
    if start > 0 {
        tracing::info!(source = %cx.key, "Resuming after acknowledged event {start}.");
    }
    Ok(async move {
        let SourceContext {
            key,
            shutdown,
            mut out,
            acknowledgements,
            tags,
            ..
        } = cx;
        let source_id: Arc<str> = Arc::from(key.as_str());
        let (finalizer, mut acks) = OrderedFinalizer::<u64>::new();
        let mut checkpoint = DemoCheckpoint::new(state, tags, start);
        let interval = config.interval;
        let filler = "x".repeat(config.payload_bytes);
        let mut seq = start;
        loop {
            while let Some(Some((status, acked))) = acks.next().now_or_never() {
                checkpoint.resolved(status, acked);
            }
            checkpoint.save_every_second().await;
            if config.count.is_some_and(|n| seq >= n) {
                break;
            }
            let next = seq + 1;
            let event = demo_event(&config, &source_id, &filler, next);
            let registry = acknowledgements.then_some(&finalizer);
            match out.send_log(event, next, registry, &shutdown).await {
                Sent::Registered => {}
                Sent::Unacknowledged(next) => checkpoint.committed = next,
                Sent::Stopped => break,
            }
            seq = next;
            if !interval.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        }

        // Stop sending so sinks see the end of their input, then wait for
        // every outstanding acknowledgement before the final checkpoint.
        drop(out);
        drop(finalizer);
        while let Some((status, acked)) = acks.next().await {
            checkpoint.resolved(status, acked);
        }
        checkpoint.save().await;
        tracing::info!(source = %key, "Stopped; acknowledged through event {}.", checkpoint.committed);
        Ok(())
    })
}

/// Event `seq`, shaped like a change stream insert.
fn demo_event(config: &Demo, source_id: &Arc<str>, filler: &str, seq: u64) -> LogEvent {
    let now = Utc::now();
    let payload = RawDocumentBuf::from_document(&doc! {
        "_id": { "_data": &position(seq).0 },
        "operationType": "insert",
        "clusterTime": Timestamp { time: now.timestamp() as u32, increment: (seq % 1_000_000) as u32 },
        "wallTime": bson::DateTime::from_chrono(now),
        "ns": { "db": &config.database, "coll": &config.collection },
        "documentKey": { "_id": seq as i64 },
        "fullDocument": { "_id": seq as i64, "seq": seq as i64, "message": "demo event", "filler": filler },
    })
    .expect("demo document serializes");
    LogEvent::new(
        payload,
        EventMetadata {
            source_id: Arc::clone(source_id),
            position: Some(position(seq)),
            event_time: Some(now),
        },
    )
}

/// The acknowledged sequence number and its checkpoint file (`resume`).
struct DemoCheckpoint {
    state: Option<StateDoc>,
    tags: ComponentTags,
    /// Highest sequence number delivered together with every earlier one.
    committed: u64,
    saved: u64,
    last_save: tokio::time::Instant,
    /// Set after a failed delivery: nothing is committed past it.
    failed: bool,
}

impl DemoCheckpoint {
    fn new(state: Option<StateDoc>, tags: ComponentTags, start: u64) -> Self {
        Self {
            state,
            tags,
            committed: start,
            saved: start,
            last_save: tokio::time::Instant::now(),
            failed: false,
        }
    }

    /// Takes in the acknowledgement of event `seq`, in emission order.
    fn resolved(&mut self, status: BatchStatus, seq: u64) {
        match status {
            BatchStatus::Delivered if !self.failed => self.committed = seq,
            BatchStatus::Delivered => {}
            _ => {
                if !self.failed {
                    tracing::error!(
                        "Event {seq} was not delivered ({status:?}); the checkpoint stays at {} and later events will be sent again on restart.",
                        self.committed
                    );
                }
                self.failed = true;
            }
        }
    }

    /// Saves at most once a second, and only when the position moved.
    async fn save_every_second(&mut self) {
        if self.committed != self.saved && self.last_save.elapsed() >= Duration::from_secs(1) {
            self.save().await;
            self.saved = self.committed;
            self.last_save = tokio::time::Instant::now();
        }
    }

    async fn save(&self) {
        let Some(state) = &self.state else { return };
        if let Err(e) = state
            .save(&Checkpoint {
                acknowledged: self.committed,
            })
            .await
        {
            ComponentError {
                error_type: "checkpoint_failed",
                stage: Stage::Processing,
                message: &e.to_string(),
            }
            .emit(&self.tags);
        }
    }
}
