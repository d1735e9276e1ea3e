//! The Blob endpoint of a storage account, through the official SDK
//! (`azure_storage_blob`). ADLS Gen2 accounts with a hierarchical namespace
//! accept Put Block / Put Block List on the Blob endpoint (multi-protocol
//! access), and a `dfs` account URL is mapped to its `blob` twin.
//!
//! The SDK's own retries are off: [`crate::retry::with_retries`] retries every
//! operation with one policy. Blob URLs are built here with literal `/`
//! between path segments (the SDK's `blob_client` would send `%2F`).

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::{
    credentials::TokenCredential,
    error::ErrorKind,
    http::{Etag, Url},
};
use azure_storage_blob::{
    models::{
        BlobContainerClientListBlobsOptions, BlockBlobClientCommitBlockListOptions,
        BlockBlobClientCommitBlockListResultHeaders, BlockBlobClientUploadOptions,
        BlockListHeaders, BlockListType, BlockLookupList,
    },
    BlobClient, BlobClientOptions, BlobContainerClient, BlockBlobClient, BlockBlobClientOptions,
};
use bytes::Bytes;

use super::{
    BlockList, Committed, Condition, Created, LakeOptions, ObjectMeta, Storage, StorageError,
};
// The account URL forms live with the shared client construction; the
// sinks' other modules keep importing them from here.
pub(crate) use crate::azure::client::service_url;
use crate::{
    azure::{self, chain, client::ContainerAccess, AzureFailure},
    redact,
};

/// The scratch blob the healthcheck stages a block on.
const HEALTHCHECK_BLOB: &str = "_mongo_adls_healthcheck";

pub struct AzureStorage {
    /// `<service>/<filesystem>`, with the SAS query when one is used.
    container_url: Url,
    credential: Option<Arc<dyn TokenCredential>>,
    options: BlockBlobClientOptions,
    container: BlobContainerClient,
    create_filesystem: bool,
    describe: String,
}

impl AzureStorage {
    pub fn new(lake: &LakeOptions<'_>) -> Result<Self, String> {
        let access = ContainerAccess::new(lake.account_url, lake.filesystem, lake.auth)?;
        let container = access.container_client().map_err(|e| redact::error(&e))?;
        Ok(Self {
            describe: access.describe(),
            container_url: access.container_url,
            credential: access.credential,
            options: BlockBlobClientOptions {
                client_options: access.client_options,
                ..Default::default()
            },
            container,
            create_filesystem: lake.create_filesystem,
        })
    }

    /// A healthcheck failure as a sentence with its likely cause.
    fn explain(&self, e: azure_core::Error) -> String {
        match e.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => {
                let code = u16::from(*status);
                let ec = error_code.as_deref().unwrap_or("");
                match (code, ec) {
                    (403, _) => format!("credentials were rejected by {} (HTTP 403 {ec}); check the key, SAS token (permissions and expiry) or role assignment", self.describe),
                    (404, "ContainerNotFound") => format!("filesystem {} does not exist; create it or set create_filesystem = true", self.describe),
                    _ => format!("{}: HTTP {code} {ec}", self.describe),
                }
            }
            ErrorKind::Connection => format!(
                "cannot reach {} (DNS or connection failure): {}",
                self.describe,
                redact::text(&chain(&e))
            ),
            ErrorKind::Credential => format!(
                "could not get a token for {}: {}",
                self.describe,
                redact::text(&chain(&e))
            ),
            _ => format!("{}: {}", self.describe, redact::text(&chain(&e))),
        }
    }

    fn blob(&self, name: &str) -> Result<BlockBlobClient, StorageError> {
        let mut url = self.container_url.clone();
        url.path_segments_mut()
            .map_err(|_| StorageError::permanent("invalid container URL"))?
            .extend(name.split('/'));
        BlockBlobClient::new(url, self.credential.clone(), Some(self.options.clone()))
            .map_err(|e| StorageError::permanent(redact::error(&e)))
    }

    /// A client for reads and deletes of `name` (any blob type).
    fn any_blob(&self, name: &str) -> Result<BlobClient, StorageError> {
        let mut url = self.container_url.clone();
        url.path_segments_mut()
            .map_err(|_| StorageError::permanent("invalid container URL"))?
            .extend(name.split('/'));
        let options = BlobClientOptions {
            client_options: self.options.client_options.clone(),
            ..Default::default()
        };
        BlobClient::new(url, self.credential.clone(), Some(options))
            .map_err(|e| StorageError::permanent(redact::error(&e)))
    }

    /// The block ids of one list of `name` and the blob's ETag, or `None`
    /// when it does not exist.
    async fn block_list(
        &self,
        name: &str,
        which: BlockListType,
    ) -> Result<Option<(Vec<String>, Option<String>)>, StorageError> {
        let committed = which == BlockListType::Committed;
        let rsp = match self.blob(name)?.get_block_list(which, None).await {
            Ok(rsp) => rsp,
            Err(e) if e.http_status().map(u16::from) == Some(404) => return Ok(None),
            Err(e) => return Err(map_error(&format!("Get Block List {name}"), e)),
        };
        let etag = rsp.etag().ok().flatten().map(|e| e.to_string());
        let list = rsp
            .into_model()
            .map_err(|e| StorageError::transient(e.to_string()))?;
        let blocks = if committed {
            list.committed_blocks
        } else {
            list.uncommitted_blocks
        };
        let ids = blocks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| b.name.map(|n| String::from_utf8_lossy(&n).into_owned()))
            .collect();
        Ok(Some((ids, etag)))
    }
}

