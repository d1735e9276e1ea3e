//! Cooperative shutdown: one token per component class, cancelled by the
//! topology when a signal arrives.

pub use tokio_util::sync::CancellationToken as ShutdownSignal;
