//! Reading the change stream ahead of the pipeline.
//!
//! The driver sends the next `getMore` only when its current batch is used
//! up, and the server prepares no batch while none is asked for. Read from
//! the source's own loop, the server and the agent took turns: mongod idle
//! while the agent turned a batch into events, the agent idle while mongod
//! built the next (`e2e/bench.sh`: 66k events/s into Azurite against the
//! bare driver's 110k). A task of its own drains each batch into a queue
//! bounded in bytes as soon as it arrives, so the next `getMore` is already
//! on its way while the source forwards the last one.
//!
//! The task also sees where the server's batches end, which the driver does
//! not tell: a `next_if_any` that does not answer at once goes to the
//! server. One that has not answered within [`SLOW_GET_MORE`] after the
//! hand-over is waiting for events: the source has caught up for now and
//! says so (`Read::CaughtUp`) without waiting `max_await_time_ms` for an
//! empty batch, so sinks can write what they hold at the end of a burst. It says
//! too whether a burst ended (at least [`BURST_BYTES`] read since it last
//! caught up), when everything may be written, or a trickle, when only
//! what fills a sizeable block is. A steady stream's getMores answer as
//! soon as events arrive, so it is not told apart from a backlog.
//!
//! The documents of a batch are handed over together, at the first
//! `next_if_any` that does not answer at once (the driver has started on
//! the next batch: a connection checkout, then the `getMore`, sent when
//! the future is polled again right after the hand-over), not one by one
//! before it: a send and a budget permit per document (~2 µs each with the
//! queue's wakeups) kept the server idle for ~0.4 s per 200,000 events.
//! A batch larger than a quarter of the budget is handed over in parts.
//! While the budget is full the hand-over waits, and the next `getMore`
//! with it.
//!
//! Order is kept: the queue carries the documents, the idle answers and the
//! error that ended the stream in the order the driver gave them. What is
//! queued but not yet forwarded is dropped with the queue and read again,
//! since the stream always reopens after the last forwarded token.

use std::{pin::pin, sync::Arc, task::Poll, time::Duration};

use bson::RawDocumentBuf;
use mongodb::change_stream::{event::ResumeToken, ChangeStream};
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

/// Most hand-overs queued, whatever their size (the byte budget binds
/// first).
const MAX_QUEUED: usize = 1024;

/// Longer than a full batch takes the server to prepare (about 50 ms for
/// 5,000 events of 1 KB here): a getMore not answered by then is waiting
/// for events.
const SLOW_GET_MORE: Duration = Duration::from_millis(200);

/// Read since the source last caught up, the end of a burst rather than a
/// trickle: a server reply's worth.
/// The server reply a batch is sized for.
pub(super) const REPLY_TARGET_BYTES: usize = 4 << 20;

const BURST_BYTES: usize = REPLY_TARGET_BYTES;

/// What the driver gave, in its order.
pub(super) enum Read {
    /// Change events in stream order; the permit holds their bytes
    /// against the budget until they are forwarded.
    Events(Vec<RawDocumentBuf>, OwnedSemaphorePermit),
    /// An empty batch: nothing is pending up to the post-batch token.
    Idle(Option<ResumeToken>),
    /// Every event the server had was read (the getMore after them waits),
    /// at the end of a burst or not. The last of them came just before.
    CaughtUp { burst: bool },
    /// The stream ended after an `invalidate` event.
    Invalidated,
    /// The stream failed; it is not read further.
    Failed(mongodb::error::Error),
}

pub(super) struct ReadAhead {
    queue: mpsc::Receiver<Read>,
    task: JoinHandle<()>,
}

impl ReadAhead {
    /// Starts reading `stream`, with at most `max_bytes` of documents
    /// queued (a larger document is still let through alone).
    pub(super) fn spawn(stream: ChangeStream<RawDocumentBuf>, max_bytes: usize) -> Self {
        let (tx, queue) = mpsc::channel(MAX_QUEUED);
        let reader = Reader {
            tx,
            budget: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        };
        let task = tokio::spawn(reader.read(stream));
        Self { queue, task }
    }

    /// The next item; `None` once the reading task ended without a last
    /// word (it panicked).
    pub(super) async fn next(&mut self) -> Option<Read> {
        self.queue.recv().await
    }

    /// The next item if one is queued now.
    pub(super) fn try_next(&mut self) -> Option<Read> {
        self.queue.try_recv().ok()
    }

    /// Stops reading and waits until the stream is dropped, so its cursor
    /// is killed before the client shuts down.
    pub(super) async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // A getMore in flight is abandoned with its batch; nothing of it was
        // forwarded, so the next opening reads it again.
        self.task.abort();
    }
}

struct Reader {
    tx: mpsc::Sender<Read>,
    budget: Arc<Semaphore>,
    max_bytes: usize,
}

impl Reader {
    async fn read(self, mut stream: ChangeStream<RawDocumentBuf>) {
        // Bytes of events read since the source last caught up.
        let mut read: usize = 0;
        // Read from the driver's current batch, not yet handed over.
        let mut held = Held::default();
        loop {
            let read_some = read > 0;
            let result = {
                let mut next = pin!(stream.next_if_any());
                match futures::poll!(next.as_mut()) {
                    Poll::Ready(result) => result,
                    // The driver goes to the server: hand over the last
                    // batch first. The future is kept, never dropped:
                    // dropping it could lose its batch.
                    Poll::Pending => {
                        if !self.hand_over(&mut held).await {
                            return;
                        }
                        if read_some {
                            tokio::select! {
                                result = next.as_mut() => result,
                                _ = tokio::time::sleep(SLOW_GET_MORE) => {
                                    let burst = read >= BURST_BYTES;
                                    read = 0;
                                    if self.tx.send(Read::CaughtUp { burst }).await.is_err() {
                                        return;
                                    }
                                    next.await
                                }
                            }
                        } else {
                            next.await
                        }
                    }
                }
            };
            let item = match result {
                Ok(Some(raw)) => {
                    read += raw.as_bytes().len();
                    held.push(raw);
                    if held.bytes >= self.max_bytes / 4 && !self.hand_over(&mut held).await {
                        return;
                    }
                    continue;
                }
                Ok(None) if stream.is_alive() => {
                    read = 0;
                    Read::Idle(stream.resume_token())
                }
                Ok(None) => Read::Invalidated,
                Err(e) => Read::Failed(e),
            };
            let end = matches!(item, Read::Invalidated | Read::Failed(_));
            if !self.hand_over(&mut held).await || self.tx.send(item).await.is_err() || end {
                return;
            }
        }
    }

    /// Queues what `held` holds once the budget has room for it; false
    /// once the source is gone.
    async fn hand_over(&self, held: &mut Held) -> bool {
        if held.docs.is_empty() {
            return true;
        }
        // Bounded by the budget so a part over it still passes.
        let bytes = held.bytes.clamp(1, self.max_bytes);
        let Ok(permit) = Arc::clone(&self.budget)
            .acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX))
            .await
        else {
            return false;
        };
        let docs = std::mem::take(&mut held.docs);
        held.bytes = 0;
        self.tx.send(Read::Events(docs, permit)).await.is_ok()
    }
}

/// Documents read but not yet handed over, and their size.
#[derive(Default)]
struct Held {
    docs: Vec<RawDocumentBuf>,
    bytes: usize,
}

impl Held {
    fn push(&mut self, raw: RawDocumentBuf) {
        self.bytes += raw.as_bytes().len();
        self.docs.push(raw);
    }
}
