//! Azure answers as [`StateStoreError`]s, sorted by what the caller must do.

use azure_core::http::Etag;

use super::Target;
use crate::{
    azure::AzureFailure,
    state_store::{StateStoreError, Version},
};

/// Sorts a service error by what the caller must do about it.
pub(super) fn map_error(
    what: &'static str,
    blob: &str,
    expected: &str,
    failure: AzureFailure,
) -> StateStoreError {
    let blob = blob.to_string();
    let (status, code) = match failure {
        AzureFailure::Answered { status, code } => (status, code),
        AzureFailure::Unavailable(message) => {
            return StateStoreError::Unavailable {
                what,
                blob,
                message,
            }
        }
        AzureFailure::Failed(message) => {
            return StateStoreError::Failed {
                what,
                blob,
                message,
            }
        }
    };
    match (status, code.as_str()) {
        // LeaseIdMissing, LeaseIdMismatchWith*, LeaseNotPresentWith*,
        // LeaseLost, LeaseAlreadyPresent, LeaseIsBreaking...
        (409 | 412, c) if c.starts_with("Lease") => StateStoreError::Fenced { what, blob, code },
        (412, _) | (409, "BlobAlreadyExists") | (404, "BlobNotFound") => {
            StateStoreError::ConditionFailed {
                what,
                blob,
                expected: expected.to_string(),
                code,
            }
        }
        _ => StateStoreError::Failed {
            what,
            blob,
            message: format!("HTTP {status} {code}"),
        },
    }
}

pub(super) fn version(
    etag: Option<Etag>,
    what: &'static str,
    t: &Target,
) -> Result<Version, StateStoreError> {
    etag.map(|e| Version(e.to_string()))
        .ok_or_else(|| StateStoreError::Failed {
            what,
            blob: t.blob.clone(),
            message: "the response has no ETag".into(),
        })
}
