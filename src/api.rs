//! The optional HTTP API (`api.address`): `GET /health` for probes and
//! `GET /metrics` in Prometheus text format.
//!
//! `/health` answers 200 while every component works, and 503 with a JSON
//! body naming each component's status and reason when one has failed for
//! `api.unhealthy_after_secs`, failed its healthcheck, or holds events back
//! until a restart (see [`crate::health`]).

use std::{net::SocketAddr, time::Duration};

use axum::{http::StatusCode, response::IntoResponse, routing::get, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::shutdown::ShutdownSignal;

/// Binds the API address: done before anything starts, so a busy port
/// stops the agent instead of leaving it running without `/health`.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    unhealthy_after: Duration,
    shutdown: ShutdownSignal,
) -> std::io::Result<()> {
    tracing::info!("API listening on http://{}", listener.local_addr()?);
    let app = Router::new()
        .route(
            "/health",
            get(move || async move { health(unhealthy_after) }),
        )
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

fn health(unhealthy_after: Duration) -> impl IntoResponse {
    let (healthy, body) = crate::health::report(unhealthy_after);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
