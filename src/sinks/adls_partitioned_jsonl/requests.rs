//! The storage requests the sink makes, each a future that ends in a
//! [`WriteOutcome`]: stage a batch as a block, commit a growing file's
//! block list (`every_batch`), seal a file, put one event's object. Every
//! request goes through [`RetryingStorage`], which adds retries, request
//! metrics and the salvage of lost staged blocks.

use std::{collections::HashSet, future::Future, pin::Pin, sync::Arc, time::Instant};

use bytes::Bytes;

use super::state::{FileKey, StagedBlock};
use crate::sinks::util::storage::{BlockList, Committed, Condition, Storage, StorageError};
use crate::{
    event::EventFinalizers,
    internal_events::{adls::SinkMetrics, requests::RequestFailures, ComponentTags},
    retry::{with_retries, RetryPolicy},
};

/// How a request ended; the sink's run loop dispatches on it.
pub(super) enum WriteOutcome {
    /// A batch is durable as an uncommitted block of its file.
    BlockStaged {
        staged: StagedBlock,
        finalizers: EventFinalizers,
        /// The batch buffer, for reuse.
        spare: Option<Vec<u8>>,
        /// Its place among the file's Put Blocks.
        seq: u64,
    },
    /// `every_batch`: the file's first `upto` blocks are committed.
    BatchCommitted {
        key: FileKey,
        upto: usize,
        /// The file's version after the commit, for the next one's
        /// condition.
        version: String,
        finalizers: EventFinalizers,
        events: usize,
        bytes: u64,
        object: String,
    },
    /// A seal attempt finished.
    FileSealed {
        key: FileKey,
        result: Result<(), StorageError>,
        /// Blocks that were gone from storage and could not be committed.
        lost: Vec<String>,
    },
    /// A block, commit or object could not be written after every retry;
    /// `request` can be made again.
    WriteFailed {
        request: HeldWrite,
        error: StorageError,
    },
    /// `per_event`: one event's object exists.
    EventPut {
        finalizers: EventFinalizers,
        bytes: usize,
        object: String,
    },
}

pub(super) type WriteRequest = Pin<Box<dyn Future<Output = WriteOutcome> + Send>>;

/// A failed write, kept whole so it can be made again (its events stay
/// unacknowledged meanwhile).
pub(super) enum HeldWrite {
    Stage(BlockWrite),
    Commit {
        staged: StagedBlock,
        ids: Vec<String>,
        /// The version the commit replaces, when known.
        version: Option<String>,
        finalizers: EventFinalizers,
    },
    Put {
        name: String,
        body: Bytes,
        finalizers: EventFinalizers,
    },
}

impl HeldWrite {
    /// The window whose file it writes (`None` for a per-event object).
    pub fn key(&self) -> Option<&FileKey> {
        match self {
            HeldWrite::Stage(w) => Some(&w.staged.key),
            HeldWrite::Commit { staged, .. } => Some(&staged.key),
            HeldWrite::Put { .. } => None,
        }
    }

    pub fn object(&self) -> &str {
        match self {
            HeldWrite::Stage(w) => &w.staged.object,
            HeldWrite::Commit { staged, .. } => &staged.object,
            HeldWrite::Put { name, .. } => name,
        }
    }

    /// The data it carries (what the in-flight budget counts).
    pub fn bytes(&self) -> usize {
        match self {
            HeldWrite::Stage(w) => w.body.len(),
            HeldWrite::Commit { .. } => 0,
            HeldWrite::Put { body, .. } => body.len(),
        }
    }

    pub fn events(&self) -> usize {
        match self {
            HeldWrite::Stage(w) => w.staged.block.events as usize,
            HeldWrite::Commit { staged, .. } => staged.block.events as usize,
            HeldWrite::Put { .. } => 1,
        }
    }

    pub fn into_finalizers(self) -> EventFinalizers {
        match self {
            HeldWrite::Stage(w) => w.finalizers,
            HeldWrite::Commit { finalizers, .. } => finalizers,
            HeldWrite::Put { finalizers, .. } => finalizers,
        }
    }

