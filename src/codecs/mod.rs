//! Encoders shared by sinks.

pub mod json;
