//! The state store: where a pipeline keeps the little state that makes its
//! writes exactly once (the source checkpoint, the sink's state snapshot and
//! change log), behind one [`StateStore`] trait with two backends:
//! [`LocalStateStore`] (files under `data_dir`, as today) and
//! [`AzureStateStore`] (blobs under `<container>/<id>/`, issue 12).
//!
//! Two kinds of object cover today's state. *Documents* (checkpoint,
//! snapshot) are replaced whole, and only from the [`Version`] the writer
//! read ([`StateStore::replace`]): a writer that missed a newer version
//! cannot overwrite it. *Logs* (the sink's change log) grow by appends, each
//! one request that lands only at the length the writer expects
//! ([`StateStore::append`]): a writer that missed another append, or a retry
//! of an append that already landed, writes nothing.
//!
//! Every write also carries a [`Fence`]: in the Azure store the lease id of
//! the writer's term, checked by the service on the blob itself, so a stale
//! active agent (paused or partitioned past its lease) changes nothing once
//! the next term has taken the blobs over ([`StateStore::take_over`]). The
//! local store's fence is the `data_dir` lock (`crate::lock`).
//!
//! Components reach the store through a [`StateHandle`] (the store, the
//! term's fence and the component's folder): the source checkpoint and the
//! sink's snapshot through [`StateDoc`] (`read`/`replace`), the sink's
//! change log through `create_log`/`append`/`read_log`, compaction through
//! `delete`/`list`. With `[state] store = "azure_blob"`, `crate::ha::agent`
//! calls `take_over` with the term's lease id before any component reads
//! its state, `renew` after each leader renew and `release` on SIGTERM,
//! and ends the term when a write comes back [`StateStoreError::Fenced`].
//! Public, like `crate::ha`, so that `tests/state_store.rs` drives it
//! against Azurite.

pub mod azure;
pub mod handle;
pub mod local;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use snafu::Snafu;

pub use azure::AzureStateStore;
pub use handle::{StateDoc, StateError, StateHandle};
pub use local::LocalStateStore;

/// The version of a document as the store reported it: an ETag in Azure,
/// the file's identity (modification time, inode, length) locally. Opaque:
/// only compared for equality, by the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The writer's right to write, carried by every write.
#[derive(Clone, PartialEq, Eq)]
pub enum Fence {
    /// No lease: the local store, fenced by the `data_dir` lock. The Azure
    /// store refuses writes without a lease.
    None,
    /// The lease id of the writer's term (the leader lease's id, from
    /// [`crate::ha::Leadership::lease_id`]). The Azure store leases every
    /// state blob with it, and the service refuses writes carrying another.
    Lease(String),
}

impl fmt::Debug for Fence {
    // Lease ids are not secrets, but short is enough to tell terms apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("Fence::None"),
            Self::Lease(id) => write!(f, "Fence::Lease({}…)", &id[..id.len().min(8)]),
        }
    }
}

/// A state operation that did not succeed, sorted by what the caller must
/// do about it. `blob` names the object (a path, or a blob URL without SAS).
#[derive(Clone, Debug, Snafu, PartialEq, Eq)]
pub enum StateStoreError {
    /// The writer's lease does not hold the object (another term took it
    /// over, or it was never taken over in this term): this agent must stop
    /// writing state and step down.
    #[snafu(display(
        "{what} {blob}: refused by the lease ({code}): another term of the pipeline holds this blob, so this agent is not (or no longer) its active writer; stop writing state and step down"
    ))]
    Fenced {
        what: &'static str,
        blob: String,
        code: String,
    },
    /// The object is not at the version, length or existence the writer
    /// expected: someone wrote it since it was read (or a retried write
    /// already landed). Nothing was written; read it again.
    #[snafu(display(
        "{what} {blob}: {expected} did not hold ({code}): it changed since it was read; nothing was written, read it again"
    ))]
    ConditionFailed {
        what: &'static str,
        blob: String,
        /// The condition, in words ("version 0x8D…", "length 120", "absent").
        expected: String,
        code: String,
    },
    /// No answer, a connection failure, throttling or a retriable 5xx
    /// ([`crate::azure::retriable_status`]): try again. After
    /// a write the outcome is unknown; a retry with the same condition is
    /// safe (it fails on the condition if the first attempt landed).
    #[snafu(display("{what} {blob}: storage unavailable ({message}); retrying may work"))]
    Unavailable {
        what: &'static str,
        blob: String,
        message: String,
    },
    /// Anything a person has to fix: credentials, a missing container, a
    /// full disk, a name that is not allowed.
    #[snafu(display("{what} {blob}: {message}"))]
    Failed {
        what: &'static str,
        blob: String,
        message: String,
    },
}

