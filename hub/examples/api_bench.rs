//! Load and timings for `bench/api.sh`: the API's statistics and anomaly lists over a day of a
//! busy hub.
//!
//! `cargo run --release -p tapwatch-hub --example api_bench -- URL [FLOWS] [DEVICES] [ANOMALIES] [RUNS]`
//!
//! Fills the database at URL (once: a rerun finds it filled) with FLOWS flow rows (default 10
//! million) spread over the last 24 hours, DEVICES edges' statistics every 10 seconds for those
//! 24 hours put in through the real ingest (so the minute, hour and top rollups are what the
//! ingest makes), and ANOMALIES episodes; then times requests through the API's router (token
//! check, pool, query, JSON) RUNS times each and prints the median, 95th percentile and worst
//! beside the targets.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a bench: a failed step ends it

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapwatch_hub::api::{self, auth, Role};
use tapwatch_hub::config::Config;
use tapwatch_hub::ingest::{prepare, Incoming, IngestCounters, Ingestor};
use tower::ServiceExt;

const DAY_US: i64 = 86_400_000_000;

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

async fn fill_flows(db: &tokio_postgres::Client, n: i64, devices: usize, t0: i64) {
    let have: i64 =
        db.query_one("SELECT count(*) FROM traffic_features", &[]).await.unwrap().get(0);
    if have >= n {
        println!("flows: {have} rows already");
        return;
    }
    let mut parts = tapwatch_hub::db::Partitions::default();
    let days = tapwatch_hub::db::day_of(t0 - DAY_US)..=tapwatch_hub::db::day_of(t0);
    parts.ensure(db, "traffic_features", days).await.unwrap();
    let chunk = 1_000_000i64;
    let started = Instant::now();
    let mut done = have;
    while done < n {
        let m = chunk.min(n - done);
        db.execute(
            "INSERT INTO traffic_features (device, batch_seq, idx, start_ts, end_ts, src_ip,
               src_port, dst_ip, dst_port, protocol, vlan, end_reason, feature_set, features)
             SELECT 'tap-' || (i % $4), i / 256, (i % 256)::smallint,
               e - interval '2 seconds', e,
               ('10.' || (i % 251) || '.' || ((i / 251) % 256) || '.' || (i % 7 + 1))::inet,
               1024 + (i % 60000)::int, ('192.0.2.' || (i % 200 + 1))::inet,
               (ARRAY[443, 80, 53, 22, 8080])[(1 + i % 5)::int], (ARRAY[6, 6, 17, 6, 1])[(1 + i % 5)::int]::smallint,
               0, 'fin', 1, $5::real[]
             FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS i,
                  LATERAL (SELECT to_timestamp(($3::bigint - (i * 86400000000 / $6::bigint)) / 1e6) AS e) t",
            &[
                &done,
                &m,
                &t0,
                &(devices as i64),
                &vec![0.5f32; firmware::features::N_FEATURES],
                &n,
            ],
        )
        .await
        .unwrap();
        done += m;
        println!("flows: {done} of {n} ({:.0} s)", started.elapsed().as_secs_f64());
    }
}

async fn fill_stats(config: &Config, devices: usize, t0: i64) {
    let db = tapwatch_hub::db::connect(&config.postgres.url).await.unwrap();
    let have: i64 = db.query_one("SELECT count(*) FROM traffic_stats", &[]).await.unwrap().get(0);
    let per_device = 8640u64;
    if have >= (devices as i64) * per_device as i64 {
        println!("statistics: {have} intervals already");
        return;
    }
    let counters = Arc::new(IngestCounters::default());
    let mut ing = Ingestor::new(db, config, counters.clone());
    let started = Instant::now();
    let mut batch = Vec::with_capacity(512);
    for d in 0..devices {
        let device = format!("tap-{d}");
        for i in 0..per_device {
            let start = t0 - DAY_US + i as i64 * 10_000_000;
            const PORTS: [u16; 10] = [443, 80, 53, 22, 8080, 3389, 25, 123, 993, 5353];
            let ports: Vec<Value> = (0..10u64)
                .map(|p| {
                    let port = PORTS[p as usize];
                    let protocol = if p % 3 == 2 { 17 } else { 6 };
                    json!({"protocol": protocol, "port": port,
                           "packets": 1000 - p * 90 + i % 7, "bytes": 900_000 - p * 80_000})
                })
                .collect();
            let hosts: Vec<Value> = (0..10u64)
                .map(|h| {
                    json!({"ip": format!("10.{}.{}.{}", d, (i / 360) % 200, h + 1),
                                "packets": 800 - h * 70, "bytes": 700_000 - h * 60_000})
                })
                .collect();
            let v = json!({"schema": 1, "device": device, "seq": i + 1, "ts": start + 10_000_000,
                "interval_start": start, "interval_end": start + 10_000_000,
                "packets": 12_000 + i % 100, "bytes": 9_000_000, "tcp_packets": 9_000,
                "udp_packets": 2_500, "icmp_packets": 400, "other_packets": 100 + i % 100,
                "flows_started": 300, "flows_ended": 290, "parse_errors": 0,
                "top_ports": ports, "top_talkers": hosts});
            batch.push(prepare(
                "",
                Incoming {
                    topic: format!("tapwatch/v1/{device}/stats"),
                    payload: v.to_string().into(),
                },
            ));
            if batch.len() == 512 {
                ing.commit(&batch).await.unwrap();
                batch.clear();
            }
        }
        println!("statistics: {device} done ({:.0} s)", started.elapsed().as_secs_f64());
    }
    ing.commit(&batch).await.unwrap();
}

