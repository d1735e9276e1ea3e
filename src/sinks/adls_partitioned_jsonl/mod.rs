//! `adls_partitioned_jsonl` sink (in progress): change events as
//! time-partitioned JSON Lines in ADLS Gen2.
//!
//! Done so far, and used by the rest when it lands:
//! - `partition.rs`: the path template, time windows, file names, and safe
//!   namespace segments.
//! - `encode.rs`: one change event to one JSON line in the lake's record
//!   format, and the event's partition time.
//!
//! Still to come (see the issue): `config.rs`, `storage.rs` (Blob endpoint
//! and `file://`), `state.rs` (open files, staged blocks, high-water
//! positions), `roll.rs` and `sink.rs`.

pub mod encode;
pub mod partition;
