//! Azure plumbing shared by sinks.

pub mod auth;
pub mod client;
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

/// A failed Azure request sorted by what any caller must do about it; the
/// answers whose meaning depends on the request (409, 412, a missing blob)
/// are left to the caller as `Answered`.
pub enum AzureFailure {
    /// The service answered `status` with error `code` ("(no error code)"
    /// when it sent none).
    Answered { status: u16, code: String },
    /// No answer, a connection failure, no token yet, throttling or 5xx:
    /// trying again may work.
    Unavailable(String),
    /// Credentials refused, the container missing, anything else a person
    /// has to fix.
    Failed(String),
}

pub fn classify(e: &azure_core::Error) -> AzureFailure {
    use azure_core::error::ErrorKind;
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let code = error_code
                .as_deref()
                .unwrap_or("(no error code)")
                .to_string();
            match (status, code.as_str()) {
                (403, _) => AzureFailure::Failed(format!("HTTP 403 {code}: the credentials were rejected; check the key, SAS token (permissions and expiry) or role assignment")),
                (404, "ContainerNotFound") => AzureFailure::Failed(
                    "HTTP 404 ContainerNotFound: the state container does not exist; create it"
                        .into(),
                ),
                (408 | 429 | 500..=599, _) => {
                    AzureFailure::Unavailable(format!("HTTP {status} {code}"))
                }
                _ => AzureFailure::Answered { status, code },
            }
        }
        ErrorKind::Connection | ErrorKind::Io | ErrorKind::Credential => {
            AzureFailure::Unavailable(crate::redact::text(&chain(e)))
        }
        _ => AzureFailure::Failed(crate::redact::text(&chain(e))),
    }
}
