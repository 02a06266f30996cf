//! The fleet's configuration through the API and the real ingest, over PostgreSQL: layers
//! checked with the edge's own code, merged per device, revisions, rollback, roles, and what the
//! edges answer.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

async fn put(hub: &Hub, who: &Who, path: &str, doc: Value) -> Reply {
    hub.call(Method::PUT, path, who, Some(json!({"document": doc, "comment": "test"}))).await
}

fn status(device: &str, seq: u64, revision: u64, hash: &str) -> (String, Value) {
    msg(
        device,
        "status",
        seq,
        now_us(),
        json!({"state": "online", "version": "0.1.0", "uptime_s": 1,
               "config_revision": revision, "config_hash": hash}),
    )
}

fn applied(
    device: &str,
    seq: u64,
    revision: u64,
    hash: &str,
    result: &str,
    error: &str,
) -> (String, Value) {
    msg(
        device,
        "config/applied",
        seq,
        now_us(),
        json!({"revision": revision, "hash": hash, "result": result, "error": error}),
    )
}

#[tokio::test]
async fn test_layers_merge_per_device_and_edges_answer() {
    let hub = Hub::start(1000).await;
    let admin = hub.login("ada").await;
    let (_, analyst) = hub.token(&admin, "ann").await;
    let (_, viewer) = hub.token(&admin, "vic").await;
    // Two devices, heard from (auto-registered).
    hub.ingest(&[status("tap-1", 1000, 0, ""), status("tap-2", 1000, 0, "")]).await;

    // Checked as the edge checks it: a BPF that does not compile, a key the hub may not set.
    let bad = json!({"capture": {"*": {"rules": [{"name": "x", "bpf": "tcp port lots"}]}}});
    let r = put(&hub, &admin, "/api/v1/fleet/config/global", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["field"], "document");
    assert!(r.json["detail"].as_str().unwrap().contains("does not compile"), "{}", r.json);
    let r =
        put(&hub, &admin, "/api/v1/fleet/config/global", json!({"sync": {"broker": "x:1"}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json["detail"].as_str().unwrap().contains("sync"), "{}", r.json);
    let r = put(&hub, &admin, "/api/v1/fleet/config/devices/nobody", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    let r = put(&hub, &admin, "/api/v1/fleet/config/groups/dmz", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a group must exist first: {}", r.json);

    // Layers: global, a group with tap-2 in it, tap-1's own.
    let r =
        hub.call(Method::POST, "/api/v1/fleet/groups", &admin, Some(json!({"name": "dmz"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = hub
        .call(
            Method::PUT,
            "/api/v1/fleet/devices/tap-2/group",
            &admin,
            Some(json!({"group": "dmz"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let global = json!({"detect": {"quiet_s": 60, "update_s": 20}});
    let r = put(&hub, &admin, "/api/v1/fleet/config/global", global.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let first_global = r.json["id"].as_i64().unwrap();
    assert_eq!(r.json["revision"], 1);
    let group = json!({"capture": {"*": {"rules": [{"name": "web", "bpf": "tcp port 80"}]}}});
    assert_eq!(
        put(&hub, &admin, "/api/v1/fleet/config/groups/dmz", group).await.status,
        StatusCode::CREATED
    );
    let own = json!({"detect": {"quiet_s": 90}});
    assert_eq!(
        put(&hub, &admin, "/api/v1/fleet/config/devices/tap-1", own).await.status,
        StatusCode::CREATED
    );

    let one = hub.get("/api/v1/fleet/devices/tap-1", &viewer).await;
    assert_eq!(one["desired"], json!({"detect": {"quiet_s": 90, "update_s": 20}}));
    assert_eq!(one["layers"].as_array().unwrap().len(), 2);
    let two = hub.get("/api/v1/fleet/devices/tap-2", &viewer).await;
    assert_eq!(
        two["desired"],
        json!({"detect": {"quiet_s": 60, "update_s": 20},
               "capture": {"*": {"rules": [{"name": "web", "bpf": "tcp port 80"}]}}})
    );
    assert_eq!(two["group"], "dmz");
    assert_eq!(two["sync"], "pending");

    // What goes to the broker: each device's merged document, with its hash, once.
    let sql = hub.sql().await;
    let out = tapwatch_hub::fleet::unpublished(&sql, None, "http://hub").await.unwrap();
    assert_eq!(out.len(), 2);
    let mut sent = std::collections::HashMap::new();
    for (device, revision, payload) in &out {
        let m: firmware::proto::ConfigMsg = serde_json::from_slice(payload).unwrap();
        assert_eq!(m.device.as_str(), device);
        assert_eq!(m.revision as i64, *revision);
        let config = Value::Object(m.config.clone());
        assert_eq!(m.hash.as_str(), edge_config::fleet::hash(&config));
        tapwatch_hub::fleet::published(&sql, device, *revision).await.unwrap();
        sent.insert(device.clone(), m);
    }
    assert!(tapwatch_hub::fleet::unpublished(&sql, None, "http://hub").await.unwrap().is_empty());

    // tap-1 applies its revision; tap-2 refuses its own (an edge with no such interface is
    // no error, so a made-up refusal).
    let (r1, h1) = (sent["tap-1"].revision, sent["tap-1"].hash.to_string());
    let (r2, h2) = (sent["tap-2"].revision, sent["tap-2"].hash.to_string());
    hub.ingest(&[
        applied("tap-1", 1, r1, &h1, "applied", ""),
        applied("tap-2", 1, r2, &h2, "refused", "capture.eth1.rules[0]: no"),
    ])
    .await;
    let fleet = hub.get("/api/v1/fleet", &viewer).await;
    let of = |d: &str| fleet.as_array().unwrap().iter().find(|x| x["device"] == d).unwrap().clone();
    assert_eq!(of("tap-1")["sync"], "in_sync", "{fleet}");
    assert_eq!(of("tap-1")["applied_revision"], r1);
    assert_eq!(of("tap-2")["sync"], "failed", "{fleet}");
    assert_eq!(of("tap-2")["error"], "capture.eth1.rules[0]: no");
    // A status message names what is in force too (tap-2 restarted with its old one: none).
    hub.ingest(&[status("tap-1", 2000, r1, &h1)]).await;
    assert_eq!(hub.get("/api/v1/fleet/devices/tap-1", &viewer).await["sync"], "in_sync");

    // A change makes a new revision for the devices it reaches; rollback is a new revision
    // with the old content.
    let r =
        put(&hub, &admin, "/api/v1/fleet/config/global", json!({"detect": {"quiet_s": 61}})).await;
    assert_eq!(r.json["revision"], 2);
    let tap2 = hub.get("/api/v1/fleet/devices/tap-2", &viewer).await;
    assert!(tap2["desired_revision"].as_i64().unwrap() > r2 as i64);
    assert_eq!(tap2["desired"]["detect"]["quiet_s"], 61);
    // tap-1's own quiet_s wins; update_s went with the global revision 2.
    let tap1 = hub.get("/api/v1/fleet/devices/tap-1", &viewer).await;
    assert_eq!(tap1["desired"], json!({"detect": {"quiet_s": 90}}));
    assert_eq!(tap1["sync"], "pending");
    // One change, one revision each (merged in device order, from one sequence).
    assert_eq!(
        tap2["desired_revision"].as_i64().unwrap(),
        tap1["desired_revision"].as_i64().unwrap() + 1
    );
    let r = hub
        .call(
            Method::POST,
            &format!("/api/v1/fleet/revisions/{first_global}/rollback"),
            &admin,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["revision"], 3);
    assert_eq!(r.json["document"], global);
    let h = hub.get("/api/v1/fleet/history/global/-", &viewer).await;
    let revs: Vec<i64> =
        h.as_array().unwrap().iter().map(|r| r["revision"].as_i64().unwrap()).collect();
    assert_eq!(revs, [3, 2, 1]);
    let tap1 = hub.get("/api/v1/fleet/devices/tap-1", &viewer).await;
    assert_eq!(tap1["desired"], json!({"detect": {"quiet_s": 90, "update_s": 20}}));
    // Same document as what tap-1 applied: back in sync with no new revision to apply.
    assert_eq!(tap1["desired_hash"], h1.as_str());
    assert_eq!(tap1["sync"], "in_sync");

    // Analysts edit suppression rules and nothing else; viewers nothing.
    let mut with_rule = global.clone();
    with_rule["detect"]["suppress"] = json!([{"name": "scanner", "host": "192.0.2.7"}]);
    let r = put(&hub, &analyst, "/api/v1/fleet/config/global", with_rule.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    with_rule["detect"]["quiet_s"] = json!(5);
    let r = put(&hub, &analyst, "/api/v1/fleet/config/global", with_rule).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = put(&hub, &viewer, "/api/v1/fleet/config/global", json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Each change is in the audit log.
    let audit = hub.get("/api/v1/audit?limit=100", &admin).await;
    let saves = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "config_save")
        .count();
    assert_eq!(saves, 6, "{audit}");
}

#[tokio::test]
async fn test_commands_are_sent_signed_and_their_answers_kept() {
    let hub = Hub::start(1000).await;
    let admin = hub.login("ada").await;
    let (_, analyst) = hub.token(&admin, "ann").await;
    let (_, viewer) = hub.token(&admin, "vic").await;
    hub.ingest(&[status("tap-1", 1000, 0, "")]).await;
    async fn send(hub: &Hub, who: &Who, device: &str, body: Value) -> Reply {
        let path = format!("/api/v1/fleet/devices/{device}/commands");
        hub.call(Method::POST, &path, who, Some(body)).await
    }
    // Admins only; a device that exists; a command that exists.
    for who in [&viewer, &analyst] {
        let r = send(&hub, who, "tap-1", json!({"command": "reload"})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    }
    let r = send(&hub, &admin, "nobody", json!({"command": "reload"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    let r = send(&hub, &admin, "tap-1", json!({"command": "rm -rf /"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["field"], "command", "{}", r.json);
    let r = send(&hub, &admin, "tap-1", json!({"command": "reload"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["id"].as_i64().unwrap();
    assert_eq!(r.json["published_at"], Value::Null);

    // What the ingest sends: signed over device, id, command and time.
    let sql = hub.sql().await;
    let key =
        edge_config::fleet::signing_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let out = tapwatch_hub::fleet::unpublished_commands(&sql, Some(&key)).await.unwrap();
    assert_eq!(out.len(), 1);
    let m: firmware::proto::CommandMsg = serde_json::from_slice(&out[0].2).unwrap();
    assert_eq!(
        (m.id as i64, m.device.as_str(), m.command),
        (id, "tap-1", firmware::proto::Command::Reload)
    );
    let public = edge_config::fleet::public_key_text(&key);
    edge_config::fleet::verify_command(&public, "tap-1", m.id, "reload", m.ts, &m.signature)
        .unwrap();
    tapwatch_hub::fleet::command_published(&sql, id).await.unwrap();
    assert!(tapwatch_hub::fleet::unpublished_commands(&sql, None).await.unwrap().is_empty());

    // The edge's answer, through the ingest; a second answer for the same id changes nothing.
    let answer = |seq: u64, result: &str, detail: &str| {
        msg(
            "tap-1",
            "commands/result",
            seq,
            now_us(),
            json!({"id": id, "command": "reload", "result": result, "detail": detail}),
        )
    };
    hub.ingest(&[answer(1, "applied", "reloaded; nothing changed")]).await;
    hub.ingest(&[answer(2, "refused", "replayed")]).await;
    let list = hub.get("/api/v1/fleet/devices/tap-1/commands", &viewer).await;
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["result"], "applied");
    assert_eq!(list[0]["detail"], "reloaded; nothing changed");
    assert!(list[0]["published_at"].is_string());

    // One the broker never got within a minute is answered failed by the hub, not sent late.
    let r = send(&hub, &admin, "tap-1", json!({"command": "retry_config"})).await;
    let late = r.json["id"].as_i64().unwrap();
    sql.execute(
        "UPDATE device_commands SET created_at = now() - interval '2 minutes' WHERE id = $1",
        &[&late],
    )
    .await
    .unwrap();
    assert!(tapwatch_hub::fleet::unpublished_commands(&sql, None).await.unwrap().is_empty());
    assert_eq!(tapwatch_hub::fleet::expire_commands(&sql).await.unwrap(), 1);
    let list = hub.get("/api/v1/fleet/devices/tap-1/commands", &viewer).await;
    assert_eq!(list[0]["result"], "failed");
    let audit = hub.get("/api/v1/audit?limit=100", &admin).await;
    let sent =
        audit["entries"].as_array().unwrap().iter().filter(|a| a["action"] == "command").count();
    assert_eq!(sent, 2);
}
