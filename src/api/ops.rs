//! Health, readiness, metrics and the contract.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, problem};

pub async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], "ok").into_response()
}

/// Ready when Redis answers a PING within `HUSH_READINESS_TIMEOUT_MS`: a probe must get its
/// answer before its own timeout, not when the store's longer response timeout fires. The body
/// names the kind of store (single, cluster, sentinel) so a probe's log shows which is in use.
pub async fn readyz(State(s): State<AppState>) -> Response {
    let timeout = std::time::Duration::from_millis(s.config.readiness_timeout_ms);
    let kind = s.broker.store().kind().as_str();
    match tokio::time::timeout(timeout, s.broker.ping()).await {
        Ok(Ok(())) => (
            [(header::CONTENT_TYPE, "text/plain")],
            format!("ok\nstore: {kind}\n"),
        )
            .into_response(),
        Ok(Err(_)) | Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "Store unavailable",
            format!("redis ({kind}) does not answer"),
        ),
    }
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    if let Err(e) = s.broker.refresh_pool_gauges().await {
        tracing::warn!(error = %e, "pool gauges not refreshed");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../proto/openapi.yaml"),
    )
        .into_response()
}