    /// The same request again.
    pub fn into_request(self, storage: RetryingStorage) -> WriteRequest {
        match self {
            HeldWrite::Stage(write) => stage_block(storage, write),
            HeldWrite::Commit {
                staged,
                ids,
                version,
                finalizers,
            } => commit_batch(storage, staged, ids, version, finalizers),
            HeldWrite::Put {
                name,
                body,
                finalizers,
            } => put_event(storage, name, body, finalizers),
        }
    }
}

/// Storage with the retry policy and metrics every request goes through;
/// cheap to clone into request futures.
#[derive(Clone)]
pub(super) struct RetryingStorage {
    pub storage: Arc<dyn Storage>,
    pub retry: RetryPolicy,
    pub metrics: SinkMetrics,
    pub failures: RequestFailures,
    pub tags: ComponentTags,
}

impl RetryingStorage {
    /// Runs one storage operation with retries and records its duration.
    pub async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let started = Instant::now();
        let result = with_retries(&self.retry, op, |e, d| {
            self.failures.failed(&self.tags, what, &e.message, d)
        })
        .await;
        self.metrics.request(started.elapsed());
        if result.is_ok() {
            self.failures.succeeded(&self.tags);
        }
        result
    }

    pub async fn committed_blocks(&self, object: &str) -> Result<Option<BlockList>, StorageError> {
        self.run("Get Block List", || self.storage.committed_blocks(object))
            .await
    }

    pub async fn uncommitted_blocks(&self, object: &str) -> Result<Vec<String>, StorageError> {
        self.run("Get Block List", || self.storage.uncommitted_blocks(object))
            .await
    }

    /// Commits `ids` to `object` on `condition`. When some staged blocks
    /// are gone from storage (`InvalidBlockList`) and `salvage` is set,
    /// commits the ones still there, in order, and returns the ids of the
    /// lost ones with the result. `Ok(None)`: the condition did not hold.
    pub async fn commit_salvaging(
        &self,
        object: &str,
        ids: &[String],
        condition: &Condition,
    ) -> (Result<Option<String>, StorageError>, Vec<String>) {
        let error = match self.commit(object, ids, condition).await {
            Err(e) if e.blocks_missing => e,
            other => return (other, Vec::new()),
        };
        tracing::error!(
            object,
            "{error}; committing the blocks that are still there."
        );
        let (still_there, committed) = match futures::join!(
            self.uncommitted_blocks(object),
            self.committed_blocks(object)
        ) {
            (Ok(u), Ok(c)) => (u, c.map(|c| c.ids).unwrap_or_default()),
            (Err(e), _) | (_, Err(e)) => return (Err(e), Vec::new()),
        };
        // Sets: a file may hold tens of thousands of blocks.
        let there: HashSet<&String> = still_there.iter().chain(&committed).collect();
        let (kept, lost): (Vec<String>, Vec<String>) =
            ids.iter().cloned().partition(|id| there.contains(id));
        if kept.is_empty() {
            // Nothing to commit: the object stays as it is.
            let version = match condition {
                Condition::Version(version) => version.clone(),
                Condition::Absent => String::new(),
            };
            return (Ok(Some(version)), lost);
        }
        (self.commit(object, &kept, condition).await, lost)
    }

    /// Put Block List of `ids` on `condition`: the object's new version, or
    /// `None` when the condition did not hold. A failed condition where the
    /// object holds exactly `ids` is this very commit, applied by an
    /// earlier attempt whose answer was lost (a timeout, a dropped
    /// connection, a crash): success.
    async fn commit(
        &self,
        object: &str,
        ids: &[String],
        condition: &Condition,
    ) -> Result<Option<String>, StorageError> {
        let committed = self
            .run("Put Block List", || {
                self.storage.commit_blocks(object, ids, condition)
            })
            .await?;
        match committed {
            Committed::Done(version) => Ok(Some(version)),
            Committed::ConditionFailed => Ok(self
                .committed_blocks(object)
                .await?
                .filter(|list| list.ids == ids)
                .map(|list| list.version)),
        }
    }

    /// `every_batch`: commits `ids` over the file's version `known` (the
    /// one its last commit returned), so that no late-applied earlier
    /// commit can roll the file back, nor this one roll back a later one.
    /// When the version is unknown (after a restart) or has changed, it is
    /// read: a version whose blocks are ours, in our order, is committed
    /// over (an earlier commit of ours, or one that left out lost blocks);
    /// anything else is another writer's. Returns the new version and, with
    /// `salvage`, the blocks that were lost.
    pub async fn commit_growing(
        &self,
        object: &str,
        ids: &[String],
        known: Option<String>,
        salvage: bool,
    ) -> (Result<String, StorageError>, Vec<String>) {
        let mut known = known;
        // A changed version is read again at most twice: a third change
        // while we commit is not a late request of ours.
        for _ in 0..3 {
            let condition = match known.take() {
                Some(version) => Condition::Version(version),
                None => match self.committed_blocks(object).await {
                    // Staged blocks but no commit yet: Azure lists an empty
                    // committed list (Azurite with an ETag that If-Match
                    // never matches), which If-None-Match treats as absent.
                    Ok(None) => Condition::Absent,
                    Ok(Some(list)) if list.ids.is_empty() => Condition::Absent,
                    Ok(Some(list)) if is_subsequence(&list.ids, ids) => {
                        Condition::Version(list.version)
                    }
                    Ok(Some(_)) => break,
                    Err(e) => return (Err(e), Vec::new()),
                },
            };
            let (result, lost) = if salvage {
                self.commit_salvaging(object, ids, &condition).await
            } else {
                (self.commit(object, ids, &condition).await, Vec::new())
            };
            match result {
                Ok(Some(version)) => return (Ok(version), lost),
                Ok(None) => {}
                Err(e) => return (Err(e), lost),
            }
        }
        (Err(changed_by_another_writer(object)), Vec::new())
    }

    /// Seals `object` with `ids`: on_seal creates it (`If-None-Match: *`),
    /// every_batch commits the final list over version `known`. Returns the
    /// lost blocks.
    pub(super) async fn seal(
        &self,
        object: &str,
        ids: &[String],
        every_batch: Option<Option<String>>,
    ) -> (Result<(), StorageError>, Vec<String>) {
        if let Some(known) = every_batch {
            let (result, lost) = self.commit_growing(object, ids, known, true).await;
            return (result.map(|_| ()), lost);
        }
        let (result, lost) = self.commit_salvaging(object, ids, &Condition::Absent).await;
        match result {
            Ok(Some(_)) => (Ok(()), lost),
            // A salvage commit of ours from before a crash, or a foreign
            // object under our name: compare the block lists.
            Ok(None) => match self.explain_existing(object, ids).await {
                Ok(missing) => (Ok(()), missing),
                Err(e) => (Err(e), lost),
            },
            Err(e) => (Err(e), lost),
        }
    }

    /// `object` exists although this sink never recorded its seal: Ok with
    /// the blocks it lacks when it is this file (committed just before a
    /// crash, or salvaged then), an error otherwise.
    async fn explain_existing(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<String>, StorageError> {
        match self.committed_blocks(object).await? {
            Some(existing) if existing.ids == ids => Ok(Vec::new()),
            // A salvage commit from before a crash: the blocks it left out
            // are still gone.
            Some(existing) => {
                let staged = self.uncommitted_blocks(object).await?;
                salvaged_before(ids, &existing.ids, &staged)
                    .ok_or_else(|| changed_by_another_writer(object))
            }
            None => Err(StorageError::transient(format!(
                "{object} was reported as existing, then not found"
            ))),
        }
    }
}

