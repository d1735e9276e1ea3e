//! `adls_partitioned_jsonl` sink: change events as time-partitioned JSON
//! Lines in ADLS Gen2 (or a local `file://` lake), every event exactly once,
//! and by default no file visible before it is complete.
//!
//! - `config.rs`: the user-facing options and `build`.
//! - `validate.rs`: every check of the options at load.
//! - `layout.rs`: object names (templates, part suffix, per-event names).
//! - `partition.rs`: path templates, time windows, safe namespace segments.
//! - `encode.rs`: one change event to one JSON line; compression.
//! - `batcher.rs`: routing events to files, pending batches, buffer pool.
//! - `roll.rs`: when batches are written and files sealed; watermarks.
//! - `requests.rs`: the storage requests and the retrying client.
//! - `per_event.rs`: one object per event.
//! - `held.rs`: writes held back while storage is down, retried until it
//!   answers.
//! - `recovery.rs`: finishing a previous run's commits; lost blocks.
//! - `storage/`: the Blob endpoint and `file://` backends, and retries.
//! - `state/`: open files, staged blocks and high-water positions;
//!   `state/log.rs` is its on-disk change log.
//! - `sink.rs`: the run loop that wires these together; `sink/outcomes.rs`:
//!   what each finished request changes (state, acknowledgements, held and
//!   rejected writes).

mod batcher;
pub mod config;
pub mod encode;
mod held;
pub mod layout;
pub mod partition;
mod per_event;
mod recovery;
mod requests;
pub mod roll;
mod sink;
mod spill;
pub mod state;
mod validate;

pub use config::AdlsPartitionedJsonlConfig;

#[cfg(test)]
mod tests;
