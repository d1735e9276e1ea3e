//! mongo-adls: streams MongoDB change events into Azure Data Lake Storage
//! Gen2 as time-partitioned JSON Lines, in a small runtime that mirrors
//! Vector's component contracts (sources, sinks, buffers, end-to-end
//! acknowledgements, internal metrics).

pub mod api;
pub mod azure;
pub mod backoff;
pub mod cli;
pub mod codecs;
pub mod config;
pub mod event;
pub mod finalizer;
pub mod ha;
pub mod health;
pub mod internal_events;
pub mod lineage;
pub mod lock;
pub mod redact;
pub mod retry;
pub mod shutdown;
pub mod sinks;
pub mod snowflake;
pub mod sources;
pub mod state_store;
pub mod testing;
pub mod topology;
pub mod validate;

/// The error type of component builders and other fallible setup steps.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;
pub type Result<T, E = Error> = std::result::Result<T, E>;
