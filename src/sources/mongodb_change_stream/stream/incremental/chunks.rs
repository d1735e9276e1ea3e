//! Splitting a round into `_id`-range chunks and reading them in parallel.
//!
//! Chunk bounds come from the server: from a lower bound, the `_id` a
//! `skip` of `snapshot_chunk_size` entries down the `_id` index reaches (a
//! covered index scan, no document is read). Bounds are found per round,
//! a few at a time, so a copy of any size starts at once and the
//! checkpoint holds one range per round, not a list of every chunk.
//!
//! Each chunk reader is a task with its own cursor, bounded by `min`/`max`
//! on the `_id` index (which, unlike `$gte`/`$lt` filters, cross `_id`
//! types). It turns its documents into records itself (off the task that
//! sends them, so the work spreads over the runtime's threads) and hands
//! them over a page at a time, so the round's records can be sent in `_id`
//! order (chunk by chunk) while later chunks are read ahead. How far each
//! reader reads ahead is a byte budget (the source's `read_ahead_bytes`),
//! so memory is bounded however large a chunk is. The budget is what lets
//! readers overlap: with the first design's two pages per reader, a later
//! reader stopped after two pages until the chunks before it were sent,
//! and P = 2 copied at about half the rate of P bare cursors (500,000 ×
//! 1 KB, chunks of 10,000: 0.51-0.53 of bare at P = 2 with two pages,
//! 0.73-0.81 with 8 MiB).

use std::sync::Arc;

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::{
    options::{CollectionOptions, Hint, ReadConcern, ReadPreference, SelectionCriteria},
    Client, Collection,
};
use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};

use super::super::snapshot::{split_namespace, MakeError, Record, RecordMaker};

/// Documents per page handed from a reader to the round.
const PAGE_DOCS: u32 = 256;
/// Bytes of documents a server reply aims at. Fewer, larger replies mean
/// fewer `getMore` round trips, during which a reader makes no records
/// (500,000 × 1 KB, P = 1: batches of 512 copied in 1.25 s where 256 took
/// 1.38-1.41), but a reply over the 1 MB mmap threshold is faulted in
/// afresh each time (2,048: 2.1 s).
const REPLY_BYTES: u64 = 512 << 10;

/// Documents per server batch for documents of `average` bytes (256 before
/// any was read).
pub(super) fn server_batch(average: Option<u64>) -> u32 {
    average.map_or(PAGE_DOCS, |avg| {
        u32::try_from(REPLY_BYTES / avg.max(1))
            .unwrap_or(u32::MAX)
            .clamp(16, 1024)
    })
}
/// Bytes after which a page is handed over before it is full.
const PAGE_BYTES: usize = 1 << 20;

/// One chunk's `_id` range.
#[derive(Clone, Debug)]
pub(super) struct Range {
    /// Lower bound; none: the collection's start.
    pub lo: Option<Bson>,
    /// `lo` was copied already (a continued round): leave it out.
    pub lo_exclusive: bool,
    /// Upper bound, exclusive; none: the collection's end.
    pub hi: Option<Bson>,
}

/// `ns`, read from the primary with majority read concern whatever the
/// URI says: a record must hold the document as it is at or after the
/// stream position it follows (which is majority-committed), never an
/// older state from a lagging secondary nor a write that may roll back.
fn collection(client: &Client, ns: &str) -> Collection<RawDocumentBuf> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let options = CollectionOptions::builder()
        .read_concern(ReadConcern::majority())
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        .build();
    client.database(db).collection_with_options(coll, options)
}

/// Up to `count` chunk bounds after `lo` and before `hi`, each
/// `chunk_docs` index entries after the one before; fewer when the range
/// ends first.
pub(super) async fn bounds(
    client: &Client,
    ns: &str,
    (lo, hi): (Option<&Bson>, Option<&Bson>),
    chunk_docs: u32,
    count: u32,
) -> mongodb::error::Result<Vec<Bson>> {
    let coll = collection(client, ns).clone_with_type::<Document>();
    let mut out: Vec<Bson> = Vec::new();
    for _ in 0..count {
        let from = out.last().or(lo);
        let mut find = coll
            .find(doc! {})
            .hint(Hint::Keys(doc! { "_id": 1 }))
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .skip(u64::from(chunk_docs))
            .limit(1);
        if let Some(from) = from {
            find = find.min(doc! { "_id": from.clone() });
        }
        if let Some(hi) = hi {
            find = find.max(doc! { "_id": hi.clone() });
        }
        let found: Vec<Document> = find.await?.try_collect().await?;
        match found.into_iter().next().and_then(|d| d.get("_id").cloned()) {
            Some(id) => out.push(id),
            None => break,
        }
    }
    Ok(out)
}

