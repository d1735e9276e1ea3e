//! The optional HTTP API (`api.address`): `GET /health` for liveness probes
//! and `GET /metrics` in Prometheus text format.

use std::net::SocketAddr;

use axum::{routing::get, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::shutdown::ShutdownSignal;

/// Binds `address` and serves until `shutdown` fires.
/// Binds the API address: done before anything starts, so a busy port
/// stops the agent instead of leaving it running without `/health`.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: ShutdownSignal,
) -> std::io::Result<()> {
    tracing::info!("API listening on http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/health", get(|| async { r#"{"ok":true}"# }))
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    handle.render()
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
