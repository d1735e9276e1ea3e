//! `mongodb_change_stream` source: MongoDB change streams (deployment,
//! database, collection or a list of collections) with checkpoints that
//! resume exactly where delivered data ends.
//!
//! - `config.rs`: the user-facing options.
//! - `stream.rs`: opening the stream, reading raw events, reconnecting.
//! - `checkpoint.rs`: positions, the checkpoint file, and acknowledgement
//!   bookkeeping (commit only what every sink made durable).
//! - `snapshot.rs`: copying existing documents before streaming.

mod checkpoint;
mod config;
mod healthcheck;
mod snapshot;
mod stream;

pub use checkpoint::{token_cluster_time, Checkpoint};
pub use config::MongoDbChangeStreamConfig;
