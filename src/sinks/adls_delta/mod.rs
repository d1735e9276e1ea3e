//! `adls_delta` sink: each collection's change events as a Delta Lake
//! table in ADLS Gen2 (or a local `file://` folder), one row per event,
//! committed exactly once, so Databricks, Fabric, Synapse, Snowflake
//! (Delta Direct), Spark, DuckDB and Polars query it with no load job.
//!
//! - `config.rs`: the user-facing options, their checks, and `build`.
//! - `schema.rs`: the columns, partition columns, Parquet encoding.
//! - `rows.rs`: one change event to one row (Arrow arrays).
//! - `data_file.rs`: one Parquet file being written, row group by row
//!   group, as staged blocks.
//! - `table.rs`: where a table is; what is held of it between commits.
//! - `log/`: the Delta log: actions, replay, checkpoints, and the
//!   exactly-once commit (why by hand: `log/mod.rs`).
//! - `state.rs`: commit sequence numbers, intents, high-water positions,
//!   in the lease-fenced state.
//! - `requests.rs`: storage with retries, metrics and health.
//! - `sink.rs`: the run loop; `commits.rs`: sealing, intents, commits,
//!   outcomes, recovery; `upkeep.rs`: checkpoints, compaction, vacuum.

mod commits;
pub mod config;
mod data_file;
pub mod log;
mod requests;
mod rows;
pub mod schema;
mod sink;
mod state;
mod table;
mod upkeep;

pub use config::AdlsDeltaConfig;