async fn fill_anomalies(db: &tokio_postgres::Client, n: i64, devices: usize, t0: i64) {
    let have: i64 = db.query_one("SELECT count(*) FROM anomalies", &[]).await.unwrap().get(0);
    if have >= n {
        println!("anomalies: {have} already");
        return;
    }
    db.execute(
        "INSERT INTO anomalies (device, edge_id, seq, kind, severity, confidence, score, threshold,
           detector, src_ip, dst_ip, dst_port, protocol, first_seen, last_seen, count, reasons, state)
         SELECT 'tap-' || (i % $3), i, i,
           (ARRAY['port_scan','host_sweep','syn_flood','udp_flood','brute_force','dns_tunnel','reflection'])[(1 + i % 7)::int],
           (ARRAY['low','medium','high','critical'])[(1 + (i / 7) % 4)::int], 0.9, 30, 20, 'window.syn',
           ('10.9.' || (i % 200) || '.' || (i % 250 + 1))::inet, '192.0.2.10', 443, 6,
           l - interval '30 seconds', l, 100,
           '[{\"feature\": \"syn_per_s\", \"value\": 40, \"contribution\": 1}]'::jsonb,
           (ARRAY['new','new','acknowledged','resolved'])[(1 + i % 4)::int]
         FROM generate_series(1, $1::bigint) AS i,
              LATERAL (SELECT to_timestamp(($2::bigint - (i * 86400000000 / $1::bigint)) / 1e6) AS l) t",
        &[&n, &t0, &(devices as i64)],
    )
    .await
    .unwrap();
    println!("anomalies: {n} made");
}

struct Timed {
    name: &'static str,
    target_ms: f64,
    ms: Vec<f64>,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("URL").clone();
    let arg = |i: usize, d: i64| args.get(i).map_or(d, |s| s.parse().unwrap());
    let flows = arg(2, 10_000_000);
    let devices = arg(3, 4) as usize;
    let anomalies = arg(4, 100_000);
    let runs = arg(5, 30) as usize;

    let mut config = Config::default();
    config.postgres.url = url.clone();
    config.ingest.auto_register_devices = true;
    let mut db = tapwatch_hub::db::connect(&url).await.unwrap();
    tapwatch_hub::db::migrate(&mut db).await.unwrap();
    // The newest data ends at the hour's start, so reruns within an hour see the same day.
    let t0 = now_us() / 3_600_000_000 * 3_600_000_000;
    let t0 = db
        .query_one("SELECT coalesce(extract(epoch FROM max(end_ts))::bigint * 1000000, $1) FROM traffic_features", &[&t0])
        .await
        .unwrap()
        .get::<_, i64>(0);
    fill_flows(&db, flows, devices, t0).await;
    fill_stats(&config, devices, t0).await;
    fill_anomalies(&db, anomalies, devices, t0).await;
    db.batch_execute("ANALYZE").await.unwrap();
    let rows: i64 =
        db.query_one("SELECT count(*) FROM traffic_features", &[]).await.unwrap().get(0);
    let stats: i64 = db.query_one("SELECT count(*) FROM traffic_stats", &[]).await.unwrap().get(0);
    let anomalies_n: i64 =
        db.query_one("SELECT count(*) FROM anomalies", &[]).await.unwrap().get(0);
    println!("database: {rows} flow rows, {stats} statistics intervals, {anomalies_n} anomalies");

