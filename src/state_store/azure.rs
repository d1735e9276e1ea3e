//! The Azure state store: objects are blobs `<container>/<id>/<name>` of
//! the storage account (documents are block blobs, logs append blobs),
//! reached through the Blob endpoint with any credential the sink accepts
//! ([`ContainerAccess`]).
//!
//! Fencing and takeover (leases, and why they are changed, never
//! broken): see `azure/leases.rs`.
//!
//! What leases cannot fence: creating a blob (there is no blob yet to hold
//! a lease). A stale term can still create a new name. Readers follow only
//! names recorded in fenced documents (the snapshot names its log), so such
//! a blob is never read as state; the next compaction lists and deletes it.
//!
//! Azurite (3.35) checks all of this as Azure does: lease ids on Put Blob,
//! Append Block and Delete Blob, `If-Match`/`If-None-Match` on Put Blob,
//! and the append position. It checks the ETag condition before the lease
//! (a stale writer with a stale ETag gets `ConditionNotMet`, with the
//! current one `LeaseIdMismatchWithBlobOperation`), and the lease before
//! the append position. Either way the write is refused.

use std::{collections::BTreeSet, fmt, future::Future, sync::Mutex, time::Duration};

use async_trait::async_trait;
use azure_core::http::Etag;
use azure_storage_blob::{
    models::{
        AppendBlobClientAppendBlockOptions, AppendBlobClientCreateOptions, BlobClientDeleteOptions,
        BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions,
    },
    BlobClient, BlobClientOptions, BlobContainerClient,
};
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::time::Instant;

use super::{check_name, Fence, StateStore, StateStoreError, Version};
use crate::{
    azure::{self, auth::AuthConfig, chain, client::ContainerAccess, content},
    redact,
};

mod errors;
mod leases;
use errors::{map_error, version};

/// Each request gets this long before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a state lease lasts: Azure's longest fixed lease, so it is
/// renewed every [`AzureStateStore::RENEW_EVERY`] instead of with every
/// renew of the leader lease. A new term does not wait for it: it changes
/// it to its own id (see the module doc).
const STATE_LEASE_SECS: u32 = 60;

/// The blobs of one pipeline's state, `<container>/<id>/`.
pub struct AzureStateStore {
    access: ContainerAccess,
    container: BlobContainerClient,
    id: String,
    /// `<container URL>/<id>` without SAS, for messages.
    location: String,
    lease_secs: u32,
    timeout: Duration,
    /// How long [`StateStore::take_over`] waits for the previous term's
    /// leases to run out.
    takeover_wait: Duration,
    /// The names this term holds a lease on: what `renew` and `release`
    /// go through.
    held: Mutex<BTreeSet<String>>,
}

impl fmt::Debug for AzureStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureStateStore")
            .field("location", &self.location)
            .field("lease_secs", &self.lease_secs)
            .finish_non_exhaustive()
    }
}

/// What each request needs to say about its blob.
struct Target {
    client: BlobClient,
    name: String,
    /// The blob's URL without SAS.
    blob: String,
}

impl AzureStateStore {
    /// The state of pipeline `id` in `container` of the account at
    /// `account_url` (every URL form and credential the sink accepts), its
    /// blobs leased for `lease_secs` (15 to 60, the leader lease's). No
    /// request is sent.
    pub fn new(
        account_url: &str,
        container: &str,
        auth: &AuthConfig,
        id: &str,
        lease_secs: u32,
    ) -> Result<Self, StateStoreError> {
        let failed = |message: String| StateStoreError::Failed {
            what: "configure",
            blob: format!("{account_url}/{container}/{id}"),
            message: redact::text(&message),
        };
        if !(15..=60).contains(&lease_secs) {
            return Err(failed(format!(
                "`lease_secs` = {lease_secs} is out of range: Azure Blob leases last 15 to 60 seconds"
            )));
        }
        if id.contains('/') {
            return Err(failed("the pipeline id must be one path segment".into()));
        }
        check_name(id).map_err(failed)?;
        let access = ContainerAccess::new(account_url, container, auth).map_err(failed)?;
        let container = access.container_client().map_err(|e| failed(chain(&e)))?;
        let location = format!("{}/{id}", access.describe().trim_end_matches('/'));
        Ok(Self {
            access,
            container,
            id: id.to_string(),
            location,
            lease_secs,
            timeout: REQUEST_TIMEOUT,
            takeover_wait: Self::default_takeover_wait(lease_secs),
            held: Mutex::new(BTreeSet::new()),
        })
    }

    /// The same store with another per-request timeout.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// How often the active renews the state leases (a quarter of their
    /// 60 s): three times before one could run out.
    pub const RENEW_EVERY: Duration = Duration::from_secs(STATE_LEASE_SECS as u64 / 4);

    /// How long a takeover waits for a state lease it cannot change (its
    /// term's id was not recorded) to run out: the state lease, plus the
    /// leader lease and 5 s, since a paused stale active may renew once
    /// more before it notices.
    fn default_takeover_wait(lease_secs: u32) -> Duration {
        Duration::from_secs(u64::from(STATE_LEASE_SECS + lease_secs) + 5)
    }