fn changed_by_another_writer(object: &str) -> StorageError {
    StorageError::permanent(format!(
        "{object} already exists with content this sink's state does not describe: another writer uses this path, or the state was replaced. The file is not committed over and its events stay unacknowledged; stop the other writer, or restore the state that wrote it"
    ))
}

/// Whether `part` is `all` with some elements left out, in order.
fn is_subsequence(part: &[String], all: &[String]) -> bool {
    let mut all = all.iter();
    part.iter().all(|p| all.any(|a| a == p))
}

/// Block ids: a random run id and a sequence number, so ids from a crashed
/// run are never reused. Fixed length: Azure requires equal-length ids
/// within a blob.
pub(super) struct BlockIds {
    run_id: String,
    seq: u64,
}

impl BlockIds {
    pub fn new() -> Self {
        Self {
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            seq: 0,
        }
    }

    pub fn next(&mut self) -> String {
        self.seq += 1;
        format!("{}{:08x}", self.run_id, self.seq)
    }
}

/// A batch on its way to becoming a staged block.
pub(super) struct BlockWrite {
    pub staged: StagedBlock,
    pub body: Bytes,
    pub finalizers: EventFinalizers,
    /// Its place among the file's Put Blocks (recording follows it).
    pub seq: u64,
}

/// Put Block: one batch as one uncommitted block of its file.
pub(super) fn stage_block(storage: RetryingStorage, write: BlockWrite) -> WriteRequest {
    Box::pin(async move {
        let result = storage
            .run("Put Block", || {
                storage.storage.stage_block(
                    &write.staged.object,
                    &write.staged.block.id,
                    write.body.clone(),
                )
            })
            .await;
        match result {
            Ok(()) => {
                let BlockWrite {
                    staged,
                    body,
                    finalizers,
                    seq,
                } = write;
                storage.metrics.block_written(body.len());
                WriteOutcome::BlockStaged {
                    staged,
                    finalizers,
                    // The HTTP client has let go of the body by now.
                    spare: body.try_into_mut().ok().map(Vec::from),
                    seq,
                }
            }
            Err(error) => WriteOutcome::WriteFailed {
                request: HeldWrite::Stage(write),
                error,
            },
        }
    })
}

