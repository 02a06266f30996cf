//! The hub's HTTP server: `/metrics` (Prometheus text), `/healthz`, and the API under
//! `/api/v1` ([`crate::api`]).

use crate::ingest::{IngestCounters, REJECT_REASONS};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use firmware::proto::Stream;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct AppState {
    pub counters: Arc<IngestCounters>,
    pub registry: Arc<Registry>,
}

/// What `/metrics` reads of the API.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub counters: Arc<crate::api::ApiCounters>,
    pub live: crate::api::live::Live,
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

#[derive(Debug)]
struct Collector {
    counters: Arc<IngestCounters>,
    api: Option<ApiMetrics>,
    started: Instant,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m.encode_family(&Vec::<(&str, &str)>::new())?)?;
    Ok(())
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let per_stream = |a: &[AtomicU64; Stream::COUNT]| -> Vec<(Labels<'_>, u64)> {
            Stream::ALL.iter().zip(a).map(|(s, c)| (vec![("stream", s.name())], load(c))).collect()
        };
        let enc = &mut enc;
        gauge(
            enc,
            "tapwatch_hub_uptime_seconds",
            "Seconds since the hub started",
            self.started.elapsed().as_secs_f64(),
        )?;
        counter(
            enc,
            "tapwatch_ingest_accepted",
            "Messages whose rows were committed, by stream",
            &per_stream(&c.accepted),
        )?;
        counter(
            enc,
            "tapwatch_ingest_duplicates",
            "Messages taken before (sent again by an edge or the broker), by stream",
            &per_stream(&c.duplicates),
        )?;
        let rejected: Vec<(Labels<'_>, u64)> = REJECT_REASONS
            .iter()
            .zip(&c.rejected)
            .map(|(r, v)| (vec![("reason", *r)], load(v)))
            .collect();
        counter(
            enc,
            "tapwatch_ingest_rejected",
            "Messages refused (kept in dead_letters), by reason",
            &rejected,
        )?;
        counter(
            enc,
            "tapwatch_ingest_dead_letters_trimmed",
            "Dead letters deleted, the oldest first, to keep them under retention.dead_letters_max_mb",
            &[(vec![], load(&c.dead_letters_trimmed))],
        )?;
        counter(
            enc,
            "tapwatch_ingest_panics",
            "Ingest batches whose commit panicked (then taken one message at a time)",
            &[(vec![], load(&c.panics))],
        )?;
        counter(
            enc,
            "tapwatch_ingest_flows",
            "Flow records committed",
            &[(vec![], load(&c.flows))],
        )?;
        counter(
            enc,
            "tapwatch_ingest_commits",
            "Ingest transactions committed",
            &[(vec![], load(&c.commits))],
        )?;
        counter(
            enc,
            "tapwatch_ingest_commit_errors",
            "Ingest transactions that failed (the batch is retried, not acknowledged)",
            &[(vec![], load(&c.commit_errors))],
        )?;
        counter(
            enc,
            "tapwatch_ingest_acked",
            "Messages acknowledged to the broker",
            &[(vec![], load(&c.acked))],
        )?;
        counter(
            enc,
            "tapwatch_ingest_acks_published",
            "Acks published to the edges (what is committed, per device and stream)",
            &[(vec![], load(&c.acks_published))],
        )?;
        counter(
            enc,
            "tapwatch_fleet_configs_published",
            "Desired configurations handed to the broker for the edges (retained)",
            &[(vec![], load(&c.configs_published))],
        )?;
        counter(
            enc,
            "tapwatch_fleet_commands_published",
            "Commands handed to the broker for the edges",
            &[(vec![], load(&c.commands_published))],
        )?;
        gauge(
            enc,
            "tapwatch_ingest_seqs_missing",
            "Seqs of the edges' streams never received while later ones were (asked for again), all devices heard from since start",
            load(&c.seqs_missing) as f64,
        )?;
        gauge(
            enc,
            "tapwatch_ingest_seqs_lost",
            "Seqs the edges no longer held that never came, counted once each, all devices heard from since start",
            load(&c.seqs_lost) as f64,
        )?;
        gauge(
            enc,
            "tapwatch_ingest_mqtt_connected",
            "1 while connected to the broker",
            load(&c.mqtt_connected) as f64,
        )?;
        gauge(
            enc,
            "tapwatch_ingest_db_connected",
            "1 while connected to PostgreSQL",
            load(&c.db_connected) as f64,
        )?;
        if let Some(api) = &self.api {
            let a = &api.counters;
            let logins: Vec<(Labels<'_>, u64)> = vec![
                (vec![("result", "ok")], load(&a.logins_ok)),
                (vec![("result", "failed")], load(&a.logins_failed)),
                (vec![("result", "rate_limited")], load(&a.logins_limited)),
            ];
            counter(enc, "tapwatch_api_logins", "Login attempts, by result", &logins)?;
            gauge(
                enc,
                "tapwatch_api_live_clients",
                "WebSocket clients of /api/v1/live",
                load(&a.live_clients) as f64,
            )?;
            counter(
                enc,
                "tapwatch_api_live_lagged",
                "Live events dropped for clients too slow to take them",
                &[(vec![], load(&a.live_lagged))],
            )?;
            counter(
                enc,
                "tapwatch_api_live_revoked",
                "Live connections closed because their session or token ended",
                &[(vec![], load(&a.live_revoked))],
            )?;
            counter(
                enc,
                "tapwatch_api_panics",
                "Requests whose handler panicked (answered 500; the hub went on)",
                &[(vec![], load(&a.panics))],
            )?;
            counter(
                enc,
                "tapwatch_api_live_events",
                "Events received from PostgreSQL for live push",
                &[(vec![], load(&api.live.received))],
            )?;
            counter(
                enc,
                "tapwatch_api_live_suppressed",
                "Anomaly events not pushed because a suppression rule matched",
                &[(vec![], load(&api.live.suppressed))],
            )?;
            gauge(
                enc,
                "tapwatch_api_live_listening",
                "1 while listening to PostgreSQL for live events",
                load(&api.live.listening) as f64,
            )?;
        }
        Ok(())
    }
}

