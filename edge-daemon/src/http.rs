//! The daemon's local HTTP endpoints: `/metrics` (Prometheus text), `/healthz`, and the admin
//! endpoints that change capture rules at run time (`POST /admin/reload`, `GET /admin/rules`).

use crate::metrics::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// (interface, filter now in force; "" for everything).
    pub applied: Vec<(String, String)>,
    /// Changes that need a restart (interfaces added or removed, flow or store settings).
    pub notes: Vec<String>,
}

/// Runs a reload; given to the router by the daemon.
pub type Reloader = Arc<dyn Fn() -> Result<ReloadReport, Vec<String>> + Send + Sync>;

#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub reload: Reloader,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/admin/reload", post(reload))
        .route("/admin/rules", get(rules))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = crate::metrics::encode(&s.registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// 200 when every capture runs and the pipeline reported in the last five seconds, else 503.
async fn healthz(State(s): State<AppState>) -> Response {
    let ifaces: Vec<serde_json::Value> = s
        .shared
        .interfaces
        .read()
        .map(|v| {
            v.iter()
                .map(|c| serde_json::json!({"interface": c.name, "up": c.up.load(Ordering::Relaxed) == 1}))
                .collect()
        })
        .unwrap_or_default();
    let captures_up = ifaces.iter().all(|i| i["up"] == true);
    let age =
        s.shared.pipeline.lock().ok().and_then(|p| p.updated).map(|u| u.elapsed().as_secs_f64());
    let pipeline_ok = age.is_some_and(|a| a < 5.0);
    let ok = captures_up && pipeline_ok;
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "device": s.shared.device,
        "uptime_s": s.shared.started.elapsed().as_secs(),
        "interfaces": ifaces,
        "pipeline_report_age_s": age,
    });
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn reload(State(s): State<AppState>) -> Response {
    let f = s.reload.clone();
    match tokio::task::spawn_blocking(move || f()).await {
        Ok(Ok(report)) => (StatusCode::OK, Json(report)).into_response(),
        Ok(Err(problems)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "configuration refused; the rules in force stay", "problems": problems})),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({"error": e.to_string()})))
            .into_response(),
    }
}

async fn rules(State(s): State<AppState>) -> Response {
    let v: Vec<serde_json::Value> = s
        .shared
        .interfaces
        .read()
        .map(|v| {
            v.iter()
                .map(|c| {
                    let f = c.filter.lock().map(|f| f.clone()).unwrap_or_default();
                    serde_json::json!({"interface": c.name, "filter": f})
                })
                .collect()
        })
        .unwrap_or_default();
    Json(v).into_response()
}
