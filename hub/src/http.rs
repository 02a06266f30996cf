//! The hub's own endpoints: `/metrics` (Prometheus text) and `/healthz`. The API for people and
//! programs (`/api/v1`) comes with the issue "Hub API".

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

type Labels<'a> = Vec<(&'a str, &'a str)>;

#[derive(Debug)]
struct Collector {
    counters: Arc<IngestCounters>,
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
        let per_stream = |a: &[AtomicU64; 6]| -> Vec<(Labels<'_>, u64)> {
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
        Ok(())
    }
}

/// The registry `/metrics` encodes.
pub fn registry(counters: Arc<IngestCounters>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Collector { counters, started: Instant::now() }));
    r
}

pub fn app(state: AppState) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(state)
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
