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
//! not tell: a `next_if_any` that does not answer at once has sent a
//! `getMore`. One that has not answered within [`SLOW_GET_MORE`] is waiting
//! for events: the source has caught up for now and says so
//! (`Read::CaughtUp`) without waiting `max_await_time_ms` for an empty
//! batch, so sinks can write what they hold at the end of a burst. It says
//! too whether a burst ended (at least [`BURST_BYTES`] read since it last
//! caught up), when everything may be written, or a trickle, when only
//! what fills a sizeable block is. A steady stream's getMores answer as
//! soon as events arrive, so it is not told apart from a backlog.
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

/// Most documents queued, whatever their size (the byte budget binds first
/// above ~100 bytes per document).
const MAX_QUEUED: usize = 65_536;

/// Longer than a full batch takes the server to prepare (about 50 ms for
/// 5,000 events of 1 KB here): a getMore not answered by then is waiting
/// for events.
const SLOW_GET_MORE: Duration = Duration::from_millis(200);

/// Read since the source last caught up, the end of a burst rather than a
/// trickle: a server reply's worth.
const BURST_BYTES: usize = super::stream::REPLY_TARGET_BYTES;

/// What the driver gave, in its order.
pub(super) enum Read {
    /// A change event; the permit holds its bytes against the budget until
    /// it is forwarded.
    Event(RawDocumentBuf, OwnedSemaphorePermit),
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
        loop {
            let read_some = read > 0;
            let result = {
                let mut next = pin!(stream.next_if_any());
                match futures::poll!(next.as_mut()) {
                    Poll::Ready(result) => result,
                    // A getMore went out. The future is kept, never
                    // dropped: dropping it could lose its batch.
                    Poll::Pending if read_some => tokio::select! {
                        result = next.as_mut() => result,
                        _ = tokio::time::sleep(SLOW_GET_MORE) => {
                            let burst = read >= BURST_BYTES;
                            read = 0;
                            if self.tx.send(Read::CaughtUp { burst }).await.is_err() {
                                return;
                            }
                            next.await
                        }
                    },
                    Poll::Pending => next.await,
                }
            };
            let item = match result {
                Ok(Some(raw)) => {
                    read += raw.as_bytes().len();
                    match self.admit(raw).await {
                        Some(item) => item,
                        None => return,
                    }
                }
                Ok(None) if stream.is_alive() => {
                    read = 0;
                    Read::Idle(stream.resume_token())
                }
                Ok(None) => Read::Invalidated,
                Err(e) => Read::Failed(e),
            };
            let end = matches!(item, Read::Invalidated | Read::Failed(_));
            if self.tx.send(item).await.is_err() || end {
                return;
            }
        }
    }

    /// Waits until the budget has room for `raw`.
    async fn admit(&self, raw: RawDocumentBuf) -> Option<Read> {
        // Bounded by the budget so one document over it still passes.
        let bytes = raw.as_bytes().len().clamp(1, self.max_bytes);
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX))
            .await
            .ok()?;
        Some(Read::Event(raw, permit))
    }
}
