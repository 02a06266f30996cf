//! Retention on a real PostgreSQL: day partitions dropped by age and by size, anomalies and the
//! ingest log by age, dead letters by age and under their size cap.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, UNIX_EPOCH};
use tapwatch_hub::config::RetentionConfig;
use tapwatch_hub::db;

fn keep(max_age_days: u32, max_size_mb: u64) -> RetentionConfig {
    RetentionConfig { max_age_days, max_size_mb, ..RetentionConfig::default() }
}

const DAY_US: i64 = 86_400_000_000;

#[tokio::test]
async fn test_partitions_dropped_by_age_then_size() {
    let name = format!("tapwatch_ret_{}", std::process::id());
    let admin = db::connect("host=127.0.0.1 user=postgres dbname=postgres").await.unwrap();
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let url = format!("host=127.0.0.1 user=postgres dbname={name}");
    let mut c = db::connect(&url).await.unwrap();
    db::migrate(&mut c).await.unwrap();

    // "Now" is day 20,000; flows on days 19,990 to 19,999, 2,000 rows a day.
    let now = UNIX_EPOCH + Duration::from_micros((20_000 * DAY_US) as u64);
    let mut parts = db::Partitions::default();
    parts.ensure(&c, "traffic_features", 19_990..20_000).await.unwrap();
    for day in 19_990..20_000i64 {
        c.execute(
            "INSERT INTO traffic_features (device, batch_seq, idx, start_ts, end_ts, src_ip,
             src_port, dst_ip, dst_port, protocol, vlan, end_reason, feature_set, features)
             SELECT 'tap', g, 0, $1, $1, '10.0.0.1', 1, '10.0.0.2', 2, 6, 0, 'fin', 1,
                    array_fill(1.5::real, ARRAY[97])
             FROM generate_series(1, 2000) g",
            &[&db::time(day * DAY_US + 3_600_000_000)],
        )
        .await
        .unwrap();
    }
    c.execute(
        "INSERT INTO anomalies (device, edge_id, seq, kind, severity, confidence, score,
         threshold, detector, src_ip, first_seen, last_seen, count, reasons)
         VALUES ('tap', 1, 1, 'port_scan', 'high', 1, 1, 1, 'w', '10.0.0.1', $1, $1, 1, '[]'),
                ('tap', 2, 1, 'port_scan', 'high', 1, 1, 1, 'w', '10.0.0.1', $2, $2, 1, '[]')",
        &[&db::time(19_991 * DAY_US), &db::time(19_999 * DAY_US)],
    )
    .await
    .unwrap();

    c.execute(
        "INSERT INTO dead_letters (received_at, topic, reason, detail, payload)
         VALUES ($1, 't', 'shape', 'd', '\\x00'), ($2, 't', 'shape', 'd', '\\x00')",
        &[&db::time(19_990 * DAY_US), &db::time(19_999 * DAY_US)],
    )
    .await
    .unwrap();
    // Age: keep 5 days (19,995 on): 5 partitions go, one anomaly, one dead letter.
    let r = db::retention(&c, &keep(5, 1 << 20), now).await.unwrap();
    assert_eq!(r.partitions_dropped_age, 5);
    assert_eq!(r.anomalies_deleted, 1);
    assert_eq!(r.dead_letters_deleted, 1);
    let n: i64 = c.query_one("SELECT count(*) FROM traffic_features", &[]).await.unwrap().get(0);
    assert_eq!(n, 5 * 2000);
    let oldest: std::time::SystemTime =
        c.query_one("SELECT min(end_ts) FROM traffic_features", &[]).await.unwrap().get(0);
    assert!(oldest >= db::time(19_995 * DAY_US));

    // Size: a limit under the size of the 5 days drops the oldest days until it fits.
    let total: i64 = c
        .query_one(
            "SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits
             WHERE inhparent = 'traffic_features'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let limit_mb = ((total as u64) * 3 / 5) / (1024 * 1024);
    let r = db::retention(&c, &keep(5, limit_mb.max(1)), now).await.unwrap();
    assert!(r.partitions_dropped_size >= 2, "{r:?} of {total} bytes, limit {limit_mb} MiB");
    let newest: std::time::SystemTime =
        c.query_one("SELECT max(end_ts) FROM traffic_features", &[]).await.unwrap().get(0);
    assert!(newest >= db::time(19_999 * DAY_US), "the newest day stays");

    // Dead letters: 20 of 100 KiB under a cap of 1 MiB keep the newest that fit, counted.
    c.execute(
        "INSERT INTO dead_letters (received_at, topic, reason, detail, payload)
         SELECT $1, 't' || g, 'shape', 'd', convert_to(repeat('x', 102400), 'UTF8')
         FROM generate_series(1, 20) g",
        &[&db::time(19_999 * DAY_US)],
    )
    .await
    .unwrap();
    let cap = RetentionConfig { dead_letters_max_mb: 1, ..keep(5, 1 << 20) };
    let r = db::retention(&c, &cap, now).await.unwrap();
    let (n, bytes, oldest): (i64, i64, String) = {
        let row = c
            .query_one(
                "SELECT count(*), sum(octet_length(payload) + octet_length(detail))::bigint,
                        min(topic) FILTER (WHERE topic ~ '^t[0-9]+$')
                 FROM dead_letters WHERE topic <> 't'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert!(bytes <= 1 << 20, "{bytes} bytes kept");
    assert_eq!(n, 10, "ten of 100 KiB and a byte fit in 1 MiB with the old one: {r:?}");
    assert!(r.dead_letters_trimmed >= 10, "{r:?}");
    assert_eq!(oldest, "t11", "the newest are kept");

    drop(c);
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
}
