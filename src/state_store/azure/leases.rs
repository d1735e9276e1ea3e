//! The state blobs' leases.
//!
//! Fencing. The active agent leases every state blob with the lease id of
//! its leader lease (one proposed id can lease many blobs) for 60 s, and
//! renews them at the first renew of its leader lease at least 15 s after
//! the last (every 15 to 20 s). Every write carries that lease id and a
//! condition: Put Blob with `If-Match: <ETag>` (or `If-None-Match: *`,
//! then Acquire Lease, for a new blob); Append Block with
//! `x-ms-blob-condition-appendpos`. A write of a term whose lease is gone
//! gets 412 from the service, whatever the writer believes.
//!
//! Takeover. A new term takes over each existing blob with Acquire Lease
//! under its own id. A blob still leased by an earlier term (one that died
//! without releasing) is taken with Change Lease from that term's id, which
//! the leader blob records (`Holder::terms`, the last 8 terms' ids), and
//! the lease then runs under the new id at once. The service changes a
//! lease only from the id that holds it: a stale active's late request
//! (Change Lease from the id it saw, Acquire Lease under its own) is
//! refused once the new term holds the blob, so a term can never take the
//! state back from a newer one. Break Lease could not be used: the service
//! cannot tell a stale active from the current one at a Break Lease, so an
//! agent paused inside its own takeover would wake up, break the *new*
//! term's leases and hold the state again. A lease under an id the record
//! lacks (its term died before recording itself) is waited out, polling
//! every second, up to `takeover_wait`. A clean handover releases them
//! ([`StateStore::release`]). Tests and operators simulate a lost term
//! with [`AzureStateStore::break_leases`].
//!
//! Why 60 s and not the leader's `lease_secs`: a state lease renewed with
//! every leader renew cost two requests per blob every L/3 (18 a minute
//! for two blobs at L = 20), most of an idle pipeline's requests; at 60 s
//! renewed every 15 to 20 s it is 3 or 4 per blob. Taking the state over
//! does not wait for it, so the failover time stays the leader lease's.

use std::time::Duration;

use azure_core::http::Etag;
use azure_storage_blob::models::{
    BlobClientAcquireLeaseOptions, BlobClientAcquireLeaseResultHeaders, BlobClientBreakLeaseOptions,
};
use tokio::time::Instant;

use super::{AzureStateStore, Target, STATE_LEASE_SECS};
use crate::{
    retry::retry,
    state_store::{StateStore, StateStoreError},
};

impl AzureStateStore {
    /// Breaks the lease of every state blob at once (Break Lease, period
    /// 0), whoever holds it, and returns the names. For operators and
    /// tests only: agents never break each other's leases (see the module
    /// comment).
    pub async fn break_leases(&self) -> Result<Vec<String>, StateStoreError> {
        let names = self.list("").await?;
        for name in &names {
            let t = self.target("Break Lease", name)?;
            let options = BlobClientBreakLeaseOptions {
                break_period: Some(0),
                ..Default::default()
            };
            match self
                .call(
                    "Break Lease",
                    &t.blob,
                    "a lease",
                    t.client.break_lease(Some(options)),
                )
                .await
            {
                // 409 LeaseNotPresentWithLeaseOperation: nothing to break.
                Ok(_) | Err(StateStoreError::Fenced { .. }) => {}
                Err(StateStoreError::ConditionFailed { .. }) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(names)
    }

    /// Acquire Lease under `lease_id`: this term now holds the blob.
    /// Returns the blob's ETag as the response reports it.
    pub(super) async fn acquire(
        &self,
        t: &Target,
        lease_id: &str,
    ) -> Result<Option<Etag>, StateStoreError> {
        let options = BlobClientAcquireLeaseOptions {
            proposed_lease_id: Some(lease_id.to_string()),
            ..Default::default()
        };
        let rsp = self
            .call(
                "Acquire Lease",
                &t.blob,
                "the blob to exist",
                t.client
                    .acquire_lease(STATE_LEASE_SECS as i32, Some(options)),
            )
            .await?;
        self.held_names().insert(t.name.clone());
        Ok(rsp.etag().ok().flatten())
    }

    /// Acquire Lease; while an earlier term's lease holds the blob, Change
    /// Lease from that term's id (tried newest first) to this one's, then
    /// Acquire Lease again to restart its 60 s. The service changes a
    /// lease only from the id that holds it, so a stale term's late
    /// request can never take the blob from a newer term; `Fenced` when
    /// no id of `earlier` holds it.
    async fn acquire_or_change(
        &self,
        t: &Target,
        lease_id: &str,
        earlier: &[String],
    ) -> Result<(), StateStoreError> {
        let held = match self.acquire(t, lease_id).await {
            Ok(_) => return Ok(()),
            Err(held @ StateStoreError::Fenced { .. }) => held,
            Err(e) => return Err(e),
        };
        for from in earlier.iter().filter(|id| *id != lease_id) {
            let changed = self
                .call(
                    "Change Lease",
                    &t.blob,
                    "the blob to exist",
                    t.client
                        .change_lease(from.clone(), lease_id.to_string(), None),
                )
                .await;
            match changed {
                Ok(_) => return self.acquire(t, lease_id).await.map(|_| ()),
                // Held under another id (or no longer leased at all: the
                // next Acquire Lease takes it).
                Err(StateStoreError::Fenced { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(held)
    }

    /// Takes one blob over from the terms `earlier`, waiting until
    /// `deadline` while a lease under another id runs out. `false` when the
    /// blob no longer exists.
    pub(super) async fn take_one(
        &self,
        name: &str,
        lease_id: &str,
        earlier: &[String],
        deadline: Instant,
    ) -> Result<bool, StateStoreError> {
        let t = self.target("Acquire Lease", name)?;
        // Another term's lease runs out, or storage comes back, by the
        // deadline: tried again every second until then.
        let again = |e: &StateStoreError, _| {
            let waiting = matches!(
                e,
                StateStoreError::Fenced { .. } | StateStoreError::Unavailable { .. }
            );
            (waiting && Instant::now() < deadline).then_some(Duration::from_secs(1))
        };
        match retry(|| self.acquire_or_change(&t, lease_id, earlier), again)
            .await
            .result
        {
            Ok(_) => Ok(true),
            Err(StateStoreError::ConditionFailed { .. }) => Ok(false),
            Err(StateStoreError::Fenced { code, .. }) => Err(StateStoreError::Fenced {
                what: "take over",
                blob: t.blob.clone(),
                code: format!(
                    "{code}, still after {}s: the previous active may still be running",
                    self.takeover_wait.as_secs()
                ),
            }),
            Err(e) => Err(e),
        }
    }
}