/// `every_batch`: Put Block List of every block staged so far, so readers
/// see the file grow. Acknowledges the batch once committed.
pub(super) fn commit_batch(
    storage: RetryingStorage,
    staged: StagedBlock,
    ids: Vec<String>,
    version: Option<String>,
    finalizers: EventFinalizers,
) -> WriteRequest {
    Box::pin(async move {
        crate::testing::seam("before_commit").await;
        let (result, _) = storage
            .commit_growing(&staged.object, &ids, version.clone(), false)
            .await;
        crate::testing::seam("after_commit").await;
        match result {
            Ok(version) => WriteOutcome::BatchCommitted {
                key: staged.key,
                upto: ids.len(),
                version,
                finalizers,
                events: staged.block.events as usize,
                bytes: staged.block.bytes,
                object: staged.object,
            },
            Err(error) => WriteOutcome::WriteFailed {
                request: HeldWrite::Commit {
                    staged,
                    ids,
                    version,
                    finalizers,
                },
                error,
            },
        }
    })
}

/// Seals a file. `every_batch`: the version of an `every_batch` file, if
/// known. `already_visible`: an `every_batch` file committed up to date,
/// which sealing only stops writing to.
pub(super) fn seal_file(
    storage: RetryingStorage,
    key: FileKey,
    object: String,
    ids: Vec<String>,
    every_batch: Option<Option<String>>,
    already_visible: bool,
) -> WriteRequest {
    Box::pin(async move {
        let (result, lost) = if already_visible {
            (Ok(()), Vec::new())
        } else {
            crate::testing::seam("before_commit").await;
            let sealed = storage.seal(&object, &ids, every_batch).await;
            crate::testing::seam("after_commit").await;
            sealed
        };
        WriteOutcome::FileSealed { key, result, lost }
    })
}

/// `per_event`: Put Blob with `If-None-Match: *`; an existing object is a
/// replay and counts as written.
pub(super) fn put_event(
    storage: RetryingStorage,
    name: String,
    body: Bytes,
    finalizers: EventFinalizers,
) -> WriteRequest {
    Box::pin(async move {
        let bytes = body.len();
        let result = storage
            .run("Put Blob", || {
                storage.storage.put_if_absent(&name, body.clone())
            })
            .await;
        match result {
            Ok(_) => WriteOutcome::EventPut {
                finalizers,
                bytes,
                object: name,
            },
            Err(error) => WriteOutcome::WriteFailed {
                request: HeldWrite::Put {
                    name,
                    body,
                    finalizers,
                },
                error,
            },
        }
    })
}

