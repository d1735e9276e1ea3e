//! `demo_events` source: generates synthetic change events shaped like
//! MongoDB's (`insert` into `<database>.<collection>` with a sequence
//! number), so pipelines, sinks and the runtime can be tried and tested
//! without a database.
//!
//! With a `data_dir` it checkpoints the highest sequence number whose event
//! and every earlier one were acknowledged, and continues after it on the
//! next start, exactly like a replayable source: a restart re-sends only
//! unacknowledged events.

mod config;
mod source;

pub use config::DemoEventsConfig;
