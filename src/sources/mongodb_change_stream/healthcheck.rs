//! `validate`'s check of the source: the deployment is reachable with the
//! given credentials, is a replica set or sharded cluster (change streams
//! need one), and the configured scope can be watched with the configured
//! pipeline. Reads only.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::Client;

use super::{
    // Server selection gives up before the caller's 10 s healthcheck
    // limit, so its error (which names what it saw) is the one reported.
    errors::{describe, SERVER_SELECTION_TIMEOUT},
    settings::Settings,
    watch::{client_options, watch, OpenAt},
};

pub async fn healthcheck(settings: &Settings) -> Result<Option<String>, String> {
    let mut options = client_options(&settings.uri, "mongo-adls validate").await?;
    options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
    let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
    let hosts = hosts.join(",");
    let client = Client::with_options(options).map_err(|e| describe(&e))?;
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|e| format!("{hosts}: {}", describe(&e)))?;
    let kind = deployment_kind(&hello).ok_or_else(|| {
        format!(
            "{hosts} is a standalone mongod: change streams need a replica set or sharded cluster (start mongod with --replSet and run rs.initiate(), or point `uri` at a replica set)"
        )
    })?;
    // Opened as the source opens it (pipeline, pre- and post-images,
    // expanded events), from now, and closed at once.
    let settings = Settings {
        max_await_time: Duration::from_millis(1),
        ..settings.clone()
    };
    watch(&client, &settings, &OpenAt::Now, settings.batch_size)
        .await
        .map_err(|e| {
            format!(
                "cannot watch the configured scope on {hosts}: {}",
                describe(&e)
            )
        })?;
    client.shutdown().await;
    tracing::debug!(hosts, kind, "Source healthcheck passed.");
    Ok(None)
}

/// `replica set <name>` or `sharded cluster`; `None` for a standalone.
fn deployment_kind(hello: &Document) -> Option<String> {
    if let Ok(set) = hello.get_str("setName") {
        return Some(format!("replica set {set}"));
    }
    (hello.get_str("msg") == Ok("isdbgrid")).then(|| "sharded cluster".to_string())
}
