//! `/health` (liveness: the consume loop polls), `/ready` (MongoDB writable, not stopping) on
//! the HTTP port; `/metrics` on the metrics port.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct HttpState {
    pub health: Arc<Health>,
    pub stuck_after: Duration,
}

pub fn health_router(state: HttpState) -> Router {
    Router::new()
        .route(
            "/health",
            get(|State(s): State<HttpState>| async move {
                let since = s.health.since_last_poll();
                if since <= s.stuck_after {
                    (StatusCode::OK, "ok".to_owned())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("consume loop stuck: no poll for {}s", since.as_secs()))
                }
            }),
        )
        .route(
            "/ready",
            get(|State(s): State<HttpState>| async move {
                match s.health.ready() {
                    Ok(()) => (StatusCode::OK, "ok".to_owned()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }),
        )
        .with_state(state)
}

pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
            }
        }),
    )
}