/// The ranges between `lo`, the `bounds` and `hi`.
pub(super) fn ranges(
    lo: Option<Bson>,
    lo_exclusive: bool,
    bounds: Vec<Bson>,
    hi: Option<Bson>,
) -> Vec<Range> {
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut from = (lo, lo_exclusive);
    for b in bounds {
        out.push(Range {
            lo: from.0,
            lo_exclusive: from.1,
            hi: Some(b.clone()),
        });
        from = (Some(b), false);
    }
    out.push(Range {
        lo: from.0,
        lo_exclusive: from.1,
        hi,
    });
    out
}

/// A page of records in `_id` order.
pub(super) struct Page {
    /// Records with their document's `_id` (fewer than were read when the
    /// `pipeline` filters).
    pub records: Vec<Record>,
    /// Documents read.
    pub read: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The last document's `_id`.
    pub last_id: Option<Bson>,
    /// KiB of the reader's budget the page holds.
    held: u32,
}

/// Why a chunk read stopped.
pub(super) enum ReadError {
    /// The server's error (retrying may help).
    Server(mongodb::error::Error),
    /// The collection's documents cannot be copied exactly once (a
    /// sentence for the log; retrying does not help).
    Unorderable(String),
}

/// What a round's chunk readers share: where their records go in the
/// stream and how they are made.
#[derive(Clone)]
pub(super) struct RecordsAt {
    pub maker: RecordMaker,
    pub ns: Arc<str>,
    /// The round's position, the start of every record's position.
    pub at: Arc<str>,
    pub t0: bson::Timestamp,
    /// Documents per server batch ([`server_batch`]).
    pub server_batch: u32,
}

/// A running chunk reader; dropping it stops the read.
pub(super) struct ChunkReader {
    pages: PageReceiver,
    task: JoinHandle<()>,
}

impl ChunkReader {
    /// Starts reading `range`, holding at most `budget` bytes of pages
    /// ahead of the sender (a page larger than that waits for all of it).
    pub(super) fn spawn(client: &Client, records: RecordsAt, range: Range, budget: u64) -> Self {
        let (tx, pages) = budgeted(budget);
        let coll = collection(client, &records.ns);
        let task = tokio::spawn(async move {
            if let Err(e) = read(coll, range, &records, &tx).await {
                tx.fail(e);
            }
        });
        Self { pages, task }
    }

    /// The next page; `None` once the chunk is read.
    pub(super) async fn next(&mut self) -> Option<Result<Page, ReadError>> {
        self.pages.next().await
    }
}

/// A reader's pages on their way to the sender, within a byte budget.
fn budgeted(budget: u64) -> (PageSender, PageReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let total = kib(budget);
    let budget = Arc::new(Semaphore::new(total as usize));
    let sender = PageSender {
        tx,
        budget: Arc::clone(&budget),
        total,
    };
    (sender, PageReceiver { rx, budget })
}

/// The reader's end: a page waits for its bytes of the budget (in KiB,
/// permits of a semaphore) before it is handed over.
struct PageSender {
    tx: mpsc::UnboundedSender<Result<Page, ReadError>>,
    budget: Arc<Semaphore>,
    total: u32,
}

impl PageSender {
    /// Hands `page` over once the budget holds its bytes; false when the
    /// receiver is gone.
    async fn hand_over(&self, mut page: Page) -> bool {
        // A page larger than the whole budget waits for all of it.
        let held = kib(page.bytes).min(self.total);
        match self.budget.acquire_many(held).await {
            Ok(permits) => permits.forget(),
            Err(_) => return false,
        }
        page.held = held;
        self.tx.send(Ok(page)).is_ok()
    }

    fn fail(&self, e: ReadError) {
        let _ = self.tx.send(Err(e));
    }
}

/// The sender's end: taking a page gives its bytes back to the budget.
struct PageReceiver {
    rx: mpsc::UnboundedReceiver<Result<Page, ReadError>>,
    budget: Arc<Semaphore>,
}

