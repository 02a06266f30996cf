//! The security review's findings, each replayed against a real PostgreSQL as the attacker would
//! (a viewer's login, one device's messages, anyone who can reach the API), and shown refused.
//!
//! Each test has a database of its own.

#![allow(clippy::unwrap_used)] // a failed step is a failed test

mod common;

use common::*;

/// Times a viewer may send that are valid RFC 3339 but outside what the hub can hold: each is a
/// 400 naming the parameter, on every route that takes a time, and the hub answers the next
/// request (it used to panic while binding the time, which aborted the whole hub).
#[tokio::test]
async fn test_extreme_times_are_refused_not_fatal() {
    let hub = Hub::start(1000).await;
    seed(&hub, "tap-1", now_us()).await;
    let vic = hub.login("vic").await;
    let ada = hub.login("ada").await;
    let times = [
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00%2B23:59",
        "1969-12-31T23:59:59Z",
        "2100-01-01T00:00:01Z",
    ];
    let routes = [
        ("/api/v1/anomalies", &vic),
        ("/api/v1/flows", &vic),
        ("/api/v1/stats", &vic),
        ("/api/v1/devices/tap-1/metrics", &vic),
        ("/api/v1/analyses", &vic),
        ("/api/v1/audit", &ada),
    ];
    for (route, who) in routes {
        for t in times {
            for field in ["to", "from"] {
                let uri = format!("{route}?{field}={t}");
                let r = hub.call(Method::GET, &uri, who, None).await;
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.json);
                assert_eq!(r.json["field"], field, "{uri}: {}", r.json);
            }
        }
    }
    // Cursors carry times too: one forged to the far future is a 400 as well.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    for (route, cursor) in [
        ("/api/v1/anomalies", b64(&format!("{}|1", i128::MAX))),
        ("/api/v1/flows", b64("253402300799000000|1|0|tap-1")),
    ] {
        let r = hub.call(Method::GET, &format!("{route}?cursor={cursor}"), &vic, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{route}: {}", r.json);
    }
    hub.get("/api/v1/anomalies", &vic).await;
}

fn stats(device: &str, seq: u64, start: i64, packets: Value) -> (String, Vec<u8>) {
    let (topic, v) = msg(
        device,
        "stats",
        seq,
        start,
        json!({"interval_start": start, "interval_end": start + 10_000_000,
               "packets": packets, "bytes": 1, "tcp_packets": 0, "udp_packets": 0,
               "icmp_packets": 0, "other_packets": 0, "flows_started": 0, "flows_ended": 0,
               "parse_errors": 0, "top_ports": [],
               "top_talkers": [{"ip": "10.0.0.1", "packets": packets, "bytes": 1}]}),
    );
    (topic, v.to_string().into_bytes())
}

fn rejected(c: &IngestCounters, reason: &str) -> u64 {
    let i = tapwatch_hub::ingest::REJECT_REASONS.iter().position(|r| *r == reason).unwrap();
    c.rejected[i].load(Ordering::Relaxed)
}

async fn dead_letters(hub: &Hub, reason: &str) -> i64 {
    let c = hub.sql().await;
    c.query_one("SELECT count(*) FROM dead_letters WHERE reason = $1", &[&reason])
        .await
        .unwrap()
        .get(0)
}

/// One device cannot poison everyone's statistics: a counter past bigint is a dead letter
/// naming it (it was stored as -1), and counters at bigint's largest add up to it, saturated,
/// where the sum used to overflow and make /stats answer 500 for a week.
#[tokio::test]
async fn test_counters_cannot_overflow_the_statistics() {
    let hub = Hub::start(1000).await;
    let t = now_us() - 3_600_000_000;
    let c = hub.ingest_raw(&hub.config, &[stats("tap-1", 1, t, json!(u64::MAX))]).await;
    assert_eq!(rejected(&c, "range"), 1);
    assert_eq!(dead_letters(&hub, "range").await, 1);
    let big = json!(i64::MAX);
    let c = hub
        .ingest_raw(
            &hub.config,
            &[stats("tap-1", 2, t, big.clone()), stats("tap-2", 1, t, big.clone())],
        )
        .await;
    assert_eq!(rejected(&c, "range"), 0);
    let c = hub.ingest_raw(&hub.config, &[stats("tap-1", 3, t + 10_000_000, big)]).await;
    assert_eq!(c.accepted.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>(), 1);
    let vic = hub.login("vic").await;
    let s = hub.get("/api/v1/stats?bucket=3600", &vic).await;
    let packets: Vec<i64> =
        s["series"].as_array().unwrap().iter().map(|b| b["packets"].as_i64().unwrap()).collect();
    assert!(packets.contains(&i64::MAX), "{s}");
    assert!(packets.iter().all(|p| *p >= 0), "{s}");
    assert_eq!(s["totals"]["packets"].as_i64(), Some(i64::MAX), "{s}");
    let talkers = s["top_talkers"].as_array().unwrap();
    assert_eq!(talkers[0]["packets"].as_i64(), Some(i64::MAX), "{s}");
}

