//! The API, against a real PostgreSQL: handlers called without a port (tower's `oneshot`), data
//! put in through the real ingest path, a sweep over every route of the OpenAPI document for
//! 401 and 403, sessions, CSRF, tokens, the login limit, and live push over a real WebSocket
//! from two hubs side by side.
//!
//! Each test has a database of its own.

#![allow(clippy::unwrap_used)] // test helpers: a failed step is a failed test

mod common;

use common::*;

/// What the document says a route needs: None for no credentials, else the least role.
fn needs(op: &utoipa::openapi::path::Operation) -> Option<Role> {
    let reqs = op.security.as_ref().expect("every operation states its security");
    let v = serde_json::to_value(reqs).unwrap();
    let scopes: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_object().unwrap().values().flat_map(|s| s.as_array().unwrap().clone()))
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    scopes.first().map(|s| Role::parse(s).unwrap())
}

fn operations(doc: &utoipa::openapi::OpenApi) -> Vec<(Method, String, Option<Role>)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
            (Method::PUT, &item.put),
        ];
        for (m, op) in ops {
            if let Some(op) = op {
                out.push((m, path.replace("{id}", "1"), needs(op)));
            }
        }
    }
    out
}

#[tokio::test]
async fn test_every_route_needs_credentials_and_its_role() {
    let hub = Hub::start(1000).await;
    let admin = hub.login("ada").await;
    let (_, analyst) = hub.token(&admin, "ann").await;
    let (_, viewer) = hub.token(&admin, "vic").await;
    let ops = operations(&hub.doc);
    assert!(ops.len() >= 25, "{} operations", ops.len());
    // The document's roles are the policy: admins alone manage users, tokens and the audit
    // log; every change but logging in and out needs an analyst.
    for (m, path, need) in &ops {
        // Logging in, and the model files and update bundles edges fetch by hash (checked
        // against the hash and signature in the configuration the hub sent them, and a bundle
        // against the release key: tests/models.rs, tests/updates.rs).
        if path.ends_with("/auth/login")
            || (path.starts_with("/api/v1/models/")
                && (path.ends_with("/file") || path.ends_with("/fixture")))
            || (path.starts_with("/api/v1/updates/") && path.ends_with("/file"))
        {
            assert_eq!(*need, None, "{m} {path}");
            continue;
        }
        let need = need.unwrap_or_else(|| panic!("{m} {path} needs no credentials"));
        if ["/users", "/tokens", "/audit"].iter().any(|p| path.starts_with(&format!("/api/v1{p}")))
        {
            assert_eq!(need, Role::Admin, "{m} {path}");
        } else if *m != Method::GET && !path.ends_with("/auth/logout") {
            assert!(need >= Role::Analyst, "{m} {path} lets a viewer change things");
        }
    }
    let mut checked = 0;
    for (m, path, need) in &ops {
        let Some(need) = need else { continue };
        let r = hub.call(m.clone(), path, &Who::Nobody, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {path} without credentials");
        assert_eq!(r.json["status"], 401, "{m} {path}: a problem document");
        let bad = hub.call(m.clone(), path, &Who::Token("tw_not-a-token".into()), None).await;
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{m} {path} with a made-up token");
        for (role, who) in [(Role::Viewer, &viewer), (Role::Analyst, &analyst)] {
            let r = hub.call(m.clone(), path, who, None).await;
            if role < *need {
                assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {path} as {role:?}: {}", r.json);
            } else {
                assert!(
                    r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED,
                    "{m} {path} as {role:?}: {}",
                    r.status
                );
            }
            assert!(!r.status.is_server_error(), "{m} {path} as {role:?}: {}", r.status);
        }
        checked += 1;
    }
    assert!(checked >= 25);
    // The document is served, without credentials.
    let r = hub.call(Method::GET, "/api/v1/openapi.json", &Who::Nobody, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["paths"].as_object().unwrap().len(), hub.doc.paths.paths.len());
}

#[tokio::test]
async fn test_session_cookie_csrf_logout_and_audit() {
    let hub = Hub::start(1000).await;
    let r = hub
        .call(
            Method::POST,
            "/api/v1/auth/login",
            &Who::Nobody,
            Some(json!({"username": "ann", "password": "wrong password!"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.get(header::SET_COOKIE).is_none());
    let r = hub
        .call(
            Method::POST,
            "/api/v1/auth/login",
            &Who::Nobody,
            Some(json!({"username": "nobody-at-all", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let ann = hub.login("ann").await;
    let me = hub.get("/api/v1/auth/me", &ann).await;
    assert_eq!(me["role"], "analyst");
    // A change with the cookie but without the CSRF token is refused, and changes nothing.
    let Who::Session { cookie, csrf } = ann.clone() else { unreachable!() };
    let no_csrf = Who::Session { cookie: cookie.clone(), csrf: None };
    let wrong_csrf = Who::Session { cookie: cookie.clone(), csrf: Some("x".repeat(43)) };
    let rule = json!({"kind": "port_scan", "comment": "lab"});
    for who in [&no_csrf, &wrong_csrf] {
        let r = hub.call(Method::POST, "/api/v1/suppressions", who, Some(rule.clone())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    }
    assert_eq!(hub.get("/api/v1/suppressions", &no_csrf).await.as_array().unwrap().len(), 0);
    let r = hub.call(Method::POST, "/api/v1/suppressions", &ann, Some(rule)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["created_by"], "ann");
    // Logout ends the session: the same cookie no longer works.
    let r = hub.call(Method::POST, "/api/v1/auth/logout", &ann, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = hub.call(Method::GET, "/api/v1/auth/me", &Who::Session { cookie, csrf }, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Every change and every login attempt is in the audit log, newest first.
    let ada = hub.login("ada").await;
    let log = hub.get("/api/v1/audit?limit=1000", &ada).await;
    let actions: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap().into(), e["action"].as_str().unwrap().into()))
        .collect();
    let want: Vec<(String, String)> = [
        ("ada", "login"),
        ("ann", "logout"),
        ("ann", "suppression_create"),
        ("ann", "login"),
        ("nobody-at-all", "login_failed"),
        ("ann", "login_failed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(actions, want);
    assert_eq!(log["entries"][0]["ip"], "127.0.0.1");
}

#[tokio::test]
async fn test_login_attempts_are_limited() {
    let hub = Hub::start(3).await;
    let wrong = json!({"username": "vic", "password": "not the password"});
    for _ in 0..3 {
        let r =
            hub.call(Method::POST, "/api/v1/auth/login", &Who::Nobody, Some(wrong.clone())).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // The fourth within the minute is refused before the password is looked at, even the
    // right one.
    let right = json!({"username": "vic", "password": PASSWORD});
    let r = hub.call(Method::POST, "/api/v1/auth/login", &Who::Nobody, Some(right)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
    let wait: u64 = r.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(hub.state.counters.logins_limited.load(Ordering::Relaxed), 1);
    // Another user from the same address has a bucket of its own (the address's is five times
    // larger; tests/security.rs holds the limits to what an attacker can do with them).
    let other = json!({"username": "ann", "password": PASSWORD});
    let r = hub.call(Method::POST, "/api/v1/auth/login", &Who::Nobody, Some(other)).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn test_users_tokens_and_the_last_admin() {
    let hub = Hub::start(1000).await;
    let ada = hub.login("ada").await;
    let (vic_token_id, vic) = hub.token(&ada, "vic").await;
    assert_eq!(hub.get("/api/v1/auth/me", &vic).await["role"], "viewer");
    let users = hub.get("/api/v1/users", &ada).await;
    let id_of = |name: &str| {
        users.as_array().unwrap().iter().find(|u| u["username"] == name).unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    // Promote vic: the token carries the user's role, so it can now change anomalies' rules.
    let r = hub
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{}", id_of("vic")),
            &ada,
            Some(json!({"role": "analyst"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = hub.call(Method::POST, "/api/v1/suppressions", &vic, Some(json!({"port": 53}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    // A revoked token stops working at once.
    let r = hub.call(Method::DELETE, &format!("/api/v1/tokens/{vic_token_id}"), &ada, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = hub.call(Method::GET, "/api/v1/auth/me", &vic, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Disabling a user ends their sessions and tokens.
    let ann_session = hub.login("ann").await;
    let (_, ann_token) = hub.token(&ada, "ann").await;
    let r = hub
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{}", id_of("ann")),
            &ada,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for who in [&ann_session, &ann_token] {
        let r = hub.call(Method::GET, "/api/v1/auth/me", who, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // The last enabled admin can be neither demoted, disabled nor removed.
    let me = format!("/api/v1/users/{}", id_of("ada"));
    for change in [json!({"role": "viewer"}), json!({"disabled": true})] {
        let r = hub.call(Method::PATCH, &me, &ada, Some(change)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    }
    let r = hub.call(Method::DELETE, &me, &ada, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // New users: names and passwords are checked, names are unique.
    let bad = [
        (json!({"username": "x y", "password": PASSWORD, "role": "viewer"}), "username"),
        (json!({"username": "xy", "password": "short", "role": "viewer"}), "password"),
        (json!({"username": "xy", "password": PASSWORD, "role": "root"}), "role"),
        (json!({"username": "xy", "password": PASSWORD, "role": "viewer", "x": 1}), "x"),
        (json!({"username": "x\u{0}y", "password": PASSWORD, "role": "viewer"}), "username"),
    ];
    for (body, field) in bad {
        let r = hub.call(Method::POST, "/api/v1/users", &ada, Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
        assert!(
            r.json["field"] == field || r.json["detail"].as_str().unwrap().contains(field),
            "{}",
            r.json
        );
    }
    let new = json!({"username": "eve", "password": PASSWORD, "role": "viewer"});
    let r = hub.call(Method::POST, "/api/v1/users", &ada, Some(new.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = hub.call(Method::POST, "/api/v1/users", &ada, Some(new)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json["field"], "username");
    // Passwords are stored as argon2id, never as sent.
    let row = hub
        .sql()
        .await
        .query_one("SELECT password_hash FROM users WHERE username = 'eve'", &[])
        .await
        .unwrap();
    let phc: String = row.get(0);
    assert!(phc.starts_with("$argon2id$") && !phc.contains(PASSWORD), "{phc}");
}

#[tokio::test]
async fn test_data_routes_read_what_was_ingested() {
    let hub = Hub::start(1000).await;
    let t0 = now_us();
    seed(&hub, "tap-1", t0).await;
    seed(&hub, "tap-2", t0).await;
    let ada = hub.login("ada").await;
    let (_, v) = hub.token(&ada, "vic").await;
    let (_, ann) = hub.token(&ada, "ann").await;

    // Devices: online, heard from now, with their latest metrics and capture drops.
    let devices = hub.get("/api/v1/devices", &v).await;
    assert_eq!(devices.as_array().unwrap().len(), 2);
    let d = &devices[0];
    assert_eq!(
        (d["id"].as_str(), d["state"].as_str(), d["health"].as_str()),
        (Some("tap-1"), Some("online"), Some("ok"))
    );
    assert_eq!(d["metrics"]["capture"][0]["kernel_drops"], 17);
    assert_eq!(d["metrics"]["capture"][0]["queue_drops"], 34);
    let r = hub.call(Method::GET, "/api/v1/devices/nope", &v, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let range = format!("from={}&to={}", rfc3339(t0 - 4 * HOUR_US), rfc3339(t0 + 1));
    let enc = |s: String| s.replace(':', "%3A").replace('+', "%2B");
    let range = enc(range);
    let pts = hub.get(&format!("/api/v1/devices/tap-1/metrics?{range}&bucket=3600"), &v).await;
    let pts = pts.as_array().unwrap();
    assert!((3..=4).contains(&pts.len()), "{pts:?}");
    assert_eq!(pts.last().unwrap()["kernel_drops"], 17);
    // 1000 bytes more every 10 minutes, in every bucket (each holds whole samples), except
    // that the first sample has none before it: a bucket holding only it (the first sample
    // falls in the last ten minutes of an hour) has no rate.
    for (n, p) in pts.iter().enumerate() {
        let rx = p["net_rx_bps"].as_f64().unwrap();
        let only_first = n == 0 && p["cpu_percent"].as_f64() == Some(10.0);
        let want = if only_first { 0.0 } else { 1000.0 / 600.0 };
        assert!((rx - want).abs() < 1e-9, "{p}");
    }

    // Statistics: the sums of what the edges sent, by minute or hour, and the top ports and
    // talkers of the hours in the range.
    for bucket in [600, 3600] {
        let s = hub.get(&format!("/api/v1/stats?{range}&bucket={bucket}"), &v).await;
        assert_eq!(s["totals"]["packets"], 2 * 18 * 100, "bucket {bucket}");
        assert_eq!(s["totals"]["bytes"], 2 * 18 * 10_000);
        assert_eq!(s["totals"]["udp_packets"], 2 * 18 * 30);
        let sum: i64 =
            s["series"].as_array().unwrap().iter().map(|p| p["packets"].as_i64().unwrap()).sum();
        assert_eq!(sum, 3600);
        assert_eq!(
            s["top_ports"][0],
            json!({"protocol": 6, "port": 443, "packets": 1800, "bytes": 216000})
        );
        assert_eq!(s["top_talkers"][0]["ip"], "10.0.0.1");
        assert_eq!(s["top_talkers"][0]["bytes"], 2 * 18 * 8000);
    }
    let one = hub.get(&format!("/api/v1/stats?{range}&device=tap-2"), &v).await;
    assert_eq!(one["totals"]["packets"], 1800);

    // Flows: each filter, and pages that give every flow exactly once.
    let flows = |q: String| {
        let hub = &hub;
        let (v, url) = (v.clone(), format!("/api/v1/flows?{range}&{q}"));
        async move { hub.get(&url, &v).await["flows"].as_array().unwrap().len() }
    };
    assert_eq!(flows("device=tap-1".into()).await, 6);
    assert_eq!(flows("host=10.0.0.1".into()).await, 6);
    assert_eq!(flows("net=192.168.0.0%2F16".into()).await, 2);
    assert_eq!(flows("port=53".into()).await, 2);
    assert_eq!(flows("protocol=1".into()).await, 2);
    assert_eq!(flows("kind=port_scan&device=tap-1".into()).await, 1);
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = hub.get(&format!("/api/v1/flows?{range}&limit=5{cursor}"), &v).await;
        for f in page["flows"].as_array().unwrap() {
            assert!(seen.insert((
                f["device"].to_string(),
                f["src_port"].to_string(),
                f["end"].to_string()
            )));
            assert_eq!(f["packets"], 5.0);
            assert_eq!(f["bytes"], 1500.0);
            assert_eq!(f["features"]["tot_fwd_pkts"], 3.0);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12);

    // Analyses: per device and model.
    let a = hub.get(&format!("/api/v1/analyses?{range}&device=tap-1"), &v).await;
    assert_eq!(a["summary"][0]["runs"], 18);
    assert_eq!(a["summary"][0]["rows"], 180);
    assert_eq!(a["summary"][0]["flagged"], 18);
    assert_eq!(a["summary"][0]["score_max"], 19.0);

    // Anomalies: filters, severity at or above, pages.
    let list = |q: &str| {
        let hub = &hub;
        let v = v.clone();
        let q = q.to_string();
        async move {
            hub.get(&format!("/api/v1/anomalies?{q}"), &v).await["anomalies"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    assert_eq!(list("").await.len(), 6);
    assert_eq!(list("device=tap-2&kind=port_scan").await.len(), 2);
    assert_eq!(list("severity=medium").await.len(), 4);
    let page1 = hub.get("/api/v1/anomalies?limit=4", &v).await;
    let c = page1["next_cursor"].as_str().unwrap();
    let page2 = hub.get(&format!("/api/v1/anomalies?limit=4&cursor={c}"), &v).await;
    assert_eq!(page2["anomalies"].as_array().unwrap().len(), 2);
    assert!(page2["next_cursor"].is_null());
    let first = &list("device=tap-1&kind=syn_flood").await[0];
    let id = first["id"].as_i64().unwrap();
    assert_eq!(first["reasons"][0]["feature"], "syn_per_s");
    assert_eq!(first["state"], "new");

    // Acknowledge, note, resolve.
    let url = format!("/api/v1/anomalies/{id}");
    let r = hub.call(Method::PATCH, &url, &ann, Some(json!({"state": "acknowledged"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        (r.json["state"].as_str(), r.json["acknowledged_by"].as_str()),
        (Some("acknowledged"), Some("ann"))
    );
    let r = hub
        .call(Method::POST, &format!("{url}/notes"), &ann, Some(json!({"body": "lab test"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = hub.call(Method::PATCH, &url, &ann, Some(json!({"state": "resolved"}))).await;
    assert_eq!(r.json["resolved_by"], "ann");
    let detail = hub.get(&url, &v).await;
    assert_eq!(detail["notes"][0]["body"], "lab test");
    assert_eq!(list("state=resolved").await.len(), 1);
    // The edge's later message updates the episode but keeps the state set here.
    let end = t0 - HOUR_US;
    hub.ingest(&[msg(
        "tap-1",
        "anomalies",
        4,
        end + 1,
        anomaly(1, "syn_flood", "high", "10.0.0.1", end - 60_000_000, end + 1),
    )])
    .await;
    assert_eq!(hub.get(&url, &v).await["state"], "resolved");

    // Evidence: none yet is a 404 saying so; once kept, a pcap file.
    let r = hub.call(Method::GET, &format!("{url}/evidence"), &v, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json["detail"].as_str().unwrap().contains("evidence"));
    // The edge sends its evidence in parts, each a pcap file; the hub gives them back as one.
    let file =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/data/benign/rsync.pcap"))
            .unwrap();
    let packets = read_pcap(&file);
    assert!(packets.len() >= 4);
    let half = packets.len() / 2;
    let mut parts = Vec::new();
    for (i, chunk) in [&packets[..half], &packets[half..]].into_iter().enumerate() {
        let header = pcap_file::pcap::PcapReader::new(&file[..]).unwrap().header();
        let mut w = pcap_file::pcap::PcapWriter::with_header(Vec::new(), header).unwrap();
        for (ts, len, data) in chunk {
            w.write_packet(&pcap_file::pcap::PcapPacket::new(*ts, *len, data)).unwrap();
        }
        use base64::Engine;
        let pcap = base64::engine::general_purpose::STANDARD.encode(w.into_writer());
        parts.push(msg(
            "tap-1",
            "evidence",
            i as u64 + 1,
            end,
            json!({"anomaly": 1, "packets": chunk.len(), "pcap": pcap}),
        ));
    }
    // In the wrong order, as two hubs may take them: the download is in seq order.
    parts.reverse();
    hub.ingest(&parts).await;
    let r = hub.call(Method::GET, &format!("{url}/evidence"), &v, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/vnd.tcpdump.pcap");
    assert!(r.headers[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .contains(&format!("anomaly-{id}.pcap")));
    assert_eq!(read_pcap(&r.bytes), packets);
    assert_eq!(hub.get(&url, &v).await["has_evidence"], true);

    // Suppression: matching episodes leave the list unless asked for.
    let r = hub
        .call(
            Method::POST,
            "/api/v1/suppressions",
            &ann,
            Some(json!({"net": "192.168.0.0/16", "kind": "port_scan"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let rule_id = r.json["id"].as_i64().unwrap();
    assert_eq!(list("kind=port_scan").await.len(), 2);
    let all = list("kind=port_scan&include_suppressed=true").await;
    assert_eq!(all.iter().filter(|a| a["suppressed"] == true).count(), 2);
    let r = hub.call(Method::DELETE, &format!("/api/v1/suppressions/{rule_id}"), &ann, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(list("kind=port_scan").await.len(), 4);

    // Bad input: a 400 problem naming the field, and nothing internal.
    for (q, field) in [
        ("/api/v1/flows?net=10.0.0.0%2F99", "net"),
        ("/api/v1/flows?kind=ddos", "kind"),
        ("/api/v1/flows?port=70000", "port"),
        ("/api/v1/flows?host=example.com", "host"),
        ("/api/v1/flows?limit=0", "limit"),
        ("/api/v1/flows?cursor=AAAA", "cursor"),
        ("/api/v1/flows?colour=red", "colour"),
        ("/api/v1/flows?device=a%00b", "device"),
        ("/api/v1/stats?bucket=61", "bucket"),
        ("/api/v1/stats?from=2026-11-28T10%3A00%3A00Z&to=2026-11-28T09%3A00%3A00Z", "from"),
        ("/api/v1/anomalies?severity=urgent", "severity"),
        ("/api/v1/anomalies/abc", "id"),
    ] {
        let r = hub.call(Method::GET, q, &v, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.json);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(
            r.json["field"] == field || r.json["detail"].as_str().unwrap().contains(field),
            "{q}: {}",
            r.json
        );
    }
    let r = hub.call(Method::PATCH, &url, &ann, Some(json!({"state": "gone"}))).await;
    assert_eq!((r.status, r.json["field"].as_str()), (StatusCode::BAD_REQUEST, Some("state")));
    let r = hub.call(Method::GET, "/api/v1/nothing-here", &v, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn test_live_push_from_either_hub_within_a_second() {
    let hub = Hub::start(1000).await;
    // A second hub process on the same database: its own pool and its own LISTEN.
    let other = tapwatch_hub::cli::api_state(&hub.config).unwrap();
    let other_app = api::router(other.clone()).0;
    let ada = hub.login("ada").await;
    let (_, Who::Token(token)) = hub.token(&ada, "vic").await else { unreachable!() };
    let (a, b) = (serve(&hub.app).await, serve(&other_app).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.state.live.listening.load(Ordering::Relaxed) == 0
        || other.live.listening.load(Ordering::Relaxed) == 0
    {
        assert!(Instant::now() < deadline, "the hubs never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws_a = connect(a, &token).await;
    let mut ws_b = connect(b, &token).await;

    // Without credentials, or from another origin, no upgrade.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = format!("ws://{a}/api/v1/live").into_client_request().unwrap();
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let mut req = format!("ws://{a}/api/v1/live").into_client_request().unwrap();
    req.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    req.headers_mut().insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());

    // An anomaly ingested (through the first hub's database, as any hub would) reaches the
    // clients of both hubs within a second.
    let t = now_us();
    let sent = Instant::now();
    hub.ingest(&[
        msg("tap-9", "status", 1, t, json!({"state": "online", "version": "1", "uptime_s": 1})),
        msg("tap-9", "anomalies", 1, t, anomaly(7, "syn_flood", "high", "10.0.0.1", t - 1000, t)),
    ])
    .await;
    for ws in [&mut ws_a, &mut ws_b] {
        let e = next_of(ws, "anomaly", Duration::from_secs(1))
            .await
            .expect("no anomaly pushed within a second");
        assert_eq!(
            (e["device"].as_str(), e["kind"].as_str(), e["src_ip"].as_str()),
            (Some("tap-9"), Some("syn_flood"), Some("10.0.0.1"))
        );
    }
    assert!(sent.elapsed() < Duration::from_secs(1), "{:?}", sent.elapsed());

    // A suppressed anomaly is not pushed; the next one is.
    let (_, ann) = hub.token(&ada, "ann").await;
    let r = hub
        .call(Method::POST, "/api/v1/suppressions", &ann, Some(json!({"host": "10.9.9.9"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Two commits, so the suppressed one is surely notified first.
    hub.ingest(&[msg(
        "tap-9",
        "anomalies",
        2,
        t,
        anomaly(8, "port_scan", "low", "10.9.9.9", t - 1000, t),
    )])
    .await;
    hub.ingest(&[msg(
        "tap-9",
        "anomalies",
        3,
        t,
        anomaly(9, "host_sweep", "low", "10.0.0.5", t - 1000, t),
    )])
    .await;
    let e = next_of(&mut ws_a, "anomaly", Duration::from_secs(2)).await.unwrap();
    assert_eq!(e["kind"], "host_sweep", "{e}");
    assert!(
        hub.state.live.suppressed.load(Ordering::Relaxed) >= 1,
        "received {} suppressed {} / other {} {}",
        hub.state.live.received.load(Ordering::Relaxed),
        hub.state.live.suppressed.load(Ordering::Relaxed),
        other.live.received.load(Ordering::Relaxed),
        other.live.suppressed.load(Ordering::Relaxed)
    );
}