/// The registry `/metrics` encodes.
pub fn registry(counters: Arc<IngestCounters>, api: Option<ApiMetrics>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Collector { counters, api, started: Instant::now() }));
    r
}

/// `/metrics` and `/healthz`, the API when given, and the dashboard's files from `web_root`
/// (when it exists) at `/`.
pub fn app(
    state: AppState,
    api: Option<crate::api::ApiState>,
    web_root: Option<&std::path::Path>,
) -> Router {
    let own = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    let app = match api {
        Some(api) => own.merge(crate::api::router(api).0),
        None => own,
    };
    let app = match web_root.filter(|p| p.join("index.html").is_file()) {
        Some(root) => app.fallback_service(tower_http::services::ServeDir::new(root)),
        None => app.fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "The dashboard is not installed here: build hub/web (npm run build) and set \
                 http.web_root to its dist folder.\n",
            )
        }),
    };
    // The dashboard runs only its own scripts, talks only to this hub, and is never framed.
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    headers.into_iter().fold(app, |app, (name, value)| {
        app.layer(tower_http::set_header::SetResponseHeaderLayer::if_not_present(
            name,
            header::HeaderValue::from_static(value),
        ))
    })
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &s.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// 200 while connected to the broker and to PostgreSQL, else 503; the body says which.
async fn healthz(State(s): State<AppState>) -> Response {
    let mqtt = s.counters.mqtt_connected.load(Ordering::Relaxed) == 1;
    let db = s.counters.db_connected.load(Ordering::Relaxed) == 1;
    let code = if mqtt && db { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({"mqtt": mqtt, "postgres": db}))).into_response()
}
