//! The daemon's local HTTP endpoints: `/metrics` (Prometheus text), `/healthz`, and the admin
//! endpoints that change capture rules at run time (`POST /admin/reload`, `GET /admin/rules`).
//!
//! The admin endpoints want the token of `http.admin_token_file` as `Authorization: Bearer`
//! (compared in constant time), a `Host` that names this machine (`allowed_hosts`: a web page
//! that rebinds its own name to the tap's address is refused), and no `Origin` (they are for
//! programs; a browser's cross-site request always carries one). Without a token file they are
//! off.

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
    pub admin: Arc<AdminGate>,
}

/// Who may use the admin endpoints.
#[derive(Debug, Clone, Default)]
pub struct AdminGate {
    /// `None`: the admin endpoints are off.
    pub token: Option<String>,
    /// Host names (no port) the endpoints answer to.
    pub hosts: Vec<String>,
}

impl AdminGate {
    /// From `[http]`: the token file's token, and the allowed hosts with the usual local names
    /// and the listen address added.
    pub fn from_config(http: &crate::config::HttpConfig) -> Result<AdminGate, String> {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec();
        hosts.push(match http.listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        hosts.extend(http.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Ok(AdminGate { token: http.admin_token()?, hosts })
    }

    /// `Ok` when the request may go on; else the status and why.
    fn check(&self, headers: &axum::http::HeaderMap) -> Result<(), (StatusCode, &'static str)> {
        let refuse = |code: StatusCode, why: &'static str| Err((code, why));
        let Some(token) = &self.token else {
            return refuse(
                StatusCode::FORBIDDEN,
                "the admin endpoints are off: set http.admin_token_file",
            );
        };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        // Without its port: "[::1]:9187" -> "[::1]", "localhost:9187" -> "localhost".
        let name = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => host,
        };
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            return refuse(StatusCode::FORBIDDEN, "Host is not one of http.allowed_hosts");
        }
        if headers.contains_key(header::ORIGIN) {
            return refuse(
                StatusCode::FORBIDDEN,
                "the admin endpoints take no cross-origin requests",
            );
        }
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .trim();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), token.as_bytes())) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "send the admin token as Authorization: Bearer",
            );
        }
        Ok(())
    }
}

async fn admin_only(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match s.admin.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err((code, why)) => (code, Json(serde_json::json!({"error": why}))).into_response(),
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

pub fn app(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/reload", post(reload))
        .route("/admin/rules", get(rules))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admin_only));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .merge(admin)
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

#[cfg(test)]
mod tests {
    use super::AdminGate;
    use axum::http::{header, HeaderMap, StatusCode};

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn test_admin_needs_token_local_host_and_no_origin() {
        let http = crate::config::HttpConfig {
            allowed_hosts: vec!["tap-01.mgmt".into()],
            ..Default::default()
        };
        let token = "0123456789abcdef-token";
        let gate =
            AdminGate { token: Some(token.into()), ..AdminGate::from_config(&http).unwrap() };
        let bearer = format!("Bearer {token}");
        let code = |h: HeaderMap| gate.check(&h).err().map(|r| r.0);
        let host = header::HOST;
        let auth = header::AUTHORIZATION;
        for ok in ["127.0.0.1:9187", "localhost", "[::1]:9187", "TAP-01.mgmt:9187"] {
            assert_eq!(code(headers(&[(host.clone(), ok), (auth.clone(), &bearer)])), None, "{ok}");
        }
        assert_eq!(code(headers(&[(host.clone(), "localhost")])), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            code(headers(&[
                (host.clone(), "localhost"),
                (auth.clone(), "Bearer 0123456789abcdef")
            ])),
            Some(StatusCode::UNAUTHORIZED)
        );
        for bad in ["attacker.example", "127.0.0.1.attacker.example:9187", ""] {
            let h = headers(&[(host.clone(), bad), (auth.clone(), &bearer)]);
            assert_eq!(code(h), Some(StatusCode::FORBIDDEN), "{bad}");
        }
        let h = headers(&[
            (host.clone(), "localhost"),
            (auth.clone(), &bearer),
            (header::ORIGIN, "http://x"),
        ]);
        assert_eq!(code(h), Some(StatusCode::FORBIDDEN));
        // No token file: off.
        let off = AdminGate { token: None, ..gate.clone() };
        let h = headers(&[(host, "localhost"), (auth, &bearer)]);
        assert_eq!(off.check(&h).err().map(|r| r.0), Some(StatusCode::FORBIDDEN));
    }
}
