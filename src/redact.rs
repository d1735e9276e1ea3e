//! Masks secrets in any text that may reach a log line or an error message.
//!
//! Components call [`text`] on every message built from user configuration
//! or from a library error (driver errors can quote the connection string;
//! Azure errors can quote a request URL with its SAS query), so a secret
//! never leaves the process through logs, metrics or exit messages.

use std::sync::LazyLock;

use regex::Regex;

const MASK: &str = "****";

static URI_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    // scheme://user:password@host — mask only the password.
    Regex::new(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^@/\s]+)@").unwrap()
});

static QUERY_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    // SAS signature and other credential-bearing query or connection-string
    // parameters: sig=..., AccountKey=..., SharedAccessSignature=..., password=...
    Regex::new(
        r"(?i)(?P<pre>\b(?:sig|accountkey|sharedaccesssignature|password|client_secret|secret|key|token)=)(?P<secret>[^&;\s]+)",
    )
    .unwrap()
});

static AUTH_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    // A header and its value (`Authorization: Bearer <token>`, `SharedKey
    // <account>:<signature>`): the name must be followed by a separator,
    // so an Azure error code that starts with the word
    // (`AuthorizationPermissionMismatch`) stays readable.
    Regex::new(r"(?i)(?P<pre>\b(?:authorization|sharedkey)(?:\s*[:=]\s*|\s+)(?:(?:bearer|sharedkey)\s+)?)(?P<secret>[A-Za-z0-9+/=._:-]{16,})").unwrap()
});

/// Masks URI passwords, SAS signatures, account keys and bearer tokens.
pub fn text(input: &str) -> String {
    let s = URI_PASSWORD.replace_all(input, format!("${{pre}}{MASK}@"));
    let s = QUERY_SECRET.replace_all(&s, format!("${{pre}}{MASK}"));
    let s = AUTH_HEADER.replace_all(&s, format!("${{pre}}{MASK}"));
    s.into_owned()
}

/// Masks an error's display text.
pub fn error(err: &dyn std::fmt::Display) -> String {
    text(&err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_uri_password() {
        assert_eq!(
            text("mongodb://app:s3cr%40t@db1:27017,db2/?replicaSet=rs0"),
            "mongodb://app:****@db1:27017,db2/?replicaSet=rs0"
        );
        assert_eq!(
            text("mongodb+srv://u:p@cluster0.example.net"),
            "mongodb+srv://u:****@cluster0.example.net"
        );
        assert_eq!(text("mongodb://db1:27017"), "mongodb://db1:27017");
    }

    #[test]
    fn masks_sas_and_keys() {
        let sas = "https://a.blob.core.windows.net/c/b?sv=2022-11-02&ss=b&sig=abc%2Bdef%3D&se=2030";
        assert_eq!(
            text(sas),
            "https://a.blob.core.windows.net/c/b?sv=2022-11-02&ss=b&sig=****&se=2030"
        );
        assert_eq!(
            text("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFy==;"),
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=****;"
        );
        assert!(!text("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig").contains("eyJ"));
        assert!(
            !text("authorization=SharedKey devstoreaccount1:c2lnbmF0dXJlc2lnbmF0dXJl")
                .contains("c2lnbmF0")
        );
        assert!(!text("SharedKey devstoreaccount1:c2lnbmF0dXJlc2lnbmF0dXJl").contains("c2lnbmF0"));
    }

    /// Azure's error codes stay readable: the user needs them to tell a
    /// missing permission from a wrong key.
    #[test]
    fn error_codes_are_not_secrets() {
        for code in [
            "HTTP 403 AuthorizationPermissionMismatch",
            "HTTP 403 AuthorizationFailure",
            "HTTP 403 AuthenticationFailed",
            "HTTP 403 AuthorizationResourceTypeMismatch",
        ] {
            assert_eq!(text(code), code);
        }
    }
}
