//! How every part of the agent reaches one container of a storage account:
//! the account URL forms (`dfs`/`blob` host or an emulator URL), the one
//! credential chosen in `auth` (SAS in the URL, Shared Key as a pipeline
//! policy, or an Entra ID credential) and one shared HTTP transport with the
//! SDK's retries off (callers bound and retry requests themselves). The
//! sink's storage and the leader election (`crate::ha`) build their SDK
//! clients from the same [`ContainerAccess`], so both accept exactly the
//! same settings.

use std::sync::Arc;

use azure_core::{
    credentials::{Secret, TokenCredential},
    http::{ClientOptions, RetryOptions, Transport, Url},
};
use azure_identity::{
    AzureCliCredential, ClientSecretCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
};

use super::{count::CountRequests, shared_key::SharedKeyPolicy, token::ReportedCredential};
use crate::{azure::auth::AuthConfig, redact};

/// What an SDK client for one container (or a blob in it) needs.
pub struct ContainerAccess {
    /// `<service>/<container>`, with the SAS query when one is used.
    pub container_url: Url,
    /// The Entra ID credential; `None` with a SAS (in the URL) or Shared
    /// Key (a policy in `client_options`).
    pub credential: Option<Arc<dyn TokenCredential>>,
    /// No SDK retries, one HTTP client, and the Shared Key policy if used.
    pub client_options: ClientOptions,
}

impl ContainerAccess {
    /// Checks the URL and credential choice and builds the pieces; no
    /// request is sent. Errors are sentences naming the option.
    pub fn new(account_url: &str, container: &str, auth: &AuthConfig) -> Result<Self, String> {
        let (service, account) = service_url(account_url)?;
        let mut container_url = service;
        container_url
            .path_segments_mut()
            .map_err(|_| "`account_url` cannot hold a path".to_string())?
            .pop_if_empty()
            .push(container);

        // One HTTP client for every blob client: left unset, each client
        // builds its own (loading the system's root certificates, ~9% of
        // the agent's CPU at 1 KB events) and its own connection pool, so
        // no connection was ever reused.
        let mut client_options = ClientOptions {
            retry: RetryOptions::none(),
            transport: Some(Transport::new(azure_core::http::new_http_client(None))),
            per_try_policies: vec![Arc::new(CountRequests::new(container))],
            ..Default::default()
        };
        let chosen = [
            auth.sas_token.is_some(),
            auth.shared_key.is_some(),
            auth.client_secret.is_some(),
            auth.managed_identity,
            auth.workload_identity,
            auth.azure_cli,
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if chosen != 1 {
            return Err(format!(
                "choose exactly one of `auth.sas_token`, `auth.shared_key`, `auth.client_secret` (with `auth.client_id` and `auth.tenant_id`), `auth.managed_identity`, `auth.workload_identity`, `auth.azure_cli` ({chosen} set)"
            ));
        }
        let mut credential: Option<Arc<dyn TokenCredential>> = None;
        if let Some(sas) = &auth.sas_token {
            container_url.set_query(Some(sas.trim().trim_start_matches('?')));
        } else if let Some(key) = &auth.shared_key {
            let policy = SharedKeyPolicy::new(&account, key)?;
            client_options.per_try_policies.push(Arc::new(policy));
        } else {
            credential = Some(token_credential(auth)?);
            if container_url.scheme() != "https" {
                return Err("Microsoft Entra credentials need an https `account_url`".into());
            }
        }
        Ok(Self {
            container_url,
            credential,
            client_options,
        })
    }

    /// The URL of blob `name` (with the SAS query when one is used), with
    /// literal `/` between path segments: the SDK's `blob_client` would
    /// send `%2F`.
    /// A client for the container, sharing the transport and credential.
    pub fn container_client(&self) -> azure_core::Result<azure_storage_blob::BlobContainerClient> {
        azure_storage_blob::BlobContainerClient::new(
            self.container_url.clone(),
            self.credential.clone(),
            Some(azure_storage_blob::BlobContainerClientOptions {
                client_options: self.client_options.clone(),
                ..Default::default()
            }),
        )
    }

    pub fn blob_url(&self, name: &str) -> Result<Url, String> {
        let mut url = self.container_url.clone();
        url.path_segments_mut()
            .map_err(|_| "invalid container URL".to_string())?
            .extend(name.split('/'));
        Ok(url)
    }

    /// The container URL without any query (no SAS), for messages.
    pub fn describe(&self) -> String {
        let mut url = self.container_url.clone();
        url.set_query(None);
        url.to_string()
    }
}

/// The service URL and account name for an `account_url`.
pub(crate) fn service_url(account_url: &str) -> Result<(Url, String), String> {
    let mut url = Url::parse(account_url.trim_end_matches('/'))
        .map_err(|e| format!("`account_url` {account_url:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!(
            "`account_url` {account_url:?} starts with {:?}: use https:// (http:// for an emulator, file:// for a local lake)",
            url.scheme()
        ));
    }
    let host = url.host_str().unwrap_or_default().to_string();
    if let Some(account) = host
        .strip_suffix(".dfs.core.windows.net")
        .or_else(|| host.strip_suffix(".blob.core.windows.net"))
    {
        let account = account.to_string();
        url.set_host(Some(&format!("{account}.blob.core.windows.net")))
            .map_err(|e| e.to_string())?;
        url.set_path("");
        return Ok((url, account));
    }
    // An emulator or custom endpoint: http(s)://host:port/<account>.
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    match segments.as_slice() {
        [account] => {
            let account = account.to_string();
            Ok((url, account))
        }
        _ => Err(format!(
            "`account_url` {account_url:?} must be https://<account>.dfs.core.windows.net, https://<account>.blob.core.windows.net, or an emulator URL http://host:port/<account>"
        )),
    }
}

