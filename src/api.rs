//! The optional HTTP API (`api.address`): `GET /health` for liveness probes
//! and `GET /metrics` in Prometheus text format.

use std::net::SocketAddr;

use axum::{routing::get, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::shutdown::ShutdownSignal;

/// Binds `address` and serves until `shutdown` fires.
pub async fn serve(
    address: SocketAddr,
    handle: PrometheusHandle,
    shutdown: ShutdownSignal,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
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