    let state = tapwatch_hub::cli::api_state(&config).unwrap();
    let app = api::router(state).0;
    let name = format!("bench{}", std::process::id());
    let _ = auth::add_user(&db, &name, "benchmark-password", Role::Viewer).await;
    let secret = format!("tw_bench_{}", std::process::id());
    db.execute(
        "INSERT INTO api_tokens (user_id, name, secret_hash) SELECT id, 'bench', $2 FROM users WHERE username = $1",
        &[&name, &auth::hash_secret(&secret)],
    )
    .await
    .unwrap();
    let end = time::OffsetDateTime::from_unix_timestamp(t0 / 1_000_000).unwrap();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339).unwrap().replace(':', "%3A")
    };
    let day = format!("from={}&to={}", fmt(end - time::Duration::days(1)), fmt(end));
    let get = |uri: String| {
        let app = app.clone();
        let secret = secret.clone();
        async move {
            let req = Request::builder()
                .uri(&uri)
                .header(header::AUTHORIZATION, format!("Bearer {secret}"))
                .body(Body::empty())
                .unwrap();
            let t = Instant::now();
            let res = app.oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&body));
            (ms, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    // The cursor of the 20th page, for a deep page.
    let mut cursor = String::new();
    for _ in 0..19 {
        let (_, page) = get(format!("/api/v1/anomalies?{day}&limit=50{cursor}")).await;
        cursor = format!("&cursor={}", page["next_cursor"].as_str().unwrap());
    }
    let (_, s) = get(format!("/api/v1/stats?{day}")).await;
    println!(
        "24-hour statistics: {} buckets, {} packets, top port {}, top talker {}",
        s["series"].as_array().unwrap().len(),
        s["totals"]["packets"],
        s["top_ports"][0]["port"],
        s["top_talkers"][0]["ip"]
    );
    let cases: Vec<(&'static str, f64, String)> = vec![
        ("stats: 24 h, all devices, 5-minute buckets", 200.0, format!("/api/v1/stats?{day}")),
        (
            "stats: 24 h, all devices, 1-minute buckets",
            200.0,
            format!("/api/v1/stats?{day}&bucket=60"),
        ),
        ("stats: 24 h, one device", 200.0, format!("/api/v1/stats?{day}&device=tap-1")),
        ("anomalies: first page (50)", 50.0, "/api/v1/anomalies?limit=50".to_string()),
        ("anomalies: 20th page (50)", 50.0, format!("/api/v1/anomalies?{day}&limit=50{cursor}")),
        (
            "anomalies: kind and severity",
            50.0,
            "/api/v1/anomalies?kind=brute_force&severity=high&limit=50".to_string(),
        ),
        (
            "anomalies: one device, new",
            50.0,
            "/api/v1/anomalies?device=tap-2&state=new&limit=50".to_string(),
        ),
        (
            "flows: one host, last hour, first page",
            f64::NAN,
            format!("/api/v1/flows?host=10.3.4.5&to={}", fmt(end)),
        ),
        ("devices", f64::NAN, "/api/v1/devices".to_string()),
    ];
    let mut results = Vec::new();
    for (name, target_ms, uri) in cases {
        for _ in 0..3 {
            get(uri.clone()).await;
        }
        let mut t = Timed { name, target_ms, ms: Vec::new() };
        for _ in 0..runs {
            t.ms.push(get(uri.clone()).await.0);
        }
        t.ms.sort_by(|a, b| a.total_cmp(b));
        results.push(t);
    }
    println!("\n{:<44} {:>9} {:>9} {:>9} {:>8}", "request", "p50 ms", "p95 ms", "max ms", "target");
    for t in &results {
        let p = |q: f64| t.ms[((t.ms.len() as f64 - 1.0) * q).round() as usize];
        let target =
            if t.target_ms.is_nan() { "-".to_string() } else { format!("{}", t.target_ms) };
        println!(
            "{:<44} {:>9.1} {:>9.1} {:>9.1} {:>8}",
            t.name,
            p(0.5),
            p(0.95),
            t.ms[t.ms.len() - 1],
            target
        );
    }
    db.execute("DELETE FROM users WHERE username = $1", &[&name]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
}
