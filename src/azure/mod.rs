//! The one Azure layer every storage client of the agent uses (the sinks'
//! storage, the HA lease, the `[state]` store): credentials, the client,
//! one timed call and one classification of failures with one table of
//! retriable statuses. Callers only add what a status means for their own
//! request (a 409 on a create-only put, a lease code).

use std::{future::Future, time::Duration};

use azure_core::{error::ErrorKind, http::headers::HeaderName};

pub mod auth;
pub mod client;
pub mod count;
pub mod shared_key;
pub mod token;

/// An error with its sources, `outer: inner: innermost` (the SDK's
/// top-level messages alone often say only "the request failed").
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The statuses worth retrying, for every client: timeouts, throttling and
/// the server errors a retry can cure (the Azure SDK's own list; 501 and
/// 505 will answer the same again).
pub fn retriable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// A failed Azure request sorted by what any caller must do about it; the
/// answers whose meaning depends on the request (409, 412, a missing blob)
/// are left to the caller as `Answered`.
#[derive(Debug)]
pub enum AzureFailure {
    /// The service answered `status` with error `code` ("(no error code)"
    /// when it sent none).
    Answered { status: u16, code: String },
    /// No answer, a connection failure, no token yet, throttling or a
    /// retriable status: trying again may work.
    Unavailable(String),
    /// Credentials refused, the container missing, anything else a person
    /// has to fix.
    Failed(String),
}

/// The status and error code of an answered request.
pub fn status(e: &azure_core::Error) -> Option<(u16, String)> {
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => Some((
            u16::from(*status),
            error_code
                .as_deref()
                .unwrap_or("(no error code)")
                .to_string(),
        )),
        _ => None,
    }
}

pub fn classify(e: &azure_core::Error) -> AzureFailure {
    if let Some((status, code)) = status(e) {
        return match (status, code.as_str()) {
            (401 | 403, _) => AzureFailure::Failed(format!("HTTP {status} {code}: the credentials were rejected; check the key, SAS token (permissions and expiry) or role assignment")),
            (404, "ContainerNotFound") => AzureFailure::Failed(
                "HTTP 404 ContainerNotFound: the container does not exist; create it".into(),
            ),
            (s, _) if retriable_status(s) => {
                AzureFailure::Unavailable(format!("HTTP {status} {code}"))
            }
            _ => AzureFailure::Answered { status, code },
        };
    }
    match e.kind() {
        // A token that could not be had (the login endpoint unreachable, or
        // a secret refused, which the credential wrapper reports at ERROR)
        // is retried like an unreachable service.
        ErrorKind::Connection | ErrorKind::Io | ErrorKind::Credential => {
            AzureFailure::Unavailable(crate::redact::text(&chain(e)))
        }
        _ => AzureFailure::Failed(crate::redact::text(&chain(e))),
    }
}

/// How long the service asked the client to wait (`x-ms-retry-after-ms`,
/// else `Retry-After` in seconds).
pub fn retry_after(e: &azure_core::Error) -> Option<Duration> {
    let ErrorKind::HttpResponse {
        raw_response: Some(r),
        ..
    } = e.kind()
    else {
        return None;
    };
    let h = r.headers();
    h.get_optional_str(&HeaderName::from_static("x-ms-retry-after-ms"))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| {
            h.get_optional_str(&azure_core::http::headers::RETRY_AFTER)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
        })
}

/// One request given `timeout` to answer: its value, or its failure
/// classified (no answer in time is `Unavailable`).
pub async fn call<T>(
    timeout: Duration,
    request: impl Future<Output = azure_core::Result<T>>,
) -> Result<T, AzureFailure> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(AzureFailure::Unavailable(format!(
            "no answer within {}s",
            timeout.as_secs_f32()
        ))),
    }
}

/// A request body from bytes.
pub fn content(
    bytes: bytes::Bytes,
) -> azure_core::http::RequestContent<bytes::Bytes, azure_core::http::NoFormat> {
    bytes.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_of_retriable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retriable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412, 501, 505] {
            assert!(!retriable_status(s), "{s}");
        }
    }
}
