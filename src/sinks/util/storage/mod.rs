//! The storage the lake sinks write to, behind one small interface that has
//! the semantics of Azure block blobs: staged blocks are durable and
//! invisible, a commit makes a chosen list of them the object's content,
//! and a commit or put can be made conditional on the object not existing
//! yet. Whole objects can also be read, replaced, listed and deleted (the
//! Delta sink reads its table logs back and removes files it no longer
//! needs).
//!
//! - `azure.rs`: the Blob endpoint of an ADLS Gen2 (or any) storage account.
//! - `local.rs`: a `file://` directory with the same guarantees.
//!
//! Every operation of both backends is retried by one policy
//! ([`crate::retry::with_retries`]). [`LakeOptions`] is where a lake is, as
//! every lake sink spells it (`account_url`, `filesystem`,
//! `create_filesystem`, `auth`).

pub mod azure;
#[cfg(test)]
pub mod hooked;
pub mod local;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    azure::auth::{valid_container_name, AuthConfig},
    config::OptionError,
};

/// Where a lake is: the options every lake sink shares, borrowed from its
/// config.
#[derive(Clone, Copy, Debug)]
pub struct LakeOptions<'a> {
    pub account_url: &'a str,
    pub filesystem: &'a str,
    pub create_filesystem: bool,
    pub auth: &'a AuthConfig,
}

impl LakeOptions<'_> {
    /// A `file://` lake on local disk rather than an Azure account.
    pub fn is_local(&self) -> bool {
        self.account_url.starts_with("file:")
    }

    /// The destination and credential checks that need no network; each
    /// error names its option.
    pub fn check(&self, errors: &mut Vec<OptionError>) {
        if self.is_local() {
            if let Err(e) = local::LocalStorage::new(self.account_url, self.filesystem, false) {
                errors.push(OptionError::new(e.key, e.message));
            }
            if !self.auth.chosen().is_empty() {
                errors.push(OptionError::new(
                    "auth",
                    "a `file://` lake takes no credentials; remove the `auth` options",
                ));
            }
            return;
        }
        match azure::service_url(self.account_url) {
            Ok((url, _)) => self.auth.check(url.scheme() == "https", errors),
            Err(e) => errors.push(OptionError::new("account_url", e)),
        }
        if !valid_container_name(self.filesystem) {
            errors.push(OptionError::new(
                "filesystem",
                format!(
                    "{:?} is not a valid filesystem (container) name: 3 to 63 lowercase letters, digits and single hyphens, starting with a letter or digit",
                    self.filesystem
                ),
            ));
        }
    }

    /// The storage backend (no I/O).
    pub fn open(&self) -> crate::Result<Arc<dyn Storage>> {
        Ok(if self.is_local() {
            Arc::new(
                local::LocalStorage::new(self.account_url, self.filesystem, self.create_filesystem)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            Arc::new(azure::AzureStorage::new(self)?)
        })
    }

    /// `validate`'s check of the lake, which creates nothing: what it wrote,
    /// if anything, or why the lake cannot be used.
    pub async fn dry_healthcheck(&self) -> Result<Option<String>, String> {
        self.open()
            .map_err(|e| crate::redact::error(&e))?
            .healthcheck(true)
            .await
    }

    /// The files a sink with this `path_prefix` template writes here: the
    /// text before the template's first field is in every name.
    pub fn file_target(&self, path_prefix: &str) -> Option<crate::sinks::FileTarget> {
        let prefix = path_prefix.split(['{', '%']).next().unwrap_or_default();
        Some(crate::sinks::FileTarget {
            location: self.location()?,
            prefix: prefix.to_string(),
        })
    }

    /// The storage location as one string, equal for two spellings of one
    /// place (for the check that two sinks never write the same files).
    pub fn location(&self) -> Option<String> {
        Some(if self.is_local() {
            let root = url::Url::parse(self.account_url)
                .ok()?
                .to_file_path()
                .ok()?;
            // Two spellings of one folder are one location.
            let root = std::fs::canonicalize(&root).unwrap_or(root);
            format!("{}", root.join(self.filesystem).display())
        } else {
            let (url, account) = azure::service_url(self.account_url).ok()?;
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or_default();
            format!("{host}:{port}/{account}/{}", self.filesystem)
        })
    }
}

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    pub size: u64,
    /// When it was last written, in milliseconds since the epoch (the
    /// storage's clock).
    pub last_modified_ms: i64,
}