/// Maps an SDK error to a retriable or permanent storage error, by the
/// shared classification.
fn map_error(what: &str, e: azure_core::Error) -> StorageError {
    let status = azure::status(&e);
    let (retriable, message) = match azure::classify(&e) {
        AzureFailure::Answered { status, code } => (false, format!("HTTP {status} {code}")),
        AzureFailure::Unavailable(message) => (true, message),
        AzureFailure::Failed(message) => (false, message),
    };
    StorageError {
        retriable,
        retry_after: azure::retry_after(&e),
        blocks_missing: matches!(&status, Some((400, code)) if code == "InvalidBlockList"),
        status: status.map(|(s, _)| s),
        message: format!("{what}: {message}"),
    }
}

fn already_exists(e: &azure_core::Error) -> bool {
    matches!(e.kind(), ErrorKind::HttpResponse { status, error_code, .. }
        if u16::from(*status) == 409 && error_code.as_deref() == Some("BlobAlreadyExists"))
}

/// `If-Match` did not hold (412 `ConditionNotMet`).
fn condition_not_met(e: &azure_core::Error) -> bool {
    matches!(e.kind(), ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 412)
}

#[async_trait]
impl Storage for AzureStorage {
    async fn stage_block(
        &self,
        name: &str,
        block_id: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let blob = self.blob(name)?;
        let len = data.len() as u64;
        blob.stage_block(block_id.as_bytes(), len, data.into(), None)
            .await
            .map(|_| ())
            .map_err(|e| map_error(&format!("Put Block {name}"), e))
    }

    async fn commit_blocks(
        &self,
        name: &str,
        block_ids: &[String],
        condition: &Condition,
    ) -> Result<Committed, StorageError> {
        let blob = self.blob(name)?;
        let list = BlockLookupList {
            latest: Some(block_ids.iter().map(|id| id.as_bytes().to_vec()).collect()),
            ..Default::default()
        };
        let content = list
            .try_into()
            .map_err(|e: azure_core::Error| StorageError::permanent(e.to_string()))?;
        let options = match condition {
            Condition::Absent => BlockBlobClientCommitBlockListOptions {
                if_none_match: Some(Etag::from("*")),
                ..Default::default()
            },
            Condition::Version(etag) => BlockBlobClientCommitBlockListOptions {
                if_match: Some(Etag::from(etag.clone())),
                ..Default::default()
            },
        };
        let what = || format!("Put Block List {name}");
        match blob.commit_block_list(content, Some(options)).await {
            Ok(rsp) => match rsp.etag().ok().flatten() {
                Some(etag) => Ok(Committed::Done(etag.to_string())),
                None => Err(StorageError::permanent(format!(
                    "{}: the response has no ETag",
                    what()
                ))),
            },
            Err(e) if already_exists(&e) || condition_not_met(&e) => Ok(Committed::ConditionFailed),
            Err(e) => Err(map_error(&what(), e)),
        }
    }

    async fn committed_blocks(&self, name: &str) -> Result<Option<BlockList>, StorageError> {
        match self.block_list(name, BlockListType::Committed).await? {
            None => Ok(None),
            Some((ids, Some(version))) => Ok(Some(BlockList { ids, version })),
            Some((_, None)) => Err(StorageError::permanent(format!(
                "Get Block List {name}: the response has no ETag"
            ))),
        }
    }

