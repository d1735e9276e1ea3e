//! Entra ID tokens that fail loudly. The SDK's credentials retry and wait
//! quietly (an unreachable login endpoint showed only at trace level, and
//! the healthcheck said "timed out"); this wrapper bounds each token
//! request and reports a failure at ERROR level, once a minute at most.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use azure_core::{
    credentials::{AccessToken, TokenCredential, TokenRequestOptions},
    error::ErrorKind,
};

use super::chain;
use crate::redact;

/// Below the 10 s healthcheck limit, so the healthcheck names the cause.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(8);
const REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct ReportedCredential {
    inner: std::sync::Arc<dyn TokenCredential>,
    /// `client_secret`, `managed_identity`...: the option that chose it.
    kind: &'static str,
    timeout: Duration,
    last_report: Mutex<Option<Instant>>,
}

impl ReportedCredential {
    pub fn new(inner: std::sync::Arc<dyn TokenCredential>, kind: &'static str) -> Self {
        Self {
            inner,
            kind,
            timeout: TOKEN_TIMEOUT,
            last_report: Mutex::new(None),
        }
    }

    fn report(&self, message: &str) {
        let mut last = self.last_report.lock().expect("not poisoned");
        if last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            *last = Some(Instant::now());
            tracing::error!(
                auth = self.kind,
                "Could not get an Entra ID token ({}): {message}. Writes to storage fail until a token is issued; they are retried. A changed secret or identity needs a restart.",
                self.kind
            );
        }
    }
}

#[async_trait]
impl TokenCredential for ReportedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let message = match tokio::time::timeout(self.timeout, self.inner.get_token(scopes, options)).await {
            Ok(Ok(token)) => {
                *self.last_report.lock().expect("not poisoned") = None;
                return Ok(token);
            }
            Ok(Err(e)) => redact::text(&chain(&e)),
            Err(_) => format!(
                "no token within {}s (the Entra ID or managed identity endpoint does not answer: network, DNS, proxy or firewall)",
                self.timeout.as_secs()
            ),
        };
        self.report(&message);
        Err(azure_core::Error::with_message(
            ErrorKind::Credential,
            message,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A credential that never answers: the real ones cannot be made to
    /// hang on cue without a fake login endpoint.
    #[derive(Debug)]
    struct Silent;

    #[async_trait]
    impl TokenCredential for Silent {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_silent_endpoint_is_a_credential_error_after_the_timeout() {
        let credential = ReportedCredential {
            timeout: Duration::from_millis(50),
            ..ReportedCredential::new(Arc::new(Silent), "client_secret")
        };
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            credential.get_token(&["scope"], None),
        )
        .await
        .expect("the wrapper bounds the wait")
        .unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Credential);
        assert!(e.to_string().contains("does not answer"), "{e}");
        assert!(credential.last_report.lock().unwrap().is_some(), "reported");
    }
}
