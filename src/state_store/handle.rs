//! What components hold of the state store: the store, the fence of the
//! current term, and the folder of one component (`<component id>/`).
//! Components name their objects relative to that folder
//! (`checkpoint.json`, `state.json`, `state.3.log`), so the local store
//! keeps today's `data_dir/<component id>/` layout and the Azure store
//! puts the same names under `<container>/<pipeline id>/<component id>/`.

use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use snafu::Snafu;
use tokio::sync::watch;

use super::{Fence, LocalStateStore, StateStore, StateStoreError, Version};
use crate::{
    ha::Leadership,
    retry::{retry, Retried},
};

/// A state operation that failed.
#[derive(Debug, Snafu)]
pub enum StateError {
    #[snafu(display("{source}"))]
    Store { source: StateStoreError },
    #[snafu(display(
        "state {name} is corrupt ({source}); restore it from a backup. Without it the start check refuses to start and says what is lost; `--accept-data-gap` then starts anyway and logs the gap"
    ))]
    Corrupt {
        name: String,
        source: serde_json::Error,
    },
}

impl StateError {
    /// Whether the writer's term is over (the lease refused the write, or
    /// the term passed its deadline before the write was sent).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Store { source } if source.is_fenced())
    }

    /// Whether a condition (version, length, existence) refused the write.
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, Self::Store { source } if source.is_condition_failed())
    }
}

impl From<StateStoreError> for StateError {
    fn from(source: StateStoreError) -> Self {
        Self::Store { source }
    }
}

/// The state of one component (or, unscoped, of the whole pipeline).
#[derive(Clone)]
pub struct StateHandle {
    store: Arc<dyn StateStore>,
    fence: Fence,
    /// `""` or `"<component id>/"`.
    prefix: String,
    /// Under a leader lease: checked before every write, so a term past its
    /// deadline sends nothing even before the election says it is over.
    /// The service-side lease check is what fences; this only narrows the
    /// window in which a stale writer tries.
    leadership: Option<watch::Receiver<Leadership>>,
    /// Set, for every clone, once a write was refused as fenced: the term
    /// is over even if the election has not noticed yet.
    fenced: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateHandle({})", self.location(""))
    }
}

