//! `validate`'s check of the source: the deployment is reachable with the
//! given credentials, is a replica set or sharded cluster (change streams
//! need one), and the configured scope can be watched with the configured
//! pipeline. Reads only.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::{options::ClientOptions, Client};

use super::{
    config::{MongoDbChangeStreamConfig, Scope},
    // Server selection gives up before the caller's 10 s healthcheck
    // limit, so its error (which names what it saw) is the one reported.
    errors::{describe, SERVER_SELECTION_TIMEOUT},
};
use crate::redact;

pub async fn healthcheck(config: &MongoDbChangeStreamConfig) -> Result<Option<String>, String> {
    let mut options = ClientOptions::parse(&config.uri)
        .await
        .map_err(|e| format!("`uri`: {}", redact::error(&e)))?;
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
    options.app_name = Some("mongo-adls validate".into());
    let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
    let hosts = hosts.join(",");
    let client = Client::with_options(options).map_err(|e| redact::error(&e))?;
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
    watch_once(&client, config).await.map_err(|e| {
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

/// Opens the change stream as the source would and closes it at once.
async fn watch_once(
    client: &Client,
    config: &MongoDbChangeStreamConfig,
) -> mongodb::error::Result<()> {
    let pipeline = config.user_pipeline().unwrap_or_default();
    let wait = Duration::from_millis(1);
    match config.scope().unwrap_or(Scope::Deployment) {
        Scope::Deployment => {
            client
                .watch()
                .pipeline(pipeline)
                .max_await_time(wait)
                .await?
        }
        Scope::Database(db) | Scope::Collections(db, _) => {
            client
                .database(&db)
                .watch()
                .pipeline(pipeline)
                .max_await_time(wait)
                .await?
        }
        Scope::Collection(db, coll) => {
            client
                .database(&db)
                .collection::<Document>(&coll)
                .watch()
                .pipeline(pipeline)
                .max_await_time(wait)
                .await?
        }
    };
    Ok(())
}
