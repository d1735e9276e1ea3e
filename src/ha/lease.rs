//! The leader blob `<container>/<id>/leader` and the Blob lease operations
//! on it, one method a request, each bounded by a timeout and each error
//! sorted into what the elector must do with it: the service *refused*
//! (the lease is someone else's, or gone), storage is *unavailable* for
//! now, or the request *failed* in a way a person must fix (credentials,
//! missing container).
//!
//! The blob is a small block blob holding a [`Holder`] record as JSON. It is
//! created with `If-None-Match: *` (two agents racing to create it is fine:
//! one gets 409 and goes on) and rewritten under the lease by each new
//! active agent, so [`LeaderBlob::describe`] can name the holder without
//! taking the lease. Writing it with the lease id is also what makes the
//! lease a fence: the service refuses a write to a leased blob that carries
//! any other lease id.

use std::{fmt, time::Duration};

use azure_core::http::RequestContent;
use azure_storage_blob::{
    models::{
        BlobClientAcquireLeaseOptions, BlobClientAcquireLeaseResultHeaders,
        BlobClientBreakLeaseOptions, BlobClientGetPropertiesResultHeaders,
        BlockBlobClientUploadOptions, LeaseDuration as SdkLeaseDuration,
        LeaseState as SdkLeaseState,
    },
    BlobClient, BlobClientOptions,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use snafu::Snafu;

use super::HaError;
use crate::{
    azure::{self, auth::AuthConfig, client::ContainerAccess, AzureFailure},
    redact,
};

/// Each lease request gets this long before it counts as unanswered. The
/// elector's deadline does not depend on it: a renew still in flight when
/// the deadline passes is abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A lease request that did not succeed, sorted by what to do about it.
#[derive(Clone, Debug, Snafu, PartialEq, Eq)]
pub enum LeaseError {
    /// The service answered and said no: 409 (the lease is held under
    /// another id, broken, or not there), 412 (a lease id that does not
    /// match) or 404 for the blob itself. For a renew this means the
    /// lease is lost.
    #[snafu(display("{what} {blob}: refused with HTTP {status} {code}"))]
    Refused {
        what: &'static str,
        blob: String,
        status: u16,
        code: String,
    },
    /// No answer, a connection failure, a retriable status
    /// ([`crate::azure::retriable_status`]) or no token yet: trying again
    /// may work.
    #[snafu(display("{what} {blob}: {message}"))]
    Unavailable {
        what: &'static str,
        blob: String,
        message: String,
    },
    /// Anything else (credentials refused, the container missing...):
    /// tried again, but a person has to fix it.
    #[snafu(display("{what} {blob}: {message}"))]
    Failed {
        what: &'static str,
        blob: String,
        message: String,
    },
}

impl LeaseError {
    /// The HTTP status and error code of a refusal.
    pub fn refusal(&self) -> Option<(u16, &str)> {
        match self {
            Self::Refused { status, code, .. } => Some((*status, code)),
            _ => None,
        }
    }
}

/// Who holds (or last held) the lease: the content of the leader blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// When this agent's elector started.
    pub started_at: DateTime<Utc>,
    /// Random per elector, so two electors of one process (tests) or two
    /// agents with the same host name and pid (containers) are told apart.
    pub instance: String,
    /// When this holder's current term began; unset in the record that
    /// only created the blob.
    #[serde(default)]
    pub active_since: Option<DateTime<Utc>>,
    /// The lease ids of this holder's term and of the terms before it,
    /// newest first (at most [`Holder::TERMS_KEPT`]): the ids the
    /// pipeline's state blobs may still be leased under, so the next term
    /// changes those leases to its own at once instead of waiting for them
    /// to run out (see `state_store/azure/leases.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<String>,
}

impl Holder {
    /// How many terms' lease ids the record keeps. A term that died before
    /// it recorded its id is not in it; its state leases are waited out.
    pub const TERMS_KEPT: usize = 8;

    /// This process, starting now.
    pub fn this_process() -> Self {
        Self {
            host: hostname(),
            pid: std::process::id(),
            started_at: Utc::now(),
            instance: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            active_since: None,
            terms: Vec::new(),
        }
    }

