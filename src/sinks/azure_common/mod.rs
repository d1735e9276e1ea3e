//! Azure plumbing shared by sinks.

pub mod shared_key;
