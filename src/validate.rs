//! `mongo-adls validate`: the checks a start needs, and only those, each
//! with the requests the agent itself makes, so that a configuration the
//! agent can run with always passes. Nothing is created: what a check
//! writes is printed.
//!
//! - each source's and sink's own check (`dry_healthcheck`);
//! - the `[state]` store of a group (`azure_blob`): its credentials, its
//!   container, and that the leader lease can be read, as a standby reads
//!   it;
//! - that `api.address` can be bound.

use std::{future::Future, net::SocketAddr, pin::Pin};

use crate::{
    config::{state::AzureState, Config},
    ha::LeaderBlob,
    topology::HEALTHCHECK_TIMEOUT,
};

/// One check's result: what it wrote (if anything), or why it failed.
type Check<'a> = Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send + 'a>>;

/// Runs every check at once (each within the healthcheck timeout) and
/// prints one line each. Returns whether all passed.
pub async fn run(config: &Config) -> bool {
    let mut checks: Vec<(String, Check<'_>)> = Vec::new();
    if let Some(address) = config.global.api.address {
        checks.push(("`api.address`".into(), Box::pin(api_address(address))));
    }
    if let Some(azure) = config.global.state.azure() {
        checks.push(("`[state]`".into(), Box::pin(state_store(azure))));
    }
    for (id, source) in &config.sources {
        checks.push((format!("source `{id}`"), source.inner.dry_healthcheck()));
    }
    for (id, sink) in &config.sinks {
        checks.push((format!("sink `{id}`"), sink.outer.inner.dry_healthcheck()));
    }
    let results = futures::future::join_all(checks.into_iter().map(|(name, check)| async move {
        let result = tokio::time::timeout(HEALTHCHECK_TIMEOUT, check)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "timed out after {}s",
                    HEALTHCHECK_TIMEOUT.as_secs()
                ))
            });
        (name, result)
    }))
    .await;
    let mut passed = true;
    for (name, result) in results {
        match result {
            Ok(None) => println!("Healthcheck passed: {name}."),
            Ok(Some(wrote)) => println!("Healthcheck passed: {name}; {wrote}."),
            Err(e) => {
                passed = false;
                eprintln!("Healthcheck failed: {name}: {}", crate::redact::text(&e));
            }
        }
    }
    passed
}

/// The API's address is free: bound and released at once. A running agent
/// of the same configuration holds it, so this fails beside one.
async fn api_address(address: SocketAddr) -> Result<Option<String>, String> {
    crate::api::bind(address).await.map(|_| None).map_err(|e| {
        format!("cannot bind {address}: {e} (another process, or an agent already running, serves there; change `api.address` or stop it)")
    })
}

/// The group's state store, read as a standby reads it: Get Blob Properties
/// and Get Blob of the leader lease. A wrong key or SAS, a missing
/// container (unless `create_container`) and a missing permission fail.
async fn state_store(azure: AzureState<'_>) -> Result<Option<String>, String> {
    let leader = LeaderBlob::new(azure.account_url, azure.container, azure.auth, azure.id)
        .map_err(|e| e.to_string())?;
    match leader.describe().await {
        Ok(_) => Ok(Some("nothing written; the leader lease is readable".into())),
        Err(e) if azure.create_container && e.to_string().contains("ContainerNotFound") => Ok(
            Some(format!(
                "nothing written; the container {:?} does not exist and is created at start (`create_container`)",
                azure.container
            )),
        ),
        Err(e) => Err(e.to_string()),
    }
}
