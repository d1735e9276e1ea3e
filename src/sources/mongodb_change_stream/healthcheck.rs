//! `validate`'s check of the source: the deployment is reachable with the
//! given credentials, is a replica set or sharded cluster (change streams
//! need one), and the configured scope can be watched with the configured
//! pipeline. Reads only.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::{error::ErrorKind, options::ClientOptions, Client};

use super::config::{MongoDbChangeStreamConfig, Scope};
use crate::redact;

/// Server selection gives up before the caller's 10 s healthcheck limit, so
/// its error (which names what it saw) is the one reported.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(8);

pub async fn healthcheck(config: &MongoDbChangeStreamConfig) -> Result<Option<String>, String> {
    let mut options = ClientOptions::parse(&config.uri)
        .await
        .map_err(|e| format!("`uri`: {}", redact::error(&e)))?;
    options.server_selection_timeout = Some(SELECTION_TIMEOUT);
    options.connect_timeout = Some(SELECTION_TIMEOUT);
    options.app_name = Some("mongo-adls validate".into());
    let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
    let hosts = hosts.join(",");
    let client = Client::with_options(options).map_err(|e| redact::error(&e))?;
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|e| explain(&hosts, &e))?;
    let kind = deployment_kind(&hello).ok_or_else(|| {
        format!(
            "{hosts} is a standalone mongod: change streams need a replica set or sharded cluster (start mongod with --replSet and run rs.initiate(), or point `uri` at a replica set)"
        )
    })?;
    watch_once(&client, config).await.map_err(|e| {
        format!(
            "cannot watch the configured scope on {hosts}: {}",
            explain(&hosts, &e)
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

/// A driver error as a sentence naming its likely cause, never a BSON dump.
fn explain(hosts: &str, e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { message, .. } => {
            let cause = if message.contains("Standalone") || message.contains("RSGhost") {
                "it is not a member of the replica set named in `uri` (a standalone mongod or a wrong `replicaSet`)"
            } else if message.contains("ReplicaSetNoPrimary") || message.contains("Unknown") {
                "no server answered (host down, wrong port or address, firewall, or TLS mismatch)"
            } else {
                "no suitable server"
            };
            format!(
                "cannot reach {hosts} within {}s: {cause}",
                SELECTION_TIMEOUT.as_secs()
            )
        }
        ErrorKind::Authentication { message, .. } => {
            format!(
                "authentication to {hosts} failed: {}",
                redact::text(message)
            )
        }
        ErrorKind::Command(c) => format!(
            "{hosts} refused: {} (code {})",
            redact::text(&c.message),
            c.code
        ),
        _ => redact::error(e),
    }
}
