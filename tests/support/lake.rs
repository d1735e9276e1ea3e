//! The lake as tests read it: listings and downloads through the SDK, SAS tokens, Delta commits.

use super::*;

/// Reads a filesystem (container) of an Azurite account through the
/// official SDK, signed with the account key.
pub struct Lake {
    container_url: azure_core::http::Url,
    options: azure_storage_blob::BlobClientOptions,
    container: azure_storage_blob::BlobContainerClient,
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub etag: String,
    pub size: u64,
}

impl Lake {
    pub fn new(azurite: &Azurite, filesystem: &str) -> Self {
        use std::sync::Arc;
        let policy =
            mongo_adls::azure::shared_key::SharedKeyPolicy::new(AZURITE_ACCOUNT, AZURITE_KEY)
                .unwrap();
        let client_options = azure_core::http::ClientOptions {
            per_try_policies: vec![Arc::new(policy)],
            ..Default::default()
        };
        let container_url =
            azure_core::http::Url::parse(&format!("{}/{filesystem}", azurite.account_url()))
                .unwrap();
        let container = azure_storage_blob::BlobContainerClient::new(
            container_url.clone(),
            None,
            Some(azure_storage_blob::BlobContainerClientOptions {
                client_options: client_options.clone(),
                ..Default::default()
            }),
        )
        .unwrap();
        Self {
            container_url,
            options: azure_storage_blob::BlobClientOptions {
                client_options,
                ..Default::default()
            },
            container,
        }
    }

    pub async fn create(&self) {
        self.container.create(None).await.unwrap();
    }

    /// Every committed object, sorted by name (an empty list when the
    /// container does not exist yet). Any other error, three times in a
    /// row, fails the test: an empty answer would pass every "nothing was
    /// written" check. (A busy Azurite once let the SDK's own retries run
    /// out mid-test: the harness, not the agent, failed.)
    pub async fn list(&self) -> Vec<Listed> {
        let mut attempt = 0;
        loop {
            match self.try_list().await {
                Ok(listed) => return listed,
                Err(e) if attempt < 2 => {
                    attempt += 1;
                    eprintln!("listing {} failed ({e}); listing again", self.container_url);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("listing {} failed three times: {e}", self.container_url),
            }
        }
    }

    async fn try_list(&self) -> Result<Vec<Listed>, azure_core::Error> {
        use futures::TryStreamExt;
        let mut out = Vec::new();
        let mut pager = self.container.list_blobs(None)?;
        loop {
            match pager.try_next().await {
                Ok(Some(item)) => {
                    let props = item.properties.unwrap_or_default();
                    out.push(Listed {
                        name: item.name.unwrap_or_default(),
                        etag: props.etag.map(|e| e.to_string()).unwrap_or_default(),
                        size: props.content_length.unwrap_or_default(),
                    });
                }
                Ok(None) => break,
                Err(e) if e.http_status().map(u16::from) == Some(404) && out.is_empty() => {
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn read(&self, name: &str) -> Vec<u8> {
        let mut url = self.container_url.clone();
        url.path_segments_mut().unwrap().extend(name.split('/'));
        let blob =
            azure_storage_blob::BlobClient::new(url, None, Some(self.options.clone())).unwrap();
        blob.download(None)
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .to_vec()
    }

    fn blob(&self, name: &str) -> azure_storage_blob::BlobClient {
        let mut url = self.container_url.clone();
        url.path_segments_mut().unwrap().extend(name.split('/'));
        azure_storage_blob::BlobClient::new(url, None, Some(self.options.clone())).unwrap()
    }

    /// Deletes an object (an operator's mistake, for tests of lost state).
    pub async fn delete(&self, name: &str) {
        self.blob(name).delete(None).await.unwrap();
    }

    /// Writes an object whole, replacing it (for tests of corrupt state).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) {
        let body: bytes::Bytes = bytes.into();
        self.blob(name).upload(body.into(), None).await.unwrap();
    }

    /// The lines of an object, gunzipped when its name ends in `.gz`.
    pub async fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        use std::io::Read;
        let raw = self.read(name).await;
        let text = if name.ends_with(".gz") {
            let mut s = String::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_string(&mut s)
                .unwrap();
            s
        } else {
            String::from_utf8(raw).unwrap()
        };
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A container (service) SAS for Azurite on `container` with exactly
/// `permissions` (service version 2019-12-12 signing rules), as
/// `az storage container generate-sas` makes.
pub fn container_sas(container: &str, permissions: &str) -> String {
    container_sas_until(container, permissions, "2099-01-01T00:00:00Z")
}

/// [`container_sas`] expiring at `se` (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn container_sas_until(container: &str, permissions: &str, se: &str) -> String {
    let (sv, spr, sr) = ("2019-12-12", "https,http", "c");
    let resource = format!("/blob/{AZURITE_ACCOUNT}/{container}");
    // sp, st, se, resource, si, sip, spr, sv, sr, snapshot time, and the
    // five response headers.
    let to_sign = format!("{permissions}\n\n{se}\n{resource}\n\n\n{spr}\n{sv}\n{sr}\n\n\n\n\n\n");
    let sig = sas_signature(&to_sign);
    format!("sv={sv}&sr={sr}&sp={permissions}&se={se}&spr={spr}&sig={sig}")
}

/// An account SAS for Azurite (service version 2019-12-12 signing rules).
pub fn account_sas(permissions: &str) -> String {
    let (sv, ss, srt, se, spr) = (
        "2019-12-12",
        "b",
        "sco",
        "2099-01-01T00:00:00Z",
        "https,http",
    );
    let to_sign = format!("{AZURITE_ACCOUNT}\n{permissions}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
    let sig = sas_signature(&to_sign);
    format!("sv={sv}&ss={ss}&srt={srt}&sp={permissions}&se={se}&spr={spr}&sig={sig}")
}

/// A SAS signature of `to_sign` with Azurite's key, URL-encoded.
pub(super) fn sas_signature(to_sign: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    url::form_urlencoded::byte_serialize(sig.as_bytes()).collect()
}
