//! Counts the storage requests every Azure client of the agent sends, by
//! container and HTTP method (`azure_storage_requests_total`): a storage
//! account bills each write operation whatever its size, so this is the
//! agent's cost per event, and what the benchmarks compare.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::{
    policies::{Policy, PolicyResult},
    Context, Method, Request,
};
use metrics::Counter;

/// One attempt sent is one request counted (a retried request counts each
/// time, as storage sees it).
#[derive(Debug)]
pub struct CountRequests {
    get: Counter,
    head: Counter,
    put: Counter,
    delete: Counter,
    other: Counter,
}

impl CountRequests {
    pub fn new(container: &str) -> Self {
        let counter = |method: &'static str| {
            metrics::counter!(
                "azure_storage_requests_total",
                "container" => container.to_string(),
                "method" => method
            )
        };
        Self {
            get: counter("GET"),
            head: counter("HEAD"),
            put: counter("PUT"),
            delete: counter("DELETE"),
            other: counter("other"),
        }
    }
}

#[async_trait]
impl Policy for CountRequests {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        match request.method() {
            Method::Get => &self.get,
            Method::Head => &self.head,
            Method::Put => &self.put,
            Method::Delete => &self.delete,
            _ => &self.other,
        }
        .increment(1);
        next[0].send(ctx, request, &next[1..]).await
    }
}
