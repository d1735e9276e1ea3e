//! Shared Key authorization for the official Azure SDK.
//!
//! `azure_storage_blob` 1.x only supports Microsoft Entra tokens and SAS, so
//! this per-try pipeline policy signs each request with the account key as
//! the Storage service expects (x-ms-date, then an HMAC-SHA256 over the
//! canonical request), following "Authorize with Shared Key" in the Storage
//! REST reference. Proven against Azurite, which verifies signatures.

use std::{collections::BTreeMap, fmt, sync::Arc};

use async_trait::async_trait;
use azure_core::http::{
    headers::{HeaderName, AUTHORIZATION},
    policies::{Policy, PolicyResult},
    Context, Request,
};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub struct SharedKeyPolicy {
    account: String,
    key: Vec<u8>,
}

impl fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyPolicy")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl SharedKeyPolicy {
    /// `key` is the base64 account key as shown in the portal.
    pub fn new(account: &str, key: &str) -> Result<Self, String> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| "`auth.shared_key` is not a base64 account key".to_string())?;
        Ok(Self {
            account: account.to_string(),
            key,
        })
    }

    fn string_to_sign(&self, request: &Request) -> String {
        let headers = request.headers();
        let get = |name: &'static str| {
            headers
                .get_optional_str(&HeaderName::from_static(name))
                .unwrap_or("")
                .to_string()
        };
        // Content-Length is signed empty when zero (version 2015-02-21+).
        let length = match headers.get_optional_str(&HeaderName::from_static("content-length")) {
            Some(v) if v != "0" => v.to_string(),
            Some(_) => String::new(),
            None => match request.body().len() {
                Some(n) if n > 0 => n.to_string(),
                _ => String::new(),
            },
        };
        let mut ms_headers: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-ms-"))
            .map(|(k, v)| (k.as_str().to_string(), v.as_str().trim().to_string()))
            .collect();
        ms_headers.sort();

        let url = request.url();
        let mut resource = format!("/{}{}", self.account, url.path());
        let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in url.query_pairs() {
            query
                .entry(k.to_lowercase())
                .or_default()
                .push(v.into_owned());
        }
        for (k, mut values) in query {
            values.sort();
            resource.push_str(&format!("\n{k}:{}", values.join(",")));
        }

        let mut s = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n",
            request.method().as_str(),
            get("content-encoding"),
            get("content-language"),
            length,
            get("content-md5"),
            get("content-type"),
            get("if-modified-since"),
            get("if-match"),
            get("if-none-match"),
            get("if-unmodified-since"),
            get("range"),
        );
        for (k, v) in ms_headers {
            s.push_str(&k);
            s.push(':');
            s.push_str(&v);
            s.push('\n');
        }
        s.push_str(&resource);
        s
    }
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let now = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        request.insert_header("x-ms-date", now);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(self.string_to_sign(request).as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        request.insert_header(
            AUTHORIZATION,
            format!("SharedKey {}:{signature}", self.account),
        );
        next[0].send(ctx, request, &next[1..]).await
    }
}