/// Out-of-range floats are dead letters naming the field (a confidence of 1e39 was stored as
/// Infinity and broke the anomaly page), and so are times more than a day ahead (they made day
/// partitions retention never drops).
#[tokio::test]
async fn test_floats_and_future_times_are_refused() {
    let hub = Hub::start(1000).await;
    let t = now_us();
    let mut a = anomaly(1, "port_scan", "high", "10.0.0.1", t - 10, t);
    a["confidence"] = json!(1e39);
    let mut b = anomaly(2, "port_scan", "high", "10.0.0.1", t - 10, t);
    b["confidence"] = json!(-5);
    let year = 365 * 86_400_000_000i64;
    let c_late = anomaly(3, "port_scan", "high", "10.0.0.1", t, t + 50 * year);
    let future = stats("tap-1", 1, t + 50 * year, json!(5));
    let as_raw = |(topic, v): (String, Value)| (topic, v.to_string().into_bytes());
    let c = hub
        .ingest_raw(
            &hub.config,
            &[
                as_raw(msg("tap-1", "anomalies", 1, t, a)),
                as_raw(msg("tap-1", "anomalies", 2, t, b)),
                as_raw(msg("tap-1", "anomalies", 3, t, c_late)),
                future,
            ],
        )
        .await;
    assert_eq!(rejected(&c, "range"), 4);
    let sql = hub.sql().await;
    let details: Vec<String> = sql
        .query("SELECT detail FROM dead_letters ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (d, field) in details.iter().zip(["confidence", "confidence", "last_seen", "ts"]) {
        assert!(d.contains(field), "{d} / {field}");
    }
    let anomalies: i64 = sql.query_one("SELECT count(*) FROM anomalies", &[]).await.unwrap().get(0);
    assert_eq!(anomalies, 0);
    let far_partitions: i64 = sql
        .query_one("SELECT count(*) FROM pg_class WHERE relname ~ '_p2[1-9][0-9]{6}$'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(far_partitions, 0, "no partition decades ahead");
}

/// A seq taken before with other content is a dead letter (reason seq_conflict), not dropped
/// as a duplicate; a true resend is a duplicate; jumps and regressions are visible per device.
#[tokio::test]
async fn test_seq_conflicts_are_kept_and_sequences_visible() {
    let hub = Hub::start(1000).await;
    let t = now_us();
    let a = |id: u64, src: &str| anomaly(id, "port_scan", "high", src, t - 10, t);
    let raw = |(topic, v): (String, Value)| (topic, v.to_string().into_bytes());
    let real = raw(msg("tap-b", "anomalies", 5, t, a(1, "10.0.0.66")));
    // Another publisher takes seq 5 first with its own content; then the real one comes.
    let forged = raw(msg("tap-b", "anomalies", 5, t, a(1, "10.9.9.9")));
    hub.ingest_raw(&hub.config, &[forged]).await;
    let c = hub.ingest_raw(&hub.config, &[real.clone(), real.clone()]).await;
    assert_eq!(rejected(&c, "seq_conflict"), 2, "both copies differ from what seq 5 took");
    assert_eq!(dead_letters(&hub, "seq_conflict").await, 2);
    // A true resend is a duplicate, nothing more.
    let first = raw(msg("tap-b", "anomalies", 7, t, a(2, "10.0.0.7")));
    hub.ingest_raw(&hub.config, std::slice::from_ref(&first)).await;
    let c = hub.ingest_raw(&hub.config, &[first]).await;
    assert_eq!(c.duplicates[0].load(Ordering::Relaxed), 1);
    assert_eq!(rejected(&c, "seq_conflict"), 0);
    // Seq 3 comes after 7: a regression; 1, 2, 4 and 6 never came.
    hub.ingest_raw(&hub.config, &[raw(msg("tap-b", "anomalies", 3, t, a(3, "10.0.0.8")))]).await;
    let vic = hub.login("vic").await;
    let d = hub.get("/api/v1/devices/tap-b", &vic).await;
    let s = &d["streams"][0];
    assert_eq!(s["stream"], "anomalies", "{d}");
    assert_eq!(
        (s["last_seq"].as_i64(), s["received"].as_i64(), s["missing"].as_i64()),
        (Some(7), Some(3), Some(4)),
        "{d}"
    );
    assert_eq!((s["regressions"].as_i64(), s["conflicts"].as_i64()), (Some(1), Some(2)), "{d}");
}

/// Dead letters cannot fill the disk: a device sending refused messages as fast as it can stays
/// under `retention.dead_letters_max_mb`, trimmed as they are written, the oldest first.
#[tokio::test]
async fn test_dead_letters_stay_under_their_cap() {
    let hub = Hub::start(1000).await;
    let mut config = hub.config.clone();
    config.retention.dead_letters_max_mb = 1;
    let big = vec![b'x'; 200 * 1024];
    let mut trimmed = 0;
    for round in 0..10 {
        let batch: Vec<_> =
            (0..5).map(|i| (format!("tapwatch/v1/tap-{round}-{i}/flows"), big.clone())).collect();
        let c = hub.ingest_raw(&config, &batch).await;
        trimmed += c.dead_letters_trimmed.load(Ordering::Relaxed);
    }
    let sql = hub.sql().await;
    let bytes: i64 = sql
        .query_one(
            "SELECT coalesce(sum(octet_length(payload) + octet_length(detail)), 0)::bigint FROM dead_letters",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // At most the cap after a trim, plus what a quarter of the cap and one batch add before
    // the next.
    assert!(bytes <= (1 << 20) + (1 << 18) + 5 * 210 * 1024, "{bytes}");
    assert!(trimmed >= 40, "{trimmed} of 50 trimmed");
    // A payload over the contract's limit is kept cut to it, its size in the detail.
    let huge = vec![b'{'; 1 << 20];
    let c = hub.ingest_raw(&config, &[("tapwatch/v1/tap-1/flows".into(), huge)]).await;
    assert_eq!(rejected(&c, "oversize"), 1);
    let (len, detail): (i32, String) = {
        let r = sql
            .query_one(
                "SELECT octet_length(payload), detail FROM dead_letters ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(len as usize, tapwatch_hub::contract::MAX_PAYLOAD);
    assert!(detail.contains("1048576"), "{detail}");
}

/// Evidence is bounded per episode, and for episodes the hub does not know.
#[tokio::test]
async fn test_evidence_is_bounded() {
    let hub = Hub::with(|c| c.ingest.evidence_max_mb = 1).await;
    let t = now_us();
    hub.ingest(&[msg(
        "tap-1",
        "anomalies",
        1,
        t,
        anomaly(9, "port_scan", "high", "10.0.0.1", t - 5, t),
    )])
    .await;
    use base64::Engine;
    // A pcap part of ~120 KiB: 80 packets of 1,500 bytes.
    let part = {
        let header = pcap_file::pcap::PcapHeader::default();
        let mut w = pcap_file::pcap::PcapWriter::with_header(Vec::new(), header).unwrap();
        for i in 0..80u64 {
            let p = pcap_file::pcap::PcapPacket::new(Duration::from_micros(i), 1500, &[7u8; 1500]);
            w.write_packet(&p).unwrap();
        }
        base64::engine::general_purpose::STANDARD.encode(w.into_writer())
    };
    let evidence = |seq: u64, episode: u64| {
        let (topic, v) = msg(
            "tap-1",
            "evidence",
            seq,
            t,
            json!({"anomaly": episode, "packets": 80, "pcap": part}),
        );
        (topic, v.to_string().into_bytes())
    };
    // Twelve parts of 120 KiB for the known episode: eight fit in 1 MiB, four are refused.
    let parts: Vec<_> = (1..=12).map(|s| evidence(s, 9)).collect();
    let c = hub.ingest_raw(&hub.config, &parts).await;
    assert_eq!(rejected(&c, "evidence_limit"), 4);
    // Episodes that do not exist: together no more than the cap either.
    let orphans: Vec<_> = (13..=30).map(|s| evidence(s, 1000 + s)).collect();
    let c = hub.ingest_raw(&hub.config, &orphans).await;
    assert_eq!(rejected(&c, "evidence_limit"), 10, "eight of eighteen fit");
    let sql = hub.sql().await;
    let kept: i64 = sql
        .query_one("SELECT sum(octet_length(pcap))::bigint FROM anomaly_evidence", &[])
        .await
        .unwrap()
        .get(0);
    assert!(kept <= 2 << 20, "{kept}");
}

/// Failed logins from one address cannot lock the owner out from another, behind a proxy too;
/// an address trying many names is held back; X-Forwarded-For counts only from a trusted proxy.
#[tokio::test]
async fn test_login_limits_cannot_lock_out_the_owner() {
    let hub = Hub::with(|c| {
        // Two a minute: one more every 30 s, far more than these few tries take however slow
        // the password hashing is.
        c.http.login_per_minute = 2;
        c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let login = "/api/v1/auth/login";
    let wrong = json!({"username": "ada", "password": "not the password"});
    let right = json!({"username": "ada", "password": PASSWORD});
    let attacker = SocketAddr::from(([192, 0, 2, 66], 5000));
    let owner = SocketAddr::from(([192, 0, 2, 10], 5000));
    for _ in 0..2 {
        let r = hub.call_from(attacker, login, &[], wrong.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = hub.call_from(attacker, login, &[], wrong.clone()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let r = hub.call_from(owner, login, &[], right.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "the owner from elsewhere logs in: {}", r.json);

    // Behind the proxy: the client is X-Forwarded-For's last hop.
    let proxy = SocketAddr::from(([127, 0, 0, 1], 5000));
    for _ in 0..3 {
        hub.call_from(proxy, login, &[("x-forwarded-for", "1.2.3.4, 203.0.113.66")], wrong.clone())
            .await;
    }
    let r =
        hub.call_from(proxy, login, &[("x-forwarded-for", "203.0.113.66")], wrong.clone()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let r =
        hub.call_from(proxy, login, &[("x-forwarded-for", "203.0.113.10")], right.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // From a peer that is not a trusted proxy the header is ignored: forging it gains nothing.
    let forger = SocketAddr::from(([198, 51, 100, 7], 5000));
    let mut statuses = Vec::new();
    for i in 0..4 {
        let xff = format!("10.0.0.{i}");
        let r = hub.call_from(forger, login, &[("x-forwarded-for", &xff)], wrong.clone()).await;
        statuses.push(r.status);
    }
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");

    // One address spraying many names is held back: five times the per-name limit, here 5 at
    // once and one more every 12 s (so however slow the password hashing, 12 tries cannot all
    // pass). Every name is new, so only the address's limit can refuse one.
    let spray = Hub::with(|c| c.http.login_per_minute = 1).await;
    let sprayer = SocketAddr::from(([192, 0, 2, 99], 5000));
    let mut limited = 0;
    for i in 0..12 {
        let body = json!({"username": format!("user{i}"), "password": "Winter2026!"});
        if spray.call_from(sprayer, login, &[], body).await.status == StatusCode::TOO_MANY_REQUESTS
        {
            limited += 1;
        }
    }
    assert!(limited >= 1, "5 tries a minute from one address, and one every 12 s");
}

/// A new password revokes the user's API tokens, and an open live WebSocket is closed when its
/// session is logged out or its token revoked.
#[tokio::test]
async fn test_password_change_and_logout_end_tokens_and_sockets() {
    let hub = Hub::start(1000).await;
    let ada = hub.login("ada").await;
    let (_, vic_token) = hub.token(&ada, "vic").await;
    let Who::Token(token) = vic_token.clone() else { unreachable!() };
    hub.get("/api/v1/devices", &vic_token).await;
    let addr = serve(&hub.app).await;
    let mut ws = connect(addr, &token).await;

    // The admin gives vic a new password: the token stops working, and its socket closes.
    let users = hub.get("/api/v1/users", &ada).await;
    let vic_id = users.as_array().unwrap().iter().find(|u| u["username"] == "vic").unwrap()["id"]
        .as_i64()
        .unwrap();
    let r = hub
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{vic_id}"),
            &ada,
            Some(json!({"password": "a brand new password"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = hub.call(Method::GET, "/api/v1/devices", &vic_token, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(closed_within(&mut ws, api::live::RECHECK * 3).await, "the token's socket stays open");

    // A session's socket closes when the session logs out.
    let (_, ann) = hub.token(&ada, "ann").await;
    let Who::Session { cookie, csrf } = hub.login("ann").await else { unreachable!() };
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/api/v1/live").into_client_request().unwrap();
    req.headers_mut().insert(header::COOKIE, cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_event(&mut ws, Duration::from_secs(5)).await.unwrap()["type"], "hello");
    let session = Who::Session { cookie, csrf };
    let r = hub.call(Method::POST, "/api/v1/auth/logout", &session, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    assert!(
        closed_within(&mut ws, api::live::RECHECK * 3).await,
        "the session's socket stays open"
    );
    // Another credential of the same user still works.
    hub.get("/api/v1/devices", &ann).await;
    assert!(hub.state.counters.live_revoked.load(Ordering::Relaxed) >= 2);
}

async fn closed_within(ws: &mut Ws, within: Duration) -> bool {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Every parameter of every GET route in the OpenAPI document, at its extremes (past every
/// integer type, negative, empty, NaN, NUL, invalid UTF-8, 10,000 characters, far times,
/// whole address spaces, SQL): each is answered, and never with a 5xx.
#[tokio::test]
async fn test_every_parameter_at_its_extremes() {
    let hub = Hub::start(1000).await;
    seed(&hub, "tap-1", now_us()).await;
    let ada = hub.login("ada").await;
    let (_, admin) = hub.token(&ada, "ada").await;
    let long = "x".repeat(10_000);
    let extremes: Vec<&str> = vec![
        "",
        "0",
        "-1",
        "2147483648",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "340282366920938463463374607431768211456",
        "1e39",
        "NaN",
        "-0",
        "%00",
        "%FF%FE",
        "%E2%80%AE",
        &long,
        "9999-12-31T23:59:59-23:59",
        "0000-01-01T00:00:00%2B23:59",
        "2026-02-30T25:61:61Z",
        "0.0.0.0%2F0",
        "%3A%3A%2F0",
        "10.0.0.1%2F33",
        "a,b,c",
        "%27%20OR%201%3D1%20--",
        "true",
    ];
    let doc = serde_json::to_value(&hub.doc).unwrap();
    let mut asked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(op) = item.get("get") else { continue };
        let params: Vec<(String, String)> = op["parameters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (p["name"].as_str().unwrap().to_string(), p["in"].as_str().unwrap().into())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let with_path = |value: &str| {
            params
                .iter()
                .filter(|(_, at)| at == "path")
                .fold(path.clone(), |p, (name, _)| p.replace(&format!("{{{name}}}"), value))
        };
        let mut uris = Vec::new();
        for v in &extremes {
            if params.iter().any(|(_, at)| at == "path") {
                uris.push(with_path(v));
            }
            for (name, _) in params.iter().filter(|(_, at)| at == "query") {
                uris.push(format!("{}?{name}={v}", with_path("1")));
            }
        }
        for uri in uris {
            let r = hub.call(Method::GET, &uri, &admin, None).await;
            assert!(
                r.status.as_u16() < 500,
                "GET {} -> {}: {}",
                &uri[..uri.len().min(200)],
                r.status,
                r.json
            );
            asked += 1;
        }
    }
    assert!(asked > 900, "{asked} requests");
    assert_eq!(hub.state.counters.panics.load(Ordering::Relaxed), 0);
}