    /// The same store waiting this long at takeover for a previous term's
    /// leases to run out (default: see `default_takeover_wait`).
    pub fn with_takeover_wait(self, takeover_wait: Duration) -> Self {
        Self {
            takeover_wait,
            ..self
        }
    }

    fn target(&self, what: &'static str, name: &str) -> Result<Target, StateStoreError> {
        let blob = format!("{}/{name}", self.location);
        let failed = |message: String| StateStoreError::Failed {
            what,
            blob: blob.clone(),
            message: redact::text(&message),
        };
        check_name(name).map_err(failed)?;
        let url = self
            .access
            .blob_url(&format!("{}/{name}", self.id))
            .map_err(failed)?;
        let client = BlobClient::new(
            url,
            self.access.credential.clone(),
            Some(BlobClientOptions {
                client_options: self.access.client_options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| failed(chain(&e)))?;
        Ok(Target {
            client,
            name: name.to_string(),
            blob,
        })
    }

    /// The lease id of a write's fence: the Azure store writes only under
    /// a term's lease.
    fn lease_id<'f>(
        &self,
        what: &'static str,
        t: &Target,
        fence: &'f Fence,
    ) -> Result<&'f str, StateStoreError> {
        match fence {
            Fence::Lease(id) => Ok(id),
            Fence::None => Err(StateStoreError::Failed {
                what,
                blob: t.blob.clone(),
                message: "the Azure state store writes only under the lease of the pipeline's active term (a write without a fence was attempted: a bug)".into(),
            }),
        }
    }