fn token_credential(auth: &AuthConfig) -> Result<Arc<dyn TokenCredential>, String> {
    let (cred, kind): (Arc<dyn TokenCredential>, _) = if let Some(secret) = &auth.client_secret {
        let (Some(client_id), Some(tenant)) = (&auth.client_id, &auth.tenant_id) else {
            return Err("`auth.client_secret` needs `auth.client_id` and `auth.tenant_id`".into());
        };
        let cred = ClientSecretCredential::new(
            tenant,
            client_id.clone(),
            Secret::new(secret.clone()),
            None,
        )
        .map_err(|e| redact::error(&e))?;
        (cred, "client_secret")
    } else if auth.managed_identity {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: auth.client_id.clone().map(UserAssignedId::ClientId),
            ..Default::default()
        };
        let cred = ManagedIdentityCredential::new(Some(options)).map_err(|e| redact::error(&e))?;
        (cred, "managed_identity")
    } else if auth.workload_identity {
        let cred = WorkloadIdentityCredential::new(None).map_err(|e| redact::error(&e))?;
        (cred, "workload_identity")
    } else {
        let cred = AzureCliCredential::new(None).map_err(|e| redact::error(&e))?;
        (cred, "azure_cli")
    };
    Ok(Arc::new(ReportedCredential::new(cred, kind)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_urls() {
        let (u, a) = service_url("https://acct.dfs.core.windows.net").unwrap();
        assert_eq!(
            (u.as_str(), a.as_str()),
            ("https://acct.blob.core.windows.net/", "acct")
        );
        let (u, a) = service_url("https://acct.blob.core.windows.net/").unwrap();
        assert_eq!(
            (u.as_str(), a.as_str()),
            ("https://acct.blob.core.windows.net/", "acct")
        );
        let (u, a) = service_url("http://127.0.0.1:10000/devstoreaccount1").unwrap();
        assert_eq!(
            (u.as_str(), a.as_str()),
            (
                "http://127.0.0.1:10000/devstoreaccount1",
                "devstoreaccount1"
            )
        );
        assert!(service_url("https://example.com").is_err());
    }

    #[test]
    fn blob_urls_keep_slashes_and_the_sas() {
        let auth = AuthConfig {
            sas_token: Some("?sv=1&sig=abc".into()),
            ..Default::default()
        };
        let access =
            ContainerAccess::new("http://127.0.0.1:10000/devstoreaccount1", "c", &auth).unwrap();
        assert_eq!(
            access.blob_url("a/b/leader").unwrap().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/c/a/b/leader?sv=1&sig=abc"
        );
        assert_eq!(
            access.describe(),
            "http://127.0.0.1:10000/devstoreaccount1/c"
        );
    }
}
