//! Storage as the Delta sink uses it: every request with the retry policy
//! of `request.*`, its duration measured, each retry counted and shown in
//! `/health` from the first failed attempt; and, for writes whose rows
//! must not be given up while the agent runs, retried without end once
//! the policy's retries are spent (until storage answers or the agent
//! stops).

use std::{future::Future, sync::Arc, time::Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::{
    internal_events::{delta::DeltaMetrics, requests::RequestFailures, ComponentTags},
    retry::{with_retries, RetryPolicy},
    shutdown::ShutdownSignal,
    sinks::util::storage::{Committed, Condition, Created, ObjectMeta, Storage, StorageError},
};

/// Cheap to clone into request futures.
#[derive(Clone)]
pub struct Requests {
    pub storage: Arc<dyn Storage>,
    pub retry: RetryPolicy,
    pub metrics: DeltaMetrics,
    pub failures: RequestFailures,
    pub tags: ComponentTags,
    /// Fires when the agent stops: requests retried without end give up.
    pub stopping: ShutdownSignal,
    /// `request.concurrency`: requests in flight at once, across tables.
    pub permits: Arc<Semaphore>,
}

impl Requests {
    /// One operation with the retry policy.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        // One permit for the attempts and their backoffs: waiting for a
        // permit must not count against a request's timeout.
        let _permit = self.permits.acquire().await.expect("never closed");
        let started = Instant::now();
        let result = with_retries(&self.retry, op, |e, delay| {
            self.failures.failed(&self.tags, what, &e.message, delay)
        })
        .await;
        self.metrics.request(started.elapsed());
        if result.is_ok() {
            self.failures.succeeded(&self.tags);
        }
        result
    }

    /// [`Self::run`] again and again while the failure is retriable, with
    /// the longest backoff between rounds and one ERROR line a round, until
    /// it succeeds, fails for good, or the agent stops (then the last
    /// error).
    pub async fn run_until_done<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let since = Instant::now();
        loop {
            match self.run(what, &mut op).await {
                Err(e) if e.retriable && !self.stopping.is_cancelled() => {
                    self.metrics.held(what, &e.message, since.elapsed());
                    tokio::select! {
                        _ = tokio::time::sleep(self.retry.backoff.max) => {}
                        _ = self.stopping.cancelled() => return Err(e),
                    }
                }
                other => return other,
            }
        }
    }

    pub async fn stage_block(&self, name: &str, id: &str, data: Bytes) -> Result<(), StorageError> {
        self.run_until_done("Put Block", || {
            self.storage.stage_block(name, id, data.clone())
        })
        .await
    }

    /// Commits a new object's block list; an object that exists already is
    /// this very list committed by an attempt whose answer was lost (names
    /// are unique to the attempt).
    pub async fn commit_new(&self, name: &str, ids: &[String]) -> Result<(), StorageError> {
        let committed = self
            .run_until_done("Put Block List", || {
                self.storage.commit_blocks(name, ids, &Condition::Absent)
            })
            .await?;
        match committed {
            Committed::Done(_) => {
                // Local staging files go; Azure drops nothing it needs.
                self.storage.release(name, ids).await;
                Ok(())
            }
            // Retried like the commit: a failed look here (one 503) would
            // otherwise fail the table until a restart.
            Committed::ConditionFailed => match self
                .run_until_done("Get Block List", || self.storage.committed_blocks(name))
                .await?
            {
                Some(list) if list.ids == ids => Ok(()),
                _ => Err(StorageError::permanent(format!(
                    "Put Block List {name}: the object exists with other content; two writers used one name"
                ))),
            },
        }
    }

    pub async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Created, StorageError> {
        self.run_until_done("Put Blob", || {
            self.storage.put_if_absent(name, data.clone())
        })
        .await
    }

    pub async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.run("Put Blob", || self.storage.put(name, data.clone()))
            .await
    }

    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, StorageError> {
        self.run_until_done("Get Blob", || self.storage.get(name))
            .await
    }

    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.run("Delete Blob", || self.storage.delete(name)).await
    }

    /// A listing for upkeep (vacuum), which tries again at its next turn.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.run("List Blobs", || self.storage.list_details(prefix))
            .await
    }

    /// A listing on the commit path (reading a log that has no
    /// `_last_checkpoint`), retried until done like every other request
    /// there: a bounded one failing a commit would hold the source's
    /// checkpoint until a restart.
    pub async fn list_until_done(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.run_until_done("List Blobs", || self.storage.list_details(prefix))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;
    use crate::{
        backoff::Backoff,
        sinks::util::storage::{
            hooked::{Hooked, Hooks},
            local::LocalStorage,
            BlockList,
        },
    };

    /// The first Put Block List's answer is lost after it is applied and
    /// the first Get Block List fails with a 503.
    #[derive(Default)]
    struct LostAnswers {
        commits: AtomicUsize,
        lists: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Hooks for LostAnswers {
        async fn commit_blocks(
            &self,
            inner: &dyn Storage,
            name: &str,
            ids: &[String],
            condition: &Condition,
        ) -> Result<Committed, StorageError> {
            let result = inner.commit_blocks(name, ids, condition).await;
            if self.commits.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(StorageError::transient("answer lost"));
            }
            result
        }
        async fn committed_blocks(
            &self,
            inner: &dyn Storage,
            name: &str,
        ) -> Result<Option<BlockList>, StorageError> {
            if self.lists.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(StorageError::transient("HTTP 503 ServerBusy"));
            }
            inner.committed_blocks(name).await
        }
    }

    #[tokio::test]
    async fn a_data_file_whose_commit_answer_was_lost_is_found_through_a_failing_look() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let inner: Arc<dyn Storage> = Arc::new(LocalStorage::new(&url, "fs", true).unwrap());
        let tags = ComponentTags::new("lake", "sink", "adls_delta");
        let requests = Requests {
            storage: Arc::new(Hooked {
                inner,
                hooks: LostAnswers::default(),
            }),
            retry: RetryPolicy {
                attempts: 3,
                backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
                timeout: Duration::from_secs(5),
            },
            metrics: DeltaMetrics::register(&tags),
            failures: RequestFailures::register(&tags),
            tags,
            stopping: ShutdownSignal::new(),
            permits: Arc::new(Semaphore::new(4)),
        };
        let name = "t/part-0.parquet";
        let ids = vec!["00000000".to_string()];
        requests
            .stage_block(name, &ids[0], Bytes::from_static(b"rows"))
            .await
            .unwrap();
        requests.commit_new(name, &ids).await.unwrap();
    }
}
