//! `mongodb_change_stream` source: MongoDB change streams (deployment,
//! database, collection or a list of collections) with checkpoints that
//! resume exactly where delivered data ends.
//!
//! - `config.rs`: the user-facing options, checked and parsed into
//!   `settings.rs`, what the runtime reads.
//! - `stream.rs`: reading the stream and forwarding raw events, with
//!   acknowledgements and watermarks.
//! - `watch.rs`: opening the stream (as the source and `validate` do) and
//!   reading resume tokens.
//! - `state_check.rs`: the start check of the checkpoint against the sinks'
//!   state.
//! - `stream/recovery.rs`: stream errors: retry with backoff, lost history, fatal.
//! - `stream/idle.rs`: idle post-batch tokens and watermarks.
//! - `errors.rs`: MongoDB errors as sentences; which ones retrying cannot fix.
//! - `healthcheck.rs`: `validate`'s check of the deployment and scope.
//! - `oversized.rs`: skipping events over the 16 MB limit.
//! - `checkpoint.rs`: positions, the checkpoint file, and acknowledgement
//!   bookkeeping (commit only what every sink made durable).
//! - `stream/snapshot.rs`: copying existing documents before streaming;
//!   `stream/snapshot/records.rs` wraps them as records (through
//!   `pipeline`), `stream/snapshot/position.rs` orders them by `_id`.
//! - `incremental.rs`: an incremental snapshot's progress (rounds beside
//!   the stream) and why its record order is exact; `stream/incremental.rs`
//!   runs the rounds, `stream/incremental/chunks.rs` splits and reads them.
//! - `signal.rs`: snapshot requests through the signal collection (read
//!   from the stream, written by `mongo-adls snapshot`);
//!   `stream/signal.rs` acts on them.

mod checkpoint;
mod config;
mod errors;
mod healthcheck;
mod incremental;
mod oplog;
mod oversized;
mod read_ahead;
pub mod settings;
mod signal;
mod state_check;
mod stream;
mod watch;

pub use checkpoint::{token_cluster_time, Checkpoint};
pub use config::MongoDbChangeStreamConfig;
pub use signal::request_snapshot;
