//! `adls_partitioned_jsonl` sink: change events as time-partitioned JSON
//! Lines in ADLS Gen2 (or a local `file://` lake), every event exactly once,
//! and by default no file visible before it is complete.
//!
//! - `config.rs`: the user-facing options.
//! - `partition.rs`: path templates, time windows, safe namespace segments.
//! - `encode.rs`: one change event to one JSON line.
//! - `storage/`: the Blob endpoint and `file://` backends, and retries.
//! - `state.rs`: open files, staged blocks and high-water positions.
//! - `sink.rs`: batching, writing, acknowledging and sealing.

pub mod config;
pub mod encode;
pub mod partition;
mod sink;
pub mod state;
pub mod storage;

pub use config::AdlsPartitionedJsonlConfig;