impl PageReceiver {
    async fn next(&mut self) -> Option<Result<Page, ReadError>> {
        let page = self.rx.recv().await;
        if let Some(Ok(p)) = &page {
            self.budget.add_permits(p.held as usize);
        }
        page
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read(
    coll: Collection<RawDocumentBuf>,
    range: Range,
    records: &RecordsAt,
    pages: &PageSender,
) -> Result<(), ReadError> {
    let mut find = coll
        .find(doc! {})
        .hint(Hint::Keys(doc! { "_id": 1 }))
        .sort(doc! { "_id": 1 })
        .batch_size(records.server_batch);
    if let Some(lo) = &range.lo {
        find = find.min(doc! { "_id": lo.clone() });
    }
    if let Some(hi) = &range.hi {
        find = find.max(doc! { "_id": hi.clone() });
    }
    let mut cursor = find.await.map_err(ReadError::Server)?;
    let ns = split_namespace(&records.ns);
    let mut made: Vec<Record> = Vec::new();
    let mut bytes = 0;
    let mut first = true;
    // The order guard of the records' keys, within this chunk.
    let mut last_key = None;
    let mut now = bson::DateTime::now();
    loop {
        // Each document is read where the reply holds it and copied once,
        // into its record (`try_next` would copy it out first).
        let end = !cursor.advance().await.map_err(ReadError::Server)?;
        if !end {
            let doc = cursor.current();
            if std::mem::take(&mut first) && range.lo_exclusive && id_of(doc) == range.lo {
                continue;
            }
            bytes += doc.as_bytes().len();
            let at = (&*records.at, records.t0, now);
            let record =
                RecordMaker::record(ns, at, doc, &mut last_key).map_err(ReadError::Unorderable)?;
            made.push(record);
        }
        let full = made.len() >= PAGE_DOCS as usize || bytes >= PAGE_BYTES;
        if (full || end) && !made.is_empty() {
            let page_bytes = std::mem::take(&mut bytes) as u64;
            let last_id = made.last().map(|r| r.id.clone());
            let read = made.len() as u64;
            let made = records
                .maker
                .finish(&records.ns, std::mem::take(&mut made))
                .await
                .map_err(|e| match e {
                    MakeError::Unorderable(message) => ReadError::Unorderable(message),
                    MakeError::Pipeline(e) => ReadError::Server(e),
                })?;
            now = bson::DateTime::now();
            let page = Page {
                records: made,
                read,
                bytes: page_bytes,
                last_id,
                held: 0,
            };
            if !pages.hand_over(page).await {
                return Ok(());
            }
        }
        if end {
            return Ok(());
        }
    }
}

/// `bytes` in KiB, rounded up (a semaphore's permits).
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// A document's `_id`.
pub(super) fn id_of(doc: &bson::RawDocument) -> Option<Bson> {
    doc.get("_id")
        .ok()
        .flatten()
        .and_then(|id| Bson::try_from(id.to_raw_bson()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(bytes: u64) -> Page {
        Page {
            records: Vec::new(),
            read: 1,
            bytes,
            last_id: None,
            held: 0,
        }
    }

    /// Pages handed over so far by a task sending `sizes` into `tx`.
    fn send_all(tx: PageSender, sizes: Vec<u64>) -> Arc<std::sync::atomic::AtomicUsize> {
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&sent);
        tokio::spawn(async move {
            for bytes in sizes {
                if !tx.hand_over(page(bytes)).await {
                    return;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        sent
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_reader_holds_at_most_its_budget_ahead() {
        let (tx, mut rx) = budgeted(64 << 10);
        let sent = send_all(tx, vec![16 << 10; 10]);
        let sent = || sent.load(std::sync::atomic::Ordering::SeqCst);
        settle().await;
        assert_eq!(sent(), 4, "64 KiB ahead: four pages of 16 KiB");
        assert!(rx.next().await.is_some());
        settle().await;
        assert_eq!(sent(), 5, "each page taken lets one more through");
        for _ in 0..9 {
            assert!(rx.next().await.is_some());
        }
        settle().await;
        assert_eq!(sent(), 10);
    }

    #[tokio::test]
    async fn a_page_larger_than_the_budget_waits_for_all_of_it() {
        let (tx, mut rx) = budgeted(64 << 10);
        let sent = send_all(tx, vec![16 << 10, 1 << 20, 16 << 10]);
        let sent = || sent.load(std::sync::atomic::Ordering::SeqCst);
        settle().await;
        assert_eq!(sent(), 1, "the large page waits while any budget is held");
        assert_eq!(rx.next().await.unwrap().ok().unwrap().bytes, 16 << 10);
        settle().await;
        assert_eq!(sent(), 2, "then goes alone, holding the whole budget");
        assert_eq!(rx.next().await.unwrap().ok().unwrap().bytes, 1 << 20);
        assert_eq!(rx.next().await.unwrap().ok().unwrap().bytes, 16 << 10);
        assert!(rx.next().await.is_none(), "the sender is done");
    }

    #[test]
    fn server_batches_aim_at_half_a_megabyte() {
        assert_eq!(server_batch(None), 256);
        assert_eq!(server_batch(Some(1024)), 512);
        assert_eq!(server_batch(Some(16 << 10)), 32);
        assert_eq!(server_batch(Some(10)), 1024);
        assert_eq!(server_batch(Some(16 << 20)), 16);
    }

    #[test]
    fn ranges_cover_from_lo_to_hi_through_the_bounds() {
        let r = ranges(
            Some(Bson::Int32(1)),
            true,
            vec![Bson::Int32(5), Bson::Int32(9)],
            None,
        );
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].lo.clone(), r[0].lo_exclusive),
            (Some(Bson::Int32(1)), true)
        );
        assert_eq!(r[0].hi, Some(Bson::Int32(5)));
        assert_eq!(
            (r[1].lo.clone(), r[1].lo_exclusive),
            (Some(Bson::Int32(5)), false)
        );
        assert_eq!(
            (r[2].lo.clone(), r[2].hi.clone()),
            (Some(Bson::Int32(9)), None)
        );
        let whole = ranges(None, false, vec![], None);
        assert_eq!(whole.len(), 1);
        assert!(whole[0].lo.is_none() && whole[0].hi.is_none());
    }
}