    /// Starts the term of `lease_id` after the terms `earlier` (newest
    /// first): the record names it first.
    pub fn begin_term(&mut self, lease_id: &str, earlier: &[String]) {
        self.active_since = Some(Utc::now());
        self.terms = std::iter::once(lease_id)
            .chain(
                earlier
                    .iter()
                    .map(String::as_str)
                    .filter(|id| *id != lease_id),
            )
            .take(Self::TERMS_KEPT)
            .map(str::to_string)
            .collect();
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pid {} (instance {}, started {}",
            self.host,
            self.pid,
            self.instance,
            self.started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
        if let Some(since) = self.active_since {
            write!(
                f,
                ", active since {}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )?;
        }
        f.write_str(")")
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes a
    // NUL-terminated name into it (truncated if longer).
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "unknown-host".to_string(),
    }
}

/// The lease state of the leader blob, as the service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Nobody holds it: it can be acquired.
    Available,
    /// Held, and renewed in time.
    Leased,
    /// The holder stopped renewing; it can be acquired.
    Expired,
    /// A break period is running; it cannot be acquired until it ends.
    Breaking,
    /// Broken: it can be acquired.
    Broken,
}

impl LeaseState {
    /// Whether Acquire Lease can succeed now.
    pub fn acquirable(self) -> bool {
        matches!(self, Self::Available | Self::Expired | Self::Broken)
    }

    fn from_sdk(state: SdkLeaseState) -> Self {
        match state {
            SdkLeaseState::Available => Self::Available,
            SdkLeaseState::Leased => Self::Leased,
            SdkLeaseState::Expired => Self::Expired,
            SdkLeaseState::Breaking => Self::Breaking,
            SdkLeaseState::Broken => Self::Broken,
        }
    }
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Available => "available",
            Self::Leased => "leased",
            Self::Expired => "expired",
            Self::Breaking => "breaking",
            Self::Broken => "broken",
        })
    }
}

/// Whether a lease is for a fixed time (ours always are) or infinite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseDuration {
    Fixed,
    Infinite,
}

/// What [`LeaderBlob::describe`] found, without taking the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader blob's URL (no SAS).
    pub blob: String,
    pub lease_state: LeaseState,
    /// Only reported while the blob is leased.
    pub lease_duration: Option<LeaseDuration>,
    /// The holder named in the blob: the active agent while leased, the
    /// last one otherwise. `None` when the content is not a holder record.
    pub holder: Option<Holder>,
}

/// The leader blob of one pipeline and the lease requests on it.
pub struct LeaderBlob {
    blob: BlobClient,
    /// The blob's URL without SAS, for messages.
    name: String,
    timeout: Duration,
}

