//! `snapshot`: asks a running pipeline to copy collections beside its
//! stream, through its source's signal collection.

use super::*;
use crate::sources::mongodb_change_stream::{request_snapshot, MongoDbChangeStreamConfig};

pub(super) async fn snapshot(opts: &Opts, source: Option<&str>, collections: &[String]) -> i32 {
    let config = match load(opts, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mongo: Vec<(&String, &MongoDbChangeStreamConfig)> = config
        .sources
        .iter()
        .filter_map(|(id, s)| {
            let any: &dyn std::any::Any = &*s.inner;
            any.downcast_ref::<MongoDbChangeStreamConfig>()
                .map(|m| (id, m))
        })
        .filter(|(id, m)| source.map_or(m.signal_collection.is_some(), |s| s == id.as_str()))
        .collect();
    let (id, mongo) = match (mongo.as_slice(), source) {
        ([one], _) => *one,
        ([], Some(s)) => {
            eprintln!("Error: no `mongodb_change_stream` source `{s}` in the configuration.");
            return EXIT_CONFIG;
        }
        ([], None) => {
            eprintln!("Error: no `mongodb_change_stream` source has a `signal_collection`: set one (with `snapshot = \"incremental\"` or \"off\") and restart the agent.");
            return EXIT_CONFIG;
        }
        (_, _) => {
            let ids: Vec<&str> = mongo.iter().map(|(id, _)| id.as_str()).collect();
            eprintln!(
                "Error: several sources have a `signal_collection` ({}): name one with --source.",
                ids.join(", ")
            );
            return EXIT_CONFIG;
        }
    };
    match request_snapshot(mongo, collections).await {
        Ok((request, resolved)) => {
            println!(
                "Requested a snapshot of {} from source `{id}` (request {request}). The running agent copies it beside the stream (or at its next start); follow it in the logs or with `mongo-adls state show`.",
                resolved.join(", ")
            );
            0
        }
        Err(e) => {
            eprintln!("Error: source `{id}`: {}", crate::redact::text(&e));
            1
        }
    }
}
