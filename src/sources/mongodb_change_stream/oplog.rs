//! The oplog window: how far back the oplog reaches, read once a minute
//! from its oldest entry. It bounds how long a checkpoint can stand still
//! (a storage outage, a stopped agent) before its changes can no longer be
//! replayed, so it is exported as a metric and quoted by the sink's
//! held-write errors.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::{options::FindOneOptions, Client};

use crate::{internal_events::mongodb::OplogWindow, shutdown::ShutdownSignal};

const EVERY: Duration = Duration::from_secs(60);

/// Reads the oldest oplog entry every minute until `shutdown`. Stops at the
/// first failure (a `mongos` has no oplog to read; a user without read
/// access to `local` cannot), saying so at debug level: the window is a
/// hint, not needed to run.
pub(super) async fn watch(client: Client, window: OplogWindow, shutdown: ShutdownSignal) {
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let options = FindOneOptions::builder()
        .sort(doc! { "$natural": 1 })
        .projection(doc! { "ts": 1 })
        .build();
    loop {
        match oplog.find_one(doc! {}).with_options(options.clone()).await {
            Ok(Some(entry)) => match entry.get_timestamp("ts") {
                Ok(ts) => window.oldest_entry_at(i64::from(ts.time)),
                Err(_) => return,
            },
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(
                    "The oplog window is not known (reading local.oplog.rs failed: {}).",
                    super::errors::describe(&e)
                );
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
