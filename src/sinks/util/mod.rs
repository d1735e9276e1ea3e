//! Pieces shared by the sinks that write a lake: the storage backends
//! (Blob endpoint and `file://`) behind one interface, and where a lake is.

pub mod state_log;
pub mod storage;