    /// Runs one request within the timeout, mapping its error; `expected`
    /// names the request's condition for the message.
    async fn call<T>(
        &self,
        what: &'static str,
        blob: &str,
        expected: &str,
        request: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<T, StateStoreError> {
        azure::call(self.timeout, request)
            .await
            .map_err(|failure| map_error(what, blob, expected, failure))
    }

    fn held_names(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Get Blob: the content and its ETag, `None` when it does not exist.
    async fn download(
        &self,
        what: &'static str,
        name: &str,
    ) -> Result<Option<(Bytes, Option<Etag>)>, StateStoreError> {
        let t = self.target(what, name)?;
        let got = self
            .call(what, &t.blob, "the blob to exist", async {
                let rsp = t.client.download(None).await?;
                let etag = rsp.properties.etag.clone();
                Ok((rsp.body.collect().await?, etag))
            })
            .await;
        match got {
            Ok(found) => Ok(Some(found)),
            Err(StateStoreError::ConditionFailed { code, .. }) if code == "BlobNotFound" => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl StateStore for AzureStateStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn take_over(
        &self,
        fence: &Fence,
        earlier: &[String],
    ) -> Result<Vec<String>, StateStoreError> {
        let lease_id = match fence {
            Fence::Lease(id) => id.clone(),
            Fence::None => {
                return Err(StateStoreError::Failed {
                    what: "take over",
                    blob: self.location.clone(),
                    message: "taking the state over needs the term's lease id".into(),
                })
            }
        };
        self.held_names().clear();
        let deadline = Instant::now() + self.takeover_wait;
        let mut taken = Vec::new();
        // The leader blob is the election's (`crate::ha`), leased by it
        // with this same id; releasing it is the election's job too.
        for name in self.list("").await?.into_iter().filter(|n| n != "leader") {
            if self.take_one(&name, &lease_id, earlier, deadline).await? {
                taken.push(name);
            }
        }
        Ok(taken)
    }

    async fn hold(&self, name: &str, fence: &Fence) -> Result<(), StateStoreError> {
        let t = self.target("Acquire Lease", name)?;
        let lease_id = self.lease_id("Acquire Lease", &t, fence)?.to_string();
        // Acquiring with the id that already holds it is a renew.
        self.acquire(&t, &lease_id).await.map(|_| ())
    }

    async fn renew(&self, fence: &Fence) -> Result<(), StateStoreError> {
        let names: Vec<String> = self.held_names().iter().cloned().collect();
        for name in names {
            let t = self.target("Renew Lease", &name)?;
            let lease_id = self.lease_id("Renew Lease", &t, fence)?.to_string();
            let renewed = self
                .call("Renew Lease", &t.blob, "the blob to exist", async {
                    t.client.renew_lease(lease_id, None).await
                })
                .await;
            match renewed {
                Ok(_) => {}
                // Deleted by this term: nothing to hold any more.
                Err(StateStoreError::ConditionFailed { .. }) => {
                    self.held_names().remove(&name);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn release(&self, fence: &Fence) -> Result<(), StateStoreError> {
        let names = std::mem::take(&mut *self.held_names());
        let mut first_error = None;
        for name in names {
            let t = self.target("Release Lease", &name)?;
            let lease_id = self.lease_id("Release Lease", &t, fence)?.to_string();
            let released = self
                .call("Release Lease", &t.blob, "the blob to exist", async {
                    t.client.release_lease(lease_id, None).await
                })
                .await;
            match released {
                Ok(_) | Err(StateStoreError::ConditionFailed { .. }) => {}
                // Keep going: release the others so the next term waits
                // for as few as possible.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn read(&self, name: &str) -> Result<Option<(Bytes, Version)>, StateStoreError> {
        let Some((bytes, etag)) = self.download("Get Blob", name).await? else {
            return Ok(None);
        };
        let t = self.target("Get Blob", name)?;
        Ok(Some((bytes, version(etag, "Get Blob", &t)?)))
    }

    async fn replace(
        &self,
        name: &str,
        bytes: Bytes,
        expected: Option<&Version>,
        fence: &Fence,
    ) -> Result<Version, StateStoreError> {
        const WHAT: &str = "Put Blob";
        let t = self.target(WHAT, name)?;
        let lease_id = self.lease_id(WHAT, &t, fence)?;
        let Some(expected) = expected else {
            // A new blob: no lease can be on it yet; lease it right after.
            let options = BlockBlobClientUploadOptions::default().if_not_exists();
            let rsp = self
                .call(
                    WHAT,
                    &t.blob,
                    "absent",
                    t.client.upload(content(bytes), Some(options)),
                )
                .await?;
            let etag = self.acquire(&t, lease_id).await?.or(rsp.etag);
            return version(etag, WHAT, &t);
        };
        let options = BlockBlobClientUploadOptions {
            if_match: Some(Etag::from(expected.as_str().to_string())),
            lease_id: Some(lease_id.to_string()),
            ..Default::default()
        };
        let rsp = self
            .call(
                WHAT,
                &t.blob,
                &format!("version {expected}"),
                t.client.upload(content(bytes), Some(options)),
            )
            .await?;
        version(rsp.etag, WHAT, &t)
    }

    async fn create_log(&self, name: &str, fence: &Fence) -> Result<(), StateStoreError> {
        const WHAT: &str = "Put Blob (append blob)";
        let t = self.target(WHAT, name)?;
        let lease_id = self.lease_id(WHAT, &t, fence)?;
        let options = AppendBlobClientCreateOptions::default().if_not_exists();
        self.call(
            WHAT,
            &t.blob,
            "absent",
            t.client.append_blob_client().create(Some(options)),
        )
        .await?;
        self.acquire(&t, lease_id).await.map(|_| ())
    }

    async fn append(
        &self,
        name: &str,
        bytes: Bytes,
        at: u64,
        fence: &Fence,
    ) -> Result<u64, StateStoreError> {
        const WHAT: &str = "Append Block";
        let t = self.target(WHAT, name)?;
        let lease_id = self.lease_id(WHAT, &t, fence)?;
        let len = bytes.len() as u64;
        let options = AppendBlobClientAppendBlockOptions {
            append_position: Some(at as i64),
            lease_id: Some(lease_id.to_string()),
            ..Default::default()
        };
        self.call(
            WHAT,
            &t.blob,
            &format!("length {at}"),
            t.client
                .append_blob_client()
                .append_block(content(bytes), len, Some(options)),
        )
        .await?;
        Ok(at + len)
    }

    async fn read_log(&self, name: &str) -> Result<Option<Bytes>, StateStoreError> {
        Ok(self
            .download("Get Blob", name)
            .await?
            .map(|(bytes, _)| bytes))
    }

    async fn delete(&self, name: &str, fence: &Fence) -> Result<(), StateStoreError> {
        const WHAT: &str = "Delete Blob";
        let t = self.target(WHAT, name)?;
        let lease_id = self.lease_id(WHAT, &t, fence)?;
        let options = BlobClientDeleteOptions {
            lease_id: Some(lease_id.to_string()),
            ..Default::default()
        };
        match self
            .call(
                WHAT,
                &t.blob,
                "the blob to exist",
                t.client.delete(Some(options)),
            )
            .await
        {
            Ok(_) => {}
            Err(StateStoreError::ConditionFailed { code, .. }) if code == "BlobNotFound" => {}
            Err(e) => return Err(e),
        }
        self.held_names().remove(name);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateStoreError> {
        const WHAT: &str = "List Blobs";
        let root = format!("{}/", self.id);
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(format!("{root}{prefix}")),
            ..Default::default()
        };
        let blob = format!("{}/{prefix}*", self.location);
        let listing = async {
            let mut pager = self.container.list_blobs(Some(options))?;
            let mut names = Vec::new();
            while let Some(item) = pager.try_next().await? {
                if let Some(name) = item
                    .name
                    .and_then(|n| n.strip_prefix(&root).map(String::from))
                {
                    names.push(name);
                }
            }
            Ok(names)
        };
        let mut names = self
            .call(WHAT, &blob, "the container to exist", listing)
            .await?;
        names.sort();
        Ok(names)
    }
}
