//! `console` sink: writes each event as one JSON line to stdout (or
//! stderr), for debugging a pipeline. Logs go to stderr, so stdout carries
//! only events.

mod config;
mod sink;

pub use config::ConsoleSinkConfig;