/// A failed storage request.
#[derive(Debug, Clone)]
pub struct StorageError {
    /// Whether the same request may succeed later.
    pub retriable: bool,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// HTTP status, if there was a response.
    pub status: Option<u16>,
    /// What went wrong, already free of secrets.
    pub message: String,
    /// A commit named blocks the storage no longer has (Azure's
    /// `InvalidBlockList`: uncommitted blocks are discarded after 7 days,
    /// or when another writer commits the same name).
    pub blocks_missing: bool,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {}

impl StorageError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retriable: false,
            retry_after: None,
            status: None,
            message: message.into(),
            blocks_missing: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            retriable: true,
            ..Self::permanent(message)
        }
    }
}

/// The result of a conditional create.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    /// The object already existed and was left alone.
    AlreadyExists,
}

/// What a commit requires of the object as it is when the commit applies.
/// Every commit is conditional: a request that storage applies after the
/// client gave up on it (and retried) must not roll a file back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// It does not exist (`If-None-Match: *`).
    Absent,
    /// It is the version this version string names (`If-Match: <ETag>`; on
    /// `file://` the visible file's inode).
    Version(String),
}

/// The result of a conditional commit.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The list is the object's content; the object's new version.
    Done(String),
    /// The condition did not hold; nothing was changed.
    ConditionFailed,
}

/// The committed block list of an object and the version it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    pub ids: Vec<String>,
    pub version: String,
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// Stores `data` as an uncommitted block of `name`.
    async fn stage_block(
        &self,
        name: &str,
        block_id: &str,
        data: Bytes,
    ) -> Result<(), StorageError>;

    /// Makes `block_ids` (in order) the content of `name` if `condition`
    /// holds when the commit applies; nothing changes otherwise.
    async fn commit_blocks(
        &self,
        name: &str,
        block_ids: &[String],
        condition: &Condition,
    ) -> Result<Committed, StorageError>;

    /// The committed block ids of `name` and its version, or `None` when it
    /// does not exist.
    async fn committed_blocks(&self, name: &str) -> Result<Option<BlockList>, StorageError>;

    /// The ids of the blocks staged for `name` that storage still holds
    /// (Azure lists the uncommitted ones; `file://` keeps committed blocks
    /// staged until the file is sealed and lists those too).
    async fn uncommitted_blocks(&self, name: &str) -> Result<Vec<String>, StorageError>;

    /// Writes a whole object if it does not exist yet.
    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Created, StorageError>;

    /// Writes a whole object, replacing any previous content atomically.
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError>;

    /// A whole object's content, `None` when it does not exist.
    async fn get(&self, name: &str) -> Result<Option<Bytes>, StorageError>;

    /// Deletes an object; one that does not exist counts as deleted.
    async fn delete(&self, name: &str) -> Result<(), StorageError>;

    /// The objects under `prefix` (a plain string prefix, not a folder),
    /// with their sizes and modification times, in no particular order.
    async fn list_details(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// The names of the objects under `prefix`, in no particular order.
    /// Used at start when a sink's state is missing, to find files that
    /// state would have described.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_details(prefix)
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect())
    }

    /// Forgets the blocks of a sealed object (local staging files; a no-op
    /// on Azure, which drops them itself).
    async fn release(&self, _name: &str, _block_ids: &[String]) {}

    /// Checks that the filesystem is reachable and writable; the error says
    /// why not. At start (`dry_run` false) a missing filesystem is created
    /// when `create_filesystem` is set. With `dry_run` (`validate`) nothing
    /// is created; the answer says what the check wrote, if anything.
    async fn healthcheck(&self, dry_run: bool) -> Result<Option<String>, String>;

    /// Where the files go, for logs (no secrets).
    fn describe(&self) -> String;
}

impl crate::retry::Retriable for StorageError {
    fn retriable(&self) -> bool {
        self.retriable
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    fn timed_out(after: Duration) -> Self {
        Self::transient(format!(
            "request timed out after {:.0}s",
            after.as_secs_f64()
        ))
    }
}
