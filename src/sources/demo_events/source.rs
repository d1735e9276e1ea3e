use std::{sync::Arc, time::Duration};

use bson::{doc, RawDocumentBuf, Timestamp};
use chrono::Utc;
use futures::{Future, FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::StateFile,
    event::{BatchNotifier, BatchStatus, Event, EventMetadata, LogEvent, Position},
    finalizer::OrderedFinalizer,
    internal_events::{ComponentError, Stage},
    sources::SourceContext,
};

use super::config::DemoEventsConfig;

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

pub(super) fn run(
    config: DemoEventsConfig,
    cx: SourceContext,
) -> crate::Result<impl Future<Output = Result<(), ()>>> {
    let state = match cx.globals.component_data_dir(&cx.key) {
        Some(dir) if config.resume => Some(StateFile::new(&dir, "checkpoint.json")?),
        _ => None,
    };
    let start = match &state {
        Some(s) => s.load::<Checkpoint>()?.unwrap_or_default().acknowledged,
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
        let mut committed = start;
        let mut failed = false;
        let save = |acked: u64| {
            if let Some(state) = &state {
                if let Err(e) = state.save(&Checkpoint {
                    acknowledged: acked,
                }) {
                    ComponentError {
                        error_type: "checkpoint_failed",
                        stage: Stage::Processing,
                        message: &e.to_string(),
                    }
                    .emit(&tags);
                }
            }
        };

        let interval = Duration::from_secs_f64(config.interval_secs);
        let mut seq = start;
        let mut saved = start;
        let mut last_save = tokio::time::Instant::now();
        let filler = "x".repeat(config.payload_bytes);
        loop {
            while let Some(Some((status, acked))) = acks.next().now_or_never() {
                handle_ack(status, acked, &mut committed, &mut failed);
            }
            if committed != saved && last_save.elapsed() >= Duration::from_secs(1) {
                save(committed);
                saved = committed;
                last_save = tokio::time::Instant::now();
            }
            if config.count.is_some_and(|n| seq >= n) {
                break;
            }
            let next = seq + 1;
            let now = Utc::now();
            let payload = RawDocumentBuf::from_document(&doc! {
                "_id": { "_data": &position(next).0 },
                "operationType": "insert",
                "clusterTime": Timestamp { time: now.timestamp() as u32, increment: (next % 1_000_000) as u32 },
                "wallTime": bson::DateTime::from_chrono(now),
                "ns": { "db": &config.database, "coll": &config.collection },
                "documentKey": { "_id": next as i64 },
                "fullDocument": { "_id": next as i64, "seq": next as i64, "message": "demo event", "filler": &filler },
            })
            .expect("demo document serializes");
            let event = LogEvent::new(
                payload,
                EventMetadata {
                    source_id: Arc::clone(&source_id),
                    position: Some(position(next)),
                    event_time: Some(now),
                },
            );
            let (event, receiver) = if acknowledgements {
                let (batch, receiver) = BatchNotifier::new_with_receiver();
                (event.with_batch_notifier(&batch), Some(receiver))
            } else {
                (event, None)
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                sent = out.send(Event::Log(event)) => if sent.is_err() { break },
            }
            // Registered only once sent: an event abandoned at shutdown was
            // never emitted, so it must not count as a failed delivery.
            match receiver {
                Some(receiver) => finalizer.add(receiver, next),
                None => committed = next,
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
            handle_ack(status, acked, &mut committed, &mut failed);
        }
        save(committed);
        tracing::info!(source = %key, "Stopped; acknowledged through event {committed}.");
        Ok(())
    })
}

fn handle_ack(status: BatchStatus, seq: u64, committed: &mut u64, failed: &mut bool) {
    match status {
        BatchStatus::Delivered if !*failed => *committed = seq,
        BatchStatus::Delivered => {}
        _ => {
            if !*failed {
                tracing::error!(
                    "Event {seq} was not delivered ({status:?}); the checkpoint stays at {committed} and later events will be sent again on restart."
                );
            }
            *failed = true;
        }
    }
}
