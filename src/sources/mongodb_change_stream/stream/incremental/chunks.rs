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
//! types). It hands pages over through a channel of two, so the round's
//! records can be sent in `_id` order (chunk by chunk) while later chunks
//! are read ahead, and memory stays within a few pages per reader however
//! large a chunk is.

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::{options::Hint, Client, Collection};
use tokio::{sync::mpsc, task::JoinHandle};

/// Documents per page handed from a reader to the round (and per server
/// batch of its cursor).
const PAGE_DOCS: u32 = 256;
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

fn collection(client: &Client, ns: &str) -> Collection<RawDocumentBuf> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    client.database(db).collection(coll)
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

/// A page of documents in `_id` order, or the error that ended the read.
pub(super) type Page = mongodb::error::Result<Vec<RawDocumentBuf>>;

/// A running chunk reader; dropping it stops the read.
pub(super) struct ChunkReader {
    pages: mpsc::Receiver<Page>,
    task: JoinHandle<()>,
}

impl ChunkReader {
    pub(super) fn spawn(client: &Client, ns: &str, range: Range) -> Self {
        let (tx, pages) = mpsc::channel(2);
        let coll = collection(client, ns);
        let task = tokio::spawn(async move {
            if let Err(e) = read(coll, range, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Self { pages, task }
    }

    /// The next page; `None` once the chunk is read.
    pub(super) async fn next(&mut self) -> Option<Page> {
        self.pages.recv().await
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
    tx: &mpsc::Sender<Page>,
) -> mongodb::error::Result<()> {
    let mut find = coll
        .find(doc! {})
        .hint(Hint::Keys(doc! { "_id": 1 }))
        .sort(doc! { "_id": 1 })
        .batch_size(PAGE_DOCS);
    if let Some(lo) = &range.lo {
        find = find.min(doc! { "_id": lo.clone() });
    }
    if let Some(hi) = &range.hi {
        find = find.max(doc! { "_id": hi.clone() });
    }
    let mut cursor = find.await?;
    let mut page = Vec::new();
    let mut bytes = 0;
    let mut first = true;
    while let Some(doc) = cursor.try_next().await? {
        if std::mem::take(&mut first) && range.lo_exclusive && id_of(&doc) == range.lo {
            continue;
        }
        bytes += doc.as_bytes().len();
        page.push(doc);
        if page.len() >= PAGE_DOCS as usize || bytes >= PAGE_BYTES {
            bytes = 0;
            if tx.send(Ok(std::mem::take(&mut page))).await.is_err() {
                return Ok(());
            }
        }
    }
    if !page.is_empty() {
        let _ = tx.send(Ok(page)).await;
    }
    Ok(())
}

/// A document's `_id`.
pub(super) fn id_of(doc: &RawDocumentBuf) -> Option<Bson> {
    doc.get("_id")
        .ok()
        .flatten()
        .and_then(|id| Bson::try_from(id.to_raw_bson()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

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