impl StateHandle {
    pub fn new(store: Arc<dyn StateStore>, fence: Fence) -> Self {
        Self {
            store,
            fence,
            prefix: String::new(),
            leadership: None,
            fenced: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Whether a write through this handle (or a clone) was refused
    /// because another term holds the state.
    pub fn write_was_fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Resolves once a write was refused as fenced (see
    /// [`Self::write_was_fenced`]): the owner stops the components then, as a
    /// component may only log the error and go on.
    pub async fn until_write_fenced(&self) {
        let _ = self.fenced.subscribe().wait_for(|fenced| *fenced).await;
    }

    /// Passes a store result on, noting a fenced refusal. Under a lease a
    /// write refused on its condition (the version, length or existence it
    /// was read at) is one too: only another term changes the state, e.g.
    /// a log it compacted away while this term was paused, or after
    /// storage forgot this term's leases. The owner then steps down
    /// instead of treating it as a failure.
    fn noted<T>(&self, result: Result<T, StateStoreError>) -> Result<T, StateError> {
        if let Err(e) = &result {
            let leased = matches!(self.fence, Fence::Lease(_));
            if e.is_fenced() || (leased && e.is_condition_failed()) {
                self.fenced.send_replace(true);
            }
        }
        Ok(result?)
    }

    /// Files under `dir` (a `data_dir`), unfenced.
    pub fn local(dir: impl Into<std::path::PathBuf>) -> Self {
        Self::new(Arc::new(LocalStateStore::new(dir)), Fence::None)
    }

    /// The same handle, refusing writes once `leadership` no longer holds
    /// this handle's lease.
    pub fn with_leadership(self, leadership: watch::Receiver<Leadership>) -> Self {
        Self {
            leadership: Some(leadership),
            ..self
        }
    }

    /// The folder of component `id`.
    pub fn component(&self, id: &str) -> Self {
        Self {
            prefix: format!("{}{id}/", self.prefix),
            ..self.clone()
        }
    }

    /// Where `name` lives, for messages (a path, or a blob URL without SAS).
    pub fn location(&self, name: &str) -> String {
        format!(
            "{}/{}{name}",
            self.store.location().trim_end_matches('/'),
            self.prefix
        )
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether this handle's term is over (never, without a lease).
    pub fn term_over(&self) -> bool {
        match (&self.leadership, &self.fence) {
            (Some(rx), Fence::Lease(id)) => rx.borrow().lease_id() != Some(id.as_str()),
            _ => false,
        }
    }

    /// Runs one state operation, retried while storage is unavailable
    /// (see [`Self::again`]); a write (`write`) is sent only while the term
    /// lasts.
    async fn retried<T, F, Fut>(
        &self,
        what: &'static str,
        name: &str,
        write: bool,
        mut op: F,
    ) -> Retried<T, StateStoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StateStoreError>>,
    {
        let attempt = || {
            let refused = (write && self.term_over()).then(|| StateStoreError::Fenced {
                what,
                blob: self.location(name),
                code: "the term ended (its lease was lost or its renew deadline passed)".into(),
            });
            let request = op();
            async move {
                match refused {
                    Some(e) => Err(e),
                    None => request.await,
                }
            }
        };
        retry(attempt, |e, n| self.again(e, n, what, name)).await
    }

    /// The pause before retrying a failed state operation, or `None`:
    /// without a limit while storage is unavailable, since the state must
    /// be written before anything is acknowledged (the sink waits, and so
    /// the source), but never past the term: a write is refused once the
    /// lease is gone, and reads give up then too.
    fn again(
        &self,
        e: &StateStoreError,
        attempt: u32,
        what: &'static str,
        name: &str,
    ) -> Option<std::time::Duration> {
        if !matches!(e, StateStoreError::Unavailable { .. }) || self.term_over() {
            return None;
        }
        // Without a term (`state show`, a read-only look) a few tries do:
        // a person is waiting for an answer, not a pipeline for a write.
        if self.leadership.is_none() && attempt >= 5 {
            return None;
        }
        if attempt.is_multiple_of(10) {
            tracing::warn!(
                state = %self.location(name),
                attempt = attempt + 1,
                "State {what} failed: {e}; retrying until it succeeds or this agent's term ends (nothing is acknowledged meanwhile).",
            );
        }
        Some(RETRY.delay(attempt))
    }

    /// One JSON document of this folder.
    pub fn doc(&self, name: &str) -> StateDoc {
        StateDoc {
            handle: self.clone(),
            name: name.to_string(),
            version: Arc::new(Mutex::new(None)),
        }
    }

    /// Creates an empty log. Retried while storage is unavailable; a log
    /// that exists empty after an attempt whose answer was lost is ours.
    pub async fn create_log(&self, name: &str) -> Result<(), StateError> {
        let full = self.full(name);
        let tried = self
            .retried("create log", name, true, || {
                self.store.create_log(&full, &self.fence)
            })
            .await;
        match tried.result {
            Err(e) if e.is_condition_failed() && tried.uncertain => {
                let log = self.read_log(name).await?;
                if log.is_some_and(|l| l.is_empty()) {
                    return self.hold(name).await;
                }
                self.noted(Err(e))
            }
            other => self.noted(other),
        }
    }

    /// Appends `bytes` to a log whose length is `at`; the new length.
    /// Retried while storage is unavailable; after an attempt whose answer
    /// was lost, a log that ends at `at + bytes` with `bytes` is that
    /// attempt having landed.
    pub async fn append(&self, name: &str, bytes: Bytes, at: u64) -> Result<u64, StateError> {
        let end = at + bytes.len() as u64;
        let full = self.full(name);
        let tried = self
            .retried("append", name, true, || {
                self.store.append(&full, bytes.clone(), at, &self.fence)
            })
            .await;
        match tried.result {
            Err(e) if e.is_condition_failed() && tried.uncertain => {
                let log = self.read_log(name).await?.unwrap_or_default();
                if log.len() as u64 == end && log[at as usize..] == bytes[..] {
                    return Ok(end);
                }
                self.noted(Err(e))
            }
            other => self.noted(other),
        }
    }

    /// Creates a document with `bytes` as they are (an import). A document
    /// that exists with exactly `bytes` counts as created (a
    /// retry, or an import resumed).
    pub async fn put_new(&self, name: &str, bytes: Bytes) -> Result<(), StateError> {
        let full = self.full(name);
        let tried = self
            .retried("replace", name, true, || {
                self.store.replace(&full, bytes.clone(), None, &self.fence)
            })
            .await;
        match tried.result {
            Err(e) if e.is_condition_failed() => {
                let now = self.doc(name).read().await?;
                if now.is_some_and(|(b, _)| b == bytes) {
                    return self.hold(name).await;
                }
                self.noted(Err(e))
            }
            other => self.noted(other.map(|_| ())),
        }
    }

    /// Takes this term's lease on `name` (see [`StateStore::hold`]).
    async fn hold(&self, name: &str) -> Result<(), StateError> {
        let full = self.full(name);
        let tried = self
            .retried("hold", name, true, || self.store.hold(&full, &self.fence))
            .await;
        self.noted(tried.result)
    }

    /// A log's content; reads are retried while storage is unavailable.
    pub async fn read_log(&self, name: &str) -> Result<Option<Bytes>, StateError> {
        let full = self.full(name);
        let tried = self
            .retried("read log", name, false, || self.store.read_log(&full))
            .await;
        Ok(tried.result?)
    }

    /// Deletes an object (deleting one that is gone succeeds, so retries
    /// are safe).
    pub async fn delete(&self, name: &str) -> Result<(), StateError> {
        let full = self.full(name);
        let tried = self
            .retried("delete", name, true, || {
                self.store.delete(&full, &self.fence)
            })
            .await;
        self.noted(tried.result)
    }

    /// The names in this folder that start with `prefix`, relative to the
    /// folder.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let full = self.full(prefix);
        let names = self
            .retried("list", prefix, false, || self.store.list(&full))
            .await
            .result?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.strip_prefix(&self.prefix).map(str::to_string))
            .collect())
    }
}

/// A JSON document replaced whole. Clones share the version last read or
/// written, so every writer of the document writes from the newest one; a
/// write from any other version (another writer's) fails.
#[derive(Clone, Debug)]
pub struct StateDoc {
    handle: StateHandle,
    name: String,
    version: Arc<Mutex<Option<Version>>>,
}

impl StateDoc {
    /// Where the document lives, for messages.
    pub fn location(&self) -> String {
        self.handle.location(&self.name)
    }