impl fmt::Debug for LeaderBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderBlob")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LeaderBlob {
    /// The leader blob `<container>/<id>/leader` of the account at
    /// `account_url` (every URL form and credential the sink accepts). No
    /// request is sent.
    pub fn new(
        account_url: &str,
        container: &str,
        auth: &AuthConfig,
        id: &str,
    ) -> Result<Self, HaError> {
        super::check_id(id)?;
        let client = |message: String| HaError::Client {
            message: redact::text(&message),
        };
        let access = ContainerAccess::new(account_url, container, auth).map_err(client)?;
        let path = format!("{id}/leader");
        let url = access.blob_url(&path).map_err(client)?;
        let blob = BlobClient::new(
            url,
            access.credential.clone(),
            Some(BlobClientOptions {
                client_options: access.client_options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| client(e.to_string()))?;
        Ok(Self {
            blob,
            name: format!("{}/{path}", access.describe().trim_end_matches('/')),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same blob with another per-request timeout.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The blob's URL, without any SAS.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one request within the timeout, mapping its error.
    async fn call<T>(
        &self,
        what: &'static str,
        request: impl std::future::Future<Output = azure_core::Result<T>>,
    ) -> Result<T, LeaseError> {
        azure::call(self.timeout, request)
            .await
            .map_err(|failure| self.map_error(what, failure))
    }

    fn map_error(&self, what: &'static str, failure: AzureFailure) -> LeaseError {
        let blob = self.name.clone();
        match failure {
            AzureFailure::Answered { status, code }
                if matches!(
                    (status, code.as_str()),
                    (409 | 412, _) | (404, "BlobNotFound")
                ) =>
            {
                LeaseError::Refused {
                    what,
                    blob,
                    status,
                    code,
                }
            }
            AzureFailure::Answered { status, code } => LeaseError::Failed {
                what,
                blob,
                message: format!("HTTP {status} {code}"),
            },
            AzureFailure::Unavailable(message) => LeaseError::Unavailable {
                what,
                blob,
                message,
            },
            AzureFailure::Failed(message) => LeaseError::Failed {
                what,
                blob,
                message,
            },
        }
    }

    /// Creates the blob naming `holder` unless it exists (Put Blob with
    /// `If-None-Match: *`); a blob created by a racing peer is fine.
    pub async fn ensure_exists(&self, holder: &Holder) -> Result<(), LeaseError> {
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some("application/json".into()),
            ..Default::default()
        }
        .if_not_exists();
        match self
            .call("Put Blob", self.blob.upload(content(holder), Some(options)))
            .await
        {
            // 409 BlobAlreadyExists, or 412 when it exists and is leased.
            Ok(_) | Err(LeaseError::Refused { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Acquire Lease for `lease_secs` with `proposed_lease_id`; on success
    /// that id is the lease id.
    pub async fn acquire(
        &self,
        lease_secs: u32,
        proposed_lease_id: &str,
    ) -> Result<(), LeaseError> {
        let options = BlobClientAcquireLeaseOptions {
            proposed_lease_id: Some(proposed_lease_id.to_string()),
            ..Default::default()
        };
        let rsp = self
            .call(
                "Acquire Lease",
                self.blob.acquire_lease(lease_secs as i32, Some(options)),
            )
            .await?;
        // The service answers with the id it granted, which is the one
        // proposed; anything else would break fencing, so check.
        match rsp.lease_id().ok().flatten() {
            Some(granted) if !granted.eq_ignore_ascii_case(proposed_lease_id) => {
                Err(LeaseError::Failed {
                    what: "Acquire Lease",
                    blob: self.name.clone(),
                    message: "the service granted a lease id other than the proposed one".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Renew Lease: the lease runs for its full duration again, counted
    /// from when the service handled this request.
    pub async fn renew(&self, lease_id: &str) -> Result<(), LeaseError> {
        self.call(
            "Renew Lease",
            self.blob.renew_lease(lease_id.to_string(), None),
        )
        .await
        .map(|_| ())
    }

    /// Release Lease: a peer can acquire it at once.
    pub async fn release(&self, lease_id: &str) -> Result<(), LeaseError> {
        self.call(
            "Release Lease",
            self.blob.release_lease(lease_id.to_string(), None),
        )
        .await
        .map(|_| ())
    }

    /// Break Lease with a break period (0: broken at once, whoever holds
    /// it). For operators and tests; agents never break each other's
    /// leases.
    pub async fn break_lease(&self, period_secs: u32) -> Result<(), LeaseError> {
        let options = BlobClientBreakLeaseOptions {
            break_period: Some(period_secs as i32),
            ..Default::default()
        };
        self.call("Break Lease", self.blob.break_lease(Some(options)))
            .await
            .map(|_| ())
    }

    /// Rewrites the blob to name `holder`, under `lease_id` (Put Blob with
    /// `x-ms-lease-id`): refused (412) unless that lease holds the blob.
    pub async fn write_holder(&self, lease_id: &str, holder: &Holder) -> Result<(), LeaseError> {
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some("application/json".into()),
            lease_id: Some(lease_id.to_string()),
            ..Default::default()
        };
        self.call("Put Blob", self.blob.upload(content(holder), Some(options)))
            .await
            .map(|_| ())
    }

    /// The lease state (Get Blob Properties), `None` when the blob does
    /// not exist.
    pub async fn lease_state(&self) -> Result<Option<LeaseState>, LeaseError> {
        Ok(self.properties().await?.map(|(state, _)| state))
    }

    async fn properties(&self) -> Result<Option<(LeaseState, Option<LeaseDuration>)>, LeaseError> {
        let rsp = match self
            .call("Get Blob Properties", self.blob.get_properties(None))
            .await
        {
            Ok(rsp) => rsp,
            Err(LeaseError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = rsp
            .lease_state()
            .ok()
            .flatten()
            .map(LeaseState::from_sdk)
            .ok_or_else(|| LeaseError::Failed {
                what: "Get Blob Properties",
                blob: self.name.clone(),
                message: "the response has no known x-ms-lease-state".into(),
            })?;
        let duration = rsp.duration().ok().flatten().map(|d| match d {
            SdkLeaseDuration::Infinite => LeaseDuration::Infinite,
            SdkLeaseDuration::Fixed => LeaseDuration::Fixed,
        });
        Ok(Some((state, duration)))
    }

    /// The lease state and the holder named in the blob, read without
    /// taking the lease (Get Blob Properties, then Get Blob; the holder may
    /// have changed in between). `None` when the blob does not exist: no
    /// agent of this pipeline has run against this store.
    pub async fn describe(&self) -> Result<Option<LeaderInfo>, LeaseError> {
        let Some((lease_state, lease_duration)) = self.properties().await? else {
            return Ok(None);
        };
        let holder = match self.read_holder().await {
            Ok(holder) => holder,
            Err(LeaseError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(LeaderInfo {
            blob: self.name.clone(),
            lease_state,
            lease_duration,
            holder,
        }))
    }

    /// The holder the blob names (Get Blob), `None` when its content is
    /// not a holder record; 404 (`Refused`) when the blob does not exist.
    pub async fn read_holder(&self) -> Result<Option<Holder>, LeaseError> {
        let bytes = self
            .call("Get Blob", async {
                self.blob.download(None).await?.body.collect().await
            })
            .await?;
        Ok(serde_json::from_slice(&bytes).ok())
    }
}

fn content(holder: &Holder) -> RequestContent<Bytes, azure_core::http::NoFormat> {
    azure::content(Bytes::from(
        serde_json::to_vec(holder).expect("a holder serializes"),
    ))
}