    async fn uncommitted_blocks(&self, name: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .block_list(name, BlockListType::Uncommitted)
            .await?
            .map(|(ids, _)| ids)
            .unwrap_or_default())
    }

    async fn list_details(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        use futures::TryStreamExt;
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            ..Default::default()
        };
        let what = format!("List Blobs {prefix}");
        let mut pages = self
            .container
            .list_blobs(Some(options))
            .map_err(|e| map_error(&what, e))?
            .into_pages();
        let mut objects = Vec::new();
        loop {
            let page = match pages.try_next().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                // No filesystem yet (`create_filesystem`): no files in it.
                Err(e) if matches!(e.kind(), ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 404) => {
                    break
                }
                Err(e) => return Err(map_error(&what, e)),
            };
            let page = page.into_model().map_err(|e| map_error(&what, e))?;
            objects.extend(page.blob_items.into_iter().filter_map(|b| {
                let properties = b.properties.unwrap_or_default();
                Some(ObjectMeta {
                    name: b.name?,
                    size: properties.content_length.unwrap_or_default(),
                    last_modified_ms: properties
                        .last_modified
                        .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
                })
            }));
        }
        Ok(objects)
    }

    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Created, StorageError> {
        let blob = self.blob(name)?;
        let options = BlockBlobClientUploadOptions {
            // One Put Blob request whatever the size (below 256 MiB).
            partition_size: std::num::NonZero::new(256 * 1024 * 1024),
            ..Default::default()
        }
        .if_not_exists();
        match blob.upload(data.into(), Some(options)).await {
            Ok(_) => Ok(Created::Created),
            // Azurite answers 409 BlobAlreadyExists; the only condition
            // is "absent", so a 412 means the same.
            Err(e) if already_exists(&e) || condition_not_met(&e) => Ok(Created::AlreadyExists),
            Err(e) => Err(map_error(&format!("Put Blob {name}"), e)),
        }
    }

    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        let blob = self.blob(name)?;
        let options = BlockBlobClientUploadOptions {
            partition_size: std::num::NonZero::new(256 * 1024 * 1024),
            ..Default::default()
        };
        blob.upload(data.into(), Some(options))
            .await
            .map(|_| ())
            .map_err(|e| map_error(&format!("Put Blob {name}"), e))
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, StorageError> {
        let what = || format!("Get Blob {name}");
        let rsp = match self.any_blob(name)?.download(None).await {
            Ok(rsp) => rsp,
            Err(e) if e.http_status().map(u16::from) == Some(404) => return Ok(None),
            Err(e) => return Err(map_error(&what(), e)),
        };
        rsp.body
            .collect()
            .await
            .map(Some)
            .map_err(|e| map_error(&what(), e))
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        match self.any_blob(name)?.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(()),
            Err(e) => Err(map_error(&format!("Delete Blob {name}"), e)),
        }
    }

    async fn healthcheck(&self, dry_run: bool) -> Result<Option<String>, String> {
        let explain = |e: azure_core::Error| {
            // Credentials are read once, at start: a refusal now ends the
            // start with exit 78 (see `refused_by_configuration`).
            if matches!(e.http_status().map(u16::from), Some(401 | 403)) {
                crate::topology::refused_by_configuration();
            }
            self.explain(e)
        };
        let missing = |e: &azure_core::Error| {
            matches!(e.kind(), ErrorKind::HttpResponse { status, error_code, .. }
                if u16::from(*status) == 404 && error_code.as_deref() == Some("ContainerNotFound"))
        };
        if !dry_run && self.create_filesystem {
            match self.container.create(None).await {
                Ok(_) => tracing::info!("Created filesystem {}.", self.describe),
                Err(e) if matches!(e.kind(), ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 409) =>
                    {}
                Err(e) => return Err(explain(e)),
            }
        }
        // Stage an uncommitted block on a scratch name: proves write access
        // without creating anything visible (Azure drops it within 7 days),
        // with a request the sink itself makes, so a SAS that lets the sink
        // write always passes (a container's properties need another
        // permission the sink never uses).
        let blob = self.blob(HEALTHCHECK_BLOB).map_err(|e| e.message)?;
        match blob
            .stage_block(b"healthcheck", 2, Bytes::from_static(b"ok").into(), None)
            .await
        {
            Ok(_) => {}
            Err(e) if dry_run && missing(&e) && self.create_filesystem => {
                return Ok(Some(format!(
                    "nothing written; filesystem {} does not exist and is created at start (create_filesystem = true)",
                    self.describe
                )))
            }
            Err(e) => return Err(explain(e)),
        }
        Ok(Some(format!(
            "staged one uncommitted 2-byte block on {}/{HEALTHCHECK_BLOB} to prove write access (never committed, so never visible; Azure discards it after 7 days)",
            self.describe
        )))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