    /// Reads the document, or `None` when it does not exist yet; later
    /// saves replace the version read.
    pub async fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, StateError> {
        Ok(self.load_sized().await?.map(|(value, _)| value))
    }

    /// [`Self::load`], with the document's size in bytes.
    pub async fn load_sized<T: DeserializeOwned>(&self) -> Result<Option<(T, u64)>, StateError> {
        let read = self.read().await?;
        let Some((bytes, version)) = read else {
            *self.version.lock().expect("not poisoned") = None;
            return Ok(None);
        };
        let value = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
            name: self.location(),
            source,
        })?;
        *self.version.lock().expect("not poisoned") = Some(version);
        Ok(Some((value, bytes.len() as u64)))
    }

    /// Replaces the document atomically and durably, from the version last
    /// read or written (or only if it does not exist, when none was), and
    /// returns its size in bytes.
    pub async fn save<T: Serialize>(&self, value: &T) -> Result<u64, StateError> {
        let bytes = Bytes::from(serde_json::to_vec_pretty(value).expect("state serializes"));
        let size = bytes.len() as u64;
        let expected = self.version.lock().expect("not poisoned").clone();
        let (handle, full) = (&self.handle, self.handle.full(&self.name));
        let tried = handle
            .retried("replace", &self.name, true, || {
                handle
                    .store
                    .replace(&full, bytes.clone(), expected.as_ref(), &handle.fence)
            })
            .await;
        let version = match tried.result {
            Err(e) if e.is_condition_failed() && tried.uncertain => {
                // An attempt whose answer was lost may have landed: the
                // document then holds exactly these bytes.
                match self.read().await? {
                    Some((now, version)) if now == bytes => {
                        handle.hold(&self.name).await?;
                        version
                    }
                    _ => return handle.noted(Err(e)),
                }
            }
            other => handle.noted(other)?,
        };
        *self.version.lock().expect("not poisoned") = Some(version);
        Ok(size)
    }

    /// The document's bytes and version, retried while storage is
    /// unavailable.
    async fn read(&self) -> Result<Option<(Bytes, Version)>, StateError> {
        let (handle, full) = (&self.handle, self.handle.full(&self.name));
        let tried = handle
            .retried("read", &self.name, false, || handle.store.read(&full))
            .await;
        Ok(tried.result?)
    }
}

/// The pause between a state operation's retries.
const RETRY: crate::backoff::Backoff = crate::backoff::Backoff::new(
    std::time::Duration::from_millis(50),
    std::time::Duration::from_secs(2),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn documents_round_trip_and_refuse_other_writers() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateHandle::local(dir.path()).component("src");
        let doc = state.doc("checkpoint.json");
        assert_eq!(doc.load::<u32>().await.unwrap(), None);
        doc.save(&1u32).await.unwrap();
        assert!(dir.path().join("src/checkpoint.json").exists());
        // A clone shares the version: it writes from the newest one.
        doc.clone().save(&2u32).await.unwrap();
        doc.save(&3u32).await.unwrap();
        assert_eq!(doc.load::<u32>().await.unwrap(), Some(3));

        // A second handle that read before the last write cannot write.
        let other = state.doc("checkpoint.json");
        other.load::<u32>().await.unwrap();
        doc.save(&4u32).await.unwrap();
        let err = other.save(&5u32).await.unwrap_err();
        assert!(err.to_string().contains("did not hold"), "{err}");

        std::fs::write(dir.path().join("src/checkpoint.json"), b"{not json").unwrap();
        let err = doc.load::<u32>().await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(err.to_string().contains("src/checkpoint.json"), "{err}");
    }

    #[tokio::test]
    async fn lists_relative_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateHandle::local(dir.path());
        let a = root.component("a");
        a.doc("state.json").save(&1u32).await.unwrap();
        a.create_log("state.1.log").await.unwrap();
        root.component("ab")
            .doc("x.json")
            .save(&1u32)
            .await
            .unwrap();
        assert_eq!(
            a.list("state.").await.unwrap(),
            vec!["state.1.log".to_string(), "state.json".to_string()]
        );
    }
}
