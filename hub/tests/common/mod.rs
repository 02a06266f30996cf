//! What the hub's integration tests share: a database of a test's own, a hub's API over it
//! with users of every role, requests as from 127.0.0.1, the real ingest, contract messages,
//! and WebSocket clients.

#![allow(clippy::unwrap_used, dead_code)] // each test file uses some of these; a failed step is a failed test

pub use axum::body::Body;
pub use axum::extract::ConnectInfo;
pub use axum::http::{header, Method, Request, StatusCode};
pub use axum::Router;
pub use http_body_util::BodyExt;
pub use serde_json::{json, Value};
pub use std::net::SocketAddr;
pub use std::sync::atomic::{AtomicU64, Ordering};
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};
pub use tapwatch_hub::api::{self, auth, ApiState, Role};
pub use tapwatch_hub::config::Config;
pub use tapwatch_hub::ingest::{prepare, Incoming, IngestCounters, Ingestor};
pub use tower::ServiceExt;

pub static UNIQUE: AtomicU64 = AtomicU64::new(0);

pub const SERVER: &str = "host=127.0.0.1 user=postgres";

/// A database of the test's own, dropped at the end.
pub struct Db {
    pub name: String,
}

impl Db {
    pub async fn create() -> Db {
        let name = format!(
            "tapwatch_api_{}_{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        );
        let admin = tapwatch_hub::db::connect(&format!("{SERVER} dbname=postgres")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let db = Db { name };
        let mut c = tapwatch_hub::db::connect(&db.url()).await.unwrap();
        tapwatch_hub::db::migrate(&mut c).await.unwrap();
        db
    }
    pub fn url(&self) -> String {
        format!("{SERVER} dbname={}", self.name)
    }
    pub fn config(&self, login_per_minute: u32) -> Config {
        let mut c = Config::default();
        c.postgres.url = self.url();
        c.ingest.auto_register_devices = true;
        c.http.login_per_minute = login_per_minute;
        c
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .output();
    }
}

/// A hub's API over one database, with users of every role.
pub struct Hub {
    pub db: Db,
    pub config: Config,
    pub state: ApiState,
    pub app: Router,
    pub doc: utoipa::openapi::OpenApi,
}

pub const PASSWORD: &str = "correct horse battery";

impl Hub {
    pub async fn start(login_per_minute: u32) -> Hub {
        Hub::with(|c| c.http.login_per_minute = login_per_minute).await
    }

    /// A hub whose configuration `change` edits first.
    pub async fn with(change: impl FnOnce(&mut Config)) -> Hub {
        let db = Db::create().await;
        let mut config = db.config(1000);
        change(&mut config);
        let state = tapwatch_hub::cli::api_state(&config).unwrap();
        let (app, doc) = api::router(state.clone());
        let client = tapwatch_hub::db::connect(&db.url()).await.unwrap();
        for (name, role) in [("ada", Role::Admin), ("ann", Role::Analyst), ("vic", Role::Viewer)] {
            auth::add_user(&client, name, PASSWORD, role).await.unwrap();
        }
        Hub { db, config, state, app, doc }
    }

    pub async fn sql(&self) -> tokio_postgres::Client {
        tapwatch_hub::db::connect(&self.db.url()).await.unwrap()
    }

    /// A request as it would come from 127.0.0.1.
    pub async fn call(&self, method: Method, uri: &str, who: &Who, body: Option<Value>) -> Reply {
        let mut req = who.on(Request::builder().method(method).uri(uri));
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        self.send(req).await
    }

    /// The configuration the hub sends `tap-1` once it comes online, signed with a fixed key
    /// (returned as its public half); edges fetch from `http://hub.test:8080/`.
    pub async fn config_sent(&self) -> (firmware::proto::ConfigMsg, String) {
        self.ingest(&[msg(
            "tap-1",
            "status",
            1000,
            now_us(),
            json!({"state": "online", "version": "0.1.0", "uptime_s": 1}),
        )])
        .await;
        let sql = self.sql().await;
        tapwatch_hub::fleet::refresh(&sql).await.unwrap();
        let key = edge_config::fleet::signing_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .unwrap();
        let out = tapwatch_hub::fleet::unpublished(&sql, Some(&key), "http://hub.test:8080/")
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
        let m = serde_json::from_slice(&out[0].2).unwrap();
        (m, edge_config::fleet::public_key_text(&key))
    }

    /// A multipart/form-data POST of `parts` (name, bytes), as from 127.0.0.1.
    pub async fn multipart(&self, uri: &str, who: &Who, parts: &[(&str, &[u8])]) -> Reply {
        let boundary = "tapwatch-test-boundary-7d3f";
        let mut body = Vec::new();
        for (name, bytes) in parts {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                     filename=\"{name}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let req = who.on(Request::builder().method(Method::POST).uri(uri));
        let req =
            req.header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"));
        let mut req = req.body(Body::from(body)).unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        self.send(req).await
    }

    pub async fn get(&self, uri: &str, who: &Who) -> Value {
        let r = self.call(Method::GET, uri, who, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {uri}: {}", r.json);
        r.json
    }

    pub async fn login(&self, user: &str) -> Who {
        let r = self
            .call(
                Method::POST,
                "/api/v1/auth/login",
                &Who::Nobody,
                Some(json!({"username": user, "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let set = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        Who::Session { cookie, csrf: r.json["csrf_token"].as_str().map(String::from) }
    }

    /// A token for `user`, made by an admin's session.
    pub async fn token(&self, admin: &Who, user: &str) -> (i64, Who) {
        let r = self
            .call(
                Method::POST,
                "/api/v1/tokens",
                admin,
                Some(json!({"name": format!("{user}'s tests"), "username": user})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        (r.json["id"].as_i64().unwrap(), Who::Token(r.json["secret"].as_str().unwrap().into()))
    }

    /// Messages in through the real ingest as raw payloads, under `config`; its counters (no
    /// message need be taken).
    pub async fn ingest_raw(
        &self,
        config: &Config,
        messages: &[(String, Vec<u8>)],
    ) -> Arc<IngestCounters> {
        let counters = Arc::new(IngestCounters::default());
        let mut ing = Ingestor::new(self.sql().await, config, counters.clone());
        let prepared: Vec<_> = messages
            .iter()
            .map(|(topic, v)| {
                prepare("", Incoming { topic: topic.clone(), payload: v.clone().into() })
            })
            .collect();
        ing.commit(&prepared).await.unwrap();
        counters
    }

    /// A request from `peer` with extra headers.
    pub async fn call_from(
        &self,
        peer: SocketAddr,
        uri: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Reply {
        let mut req = Request::builder().method(Method::POST).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = req.header(header::CONTENT_TYPE, "application/json");
        let mut req = req.body(Body::from(body.to_string())).unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        self.send(req).await
    }

    /// A request through the router, and its reply.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, json, bytes }
    }

    /// Messages in through the real ingest: decoded, checked and committed as from MQTT.
    pub async fn ingest(&self, messages: &[(String, Value)]) {
        let raw: Vec<(String, Vec<u8>)> =
            messages.iter().map(|(t, v)| (t.clone(), v.to_string().into_bytes())).collect();
        let counters = self.ingest_raw(&self.config, &raw).await;
        let rejected: u64 = counters.rejected.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!(rejected, 0, "the ingest refused a test message");
    }
}

#[derive(Debug, Clone)]
pub enum Who {
    Nobody,
    Token(String),
    Session { cookie: String, csrf: Option<String> },
}

impl Who {
    /// A request with these credentials.
    pub fn on(&self, mut req: axum::http::request::Builder) -> axum::http::request::Builder {
        match self {
            Who::Nobody => {}
            Who::Token(t) => req = req.header(header::AUTHORIZATION, format!("Bearer {t}")),
            Who::Session { cookie, csrf } => {
                req = req.header(header::COOKIE, cookie);
                if let Some(c) = csrf {
                    req = req.header(auth::CSRF_HEADER, c);
                }
            }
        }
        req
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: Value,
    pub bytes: Vec<u8>,
}

pub const HOUR_US: i64 = 3_600_000_000;

pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

pub fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

pub fn msg(device: &str, stream: &str, seq: u64, ts: i64, body: Value) -> (String, Value) {
    let mut v = json!({"schema": 1, "device": device, "seq": seq, "ts": ts});
    v.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
    (format!("tapwatch/v1/{device}/{stream}"), v)
}

pub fn anomaly(id: u64, kind: &str, severity: &str, src: &str, first: i64, last: i64) -> Value {
    json!({"id": id, "kind": kind, "severity": severity, "confidence": 0.9, "score": 40.0,
           "threshold": 20.0, "detector": "window.syn", "src_ip": src, "dst_ip": "10.0.0.9",
           "dst_port": 443, "protocol": 6, "first_seen": first, "last_seen": last, "count": 40,
           "reasons": [{"feature": "syn_per_s", "value": 40.0, "contribution": 1.0}]})
}

pub fn flow(src: &str, sport: u16, dst: &str, dport: u16, proto: u8, end: i64) -> Value {
    let mut features = vec![0.0f32; firmware::features::N_FEATURES];
    features[firmware::features::idx::TOT_FWD_PKTS] = 3.0;
    features[firmware::features::idx::TOT_BWD_PKTS] = 2.0;
    features[firmware::features::idx::TOTLEN_FWD_PKTS] = 300.0;
    features[firmware::features::idx::TOTLEN_BWD_PKTS] = 1200.0;
    json!({"src_ip": src, "src_port": sport, "dst_ip": dst, "dst_port": dport, "protocol": proto,
           "vlan": 0, "start": end - 1_000_000, "end": end, "end_reason": "fin",
           "features": features})
}

/// A day of one device: status, statistics every 10 minutes for 3 hours, metrics, analyses,
/// six flows and three anomalies.
pub async fn seed(hub: &Hub, device: &str, t0: i64) {
    let mut m = vec![msg(
        device,
        "status",
        1,
        t0,
        json!({"state": "online", "version": "0.1.0", "uptime_s": 5}),
    )];
    for i in 0..18u64 {
        let start = t0 - 3 * HOUR_US + i as i64 * 600_000_000;
        m.push(msg(
            device,
            "stats",
            i + 1,
            start,
            json!({
            "interval_start": start, "interval_end": start + 600_000_000,
            "packets": 100, "bytes": 10_000, "tcp_packets": 60, "udp_packets": 30,
            "icmp_packets": 10, "other_packets": 0, "flows_started": 5, "flows_ended": 4,
            "parse_errors": 0,
            "top_ports": [{"protocol": 6, "port": 443, "packets": 50, "bytes": 6000},
                          {"protocol": 17, "port": 53, "packets": 30, "bytes": 3000}],
            "top_talkers": [{"ip": "10.0.0.1", "packets": 70, "bytes": 8000},
                            {"ip": "10.0.0.2", "packets": 30, "bytes": 2000}]}),
        ));
        m.push(msg(
            device,
            "metrics",
            i + 1,
            start,
            json!({
            "cpu_percent": 10.0 + i as f64, "mem_used_bytes": 1000, "mem_total_bytes": 4000,
            "disk_used_bytes": 10, "disk_total_bytes": 100, "net_rx_bytes": 1000 * i,
            "net_tx_bytes": 500 * i, "flows_active": 7, "store_dropped": 0,
            "capture": [{"interface": "eth1", "packets": 100 * i, "bytes": 1000 * i,
                         "kernel_drops": i, "queue_drops": 2 * i, "parse_errors": 0}]}),
        ));
        m.push(msg(
            device,
            "analyses",
            i + 1,
            start,
            json!({
            "model": "autoencoder", "model_version": "3", "rows": 10, "score_min": 0.1,
            "score_mean": 0.5, "score_max": 2.0 + i as f64, "threshold": 1.5, "flagged": 1,
            "latency_us": 40}),
        ));
    }
    let end = t0 - HOUR_US;
    m.push(msg(
        device,
        "flows",
        1,
        end,
        json!({"feature_set": firmware::features::FEATURE_SET_VERSION, "flows": [
            flow("10.0.0.1", 40000, "10.0.0.9", 443, 6, end - 50_000_000),
            flow("10.0.0.1", 40001, "10.0.0.9", 443, 6, end - 40_000_000),
            flow("10.0.0.2", 5353, "10.0.1.53", 53, 17, end - 30_000_000),
            flow("192.168.9.9", 40002, "10.0.0.9", 22, 6, end - 20_000_000),
            flow("10.0.0.3", 0, "10.0.0.9", 0, 1, end - 10_000_000),
            flow("10.0.0.1", 40003, "10.0.0.9", 80, 6, end),
        ]}),
    ));
    m.push(msg(
        device,
        "anomalies",
        1,
        end,
        anomaly(1, "syn_flood", "high", "10.0.0.1", end - 60_000_000, end),
    ));
    m.push(msg(
        device,
        "anomalies",
        2,
        end,
        anomaly(2, "port_scan", "medium", "192.168.9.9", end - 2 * HOUR_US, end - 10_000_000),
    ));
    m.push(msg(
        device,
        "anomalies",
        3,
        end,
        anomaly(3, "port_scan", "low", "10.0.0.7", end - 30_000_000, end - 20_000_000),
    ));
    hub.ingest(&m).await;
}

/// A pcap file's packets: time, wire length, bytes.
pub fn read_pcap(bytes: &[u8]) -> Vec<(Duration, u32, Vec<u8>)> {
    let mut r = pcap_file::pcap::PcapReader::new(bytes).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        out.push((p.timestamp, p.orig_len, p.data.to_vec()));
    }
    out
}

/// A hub's API serving on a real port, for WebSocket clients.
pub async fn serve(app: &Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.clone().into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(addr: SocketAddr, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/api/v1/live").into_client_request().unwrap();
    req.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = next_event(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(hello["type"], "hello");
    ws
}

pub async fn next_event(ws: &mut Ws, within: Duration) -> Option<Value> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).ok();
        }
    }
}

/// The next event of `kind`, skipping others (statistics ticks, device changes).
pub async fn next_of(ws: &mut Ws, kind: &str, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let e = next_event(ws, left).await?;
        if e["type"] == kind {
            return Some(e);
        }
    }
}