impl StateStoreError {
    /// Whether the lease refused the write: the caller's term is over.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    /// Whether a condition (version, length, existence) refused the write.
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, Self::ConditionFailed { .. })
    }
}

/// Where a pipeline's state lives. Names are relative, `/`-separated paths
/// of plain segments (`sinks/lake/state.json`); see [`check_name`].
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Where the state lives (a directory, or a blob URL prefix without SAS).
    fn location(&self) -> String;

    /// Makes `fence`'s term the only writer of every object that exists now,
    /// and returns their names. Call it once per term, before reading any
    /// state: writes of the previous term that land after it are refused,
    /// so what is read afterwards is final. Objects created later by this
    /// term are taken on creation. `earlier` are the fences (lease ids) of
    /// the terms before, newest first. See `azure.rs` for how their leases
    /// are dealt with (changed to this term's, or waited out; never
    /// broken).
    async fn take_over(
        &self,
        fence: &Fence,
        earlier: &[String],
    ) -> Result<Vec<String>, StateStoreError>;

    /// Makes `fence`'s term hold `name`: after a create whose answer was
    /// lost and that is recognised as this term's own, the lease that the
    /// create would have taken. Nothing to do without leases.
    async fn hold(&self, _name: &str, _fence: &Fence) -> Result<(), StateStoreError> {
        Ok(())
    }

    /// Keeps the term's hold on its objects (Renew Lease on each), on the
    /// leader's renew schedule.
    async fn renew(&self, fence: &Fence) -> Result<(), StateStoreError>;

    /// Ends the term's hold (Release Lease on each), so the next term takes
    /// over at once: on a clean handover (SIGTERM).
    async fn release(&self, fence: &Fence) -> Result<(), StateStoreError>;

    /// A document and its version, `None` when it does not exist. Reads are
    /// not fenced (`state show` reads a running agent's state).
    async fn read(&self, name: &str) -> Result<Option<(Bytes, Version)>, StateStoreError>;

    /// Replaces a document whole, atomically, if it is still at `expected`
    /// (`None`: only if it does not exist yet), and returns its new version.
    async fn replace(
        &self,
        name: &str,
        bytes: Bytes,
        expected: Option<&Version>,
        fence: &Fence,
    ) -> Result<Version, StateStoreError>;

    /// Creates an empty log; fails on the condition if it exists.
    async fn create_log(&self, name: &str, fence: &Fence) -> Result<(), StateStoreError>;

    /// Appends `bytes` to a log whose length is `at`, in one request, and
    /// returns the new length. Nothing is written when the length is not
    /// `at` (another writer appended, or this append landed already) or
    /// the log does not exist.
    async fn append(
        &self,
        name: &str,
        bytes: Bytes,
        at: u64,
        fence: &Fence,
    ) -> Result<u64, StateStoreError>;

    /// A log's content (its length is where the next append goes), `None`
    /// when it does not exist.
    async fn read_log(&self, name: &str) -> Result<Option<Bytes>, StateStoreError>;

    /// Deletes an object; deleting one that does not exist succeeds.
    async fn delete(&self, name: &str, fence: &Fence) -> Result<(), StateStoreError>;

    /// The names that start with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateStoreError>;
}

/// Checks an object name: 1 to 512 characters, `/`-separated segments of
/// letters, digits, `-`, `_` and `.`, none empty, `.` or `..`, and not
/// ending in `.tmp` (the local store's temporary files). Names are chosen
/// by the agent, not users, so this only guards against mistakes.
pub fn check_name(name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > 512 {
        "is longer than 512 characters"
    } else if name.ends_with(".tmp") {
        "ends in .tmp (reserved for temporary files)"
    } else if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        "has an empty, `.` or `..` segment"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        "has characters other than letters, digits, `-`, `_`, `.` and `/`"
    } else {
        return Ok(());
    };
    Err(format!("state object name {name:?} {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["checkpoint.json", "sinks/lake/state.3.log", "a-b_c.d"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a b", "ü", "x.tmp"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fence_debug_is_short() {
        let f = Fence::Lease("0123456789abcdef".into());
        assert_eq!(format!("{f:?}"), "Fence::Lease(01234567…)");
    }
}