/// When `existing` (a committed block list) is `ids` with some blocks left
/// out, in order, and none of those is staged any more, it is a salvage
/// commit of this file (whose state was not recorded before a crash): the
/// ids left out, which are lost.
fn salvaged_before(ids: &[String], existing: &[String], staged: &[String]) -> Option<Vec<String>> {
    let staged: HashSet<&String> = staged.iter().collect();
    let mut rest = existing.iter().peekable();
    let mut left_out = Vec::new();
    for id in ids {
        if rest.peek() == Some(&id) {
            rest.next();
        } else if staged.contains(id) {
            return None;
        } else {
            left_out.push(id.clone());
        }
    }
    (!existing.is_empty() && rest.next().is_none() && !left_out.is_empty()).then_some(left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn writer(root: &std::path::Path) -> RetryingStorage {
        use crate::{backoff::Backoff, internal_events::ComponentTags};
        use std::time::Duration;
        let local = crate::sinks::util::storage::local::LocalStorage::new(
            &format!("file://{}", root.display()),
            "fs",
            true,
        )
        .unwrap();
        let tags = ComponentTags::new("lake", "sink", "adls_partitioned_jsonl");
        RetryingStorage {
            storage: Arc::new(local),
            retry: RetryPolicy {
                attempts: 0,
                backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(1)),
                timeout: Duration::from_secs(10),
            },
            metrics: SinkMetrics::register(&tags),
            failures: RequestFailures::register(&tags),
            tags,
        }
    }

    /// Two writers growing one `every_batch` file (on a real `file://`
    /// lake): the second writer's commit changes the version, so the first
    /// one's next commit is refused with the other-writer error rather than
    /// overwriting it; a version read after a restart is accepted only when
    /// its blocks are ours.
    #[tokio::test]
    async fn a_growing_file_changed_by_another_writer_is_not_committed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (writer(dir.path()), writer(dir.path()));
        let name = "db/c/f.jsonl";
        for (w, id) in [(&a, "a1"), (&a, "a2"), (&b, "b1")] {
            w.storage
                .stage_block(name, id, Bytes::from(format!("{id}\n")))
                .await
                .unwrap();
        }
        let (v1, _) = a.commit_growing(name, &ids("a1"), None, false).await;
        let v1 = v1.unwrap();
        // After a restart (version unknown) our own file is found again.
        let (again, _) = a.commit_growing(name, &ids("a1"), None, false).await;
        assert!(again.is_ok(), "{again:?}");
        let (vb, _) = b.commit_growing(name, &ids("b1"), None, false).await;
        assert_eq!(
            vb.unwrap_err().message,
            changed_by_another_writer(name).message
        );
        // b commits over a's version (as a writer whose read raced a's
        // commit would), then a goes on.
        let current = a.committed_blocks(name).await.unwrap().unwrap().version;
        let (vb, _) = b
            .commit_growing(name, &ids("b1"), Some(current), false)
            .await;
        vb.unwrap();
        let (next, _) = a.commit_growing(name, &ids("a1 a2"), Some(v1), false).await;
        let error = next.unwrap_err();
        assert!(
            !error.retriable && error.message.contains("another writer"),
            "{error:?}"
        );
        let text = std::fs::read_to_string(dir.path().join("fs").join(name)).unwrap();
        assert_eq!(text, "b1\n", "a did not overwrite b's commit");
    }

    #[test]
    fn subsequences() {
        assert!(is_subsequence(&ids("a c"), &ids("a b c")));
        assert!(is_subsequence(&ids(""), &ids("a")));
        assert!(is_subsequence(&ids("a b"), &ids("a b")));
        assert!(!is_subsequence(&ids("c a"), &ids("a b c")));
        assert!(!is_subsequence(&ids("a x"), &ids("a b c")));
        assert!(!is_subsequence(&ids("a b c d"), &ids("a b c")));
    }

    #[test]
    fn a_salvage_commit_is_recognised_only_when_its_gaps_are_gone() {
        let all = ids("a b c d");
        // [b, d] committed, a and c no longer staged: our salvage.
        assert_eq!(
            salvaged_before(&all, &ids("b d"), &ids("")),
            Some(ids("a c"))
        );
        // c is still staged: not ours to explain away.
        assert_eq!(salvaged_before(&all, &ids("b d"), &ids("c")), None);
        // Out of order, foreign ids, empty, or nothing left out.
        assert_eq!(salvaged_before(&all, &ids("d b"), &ids("")), None);
        assert_eq!(salvaged_before(&all, &ids("x"), &ids("")), None);
        assert_eq!(salvaged_before(&all, &ids(""), &ids("")), None);
        assert_eq!(salvaged_before(&all, &all, &ids("")), None);
    }
}
